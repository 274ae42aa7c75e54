"""Photos at their own resolution: cutting a photo into overlapping tiles of its own pixels,
each resized to the model input, and blending the tiles' anomaly maps back into one map of the
photo's size. The one implementation behind training, calibration, eval, the Predictor (infer.py,
main.py --mode infer) and the service; the exported graph scores one tile batch at a time.
"""
from dataclasses import dataclass

import cv2
import numpy as np

from adkit.core.errors import UserError
from adkit.core.image_io import image_hw, resize_rgb, size_text, to_chw_float
from adkit.core.progress import progress

# With no --tile_stride, tiles advance by 3/4 of their size: a quarter overlaps, so a defect
# on one tile's border lies inside the next one, at 1.8x the tiles of a plain grid.
DEFAULT_OVERLAP = 0.25
MIN_WEIGHT = 1e-3  # blending weight at a tile's very edge (> 0: a border seen by one tile counts)


def check_tiling(tile_size, tile_stride, image_size):
    """One error line for tile options that cannot work: a stride larger than the tile (pixels
    between tiles never scored), or a tile whose aspect ratio differs from the model input's
    (each tile is resized to --image_size: it would be squashed)."""
    tile = image_hw(tile_size)
    model = image_hw(image_size)
    stride = image_hw(tile_stride) if tile_stride is not None else default_stride(tile)
    if min(tile) < 8 or min(stride) < 1:
        raise UserError(f"--tile_size must be at least 8 pixels and --tile_stride at least 1, got "
                        f"{size_text(tile)} and {size_text(stride)}")
    if stride[0] > tile[0] or stride[1] > tile[1]:
        raise UserError(f"--tile_stride {size_text(stride)} is larger than --tile_size "
                        f"{size_text(tile)}: the pixels between tiles would never be scored")
    if abs(tile[0] * model[1] - tile[1] * model[0]) > 0.02 * tile[1] * model[0]:
        raise UserError(f"--tile_size {size_text(tile)} and --image_size {size_text(model)} have "
                        "different aspect ratios: each tile is resized to --image_size, so it "
                        f"would be squashed (use --tile_size {tile[0]}x{round(tile[0] * model[1] / model[0])})")


def default_stride(tile):
    return tuple(max(1, int(round(side * (1 - DEFAULT_OVERLAP)))) for side in tile)


@dataclass(frozen=True)
class Tiling:
    """Tiles of ``tile`` (height, width) photo pixels every ``stride`` pixels, each resized to
    the model input ``model`` (height, width)."""
    tile: tuple
    stride: tuple
    model: tuple

    @classmethod
    def from_config(cls, cfg):
        """The Tiling of a config or deploy_config dict (``tile_size``, ``tile_stride``,
        ``image_size``), None when it has no tiles."""
        if not cfg.get("tile_size"):
            return None
        tile = image_hw(cfg["tile_size"])
        stride = cfg.get("tile_stride")
        return cls(tile, image_hw(stride) if stride else default_stride(tile), image_hw(cfg["image_size"]))

    def as_config(self):
        """What train_config.json and deploy_config.json store."""
        return {"tile_size": list(self.tile), "tile_stride": list(self.stride)}

    def boxes(self, height, width):
        """(top, left, height, width) of every tile of a height x width photo, row by row. The
        last tile of a row or column is moved back to end at the photo's edge, so every pixel
        is covered and every tile is whole; a photo smaller than a tile gives one tile of the
        photo's size on that axis."""
        rows = _starts(height, self.tile[0], self.stride[0])
        cols = _starts(width, self.tile[1], self.stride[1])
        th, tw = min(self.tile[0], height), min(self.tile[1], width)
        return [(top, left, th, tw) for top in rows for left in cols]

    def count(self, height, width):
        return len(_starts(height, self.tile[0], self.stride[0])) * len(_starts(width, self.tile[1], self.stride[1]))

    def cut(self, image, box):
        """One tile of ``image`` (uint8 HxWx3) resized to the model input (uint8)."""
        top, left, h, w = box
        return resize_rgb(np.ascontiguousarray(image[top:top + h, left:left + w]), self.model)

    def describe(self, height, width):
        return (f"{width}x{height} photos (width x height): {self.count(height, width)} tiles of "
                f"{self.tile[1]}x{self.tile[0]} px every {self.stride[1]}x{self.stride[0]} px, "
                f"each resized to {self.model[1]}x{self.model[0]}")


class TileSet:
    """Tiles to fit (or calibrate int8 scales) on: the tiles (a Tiling) of ``photos`` (``len``,
    ``paths``, ``photo_hw(i)``, ``load_uint8(i)`` -> a photo at its own size, read once here),
    or a seeded sample of ``max_tiles`` of them when the photos hold more; each resized to the
    model input and kept in memory (uint8). ``len``, ``[i]`` (float32 3xHxW in [0,1]) and
    ``load_uint8(i)``, as a dataset of whole images."""

    unit = "tiles"  # what progress bars count

    def __init__(self, photos, tiling, max_tiles, seed, desc="cutting tiles"):
        every = [(i, box) for i in range(len(photos)) for box in tiling.boxes(*photos.photo_hw(i))]
        self.total = len(every)
        picked = range(self.total)
        if self.total > max_tiles:  # spread over all photos and positions, the same every run
            picked = sorted(np.random.default_rng(seed).choice(self.total, int(max_tiles), replace=False))
        chosen = [every[k] for k in picked]
        self.paths = [photos.paths[i] for i, _ in chosen]
        self._tiles = []
        by_photo = {}
        for i, box in chosen:
            by_photo.setdefault(i, []).append(box)
        for i in progress(sorted(by_photo), total=len(by_photo), desc=desc, unit="photos"):
            photo = photos.load_uint8(i)
            self._tiles += [tiling.cut(photo, box) for box in by_photo[i]]

    @property
    def sampled(self):
        return len(self._tiles) < self.total

    def __len__(self):
        return len(self._tiles)

    def load_uint8(self, i):
        return self._tiles[i]

    def __getitem__(self, i):
        return to_chw_float(self._tiles[i])


def _starts(length, tile, stride):
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def blend_weights(height, width, overlap):
    """float32 height x width weights of one tile's map: 1 inside, falling linearly to
    MIN_WEIGHT over the ``overlap`` (rows, cols) pixels at each edge, so that where tiles
    overlap their maps cross-fade and the less reliable border of a tile's map (padding,
    cut-off context) gives way to the neighbour that sees the same pixels in its interior."""
    def ramp(n, margin):
        if margin < 1:
            return np.ones(n, np.float32)
        distance = np.minimum(np.arange(n), np.arange(n)[::-1]) + 1.0
        return np.clip(distance / (margin + 1.0), MIN_WEIGHT, 1.0).astype(np.float32)

    return ramp(height, overlap[0])[:, None] * ramp(width, overlap[1])[None, :]


class Stitcher:
    """One photo's anomaly map from its tiles' maps: each tile's model-size map is resized to
    the tile's pixels and added with blend_weights; ``result`` is the weighted mean, a float32
    map of the photo's size. Memory: two float32 photo-size arrays."""

    def __init__(self, tiling, height, width):
        self.overlap = (max(0, tiling.tile[0] - tiling.stride[0]), max(0, tiling.tile[1] - tiling.stride[1]))
        self.total = np.zeros((height, width), np.float32)
        self.weight = np.zeros((height, width), np.float32)
        self._weights = {}  # (h, w) -> blend_weights: a photo's tiles are all one size

    def add(self, box, tile_map):
        top, left, h, w = box
        if (h, w) not in self._weights:
            self._weights[h, w] = blend_weights(h, w, self.overlap)
        weights = self._weights[h, w]
        resized = cv2.resize(np.asarray(tile_map, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        self.total[top:top + h, left:left + w] += weights * resized
        self.weight[top:top + h, left:left + w] += weights

    def result(self):
        return self.total / self.weight


def stitch(tiling, hw, boxes, tile_maps):
    """The photo-size map (float32 [H,W]) of ``tile_maps`` ([T,h,w], model size) at ``boxes``."""
    stitcher = Stitcher(tiling, *hw)
    for box, tile_map in zip(boxes, tile_maps):
        stitcher.add(box, tile_map)
    return stitcher.result()


def score_photo(run_batch, tiling, photo, batch_size, on_tiles=None):
    """(map float32 at the photo's size, score = that map's max) of one uint8 RGB photo: its
    tiles through ``run_batch`` (an engine's run: float32 [B,3,h,w] -> (maps [B,1,h,w] or
    [B,h,w], scores)) ``batch_size`` at a time, streamed into a Stitcher (only one batch of tiles exists
    at once). ``on_tiles(n)`` is told after each batch (progress)."""
    height, width = photo.shape[:2]
    boxes = tiling.boxes(height, width)
    stitcher = Stitcher(tiling, height, width)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        maps, _ = run_batch(np.stack([to_chw_float(tiling.cut(photo, box)) for box in chunk]))
        maps = np.asarray(maps)
        for box, tile_map in zip(chunk, maps.reshape(len(chunk), *maps.shape[-2:])):
            stitcher.add(box, tile_map)
        if on_tiles is not None:
            on_tiles(len(chunk))
    amap = stitcher.result()
    return amap, float(amap.max())
