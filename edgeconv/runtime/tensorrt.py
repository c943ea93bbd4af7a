"""TensorRT engines for the TensorRT 10/11 API: build one from ONNX bytes, read a serialized engine's batch profile,
run it on the GPU with cuda-python device buffers (quantize's `.engine` output and bench's TensorRT rows).

`tensorrt` and cuda-python are imported only inside the functions that need them: without them (or without a GPU)
the caller gets one line and the install hint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeconv.common.errors import EdgeconvError, MissingDependencyError

if TYPE_CHECKING:
    import onnx

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


def require_engine_host():
    """The tensorrt module, after checking there is a GPU to build and run engines on; one readable error if not."""
    trt = require_tensorrt()
    require_gpu()
    return trt


def engine_host_available() -> bool:
    try:
        require_engine_host()
    except EdgeconvError:
        return False
    return True


def _err_name(err) -> str:
    return getattr(err, "name", str(err))


def _check(err, what: str) -> None:
    if int(err) != 0:
        raise EdgeconvError(f"CUDA error in {what}: {_err_name(err)}")


# ----------------------------------------------------------------------------------------------- profile
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
    from edgeconv.artifacts import atomic_write_bytes

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
    if hasattr(trt, "ProfilingVerbosity"):  # layer types and precisions in the engine inspector (bench --profile)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
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


def engine_profile(trt, engine_bytes: bytes) -> Profile:
    """The batch profile stored in a serialized engine (profile 0 of its input)."""
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise EdgeconvError("TensorRT could not deserialize the engine (built for another GPU or TensorRT version?)")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    shape = tuple(engine.get_tensor_shape(name))
    if shape[0] == -1:
        mn, opt, mx = (tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
        return Profile(name, tuple(int(d) for d in shape[1:]), int(mn[0]), int(opt[0]), int(mx[0]))
    return Profile(name, tuple(int(d) for d in shape[1:]), int(shape[0]), int(shape[0]), int(shape[0]))


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
