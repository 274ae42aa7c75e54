"""The tables eval prints: metrics per category with the mean, subsets (MVTec LOCO) and the
decision at the deployment threshold."""


def _cell(value, width=11):
    return f"{'-' if value is None else format(value, '.4f'):>{width}}"


def format_table(summary):
    keys = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "accuracy", "precision", "recall")
    rows = list(summary["categories"].items()) + [("mean", summary["mean"])]
    width = _name_width(name for name, _ in rows)
    lines = [f"{'category':<{width}}" + "".join(f"{k:>12}" for k in keys)]
    for name, values in rows:
        decision = (values.get("decision") or {}).get("overall", values)
        merged = {**values, **{k: decision.get(k) for k in ("accuracy", "precision", "recall")}}
        lines.append(f"{name:<{width}}" + "".join(_cell(merged.get(k), 12) for k in keys))
    return "\n".join(lines)


def _name_width(names, least=16):
    """First-column width: long category or defect-type names keep the columns aligned."""
    return max([least] + [len(str(name)) + 2 for name in names])


def format_subsets(cls, result):
    """Each subset (MVTec LOCO: logical, structural) and the whole set, with AU-sPRO at the
    official script's FPR limits when the dataset defines saturation thresholds."""
    limits = list(result.get("au_spro") or {})
    keys = ("image_auroc", "pixel_auroc", "aupro")
    rows = list((result.get("subsets") or {}).items()) + [("all", result)]
    title = f"{cls} subsets"
    width = _name_width([name for name, _ in rows] + [title])
    lines = [f"{title:<{width}}" + "".join(f"{k:>12}" for k in keys)
             + "".join(f"{'au_spro@' + limit:>14}" for limit in limits)]
    for name, values in rows:
        spro = values.get("au_spro") or {}
        lines.append(f"{name:<{width}}" + "".join(_cell(values.get(k), 12) for k in keys)
                     + "".join(_cell(spro.get(limit), 14) for limit in limits))
    return "\n".join(lines)


def format_decision(cls, result):
    """The table users of the custom-dataset EfficientAD fork expect, at the deployment threshold."""
    decision, threshold = result["decision"], result["threshold"]
    overall, c = decision["overall"], decision["overall"]["confusion"]
    width = _name_width(decision["per_type"])
    lines = [f"{cls}: threshold {threshold['value']:.6g} "
             f"({threshold['policy']}: {threshold['source']})",
             f"{'type':<{width}}{'count':>7}{'flagged':>9}{'accuracy':>11}"]
    for name, row in decision["per_type"].items():
        lines.append(f"{name:<{width}}{row['count']:>7}{row['predicted_defect']:>9}"
                     f"{_cell(row['accuracy'])}")
    lines.append(f"{'overall':<{width}}{overall['count']:>7}{c['tp'] + c['fp']:>9}"
                 f"{_cell(overall['accuracy'])}   precision {_cell(overall['precision'], 0)}"
                 f"  recall {_cell(overall['recall'], 0)}  F1 {_cell(overall['f1'], 0)}")
    lines.append(f"confusion (rows truth, cols predicted): good [{c['tn']} {c['fp']}]  "
                 f"defect [{c['fn']} {c['tp']}]")
    return "\n".join(lines)
