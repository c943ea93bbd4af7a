"""`edgeconv quantize --backend ort`: a quantized `.onnx` with its quantization record in metadata_props."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import onnx

from edgeconv.artifacts import atomic_path
from edgeconv.artifacts.card import load_onnx_proto, set_quantization
from edgeconv.artifacts.formats import is_format
from edgeconv.common.errors import EdgeconvError
from edgeconv.quantize import QuantizeReport, QuantizeRequest
from edgeconv.quantize.gelu import summary as gelu_summary
from edgeconv.quantize.ort import Int8Options, convert_fp16, ort_logits, ort_session, quantize_int8, top1
from edgeconv.quantize.record import accuracy_record, accuracy_runtime, base_record, inputs_for, peek_meta, size_record
from edgeconv.quantize.saturation import check_model
from edgeconv.quantize.source import resolve_onnx
from edgeconv.runtime.hostcpu import this_int8_class

WHY_FLOAT = {
    "MatMul (activation x activation)": "q.k and attn.v: both operands change per input, INT8 needs two activation "
    "quantizations per call; slower and lossy on CPUs without fast INT8",
    "Softmax": "exponent over a wide range: INT8 loses the small probabilities; no fast INT8 kernel on CPU",
    "LayerNormalization": "statistics over tokens: kept float (no INT8 kernel in onnxruntime CPU)",
    "Gelu": "nonlinearity between quantized layers: no INT8 kernel in onnxruntime CPU",
}


def latency_note(lat: dict) -> str:
    """One line on what `--ops auto` measured: both medians, their ratio and its interval."""
    ci = lat.get("ratio_ci")
    ratio = lat.get("ratio", lat["int8_ms"] / lat["float_ms"])
    interval = f" [95% CI {ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
    verdict = "SLOWER" if ci and ci[0] > 1.0 else "not slower"
    return (
        f"batch {lat['batch']} on this CPU: float {lat['float_ms']:.2f} ms, INT8 {lat['int8_ms']:.2f} ms "
        f"({verdict}, ratio {ratio:.2f}{interval})"
    )


def write_onnx(model: onnx.ModelProto, out: Path, record: dict) -> None:
    """Record the quantization metadata and write the model atomically (one file, no external data)."""
    set_quantization(model, record)
    with atomic_path(out) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
        ort_session(str(tmp), level="extended")  # the artifact must load in the runtime it is for


def run(req: QuantizeRequest, step: Callable[[str], None]) -> QuantizeReport:
    from edgeconv.export.onnx import count_if_nodes

    meta = peek_meta(req.model)
    pre = meta["preprocessing"]
    calib, ev = inputs_for(req, pre, meta.get("classes"))
    target = req.target if req.precision == "int8" else None  # an Int8Target, resolved with the request
    options = Int8Options.for_target(target, req.method, req.per_channel, req.ops, req.gelu) if target is not None else None
    with tempfile.TemporaryDirectory(prefix="edgeconv-quantize-") as tmp:
        if not is_format(req.model, "onnx"):
            step("exporting the checkpoint to ONNX")
        src = resolve_onnx(req.model, Path(tmp), routing=req.routing)
        float_model = load_onnx_proto(src.onnx_path)
        float_bytes = src.onnx_path.stat().st_size
    rec = base_record(req, src.meta, calib, ev)
    rec["routing"] = src.routing
    ifs_before = count_if_nodes(float_model)
    details: list[dict] = []
    notes = list(src.notes)
    ex, ey = (ev.x.numpy(), ev.y.numpy()) if ev is not None else (None, None)
    if req.precision == "int8":
        res = quantize_int8(float_model, calib, options, eval_x=ex, eval_y=ey, max_drop=req.max_drop, on_step=step)
        model = res.model
        accuracy_record(rec, res.float_top1, res.int8_top1)
        accuracy_runtime(rec, "onnxruntime default session (ORT_ENABLE_ALL)")
        sat = check_model(model)
        if target.reduce_range and not sat.safe:
            raise EdgeconvError(f"internal error: a {target.name} INT8 graph can saturate: {sat.summary()}")
        rec.update(
            {
                "target": target.name,
                "per_channel": options.per_channel,
                "weights": options.record()["weights"],
                "saturation": sat.record(),
                "ops": options.ops,
                "activations": options.record()["activations"],
                "quantized_layers": len(res.quantized),
                "kept_float_for_accuracy": res.kept_float,
                "ops_left_float": res.float_ops,
                "kinds_left_float_for_latency": res.kinds_left_float,
                "latency_check_ms": res.latency,
                "branches_without_calibration_data": res.unreached,
                "gelu": res.gelu or {"form": "exact (erf)", "rule": f"--gelu {options.gelu}"},
            }
        )
        if res.plain_int8_top1 is not None and res.kept_float:
            rec["accuracy"]["plain_int8_top1"] = round(res.plain_int8_top1, 4)
            rec["accuracy"]["max_drop"] = req.max_drop
        for op, n in sorted(res.float_ops.items()):
            details.append({"kept float": op, "count": n, "why": WHY_FLOAT.get(op, "not a weight layer")})
        for kind, why in res.kinds_left_float.items():
            details.append({"kept float": f"{kind} (weight layers)", "count": "", "why": why})
        for name in res.kept_float:
            details.append({"kept float": name, "count": 1, "why": f"most sensitive layer (--max-drop {req.max_drop})"})
        for path in res.unreached:
            notes.append(f"{path}: no calibration sample took this branch; it stays float")
        if res.gelu and res.gelu["tanh"]:
            notes.append(f"GELU: {gelu_summary(res.gelu)}; --gelu exact keeps erf")
        if res.latency:
            notes.append(latency_note(res.latency))
        if target.per_channel and req.per_channel is False:
            notes.append(f"--target {target.name} uses per-channel weight scales (they win back the 7th bit)")
        notes.append(f"target {target.name}: {sat.summary()}")
        warning = target.mismatch(this_int8_class())
        if warning:
            notes.append(warning)
    else:
        step("converting to FP16")
        model = convert_fp16(float_model)
        if ev is not None:
            f_top1 = top1(ort_logits(ort_session(float_model), ex), ey)
            h_top1 = top1(ort_logits(ort_session(model, level="extended"), ex), ey)
            accuracy_record(rec, f_top1, h_top1)
            accuracy_runtime(rec, "onnxruntime session at ORT_ENABLE_EXTENDED")
        notes.append(
            "FP16 runs at ORT_ENABLE_EXTENDED (ORT_ENABLE_ALL crashed on FP16 graphs on this CPU); "
            "on CPU it is usually slower than FP32 - it is meant for GPUs"
        )
    ifs_after = count_if_nodes(model)
    if ifs_after != ifs_before:
        raise EdgeconvError(f"internal error: quantization changed the If count ({ifs_before} -> {ifs_after})")
    rec["if_nodes"] = ifs_after
    tables = []
    if req.report:
        step("per-layer report: float and INT8 activations on calibration samples")
        tables.append(sensitivity_report(float_model, model, calib, req.out, rec, notes))
    step("writing")
    size = len(model.SerializeToString())
    for _ in range(5):  # the record holds the file size, which depends on the record: iterate to the fixed point
        size_record(rec, float_bytes, size)
        write_onnx(model, req.out, rec)
        if req.out.stat().st_size == size:
            break
        size = req.out.stat().st_size
    acc = rec.get("accuracy") or {}
    row = {
        "artifact": str(req.out),
        "backend": "onnxruntime",
        "precision": req.precision.upper(),
        "If nodes": ifs_after,
        "size KiB": round(size / 1024, 1),
        "size vs float": f"{size / float_bytes:.2f}x",
        "float top-1 %": acc.get("float_top1"),
        "quantized top-1 %": acc.get("quantized_top1"),
        "drop": acc.get("drop"),
    }
    return QuantizeReport(req.out, rec, [row], details, notes, tables)


def report_paths(out: Path) -> tuple[Path, Path]:
    """Where `--report` writes beside OUT: OUT-stem.sensitivity.json and .png."""
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.sensitivity.json"), out.with_name(f"{stem}.sensitivity.png")


def sensitivity_report(float_model, model, calib, out: Path, rec: dict, notes: list[str]) -> tuple[str, list[dict]]:
    """Per-layer INT8 error (quantize/sensitivity.py) written beside `out`; the worst rows as a table."""
    from edgeconv.quantize.sensitivity import int8_errors, top_rows, write_report

    report = int8_errors(float_model, model, calib.samples.x.numpy())
    report["calibration"] = calib.source
    js, png = report_paths(out)
    write_report(report, js, png, title=f"{out.name}: INT8 vs float per tensor ({report['samples']} samples)")
    rec["sensitivity_report"] = {"json": js.name, "png": png.name, "samples": report["samples"]}
    notes.append(f"per-layer report: {js} and {png} (lowest SQNR first; 'own' = this tensor's rounding alone)")
    if report["if_nodes_not_inspected"]:
        notes.append(f"per-layer report: the {report['if_nodes_not_inspected']} If node(s) were not looked into")
    return f"INT8 error per layer, worst first ({report['samples']} calibration samples)", top_rows(report, 8)
