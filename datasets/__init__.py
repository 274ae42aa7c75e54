from .image_io import collect_images, read_rgb, read_mask, resize_rgb, to_chw_float, list_images
from .mvtec import MVTecCategory, ImageDataset, TestDataset, find_categories, split_train_val

__all__ = ["collect_images", "read_rgb", "read_mask", "resize_rgb", "to_chw_float", "list_images", "MVTecCategory",
           "ImageDataset", "TestDataset", "find_categories", "split_train_val"]
