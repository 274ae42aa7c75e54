"""Where a category's checkpoint lives, which categories a run covers, and its training-side
images (train and validation), as every pipeline finds them."""
import os

from datasets import find_categories, ImageDataset, open_category, split_train_val


def checkpoint_dir(cfg, cls):
    return os.path.join(cfg["output_dir"], cfg["model"], cls)


def categories_for(cfg):
    if cfg["cls"] == "all":
        return find_categories(cfg)
    return [cfg["cls"]]


def training_side(cfg, cls, category=None):
    """(train set, validation set) of good images: the dataset's own validation images where
    it has them (MVTec LOCO), else split off the training images as training split them."""
    category = category or open_category(cfg, cls)
    val_paths = category.val_paths()
    if val_paths is None:
        train_paths, val_paths = split_train_val(category.train_paths(), cfg["val_ratio"], cfg["seed"])
    else:
        train_paths = category.train_paths()
    size = cfg["image_size"]
    return ImageDataset(train_paths, size), ImageDataset(val_paths, size)
