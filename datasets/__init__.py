"""Dataset layouts on disk: which files are training, validation and test images, their labels,
defect types and masks. Reading and resizing images is adkit.core.image_io.

``--data_format``: mvtec (MVTec AD folders; also what tools/prepare_dataset.py and
tools/make_synthetic.py write), loco (MVTec LOCO AD), visa (VisA's split_csv/1cls.csv), folder
(any folders of the user's, see datasets/folder.py). Every layout is read in place: nothing is
copied."""
from .common import Category, ImageDataset, TestDataset, TestItem, raise_if_bad, split_train_val, validation_count
from .mvtec import MVTecCategory


def find_categories(cfg):
    """The categories ``--cls all`` stands for."""
    data_format = cfg.get("data_format", "mvtec")
    if data_format == "visa":
        from .visa import find_categories as visa_categories

        return visa_categories(cfg["data_dir"])
    if data_format == "folder":
        return [open_category(cfg, "all").name]
    from .mvtec import find_categories as folder_categories

    return folder_categories(cfg["data_dir"])


def open_category(cfg, cls):
    """The Category ``cls`` of the dataset the config points at."""
    data_format = cfg.get("data_format", "mvtec")
    if data_format == "loco":
        from .loco import LocoCategory

        return LocoCategory(cfg["data_dir"], cls)
    if data_format == "visa":
        from .visa import VisaCategory

        return VisaCategory(cfg["data_dir"], cls)
    if data_format == "folder":
        from .folder import FolderCategory

        return FolderCategory(cfg, cls)
    return MVTecCategory(cfg["data_dir"], cls)


__all__ = ["Category", "ImageDataset", "MVTecCategory", "TestDataset", "TestItem",
           "find_categories", "open_category", "raise_if_bad", "split_train_val",
           "validation_count"]
