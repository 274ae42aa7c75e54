"""PaDiM: the Gaussians, the embedding and the Mahalanobis map against independent numpy
computations; blocks, float16 statistics, fitting and reloading."""
import numpy as np
import paddle
import pytest

from adkit.core.errors import UserError
from adkit.models.backbones.encoders import build_encoder
from adkit.models.padim import networks
from adkit.models.padim.gaussian import GaussianAccumulator, merge_gaussians
from adkit.models.padim.networks import PaDiMEmbedding, PaDiMInference, channel_subset, mahalanobis
from tests.numpy_reference import bilinear, blurred


def test_gaussians_match_numpy_covariance_and_inverse():
    rng = np.random.default_rng(0)
    # a large common offset: the shifted float32 sums must not lose the covariance to it
    data = (rng.normal(size=(23, 5, 12)) * rng.uniform(0.5, 2, size=(1, 5, 1)) + 300.0).astype(np.float32)
    acc = GaussianAccumulator()
    for start in range(0, 23, 4):   # batches of 4 and a last one of 3
        acc.add(data[start:start + 4])
    mean, inv_cov = acc.finish()
    x = data.astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(0).T, rtol=1e-6)
    for p in range(12):
        cov = np.cov(x[:, :, p], rowvar=False) + 0.01 * np.eye(5)
        np.testing.assert_allclose(inv_cov[p], np.linalg.inv(cov), rtol=1e-3, atol=1e-4)


def test_merging_more_samples_equals_fitting_them_all_at_once():
    """main.py --mode update's running update: fit on A, merge B == fit on A and B together."""
    rng = np.random.default_rng(3)
    first, more = rng.normal(2.0, 1.5, (12, 5, 7)), rng.normal(2.5, 1.0, (4, 5, 7))  # [B, d, P]
    together = GaussianAccumulator()
    together.add(np.concatenate([first, more]).astype(np.float32))
    want_mean, want_inv = together.finish()
    fitted = GaussianAccumulator()
    fitted.add(first.astype(np.float32))
    mean, inv_cov = fitted.finish()
    extra = GaussianAccumulator()
    extra.add(more.astype(np.float32))
    got_mean, got_inv = merge_gaussians(mean, inv_cov, 12, extra)
    np.testing.assert_allclose(got_mean, want_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_inv, want_inv, rtol=1e-3, atol=1e-3)
    assert not np.allclose(got_inv, inv_cov, atol=1e-2)  # the four samples changed it


def test_embedding_takes_the_subset_and_repeats_deeper_cells():
    rng = np.random.default_rng(1)
    channels = (3, 4, 5)
    feats = [rng.normal(size=(2, c, s, s)).astype(np.float32) for c, s in zip(channels, (8, 4, 2))]
    subset = channel_subset(channels, 7, seed=3)
    got = PaDiMEmbedding(channels, subset)([paddle.to_tensor(f) for f in feats]).numpy()
    # the official unfold/fold concatenation: each deeper cell covers a 2x2 / 4x4 block
    full = np.concatenate([feats[0], feats[1].repeat(2, 2).repeat(2, 3),
                           feats[2].repeat(4, 2).repeat(4, 3)], axis=1)
    np.testing.assert_array_equal(got, full[:, subset])
    assert len(set(subset)) == 7 and list(subset) == sorted(subset)


def test_mahalanobis_in_blocks_matches_numpy(monkeypatch):
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(3, 6, 10)).astype(np.float32)
    mean = rng.normal(size=(10, 6)).astype(np.float32)
    a = rng.normal(size=(10, 6, 6))
    inv_cov = (a @ a.transpose(0, 2, 1) + np.eye(6)).astype(np.float32)
    monkeypatch.setattr(networks, "BLOCK_ELEMENTS", 4 * 36)  # blocks of 4 positions: 4, 4, 2
    got = mahalanobis(paddle.to_tensor(emb), paddle.to_tensor(mean), paddle.to_tensor(inv_cov)).numpy()
    y = emb.transpose(0, 2, 1).astype(np.float64) - mean                    # [B, P, d]
    want = np.sqrt(np.einsum("bpi,pij,bpj->bp", y, inv_cov.astype(np.float64), y))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_inference_net_matches_a_numpy_pipeline():
    encoder = build_encoder("efficientnet_lite0", "none")
    subset = channel_subset(encoder.channels, 20, seed=0)
    embed = PaDiMEmbedding(encoder.channels, subset)
    rng = np.random.default_rng(4)
    x = paddle.to_tensor(rng.random((2, 3, 64, 64)).astype(np.float32))
    with paddle.no_grad():
        feats = [f.numpy().astype(np.float64) for f in encoder(x)]
    full = np.concatenate([feats[0], feats[1].repeat(2, 2).repeat(2, 3),
                           feats[2].repeat(4, 2).repeat(4, 3)], axis=1)[:, subset]   # [2, 20, 16, 16]
    y = full.reshape(2, 20, 256).transpose(0, 2, 1)
    mean = y.mean(0) + rng.normal(0, 0.1, size=(256, 20))
    a = rng.normal(size=(256, 20, 20)) * 0.2
    inv_cov = a @ a.transpose(0, 2, 1) + np.eye(20)
    net = PaDiMInference(encoder, embed, mean.astype(np.float32), inv_cov.astype(np.float32), 64)
    net.eval()
    with paddle.no_grad():
        amap, score = net(x)
    centred = y - mean
    dist = np.sqrt(np.einsum("bpi,pij,bpj->bp", centred, inv_cov, centred)).reshape(2, 16, 16)
    for i in range(2):
        want = blurred(bilinear(dist[i], 64))
        np.testing.assert_allclose(amap.numpy()[i, 0], want, rtol=1e-4, atol=1e-4 * want.max())
        assert float(score.numpy()[i]) == pytest.approx(want.max(), rel=1e-4)


def test_fit_reload_and_float16_statistics(train_cfg, tmp_path, brick_train_set):
    from adkit.models.padim.method import PaDiMMethod

    method = PaDiMMethod(train_cfg("padim", tmp_path, feature_dims=30))
    method.fit(brick_train_set, None, tmp_path)
    assert method.net.inv_cov.shape == [16 * 16, 30, 30] and method.net.mean.shape == [256, 30]
    x = paddle.to_tensor(np.stack([brick_train_set[i] for i in range(3)]))
    with paddle.no_grad():
        first = method.inference_net()(x)
    again = PaDiMMethod(train_cfg("padim", tmp_path))
    again.load(tmp_path)
    with paddle.no_grad():
        second = again.inference_net()(x)
    np.testing.assert_array_equal(first[0].numpy(), second[0].numpy())
    half = PaDiMMethod(train_cfg("padim", tmp_path / "half", feature_dims=30, stats_dtype="float16"))
    half.fit(brick_train_set, None, tmp_path / "half")
    assert half.net.inv_cov.dtype == paddle.float16
    with paddle.no_grad():
        half_scores = half.inference_net()(x)[1].numpy()
    np.testing.assert_allclose(half_scores, first[1].numpy(), rtol=1e-2)


@pytest.mark.parametrize("option, value, says", [
    ("feature_dims", 500, r"--feature_dims must be in 1\.\.176 for efficientnet_lite0, got 500"),
    ("stats_dtype", "float64", "--stats_dtype float64: expected one of float32, float16"),
])
def test_bad_settings_are_one_line(train_cfg, tmp_path, brick_train_set, option, value, says):
    from adkit.models.padim.method import PaDiMMethod

    with pytest.raises(UserError, match=says):
        PaDiMMethod(train_cfg("padim", tmp_path, **{option: value})).fit(brick_train_set, None, tmp_path)


def test_float16_statistics_fitted_in_several_passes_equal_one_pass(train_cfg, tmp_path, brick_train_set, monkeypatch):
    from adkit.models.padim.method import PaDiMMethod
    from adkit.models.padim import method as padim_method

    one = PaDiMMethod(train_cfg("padim", tmp_path / "one", feature_dims=30, stats_dtype="float16"))
    one.fit(brick_train_set, None, tmp_path / "one")
    # 256 positions x 30 x 30 x 4 bytes = 921 600 bytes: a 300 kB budget means 4 passes
    monkeypatch.setattr(padim_method, "ACCUMULATOR_BYTES", 300_000)
    passes = []
    real = padim_method.GaussianAccumulator
    monkeypatch.setattr(padim_method, "GaussianAccumulator", lambda positions: passes.append(positions) or real(positions))
    four = PaDiMMethod(train_cfg("padim", tmp_path / "four", feature_dims=30, stats_dtype="float16"))
    four.fit(brick_train_set, None, tmp_path / "four")
    assert [(p.start, p.stop) for p in passes] == [(0, 64), (64, 128), (128, 192), (192, 256)]
    np.testing.assert_array_equal(four.net.mean.numpy(), one.net.mean.numpy())
    np.testing.assert_array_equal(four.net.inv_cov.numpy(), one.net.inv_cov.numpy())
