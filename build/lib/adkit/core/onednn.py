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

The numbers below are oneDNN 3.x's C API (``dnnl_types.h``, ``dnnl_common_types.h``); the
library's major version is checked when it loads.
"""
import ctypes
import os
import threading

F32 = 3
TAG_ANY, TAG_A, TAG_ABCD, TAG_ACDB = 1, 2, 5, 22  # any, 1-D, OIHW (NCHW), NHWC
FORWARD_TRAINING = 64
CONVOLUTION_DIRECT = 1
QUERY_IMPL_INFO_STR = 8
QUERY_SRC_MD, QUERY_DIFF_SRC_MD, QUERY_WEIGHTS_MD, QUERY_DIFF_WEIGHTS_MD = 129, 130, 131, 132
QUERY_DST_MD, QUERY_DIFF_DST_MD = 133, 134
ARG_SRC, ARG_DST, ARG_WEIGHTS, ARG_BIAS = 1, 17, 33, 41
ARG_DIFF_SRC, ARG_DIFF_DST, ARG_DIFF_WEIGHTS, ARG_DIFF_BIAS = 129, 145, 161, 169
ENGINE_CPU, STREAM_DEFAULT = 1, 1
MAX_NDIMS = 12

_p = ctypes.c_void_p
_dims = ctypes.c_int64 * MAX_NDIMS


class ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _p)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


_SIGNATURES = {  # name: (argument types); every function returns a dnnl_status_t unless noted
    "dnnl_engine_create": (ctypes.POINTER(_p), ctypes.c_int, ctypes.c_size_t),
    "dnnl_stream_create": (ctypes.POINTER(_p), _p, ctypes.c_uint),
    "dnnl_stream_wait": (_p,),
    "dnnl_memory_desc_create_with_tag": (ctypes.POINTER(_p), ctypes.c_int, _dims, ctypes.c_int, ctypes.c_int),
    "dnnl_convolution_forward_primitive_desc_create": (
        ctypes.POINTER(_p), _p, ctypes.c_int, ctypes.c_int, _p, _p, _p, _p, _dims, _dims, _dims, _dims, _p),
    "dnnl_convolution_backward_data_primitive_desc_create": (
        ctypes.POINTER(_p), _p, ctypes.c_int, _p, _p, _p, _dims, _dims, _dims, _dims, _p, _p),
    "dnnl_convolution_backward_weights_primitive_desc_create": (
        ctypes.POINTER(_p), _p, ctypes.c_int, _p, _p, _p, _p, _dims, _dims, _dims, _dims, _p, _p),
    "dnnl_reorder_primitive_desc_create": (ctypes.POINTER(_p), _p, _p, _p, _p, _p),
    "dnnl_primitive_desc_query": (_p, ctypes.c_int, ctypes.c_int, _p),
    "dnnl_primitive_create": (ctypes.POINTER(_p), _p),
    "dnnl_memory_create": (ctypes.POINTER(_p), _p, _p, _p),
    "dnnl_memory_set_data_handle": (_p, _p),
    "dnnl_primitive_execute": (_p, _p, ctypes.c_int, ctypes.POINTER(ExecArg)),
}
_OTHER_SIGNATURES = {  # name: (result type, argument types)
    "dnnl_primitive_desc_query_md": (_p, (_p, ctypes.c_int, ctypes.c_int)),
    "dnnl_memory_desc_equal": (ctypes.c_int, (_p, _p)),
    "dnnl_memory_desc_get_size": (ctypes.c_size_t, (_p,)),
    "dnnl_version": (ctypes.POINTER(_Version), ()),
}


class OneDNNError(RuntimeError):
    pass


class _Library:
    """The loaded library with one CPU engine and stream."""

    def __init__(self, path):
        lib = ctypes.CDLL(path)
        for name, argtypes in _SIGNATURES.items():
            function = getattr(lib, name)
            function.argtypes, function.restype = argtypes, ctypes.c_int
        for name, (restype, argtypes) in _OTHER_SIGNATURES.items():
            function = getattr(lib, name)
            function.argtypes, function.restype = argtypes, restype
        version = lib.dnnl_version().contents
        self.version = (version.major, version.minor, version.patch)
        if version.major != 3:
            raise OneDNNError(f"oneDNN {self.version} in {path}: these calls follow oneDNN 3.x")
        self.lib = lib
        self.engine = self.create("dnnl_engine_create", ENGINE_CPU, 0)
        self.stream = self.create("dnnl_stream_create", self.engine, STREAM_DEFAULT)

    def call(self, name, *args):
        status = getattr(self.lib, name)(*args)
        if status != 0:
            raise OneDNNError(f"{name} failed (oneDNN status {status})")

    def create(self, name, *args):
        """Call a ``dnnl_*_create`` whose first argument receives the new handle."""
        handle = _p()
        self.call(name, ctypes.byref(handle), *args)
        return handle

    def memory_desc(self, shape, tag):
        return self.create("dnnl_memory_desc_create_with_tag", len(shape), _dims(*shape), F32, tag)

    def query_md(self, primitive_desc, what):
        return _p(self.lib.dnnl_primitive_desc_query_md(primitive_desc, what, 0))

    def implementation(self, primitive_desc):
        name = ctypes.c_char_p()
        self.call("dnnl_primitive_desc_query", primitive_desc, QUERY_IMPL_INFO_STR, 0, ctypes.byref(name))
        return name.value.decode()

    def execute(self, primitive, args):
        array = (ExecArg * len(args))(*[ExecArg(arg, memory) for arg, memory in args])
        self.call("dnnl_primitive_execute", primitive, self.stream, len(args), array)
        self.call("dnnl_stream_wait", self.stream)


_LIBRARY = None
_LOAD_ERROR = None
_LOAD_LOCK = threading.Lock()


def library():
    """The oneDNN library of the installed Paddle, loaded once; None when it cannot be used (no
    such file, another major version, not x86), with ``load_error()`` saying why."""
    global _LIBRARY, _LOAD_ERROR
    with _LOAD_LOCK:
        if _LIBRARY is None and _LOAD_ERROR is None:
            try:
                import paddle

                path = os.path.join(os.path.dirname(paddle.__file__), "libs", "libdnnl.so.3")
                if not os.path.isfile(path):
                    raise OneDNNError(f"no {path} (Paddle built without oneDNN)")
                _LIBRARY = _Library(path)
            except (OSError, AttributeError, OneDNNError) as err:
                _LOAD_ERROR = str(err)
    return _LIBRARY


def load_error():
    return _LOAD_ERROR


class _Operand:
    """One argument of a primitive: the caller's buffer in its layout (``user``) and, when the
    primitive wants another layout, a reorder to or from a temporary buffer in that layout."""

    def __init__(self, dnnl, user_md, wanted_md, into_primitive):
        self.dnnl = dnnl
        self.user = dnnl.create("dnnl_memory_create", user_md, dnnl.engine, None)
        self.internal = self.reorder = None
        if not dnnl.lib.dnnl_memory_desc_equal(user_md, wanted_md):
            self.nbytes = dnnl.lib.dnnl_memory_desc_get_size(wanted_md)
            self.internal = dnnl.create("dnnl_memory_create", wanted_md, dnnl.engine, None)
            source, target = (user_md, wanted_md) if into_primitive else (wanted_md, user_md)
            pd = dnnl.create("dnnl_reorder_primitive_desc_create", source, dnnl.engine, target,
                             dnnl.engine, None)
            self.reorder = dnnl.create("dnnl_primitive_create", pd)
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
    [O, C, KH, KW] (OIHW), ``padding`` (top, left, bottom, right). Made once per geometry
    (``Convolution.get``); a lock serialises calls, which reuse the same memory objects."""

    _cache = {}
    _cache_lock = threading.Lock()

    @classmethod
    def get(cls, src, weights, bias, stride, padding, layout="NHWC"):
        key = (tuple(src), tuple(weights), bool(bias), tuple(stride), tuple(padding), layout)
        with cls._cache_lock:
            if key not in cls._cache:
                cls._cache[key] = cls(*key)
            return cls._cache[key]

    def __init__(self, src, weights, bias, stride, padding, layout="NHWC"):
        dnnl = library()
        if dnnl is None:
            raise OneDNNError(f"oneDNN is not available: {load_error()}")
        self.dnnl, self.lock = dnnl, threading.Lock()
        n, c, h, w = src
        o, c_w, kh, kw = weights
        top, left, bottom, right = padding
        out_h = (h + top + bottom - kh) // stride[0] + 1
        out_w = (w + left + right - kw) // stride[1] + 1
        if c_w != c or out_h < 1 or out_w < 1:
            raise ValueError(f"convolution of {src} by {weights}: shapes do not fit")
        if layout == "NHWC":  # oneDNN's NHWC kernels take the caller's buffers as they are
            self.src_shape, self.dst_shape = (n, h, w, c), (n, out_h, out_w, o)
            user_tag = primitive_tag = TAG_ACDB
        else:  # NCHW: oneDNN picks a blocked layout and activations are reordered, as torch does
            self.src_shape, self.dst_shape = (n, c, h, w), (n, o, out_h, out_w)
            user_tag, primitive_tag = TAG_ABCD, TAG_ANY
        src_md = dnnl.memory_desc(src, primitive_tag)
        dst_md = dnnl.memory_desc((n, o, out_h, out_w), primitive_tag)
        user_src, user_dst = dnnl.memory_desc(src, user_tag), dnnl.memory_desc((n, o, out_h, out_w), user_tag)
        user_w, any_w = dnnl.memory_desc(weights, TAG_ABCD), dnnl.memory_desc(weights, TAG_ANY)
        bias_md = dnnl.memory_desc((o,), TAG_A) if bias else None
        geometry = (_dims(*stride), _dims(0, 0), _dims(top, left), _dims(bottom, right))  # no dilation
        forward = dnnl.create("dnnl_convolution_forward_primitive_desc_create", dnnl.engine,
                              FORWARD_TRAINING, CONVOLUTION_DIRECT, src_md, any_w, bias_md, dst_md,
                              *geometry, None)
        data = dnnl.create("dnnl_convolution_backward_data_primitive_desc_create", dnnl.engine,
                           CONVOLUTION_DIRECT, src_md, any_w, dst_md, *geometry, forward, None)
        weights_pd = dnnl.create("dnnl_convolution_backward_weights_primitive_desc_create", dnnl.engine,
                                 CONVOLUTION_DIRECT, src_md, any_w, bias_md, dst_md, *geometry, forward, None)
        self._descs = (src_md, dst_md, user_src, user_dst, user_w, any_w, bias_md, forward, data,
                       weights_pd)  # kept alive
        self.implementations = tuple(dnnl.implementation(pd) for pd in (forward, data, weights_pd))
        self.primitives = tuple(dnnl.create("dnnl_primitive_create", pd) for pd in (forward, data, weights_pd))

        def operand(user_md, pd, query, into):
            return _Operand(dnnl, user_md, dnnl.query_md(pd, query), into)

        self.fwd = {"src": operand(user_src, forward, QUERY_SRC_MD, True),
                    "weights": operand(user_w, forward, QUERY_WEIGHTS_MD, True),
                    "dst": operand(user_dst, forward, QUERY_DST_MD, False)}
        self.bwd_data = {"diff_dst": operand(user_dst, data, QUERY_DIFF_DST_MD, True),
                         "weights": operand(user_w, data, QUERY_WEIGHTS_MD, True),
                         "diff_src": operand(user_src, data, QUERY_DIFF_SRC_MD, False)}
        self.bwd_weights = {"src": operand(user_src, weights_pd, QUERY_SRC_MD, True),
                            "diff_dst": operand(user_dst, weights_pd, QUERY_DIFF_DST_MD, True),
                            "diff_weights": operand(user_w, weights_pd, QUERY_DIFF_WEIGHTS_MD, False)}
        if bias:
            self.fwd["bias"] = _Operand(dnnl, bias_md, bias_md, True)
            self.bwd_weights["diff_bias"] = _Operand(dnnl, bias_md, bias_md, False)

    def _run(self, primitive, operands, pointers, arg_ids, scratch):
        keep = []  # temporary buffers, alive until the primitive and the reorders have run
        with self.lock:
            args = [(arg_ids[name], operands[name].bind(pointers[name], scratch, keep))
                    for name in operands if name in pointers]
            self.dnnl.execute(primitive, args)
            for name in pointers:
                operands[name].finish()

    def forward(self, x, weights, y, scratch, bias=None):
        pointers = {"src": x, "weights": weights, "dst": y}
        if bias is not None:
            pointers["bias"] = bias
        self._run(self.primitives[0], self.fwd, pointers,
                  {"src": ARG_SRC, "weights": ARG_WEIGHTS, "dst": ARG_DST, "bias": ARG_BIAS}, scratch)

    def backward_data(self, dy, weights, dx, scratch):
        self._run(self.primitives[1], self.bwd_data, {"diff_dst": dy, "weights": weights, "diff_src": dx},
                  {"diff_dst": ARG_DIFF_DST, "weights": ARG_WEIGHTS, "diff_src": ARG_DIFF_SRC}, scratch)

    def backward_weights(self, x, dy, dw, scratch, db=None):
        pointers = {"src": x, "diff_dst": dy, "diff_weights": dw}
        if db is not None:
            pointers["diff_bias"] = db
        self._run(self.primitives[2], self.bwd_weights, pointers,
                  {"src": ARG_SRC, "diff_dst": ARG_DIFF_DST, "diff_weights": ARG_DIFF_WEIGHTS,
                   "diff_bias": ARG_DIFF_BIAS}, scratch)

