import base64
import sys
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from adkit.outputs import report
from adkit.outputs.report import Example, ReportData, render_report, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Collector(HTMLParser):
    """Tags with attributes and the text of every table cell."""

    def __init__(self):
        super().__init__()
        self.tags, self.cells, self.text = [], [], []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_cell:
            self.cells[-1] += data


def _parse(document):
    parser = _Collector()
    parser.feed(document)
    parser.close()
    return parser


def _pro_curve():
    """PRO curve of a tiny 2-image example: one image good, one with a 2x2 defect region."""
    maps = np.array([[[0.1, 0.2, 0.3], [0.2, 0.1, 0.4], [0.0, 0.1, 0.2]],
                     [[0.1, 0.9, 0.8], [0.2, 0.15, 0.5], [0.3, 0.1, 0.2]]])
    masks = np.zeros_like(maps, dtype=bool)
    masks[1, :2, 1:] = True
    good = maps[~masks]
    fpr, pro = [0.0], [0.0]
    for t in np.sort(np.unique(maps))[::-1]:
        fpr.append(float(np.mean(good >= t)))
        pro.append(float(np.mean(maps[1][masks[1]] >= t)))  # one region: PRO = its overlap
    return np.array(fpr), np.array(pro)


def _png(value):
    image = np.full((24, 32, 3), value, dtype=np.uint8)
    cv2.rectangle(image, (4, 4), (20, 16), (255, 0, 0), 2)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _data(**overrides):
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    scores = np.array([0.10, 0.20, 0.25, 0.30, 0.60, 0.40, 0.55, 0.70, 0.80, 0.90, 0.95, 0.65])
    types = ["good"] * 5 + ["scratch"] * 3 + ["crack <b>&"] * 4
    values = dict(
        title="rd4ad / <b>brick & co</b>",
        metrics={"image_auroc": 0.9143, "pixel_auroc": 0.9721, "aupro": None, "f1_max": 0.9333,
                 "f1_threshold": 0.3812,
                 "per_type": {"scratch": {"image_auroc": 0.8667, "count": 3},
                              "crack <b>&": {"image_auroc": 1.0, "count": 4}}},
        decision={"threshold": 0.53,
                  "overall": {"count": 12, "accuracy": 0.9, "precision": 0.875, "recall": 0.875,
                              "f1": 0.925, "confusion": {"tn": 4, "fp": 1, "fn": 17, "tp": 23}},
                  "per_type": {"good": {"count": 5, "predicted_defect": 1, "accuracy": 0.8},
                               "scratch": {"count": 3, "predicted_defect": 2, "accuracy": 0.6667}}},
        threshold={"value": 0.53, "policy": "val_fpr:0.01", "source": "validation good images"},
        labels=labels, scores=scores, defect_types=types,
        pro_curve=_pro_curve(),
        val_scores=np.array([0.05, 0.15, 0.22, 0.31, 0.28]),
        synthetic_scores=np.array([0.45, 0.62, 0.77]),
        examples={"Worst false alarms": [Example("test/good/003.png  score 0.600 <b>&", _png(40))],
                  "Missed defects": [],
                  "Best detections": [Example("test/crack/001.png  score 0.950", _png(200))]},
        notes=["trained on 200 images", "note with <script> & stuff"],
    )
    values.update(overrides)
    return ReportData(**values)


def _img_sources(parsed):
    return [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]


def _decode(src):
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    return base64.b64decode(src[len(prefix):], validate=True)


def test_report_is_self_contained_html_with_plots_and_examples():
    data = _data()
    document = render_report(data)
    parsed = _parse(document)

    sources = _img_sources(parsed)
    assert len(sources) == 3 + 2  # ROC, PRO, histogram + two non-empty example lists
    decoded = [_decode(src) for src in sources]
    assert all(png.startswith(PNG_SIGNATURE) for png in decoded)
    assert decoded[3] == data.examples["Worst false alarms"][0].png
    assert decoded[4] == data.examples["Best detections"][0].png
    for png in decoded[:3]:  # plots decode to real images of roughly 450x350 (cropped to their
        # contents; the histogram's legend below its axes adds height)
        image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape[1] == pytest.approx(450, abs=30) and 300 <= image.shape[0] <= 450

    assert "http://" not in document and "https://" not in document
    assert "<script" not in document.lower()
    assert "Missed defects" not in document  # empty list: no heading
    assert [tag for tag, _ in parsed.tags].count("figure") == 2
    assert "plots need matplotlib" not in document


def test_tables_show_formatted_numbers_and_confusion_counts():
    parsed = _parse(render_report(_data()))
    cells = parsed.cells
    for expected in ("0.9143", "0.9721", "0.9333", "0.3812", "0.8667", "1.0000",  # metrics
                     "0.9000", "0.8750", "0.9250",  # decision overall
                     "0.8000", "0.6667"):  # decision per type
        assert expected in cells, expected
    # AU-PRO is None -> "-"
    assert cells[cells.index("AU-PRO") + 1] == "-"
    # Confusion matrix: rows truth good/defect, columns predicted good/defect.
    good_row = cells.index("Truth good")
    assert cells[good_row + 1:good_row + 3] == ["4", "1"]
    defect_row = cells.index("Truth defect")
    assert cells[defect_row + 1:defect_row + 3] == ["17", "23"]
    scratch_row = [i for i, c in enumerate(cells) if c == "scratch"][-1]  # decision per-type table
    assert cells[scratch_row + 1:scratch_row + 4] == ["3", "2", "0.6667"]
    text = "".join(parsed.text)
    assert "Threshold 0.5300 \u2014 policy val_fpr:0.01 \u2014 source: validation good images" in text


def test_text_is_escaped():
    document = render_report(_data())
    assert "<b>" not in document
    assert "rd4ad / &lt;b&gt;brick &amp; co&lt;/b&gt;" in document
    assert "test/good/003.png  score 0.600 &lt;b&gt;&amp;" in document
    assert "note with &lt;script&gt; &amp; stuff" in document
    parsed = _parse(document)
    text = "".join(parsed.text)
    assert "rd4ad / <b>brick & co</b>" in text  # round-trips to the original title
    assert "crack <b>&" in parsed.cells
    captions = [attrs.get("alt") for tag, attrs in parsed.tags if tag == "img"]
    assert "test/good/003.png  score 0.600 <b>&" in captions


def test_optional_parts_missing():
    data = _data(pro_curve=None, val_scores=None, synthetic_scores=None, examples={}, notes=[],
                 threshold={"value": None, "policy": "none", "source": "-"},
                 decision={"threshold": None, "overall": {"count": 12, "precision": None,
                                                          "confusion": {}}, "per_type": {}})
    document = render_report(data)
    parsed = _parse(document)
    assert len(_img_sources(parsed)) == 2  # ROC + histogram
    assert "Threshold - \u2014 policy none" in "".join(parsed.text)
    assert cells_after(parsed.cells, "Precision") == "-"


def test_single_class_skips_roc():
    data = _data(labels=np.zeros(12, dtype=int))
    parsed = _parse(render_report(data))
    assert len(_img_sources(parsed)) == 2 + 2  # PRO + histogram + examples
    assert "ROC curve needs both good and defect test images" in "".join(parsed.text)


def cells_after(cells, name):
    return cells[cells.index(name) + 1]


def test_write_report_matches_render(tmp_path):
    data = _data()
    path = tmp_path / "run" / "report.html"
    write_report(str(path), data)
    assert path.read_text(encoding="utf-8") == render_report(data)
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left


def _assert_fallback(document):
    parsed = _parse(document)
    assert "plots need matplotlib (pip install matplotlib)" in "".join(parsed.text)
    assert len(_img_sources(parsed)) == 2  # only the examples
    assert "0.9143" in parsed.cells and "0.9000" in parsed.cells
    assert "Truth defect" in parsed.cells
    assert [tag for tag, _ in parsed.tags].count("figure") == 2


def test_without_matplotlib_helper(monkeypatch, tmp_path):
    def no_matplotlib():
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(report, "_figure_tools", no_matplotlib)
    path = tmp_path / "report.html"
    write_report(str(path), _data())
    _assert_fallback(path.read_text(encoding="utf-8"))


def test_without_matplotlib_modules(monkeypatch):
    # None in sys.modules makes the real import statement raise ImportError.
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends",
                 "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    _assert_fallback(render_report(_data()))


def test_import_does_not_load_matplotlib():
    import subprocess

    code = "import sys, adkit.outputs.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=report.__file__.rsplit("/adkit/", 1)[0])
    assert out.stdout.strip() == "False"


# -- what a reader needs besides the numbers ----------------------------------------------

def test_warning_box_and_run_metadata_are_shown():
    document = render_report(_data(warnings=["the threshold rests on 1 validation good image"],
                                   metadata={"model": "rd4ad", "backbone": "efficientnet_lite0",
                                             "versions": "Paddle 3.3.1"}))
    parsed = _parse(document)
    assert ("p", {"class": "warning"}) in parsed.tags
    assert "Warning: the threshold rests on 1 validation good image" in parsed.text
    assert cells_after(parsed.cells, "backbone") == "efficientnet_lite0"
    assert cells_after(parsed.cells, "versions") == "Paddle 3.3.1"
    assert "Warning:" not in render_report(_data())  # nothing to warn about: no box


@pytest.mark.parametrize("args, training", [
    (["--model", "rd4ad", "--steps", "30"], "30 steps"),  # the YAML's epochs: 200 did not run
    (["--model", "rd4ad"], "200 epochs"),
    (["--model", "efficientad_s", "--steps", "300"], "300 steps"),
    (["--model", "patchcore"], "none: fitted in one pass"),
])
def test_the_run_table_shows_the_schedule_that_ran(tmp_path, args, training):
    from adkit.options.config import resolve_config
    from adkit.pipelines.evaluate import run_metadata

    metadata = run_metadata(resolve_config(args + ["--mode", "eval"]), str(tmp_path))
    assert metadata["training"] == training
    assert "steps" not in metadata and "epochs" not in metadata
    cells = _parse(render_report(_data(metadata=metadata))).cells
    assert cells_after(cells, "training") == training


def test_few_validation_images_warn_for_the_policies_that_use_them():
    from adkit.evaluate.calibration import few_validation_warning

    two = {"val": [{"path": "a", "score": 1.0}, {"path": "b", "score": 2.0}]}
    three = {"val": two["val"] + [{"path": "c", "score": 3.0}]}
    for policy in ("synthetic_f1", "val_max", "val_fpr:0.05"):
        assert "rests on 2 validation good images" in few_validation_warning(two, policy)
        assert "--val_ratio" in few_validation_warning(two, policy)
        assert few_validation_warning(three, policy) is None
    assert few_validation_warning(two, "manual:0.5") is None and few_validation_warning(two, "test_f1") is None


def _axes():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def test_histogram_counts_whole_images_with_its_legend_off_the_bars():
    fig, ax = _axes()
    data = _data()
    report._draw_histogram(ax, np.asarray(data.labels), np.asarray(data.scores), data)
    fig.canvas.draw()
    ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 < ax.get_window_extent().y0  # below the axes, not over the bars


def test_roc_line_is_visible_at_auroc_1():
    """A perfect ROC runs along x = 0 and y = 1: the axes leave room so it is not under the frame."""
    fig, ax = _axes()
    report._draw_roc(ax, np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert ax.get_xlim()[0] < 0 and ax.get_ylim()[1] > 1
    assert not ax.get_lines()[-1].get_clip_on()


def test_example_shows_the_plain_image_with_its_ground_truth_beside_the_heat_map():
    from adkit.outputs.visualize import (GROUND_TRUTH_COLOUR, annotated_overlay, ground_truth_view,
                                         side_by_side)

    image = np.full((120, 160, 3), 90, np.uint8)
    mask = np.zeros((120, 160), np.uint8)
    mask[40:80, 60:100] = 1
    amap = mask.astype(np.float32)
    right = annotated_overlay(image, amap, (0.0, 1.0), 0.5, 0.9, "defect")
    left = ground_truth_view(image, mask, right.shape[0])
    panel = side_by_side(left, right)
    assert panel.shape[0] == right.shape[0] and panel.shape[1] == 160 + 6 + right.shape[1]
    header = right.shape[0] - 120
    body = panel[header:, :160]
    green = np.all(body == GROUND_TRUTH_COLOUR, axis=2)
    assert green[40, 60:100].any() and green[60, 40:59].sum() == 0  # the outline, not elsewhere
    assert np.array_equal(body[5, 5], image[5, 5])  # the plain image, no heat map
    assert not np.all(ground_truth_view(image, None, 120) == GROUND_TRUTH_COLOUR, axis=2).any()


def test_outline_and_text_scale_with_the_image():
    from adkit.outputs.visualize import annotated_overlay, line_width, overlay

    assert line_width(256, 256) == 2 and line_width(4000, 6000) == 16
    big = np.zeros((4000, 6000, 3), np.uint8)
    amap = np.zeros((4000, 6000), np.float32)
    amap[1000:3000, 2000:4000] = 1.0
    drawn = overlay(big, amap, (0.0, 1.0), 0.5)
    white = np.all(drawn == 255, axis=2)
    assert white[2000, 1990:2030].sum() >= 14  # the contour across the region's left edge
    small = annotated_overlay(np.zeros((256, 256, 3), np.uint8), amap[:256, :256], (0, 1), 0.5, 0.1, "good")
    large = annotated_overlay(big, amap, (0.0, 1.0), 0.5, 0.9, "defect")
    header_small, header_large = small.shape[0] - 256, large.shape[0] - 4000
    assert header_large > 10 * header_small  # the score line grows with the picture
