"""TensorRT (10/11 Python API), imported only when a TensorRT row runs: serialized engines (.engine/.plan), or an
engine built in memory from an ONNX file.

Building follows what TensorRT 10+ supports: a float ONNX builds with FP16 kernels allowed; a Q/DQ ONNX builds as a
strongly typed network (explicit INT8, no calibrator). A dynamic batch gets an optimisation profile covering the
batch asked for. Device buffers are torch CUDA tensors when torch has CUDA, else cuda-python allocations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeconv.errors import EdgeconvError
from edgeconv.runtime.backends.base import BackendUnavailable, RunOptions

MAX_BATCH = 64  # the optimisation profile's upper bound for ONNX builds with a dynamic batch


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable(f"TensorRT's Python package is not importable ({e}); it ships with JetPack on "
                                 "Jetson and from NVIDIA's package index on x86 (the PyPI 'tensorrt' is a stub)")
    return trt


def _cuda_buffers():
    """'torch' or 'cuda-python': which library provides device memory and copies here."""
    try:
        import torch

        if torch.cuda.is_available():
            return "torch"
    except ImportError:
        pass
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise BackendUnavailable("no CUDA device memory: torch has no CUDA and cuda-python is not installed")
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        raise BackendUnavailable(f"no CUDA device ({cudart.cudaGetErrorName(err)[1].decode() if int(err) else '0 GPUs'})")
    return "cuda-python"


def build_engine(trt, onnx_path: Path, logger) -> tuple[bytes, str]:
    """Serialize an engine from ONNX; returns (engine bytes, precision)."""
    from edgeconv.runtime.backends.ort_backend import load_onnx, onnx_precision

    precision = onnx_precision(load_onnx(onnx_path), onnx_path)
    builder = trt.Builder(logger)
    flags = 0
    if precision == "int8" and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgeconvError(f"{onnx_path}: TensorRT's ONNX parser failed ({errs[:300]})")
    config = builder.create_builder_config()
    if precision != "int8":
        config.set_flag(trt.BuilderFlag.FP16)
        precision = "fp16"
    profile = builder.create_optimization_profile()
    needs_profile = False
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = list(t.shape)
        if shape and shape[0] == -1:
            needs_profile = True
            rest = shape[1:]
            profile.set_shape(t.name, [1, *rest], [8, *rest], [MAX_BATCH, *rest])
    if needs_profile:
        config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise EdgeconvError(f"{onnx_path}: TensorRT could not build an engine (see the TensorRT log above)")
    return bytes(blob), precision


class TensorrtRunner:
    def __init__(self, path: Path, options: RunOptions):
        if options.device == "cpu":
            raise BackendUnavailable("TensorRT runs on NVIDIA GPUs only (asked for device cpu)")
        trt = _import_tensorrt()
        self.buffers = _cuda_buffers()
        self.trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        if path.suffix.lower() == ".onnx":
            blob, self.precision = build_engine(trt, path, logger)
        else:
            blob, self.precision = path.read_bytes(), "engine"
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
        if self.engine is None:
            raise EdgeconvError(f"{path}: TensorRT could not deserialize the engine (built for another TensorRT "
                                "version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1:
            raise EdgeconvError(f"{path}: expected one input tensor, the engine has {len(self.inputs)}")
        self._bound_batch = None

    def _bind(self, shape: tuple[int, ...]) -> None:
        """(Re)allocate device buffers for an input shape and set their addresses on the context."""
        self.context.set_input_shape(self.inputs[0], shape)
        self._dev = {}
        for name in self.inputs + self.outputs:
            shp = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            if self.buffers == "torch":
                import torch

                buf = torch.empty(shp, dtype=getattr(torch, dtype.name), device="cuda")
                ptr = buf.data_ptr()
            else:
                from cuda.bindings import runtime as cudart

                err, ptr = cudart.cudaMalloc(int(np.prod(shp)) * dtype.itemsize)
                if int(err):
                    raise EdgeconvError(f"cudaMalloc failed ({cudart.cudaGetErrorName(err)[1].decode()})")
                buf = ptr
            self._dev[name] = (buf, ptr, shp, dtype)
            self.context.set_tensor_address(name, int(ptr))
        self._bound_batch = shape

    def run(self, x: np.ndarray) -> np.ndarray:
        if self._bound_batch != tuple(x.shape):
            self._bind(tuple(x.shape))
        name_in, name_out = self.inputs[0], self.outputs[0]
        buf_in, ptr_in, _, dt_in = self._dev[name_in]
        buf_out, ptr_out, shp_out, dt_out = self._dev[name_out]
        x = np.ascontiguousarray(x.astype(dt_in))
        if self.buffers == "torch":
            import torch

            buf_in.copy_(torch.from_numpy(x))
            stream = torch.cuda.current_stream().cuda_stream
            self.context.execute_async_v3(stream)
            torch.cuda.current_stream().synchronize()
            return buf_out.float().cpu().numpy()
        from cuda.bindings import runtime as cudart

        cudart.cudaMemcpy(ptr_in, x.ctypes.data, x.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
        self.context.execute_async_v3(0)
        cudart.cudaDeviceSynchronize()
        y = np.empty(shp_out, dtype=dt_out)
        cudart.cudaMemcpy(y.ctypes.data, ptr_out, y.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        return y.astype(np.float32)

    def describe(self) -> dict:
        return {"backend": "tensorrt", "runtime": f"TensorRT {self.trt.__version__}", "precision": self.precision,
                "buffers": self.buffers, "inputs": ", ".join(self.inputs)}


class TensorrtBackend:
    name = "tensorrt"
    accepts = ("tensorrt", "ort")  # engines, or ONNX built into an engine in memory

    def load(self, path: Path, options: RunOptions) -> TensorrtRunner:
        return TensorrtRunner(path, options)


BACKEND = TensorrtBackend()
