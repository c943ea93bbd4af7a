"""`edgeconv info` for quantized artifacts: the quantization record of an `.onnx` (metadata_props), a `.tflite`
(JSON sidecar `<file>.json` plus the interpreter's view of the file) and a TensorRT `.engine` (sidecar)."""

from __future__ import annotations

import json
from pathlib import Path

from edgeconv.artifacts import file_sha256, short_hash
from edgeconv.artifacts.card import QUANTIZATION_KEY, read_sidecar
from edgeconv.artifacts.describe import register_describer, register_section
from edgeconv.artifacts.formats import FORMATS
from edgeconv.common.errors import EdgeconvError


def quantization_section(rec: dict) -> dict:
    """The record as `info` rows: what was quantized, on what, and what it cost in accuracy."""
    acc = rec.get("accuracy") or {}
    cal = rec.get("calibration") or {}
    size = rec.get("size_bytes") or {}
    out = {
        "backend / precision": f"{rec.get('backend')} / {str(rec.get('precision', '?')).upper()}",
        "calibration": (
            f"{cal.get('size')} samples from {cal.get('source')} (sha256 {short_hash(cal['sha256'])})"
            if cal
            else "none (no calibration needed)"
        ),
        "method": rec.get("method") or "-",
        "per-channel": "-" if rec.get("per_channel") is None else ("yes" if rec["per_channel"] else "no"),
    }
    if rec.get("target"):
        from edgeconv.quantize.targets import TARGETS, target_warning

        t = TARGETS.get(rec["target"])
        out["INT8 target"] = f"{rec['target']}: {t.description}" if t else rec["target"]
        warning = target_warning(rec)
        out["on this CPU"] = f"WARNING: {warning}" if warning else "fits this CPU"
    if rec.get("weights"):
        out["weights"] = rec["weights"]
    sat = rec.get("saturation")
    if sat:
        out["int16 pair sums"] = (
            f"worst {sat['worst_pair_sum']} of {sat['int16_limit']} over "
            f"{sat['integer_layers']} integer layers (max |w| {sat['max_abs_weight']}): "
            + (
                "cannot saturate on any CPU"
                if sat["safe_without_vnni"]
                else f"{sat['unsafe_layers']} layers can saturate on x86 without VNNI"
            )
        )
    if rec.get("ops"):
        out["op selection"] = rec["ops"]
    if rec.get("routing"):
        out["routing"] = rec["routing"]
    if acc.get("float_top1") is not None:
        out["accuracy"] = (
            f"{acc['quantized_top1']:.2f}% vs float {acc['float_top1']:.2f}% "
            f"(drop {acc['drop']:+.2f} points, {acc.get('n')} samples of {acc.get('data')})"
        )
        if acc.get("runtime"):
            out["accuracy measured with"] = acc["runtime"]
    else:
        out["accuracy"] = "not measured (no labelled evaluation data)"
    lat = rec.get("latency_check_ms") or {}
    if lat.get("ratio_ci"):
        out["INT8 / float latency"] = (
            f"{lat['ratio']:.3f}x [95% CI {lat['ratio_ci'][0]:.3f}, "
            f"{lat['ratio_ci'][1]:.3f}] at batch {lat['batch']}, {lat['repetitions']} "
            "paired repetitions"
        )
    if rec.get("kept_float_for_accuracy"):
        out["kept float (--max-drop)"] = ", ".join(rec["kept_float_for_accuracy"])
    x = rec.get("xnnpack")
    if isinstance(x, dict) and "partitions" in x:
        fb = x.get("fallback_ops") or {}
        out["XNNPACK"] = f"{x['partitions']} delegate partition(s), " + (
            "outside it: " + ", ".join(f"{k} x{v}" for k, v in fb.items()) if fb else "every operator inside it"
        )
    gelu = rec.get("gelu")
    if isinstance(gelu, dict) and gelu.get("tanh"):
        from edgeconv.quantize.gelu import summary

        out["GELU"] = summary(gelu)
    if rec.get("ops_left_float"):
        out["ops left float"] = ", ".join(f"{k} x{v}" for k, v in rec["ops_left_float"].items())
    if rec.get("kinds_left_float_for_latency"):
        out["left float for speed"] = "; ".join(f"{k}: {v}" for k, v in rec["kinds_left_float_for_latency"].items())
    if size.get("float"):
        out["size vs float"] = f"{size['quantized'] / 1024:.1f} KiB vs {size['float'] / 1024:.1f} KiB ({size['ratio']}x)"
    if rec.get("source"):
        out["source"] = f"{rec['source'].get('path')} (sha256 {short_hash(rec['source'].get('sha256') or '')})"
    return out


@register_section(*FORMATS["onnx"].suffixes)
def onnx_quantization(path: Path, desc: dict) -> None:
    """A quantized `.onnx`: its record as a `quantization` section instead of one long metadata line."""
    meta = desc.get("edgeconv metadata")
    raw = meta.pop(QUANTIZATION_KEY, None) if isinstance(meta, dict) else None
    if raw is not None:
        # the describer shows the decoded record as JSON text: read it back instead of parsing the file again
        try:
            rec = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            rec = None
        if isinstance(rec, dict) and rec:
            desc["quantization"] = quantization_section(rec)


@register_describer(*FORMATS["tflite"].suffixes)
def describe_tflite(path: Path) -> dict:
    desc: dict = {
        "artifact": {
            "path": str(path),
            "type": "TFLite flatbuffer",
            "sha256": short_hash(file_sha256(path)),
            "size": f"{path.stat().st_size / 1024:.1f} KiB",
        }
    }
    try:
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=str(path))
        io = {}
        for kind, details in (("input", interp.get_input_details()), ("output", interp.get_output_details())):
            for d in details:
                q = d.get("quantization") or (0.0, 0)
                qtxt = f", scale {q[0]:.4g} zero point {q[1]}" if q and q[0] else ""
                shape = ", ".join(str(int(v)) for v in d["shape"])  # parentheses: brackets would read as markup
                io[f"{kind} {d['name']}"] = f"{d['dtype'].__name__} ({shape}){qtxt}"
        desc["tensors"] = io
    except ImportError:
        desc["tensors"] = {"note": "ai_edge_litert not installed (pip install ai-edge-litert) - tensors not read"}
    except Exception as e:  # noqa: BLE001 - a broken file is a user error, not a crash
        raise EdgeconvError(f"{path}: not a readable TFLite model ({str(e).splitlines()[0][:160]})")
    rec = read_sidecar(path)
    desc["quantization"] = quantization_section(rec) if rec else {"note": f"no record ({path.name}.json missing)"}
    return desc


@register_describer(*FORMATS["engine"].suffixes)
def describe_engine(path: Path) -> dict:
    desc: dict = {
        "artifact": {
            "path": str(path),
            "type": "TensorRT engine",
            "sha256": short_hash(file_sha256(path)),
            "size": f"{path.stat().st_size / 1024:.1f} KiB",
        }
    }
    rec = read_sidecar(path)
    if rec:
        desc["quantization"] = quantization_section(rec)
        if rec.get("tensorrt"):
            desc["tensorrt"] = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in rec["tensorrt"].items()}
    else:
        desc["quantization"] = {"note": f"no record ({path.name}.json missing)"}
    return desc
