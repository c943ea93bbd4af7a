"""Quantization: INT8 / FP16 artifacts for onnxruntime, TFLite and TensorRT, calibrated on real samples.

One request type, one report type, and a registry of backends (name -> module); adding a target is one module
with a `run(request, on_step) -> QuantizeReport` function and one line in `BACKENDS`. Backend modules are imported
only when used, so a missing optional extra fails that backend alone.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from edgeconv.artifacts.formats import FORMATS, is_format
from edgeconv.common.errors import EdgeconvError
from edgeconv.common.options import option
from edgeconv.quantize.targets import TARGETS, Int8Target, resolve_target

METHODS = ("minmax", "entropy", "percentile")  # calibration methods (onnxruntime's)
OP_POLICIES = ("auto", "weights", "all")  # which ops an INT8 file quantizes (quantize/ort.py, quantize/tflite.py)
GELU_FORMS = ("tanh", "exact")  # GELU between quantized layers in an onnxruntime INT8 graph (quantize/gelu.py)


@dataclass(frozen=True)
class Backend:
    name: str
    module: str
    suffixes: tuple[str, ...]
    precisions: tuple[str, ...]
    description: str
    needs: tuple[str, ...] = ()  # Python modules it imports at run time (an optional extra or NVIDIA's packages)
    install: str = ""  # how to get them

    def missing(self) -> list[str]:
        """The modules in `needs` that cannot be imported here (found without importing them)."""
        import importlib.util

        return [m for m in self.needs if importlib.util.find_spec(m) is None]


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "ort",
            "edgeconv.quantize.ort_writer",
            FORMATS["onnx"].suffixes,
            ("int8", "fp16"),
            "onnxruntime: static Q/DQ INT8 (inside If branches too), FP16",
        ),
        Backend(
            "tflite",
            "edgeconv.quantize.tflite",
            FORMATS["tflite"].suffixes,
            ("int8", "fp16", "fp32"),
            "TFLite via litert-torch + ai-edge-quantizer, run in ai_edge_litert",
            needs=("litert_torch", "ai_edge_litert"),
            install=".venv/bin/pip install -e '.[tflite]'",
        ),
        Backend(
            "tensorrt",
            "edgeconv.quantize.tensorrt",
            FORMATS["engine"].suffixes + FORMATS["onnx"].suffixes,
            ("int8", "fp16"),
            "TensorRT engine (explicit Q/DQ INT8, FP16); .onnx = the TensorRT-ready ONNX only",
            needs=("tensorrt",),
            install="TensorRT comes from NVIDIA's package index or JetPack, not PyPI",
        ),
    )
}


@dataclass
class QuantizeSettings:
    """How to quantize, declared once: `edgeconv quantize` options and the pipeline's `[quantize]` keys."""

    calib: Optional[str] = option(
        None,
        path=True,
        help="Folder of real calibration images (default for digits "
        "models: calib_data/digits; else the data's train split).",
    )
    calib_limit: Optional[int] = option(
        None, min=1, help="Use at most this many calibration samples: a seeded, class-stratified subset."
    )
    calib_seed: int = option(
        0,
        min=0,
        max=2**32 - 1,
        help="Seed of the subset --calib-limit draws: quantize again with another to see how much the result "
        "depends on which samples calibrate (refused when no subset is drawn).",
    )
    method: str = option("minmax", choices=METHODS, help="Calibration method.")
    per_channel: Optional[bool] = option(
        None, cli="--per-channel/--per-tensor", help="Weight scales per output channel (default) or one per tensor."
    )
    int8_target: Optional[str] = option(
        None,
        cli="--target",
        choices=tuple(TARGETS),
        help="INT8 target: portable (default for ort: the same answer on every "
        "CPU) | x86-vnni | arm64 (full 8-bit weights, exact only there) | "
        "tensorrt (default for --backend tensorrt).",
    )
    max_drop: Optional[float] = option(
        None, min=0.0, help="Top-1 budget in points: keep the most sensitive layers float until within it (ort, tflite)."
    )
    ops: str = option(
        "auto",
        choices=OP_POLICIES,
        help="INT8 op selection. ort: auto (weight layers, kept only where INT8 is not clearly slower, measured) | "
        "weights | all. tflite: auto (int8 wherever XNNPACK runs it, the rest float) | weights | all (full-integer).",
    )
    gelu: str = option(
        "tanh",
        choices=GELU_FORMS,
        help="GELU in an onnxruntime INT8 graph: tanh (the tanh form where its output is quantized again, checked "
        "to stay under half an 8-bit step per layer; faster) | exact (erf).",
    )
    report: bool = option(
        False,
        cli="--report/--no-report",
        help="onnxruntime INT8: also write the per-layer error against float (SQNR, cosine) on calibration samples: "
        "the worst layers as a table, OUT.sensitivity.json and OUT.sensitivity.png.",
    )


@dataclass
class QuantizeRequest:
    """Everything `edgeconv quantize` was asked to do (the library entry point takes the same)."""

    model: Path
    out: Path
    precision: str  # int8 | fp16 (| fp32 for TFLite)
    backend: str = "ort"
    calib: Path | None = None  # folder of real images
    data: str | None = None  # or a data spec (train split) for calibration
    calib_limit: int | None = None
    calib_seed: int = 0  # of the stratified subset calib_limit draws
    method: str = "minmax"
    per_channel: bool | None = None  # None: per-channel (what every INT8 target wants)
    # INT8 target (quantize/targets.py): a name, or None for the backend's default, becomes its Int8Target here,
    # once (`__post_init__`); every backend reads the object. None for precisions and backends without targets.
    target: Int8Target | str | None = None
    max_drop: float | None = None
    eval_data: str | None = None  # labelled data for accuracy (digits models: digits test split)
    ops: str = "auto"
    gelu: str = "tanh"  # onnxruntime INT8: re-quantized GELUs in the tanh form (quantize/gelu.py) | exact
    routing: str | None = None  # export routing when MODEL is a checkpoint
    report: bool = False  # onnxruntime INT8: per-layer sensitivity report beside the file (quantize/sensitivity.py)
    command: str = "edgeconv quantize"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision == "int8" and self.backend in BACKENDS and not isinstance(self.target, Int8Target):
            self.target = resolve_target(self.target, self.backend)


@dataclass
class QuantizeReport:
    out: Path
    record: dict  # what the artifact records (edgeconv.quantization metadata)
    rows: list[dict]  # result table
    details: list[dict] = field(default_factory=list)  # e.g. layers kept float, ops left float
    notes: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[dict]]] = field(default_factory=list)  # further (title, rows), e.g. --report


def request_from(settings: QuantizeSettings, **fields) -> "QuantizeRequest":
    """A request from the shared settings plus what the caller knows (model, out, precision, backend, ...)."""
    return QuantizeRequest(
        calib=Path(settings.calib) if settings.calib else None,
        calib_limit=settings.calib_limit,
        calib_seed=settings.calib_seed,
        method=settings.method,
        per_channel=settings.per_channel,
        target=settings.int8_target,
        max_drop=settings.max_drop,
        ops=settings.ops,
        gelu=settings.gelu,
        report=settings.report,
        **fields,
    )


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise EdgeconvError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def check_request(req: QuantizeRequest) -> Backend:
    """Argument checks that need no model: backend, precision, output suffix, option ranges."""
    b = get_backend(req.backend)
    if req.precision not in b.precisions:
        raise EdgeconvError(f"--backend {b.name} supports {', '.join(b.precisions)}, not {req.precision}")
    if req.out.suffix.lower() not in b.suffixes:
        raise EdgeconvError(f"-o {req.out}: the {b.name} backend writes {' or '.join(b.suffixes)} files")
    if req.out.exists() and req.out.is_dir():
        raise EdgeconvError(f"-o {req.out} is a directory")
    if req.max_drop is not None and req.max_drop < 0:
        raise EdgeconvError("--max-drop must be >= 0 (points of top-1)")
    if req.precision != "int8" and (req.max_drop is not None or req.calib or req.data):
        raise EdgeconvError(f"--max-drop/--calib/--data apply to --int8 only (this is {req.precision})")
    if req.target is not None and req.precision != "int8":
        raise EdgeconvError(f"--target applies to --int8 only (this is {req.precision})")
    if isinstance(req.target, Int8Target) and req.target.backend != b.name:
        raise EdgeconvError(f"--target {req.target.name} is written by --backend {req.target.backend}, not {b.name}")
    if req.report and (req.precision != "int8" or b.name != "ort"):
        raise EdgeconvError("--report is the onnxruntime INT8 per-layer report: use it with --int8 --backend ort")
    if Path(req.model).resolve() == Path(req.out).resolve():
        raise EdgeconvError("-o must differ from the input model")
    return b


def quantize(req: QuantizeRequest, on_step: Callable[[str], None] | None = None) -> QuantizeReport:
    """Run one quantization request on its backend."""
    b = check_request(req)
    if is_format(req.model, "onnx"):  # every backend: a broken or hostile ONNX is refused before any work
        from edgeconv.artifacts.card import load_onnx_proto

        load_onnx_proto(req.model)
    mod = importlib.import_module(b.module)
    return mod.run(req, on_step or (lambda s: None))
