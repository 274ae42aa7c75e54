"""Any user's data in place: a folder of good images for training and, optionally, folders of
good and of defective test images and a folder of masks matched to the defective images by name.

    --train_dir good/ [--test_good_dir ok/] [--test_defect_dir ng/] [--mask_dir masks/]

Defective images directly in --test_defect_dir are of type "defect"; those in a subfolder take
its name as their defect type. A mask belongs to the defective image with the same relative path
and name (any image extension, optionally ending in _mask: ng/scratch/7.jpg <- masks/scratch/7.png
or masks/scratch/7_mask.png). With --mask_dir, every defective image needs its mask and every mask
its image, so a misnamed file is found before evaluation starts.
"""
import os

from adkit.core.errors import UserError
from adkit.core.image_io import find_images

from .common import Category, TestItem

OPTIONS = ("train_dir", "test_good_dir", "test_defect_dir", "mask_dir")


class FolderCategory(Category):
    def __init__(self, cfg, cls):
        self.dirs = {name: cfg.get(name) for name in OPTIONS}
        if not self.dirs["train_dir"]:
            raise UserError("--data_format folder needs --train_dir (a folder of good images)")
        for name, folder in self.dirs.items():
            if folder and not os.path.isdir(folder):
                raise UserError(f"--{name} {folder}: folder not found")
        train = os.path.abspath(self.dirs["train_dir"])
        self.name = cls if cls and cls != "all" else os.path.basename(train.rstrip(os.sep))
        self.root = os.path.commonpath([os.path.abspath(d) for d in self.dirs.values() if d])

    def train_paths(self):
        return find_images(self.dirs["train_dir"], "--train_dir")

    def test_items(self):
        good_dir, defect_dir = self.dirs["test_good_dir"], self.dirs["test_defect_dir"]
        if not good_dir and not defect_dir:
            raise UserError("--data_format folder: evaluation needs --test_good_dir and/or "
                            "--test_defect_dir")
        items = [TestItem(p, "good", None) for p in find_images(good_dir, "--test_good_dir")] if good_dir else []
        defects = find_images(defect_dir, "--test_defect_dir") if defect_dir else []
        masks = self._masks_for(defects) if self.dirs["mask_dir"] else {}
        for path in defects:
            relative = os.path.relpath(path, defect_dir)
            defect_type = relative.split(os.sep)[0] if os.sep in relative else "defect"
            items.append(TestItem(path, defect_type, masks.get(path)))
        return items

    def _masks_for(self, defects):
        """{defective image: its mask}; one error line for images without and masks without."""
        defect_dir, mask_dir = self.dirs["test_defect_dir"], self.dirs["mask_dir"]
        if not defect_dir:
            raise UserError("--mask_dir needs --test_defect_dir (the images the masks belong to)")
        by_key = {}
        for mask in find_images(mask_dir, "--mask_dir"):
            key = _key(os.path.relpath(mask, mask_dir))
            key = key[:-len("_mask")] if key.endswith("_mask") else key
            if key in by_key:
                raise UserError(f"--mask_dir {mask_dir}: {by_key[key]} and {mask} name the same image")
            by_key[key] = mask
        matched = {path: by_key.pop(_key(os.path.relpath(path, defect_dir)), None) for path in defects}
        unmatched = sorted(by_key.values())
        if unmatched:
            raise UserError(f"--mask_dir {mask_dir}: {len(unmatched)} mask(s) match no image in "
                            f"--test_defect_dir, e.g. {unmatched[0]} (expected the same relative "
                            "path and name, optionally ending in _mask)")
        missing = sorted(path for path, mask in matched.items() if mask is None)
        if missing:
            raise UserError(f"--mask_dir {mask_dir}: no mask for {len(missing)} defective image(s), "
                            f"e.g. {missing[0]}")
        return matched


def _key(relative):
    return os.path.splitext(relative)[0]
