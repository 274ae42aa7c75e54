"""Dataset layouts on disk (MVTec AD today): which files are training, validation and test
images, their labels, defect types and masks. Reading and resizing images is adkit.image_io."""
from .mvtec import ImageDataset, MVTecCategory, TestDataset, find_categories, split_train_val

__all__ = ["MVTecCategory", "ImageDataset", "TestDataset", "find_categories", "split_train_val"]
