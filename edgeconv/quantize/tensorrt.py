"""TensorRT engines: FP16, and INT8 by explicit quantization (a symmetric Q/DQ ONNX), for TensorRT 10 and 11.

TensorRT 11 has no calibrator API and is always strongly typed, so INT8 means the ONNX already carries
QuantizeLinear/DequantizeLinear pairs: activations INT8 symmetric (zero point 0) with ranges calibrated on the
calibration samples, weights INT8 symmetric per output channel - produced here with onnxruntime's quantizer
(`If` branches included, see `edgeconv.quantize.ort`). FP16 means an FP16 ONNX (float32 inputs/outputs).

`-o model.onnx` writes only that TensorRT-ready ONNX (works anywhere; build it on the device with this module or
`trtexec --onnx=... --stronglyTyped`). `-o model.engine` also builds the engine: an optimisation profile over the
batch dimension (min/opt/max), a timing cache kept next to the engine (`<engine>.timing.cache`) so rebuilds are
fast, device buffers through cuda-python, and top-1 measured on the GPU. `tensorrt` is imported lazily: without it
(or without a GPU) the command fails with one line and the install hint.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from edgeconv.artifacts import atomic_path, atomic_write_bytes
from edgeconv.errors import EdgeconvError, MissingDependencyError
from edgeconv.formats import is_format
from edgeconv.quantize import QuantizeReport, QuantizeRequest
from edgeconv.quantize.calibration import CalibrationSet
from edgeconv.quantize.common import accuracy_record, accuracy_runtime, base_record, inputs_for, peek_meta, size_record
from edgeconv.quantize.saturation import check_model

INSTALL_HINT = (
    "TensorRT comes from NVIDIA's package index, not PyPI alone: on a machine with an NVIDIA GPU and "
    "driver run pip install tensorrt-cu12 cuda-python --extra-index-url https://pypi.nvidia.com "
    "(JetPack ships it on Jetson); or write the TensorRT-ready ONNX here with -o model.onnx"
)


# ----------------------------------------------------------------------------------------------- availability
def require_tensorrt():
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional, imported only when an engine is asked for
    except ImportError:
        raise MissingDependencyError("TensorRT (python module 'tensorrt')", INSTALL_HINT) from None
    return trt


def cudart():
    """cuda-python's runtime module (new and old import paths)."""
    try:
        from cuda.bindings import runtime  # noqa: PLC0415
    except ImportError:
        try:
            from cuda import cudart as runtime  # noqa: PLC0415
        except ImportError:
            raise MissingDependencyError("cuda-python", "pip install cuda-python (device buffers for TensorRT)") from None
    return runtime


def require_gpu() -> int:
    """Number of CUDA devices; raises one line when there is none or no usable driver."""
    rt = cudart()
    err, count = rt.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        raise EdgeconvError(
            f"no usable NVIDIA GPU for TensorRT ({_err_name(err)}); build the engine on the device, "
            "or write the TensorRT-ready ONNX here with -o model.onnx"
        )
    return int(count)


def _err_name(err) -> str:
    return getattr(err, "name", str(err))


def _check(err, what: str) -> None:
    if int(err) != 0:
        raise EdgeconvError(f"CUDA error in {what}: {_err_name(err)}")


# ----------------------------------------------------------------------------------------------- ONNX preparation
def prepare_int8_onnx(
    float_model: onnx.ModelProto, calib: CalibrationSet, method: str = "minmax", on_step: Callable[[str], None] | None = None
) -> onnx.ModelProto:
    """Symmetric INT8 Q/DQ ONNX for TensorRT explicit quantization (every op onnxruntime can quantize)."""
    from edgeconv.quantize.ort import Int8Options, quantize_int8
    from edgeconv.quantize.targets import TARGETS

    opts = Int8Options.for_target(TARGETS["tensorrt"], method=method)
    res = quantize_int8(float_model, calib, opts, on_step=on_step)
    check_symmetric(res.model)
    return res.model


def check_symmetric(model: onnx.ModelProto) -> int:
    """Every Q/DQ zero point is 0 and INT8 (what TensorRT accepts); returns the number of Q/DQ nodes."""
    from onnx import numpy_helper

    from edgeconv.quantize.onnx_graph import all_initializers, subgraph_attrs

    inits = all_initializers(model.graph)
    n = 0

    def visit(g) -> None:
        nonlocal n
        for node in g.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                n += 1
                if len(node.input) > 2 and node.input[2]:
                    zp = inits.get(node.input[2])
                    if zp is None:
                        raise EdgeconvError(f"{node.name}: zero point is not a constant")
                    arr = numpy_helper.to_array(zp)
                    if arr.dtype != np.int8 or np.any(arr != 0):
                        raise EdgeconvError(
                            f"{node.name}: zero point {arr.dtype} {arr.ravel()[:4]} - TensorRT needs "
                            "symmetric INT8 (zero point 0)"
                        )
            for _, sub in subgraph_attrs(node):
                visit(sub)

    visit(model.graph)
    if n == 0:
        raise EdgeconvError("the INT8 ONNX has no Q/DQ nodes")
    return n


@dataclass(frozen=True)
class Profile:
    """Optimisation profile over the batch dimension."""

    input_name: str
    chw: tuple[int, int, int]
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise EdgeconvError(
                f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return ((self.min_batch, *self.chw), (self.opt_batch, *self.chw), (self.max_batch, *self.chw))


def profile_for(model: onnx.ModelProto, min_batch: int = 1, opt_batch: int = 8, max_batch: int = 32) -> Profile:
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != 4 or any(not d.dim_value for d in dims[1:]):
        raise EdgeconvError(f"input {inp.name} must be [batch, C, H, W] with fixed C, H, W for a TensorRT profile")
    if not dims[0].dim_param and (min_batch, opt_batch, max_batch) != (dims[0].dim_value,) * 3:
        fixed = dims[0].dim_value
        raise EdgeconvError(
            f"the ONNX has a static batch of {fixed}; a profile {min_batch}/{opt_batch}/{max_batch} "
            "needs a dynamic batch (export without --static-batch)"
        )
    return Profile(inp.name, tuple(int(d.dim_value) for d in dims[1:]), min_batch, opt_batch, max_batch)


# ----------------------------------------------------------------------------------------------- engine
def build_engine(
    onnx_bytes: bytes, profile: Profile, precision: str, timing_cache: Path | None = None, workspace_mib: int = 1024
) -> bytes:
    """Parse the ONNX and build a serialized engine (TensorRT 10/11 API); precision is carried by the ONNX types
    (strongly typed network) where TensorRT supports it, else by builder flags."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgeconvError(f"TensorRT could not parse the ONNX: {errs[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if not strongly_typed:  # TensorRT 10 without strong typing: precision by flags
        config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    opt = builder.create_optimization_profile()
    mn, op, mx = profile.shapes()
    opt.set_shape(profile.input_name, mn, op, mx)
    config.add_optimization_profile(opt)
    cache_blob = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeconvError("TensorRT failed to build the engine (see the TensorRT log above)")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


class TensorRTRunner:
    """Run a serialized engine on the GPU with cuda-python device buffers (context manager frees them)."""

    def __init__(self, engine_bytes: bytes, profile: Profile):
        trt = require_tensorrt()
        self.rt = cudart()
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise EdgeconvError("TensorRT could not deserialize the engine (built for another GPU or version?)")
        self.context = self.engine.create_execution_context()
        self.profile = profile
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inp = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.out = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        err, self.stream = self.rt.cudaStreamCreate()
        _check(err, "cudaStreamCreate")
        self._bufs: dict[str, tuple[int, int]] = {}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._bufs.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.rt.cudaFree(ptr)
            err, ptr = self.rt.cudaMalloc(nbytes)
            _check(err, "cudaMalloc")
            self._bufs[name] = (ptr, nbytes)
        return self._bufs[name][0]

    def __call__(self, x: np.ndarray, batch: int | None = None) -> np.ndarray:
        batch = min(batch or self.profile.opt_batch, self.profile.max_batch)
        outs = []
        for i in range(0, len(x), batch):
            xb = np.ascontiguousarray(x[i : i + batch], dtype=np.float32)
            self.context.set_input_shape(self.inp, xb.shape)
            out_shape = tuple(self.context.get_tensor_shape(self.out))
            y = np.empty(out_shape, dtype=np.float32)
            d_in, d_out = self._buffer(self.inp, xb.nbytes), self._buffer(self.out, y.nbytes)
            kind = self.rt.cudaMemcpyKind
            _check(
                self.rt.cudaMemcpyAsync(d_in, xb.ctypes.data, xb.nbytes, kind.cudaMemcpyHostToDevice, self.stream)[0],
                "copy to device",
            )
            self.context.set_tensor_address(self.inp, d_in)
            self.context.set_tensor_address(self.out, d_out)
            if not self.context.execute_async_v3(self.stream):
                raise EdgeconvError("TensorRT execution failed")
            _check(
                self.rt.cudaMemcpyAsync(y.ctypes.data, d_out, y.nbytes, kind.cudaMemcpyDeviceToHost, self.stream)[0],
                "copy to host",
            )
            _check(self.rt.cudaStreamSynchronize(self.stream)[0], "synchronize")
            outs.append(y)
        return np.concatenate(outs)

    def close(self) -> None:
        for ptr, _ in self._bufs.values():
            self.rt.cudaFree(ptr)
        self._bufs.clear()
        if self.stream:
            self.rt.cudaStreamDestroy(self.stream)
            self.stream = None

    def __enter__(self) -> "TensorRTRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------- command
STAND_IN = {
    "int8": "onnxruntime CPU stand-in at ORT_ENABLE_BASIC (Q/DQ computed in float, no integer kernels: "
    "cannot saturate); the engine is built on the device",
    "fp16": "onnxruntime CPU stand-in at ORT_ENABLE_EXTENDED; the engine is built on the device",
}


def run(req: QuantizeRequest, step: Callable[[str], None]) -> QuantizeReport:
    from edgeconv.card import model_fields, set_quantization, write_sidecar
    from edgeconv.export.onnx import count_if_nodes
    from edgeconv.quantize.ort import convert_fp16, ort_logits, ort_session, top1
    from edgeconv.quantize.source import resolve_onnx

    engine_wanted = is_format(req.out, "engine")
    if engine_wanted:  # fail before any work when the engine cannot be built here
        require_tensorrt()
        require_gpu()
    if req.max_drop is not None:
        raise EdgeconvError("--max-drop is implemented for --backend ort; TensorRT INT8 quantizes every op it can")
    meta = peek_meta(req.model)
    calib, ev = inputs_for(req, meta["preprocessing"], meta.get("classes"))
    batches = req.extra.get("batch_profile", (1, 8, 32))
    with tempfile.TemporaryDirectory(prefix="edgeconv-trt-") as tmp:
        src = resolve_onnx(req.model, Path(tmp), routing=req.routing)
        float_model = onnx.load(str(src.onnx_path))
        float_bytes = src.onnx_path.stat().st_size
    profile = profile_for(float_model, *batches)
    rec = base_record(req, src.meta, calib, ev)
    rec["routing"] = src.routing
    if req.precision == "int8":
        if req.per_channel is False:
            step("TensorRT INT8 always uses per-channel weights")
        rec["per_channel"] = True
        rec["activations"] = "int8 symmetric"
        rec["target"] = "tensorrt"
        model = prepare_int8_onnx(float_model, calib, req.method, on_step=step)
        rec["qdq_nodes"] = check_symmetric(model)
        rec["saturation"] = check_model(model).record()
    else:
        model = convert_fp16(float_model)
    rec["if_nodes"] = count_if_nodes(model)
    rec["tensorrt"] = {
        "profile": {
            "input": profile.input_name,
            "min": profile.min_batch,
            "opt": profile.opt_batch,
            "max": profile.max_batch,
        },
        "strongly_typed": "when supported (TensorRT >= 10)",
        "verified_on_gpu": False,
    }
    ex, ey = (ev.x.numpy(), ev.y.numpy()) if ev is not None else (None, None)
    f_top1 = top1(ort_logits(ort_session(float_model), ex), ey) if ev is not None else None
    notes = list(src.notes)
    if not engine_wanted:
        # The ONNX alone: accuracy measured in onnxruntime (CPU), which runs the same Q/DQ arithmetic.
        if ev is not None:
            # INT8: at ORT_ENABLE_BASIC onnxruntime runs each Q/DQ pair in float (no integer kernels), the
            # arithmetic TensorRT's explicit quantization specifies; the default session would use x86 U8S8
            # kernels, which saturate on CPUs without VNNI and say nothing about the engine.
            level = {"fp16": "extended", "int8": "basic"}[req.precision]
            accuracy_record(rec, f_top1, top1(ort_logits(ort_session(model, level=level), ex), ey))
            accuracy_runtime(rec, STAND_IN[req.precision])
        set_quantization(model, rec)
        with atomic_path(req.out) as t:
            onnx.save_model(model, str(t), save_as_external_data=False)
        size = req.out.stat().st_size
        notes.append(
            "TensorRT-ready ONNX written; build on the device: "
            f"trtexec --onnx={req.out.name} --stronglyTyped --minShapes={profile.input_name}:"
            f"{'x'.join(map(str, profile.shapes()[0]))} --optShapes={profile.input_name}:"
            f"{'x'.join(map(str, profile.shapes()[1]))} --maxShapes={profile.input_name}:"
            f"{'x'.join(map(str, profile.shapes()[2]))} --saveEngine=model.engine"
        )
    else:
        step("building the TensorRT engine")
        cache = req.out.with_name(req.out.name + ".timing.cache")
        engine = build_engine(model.SerializeToString(), profile, req.precision, timing_cache=cache)
        if ev is not None:
            step("measuring top-1 on the GPU")
            with TensorRTRunner(engine, profile) as runner:
                accuracy_record(rec, f_top1, top1(runner(ex), ey))
            rec["accuracy"]["runtime"] = "TensorRT"
        trt = require_tensorrt()
        rec["tensorrt"].update({"version": trt.__version__, "timing_cache": str(cache), "verified_on_gpu": True})
        size = len(engine)
        size_record(rec, float_bytes, size)
        rec.update(model_fields(src.meta))
        write_sidecar(req.out, rec)
        atomic_write_bytes(req.out, engine)
    size_record(rec, float_bytes, size)
    acc = rec.get("accuracy") or {}
    row = {
        "artifact": str(req.out),
        "backend": "tensorrt",
        "precision": req.precision.upper(),
        "If nodes": rec["if_nodes"],
        "size KiB": round(size / 1024, 1),
        "profile": f"{profile.min_batch}/{profile.opt_batch}/{profile.max_batch}",
        "float top-1 %": acc.get("float_top1"),
        "quantized top-1 %": acc.get("quantized_top1"),
        "drop": acc.get("drop"),
    }
    return QuantizeReport(req.out, rec, [row], [], notes)
