"""What every dataset layout yields: good training paths, test items with labels and masks, and
the in-memory datasets the models read (images resized to the model size)."""
import os
from dataclasses import dataclass

import numpy as np

from adkit.core import errors
from adkit.core.errors import UserError
from adkit.core.image_io import (image_hw, list_images, read_label_mask, read_rgb, resize_mask, resize_rgb,
                                 to_chw_float)


def split_train_val(paths, val_ratio, seed, at_least=1):
    """A seeded split of good training images into (train, validation); both non-empty if >= 2.
    ``at_least``: the fewest validation images wanted (see ``validation_count``)."""
    if not 0.0 <= val_ratio < 1.0:
        raise UserError(f"--val_ratio must be in [0, 1), got {val_ratio}")
    order = np.random.default_rng(seed).permutation(len(paths))
    n_val = validation_count(len(paths), val_ratio, at_least)
    val = sorted(paths[i] for i in order[:n_val])
    train = sorted(paths[i] for i in order[n_val:])
    return train, val


def validation_count(n, val_ratio, at_least=1):
    """How many of ``n`` images split_train_val holds out: round(n * val_ratio), raised to
    ``at_least`` as long as that leaves training at least half of them, and never all of them.
    None held out when val_ratio is 0."""
    n_val = int(round(n * val_ratio))
    if val_ratio > 0 and n >= 2:
        n_val = min(max(n_val, 1, min(at_least, n // 2)), n - 1)
    return n_val


def images_in(folder, purpose):
    """The images directly inside ``folder``; one error line when there are none."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: folder not found ({purpose})")
    paths = list_images(folder)
    if not paths:
        raise UserError(f"{folder}: no images found (expected .png/.jpg/... files)")
    return paths


@dataclass
class TestItem:
    path: str
    defect_type: str
    # None: a good image, or a defect type shipped without masks. A file: one mask (nonzero =
    # defect). A folder: one PNG per defect (MVTec LOCO), each holding the defect's id.
    mask_path: str | None

    @property
    def label(self):
        return 0 if self.defect_type == "good" else 1


@dataclass(frozen=True)
class DefectKind:
    """A MVTec LOCO defects_config.json entry: how much of a defect must be found (sPRO)."""
    name: str
    saturation_threshold: float  # pixels, or a fraction of the defect's area when relative
    relative: bool


class Category:
    """One category of any layout: ``name``, ``root`` (the folder outputs mirror),
    ``train_paths()``, ``val_paths()`` (None: split off --val_ratio of the training images),
    ``test_items()``; ``defect_kinds`` {mask pixel value: DefectKind} when the layout defines
    saturation thresholds (sPRO); ``subsets`` {name: defect types} reported apart (with the good
    images) besides the whole test set."""
    defect_kinds = None
    subsets = {}

    def val_paths(self):
        return None


def read_defect_masks(mask_path, hw):
    """[(bool HxW, pixel value)], one per defect: a mask file is one defect, a folder one PNG per
    defect. Every mask must match its image's size ``hw``."""
    files = list_images(mask_path) if os.path.isdir(mask_path) else [mask_path]
    masks = []
    for path in files:
        values = read_label_mask(path, hw)
        if values.any():
            masks.append((values > 0, int(values.max())))
    return masks


def union_mask(mask_path, hw):
    """{0,1} uint8 HxW: the pixels of any defect of the image."""
    union = np.zeros(hw, np.uint8)
    for mask, _ in read_defect_masks(mask_path, hw):
        union |= mask
    return union


class ImageDataset:
    """Images resized to the model size (``image_size``: a side or (height, width)), as float32
    3xHxW in [0,1]; resized uint8 kept in memory. ``image_size=None``: photos at their own
    size, read again on each use (tiled models: a set of camera photos may not fit in memory)."""

    def __init__(self, paths, image_size):
        self.paths = list(paths)
        self.image_size = None if image_size is None else image_hw(image_size)
        self._cache = {}
        self.original_hw = {}

    def __len__(self):
        return len(self.paths)

    def load_uint8(self, i):
        if i in self._cache:
            return self._cache[i]
        image = read_rgb(self.paths[i])
        self.original_hw[i] = image.shape[:2]
        if self.image_size is None:
            return image
        self._cache[i] = resize_rgb(image, self.image_size)
        return self._cache[i]

    def __getitem__(self, i):
        return to_chw_float(self.load_uint8(i))

    def photo_hw(self, i):
        """(height, width) of image i as read from its file."""
        if i not in self.original_hw:
            self.load_uint8(i)
        return self.original_hw[i]

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
    """adkit.core.errors.raise_if_bad for ``find_bad``'s [(index, message)]."""
    errors.raise_if_bad([message for _, message in bad], shown)


class TestDataset(ImageDataset):
    """Test images with labels, defect types and masks, at the model size (nearest neighbour) or
    at each image's own size; ``defect_kinds`` as Category.defect_kinds."""

    def __init__(self, items, image_size, defect_kinds=None):
        super().__init__([item.path for item in items], image_size)
        self.items = list(items)
        self.defect_kinds = defect_kinds

    def _check_extra(self, i):
        # defects() reads every mask file (sizes checked) and checks the defect ids against the
        # saturation thresholds; without thresholds the union mask is the check
        if self.defect_kinds is None:
            self.mask(i)
        else:
            self.defects(i)

    def _subset(self, keep):
        subset = super()._subset(keep)
        subset.__class__ = TestDataset
        subset.items = [self.items[i] for i in keep]
        subset.defect_kinds = self.defect_kinds
        return subset

    def mask(self, i):
        """(mask HxW {0,1} at the model size, or at the image's own size for photos kept at
        their size, whether a ground truth exists for the image)."""
        item = self.items[i]
        size = self.image_size or self.photo_hw(i)
        if item.mask_path is None:
            return np.zeros(size, np.uint8), item.label == 0
        full = self.full_mask(i)
        return (full if self.image_size is None else resize_mask(full, size)), True

    def full_mask(self, i):
        """{0,1} uint8 mask at the image's own size (all zeros without a ground truth)."""
        hw = self.photo_hw(i)  # the size the mask must match
        item = self.items[i]
        return np.zeros(hw, np.uint8) if item.mask_path is None else union_mask(item.mask_path, hw)

    def defects(self, i, at_model_size=False):
        """[(bool mask, saturation area)] per defect of image i, for sPRO; None when the layout
        has no saturation thresholds. Model size: masks resized (nearest) and absolute
        thresholds scaled by the change of area, so a defect needs the same share found."""
        from adkit.evaluate.pixel_metrics import saturation_area

        item = self.items[i]
        if self.defect_kinds is None or item.mask_path is None:
            return None if self.defect_kinds is None else []
        hw = self.photo_hw(i)
        scale = self.image_size[0] * self.image_size[1] / float(hw[0] * hw[1]) if at_model_size else 1.0
        result = []
        for mask, value in read_defect_masks(item.mask_path, hw):
            kind = self.defect_kinds.get(value)
            if kind is None:
                raise UserError(f"{item.mask_path}: a mask holds defect id {value}, which the "
                                f"defects_config.json does not list (known: "
                                f"{', '.join(map(str, sorted(self.defect_kinds)))})")
            if at_model_size:
                mask = resize_mask(mask.astype(np.uint8), self.image_size) > 0
            threshold = kind.saturation_threshold * (1.0 if kind.relative else scale)
            result.append((mask, saturation_area(int(mask.sum()), threshold, kind.relative)))
        return result
