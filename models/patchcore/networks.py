"""PatchCore (Roth et al., CVPR 2022): patch embeddings of a frozen ImageNet backbone, a memory
bank of the training patches, and the nearest-neighbour anomaly map; all one graph to export.

Embedding: the backbone's stride-8 and stride-16 features (WRN-50-2 layer2/layer3; on
EfficientNet-Lite the stage outputs at the same strides), each averaged over its 3x3
neighbourhood, the stride-16 map upsampled bilinearly onto the stride-8 grid, each layer's
channels adaptive-average-pooled to D and the concatenation pooled to D again (so both layers
weigh the same, as in the official code). These are all linear maps, so the graph applies them
as a few matrix products (models/graph_ops).
"""
import numpy as np
import paddle
import paddle.nn as nn

from adkit.core.image_io import image_hw

from ..graph_ops import (adaptive_pool_matrix, box_matrix, interpolation_matrix,
                         resize_and_blur, separable_map)

NEIGHBOUR_CHUNK = 4096  # bank rows per distance block: bounds memory for any bank size


def embedding_dim(channels, requested):
    """D: the requested size, but never more than the two levels have (pooling up adds
    nothing). ``channels``: the encoder's three widths."""
    return int(min(requested, sum(channels[1:])))


def channel_pooling(channels, dim):
    """[sum(channels), dim]: per layer adaptive pooling to ``dim``, then of the concatenation."""
    final = adaptive_pool_matrix(len(channels) * dim, dim)
    blocks = [adaptive_pool_matrix(c, dim) @ final[k * dim:(k + 1) * dim]
              for k, c in enumerate(channels)]
    return np.concatenate(blocks, axis=0).astype(np.float32)


class PatchEmbedding(nn.Layer):
    """Backbone features [f4, f8, f16] -> patch embeddings [B, D, h, w] on the stride-8 grid
    (``channels``: the encoder's three widths; f4 is not used)."""

    def __init__(self, channels, dim):
        super().__init__()
        self.dim = dim
        self.register_buffer("pooling", paddle.to_tensor(channel_pooling(channels[1:], dim)))

    def forward(self, feats):
        _, mid, deep = feats
        h, w = mid.shape[2], mid.shape[3]
        mid = separable_map(mid, box_matrix(h), box_matrix(w))
        deep = separable_map(deep,
                             interpolation_matrix(deep.shape[2], h, False) @ box_matrix(deep.shape[2]),
                             interpolation_matrix(deep.shape[3], w, False) @ box_matrix(deep.shape[3]))
        x = paddle.concat([mid, deep], axis=1)                     # [B, C, h, w]
        x = x.transpose([0, 2, 3, 1]).reshape([-1, x.shape[1]])
        return paddle.matmul(x, self.pooling).reshape([-1, h, w, self.dim]).transpose([0, 3, 1, 2])


def _shifted_distance_blocks(queries, bank, bank_squares):
    """Yield [N, rows] ||b||^2 - 2 q.b for queries [N, D] float32 and blocks of
    NEIGHBOUR_CHUNK rows of ``bank`` [M, D] (float32 or float16; ``bank_squares`` [M] float32 their
    squared norms): the squared distances less ||q||^2, which does not change the nearest row.
    Each block is one matrix product, [-2q, 1] times [b, ||b||^2]: no elementwise pass over the
    [N, rows] block (those passes, not the product, were most of the time). The block never
    exceeds [N, chunk], whatever the bank size. (The column of ones is 0 * q + 1: ones_like reads
    a tensor's place, which Paddle 3's static graph does not have, and warns.)"""
    scaled = paddle.concat([queries * -2.0, paddle.scale(queries[:, :1], scale=0.0, bias=1.0)], axis=1)
    chunk = NEIGHBOUR_CHUNK
    for start in range(0, bank.shape[0], chunk):
        rows = paddle.concat([bank[start:start + chunk].astype("float32"),
                              bank_squares[start:start + chunk].unsqueeze(1)], axis=1)
        yield paddle.matmul(scaled, rows, transpose_y=True)


def squared_distances(queries, bank, bank_squares):
    """[N, M] squared distances of queries [N, D] to every bank row (for a few queries: the
    reweighting's N_b search)."""
    query_squares = (queries * queries).sum(axis=1, keepdim=True)
    blocks = list(_shifted_distance_blocks(queries, bank, bank_squares))
    return (blocks[0] if len(blocks) == 1 else paddle.concat(blocks, axis=1)) + query_squares


def nearest_distance(queries, bank, bank_squares):
    """[N] distance of each query to its nearest bank row. Only the minimum of each block is
    kept (an argmin per block cost more than its product): the nearest row's index is needed
    for one patch per image only (``nearest_index``)."""
    best = None
    for shifted in _shifted_distance_blocks(queries, bank, bank_squares):
        value = shifted.min(axis=1)
        best = value if best is None else paddle.minimum(best, value)
    squared = best + (queries * queries).sum(axis=1)
    return paddle.sqrt(paddle.clip(squared, min=0.0))


def nearest_index(queries, bank, bank_squares):
    """[N] index of each query's nearest bank row (for a few queries: [N, M] at once)."""
    return squared_distances(queries, bank, bank_squares).argmin(axis=1)


def reweighted_score(max_patch, nearest_row, bank, bank_squares, neighbours):
    """The paper's image score (Eq. 7): s* = ||m_test* - m*||, the largest patch distance, where
    m* is that patch's nearest bank entry, scaled by 1 - exp(s*) / sum over N_b(m*) of
    exp(||m_test* - m||), N_b(m*) being the b bank entries nearest to m* (m* among them).
    ``max_patch`` [B, D], ``nearest_row`` [B, D] = m*, ``bank`` float32; returns [B]."""
    to_bank = squared_distances(nearest_row, bank, bank_squares)                # [B, M]
    _, support = paddle.topk(to_bank, k=min(neighbours, bank.shape[0]), axis=1, largest=False)
    support_rows = paddle.gather(bank, support.flatten()).reshape(
        [-1, support.shape[1], max_patch.shape[1]])                               # [B, b, D]
    distances = paddle.sqrt((max_patch.unsqueeze(1) - support_rows).square().sum(axis=2))
    score = paddle.sqrt((max_patch - nearest_row).square().sum(axis=1))
    # exp(s*) / sum exp(d), both shifted by the largest d (it cancels): exp cannot overflow
    top = distances.max(axis=1)
    weight = 1.0 - paddle.exp(score - top) / paddle.exp(distances - top.unsqueeze(1)).sum(axis=1)
    return weight * score


class PatchCoreInference(nn.Layer):
    """x [B,3,H,W] RGB in [0,1] at ``image_size`` (a side or (H, W)) -> (map [B,1,H,W], score [B]).

    Map: nearest-bank distance per patch, upsampled bilinearly to the image and blurred with
    sigma 4 (both one matrix per axis). Score: the reweighted largest patch distance (Eq. 7),
    or the plain largest when ``neighbours`` is 1 (the reweighting is then exp(s*)/exp(s*))."""

    def __init__(self, encoder, embedding, bank, image_size, neighbours):
        super().__init__()
        self.encoder, self.embedding = encoder, embedding
        self.image_size, self.neighbours = image_hw(image_size), int(neighbours)
        bank = np.ascontiguousarray(bank)
        squares = np.einsum("ij,ij->i", bank.astype(np.float32), bank.astype(np.float32))
        self.register_buffer("bank", paddle.to_tensor(bank))
        self.register_buffer("bank_squares", paddle.to_tensor(squares.astype(np.float32)))

    def forward(self, x):
        emb = self.embedding(self.encoder(x))                          # [B, D, h, w]
        h, w = emb.shape[2], emb.shape[3]
        queries = emb.transpose([0, 2, 3, 1]).reshape([-1, emb.shape[1]])
        distance = nearest_distance(queries, self.bank, self.bank_squares)
        patch_map = distance.reshape([-1, 1, h, w])
        amap = separable_map(patch_map, resize_and_blur(h, self.image_size[0], False),
                             resize_and_blur(w, self.image_size[1], False))
        per_image = distance.reshape([-1, h * w])
        if self.neighbours <= 1:
            return amap, per_image.max(axis=1)
        # the worst patch of each image, picked by a one-hot product (no batch-size constants)
        pick = paddle.nn.functional.one_hot(per_image.argmax(axis=1), h * w)     # [B, hw]
        max_patch = (pick.unsqueeze(2) * queries.reshape([-1, h * w, emb.shape[1]])).sum(axis=1)
        # rows are picked from the bank: Paddle has no float16 gather on CPU, so a float16 bank
        # is cast once here (a temporary of the float32 bank's size; no-op for float32)
        bank = self.bank.astype("float32")
        nearest_row = paddle.gather(bank, nearest_index(max_patch, bank, self.bank_squares))
        return amap, reweighted_score(max_patch, nearest_row, bank, self.bank_squares, self.neighbours)
