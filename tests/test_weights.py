"""adkit.train.weights: torch/Paddle files read back exactly, malicious pickles are refused."""
import os
import pickle
import struct
import zipfile

import numpy as np
import paddle
import pytest

from adkit.core.errors import UserError
from adkit.train.weights import (load_into_layer, read_state_dict, resolve_backbone_weights, safe_load,
                                 save_atomic)

# ---------------------------------------------------------------- torch files, written by hand
# torch.save pickles (protocol 2) a tensor as
#   torch._utils._rebuild_tensor_v2(<persistent id>, offset, size, stride, requires_grad, hooks)
# with the persistent id ('storage', torch.<Type>Storage, key, location, numel). The opcodes are
# written directly so the test needs no torch.


def _global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def _str(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value):
    return b"J" + struct.pack("<i", value)


def _tuple(*items):
    return b"(" + b"".join(items) + b"t"


def _tensor_opcodes(key, storage_type, numel, offset, size, stride):
    persistent_id = _tuple(_str("storage"), _global("torch", storage_type), _str(key),
                           _str("cpu"), _int(numel)) + b"Q"
    empty_hooks = _global("collections", "OrderedDict") + b")R"
    args = _tuple(persistent_id, _int(offset), _tuple(*map(_int, size)),
                  _tuple(*map(_int, stride)), b"\x89", empty_hooks)
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _state_dict_pickle(tensors):
    """Pickle of OrderedDict{name: tensor}; tensors: name -> (key, type, numel, off, size, stride)."""
    items = b"".join(_str(name) + _tensor_opcodes(*spec) for name, spec in tensors.items())
    return b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + items + b"u."


def _write_torch_zip(path, pickle_bytes, storages):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", b"little")
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
        archive.writestr("archive/version", b"3\n")


def _write_torch_legacy(path, pickle_bytes, storages, element_sizes):
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    with open(path, "wb") as file:
        for header in (0x1950A86A20F9469CFC6C, 1001, sys_info):
            file.write(pickle.dumps(header, protocol=2))
        file.write(pickle_bytes)
        file.write(pickle.dumps(list(storages), protocol=2))
        for key, raw in storages.items():
            file.write(struct.pack("<q", len(raw) // element_sizes[key]) + raw)


def _torch_fixture():
    """Storages, tensor specs and the arrays they must read back as (by numpy indexing)."""
    base = np.arange(12, dtype=np.float32) * 0.5 - 2.0
    half = np.array([1.0, -0.5, 65504.0, 2.0 ** -14], dtype=np.float16)
    bf16_values = np.array([1.5, -2.0, 0.15625, 2.0 ** 100], dtype=np.float32)  # exact in bf16
    bf16_raw = (bf16_values.view(np.uint32) >> 16).astype("<u2")
    longs = np.array([7, -3, 2 ** 40], dtype="<i8")
    flags = np.array([True, False, True], dtype=np.bool_)
    storages = {"0": base.astype("<f4").tobytes(), "1": half.astype("<f2").tobytes(),
                "2": bf16_raw.tobytes(), "3": longs.tobytes(), "4": flags.tobytes()}
    element_sizes = {"0": 4, "1": 2, "2": 2, "3": 8, "4": 1}
    tensors = {
        "conv.weight": ("0", "FloatStorage", 12, 0, (2, 3, 2), (6, 2, 1)),
        "transposed": ("0", "FloatStorage", 12, 0, (4, 3), (1, 4)),  # .t() of a 3x4 view
        "offset_view": ("0", "FloatStorage", 12, 2, (2, 2), (3, 1)),
        "half": ("1", "HalfStorage", 4, 0, (4,), (1,)),
        "bf16": ("2", "BFloat16Storage", 4, 0, (2, 2), (2, 1)),
        "bn.num_batches_tracked": ("3", "LongStorage", 3, 2, (), ()),
        "longs": ("3", "LongStorage", 3, 0, (3,), (1,)),
        "mask": ("4", "BoolStorage", 3, 0, (3,), (1,)),
    }
    expected = {
        "conv.weight": base.reshape(2, 3, 2),
        "transposed": base.reshape(3, 4).T,
        "offset_view": np.array([[base[2], base[3]], [base[5], base[6]]]),
        "half": half,
        "bf16": bf16_values.reshape(2, 2),
        "bn.num_batches_tracked": np.array(2 ** 40, dtype=np.int64),
        "longs": longs,
        "mask": flags,
    }
    return _state_dict_pickle(tensors), storages, element_sizes, expected


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_torch_file_reads_back_exact_arrays(tmp_path, layout):
    pickle_bytes, storages, element_sizes, expected = _torch_fixture()
    path = tmp_path / "weights.pth"
    if layout == "zip":
        _write_torch_zip(path, pickle_bytes, storages)
    else:
        _write_torch_legacy(path, pickle_bytes, storages, element_sizes)

    loaded = safe_load(path)

    assert list(loaded) == list(expected)
    for name, want in expected.items():
        assert loaded[name].dtype == (np.float32 if name == "bf16" else want.dtype), name
        assert loaded[name].shape == want.shape, name
        np.testing.assert_array_equal(loaded[name], want, err_msg=name)


def test_torch_view_beyond_its_storage_is_refused(tmp_path):
    pickle_bytes = _state_dict_pickle({"w": ("0", "FloatStorage", 4, 2, (3,), (1,))})
    path = tmp_path / "short.pth"
    _write_torch_zip(path, pickle_bytes, {"0": np.zeros(4, "<f4").tobytes()})
    with pytest.raises(UserError, match="short.pth"):
        safe_load(path)


# ---------------------------------------------------------------- Paddle files


def _small_net():
    return paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4),
                                paddle.nn.Flatten(), paddle.nn.Linear(4 * 2 * 2, 2))


def _numpy_state(state):
    return {name: value.numpy() for name, value in state.items()}


def test_paddle_model_state_round_trips(tmp_path):
    net = _small_net()
    path = tmp_path / "sub" / "model.pdparams"
    save_atomic(net.state_dict(), path)

    loaded = read_state_dict(path)

    expected = _numpy_state(net.state_dict())
    assert sorted(loaded) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(loaded[name], expected[name])
    assert os.listdir(path.parent) == ["model.pdparams"]  # no temporary file left behind


def test_paddle_checkpoint_with_adam_state_round_trips(tmp_path):
    net = _small_net()
    scheduler = paddle.optimizer.lr.StepDecay(0.01, step_size=10)
    optimizer = paddle.optimizer.Adam(scheduler, parameters=net.parameters())
    net(paddle.rand([2, 3, 4, 4])).mean().backward()
    optimizer.step()
    scheduler.step()
    checkpoint = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "step": 3,
                  "loss": 0.25, "name": "efficientad_s", "history": [1, 2.5, "x"],
                  "quantiles": np.array([0.9, 0.995])}
    path = tmp_path / "last.ckpt"
    save_atomic(checkpoint, path)

    loaded = safe_load(path)

    assert loaded["step"] == 3 and loaded["loss"] == 0.25 and loaded["name"] == "efficientad_s"
    assert loaded["history"] == [1, 2.5, "x"]
    np.testing.assert_array_equal(loaded["quantiles"], [0.9, 0.995])
    model_state = _numpy_state(net.state_dict())
    assert sorted(loaded["model"]) == sorted(model_state)
    for name, value in model_state.items():
        np.testing.assert_array_equal(loaded["model"][name], value)
    optimizer_state = optimizer.state_dict()
    assert loaded["optimizer"]["LR_Scheduler"] == {"last_epoch": 1, "last_lr": 0.01}
    moments = [name for name in optimizer_state if "moment1" in name]
    assert len(moments) == 6  # weight and bias of the conv, the BatchNorm and the Linear
    for name, value in optimizer_state.items():
        if name != "LR_Scheduler":
            np.testing.assert_array_equal(loaded["optimizer"][name], value.numpy())
    # read_state_dict unwraps the checkpoint's 'model' entry
    assert sorted(read_state_dict(path)) == sorted(model_state)


def test_save_atomic_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "model.pdparams"
    save_atomic({"w": paddle.ones([3])}, path)

    def crash_midway(obj, target, **kwargs):
        with open(target, "wb") as file:
            file.write(b"\x80\x04half a pickle")
        raise OSError("disk full")

    monkeypatch.setattr(paddle, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"w": paddle.zeros([3])}, path)

    np.testing.assert_array_equal(read_state_dict(path)["w"], np.ones(3, np.float32))
    assert os.listdir(tmp_path) == ["model.pdparams"]


# ---------------------------------------------------------------- malicious and bad files


class _Exploit:
    """Pickles to a call of ``func(*args)``, as an attacker's file would."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _exploits(marker):
    import builtins
    import subprocess

    return {
        "os.system": _Exploit(os.system, f"touch {marker}"),
        "builtins.exec": _Exploit(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.call": _Exploit(subprocess.call, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("attack", ["os.system", "builtins.exec", "subprocess.call"])
def test_malicious_pdparams_is_refused(tmp_path, attack):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pdparams"
    path.write_bytes(pickle.dumps({"w": _exploits(marker)[attack]}, protocol=4))

    with pytest.raises(UserError, match=r"evil\.pdparams: refusing to unpickle"):
        safe_load(path)
    assert not marker.exists()


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("attack", ["os.system", "builtins.exec", "subprocess.call"])
def test_malicious_pth_is_refused(tmp_path, attack, layout):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = pickle.dumps({"w": _exploits(marker)[attack]}, protocol=2, fix_imports=False)
    if layout == "zip":
        _write_torch_zip(path, payload, {})
    else:
        _write_torch_legacy(path, payload, {}, {})

    with pytest.raises(UserError, match=r"evil\.pth: refusing to unpickle"):
        safe_load(path)
    assert not marker.exists()


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nothing.pdparams: file not found"):
        read_state_dict(tmp_path / "nothing.pdparams")


def test_garbage_file_is_a_user_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights")
    with pytest.raises(UserError, match="notes.pth: not a readable"):
        safe_load(path)


def test_non_state_dict_is_a_user_error(tmp_path):
    path = tmp_path / "meta.pdparams"
    save_atomic({"epoch": 3, "name": "x"}, path)
    with pytest.raises(UserError, match="meta.pdparams: not a state dict"):
        read_state_dict(path)


# ---------------------------------------------------------------- loading into a paddle Layer


def test_torch_layout_state_loads_into_paddle_layer():
    rng = np.random.default_rng(0)
    net = _small_net()
    torch_state = {  # names and [out, in] Linear layout as torch writes them
        "module.0.weight": rng.standard_normal((4, 3, 3, 3)),
        "module.0.bias": rng.standard_normal(4),
        "module.1.weight": rng.standard_normal(4),
        "module.1.bias": rng.standard_normal(4),
        "module.1.running_mean": rng.standard_normal(4),
        "module.1.running_var": rng.random(4) + 0.5,
        "module.1.num_batches_tracked": np.array(10),
        "module.3.weight": rng.standard_normal((2, 16)),
        "module.3.bias": rng.standard_normal(2),
    }
    state = {name.removeprefix("module."): value for name, value in torch_state.items()}

    load_into_layer(net, state, "fake.pth", torch_layout=True)

    loaded = _numpy_state(net.state_dict())
    assert all(value.dtype == np.float32 for value in loaded.values())
    np.testing.assert_allclose(loaded["0.weight"], state["0.weight"], rtol=1e-6)
    np.testing.assert_allclose(loaded["1._mean"], state["1.running_mean"], rtol=1e-6)
    np.testing.assert_allclose(loaded["1._variance"], state["1.running_var"], rtol=1e-6)
    np.testing.assert_allclose(loaded["3.weight"], state["3.weight"].T, rtol=1e-6)


def test_misfitting_state_names_missing_unexpected_and_mismatched():
    net = _small_net()
    state = {**_numpy_state(net.state_dict()), "extra.weight": np.zeros(3, np.float32)}
    del state["0.bias"]
    state["1.weight"] = np.zeros(5, np.float32)

    with pytest.raises(UserError) as error:
        load_into_layer(net, state, "other.pdparams")
    message = str(error.value)
    assert message.startswith("other.pdparams: weights do not fit Sequential")
    assert "missing: 0.bias" in message and "unexpected: extra.weight" in message
    assert "1.weight [5] vs [4]" in message and "\n" not in message


# ---------------------------------------------------------------- backbone weight policy


def test_pip_package_efficientnet_lite0_weights_load():
    weights = resolve_backbone_weights("efficientnet_lite0", "auto")

    assert weights.source.endswith(".pth") and weights.torch_layout
    state = weights.state
    # stem 6 + first block 12 + 15 expanded blocks x 18 + head conv/bn 6 + classifier 2
    assert len(state) == 6 + 12 + 15 * 18 + 6 + 2
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_fc.weight"].dtype == np.float32 and np.isfinite(state["_fc.weight"]).all()
    assert (state["_bn1.running_var"] > 0).all() and state["_fc.weight"].std() > 1e-3
    assert np.array_equal(safe_load(weights.source)["_bn0.bias"], state["_bn0.bias"])


def test_backbone_weights_none_and_explicit_path(tmp_path):
    assert resolve_backbone_weights("wide_resnet50_2", "none") is None
    path = tmp_path / "backbone.pdparams"
    save_atomic({"fc.weight": paddle.ones([2, 2])}, path)
    weights = resolve_backbone_weights("wide_resnet50_2", str(path))
    assert not weights.torch_layout and list(weights.state) == ["fc.weight"]
    with pytest.raises(UserError, match="missing.pth: file not found"):
        resolve_backbone_weights("wide_resnet50_2", str(tmp_path / "missing.pth"))


def test_backbone_weights_offline_failure_is_one_clear_line(monkeypatch):
    import paddle.utils.download

    def no_network(url, md5sum=None):
        raise RuntimeError(f"Download from {url} failed. Retry limit reached")

    monkeypatch.setattr(paddle.utils.download, "get_weights_path_from_url", no_network)
    for name in ("wide_resnet50_2", "not_a_network"):
        with pytest.raises(UserError) as error:
            resolve_backbone_weights(name, "auto")
        message = str(error.value)
        assert message.startswith(f"no pretrained weights for {name} available offline")
        assert "--backbone_weights PATH" in message and "\n" not in message


def test_offline_the_paddle_download_is_not_even_tried(monkeypatch, tmp_path):
    """No network: one line at once, without Paddle's downloader and its retries; a file in
    Paddle's download cache is still used offline."""
    import socket

    import paddle.utils.download

    def unreachable(address, timeout=None):
        raise OSError("Name or service not known")

    def downloader(url, md5sum=None):
        tried.append(url)
        return str(cached)

    tried = []
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(paddle.utils.download, "get_weights_path_from_url", downloader)
    monkeypatch.setattr(paddle.utils.download, "WEIGHTS_HOME", str(tmp_path))
    with pytest.raises(UserError) as error:
        resolve_backbone_weights("wide_resnet50_2", None)
    assert "no network to download it from" in str(error.value) and "\n" not in str(error.value)
    assert tried == []
    cached = tmp_path / "wide_resnet50_2.pdparams"  # the name Paddle's cache gives the file
    save_atomic({"fc.weight": paddle.ones([2, 2])}, cached)
    assert list(resolve_backbone_weights("wide_resnet50_2", None).state) == ["fc.weight"]
    assert len(tried) == 1
