"""The MVTec AD folder layout: <cls>/train/good, <cls>/test/<type>, <cls>/ground_truth/<type>."""
import os

from adkit.core.errors import UserError
from adkit.core.image_io import list_images

from .common import Category, TestItem, images_in


def find_categories(data_dir):
    """Category folders under ``data_dir`` (those with a train/good or test folder)."""
    if not os.path.isdir(data_dir):
        raise UserError(f"--data_dir {data_dir}: folder not found")
    found = [name for name in sorted(os.listdir(data_dir))
             if os.path.isdir(os.path.join(data_dir, name, "train", "good"))
             or os.path.isdir(os.path.join(data_dir, name, "test"))]
    if not found:
        raise UserError(f"--data_dir {data_dir}: no category folders in MVTec layout "
                        "(<cls>/train/good, <cls>/test/<type>)")
    return found


class MVTecCategory(Category):
    """One category folder: lists its files and validates the layout up front."""

    def __init__(self, data_dir, cls):
        self.root = os.path.join(data_dir, cls)
        self.name = cls
        if not os.path.isdir(self.root):
            known = ", ".join(find_categories(data_dir))
            raise UserError(f"--cls {cls}: no such category in {data_dir} (found: {known})")

    def train_paths(self):
        return images_in(os.path.join(self.root, "train", "good"), "training needs good images there")

    def test_items(self):
        test_dir = os.path.join(self.root, "test")
        if not os.path.isdir(test_dir):
            raise UserError(f"{test_dir}: folder not found (evaluation needs test/<type>/ images)")
        items = []
        for defect_type in sorted(os.listdir(test_dir)):
            type_dir = os.path.join(test_dir, defect_type)
            if not os.path.isdir(type_dir):
                continue
            gt_dir = os.path.join(self.root, "ground_truth", defect_type)
            for path in list_images(type_dir):
                mask_path = None
                if defect_type != "good" and os.path.isdir(gt_dir):
                    mask_path = self._mask_of(gt_dir, path, defect_type)
                items.append(TestItem(path, defect_type, mask_path))
        if not items:
            raise UserError(f"{test_dir}: no test images found")
        return items

    def _mask_of(self, gt_dir, path, defect_type):
        stem = os.path.splitext(os.path.basename(path))[0]
        mask_path = os.path.join(gt_dir, f"{stem}_mask.png")
        if not os.path.isfile(mask_path):
            raise UserError(f"{mask_path}: mask missing for {path} "
                            f"(ground_truth/{defect_type} exists, so every image needs one)")
        return mask_path
