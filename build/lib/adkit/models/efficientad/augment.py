"""Images EfficientAD trains on besides the good parts: the autoencoder's colour jitter and the
generic images of the optional ImageNet penalty.
"""

import numpy as np

from adkit.core.image_io import find_images, image_hw, read_rgb, resize_rgb, to_chw_float


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(3, 1, 1)  # ITU-R 601, as PIL


def _grayscale(image):
    return (image * _LUMA).sum(axis=0, keepdims=True)


def color_jitter(image, kind, factor):
    """One of torchvision's ColorJitter adjustments on a float [3,H,W] image in [0,1]:
    kind 0 brightness (scale), 1 contrast (blend with the mean gray level), 2 saturation
    (blend with the per-pixel gray image); clipped to [0,1]."""
    if kind == 0:
        adjusted = image * factor
    elif kind == 1:
        adjusted = factor * image + (1 - factor) * _grayscale(image).mean()
    else:
        adjusted = factor * image + (1 - factor) * _grayscale(image)
    return np.clip(adjusted, 0.0, 1.0).astype(np.float32)


def random_color_jitter(image):
    """The paper's AE augmentation as nelson1425 implements it: ONE of brightness, contrast,
    saturation chosen uniformly, factor uniform in [0.8, 1.2] (numpy's global RNG, which
    seed_step re-seeds every step)."""
    return color_jitter(image, np.random.randint(3), np.random.uniform(0.8, 1.2))


class PenaltyImages:
    """Generic images (e.g. ImageNet train) for the penalty loss, prepared as the reference:
    resize to twice image_size (a side or (height, width)), grayscale with probability 0.3,
    centre crop image_size."""

    def __init__(self, folder, image_size):
        self.paths = find_images(folder, "--penalty_dir")
        self.height, self.width = image_hw(image_size)

    def sample(self, count):
        """``count`` random images as float32 [count,3,H,W] in [0,1] (numpy's global RNG)."""
        return np.stack([self._prepare(self.paths[np.random.randint(len(self.paths))])
                         for _ in range(count)])

    def _prepare(self, path):
        image = to_chw_float(resize_rgb(read_rgb(path), (2 * self.height, 2 * self.width)))
        if np.random.rand() < 0.3:
            image = np.repeat(_grayscale(image), 3, axis=0)
        # torchvision CenterCrop's offsets
        top, left = int(round(self.height / 2.0)), int(round(self.width / 2.0))
        return image[:, top:top + self.height, left:left + self.width]
