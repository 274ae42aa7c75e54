"""The MVTec AD folder layout: <cls>/train/good, <cls>/test/<type>, <cls>/ground_truth/<type>."""
import os
from dataclasses import dataclass

import numpy as np

from adkit.errors import UserError

from adkit.image_io import list_images, read_mask, read_rgb, resize_mask, resize_rgb, to_chw_float


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


def split_train_val(paths, val_ratio, seed):
    """A seeded split of good training images into (train, validation); both non-empty if >= 2."""
    if not 0.0 <= val_ratio < 1.0:
        raise UserError(f"--val_ratio must be in [0, 1), got {val_ratio}")
    order = np.random.default_rng(seed).permutation(len(paths))
    n_val = int(round(len(paths) * val_ratio))
    if val_ratio > 0 and len(paths) >= 2:
        n_val = min(max(n_val, 1), len(paths) - 1)
    val = sorted(paths[i] for i in order[:n_val])
    train = sorted(paths[i] for i in order[n_val:])
    return train, val


@dataclass
class TestItem:
    path: str
    defect_type: str
    mask_path: str | None  # None: good image, or a defect type shipped without masks

    @property
    def label(self):
        return 0 if self.defect_type == "good" else 1


class MVTecCategory:
    """One category folder: lists its files and validates the layout up front."""

    def __init__(self, data_dir, cls):
        self.root = os.path.join(data_dir, cls)
        self.name = cls
        if not os.path.isdir(self.root):
            known = ", ".join(find_categories(data_dir))
            raise UserError(f"--cls {cls}: no such category in {data_dir} (found: {known})")

    def train_paths(self):
        folder = os.path.join(self.root, "train", "good")
        if not os.path.isdir(folder):
            raise UserError(f"{folder}: folder not found (training needs good images there)")
        paths = list_images(folder)
        if not paths:
            raise UserError(f"{folder}: no images found (expected .png/.jpg/... files)")
        return paths

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
                    stem = os.path.splitext(os.path.basename(path))[0]
                    mask_path = os.path.join(gt_dir, f"{stem}_mask.png")
                    if not os.path.isfile(mask_path):
                        raise UserError(f"{mask_path}: mask missing for {path} "
                                        f"(ground_truth/{defect_type} exists, so every image needs one)")
                items.append(TestItem(path, defect_type, mask_path))
        if not items:
            raise UserError(f"{test_dir}: no test images found")
        return items


class ImageDataset:
    """Images resized to the model size, as float32 3xHxW in [0,1]; resized uint8 kept in memory."""

    def __init__(self, paths, image_size):
        self.paths = list(paths)
        self.image_size = image_size
        self._cache = {}
        self.original_hw = {}

    def __len__(self):
        return len(self.paths)

    def load_uint8(self, i):
        if i not in self._cache:
            image = read_rgb(self.paths[i])
            self.original_hw[i] = image.shape[:2]
            self._cache[i] = resize_rgb(image, self.image_size)
        return self._cache[i]

    def __getitem__(self, i):
        return to_chw_float(self.load_uint8(i))

    def preload(self):
        """Read every image now: broken files stop the run before training or evaluation, not
        hours in, and all of them are named at once."""
        raise_if_bad(self.find_bad())
        return self

    def find_bad(self):
        """Read every image (and mask) now; [(index, message)] for those that fail."""
        bad = []
        for i in range(len(self)):
            try:
                self.load_uint8(i)
                self._check_extra(i)
            except UserError as err:
                bad.append((i, str(err)))
        return bad

    def _check_extra(self, i):
        pass

    def without(self, indices):
        """A copy without the items at ``indices`` (images skipped with --skip_bad_images)."""
        drop = set(indices)
        keep = [i for i in range(len(self)) if i not in drop]
        return self._subset(keep)

    def _subset(self, keep):
        subset = ImageDataset([self.paths[i] for i in keep], self.image_size)
        subset._cache = {n: self._cache[i] for n, i in enumerate(keep) if i in self._cache}
        subset.original_hw = {n: self.original_hw[i] for n, i in enumerate(keep) if i in self.original_hw}
        return subset


def raise_if_bad(bad, shown=5):
    """One line naming the first few bad files and counting the rest."""
    if not bad:
        return
    head = "; ".join(message for _, message in bad[:shown])
    more = f"; and {len(bad) - shown} more" if len(bad) > shown else ""
    prefix = "" if len(bad) == 1 else f"{len(bad)} bad files: "
    raise UserError(prefix + head + more)


class TestDataset(ImageDataset):
    """Test images with labels, defect types and masks at the model size (nearest neighbour)."""

    def __init__(self, items, image_size):
        super().__init__([item.path for item in items], image_size)
        self.items = list(items)

    def _check_extra(self, i):
        self.mask(i)

    def _subset(self, keep):
        subset = super()._subset(keep)
        subset.__class__ = TestDataset
        subset.items = [self.items[i] for i in keep]
        return subset

    def mask(self, i):
        """(mask HxW {0,1} at the model size, whether a ground truth exists for the image)."""
        item = self.items[i]
        size = self.image_size
        if item.mask_path is None:
            return np.zeros((size, size), np.uint8), item.label == 0
        self.load_uint8(i)  # records the original size the mask must match
        return resize_mask(read_mask(item.mask_path, self.original_hw[i]), size), True
