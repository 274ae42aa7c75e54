from .image_io import (collect_images, folder_label, list_images, model_input, read_mask, read_rgb,
                       resize_rgb, to_chw_float)
from .mvtec import ImageDataset, MVTecCategory, TestDataset, find_categories, split_train_val

__all__ = ["collect_images", "folder_label", "read_rgb", "read_mask", "resize_rgb", "to_chw_float",
           "list_images", "model_input", "MVTecCategory", "ImageDataset", "TestDataset", "find_categories",
           "split_train_val"]
