"""One self-contained report.html per evaluation run (one model, one category).

Everything is inline (CSS, base64 PNGs), so the file can be mailed or archived and opened
offline. matplotlib is optional: without it the tables and example grids are still written.
"""
import base64
import html
import io
import math
from dataclasses import dataclass, field

import numpy as np

from adkit.core.io_utils import write_bytes

FPR_LIMIT = 0.3  # the AU-PRO integration limit; the PRO plot stops here
NO_MATPLOTLIB = "plots need matplotlib (pip install matplotlib)"

CSS = """
body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{margin-bottom:4px}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
.meta{color:#555;margin:2px 0}
.warning{background:#fff3cd;border:1px solid #e0b000;padding:6px 10px;margin:8px 0;font-weight:600}
table{border-collapse:collapse;margin:8px 24px 16px 0;display:inline-table;vertical-align:top}
th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:#f2f2f2}
td.name,th.name{text-align:left}
td.ok{background:#e3f4e3}td.bad{background:#f9dede}
.plots img{margin:0 12px 12px 0}.missing{color:#a33;font-style:italic}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,540px));gap:12px}
figure{margin:0}figure img{max-width:520px;width:100%;border:1px solid #ccc}
figcaption{font-size:12px;color:#444;word-break:break-all}
"""


@dataclass
class Example:
    caption: str  # e.g. "test/good/003.png  score 0.412"
    png: bytes  # an overlay picture, already encoded PNG


@dataclass
class ReportData:
    title: str  # e.g. "rd4ad / brick"
    metrics: dict  # image_auroc, pixel_auroc, aupro, f1_max, f1_threshold, per_type; None -> "-"
    decision: dict  # threshold, overall (with confusion tn/fp/fn/tp), per_type at deployment
    threshold: dict  # {"value": float | None, "policy": str, "source": str}
    labels: "np.ndarray"  # 0 good / 1 defect per test image
    scores: "np.ndarray"  # float per test image
    defect_types: list  # str per test image
    pro_curve: "tuple | None" = None  # (fpr, pro) from 0 to 1; plotted up to FPR_LIMIT
    val_scores: "np.ndarray | None" = None  # validation good-image scores
    synthetic_scores: "np.ndarray | None" = None  # synthetic defects made from validation images
    examples: dict = field(default_factory=dict)  # {heading: [Example]}, empty lists skipped
    notes: list = field(default_factory=list)  # extra lines under the title
    warnings: list = field(default_factory=list)  # shown in a box at the top (e.g. few validation images)
    metadata: dict = field(default_factory=dict)  # {name: value}: model, options, checkpoint, versions


def render_report(data: ReportData) -> str:
    """The whole HTML document as a string."""
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">",
        f"<title>{_esc(data.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>",
        f"<h1>{_esc(data.title)}</h1>",
        f"<p class=\"meta\">{_esc(_threshold_line(data.threshold))}</p>",
    ]
    parts += [f"<p class=\"warning\">Warning: {_esc(text)}</p>" for text in data.warnings]
    parts += [f"<p class=\"meta\">{_esc(note)}</p>" for note in data.notes]
    parts += _metric_section(data.metrics)
    parts += _decision_section(data.decision)
    parts += _plot_section(data)
    parts += _example_sections(data.examples)
    if data.metadata:
        parts += ["<h2>Run</h2>", _table(("", "Value"), list(data.metadata.items()))]
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def write_report(path, data: ReportData) -> None:
    """Render and write atomically (a crash never leaves half a report behind)."""
    write_bytes(path, render_report(data).encode("utf-8"))


# ---------------------------------------------------------------- text and tables

def _esc(value) -> str:
    return html.escape(str(value))


def _num(value, digits=4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _threshold_line(threshold: dict) -> str:
    return (f"Threshold {_num(threshold.get('value'))} \u2014 policy {threshold.get('policy', '-')}"
            f" \u2014 source: {threshold.get('source', '-')}")


def _table(header, rows, caption=None) -> str:
    """``rows`` hold (text, css class) pairs or plain values; the first column is a name."""
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{_esc(caption)}</caption>")
    out.append("<tr>" + "".join(_cell("th", h, "name" if i == 0 else "") for i, h in enumerate(header))
               + "</tr>")
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text, css = cell if isinstance(cell, tuple) else (cell, "name" if i == 0 else "")
            cells.append(_cell("td", text, css))
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _cell(tag, text, css) -> str:
    attr = f' class="{css}"' if css else ""
    return f"<{tag}{attr}>{_esc(text)}</{tag}>"


def _metric_section(metrics: dict) -> list:
    rows = [("Image AUROC", _num(metrics.get("image_auroc"))),
            ("Pixel AUROC", _num(metrics.get("pixel_auroc"))),
            ("AU-PRO", _num(metrics.get("aupro"))),
            ("F1-max (test-set oracle)", _num(metrics.get("f1_max"))),
            ("F1-max threshold", _num(metrics.get("f1_threshold")))]
    per_type = metrics.get("per_type") or {}
    type_rows = [(name, _num(v.get("count")), _num(v.get("image_auroc"))) for name, v in per_type.items()]
    if metrics.get("eval_resolution"):
        rows.append(("Evaluated at", f"{metrics['eval_resolution']} resolution"))
    out = ["<h2>Metrics</h2>", _table(("Metric", "Value"), rows)]
    if type_rows:
        out.append(_table(("Defect type", "Count", "Image AUROC"), type_rows))
    subsets = {**(metrics.get("subsets") or {}), "all": metrics}
    limits = list(metrics.get("au_spro") or {})
    if metrics.get("subsets") or limits:  # MVTec LOCO: logical / structural apart, AU-sPRO
        header = ("Subset", "Image AUROC", "Pixel AUROC", "AU-PRO") + tuple(f"AU-sPRO@{l}" for l in limits)
        out.append(_table(header, [(name, _num(v.get("image_auroc")), _num(v.get("pixel_auroc")),
                                    _num(v.get("aupro")),
                                    *(_num((v.get("au_spro") or {}).get(l)) for l in limits))
                                   for name, v in subsets.items()]))
    return out


def _decision_section(decision: dict) -> list:
    overall = decision.get("overall") or {}
    rows = [(name, _num(overall.get(key)))
            for name, key in (("Images", "count"), ("Accuracy", "accuracy"), ("Precision", "precision"),
                              ("Recall", "recall"), ("F1", "f1"))]
    conf = overall.get("confusion") or {}
    # Correct cells green, errors red, so a glance shows where the mistakes are.
    confusion = [("Truth good", (_num(conf.get("tn")), "ok"), (_num(conf.get("fp")), "bad")),
                 ("Truth defect", (_num(conf.get("fn")), "bad"), (_num(conf.get("tp")), "ok"))]
    type_rows = [(name, _num(v.get("count")), _num(v.get("predicted_defect")), _num(v.get("accuracy")))
                 for name, v in (decision.get("per_type") or {}).items()]
    out = [f"<h2>Decision at the deployment threshold {_esc(_num(decision.get('threshold')))}</h2>",
           _table(("Overall", "Value"), rows),
           _table(("", "Predicted good", "Predicted defect"), confusion, caption="Confusion matrix")]
    if type_rows:
        out.append(_table(("Defect type", "Count", "Flagged as defect", "Accuracy"), type_rows))
    return out


def _example_sections(examples: dict) -> list:
    out = []
    for heading, items in examples.items():
        if not items:
            continue
        out += [f"<h2>{_esc(heading)}</h2>", "<div class=\"grid\">"]
        for ex in items:
            out.append(f"<figure><img src=\"{_data_uri(ex.png)}\" alt=\"{_esc(ex.caption)}\">"
                       f"<figcaption>{_esc(ex.caption)}</figcaption></figure>")
        out.append("</div>")
    return out


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ---------------------------------------------------------------- plots

def _figure_tools():
    """(Figure, FigureCanvasAgg), imported only here: the module must work without matplotlib,
    and using the Agg canvas directly never touches a display or pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    return Figure, FigureCanvasAgg


def _plot_section(data: ReportData) -> list:
    out = ["<h2>Plots</h2>"]
    try:
        tools = _figure_tools()
    except ImportError:
        return out + [f"<p class=\"missing\">{_esc(NO_MATPLOTLIB)}</p>"]
    labels = np.asarray(data.labels).astype(int).ravel()
    scores = np.asarray(data.scores, dtype=np.float64).ravel()
    pngs, missing = [], []
    if np.unique(labels).size == 2:
        pngs.append(("ROC curve", _plot_png(tools, _draw_roc, labels, scores)))
    else:
        missing.append("ROC curve needs both good and defect test images")
    if data.pro_curve is not None:
        pngs.append(("PRO curve", _plot_png(tools, _draw_pro, *data.pro_curve)))
    pngs.append(("Score histogram", _plot_png(tools, _draw_histogram, labels, scores, data)))
    out.append("<div class=\"plots\">")
    out += [f"<img src=\"{_data_uri(png)}\" alt=\"{_esc(alt)}\">" for alt, png in pngs]
    out.append("</div>")
    return out + [f"<p class=\"missing\">{_esc(text)}</p>" for text in missing]


def _plot_png(tools, draw, *args) -> bytes:
    figure_cls, canvas_cls = tools
    fig = figure_cls(figsize=(4.5, 3.5), dpi=100)
    canvas_cls(fig)
    draw(fig.add_subplot(), *args)
    fig.tight_layout()
    buf = io.BytesIO()
    # No "Software" tag: keeps the file free of URLs and a few bytes smaller.
    # bbox_inches: the histogram's legend sits below its axes and must not be cut off
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight")
    return buf.getvalue()


def _draw_roc(ax, labels, scores):
    from sklearn.metrics import roc_auc_score, roc_curve
    fpr, tpr, _ = roc_curve(labels, scores)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    # margins on both axes: at AUROC 1.0 the curve runs along x = 0 and y = 1, under the frame
    ax.plot(fpr, tpr, lw=2.5, color="tab:blue", label=f"AUROC {roc_auc_score(labels, scores):.4f}",
            clip_on=False, zorder=3)
    ax.set(xlim=(-0.03, 1.0), ylim=(0, 1.03), xlabel="False positive rate", ylabel="True positive rate",
           title="Image ROC")
    ax.legend(loc="lower right")


def _draw_pro(ax, fpr, pro):
    fpr, pro = np.asarray(fpr, dtype=np.float64), np.asarray(pro, dtype=np.float64)
    inside = fpr <= FPR_LIMIT
    xs, ys = fpr[inside], pro[inside]
    if 0 < inside.sum() < fpr.size and xs[-1] < FPR_LIMIT:
        # Close the curve at the limit so it ends where the AU-PRO integral ends.
        xs, ys = np.append(xs, FPR_LIMIT), np.append(ys, np.interp(FPR_LIMIT, fpr, pro))
    ax.plot(xs, ys, lw=2, color="tab:green", label="PRO")
    ax.axvline(FPR_LIMIT, ls="--", color="grey", lw=1, label=f"FPR limit {FPR_LIMIT}")
    ax.set(xlim=(0, FPR_LIMIT * 1.05), ylim=(0, 1.02), xlabel="False positive rate (pixels)",
           ylabel="Per-region overlap", title="PRO curve")
    ax.legend(loc="lower right")


def _draw_histogram(ax, labels, scores, data):
    extra = [(name, np.asarray(values, dtype=np.float64).ravel())
             for name, values in (("validation good", data.val_scores),
                                  ("synthetic defects", data.synthetic_scores)) if values is not None]
    everything = np.concatenate([scores] + [v for _, v in extra])
    everything = everything[np.isfinite(everything)]
    # One set of bins for all series, otherwise the bars are not comparable.
    bins = np.histogram_bin_edges(everything, bins=30) if everything.size else 10
    ax.hist(scores[labels == 0], bins=bins, alpha=0.5, color="tab:blue", label="test good")
    ax.hist(scores[labels == 1], bins=bins, alpha=0.5, color="tab:red", label="test defect")
    for (name, values), color in zip(extra, ("tab:cyan", "tab:orange")):
        ax.hist(values, bins=bins, histtype="step", lw=1.5, color=color, label=name)
    value = data.threshold.get("value")
    if value is not None:
        ax.axvline(value, color="black", ls="--", lw=1.5,
                   label=f"threshold ({data.threshold.get('policy', '-')})")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # whole images, no 0.25 ticks
    ax.set(xlabel="Anomaly score", ylabel="Images", title="Score distribution")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
