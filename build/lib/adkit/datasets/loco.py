"""MVTec LOCO AD: MVTec's folders plus validation/good, test/{logical,structural}_anomalies,
one folder of mask PNGs per test image (one PNG per defect, holding the defect's id) and
defects_config.json (the sPRO saturation threshold of each defect kind)."""
import json
import os

from adkit.core.errors import UserError
from adkit.core.image_io import list_images

from .common import DefectKind, images_in
from .mvtec import MVTecCategory

DEFECTS_CONFIG = "defects_config.json"


class LocoCategory(MVTecCategory):
    subsets = {"logical": ("logical_anomalies",), "structural": ("structural_anomalies",)}

    def __init__(self, data_dir, cls):
        super().__init__(data_dir, cls)
        self.defect_kinds = read_defects_config(os.path.join(self.root, DEFECTS_CONFIG))

    def val_paths(self):
        return images_in(os.path.join(self.root, "validation", "good"),
                         "MVTec LOCO ships its validation images there")

    def _mask_of(self, gt_dir, path, defect_type):
        folder = os.path.join(gt_dir, os.path.splitext(os.path.basename(path))[0])
        if not os.path.isdir(folder) or not list_images(folder):
            raise UserError(f"{folder}: mask folder missing or empty for {path} (MVTec LOCO keeps "
                            "one folder of mask PNGs per test image)")
        return folder


def read_defects_config(path):
    """{pixel value: DefectKind} from defects_config.json (a list of {defect_name, pixel_value,
    saturation_threshold, relative_saturation})."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found (MVTec LOCO AD ships it in every category; "
                        "sPRO needs its saturation thresholds)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    keys = ("defect_name", "pixel_value", "saturation_threshold", "relative_saturation")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and set(keys) <= set(e) for e in entries):
        raise UserError(f"{path}: expected a list of {{{', '.join(keys)}}} entries")
    kinds = {}
    for entry in entries:
        threshold, relative = entry["saturation_threshold"], bool(entry["relative_saturation"])
        if not isinstance(threshold, (int, float)) or threshold <= 0 or (relative and threshold > 1):
            raise UserError(f"{path}: {entry['defect_name']}: saturation_threshold must be > 0 "
                            f"(and <= 1 when relative), got {threshold!r}")
        kinds[int(entry["pixel_value"])] = DefectKind(str(entry["defect_name"]), float(threshold), relative)
    return kinds
