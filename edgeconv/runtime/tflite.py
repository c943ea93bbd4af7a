"""The one TFLite interpreter runner in edgeconv (quantize's accuracy check, bench, profile, benchmarks).

`ai_edge_litert` (the `tflite` extra) is imported only when a runner is made. Inputs arrive as float32 NCHW; the
runner transposes to NHWC when the model's input is NHWC, and quantises / dequantises integer input and output
tensors with the tensor's own scale and zero point, so every caller scores a .tflite the same way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeconv.common.errors import EdgeconvError, MissingDependencyError

INSTALL_HINT = "pip install 'edgeconv[tflite]' (or just ai-edge-litert)"
INTEGER = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16))  # tensors quantised with scale / zero point
INT8 = (np.dtype(np.int8), np.dtype(np.uint8))


class BatchUnsupported(EdgeconvError):
    """The model's input tensor cannot take this batch size (a graph converted at a fixed batch)."""


def interpreter_class():
    """`ai_edge_litert.interpreter.Interpreter`; MissingDependencyError when the package is not installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        name = e.name or str(e)
        what = "ai_edge_litert" if name == "ai_edge_litert" else f"ai_edge_litert ({name})"
        raise MissingDependencyError(what, INSTALL_HINT) from None
    return Interpreter


def litert_version() -> str:
    import ai_edge_litert

    return f"ai_edge_litert {getattr(ai_edge_litert, '__version__', '?')}"


def _quantised(d: dict) -> bool:
    return np.dtype(d["dtype"]) in INT8 and d.get("quantization", (0.0, 0))[0] != 0.0


def tflite_precision(details: list[dict]) -> str:
    """int8 when integer tensors carry quantisation parameters, fp16 when half-precision tensors exist, else fp32."""
    if any(_quantised(d) for d in details):
        return "int8"
    if any(np.dtype(d["dtype"]) == np.float16 for d in details):
        return "fp16"
    return "fp32"


@dataclass
class Delegation:
    """How the interpreter split a graph between the XNNPACK delegate and TFLite's built-in kernels."""

    partitions: int  # delegate nodes: each boundary hands tensors between XNNPACK and a built-in kernel
    delegated: Counter = field(default_factory=Counter)  # op type -> operators XNNPACK runs
    fallback: list[tuple[str, str]] = field(default_factory=list)  # (op type, output tensor) run by built-in kernels

    def fallback_counts(self) -> dict[str, int]:
        return dict(Counter(op for op, _ in self.fallback))

    def to_dict(self) -> dict:
        return {
            "partitions": self.partitions,
            "delegated_ops": sum(self.delegated.values()),
            "fallback_ops": self.fallback_counts(),
        }


def operators(interp) -> list[tuple[str, str]]:
    """(op type, first output tensor name) of every operator of the graph, in order (delegate nodes left out)."""
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # noqa: SLF001 - the only view the interpreter gives of its graph
    return [_key(o, names) for o in ops if o["op_name"] != "DELEGATE"]


def _key(op: dict, names: dict) -> tuple[str, str]:
    return op["op_name"], names.get(int(op["outputs"][0]), "") if len(op["outputs"]) else ""


def delegation(interp) -> Delegation:
    """Which operators of an allocated interpreter run inside XNNPACK and which fell back to built-in kernels.

    The interpreter lists the graph's operators followed by one DELEGATE node per partition, whose inputs and
    outputs are the partition's boundary tensors; a partition's operators are found by walking back from its
    outputs to its inputs. Whatever no partition covers runs in a built-in kernel.
    """
    ops = interp._get_ops_details()  # noqa: SLF001 - the only view the interpreter gives of its graph
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    graph = [o for o in ops if o["op_name"] != "DELEGATE"]
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    producer = {int(t): o["index"] for o in graph for t in o["outputs"]}
    by_index = {o["index"]: o for o in graph}
    covered: set[int] = set()
    for d in delegates:
        stop, stack = {int(t) for t in d["inputs"]}, [int(t) for t in d["outputs"]]
        while stack:
            t = stack.pop()
            if t in stop or t not in producer or producer[t] in covered:
                continue
            covered.add(producer[t])
            stack.extend(int(i) for i in by_index[producer[t]]["inputs"] if i >= 0)
    return Delegation(
        len(delegates),
        Counter(o["op_name"] for o in graph if o["index"] in covered),
        [_key(o, names) for o in graph if o["index"] not in covered],
    )


class TFLiteRunner:
    """One ai_edge_litert interpreter on a .tflite: logits for float32 NCHW batches. `delegate=False` runs every
    operator in TFLite's built-in kernels (no XNNPACK), for comparison."""

    def __init__(self, path: str | Path, threads: int = 1, delegate: bool = True):
        Interpreter = interpreter_class()
        try:
            kw = {}
            if not delegate:
                from ai_edge_litert.interpreter import OpResolverType

                kw["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            self.interp = Interpreter(model_path=str(path), num_threads=threads, **kw)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:  # e.g. an op the interpreter has no kernel for
            first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise EdgeconvError(f"{path}: the TFLite interpreter cannot run this model: {first[:200]}") from None
        self.path = Path(path)
        self.threads = threads
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.precision = tflite_precision(self.interp.get_tensor_details())
        self.converted_batch = int(self.inp["shape"][0])
        self.batch = self.converted_batch

    def delegation(self) -> Delegation:
        return delegation(self.interp)

    def input_array(self, x: np.ndarray) -> np.ndarray:
        """x (float32 NCHW) as this model's input tensor takes it: its layout, dtype and quantisation."""
        return self._to_input(x)

    def invoke_prepared(self, x: np.ndarray):
        """Set one batch as the input once and return a call that only invokes (what timings should measure)."""
        self._resize(int(x.shape[0]))
        self.interp.set_tensor(self.inp["index"], self._to_input(x))
        return self.interp.invoke

    @property
    def input_dtype(self) -> str:
        return np.dtype(self.inp["dtype"]).name

    def _layout(self, x: np.ndarray) -> np.ndarray:
        want = tuple(int(d) for d in self.inp["shape"][1:])
        if tuple(x.shape[1:]) == want:
            return x
        nhwc = x.transpose(0, 2, 3, 1)
        if tuple(nhwc.shape[1:]) == want:
            return np.ascontiguousarray(nhwc)
        raise EdgeconvError(f"input {list(x.shape)} does not fit the TFLite model's input {list(self.inp['shape'])}")

    def _resize(self, batch: int) -> None:
        if batch == self.batch:
            return
        sig = self.inp.get("shape_signature")
        if sig is None or len(sig) == 0 or int(sig[0]) != -1:
            # a graph converted at a fixed batch may hard-code it in reshapes: resizing could fail or, worse,
            # run with wrong shapes, so other batch sizes are not offered
            raise BatchUnsupported(f"the TFLite model was converted with a fixed batch of {self.batch}")
        shape = [batch, *[int(d) for d in self.inp["shape"][1:]]]
        try:
            self.interp.resize_tensor_input(self.inp["index"], shape, strict=False)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BatchUnsupported(
                f"the TFLite model has a fixed batch of {self.batch} "
                f"and cannot be resized to {batch} ({str(e).splitlines()[0][:120]})"
            ) from None
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.batch = batch

    def _to_input(self, x: np.ndarray) -> np.ndarray:
        x = self._layout(np.asarray(x, dtype=np.float32))
        dt = np.dtype(self.inp["dtype"])
        if dt in INTEGER:
            scale, zp = self.inp["quantization"]
            info = np.iinfo(dt)
            return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(dt)
        return x.astype(dt, copy=False)

    def _from_output(self, y: np.ndarray) -> np.ndarray:
        if np.dtype(self.out["dtype"]) in INTEGER:
            scale, zp = self.out["quantization"]
            return (y.astype(np.float32) - zp) * scale
        return y.astype(np.float32, copy=False)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for x [B, C, H, W] in one invoke (the input tensor resized to B when the graph allows it)."""
        self._resize(int(x.shape[0]))
        self.interp.set_tensor(self.inp["index"], self._to_input(x))
        self.interp.invoke()
        return self._from_output(self.interp.get_tensor(self.out["index"]))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for any number of samples x [N, C, H, W], run at the batch the graph was converted with."""
        step = self.converted_batch
        return np.concatenate([self.run(x[i : i + step]) for i in range(0, len(x), step)])
