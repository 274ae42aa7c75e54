"""Threshold policies and the decision metrics, against hand-computed cases and sklearn."""
import numpy as np
import pytest
from sklearn import metrics as skm

from adkit.evaluate import metrics
from adkit.evaluate.calibration import resolve_threshold, write_calibration
from adkit.core.errors import UserError
from adkit.evaluate.thresholds import Policy, candidate_thresholds, compute_threshold, parse_policy

VAL = [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90, 1.00]


@pytest.mark.parametrize("text, policy", [
    ("val_max", Policy("val_max")), ("val_fpr:0.01", Policy("val_fpr", 0.01)),
    ("val_fpr:0", Policy("val_fpr", 0.0)), ("synthetic_f1", Policy("synthetic_f1")),
    ("manual:2.5", Policy("manual", 2.5)), ("manual:-1", Policy("manual", -1.0)),
    ("test_f1", Policy("test_f1")),
])
def test_policies_parse_and_print_back(text, policy):
    assert parse_policy(text) == policy
    assert parse_policy(str(policy)) == policy


@pytest.mark.parametrize("text, says", [
    ("val_fpr:2", "0 <= F < 1"), ("val_fpr:-0.1", "0 <= F < 1"), ("val_fpr", "val_fpr:VALUE"),
    ("val_max:3", "write it as val_max"), ("manual:abc", "'abc' is not a number"),
    ("manual:nan", "finite"), ("f1", "unknown policy"), ("", "unknown policy"),
])
def test_bad_policies_give_one_line_naming_the_option(text, says):
    with pytest.raises(UserError) as err:
        parse_policy(text)
    message = str(err.value)
    assert message.startswith(f"--threshold_policy {text}") and says in message
    assert "\n" not in message


def test_val_max_and_val_fpr_by_hand():
    assert compute_threshold(parse_policy("val_max"), VAL).value == 1.0
    # (1 - 0.1) quantile of 10 scores, linear: position 0.9 * 9 = 8.1 -> 0.9 + 0.1 * 0.1
    assert compute_threshold(parse_policy("val_fpr:0.1"), VAL).value == pytest.approx(0.91)
    assert compute_threshold(parse_policy("val_fpr:0.5"), VAL).value == pytest.approx(0.55)
    assert compute_threshold(parse_policy("val_fpr:0"), VAL).value == 1.0
    # F below 1/n cannot be told apart from val_max: the source says so
    few = compute_threshold(parse_policy("val_fpr:0.01"), VAL)
    assert few.value == pytest.approx(0.991) and "cannot be resolved" in few.source
    # the fraction of validation images rejected is what was asked, where n allows it
    t = compute_threshold(parse_policy("val_fpr:0.2"), VAL).value
    assert t == pytest.approx(0.82) and np.mean(np.array(VAL) >= t) == pytest.approx(0.2)


def test_synthetic_f1_moves_halfway_below_the_weakest_detected_defect():
    good = [0.1, 0.2, 0.3]
    synthetic = [0.15, 0.6, 0.7]
    # F1 (2TP / (2TP + FP + FN)): 0.7 -> 2/4, 0.6 -> 4/5 (best), 0.3 -> 4/6, 0.15 -> 6/8
    # 0.6 wins; the next lower score is 0.3, so the threshold is 0.45
    threshold = compute_threshold(parse_policy("synthetic_f1"), good, synthetic)
    assert threshold.value == pytest.approx(0.45)
    assert "3 validation good images and 3 synthetic defects" in threshold.source
    # all defects above all goods: halfway between the classes
    assert compute_threshold(parse_policy("synthetic_f1"), [0.1, 0.2], [0.5, 0.9]).value == pytest.approx(0.35)


def test_synthetic_f1_weighs_the_few_good_images_as_much_as_the_many_defects():
    good = [0.30, 0.50]
    synthetic = [0.40, 0.45, 0.60, 0.70, 0.80, 0.90]
    # weight of a good image: 6 / 2 = 3. F1 = 2TP / (2TP + 3FP + FN):
    # 0.9 -> 2/7, 0.8 -> 4/8, 0.7 -> 6/9, 0.6 -> 8/10, 0.5 -> 8/13, 0.45 -> 10/14, 0.4 -> 12/15
    # 0.6 and 0.4 tie at 0.8; the higher one wins, then halfway down to 0.5.
    # (Unweighted F1 would pick 0.4 at 12/13 and flag a good image.)
    assert compute_threshold(parse_policy("synthetic_f1"), good, synthetic).value == pytest.approx(0.55)


def test_policies_that_cannot_apply_say_what_they_need():
    with pytest.raises(UserError, match="needs validation good images"):
        compute_threshold(parse_policy("val_max"), [])
    with pytest.raises(UserError, match="needs synthetic-defect scores"):
        compute_threshold(parse_policy("synthetic_f1"), VAL, [])
    with pytest.raises(UserError, match="run main.py --mode eval first"):
        compute_threshold(parse_policy("test_f1"), VAL)
    assert compute_threshold(parse_policy("test_f1"), [], test_f1_threshold=0.7).value == 0.7
    assert compute_threshold(parse_policy("manual:3"), []).value == 3.0


def test_candidates_list_every_training_side_policy():
    found = candidate_thresholds(VAL, [])
    assert found["val_max"] == 1.0 and found["synthetic_f1"] is None
    assert set(found) == {"val_max", "val_fpr:0.01", "val_fpr:0.05", "synthetic_f1"}


def test_resolve_threshold_from_a_checkpoint_folder(tmp_path):
    folder = str(tmp_path)
    assert resolve_threshold(folder).value is None  # no calibration: no threshold, and why
    calibration = {"policy": "val_fpr:0.5", "val": [{"path": f"{i}.png", "score": s} for i, s in enumerate(VAL)],
                   "synthetic": [{"path": "0.png", "kind": "scratch", "score": 2.0}]}
    write_calibration(folder, calibration)
    assert resolve_threshold(folder).value == pytest.approx(0.55)  # the stored policy
    assert resolve_threshold(folder, "val_max").value == 1.0  # recomputed on request
    assert resolve_threshold(folder, "synthetic_f1").value == pytest.approx(1.5)
    manual = resolve_threshold(folder, "val_max", manual=0.25)
    assert (manual.value, manual.policy) == (0.25, "manual:0.25")


def test_decision_metrics_by_hand():
    labels = [0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.5, 0.2, 0.6, 0.4, 0.9, 0.5]
    types = ["good", "good", "good", "scratch", "scratch", "stain", "stain"]
    result = metrics.decision_metrics(labels, scores, 0.5, types)
    # flagged (>= 0.5): good 0.5 (FP); defects 0.6, 0.9, 0.5 (TP), 0.4 missed (FN)
    assert result["overall"]["confusion"] == {"tn": 2, "fp": 1, "fn": 1, "tp": 3}
    assert result["overall"]["accuracy"] == pytest.approx(5 / 7)
    assert result["overall"]["precision"] == pytest.approx(3 / 4)
    assert result["overall"]["recall"] == pytest.approx(3 / 4)
    assert result["overall"]["f1"] == pytest.approx(0.75)
    assert result["per_type"] == {
        "good": {"count": 3, "predicted_defect": 1, "accuracy": pytest.approx(2 / 3)},
        "scratch": {"count": 2, "predicted_defect": 1, "accuracy": 0.5},
        "stain": {"count": 2, "predicted_defect": 2, "accuracy": 1.0}}
    nothing_flagged = metrics.decision_metrics(labels, scores, 5.0, types)["overall"]
    assert nothing_flagged["precision"] is None and nothing_flagged["recall"] == 0.0


def test_roc_curve_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + labels * 0.3, 2)  # rounding makes ties
    fpr, tpr = metrics.roc_curve(labels, scores)
    want_fpr, want_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, want_fpr)
    np.testing.assert_allclose(tpr, want_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.image_auroc(labels, scores))


def test_threshold_sources_count_in_the_singular_too():
    """"1 validation good image", not "1 validation good images"."""
    one = compute_threshold(parse_policy("synthetic_f1"), [0.1], [0.5])
    assert "over 1 validation good image and 1 synthetic defect made" in one.source
    assert compute_threshold(parse_policy("val_max"), [0.1]).source == "highest score of 1 validation good image"
    assert "of 2 validation good images" in compute_threshold(parse_policy("val_max"), [0.1, 0.2]).source
