"""onnxruntime: ONNX models on the CPU, or on a GPU through the CUDA or TensorRT execution providers.

For routed models the runner also reports which branch each input took: the comparison that feeds each top-level
`If` (the router's `p_attn > threshold`, one bool per sample) is added as an extra graph output, so the decision
is read from the graph that runs rather than re-computed in PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeconv.artifacts.card import load_onnx_proto, onnx_precision
from edgeconv.artifacts.graphwalk import initializers
from edgeconv.common.errors import EdgeconvError
from edgeconv.runtime.backends.base import BackendUnavailable, RunOptions
from edgeconv.runtime.onnxrt import session, session_options

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_COMPARE_OPS = {"Greater", "Less", "GreaterOrEqual", "LessOrEqual"}
_PASS_THROUGH = {
    "ReduceMin",
    "ReduceMax",
    "ReduceProd",
    "Cast",
    "Not",
    "Squeeze",
    "Reshape",
    "Identity",
    "Unsqueeze",
    "Flatten",
}
_BATCH_REDUCTIONS = {"ReduceMin", "ReduceMax"}


def onnx_params(model) -> int:
    """Weight elements stored in the file (initializers, branches included)."""
    total = 0
    for t in initializers(model.graph):
        n = 1
        for d in t.dims:
            n *= d
        total += n
    return total


def _route_probes(model) -> list[tuple[str, str]]:
    """(router name, per-sample "took attention" tensor) for each top-level `If` whose condition is a comparison
    of the router probability with the threshold.

    The condition is one value per batch (e.g. `max(p) <= t`: the whole batch goes to conv). The per-sample decision
    is rebuilt next to it as `p > t` (the routed blocks' definition: attention when p_attn > threshold): a Greater
    node on the comparison's own operands, with any reduction over the batch stripped off, is added to `model`."""
    import onnx

    producer = {o: n for n in model.graph.node for o in n.output}
    probes = []
    for i, node in enumerate(n for n in model.graph.node if n.op_type == "If"):
        name, compare = node.input[0], None
        for _ in range(6):
            p = producer.get(name)
            if p is None:
                break
            if p.op_type in _COMPARE_OPS:
                compare = p
                break
            if p.op_type not in _PASS_THROUGH:
                break
            name = p.input[0]
        if compare is None:
            continue
        per_sample = compare.input[0]
        while producer.get(per_sample) is not None and producer[per_sample].op_type in _BATCH_REDUCTIONS:
            per_sample = producer[per_sample].input[0]
        router = node.name or f"if_{i}"
        out = f"edgeconv_probe_{i}_attn"
        model.graph.node.append(
            onnx.helper.make_node("Greater", [per_sample, compare.input[1]], [out], name=f"edgeconv_probe_{i}")
        )
        probes.append((router, out))
    return probes


class OrtRunner:
    def __init__(self, path: Path, options: RunOptions):
        import onnx
        import onnxruntime as ort

        variant = options.variant or "cpu"
        provider = PROVIDERS.get(variant)
        if provider is None:
            raise EdgeconvError(f"unknown onnxruntime provider {variant!r} (choose {', '.join(PROVIDERS)})")
        available = ort.get_available_providers()
        if provider not in available:
            hint = (
                "install onnxruntime-gpu on a machine with an NVIDIA GPU"
                if variant == "cuda"
                else "needs onnxruntime-gpu built with TensorRT and the TensorRT libraries"
            )
            raise BackendUnavailable(
                f"onnxruntime {ort.__version__} here has no {provider} (available: {', '.join(available)}); {hint}"
            )
        model = load_onnx_proto(path)
        self.precision = onnx_precision(model)
        self.params = onnx_params(model)
        self.probes = _route_probes(model)
        self.out_name = model.graph.output[0].name
        if self.probes:
            for _, tensor in self.probes:
                model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.BOOL, None))
        # FP16 graphs crashed session creation at ORT_ENABLE_ALL on CPU; EXTENDED loads them (platform notes)
        so = session_options("extended" if self.precision == "fp16" else "all", options.threads, sequential=True)
        prov_opts: dict = {}
        if variant == "tensorrt":
            # TensorRT is given FP16 kernels as an option for float graphs; a Q/DQ graph runs as explicit INT8
            prov_opts = {"trt_fp16_enable": True, "trt_int8_enable": self.precision == "int8"}
            if self.precision == "fp32":
                self.precision = "fp16"
        providers = [(provider, prov_opts)] if prov_opts else [provider]
        try:
            self.session = session(model, providers=providers, options=so)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/RuntimeException types
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise EdgeconvError(f"{path}: onnxruntime could not load the model ({first[:200]})")
        used = self.session.get_providers()[0]
        if used != provider:
            raise BackendUnavailable(f"onnxruntime fell back to {used} instead of {provider}")
        self.input = self.session.get_inputs()[0]
        self.provider = provider
        self.threads = options.threads
        self.last_routes: dict[str, np.ndarray] = {}  # If -> per-sample comparison of the last run (True = attn)

    def run(self, x: np.ndarray) -> np.ndarray:
        outs = self.session.run(None, {self.input.name: x})
        self.last_routes = {router: np.asarray(d).reshape(-1) for (router, _), d in zip(self.probes, outs[1:])}
        return outs[0]

    def describe(self) -> dict:
        import onnxruntime as ort

        return {
            "backend": "ort",
            "runtime": f"onnxruntime {ort.__version__}",
            "provider": self.provider,
            "precision": self.precision,
            "threads": self.threads,
            "input": f"{self.input.name} {self.input.shape}",
            "params": self.params,
            "routers observed": len(self.probes),
        }


class OrtBackend:
    name = "ort"
    accepts = ("ort",)

    def load(self, path: Path, options: RunOptions) -> OrtRunner:
        return OrtRunner(path, options)


BACKEND = OrtBackend()
