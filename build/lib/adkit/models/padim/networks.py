"""PaDiM (Defard et al., ICPR 2021): one Gaussian per patch position over a frozen backbone's
features; the anomaly map is the Mahalanobis distance to it. All one graph to export.

Embedding: the stride-4, 8 and 16 features (ResNet layer1-3; on EfficientNet-Lite the stage
outputs at those strides), the deeper two upsampled to the stride-4 grid by nearest neighbour
(each cell copied to the block it covers, as the official code's unfold/fold does), and a fixed
random subset of d channels of the concatenation (ResNet-18: 100 of 448, WRN-50-2: 550 of
1792). The subset is taken before upsampling: the same values, less work.
"""
import numpy as np
import paddle
import paddle.nn as nn

from adkit.core.compat import tensor_view
from adkit.core.image_io import image_hw

from ..graph_ops import nearest_matrix, resize_and_blur, separable_map

# elements of inverse covariance cast/multiplied per block of positions: bounds the graph's
# temporary memory (d = 550: 110 positions, 128 MB)
BLOCK_ELEMENTS = 2 ** 25


def default_dims(backbone, total):
    """The paper's d for its backbones; 100 (as ResNet-18) otherwise; never more than there are."""
    return min({"wide_resnet50_2": 550, "wide_resnet101_2": 550}.get(backbone, 100), total)


def channel_subset(channels, dims, seed):
    """Sorted indices of ``dims`` of the sum(channels) concatenated channels, drawn from ``seed``."""
    rng = np.random.default_rng([seed, 3])
    return np.sort(rng.choice(sum(channels), size=dims, replace=False)).astype(np.int64)


class PaDiMEmbedding(nn.Layer):
    """[f4, f8, f16] -> [B, d, h, w] on the stride-4 grid, d channels picked by ``subset``."""

    def __init__(self, channels, subset):
        super().__init__()
        starts = np.cumsum([0] + list(channels))
        self.levels = []
        for k in range(len(channels)):
            own = subset[(subset >= starts[k]) & (subset < starts[k + 1])] - starts[k]
            name = f"subset{k}"
            self.register_buffer(name, paddle.to_tensor(own.astype(np.int64)))
            self.levels.append(name)

    def forward(self, feats):
        h, w = feats[0].shape[2], feats[0].shape[3]
        picked = []
        for name, f in zip(self.levels, feats):
            index = getattr(self, name)
            if index.shape[0] == 0:
                continue
            f = paddle.index_select(f, index, axis=1)
            if f.shape[2] != h or f.shape[3] != w:
                f = separable_map(f, nearest_matrix(f.shape[2], h), nearest_matrix(f.shape[3], w))
            picked.append(f)
        return paddle.concat(picked, axis=1)


def mahalanobis(emb, mean, inv_cov):
    """Distances [B, P] of ``emb`` [B, d, P] to per-position Gaussians: ``mean`` [P, d],
    ``inv_cov`` [P, d, d] (float32 or float16), in blocks of positions (bounded memory)."""
    d = emb.shape[1]
    centred = (emb.transpose([2, 0, 1]) - mean.unsqueeze(1))            # [P, B, d]
    block = max(1, BLOCK_ELEMENTS // (d * d))
    squared = []
    for start in range(0, inv_cov.shape[0], block):
        y = centred[start:start + block]
        a = inv_cov[start:start + block].astype("float32")
        squared.append((paddle.matmul(y, a) * y).sum(axis=2))            # [p, B]
    squared = paddle.concat(squared, axis=0) if len(squared) > 1 else squared[0]
    return paddle.sqrt(paddle.clip(squared, min=0.0)).transpose([1, 0])


class PaDiMInference(nn.Layer):
    """x [B,3,H,W] RGB in [0,1] at ``image_size`` (a side or (H, W)) -> (map [B,1,H,W],
    score [B] = map max).
    Map: Mahalanobis distance per position, bilinear to the image, Gaussian blur sigma 4."""

    def __init__(self, encoder, embedding, mean, inv_cov, image_size):
        super().__init__()
        self.encoder, self.embedding = encoder, embedding
        self.image_size = image_hw(image_size)
        # views of the numpy arrays (no copy on Paddle 3): PaDiM's inverse covariances run to gigabytes
        self.register_buffer("mean", tensor_view(mean))
        self.register_buffer("inv_cov", tensor_view(inv_cov))

    def forward(self, x):
        emb = self.embedding(self.encoder(x))                           # [B, d, h, w]
        h, w = emb.shape[2], emb.shape[3]
        distance = mahalanobis(emb.flatten(2), self.mean, self.inv_cov).reshape([-1, 1, h, w])
        amap = separable_map(distance, resize_and_blur(h, self.image_size[0], False),
                             resize_and_blur(w, self.image_size[1], False))
        return amap, amap.flatten(1).max(axis=1)
