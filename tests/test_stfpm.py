"""STFPM: loss and map against independent numpy computations; what trains and what stays
frozen; fitting, reloading and resuming."""
import numpy as np
import paddle
import pytest

from adkit.core.errors import UserError
from adkit.models.stfpm.networks import STFPMInference, Student, anomaly_map, stfpm_loss
from tests.numpy_reference import bilinear

SHORT = {"steps": 2, "batch_size": 2, "seed": 3}
SHAPES = [(2, 6, 16, 16), (2, 10, 8, 8), (2, 14, 4, 4)]


def random_pyramids(seed):
    rng = np.random.default_rng(seed)
    return ([rng.normal(size=s).astype(np.float32) for s in SHAPES],
            [rng.normal(size=s).astype(np.float32) for s in SHAPES])


def numpy_level_maps(teacher, student):
    maps = []
    for t, s in zip(teacher, student):
        t = t.astype(np.float64) / np.linalg.norm(t, axis=1, keepdims=True)
        s = s.astype(np.float64) / np.linalg.norm(s, axis=1, keepdims=True)
        maps.append(0.5 * ((t - s) ** 2).sum(axis=1))                    # [B, h, w]
    return maps


def test_loss_is_the_papers_sum_of_level_means():
    teacher, student = random_pyramids(0)
    got = float(stfpm_loss([paddle.to_tensor(t) for t in teacher], [paddle.to_tensor(s) for s in student]))
    want = sum(m.mean() for m in numpy_level_maps(teacher, student))
    assert got == pytest.approx(want, rel=1e-5)
    # identical features (up to scale: the features are normalised) cost nothing
    same = float(stfpm_loss([paddle.to_tensor(t) for t in teacher], [paddle.to_tensor(3 * t) for t in teacher]))
    assert same == pytest.approx(0.0, abs=1e-6)


def test_map_is_the_product_of_upsampled_level_maps():
    teacher, student = random_pyramids(1)
    got = anomaly_map([paddle.to_tensor(t) for t in teacher], [paddle.to_tensor(s) for s in student], 32).numpy()
    levels = numpy_level_maps(teacher, student)
    for b in range(2):
        want = np.prod([bilinear(m[b], 32) for m in levels], axis=0)
        np.testing.assert_allclose(got[b, 0], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_the_student_trains_and_the_teacher_does_not(backbone):
    from adkit.models.backbones.encoders import build_encoder

    teacher, student = build_encoder(backbone, "none"), Student(backbone)
    x = paddle.rand([2, 3, 64, 64])
    t_feats = teacher(x)
    s_feats = student(x)
    assert [f.shape for f in s_feats] == [f.shape for f in t_feats]
    stfpm_loss(t_feats, s_feats).backward()
    params = [p for p in student.parameters() if not p.stop_gradient]  # not BN statistics
    assert params and all(p.grad is not None for p in params)  # no dead parameters to update
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.slow
def test_fit_trains_batchnorm_then_evaluates_and_a_reload_gives_the_same_maps(train_cfg, tmp_path, brick_train_set,
                                                                              monkeypatch):
    from adkit.models.stfpm.method import STFPMMethod
    from adkit.models.stfpm import method as stfpm_method

    modes = []
    real_loss = stfpm_method.stfpm_loss

    def spying_loss(t, s):
        modes.append(method.student.training)
        return real_loss(t, s)

    monkeypatch.setattr(stfpm_method, "stfpm_loss", spying_loss)
    method = STFPMMethod(train_cfg("stfpm", tmp_path, **SHORT))
    before = {k: v.numpy().copy() for k, v in Student("efficientnet_lite0").state_dict().items()}
    method.fit(brick_train_set, None, tmp_path)
    assert modes == [True, True] and not method.student.training
    # BatchNorm running statistics moved: the student's BN layers really trained
    after = method.student.state_dict()
    moved = [k for k in before if k.endswith("_mean") and not np.allclose(before[k], after[k].numpy())]
    assert moved
    x = paddle.to_tensor(np.stack([brick_train_set[i] for i in range(3)]))
    with paddle.no_grad():
        first = method.inference_net()(x)
    again = STFPMMethod(train_cfg("stfpm", tmp_path, **SHORT))
    again.load(tmp_path)
    with paddle.no_grad():
        second = again.inference_net()(x)
    np.testing.assert_array_equal(first[0].numpy(), second[0].numpy())
    assert isinstance(method.inference_net(), STFPMInference)


def test_resume_refuses_another_backbone(train_cfg, tmp_path, brick_train_set):
    from adkit.models.stfpm.method import STFPMMethod

    STFPMMethod(train_cfg("stfpm", tmp_path, **SHORT)).fit(brick_train_set, None, tmp_path)
    with pytest.raises(UserError, match="trained with --backbone efficientnet_lite0, cannot resume with --backbone resnet18"):
        STFPMMethod(train_cfg("stfpm", tmp_path, backbone="resnet18", **SHORT)).fit(brick_train_set, None, tmp_path, resume=True)
