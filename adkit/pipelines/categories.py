"""Where a category's checkpoint lives, which categories a run covers, and its training-side
images (train and validation), as every pipeline finds them."""
import os

from adkit.core.image_io import aspect_note
from adkit.core.progress import log
from adkit.core.tiling import Tiling, TileSet
from adkit.datasets import find_categories, ImageDataset, open_category, split_train_val, validation_count
from adkit.evaluate.calibration import FEW_VALIDATION_IMAGES

# a threshold from fewer validation images is a guess (calibration.few_validation_warning)
MIN_VALIDATION_IMAGES = FEW_VALIDATION_IMAGES + 1


def checkpoint_dir(cfg, cls):
    return os.path.join(cfg["output_dir"], cfg["model"], cls)


def categories_for(cfg):
    if cfg["cls"] == "all":
        return find_categories(cfg)
    return [cfg["cls"]]


def training_side(cfg, cls, category=None):
    """(train set, validation set) of good images: the dataset's own validation images where
    it has them (MVTec LOCO), else split off the training images as training split them, at
    least MIN_VALIDATION_IMAGES of them when there are twice as many."""
    category = category or open_category(cfg, cls)
    val_paths = category.val_paths()
    if val_paths is None:
        paths = category.train_paths()
        train_paths, val_paths = split_train_val(paths, cfg["val_ratio"], cfg["seed"],
                                                 at_least=MIN_VALIDATION_IMAGES)
        _note_raised_validation(cls, len(paths), cfg["val_ratio"], len(val_paths))
    else:
        train_paths = category.train_paths()
    size = None if cfg.get("tile_size") else cfg["image_size"]  # tiles: photos at their own size
    return ImageDataset(train_paths, size), ImageDataset(val_paths, size)


def _note_raised_validation(cls, n, val_ratio, n_val):
    """Says so when the validation images are more than --val_ratio alone would hold out."""
    by_ratio = validation_count(n, val_ratio)
    if n_val > by_ratio:
        log.info("[%s] %d of the %d training images held out for validation, not the %d of "
                 "--val_ratio %g: a threshold needs at least %d", cls, n_val, n, by_ratio,
                 val_ratio, MIN_VALIDATION_IMAGES)


def one_process_for_tiles(cfg):
    """Tiled photos are scored one process at a time (photo maps of different sizes are not
    gathered across processes): refused up front, before any long work, on several."""
    from adkit.core import distributed
    from adkit.core.errors import UserError

    if cfg.get("tile_size") and distributed.world_size() > 1:
        raise UserError(f"--tile_size with --model {cfg['model']} runs in one process: start main.py "
                        "without paddle.distributed.launch")


def fitting_sets(cfg, cls, train_set, val_set):
    """What a method fits on (preloaded training-side sets in): the images themselves, or with
    --tile_size their tiles (TileSet; the validation photos' tiles too, e.g. for
    EfficientAD's map quantiles), logged once with how many there are."""
    tiling = Tiling.from_config(cfg)
    if tiling is None:
        if len(train_set):
            note = aspect_note(train_set.photo_hw(0), cfg["image_size"])
            if note:
                log.info("[%s] %s", cls, note)
        return train_set, val_set
    max_tiles = int(cfg["max_train_tiles"])
    tiles = TileSet(train_set, tiling, max_tiles, cfg["seed"], "cutting training tiles")
    val_tiles = TileSet(val_set, tiling, max_tiles, cfg["seed"], "cutting validation tiles")
    sizes = {train_set.photo_hw(i) for i in range(len(train_set))}
    log.info("[%s] %s%s", cls, tiling.describe(*train_set.photo_hw(0)),
             "" if len(sizes) == 1 else f" (photo sizes vary: {len(sizes)} sizes)")
    log.info("[%s] training on %s of %d photos%s", cls,
             f"a seeded sample of {len(tiles)} of their {tiles.total} tiles (--max_train_tiles {max_tiles})"
             if tiles.sampled else f"all {len(tiles)} tiles", len(train_set),
             f"; validation: {len(val_tiles)} tiles of {len(val_set)} photos" if len(val_set) else "")
    return tiles, val_tiles
