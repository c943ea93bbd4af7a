"""TFLite FP32 / FP16 / full-integer INT8, converted from the PyTorch checkpoint and run in ai_edge_litert.

Route (chosen by trying them, see platform-facts.md): litert-torch converts the PyTorch model to an FP32 .tflite
directly (no TensorFlow, no ONNX hop); ai-edge-quantizer then writes FP16 weights (float casting) or full-integer
INT8 (static a8w8: int8 weights per channel, int8 activations calibrated on the calibration samples, int8 input and
output tensors). PT2E quantization inside litert-torch was tried too: it was ~4x slower to convert here and its
INT8 softmax output scale is rejected by the interpreter (it must be 1/256).

Routed models: litert-torch cannot lower `torch.cond` (TFLite has no route to an ONNX-like `If` from it), so a
hard-routed model is converted with every router's hard decision written as a select: both branches are computed
and each sample keeps the branch its router picks (`torch.where`, TFLite SELECT_V2). The answers are those of
hard routing - the FP32 .tflite is checked against PyTorch's hard routing on real samples, per routing pattern
(which branch each block took) - but no compute is saved. The artifact records this as `routing: select`.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from edgeconv.artifacts import atomic_path, file_sha256, load_model
from edgeconv.errors import EdgeconvError, MissingDependencyError
from edgeconv.card import model_fields, write_sidecar
from edgeconv.formats import is_format
from edgeconv.quantize import QuantizeReport, QuantizeRequest
from edgeconv.quantize.common import (
    accuracy_record,
    accuracy_runtime,
    base_record,
    inputs_for,
    peek_meta,
    quiet,
    size_record,
)
from edgeconv.tfliterun import TFLiteRunner, interpreter_class, litert_version

INSTALL_HINT = "install the tflite extra: pip install litert-torch ai-edge-litert (extra 'tflite' of edgeconv)"
FP32_TOLERANCE = 1e-3  # max abs logit difference between the FP32 .tflite and PyTorch per routing pattern


def require_tflite() -> None:
    """Fail with one line when the tflite extra is missing."""
    missing = []
    for mod in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise MissingDependencyError(f"TFLite conversion ({', '.join(missing)})", INSTALL_HINT)


# ----------------------------------------------------------------------------------------------- routing fallback
@contextlib.contextmanager
def select_routing(model: torch.nn.Module) -> Iterator[int]:
    """The model in routing mode `select` (gated answers, no `torch.cond`) for converters without control flow;
    every router's mode is restored afterwards."""
    from edgeconv.models import routers, set_routing

    saved = [(b, b.mode) for _, b in routers(model)]
    n = set_routing(model, "select")
    try:
        yield n
    finally:
        for b, mode in saved:
            b.set_routing_mode(mode)


def routing_patterns(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[bool, ...]]:
    """Per sample, which branch every router chose under eager hard routing (True = attention)."""
    from edgeconv.models import routers

    blocks = [m for _, m in routers(model)]
    with torch.no_grad():
        model(x)
    cols = [b.last_route.tolist() for b in blocks]
    return [tuple(c[i] for c in cols) for i in range(len(x))]


# ----------------------------------------------------------------------------------------------- conversion
def convert_fp32(model: torch.nn.Module, pre: dict, out: Path) -> None:
    """litert-torch conversion at batch 1 (FP32)."""
    import litert_torch

    x = torch.zeros(1, int(pre["channels"]), int(pre["size"]), int(pre["size"]))
    try:
        with quiet(stderr=True):
            edge = litert_torch.convert(model.eval(), (x,))
    except Exception as e:  # noqa: BLE001 - converter failures come in many types; one readable line
        raise EdgeconvError(f"litert-torch could not convert the model: {str(e).strip().splitlines()[0][:200]}")
    edge.export(str(out))


def quantize_tflite(fp32: Path, out: Path, precision: str, calib_x: np.ndarray | None = None) -> None:
    """FP16 weights (float casting) or full-integer INT8 (static a8w8 calibrated on `calib_x`) with
    ai-edge-quantizer."""
    from ai_edge_quantizer import quantizer, recipe

    q = quantizer.Quantizer(str(fp32))
    with quiet(stderr=True):
        if precision == "fp16":
            q.add_weight_only_config(regex=".*", operation_name="*", num_bits=16, algorithm_key="float_casting")
            res = q.quantize(enable_progress_report=False)
        elif precision == "int8":
            Interpreter = interpreter_class()
            sigs = Interpreter(model_path=str(fp32)).get_signature_list()
            name = next(iter(sigs))
            inp = sigs[name]["inputs"][0]
            q.load_quantization_recipe(recipe.static_wi8_ai8())
            cal = q.calibrate(
                {name: [{inp: calib_x[i : i + 1].astype(np.float32)} for i in range(len(calib_x))]}, num_threads=1
            )
            res = q.quantize(cal, enable_progress_report=False)
        else:
            raise EdgeconvError(f"unknown TFLite precision {precision!r}")
    res.export_model(str(out), overwrite=True)


def verify_routing(model: torch.nn.Module, runner: TFLiteRunner, x: np.ndarray) -> list[dict]:
    """FP32 .tflite vs PyTorch hard routing, grouped by routing pattern; raises when any group differs."""
    from edgeconv.models import set_routing

    set_routing(model, "gated")
    xt = torch.from_numpy(x)
    patterns = routing_patterns(model, xt)
    with torch.no_grad():
        ref = model(xt).numpy()
    got = runner(x)
    rows = []
    for pat in sorted(set(patterns)):
        idx = [i for i, p in enumerate(patterns) if p == pat]
        err = float(np.abs(got[idx] - ref[idx]).max())
        rows.append({"routing pattern": "".join("A" if b else "C" for b in pat), "samples": len(idx), "max abs diff": err})
        if not np.isfinite(err) or err > FP32_TOLERANCE:
            raise EdgeconvError(
                f"TFLite select-routing graph differs from PyTorch hard routing for pattern "
                f"{rows[-1]['routing pattern']} (max abs {err:.3g}); not writing a wrong model"
            )
    return rows


def run(req: QuantizeRequest, step: Callable[[str], None]) -> QuantizeReport:
    from edgeconv.models import routers

    require_tflite()
    meta = peek_meta(req.model)
    ckpt = Path(req.model)
    if is_format(ckpt, "onnx"):
        src = meta.get("source_path")
        if not src or not Path(src).is_file():
            raise EdgeconvError(
                f"{req.model}: TFLite conversion starts from the PyTorch checkpoint and this ONNX "
                "names none that exists here; pass the checkpoint"
            )
        ckpt = Path(src)
        recorded = meta.get("source_sha256")
        if not recorded or file_sha256(ckpt) != recorded:
            raise EdgeconvError(
                f"{req.model}: the checkpoint it was exported from ({ckpt}) "
                + ("is not recorded with a sha256" if not recorded else "has changed since the export (sha256 differs)")
                + "; TFLite converts from PyTorch, so pass the checkpoint itself"
            )
    pre = meta["preprocessing"]
    calib, ev = inputs_for(req, pre, meta.get("classes"))
    if req.max_drop is not None:
        raise EdgeconvError(
            "--max-drop is implemented for --backend ort (mixed precision by layer); TFLite INT8 is full-integer"
        )
    model, ck = load_model(ckpt)
    rec = base_record(req, meta, calib, ev)
    if ckpt != Path(req.model):
        rec["source"]["converted_from"] = {"path": str(ckpt.resolve()), "sha256": file_sha256(ckpt)}
    rec["method"] = "minmax (ai-edge-quantizer static a8w8)" if req.precision == "int8" else None
    rec["per_channel"] = True if req.precision == "int8" else None
    notes: list[str] = []
    if req.precision == "int8" and (req.method != "minmax" or req.per_channel is False):
        notes.append(
            "TFLite INT8 uses ai-edge-quantizer's static a8w8 recipe: min/max activations, per-channel "
            "symmetric weights (--method/--per-channel apply to onnxruntime)"
        )
    rows_routing: list[dict] = []
    has_routers = bool(routers(model))
    check_x = ev.x if ev is not None else calib.samples.x if calib is not None else None
    with tempfile.TemporaryDirectory(prefix="edgeconv-tflite-") as tmp:
        fp32 = Path(tmp) / "model.fp32.tflite"
        step("converting with litert-torch (FP32)")
        if has_routers:
            with select_routing(model) as n:
                convert_fp32(model, pre, fp32)
            rec["routing"] = "select"
            notes.append(
                f"{n} router(s): torch.cond cannot be lowered by litert-torch; hard routing is converted "
                "as a per-sample select (both branches computed, same answers, no compute saved)"
            )
        else:
            convert_fp32(model, pre, fp32)
            rec["routing"] = "none"
        runner32 = TFLiteRunner(fp32)
        if has_routers and check_x is not None:
            step("checking the select graph against PyTorch hard routing, per routing pattern")
            rows_routing = verify_routing(model, runner32, check_x[:512].numpy())
            rec["routing_check"] = rows_routing
        float_bytes = fp32.stat().st_size
        if req.precision == "fp32":
            result = fp32
        else:
            step(f"quantizing with ai-edge-quantizer ({req.precision.upper()})")
            result = Path(tmp) / f"model.{req.precision}.tflite"
            quantize_tflite(fp32, result, req.precision, calib.samples.x.numpy() if calib is not None else None)
        runner = TFLiteRunner(result)
        if ev is not None:
            step("measuring top-1 in the TFLite interpreter")
            xe, ye = ev.x.numpy(), ev.y.numpy()
            f_top1 = float((runner32(xe).argmax(1) == ye).mean() * 100)
            q_top1 = f_top1 if result == fp32 else float((runner(xe).argmax(1) == ye).mean() * 100)
            accuracy_record(rec, f_top1, q_top1)
        rec["interpreter"] = litert_version()
        accuracy_runtime(rec, f"{rec['interpreter']} interpreter (default delegates)")
        rec["io"] = f"input {runner.input_dtype}, batch 1"
        size = result.stat().st_size
        size_record(rec, float_bytes, size)
        rec["notes"] = notes
        step("writing")
        # The sidecar goes first: a .tflite without its record would look like an unverified artifact.
        rec.update(model_fields(meta))
        side = write_sidecar(req.out, rec)
        try:
            with atomic_path(req.out) as dst:
                dst.write_bytes(result.read_bytes())
        except BaseException:
            side.unlink(missing_ok=True)
            raise
    acc = rec.get("accuracy") or {}
    row = {
        "artifact": str(req.out),
        "backend": "tflite",
        "precision": req.precision.upper(),
        "routing": rec["routing"],
        "input": runner.input_dtype,
        "size KiB": round(size / 1024, 1),
        "size vs FP32": f"{size / float_bytes:.2f}x",
        "float top-1 %": acc.get("float_top1"),
        "quantized top-1 %": acc.get("quantized_top1"),
        "drop": acc.get("drop"),
    }
    details = [{**r, "max abs diff": f"{r['max abs diff']:.2e}"} for r in rows_routing]
    return QuantizeReport(req.out, rec, [row], details, notes + [f"record: {side}"])
