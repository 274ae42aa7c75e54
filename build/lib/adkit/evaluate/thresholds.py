"""Threshold policies: how the score above which a part is rejected gets chosen.

A threshold comes from the training side by default (validation good images, and synthetic
defects made from them), never from the test labels it is judged by. ``test_f1`` exists as an
explicit, labelled oracle only.

    val_max        highest validation good score
    val_fpr:F      the score that rejects a fraction F of validation good images
    synthetic_f1   class-balanced F1-max over validation good images + synthetic defects made
                   from them (for users with good parts only)
    manual:VALUE   a number the user picked
    test_f1        F1-max on the test set (oracle: tuned on the labels it is judged by)

A part is a defect when its score >= threshold (the same rule everywhere).
"""
import math
from dataclasses import dataclass

import numpy as np

from adkit.core.errors import UserError

DEFAULT_POLICY = "synthetic_f1"
POLICY_HELP = ("val_max | val_fpr:F (reject fraction F of validation good images, e.g. "
               "val_fpr:0.01) | synthetic_f1 | manual:VALUE | test_f1 (oracle on test labels)")
_KINDS = ("val_max", "val_fpr", "synthetic_f1", "manual", "test_f1")


@dataclass(frozen=True)
class Policy:
    kind: str
    value: float | None = None

    def __str__(self):
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


@dataclass(frozen=True)
class Threshold:
    value: float | None
    policy: str
    source: str

    def as_dict(self):
        return {"value": self.value, "policy": self.policy, "source": self.source}


def parse_policy(text, option="--threshold_policy"):
    """'val_fpr:0.01' -> Policy('val_fpr', 0.01); one clear line for anything else."""
    kind, _, arg = str(text).strip().partition(":")
    if kind not in _KINDS:
        raise UserError(f"{option} {text}: unknown policy (expected {POLICY_HELP})")
    takes_value = kind in ("val_fpr", "manual")
    if takes_value != bool(arg):
        form = f"{kind}:VALUE" if takes_value else kind
        raise UserError(f"{option} {text}: write it as {form}")
    if not takes_value:
        return Policy(kind)
    try:
        value = float(arg)
    except ValueError:
        raise UserError(f"{option} {text}: '{arg}' is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{option} {text}: the value must be finite")
    if kind == "val_fpr" and not 0.0 <= value < 1.0:
        raise UserError(f"{option} {text}: F is the fraction of validation good images to "
                        f"reject, so it needs 0 <= F < 1")
    return Policy(kind, value)


def compute_threshold(policy, val_scores=(), synthetic_scores=(), test_f1_threshold=None):
    """The Threshold ``policy`` gives from validation scores of good images, scores of synthetic
    defects made from them, and (test_f1 only) eval's test-set F1-max threshold."""
    val = np.asarray(val_scores, dtype=np.float64)
    synthetic = np.asarray(synthetic_scores, dtype=np.float64)
    name = str(policy)
    if policy.kind == "manual":
        return Threshold(policy.value, name, "given by the user")
    if policy.kind == "test_f1":
        if test_f1_threshold is None:
            raise UserError("--threshold_policy test_f1 needs eval's test-set F1-max: run "
                            "main.py --mode eval first (it needs defective test images)")
        return Threshold(float(test_f1_threshold), name,
                         "test-set F1-max (oracle: tuned on the test labels)")
    if val.size == 0:
        raise UserError(f"--threshold_policy {name} needs validation good images: train with "
                        "--val_ratio > 0 and at least 2 images in train/good, or use manual:VALUE")
    if policy.kind == "val_max":
        return Threshold(float(val.max()), name,
                         f"highest score of {_validation(val.size)}")
    if policy.kind == "val_fpr":
        # The (1 - F) quantile of good scores; with n images its resolution is 1/n.
        value = float(np.quantile(val, 1.0 - policy.value))
        note = "" if policy.value * val.size >= 1 or policy.value == 0 else \
            f"; F below 1/{val.size} cannot be resolved, so this is close to val_max"
        return Threshold(value, name, f"rejects {policy.value:g} of {_validation(val.size)}{note}")
    if synthetic.size == 0:
        raise UserError("--threshold_policy synthetic_f1 needs synthetic-defect scores: they are "
                        "made at the end of training (retrain, or run eval once to compute them)")
    return Threshold(_f1_midpoint(val, synthetic), name,
                     f"class-balanced F1-max over {_validation(val.size)} and "
                     f"{synthetic.size} synthetic defect{'s' if synthetic.size != 1 else ''} made from them")


def _validation(n):
    return f"{n} validation good image{'s' if n != 1 else ''}"


def _f1_midpoint(good, defect):
    """Class-balanced F1-max threshold, moved halfway down to the next lower score.

    Each good image weighs n_defect / n_good, so the many synthetic defects made per validation
    image do not outvote the few good ones (plain F1 would then flag nearly everything). The
    F1-max threshold itself is the weakest detected defect's score, right at the edge of what was
    seen; halfway to the next lower score leaves room on both sides."""
    weight = defect.size / good.size
    candidates = np.unique(np.concatenate([good, defect]))[::-1]
    true_pos = defect.size - np.searchsorted(np.sort(defect), candidates, side="left")
    false_pos = good.size - np.searchsorted(np.sort(good), candidates, side="left")
    f1 = 2.0 * true_pos / (2.0 * true_pos + weight * false_pos + (defect.size - true_pos))
    best = int(np.argmax(f1))  # candidates descend: the first maximum is the highest threshold
    if best + 1 == candidates.size:
        return float(candidates[best])
    return float((candidates[best] + candidates[best + 1]) / 2.0)


def candidate_thresholds(val_scores, synthetic_scores, policies=("val_max", "val_fpr:0.01",
                                                                  "val_fpr:0.05", "synthetic_f1")):
    """{policy: value or None} for the training-side policies: shown next to each other so a
    user can see how far apart they are."""
    out = {}
    for text in policies:
        try:
            out[text] = compute_threshold(parse_policy(text), val_scores, synthetic_scores).value
        except UserError:
            out[text] = None
    return out
