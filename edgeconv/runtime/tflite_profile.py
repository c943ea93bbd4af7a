"""Per-operator times of a .tflite from LiteRT's own profiler, through its C API (`libLiteRt.so` in ai_edge_litert).

The Python interpreter has no per-operator timer and the Python `CompiledModel` does not expose LiteRT's
profiler, but the wheel's `libLiteRt.so` exports the C API that does (`litert_profiler.h`): a compiled model made
with the runtime option `enable_profiling = true` owns a profiler whose events are one per operator and invoke -
XNNPACK's own operators inside the delegate (e.g. "Fully Connected (NC, QS8, QC8W) GEMM", "Convert (NC)" for a
quantize / dequantize), TFLite's built-in kernels by op name for operators outside it. This module binds the dozen
functions needed with ctypes; nothing is compiled and nothing from the model file is executed.

Any failure of the binding (a wheel without the library or with another C API) raises `ProfilerUnavailable`, and
the caller falls back to what the Python interpreter can measure.
"""

from __future__ import annotations

import ctypes as C
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeconv.common.errors import EdgeconvError

HW_CPU = 1  # kLiteRtHwAcceleratorCpu
LOCK_WRITE = 1  # kLiteRtTensorBufferLockModeWrite
ENV_MIN_LOG_SEVERITY, ANY_INT, LOG_ERROR = 25, 2, 3  # kLiteRtEnvOptionTagMinLoggerSeverity, kLiteRtAnyTypeInt, Error
OPERATOR_INVOKE, DELEGATE_OPERATOR_INVOKE, DELEGATE_PROFILED_OPERATOR_INVOKE = 2, 4, 8  # LiteRtProfilerEventType
# XNNPACK names its unary elementwise operators (GELU, RSQRT, ...) only by kind in the profile of this release
UNNAMED_UNARY = {"Invalid Unary Op": "Unary elementwise (GELU, RSQRT, ...)"}
_P = C.c_void_p


class ProfilerUnavailable(EdgeconvError):
    """LiteRT's C profiler cannot be used here (no libLiteRt.so, another C API, or a call failed)."""


class _Mem(C.Structure):
    _fields_ = [("total", C.c_size_t), ("in_use", C.c_size_t), ("private", C.c_size_t)]


class _Any(C.Structure):  # LiteRtAny with its int member (the union is 8 bytes)
    _fields_ = [("type", C.c_int), ("int_value", C.c_int64)]


class _EnvOption(C.Structure):  # LiteRtEnvOption
    _fields_ = [("tag", C.c_int), ("value", _Any)]


class _Event(C.Structure):  # ProfiledEventData (litert_profiler_event.h)
    _fields_ = [
        ("tag", C.c_char_p),
        ("event_type", C.c_int),
        ("start_us", C.c_uint64),
        ("elapsed_us", C.c_uint64),
        ("begin_mem", _Mem),
        ("end_mem", _Mem),
        ("metadata1", C.c_uint64),
        ("metadata2", C.c_uint64),
        ("source", C.c_int),
    ]


@dataclass
class OpTimes:
    """ms per invoke of every operator, in run order: (label, op type) -> ms; label says where it ran."""

    per_node: dict[tuple[str, str], float] = field(default_factory=dict)
    invokes: int = 0


def _library() -> C.CDLL:
    try:
        import ai_edge_litert
    except ImportError as e:
        raise ProfilerUnavailable(f"ai_edge_litert is not installed ({e.name or e})") from None
    path = Path(os.path.dirname(ai_edge_litert.__file__)) / "libLiteRt.so"
    if not path.is_file():
        raise ProfilerUnavailable(f"{path.name} is not in ai_edge_litert {getattr(ai_edge_litert, '__version__', '')}")
    try:
        lib = C.CDLL(str(path))
        sig = {
            "LiteRtCreateEnvironment": [C.c_int, _P, C.POINTER(_P)],
            "LiteRtDestroyEnvironment": [_P],
            "LiteRtCreateModelFromFile": [_P, C.c_char_p, C.POINTER(_P)],
            "LiteRtDestroyModel": [_P],
            "LiteRtCreateOptions": [C.POINTER(_P)],
            "LiteRtDestroyOptions": [_P],
            "LiteRtSetOptionsHardwareAccelerators": [_P, C.c_int],
            "LiteRtCreateOpaqueOptions": [C.c_char_p, _P, _P, C.POINTER(_P)],
            "LiteRtAddOpaqueOptions": [_P, _P],
            "LiteRtCreateCompiledModel": [_P, _P, _P, C.POINTER(_P)],
            "LiteRtDestroyCompiledModel": [_P],
            "LiteRtGetModelSignature": [_P, C.c_size_t, C.POINTER(_P)],
            "LiteRtGetNumSignatureInputs": [_P, C.POINTER(C.c_size_t)],
            "LiteRtGetNumSignatureOutputs": [_P, C.POINTER(C.c_size_t)],
            "LiteRtGetSignatureInputTensorByIndex": [_P, C.c_size_t, C.POINTER(_P)],
            "LiteRtGetSignatureOutputTensorByIndex": [_P, C.c_size_t, C.POINTER(_P)],
            "LiteRtGetRankedTensorType": [_P, _P],
            "LiteRtGetCompiledModelInputBufferRequirements": [_P, C.c_size_t, C.c_size_t, C.POINTER(_P)],
            "LiteRtGetCompiledModelOutputBufferRequirements": [_P, C.c_size_t, C.c_size_t, C.POINTER(_P)],
            "LiteRtCreateManagedTensorBufferFromRequirements": [_P, _P, _P, C.POINTER(_P)],
            "LiteRtDestroyTensorBuffer": [_P],
            "LiteRtGetTensorBufferSize": [_P, C.POINTER(C.c_size_t)],
            "LiteRtLockTensorBuffer": [_P, C.POINTER(_P), C.c_int],
            "LiteRtUnlockTensorBuffer": [_P],
            "LiteRtRunCompiledModel": [_P, C.c_size_t, C.c_size_t, _P, C.c_size_t, _P],
            "LiteRtCompiledModelGetProfiler": [_P, C.POINTER(_P)],
            "LiteRtStartProfiler": [_P],
            "LiteRtStopProfiler": [_P],
            "LiteRtResetProfiler": [_P],
            "LiteRtGetNumProfilerEvents": [_P, C.POINTER(C.c_int)],
            "LiteRtGetProfilerEvents": [_P, C.c_int, _P],
        }
        for name, args in sig.items():
            fn = getattr(lib, name)
            fn.argtypes = args
            fn.restype = None if name.startswith("LiteRtDestroy") else C.c_int
    except (OSError, AttributeError) as e:
        raise ProfilerUnavailable(f"libLiteRt.so has not the profiler C API this binding expects ({e})") from None
    return lib


def _ok(status: int, what: str) -> None:
    if status != 0:
        raise ProfilerUnavailable(f"LiteRT {what} failed (status {status})")


def _payload(text: str) -> tuple[int, int]:
    """A malloc'ed C string for an opaque option and libc's free to release it (LiteRT owns both afterwards)."""
    libc = C.CDLL(None)
    libc.strdup.restype, libc.strdup.argtypes = C.c_void_p, [C.c_char_p]
    return libc.strdup(text.encode()), C.cast(libc.free, C.c_void_p).value


def op_times(path: Path, x: np.ndarray, runs: int = 20, threads: int = 1, warmup: int = 3) -> OpTimes:
    """Per-operator ms per invoke of `path` on one input `x` (already in the model's layout and dtype, e.g. from
    `TFLiteRunner.input_array`), CPU with XNNPACK at `threads`, over `runs` invokes after `warmup`."""
    lib = _library()
    env, model, opts, cm, prof, sig = _P(), _P(), _P(), _P(), _P(), _P()
    buffers: list[_P] = []
    try:
        quiet = _EnvOption(ENV_MIN_LOG_SEVERITY, _Any(ANY_INT, LOG_ERROR))  # no INFO lines about accelerators
        _ok(lib.LiteRtCreateEnvironment(1, C.byref(quiet), C.byref(env)), "environment")
        _ok(lib.LiteRtCreateModelFromFile(env, str(path).encode(), C.byref(model)), "model load")
        _ok(lib.LiteRtCreateOptions(C.byref(opts)), "options")
        _ok(lib.LiteRtSetOptionsHardwareAccelerators(opts, HW_CPU), "CPU accelerator")
        for ident, toml in (
            ("runtime_options_string", "enable_profiling = true\n"),
            ("xnnpack", f"num_threads = {threads}\n"),
        ):
            data, free = _payload(toml)
            o = _P()
            _ok(lib.LiteRtCreateOpaqueOptions(ident.encode(), data, free, C.byref(o)), f"{ident} option")
            _ok(lib.LiteRtAddOpaqueOptions(opts, o), f"{ident} option")
        _ok(lib.LiteRtCreateCompiledModel(env, model, opts, C.byref(cm)), "compilation")
        _ok(lib.LiteRtGetModelSignature(model, 0, C.byref(sig)), "signature")
        io = {}
        for kind in ("Input", "Output"):
            n = C.c_size_t()
            _ok(getattr(lib, f"LiteRtGetNumSignature{kind}s")(sig, C.byref(n)), "signature")
            arr = []
            for i in range(n.value):
                t, req, buf = _P(), _P(), _P()
                ttype = C.create_string_buffer(1024)  # LiteRtRankedTensorType, filled and read by LiteRT only
                _ok(getattr(lib, f"LiteRtGetSignature{kind}TensorByIndex")(sig, i, C.byref(t)), "tensor")
                _ok(lib.LiteRtGetRankedTensorType(t, ttype), "tensor type")
                _ok(getattr(lib, f"LiteRtGetCompiledModel{kind}BufferRequirements")(cm, 0, i, C.byref(req)), "buffer")
                _ok(lib.LiteRtCreateManagedTensorBufferFromRequirements(env, ttype, req, C.byref(buf)), "buffer")
                buffers.append(buf)
                arr.append(buf)
            io[kind] = ((_P * len(arr))(*arr), len(arr))
        _fill(lib, io["Input"][0][0], x)
        (ins, n_in), (outs, n_out) = io["Input"], io["Output"]

        def invoke() -> None:
            _ok(lib.LiteRtRunCompiledModel(cm, 0, n_in, ins, n_out, outs), "invoke")

        for _ in range(warmup):
            invoke()
        _ok(lib.LiteRtCompiledModelGetProfiler(cm, C.byref(prof)), "profiler")
        if not prof.value:
            raise ProfilerUnavailable("the compiled model has no profiler")
        _ok(lib.LiteRtResetProfiler(prof), "profiler reset")
        _ok(lib.LiteRtStartProfiler(prof), "profiler start")
        for _ in range(runs):
            invoke()
        _ok(lib.LiteRtStopProfiler(prof), "profiler stop")
        count = C.c_int()
        _ok(lib.LiteRtGetNumProfilerEvents(prof, C.byref(count)), "profiler events")
        events = (_Event * count.value)()
        _ok(lib.LiteRtGetProfilerEvents(prof, count.value, events), "profiler events")
        return _summarise(events, runs)
    finally:
        for b in buffers:
            lib.LiteRtDestroyTensorBuffer(b)
        for fn, h in (("CompiledModel", cm), ("Options", opts), ("Model", model), ("Environment", env)):
            if h.value:
                getattr(lib, f"LiteRtDestroy{fn}")(h)


def _fill(lib, buf: _P, x: np.ndarray) -> None:
    data = np.ascontiguousarray(x).tobytes()
    size, host = C.c_size_t(), _P()
    _ok(lib.LiteRtGetTensorBufferSize(buf, C.byref(size)), "buffer size")
    if size.value != len(data):
        raise EdgeconvError(f"profile input has {len(data)} bytes, the model's input buffer {size.value}")
    _ok(lib.LiteRtLockTensorBuffer(buf, C.byref(host), LOCK_WRITE), "buffer lock")
    C.memmove(host, data, len(data))
    _ok(lib.LiteRtUnlockTensorBuffer(buf), "buffer unlock")


def _summarise(events, runs: int) -> OpTimes:
    """Operator events -> ms per run of each operator, labelled by its position in the run ('op 17') and keyed by
    its type: XNNPACK's own operator name inside the delegate, the TFLite op name + ' [built-in]' outside it."""
    ops = []
    for e in events:
        if e.event_type in (DELEGATE_OPERATOR_INVOKE, DELEGATE_PROFILED_OPERATOR_INVOKE):
            tag = (e.tag or b"?").decode(errors="replace").removeprefix("Delegate/")
            ops.append((UNNAMED_UNARY.get(tag, tag), e.elapsed_us))
        elif e.event_type == OPERATOR_INVOKE:
            ops.append((f"{(e.tag or b'?').decode(errors='replace')} [built-in]", e.elapsed_us))
    if not ops or len(ops) % runs:
        raise ProfilerUnavailable(f"LiteRT's profiler recorded {len(ops)} operator events over {runs} invokes")
    per_run = len(ops) // runs
    per_node: dict[tuple[str, str], float] = defaultdict(float)
    for i, (op, us) in enumerate(ops):
        per_node[(f"op {i % per_run}", op)] += us / 1e3 / runs
    return OpTimes(dict(per_node), runs)
