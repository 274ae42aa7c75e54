"""oneDNN convolutions on raw buffers, through the oneDNN library inside Paddle's CPU wheel
(``paddle/libs/libdnnl.so.3``), called with ctypes: nothing is compiled.

Why: Paddle's dygraph runs a trainable convolution as im2col + sgemm one image at a time and
never dispatches to its own oneDNN kernels; torch eager runs oneDNN's. These calls run a
convolution at oneDNN's speed (adkit/train/onednn_layers.py wraps them as autograd ops and layers).

Layouts: activations NHWC (``acdb``: oneDNN's kernels take them as they are) or NCHW (``abcd``:
reordered to and from the blocked layout oneDNN picks, as torch does), weights as Paddle stores
them, OIHW (``abcd``), bias [O]. oneDNN picks the weights' internal layout; whatever differs from
the caller's is reordered in and out on each call (into temporary buffers the caller's
``scratch(nbytes)`` allocates). A transposed convolution is the
backward-data pass of the convolution it mirrors, so one ``Convolution`` serves both.

oneDNN never stops a run. ``usable()`` decides once per process, on first use: on x86-64
Linux only, it loads the library, refuses a major version other than ``SUPPORTED_MAJOR`` (3: the
C API below is oneDNN 3.x's; Paddle 2.6.2 ships 3.2.1, Paddle 3.3.1 ships 3.6.2) and runs a
self-check, small convolutions' three passes in both layouts against Paddle's own kernels
(``F.conv2d`` and autograd) within float32 rounding. Any failure (no library, a missing symbol,
another version, an error creating or running a primitive, a wrong result) calls
``disable(reason)``: one warning on the ``adkit`` logger, and Paddle's kernels for the rest of the
process. After that decision ``usable()`` is a flag read. The layers call ``disable`` too when a
call fails during training, and redo that call with Paddle's kernels.

Handles: a ``Convolution`` owns its primitives, descriptors and memory objects and destroys them
when closed or dropped; ``Convolution.get`` keeps the ``CACHE_SIZE`` most recently used
geometries.

Constants: enum values are looked up by name in the library itself (``dnnl_debug.h``'s ``*2str``
functions); what has no such lookup (argument ids, one query, two structs, the signatures) is
copied from oneDNN 3.x's headers, the same in 3.2.1 and 3.6.2, with the header named, and the
self-check fails if any of it is wrong.
"""
import collections
import ctypes
import logging
import os
import platform
import sys
import threading
import weakref

import numpy as np

log = logging.getLogger("adkit")

SUPPORTED_MAJOR = 3
# RD4AD with WRN50-2 trains 26 geometries per batch size (a last, smaller batch doubles them)
CACHE_SIZE = 64
# largest difference from Paddle's result, relative to its largest magnitude, the self-check accepts
SELF_CHECK_TOLERANCE = 1e-4

# dnnl_types.h (DNNL_ARG_*): execution argument ids
ARG_SRC, ARG_DST, ARG_WEIGHTS, ARG_BIAS = 1, 17, 33, 41
ARG_DIFF_SRC, ARG_DIFF_DST, ARG_DIFF_WEIGHTS, ARG_DIFF_BIAS = 129, 145, 161, 169
# dnnl_types.h (dnnl_query_t): the memory descriptor of an execution argument (index: its id)
QUERY_EXEC_ARG_MD = 255
# dnnl_common_types.h: DNNL_MAX_NDIMS (the length of dnnl_dims_t), dnnl_stream_in_order
MAX_NDIMS = 12
STREAM_IN_ORDER = 1

# enum values looked up by name at load: attribute -> (dnnl_debug.h function, name)
_ENUMS = {
    "f32": ("dnnl_dt2str", "f32"),
    "tag_any": ("dnnl_fmt_tag2str", "any"),
    "tag_a": ("dnnl_fmt_tag2str", "a"),  # bias [O]
    "tag_abcd": ("dnnl_fmt_tag2str", "abcd"),  # NCHW, OIHW
    "tag_acdb": ("dnnl_fmt_tag2str", "acdb"),  # NHWC
    "forward_training": ("dnnl_prop_kind2str", "forward_training"),
    "convolution_direct": ("dnnl_alg_kind2str", "convolution_direct"),
    "cpu": ("dnnl_engine_kind2str", "cpu"),
}
_ENUM_SEARCH = 1024  # the values searched for a name (in 3.x the largest needed is 64)

_p = ctypes.c_void_p
_dims = ctypes.c_int64 * MAX_NDIMS
_status = ctypes.c_int


class ExecArg(ctypes.Structure):  # dnnl_types.h: dnnl_exec_arg_t
    _fields_ = [("arg", ctypes.c_int), ("memory", _p)]


class _Version(ctypes.Structure):  # dnnl_common_types.h: the leading fields of dnnl_version_t
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int)]


_SIGNATURES = {  # name: (result type, argument types)
    # dnnl_common.h
    "dnnl_version": (ctypes.POINTER(_Version), ()),
    "dnnl_engine_create": (_status, (ctypes.POINTER(_p), ctypes.c_int, ctypes.c_size_t)),
    "dnnl_engine_destroy": (_status, (_p,)),
    "dnnl_stream_create": (_status, (ctypes.POINTER(_p), _p, ctypes.c_uint)),
    "dnnl_stream_wait": (_status, (_p,)),
    "dnnl_stream_destroy": (_status, (_p,)),
    # dnnl.h
    "dnnl_memory_desc_create_with_tag": (_status, (ctypes.POINTER(_p), ctypes.c_int, _dims, ctypes.c_int,
                                                   ctypes.c_int)),
    "dnnl_memory_desc_equal": (ctypes.c_int, (_p, _p)),
    "dnnl_memory_desc_get_size": (ctypes.c_size_t, (_p,)),
    "dnnl_memory_desc_destroy": (_status, (_p,)),
    "dnnl_convolution_forward_primitive_desc_create": (_status, (
        ctypes.POINTER(_p), _p, ctypes.c_int, ctypes.c_int, _p, _p, _p, _p, _dims, _dims, _dims, _dims, _p)),
    "dnnl_convolution_backward_data_primitive_desc_create": (_status, (
        ctypes.POINTER(_p), _p, ctypes.c_int, _p, _p, _p, _dims, _dims, _dims, _dims, _p, _p)),
    "dnnl_convolution_backward_weights_primitive_desc_create": (_status, (
        ctypes.POINTER(_p), _p, ctypes.c_int, _p, _p, _p, _p, _dims, _dims, _dims, _dims, _p, _p)),
    "dnnl_reorder_primitive_desc_create": (_status, (ctypes.POINTER(_p), _p, _p, _p, _p, _p)),
    "dnnl_primitive_desc_query_md": (_p, (_p, ctypes.c_int, ctypes.c_int)),
    "dnnl_primitive_desc_destroy": (_status, (_p,)),
    "dnnl_primitive_create": (_status, (ctypes.POINTER(_p), _p)),
    "dnnl_primitive_execute": (_status, (_p, _p, ctypes.c_int, ctypes.POINTER(ExecArg))),
    "dnnl_primitive_destroy": (_status, (_p,)),
    "dnnl_memory_create": (_status, (ctypes.POINTER(_p), _p, _p, _p)),
    "dnnl_memory_set_data_handle": (_status, (_p, _p)),
    "dnnl_memory_destroy": (_status, (_p,)),
    # dnnl_debug.h
    **{name: (ctypes.c_char_p, (ctypes.c_int,)) for name in (
        "dnnl_status2str", "dnnl_dt2str", "dnnl_fmt_tag2str", "dnnl_prop_kind2str", "dnnl_alg_kind2str",
        "dnnl_engine_kind2str")},
}
_DESTROY = {  # creating function -> the function that destroys what it made
    "dnnl_engine_create": "dnnl_engine_destroy",
    "dnnl_stream_create": "dnnl_stream_destroy",
    "dnnl_memory_desc_create_with_tag": "dnnl_memory_desc_destroy",
    "dnnl_convolution_forward_primitive_desc_create": "dnnl_primitive_desc_destroy",
    "dnnl_convolution_backward_data_primitive_desc_create": "dnnl_primitive_desc_destroy",
    "dnnl_convolution_backward_weights_primitive_desc_create": "dnnl_primitive_desc_destroy",
    "dnnl_reorder_primitive_desc_create": "dnnl_primitive_desc_destroy",
    "dnnl_primitive_create": "dnnl_primitive_destroy",
    "dnnl_memory_create": "dnnl_memory_destroy",
}

_CDLL = ctypes.CDLL  # the loader (tests put a failing symbol lookup here)


class OneDNNError(RuntimeError):
    pass


def _release(lib, owned):
    """Destroy handles newest first: a primitive before the descriptor it was made from, a
    backward descriptor before the forward one it keeps a pointer to (its hint). Runs from
    finalizers: never raises."""
    while owned:
        destroy, handle = owned.pop()
        try:
            getattr(lib, destroy)(handle)
        except Exception:  # noqa: BLE001 - nothing left to do with a handle that will not go
            pass


class _Library:
    """The loaded library with one CPU engine and stream."""

    def __init__(self, path):
        lib = _CDLL(path)
        for name, (restype, argtypes) in _SIGNATURES.items():
            try:
                function = getattr(lib, name)
            except AttributeError:
                raise OneDNNError(f"{os.path.basename(path)} has no {name}") from None
            function.argtypes, function.restype = argtypes, restype
        version = lib.dnnl_version().contents
        self.version = (version.major, version.minor, version.patch)
        if version.major != SUPPORTED_MAJOR:
            raise OneDNNError(f"oneDNN {'.'.join(map(str, self.version))} in {path}: these calls "
                              f"follow oneDNN {SUPPORTED_MAJOR}.x")
        for attribute, (function, name) in _ENUMS.items():
            setattr(self, attribute, self._enum(getattr(lib, function), name))
        self.lib = lib
        self._owned = []
        self._finalizer = weakref.finalize(self, _release, lib, self._owned)
        self._finalizer.atexit = False  # the process is ending: nothing to give back
        try:
            self.engine = self.create("dnnl_engine_create", self.cpu, 0, owner=self._owned)
            self.stream = self.create("dnnl_stream_create", self.engine, STREAM_IN_ORDER, owner=self._owned)
        except BaseException:
            self._finalizer()
            raise

    @staticmethod
    def _enum(to_name, name):
        for value in range(_ENUM_SEARCH):
            if to_name(value) == name.encode():
                return value
        raise OneDNNError(f"{to_name.__name__} names no value {name!r}")

    def call(self, name, *args):
        status = getattr(self.lib, name)(*args)
        if status != 0:
            text = (self.lib.dnnl_status2str(status) or b"?").decode()
            raise OneDNNError(f"{name} failed ({text}, status {status})")

    def create(self, name, *args, owner):
        """Call a ``dnnl_*_create`` whose first argument receives the new handle; ``owner`` (a
        list) records it for ``_release``."""
        handle = _p()
        self.call(name, ctypes.byref(handle), *args)
        owner.append((_DESTROY[name], handle))
        return handle

    def memory_desc(self, shape, tag, owner):
        return self.create("dnnl_memory_desc_create_with_tag", len(shape), _dims(*shape), self.f32, tag,
                           owner=owner)

    def arg_md(self, primitive_desc, arg):
        """The memory descriptor the primitive wants for argument ``arg`` (owned by the descriptor)."""
        md = self.lib.dnnl_primitive_desc_query_md(primitive_desc, QUERY_EXEC_ARG_MD, arg)
        if not md:
            raise OneDNNError(f"dnnl_primitive_desc_query_md: no memory descriptor for argument {arg}")
        return _p(md)

    def execute(self, primitive, args):
        array = (ExecArg * len(args))(*[ExecArg(arg, memory) for arg, memory in args])
        self.call("dnnl_primitive_execute", primitive, self.stream, len(args), array)
        self.call("dnnl_stream_wait", self.stream)


# The process's decision: None until the first usable(), then True or False for good (False
# also after disable()).
_USABLE = None
_REASON = None
_LIBRARY = None
_STATE_LOCK = threading.RLock()


def library_path():
    import paddle

    return os.path.join(os.path.dirname(paddle.__file__), "libs", "libdnnl.so.3")


def usable():
    """Whether oneDNN's convolutions run in this process. The first call loads the library and
    runs the self-check (see the module's docstring); afterwards it only reads the decision."""
    if _USABLE is None:
        _first_use()
    return bool(_USABLE)


def reason():
    """Why oneDNN's convolutions are off (None while they are on or undecided)."""
    return _REASON


def library():
    """The loaded library while ``usable()``, else None."""
    return _LIBRARY if usable() else None


def disable(why, warn=True):
    """Paddle's kernels for every convolution from now on in this process. Logs one line, at
    the first call only (a warning; info for a platform oneDNN is not meant for)."""
    global _USABLE, _REASON
    with _STATE_LOCK:
        if _USABLE is False:
            return
        _USABLE, _REASON = False, " ".join(str(why).split())
        Convolution.clear_cache()
    (log.warning if warn else log.info)(
        "oneDNN convolutions off for this process (%s): training continues on Paddle's kernels", _REASON)


def failure(what, err):
    """A reason for ``disable``: what failed and the exception."""
    return f"{what}: {type(err).__name__}: {err}"


def reset():
    """Forget the decision and the library (tests): the next ``usable()`` loads and checks again."""
    global _USABLE, _REASON, _LIBRARY
    with _STATE_LOCK:
        Convolution.clear_cache()
        _USABLE, _REASON, _LIBRARY = None, None, None


def _first_use():
    global _USABLE, _LIBRARY
    import paddle

    with _STATE_LOCK:
        if _USABLE is not None or not paddle.in_dynamic_mode():  # decided, or not yet decidable
            return
        if not (platform.machine() in ("x86_64", "AMD64") and sys.platform.startswith("linux")):
            disable(f"{sys.platform} {platform.machine()}: oneDNN is called on x86-64 Linux only", warn=False)
            return
        try:
            path = library_path()
            if not os.path.isfile(path):
                raise OneDNNError(f"no {path} (a Paddle wheel without oneDNN)")
            dnnl = _Library(path)
        except Exception as err:  # noqa: BLE001 - whatever it is, Paddle's kernels take over
            disable(failure("loading oneDNN", err))
            return
        try:
            self_check(dnnl)
        except Exception as err:  # noqa: BLE001
            disable(failure(f"oneDNN {'.'.join(map(str, dnnl.version))} self-check", err))
            return
        _LIBRARY, _USABLE = dnnl, True


# small convolutions the self-check runs: (src NCHW, weights OIHW, bias, stride, padding
# (top, left, bottom, right)); the second has channels enough for oneDNN's blocked layouts
SELF_CHECK_CONVS = (
    ((2, 3, 9, 8), (8, 3, 3, 2), True, (2, 1), (1, 0, 0, 1)),
    ((1, 16, 6, 7), (16, 16, 3, 3), False, (1, 1), (1, 1, 1, 1)),
)


def self_check(dnnl):
    """Raise OneDNNError unless ``dnnl``'s three passes of ``SELF_CHECK_CONVS``, in both layouts,
    give Paddle's results (``F.conv2d`` and its autograd) within ``SELF_CHECK_TOLERANCE``."""
    for src, weights, bias, stride, padding in SELF_CHECK_CONVS:
        for layout in ("NCHW", "NHWC"):
            conv = Convolution(src, weights, bias, stride, padding, layout, dnnl=dnnl)
            try:
                _check_one(conv, bias, stride, padding, layout)
            finally:
                conv.close()


def _values(shape, phase):
    """Fixed values in [-1, 1] with no pattern a convolution could map to the same result by a
    wrong layout (no random numbers: Paddle's generator stays as the caller set it)."""
    return np.sin(np.arange(np.prod(shape)) * 0.73 + phase).reshape(shape).astype(np.float32)


def _check_one(conv, bias, stride, padding, layout):
    import paddle
    import paddle.nn.functional as F

    def ordered(nchw):  # an NCHW array in ``layout``, C-contiguous
        return np.ascontiguousarray(nchw.transpose(0, 2, 3, 1) if layout == "NHWC" else nchw)

    src, weights = conv.key[:2]
    x, w = ordered(_values(src, 0.1)), _values(weights, 0.2)
    b = _values(weights[:1], 0.3) if bias else None
    dy = ordered(_values(conv.dst_shape if layout == "NCHW" else _to_nchw(conv.dst_shape), 0.4))
    top, left, bottom, right = padding
    place = paddle.CPUPlace()
    with paddle.set_grad_enabled(True):
        inputs = [paddle.to_tensor(a, place=place, stop_gradient=False) for a in (x, w, b) if a is not None]
        y = F.conv2d(*inputs, stride=list(stride), padding=[top, bottom, left, right], data_format=layout)
        grads = paddle.grad([y], inputs, [paddle.to_tensor(dy, place=place)])
    want = {"y": y.numpy(), "dx": grads[0].numpy(), "dw": grads[1].numpy()}
    if b is not None:
        want["db"] = grads[2].numpy()

    got = {name: np.empty_like(array) for name, array in want.items()}
    pointer = lambda array: None if array is None else array.ctypes.data  # noqa: E731
    conv.forward(pointer(x), pointer(w), pointer(got["y"]), _numpy_scratch, pointer(b))
    conv.backward_data(pointer(dy), pointer(w), pointer(got["dx"]), _numpy_scratch)
    conv.backward_weights(pointer(x), pointer(dy), pointer(got["dw"]), _numpy_scratch, pointer(got.get("db")))
    for name, array in want.items():
        error = np.abs(got[name].astype(np.float64) - array).max()
        scale = max(float(np.abs(array).max()), 1e-30)
        if not error <= SELF_CHECK_TOLERANCE * scale:  # also catches NaN
            raise OneDNNError(f"{name} of a {layout} convolution of {src} by {weights} differs from "
                              f"Paddle's by {error:.3g} (largest value {scale:.3g})")


def _to_nchw(nhwc_shape):
    n, h, w, c = nhwc_shape
    return (n, c, h, w)


def _numpy_scratch(nbytes):
    buffer = np.empty((int(nbytes) + 3) // 4, np.float32)
    return buffer, buffer.ctypes.data


class _Operand:
    """One argument of a primitive: the caller's buffer in its layout (``user``) and, when the
    primitive wants another layout, a reorder to or from a temporary buffer in that layout."""

    def __init__(self, dnnl, owned, user_md, wanted_md, into_primitive):
        self.dnnl = dnnl
        self.user = dnnl.create("dnnl_memory_create", user_md, dnnl.engine, None, owner=owned)
        self.internal = self.reorder = None
        if not dnnl.lib.dnnl_memory_desc_equal(user_md, wanted_md):
            self.nbytes = dnnl.lib.dnnl_memory_desc_get_size(wanted_md)
            self.internal = dnnl.create("dnnl_memory_create", wanted_md, dnnl.engine, None, owner=owned)
            source, target = (user_md, wanted_md) if into_primitive else (wanted_md, user_md)
            pd = dnnl.create("dnnl_reorder_primitive_desc_create", source, dnnl.engine, target,
                             dnnl.engine, None, owner=owned)
            self.reorder = dnnl.create("dnnl_primitive_create", pd, owner=owned)
        self.into_primitive = into_primitive

    def bind(self, pointer, scratch, keep):
        """Point at the caller's buffer; returns the memory the primitive reads or writes."""
        self.dnnl.call("dnnl_memory_set_data_handle", self.user, _p(pointer))
        if self.internal is None:
            return self.user
        buffer, buffer_pointer = scratch(self.nbytes)
        keep.append(buffer)
        self.dnnl.call("dnnl_memory_set_data_handle", self.internal, _p(buffer_pointer))
        if self.into_primitive:
            self.dnnl.execute(self.reorder, [(ARG_SRC, self.user), (ARG_DST, self.internal)])
        return self.internal

    def finish(self):
        """After the primitive ran: copy an output from the internal layout to the caller's."""
        if self.internal is not None and not self.into_primitive:
            self.dnnl.execute(self.reorder, [(ARG_SRC, self.internal), (ARG_DST, self.user)])


class Convolution:
    """The three primitives of one convolution geometry, on float32 buffers given as addresses:
    ``forward`` (y = conv(x, w) + b), ``backward_data`` (dx from dy) and ``backward_weights``
    (dw and db from x and dy). ``src`` is [N, C, H, W] (the buffers hold it in ``layout``), ``weights``
    [O, C, KH, KW] (OIHW), ``padding`` (top, left, bottom, right). ``Convolution.get`` keeps the
    ``CACHE_SIZE`` most recently used geometries; a lock serialises calls, which reuse the same
    memory objects. Its oneDNN handles are destroyed by ``close()`` or when it is dropped (an
    evicted geometry once the last autograd op holding it is done)."""

    _cache = collections.OrderedDict()
    _cache_lock = threading.Lock()

    @classmethod
    def get(cls, src, weights, bias, stride, padding, layout="NHWC"):
        key = (tuple(src), tuple(weights), bool(bias), tuple(stride), tuple(padding), layout)
        dnnl = library()  # before the lock: a first use that fails clears the cache
        with cls._cache_lock:
            conv = cls._cache.get(key)
            if conv is None or not conv._finalizer.alive:  # new, or closed by a caller
                conv = cls._cache[key] = cls(*key, dnnl=dnnl)
                while len(cls._cache) > CACHE_SIZE:
                    cls._cache.popitem(last=False)  # released once no autograd op holds it
            cls._cache.move_to_end(key)
            return conv

    @classmethod
    def clear_cache(cls):
        with cls._cache_lock:
            cls._cache.clear()

    def __init__(self, src, weights, bias, stride, padding, layout="NHWC", dnnl=None):
        dnnl = dnnl or library()
        if dnnl is None:
            raise OneDNNError(f"oneDNN is not available: {reason()}")
        self.key = (tuple(src), tuple(weights), bool(bias), tuple(stride), tuple(padding), layout)
        self.dnnl, self.lock = dnnl, threading.Lock()
        self._owned = []  # (destroy function, handle) in the order made
        self._finalizer = weakref.finalize(self, _release, dnnl.lib, self._owned)
        self._finalizer.atexit = False
        try:
            self._make(dnnl, src, weights, bias, stride, padding, layout, self._owned)
        except BaseException:
            self._finalizer()
            raise

    def _make(self, dnnl, src, weights, bias, stride, padding, layout, owned):
        n, c, h, w = src
        o, c_w, kh, kw = weights
        top, left, bottom, right = padding
        out_h = (h + top + bottom - kh) // stride[0] + 1
        out_w = (w + left + right - kw) // stride[1] + 1
        if c_w != c or out_h < 1 or out_w < 1:
            raise ValueError(f"convolution of {src} by {weights}: shapes do not fit")
        if layout == "NHWC":  # oneDNN's NHWC kernels take the caller's buffers as they are
            self.src_shape, self.dst_shape = (n, h, w, c), (n, out_h, out_w, o)
            user_tag = primitive_tag = dnnl.tag_acdb
        else:  # NCHW: oneDNN picks a blocked layout and activations are reordered, as torch does
            self.src_shape, self.dst_shape = (n, c, h, w), (n, o, out_h, out_w)
            user_tag, primitive_tag = dnnl.tag_abcd, dnnl.tag_any
        dst = (n, o, out_h, out_w)
        src_md, dst_md = dnnl.memory_desc(src, primitive_tag, owned), dnnl.memory_desc(dst, primitive_tag, owned)
        user_src, user_dst = dnnl.memory_desc(src, user_tag, owned), dnnl.memory_desc(dst, user_tag, owned)
        user_w, any_w = dnnl.memory_desc(weights, dnnl.tag_abcd, owned), dnnl.memory_desc(weights, dnnl.tag_any, owned)
        bias_md = dnnl.memory_desc((o,), dnnl.tag_a, owned) if bias else None
        geometry = (_dims(*stride), _dims(0, 0), _dims(top, left), _dims(bottom, right))  # no dilation
        forward = dnnl.create("dnnl_convolution_forward_primitive_desc_create", dnnl.engine,
                              dnnl.forward_training, dnnl.convolution_direct, src_md, any_w, bias_md, dst_md,
                              *geometry, None, owner=owned)
        data = dnnl.create("dnnl_convolution_backward_data_primitive_desc_create", dnnl.engine,
                           dnnl.convolution_direct, src_md, any_w, dst_md, *geometry, forward, None, owner=owned)
        weights_pd = dnnl.create("dnnl_convolution_backward_weights_primitive_desc_create", dnnl.engine,
                                 dnnl.convolution_direct, src_md, any_w, bias_md, dst_md, *geometry, forward,
                                 None, owner=owned)
        self.primitives = tuple(dnnl.create("dnnl_primitive_create", pd, owner=owned)
                                for pd in (forward, data, weights_pd))

        def operands(pd, user_mds, outputs):  # {argument id: _Operand} of one primitive
            return {arg: _Operand(dnnl, owned, user_md, dnnl.arg_md(pd, arg), arg not in outputs)
                    for arg, user_md in user_mds.items() if user_md is not None}

        self.operands = (
            operands(forward, {ARG_SRC: user_src, ARG_WEIGHTS: user_w, ARG_BIAS: bias_md, ARG_DST: user_dst},
                     (ARG_DST,)),
            operands(data, {ARG_DIFF_DST: user_dst, ARG_WEIGHTS: user_w, ARG_DIFF_SRC: user_src},
                     (ARG_DIFF_SRC,)),
            operands(weights_pd, {ARG_SRC: user_src, ARG_DIFF_DST: user_dst, ARG_DIFF_WEIGHTS: user_w,
                                  ARG_DIFF_BIAS: bias_md}, (ARG_DIFF_WEIGHTS, ARG_DIFF_BIAS)),
        )

    @property
    def handles(self):
        """The oneDNN handles this convolution still owns, as (destroy function, address)."""
        return [(destroy, handle.value) for destroy, handle in self._owned]

    def close(self):
        """Destroy the oneDNN handles now (later calls raise OneDNNError)."""
        with self.lock:
            self._finalizer()

    def _run(self, which, pointers, scratch):
        operands = self.operands[which]
        keep = []  # temporary buffers, alive until the primitive and the reorders have run
        with self.lock:
            if not self._finalizer.alive:
                raise OneDNNError("a closed Convolution was called")
            args = [(arg, operands[arg].bind(pointer, scratch, keep)) for arg, pointer in pointers.items()]
            self.dnnl.execute(self.primitives[which], args)
            for arg in pointers:
                operands[arg].finish()

    def forward(self, x, weights, y, scratch, bias=None):
        pointers = {ARG_SRC: x, ARG_WEIGHTS: weights, ARG_DST: y}
        if bias is not None:
            pointers[ARG_BIAS] = bias
        self._run(0, pointers, scratch)

    def backward_data(self, dy, weights, dx, scratch):
        self._run(1, {ARG_DIFF_DST: dy, ARG_WEIGHTS: weights, ARG_DIFF_SRC: dx}, scratch)

    def backward_weights(self, x, dy, dw, scratch, db=None):
        pointers = {ARG_SRC: x, ARG_DIFF_DST: dy, ARG_DIFF_WEIGHTS: dw}
        if db is not None:
            pointers[ARG_DIFF_BIAS] = db
        self._run(2, pointers, scratch)
