"""PatchCore: embedding, nearest-neighbour scoring, reweighting and the coreset against
independent numpy computations; fitting, float16 banks, export and bad settings."""
import math

import numpy as np
import paddle
import pytest

from adkit.core.errors import UserError
from adkit.models.backbones.encoders import build_encoder
from adkit.models.patchcore import networks
from adkit.models.patchcore.coreset import greedy_coreset, random_projection
from adkit.models.patchcore.networks import (PatchCoreInference, PatchEmbedding, nearest_distance, nearest_index,
                                       reweighted_score)
from tests.numpy_reference import adaptive_avg_pool1d, bilinear, blurred, box3


def reference_embedding(f8, f16, dim):
    """The official recipe step by step: 3x3 neighbourhood average per layer, f16 upsampled to
    f8's grid, each layer's channels pooled to ``dim``, concatenated, pooled to ``dim``."""
    a8, a16 = box3(f8.astype(np.float64)), box3(f16.astype(np.float64))
    h, w = f8.shape[2:]
    up = np.stack([[bilinear(channel, h) for channel in image] for image in a16])
    layers = [adaptive_avg_pool1d(a.transpose(0, 2, 3, 1), dim) for a in (a8, up)]  # [B,h,w,dim]
    return adaptive_avg_pool1d(np.concatenate(layers, axis=-1), dim).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("channels, dim", [((4, 6, 10), 16), ((4, 24, 40), 32), ((4, 5, 7), 12)])
def test_embedding_matches_the_step_by_step_recipe(channels, dim):
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(2, c, s, s)).astype(np.float32) for c, s in zip(channels, (16, 8, 4))]
    got = PatchEmbedding(channels, dim)([paddle.to_tensor(f) for f in feats]).numpy()
    want = reference_embedding(feats[1], feats[2], dim)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_nearest_bank_row_matches_brute_force_across_chunks(monkeypatch):
    rng = np.random.default_rng(1)
    queries, bank = rng.normal(size=(50, 8)), rng.normal(size=(23, 8))
    monkeypatch.setattr(networks, "NEIGHBOUR_CHUNK", 5)  # five blocks, the last partial
    arguments = (paddle.to_tensor(queries.astype(np.float32)), paddle.to_tensor(bank.astype(np.float32)),
                 paddle.to_tensor((bank ** 2).sum(1).astype(np.float32)))
    distance, index = nearest_distance(*arguments), nearest_index(*arguments)
    all_pairs = np.sqrt(((queries[:, None] - bank[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(index.numpy(), all_pairs.argmin(1))
    np.testing.assert_allclose(distance.numpy(), all_pairs.min(1), rtol=1e-5)


def test_reweighting_on_a_hand_computed_case():
    # bank in 2-D; the worst test patch x = (0,-1) has nearest entry m* = (0,0), s* = 1.
    # The b = 3 entries nearest m*: (0,0), (1,0), (0,2); x lies 1, sqrt(2), 3 from them.
    bank = np.array([[0, 0], [1, 0], [0, 2], [5, 5]], np.float32)
    x, m_star = np.array([[0, -1]], np.float32), bank[:1]
    weight = 1 - math.exp(1) / (math.exp(1) + math.exp(math.sqrt(2)) + math.exp(3))
    got = reweighted_score(paddle.to_tensor(x), paddle.to_tensor(m_star), paddle.to_tensor(bank),
                           paddle.to_tensor((bank ** 2).sum(1)), neighbours=3)
    assert got.numpy()[0] == pytest.approx(weight * 1.0, rel=1e-6)
    # large distances: the shifted exponentials neither overflow nor lose the result
    far = reweighted_score(paddle.to_tensor(x * 400), paddle.to_tensor(m_star * 400),
                           paddle.to_tensor(bank * 400), paddle.to_tensor((bank ** 2).sum(1) * 400 ** 2), 3)
    assert far.numpy()[0] == pytest.approx(400.0, rel=1e-6)  # exp(400)/(...+exp(1200)) -> weight 1


def brute_force_greedy(points, count, first):
    """Greedy k-center over the full float64 distance matrix."""
    all_pairs = np.sqrt(((points[:, None].astype(np.float64) - points[None]) ** 2).sum(-1))
    chosen, nearest = [first], all_pairs[first].copy()
    for _ in range(count - 1):
        chosen.append(int(nearest.argmax()))
        nearest = np.minimum(nearest, all_pairs[chosen[-1]])
    return chosen


@pytest.mark.parametrize("seed, n, dims, count", [(0, 300, 4, 120), (1, 500, 16, 60), (2, 400, 3, 200)])
def test_coreset_is_exactly_the_greedy_k_center_choice(seed, n, dims, count):
    rng = np.random.default_rng(seed)
    # clustered points, so the pruning of far clusters is exercised
    points = (rng.normal(size=(n, dims)) + 6 * rng.integers(0, 4, size=(n, 1))).astype(np.float32)
    chosen = greedy_coreset(points, count, seed)
    assert list(chosen) == brute_force_greedy(points, count, int(chosen[0]))


@pytest.mark.parametrize("candidates, block", [(1, 7), (5, 64), (40, 1000)])
def test_coreset_stays_exact_with_few_sorted_candidates_and_small_blocks(monkeypatch, candidates, block):
    """Only the largest bounds are sorted after a fold, and folds run block by block: a choice
    that needs points outside the sorted ones must fall back to the full order."""
    from adkit.models.patchcore import coreset

    monkeypatch.setattr(coreset, "CANDIDATES", candidates)
    monkeypatch.setattr(coreset, "BLOCK", block)
    monkeypatch.setattr(coreset, "BATCH", 8)  # many folds, many pending centres between them
    rng = np.random.default_rng(4)
    points = (rng.normal(size=(400, 5)) + 6 * rng.integers(0, 4, size=(400, 1))).astype(np.float32)
    chosen = greedy_coreset(points, 150, 4)
    assert list(chosen) == brute_force_greedy(points, 150, int(chosen[0]))


def test_random_projection_keeps_distances_roughly_and_small_inputs_unchanged():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 512)).astype(np.float32)
    y = random_projection(x, 128, seed=0)
    ratio = np.linalg.norm(y[0] - y[1:], axis=1) / np.linalg.norm(x[0] - x[1:], axis=1)
    assert y.shape == (40, 128) and 0.7 < ratio.min() and ratio.max() < 1.3
    np.testing.assert_array_equal(random_projection(x[:, :64], 128, seed=0), x[:, :64])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["dygraph", "graph"])
def test_inference_net_matches_a_numpy_pipeline(engine):
    """The net in dygraph, and as eval and calibration run it on the CPU (engines.GraphEngine:
    the static graph on Paddle Inference with oneDNN), against numpy. Converting it to the
    graph warns of nothing (Paddle 3 warned three times of a ``place`` read by ones_like)."""
    import warnings

    from adkit.deploy.engines import GraphEngine

    encoder = build_encoder("efficientnet_lite0", "none")
    embed = PatchEmbedding(encoder.channels, 64)
    rng = np.random.default_rng(4)
    x = paddle.to_tensor(rng.random((2, 3, 64, 64)).astype(np.float32))
    with paddle.no_grad():
        feats = encoder(x)
        emb = embed(feats).numpy().astype(np.float64)                       # [2, 64, 8, 8]
    patches = emb.transpose(0, 2, 3, 1).reshape(-1, 64)
    bank = patches[rng.choice(len(patches), 30, replace=False)] + rng.normal(0, 0.05, (30, 64))
    net = PatchCoreInference(encoder, embed, bank.astype(np.float32), 64, neighbours=9)
    net.eval()
    if engine == "graph":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            graph = GraphEngine(net, 64)
        assert [str(w.message) for w in caught] == []
        amap, score = graph.run(x.numpy())
    else:
        with paddle.no_grad():
            amap, score = (out.numpy() for out in net(x))
    d = np.sqrt(((patches[:, None] - bank[None]) ** 2).sum(-1))              # [128, 30]
    nearest, which = d.min(1).reshape(2, 64), d.argmin(1).reshape(2, 64)
    for i in range(2):
        want_map = blurred(bilinear(nearest[i].reshape(8, 8), 64))
        np.testing.assert_allclose(amap[i, 0], want_map, rtol=1e-4, atol=1e-4 * want_map.max())
        worst = int(nearest[i].argmax())
        m_star = bank[which[i, worst]]
        support = np.argsort(((bank - m_star) ** 2).sum(1))[:9]
        dists = np.sqrt(((bank[support] - patches[i * 64 + worst]) ** 2).sum(1))
        s_star = nearest[i, worst]
        want = (1 - np.exp(s_star) / np.exp(dists).sum()) * s_star
        assert float(score[i]) == pytest.approx(want, rel=1e-4)


@pytest.mark.slow
def test_scoring_runs_the_graph_on_the_cpu_only():
    from adkit.deploy.engines import DygraphEngine, GraphEngine, scoring_engine

    class Fitted:  # a fitted method's one method the choice needs
        def inference_net(self):
            return PatchCoreInference(build_encoder("efficientnet_lite0", "none"),
                                      PatchEmbedding((24, 40, 112), 16), np.ones((3, 16), np.float32), 64, 1)

    cfg = {"model": "patchcore", "image_size": 64, "cpu_threads": 1}
    assert isinstance(scoring_engine(Fitted(), dict(cfg, device="cpu")), GraphEngine)
    assert isinstance(scoring_engine(Fitted(), dict(cfg, device="gpu")), DygraphEngine)


def test_fit_keeps_the_coreset_share_and_a_reload_gives_the_same_maps(train_cfg, tmp_path, brick_train_set):
    from adkit.models.patchcore.method import PatchCoreMethod

    method = PatchCoreMethod(train_cfg("patchcore", tmp_path, coreset_ratio=0.25))
    method.fit(brick_train_set, None, tmp_path)
    bank = method.net.bank.numpy()
    # 8x8 patches per 64 px image; D = 1024 capped at Lite0's 40 + 112 channels
    assert bank.shape == (math.ceil(0.25 * 6 * 64), 152) and bank.dtype == np.float32
    x = paddle.to_tensor(np.stack([brick_train_set[i] for i in range(2)]))
    with paddle.no_grad():
        first = method.inference_net()(x)
    again = PatchCoreMethod(train_cfg("patchcore", tmp_path))
    again.load(tmp_path)
    with paddle.no_grad():
        second = again.inference_net()(x)
    np.testing.assert_array_equal(first[0].numpy(), second[0].numpy())
    np.testing.assert_array_equal(first[1].numpy(), second[1].numpy())
    # float16 storage: half the bytes, scores within float16 rounding of the float32 ones
    half = PatchCoreMethod(train_cfg("patchcore", tmp_path / "half", coreset_ratio=0.25, bank_dtype="float16"))
    half.fit(brick_train_set, None, tmp_path / "half")
    assert half.net.bank.numpy().dtype == np.float16
    with paddle.no_grad():
        half_scores = half.inference_net()(x)[1].numpy()
    np.testing.assert_allclose(half_scores, first[1].numpy(), rtol=5e-3)


@pytest.mark.parametrize("option, value, says", [
    ("coreset_ratio", 0, "--coreset_ratio must be in (0, 1]"),
    ("bank_dtype", "int8", "--bank_dtype int8: expected one of float32, float16"),
    ("neighbours", 0, "--neighbours must be at least 1"),
])
def test_bad_settings_are_one_line(train_cfg, tmp_path, brick_train_set, option, value, says):
    from adkit.models.patchcore.method import PatchCoreMethod

    with pytest.raises(UserError, match=re_escape(says)):
        PatchCoreMethod(train_cfg("patchcore", tmp_path, **{option: value})).fit(brick_train_set, None, tmp_path)


def re_escape(text):
    import re

    return re.escape(text)
