"""TensorRT engines: FP16, and INT8 by explicit quantization (a symmetric Q/DQ ONNX), for TensorRT 10 and 11.

TensorRT 11 has no calibrator API and is always strongly typed, so INT8 means the ONNX already carries
QuantizeLinear/DequantizeLinear pairs: activations INT8 symmetric (zero point 0) with ranges calibrated on the
calibration samples, weights INT8 symmetric per output channel - produced here with onnxruntime's quantizer
(`If` branches included, see `edgeconv.quantize.ort`). FP16 means an FP16 ONNX (float32 inputs/outputs).

`-o model.onnx` writes only that TensorRT-ready ONNX (works anywhere; build it on the device with this module or
`trtexec --onnx=... --stronglyTyped`). `-o model.engine` also builds the engine: an optimisation profile over the
batch dimension (min/opt/max), a timing cache kept next to the engine (`<engine>.timing.cache`) so rebuilds are
fast, device buffers through cuda-python, and top-1 measured on the GPU (engine building and running are
`edgeconv.runtime.tensorrt`'s). `tensorrt` is imported lazily: without it (or without a GPU) the command fails with one line
and the install hint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from edgeconv.artifacts import atomic_path, atomic_write_bytes
from edgeconv.artifacts.card import load_onnx_proto
from edgeconv.artifacts.formats import is_format
from edgeconv.common.errors import EdgeconvError
from edgeconv.quantize import QuantizeReport, QuantizeRequest
from edgeconv.quantize.calibration import CalibrationSet
from edgeconv.quantize.record import accuracy_record, accuracy_runtime, base_record, inputs_for, peek_meta, size_record
from edgeconv.quantize.saturation import check_model
from edgeconv.quantize.targets import TARGETS, Int8Target
from edgeconv.runtime.tensorrt import TensorRTRunner, build_engine, profile_for, require_engine_host, require_tensorrt


# ----------------------------------------------------------------------------------------------- ONNX preparation
def prepare_int8_onnx(
    float_model: onnx.ModelProto,
    calib: CalibrationSet,
    method: str = "minmax",
    on_step: Callable[[str], None] | None = None,
    target: Int8Target = TARGETS["tensorrt"],
) -> onnx.ModelProto:
    """Symmetric INT8 Q/DQ ONNX for TensorRT explicit quantization (every op onnxruntime can quantize)."""
    from edgeconv.quantize.ort import Int8Options, quantize_int8

    opts = Int8Options.for_target(target, method=method)
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


# ----------------------------------------------------------------------------------------------- command
STAND_IN = {
    "int8": "onnxruntime CPU stand-in at ORT_ENABLE_BASIC (Q/DQ computed in float, no integer kernels: "
    "cannot saturate); the engine is built on the device",
    "fp16": "onnxruntime CPU stand-in at ORT_ENABLE_EXTENDED; the engine is built on the device",
}


def run(req: QuantizeRequest, step: Callable[[str], None]) -> QuantizeReport:
    from edgeconv.artifacts.card import model_fields, set_quantization, write_sidecar
    from edgeconv.export.onnx import count_if_nodes
    from edgeconv.quantize.ort import convert_fp16, ort_logits, ort_session, top1
    from edgeconv.quantize.source import resolve_onnx

    engine_wanted = is_format(req.out, "engine")
    if engine_wanted:  # fail before any work when the engine cannot be built here
        require_engine_host()
    if req.max_drop is not None:
        raise EdgeconvError("--max-drop is implemented for --backend ort; TensorRT INT8 quantizes every op it can")
    meta = peek_meta(req.model)
    calib, ev = inputs_for(req, meta["preprocessing"], meta.get("classes"))
    batches = req.extra.get("batch_profile", (1, 8, 32))
    with tempfile.TemporaryDirectory(prefix="edgeconv-trt-") as tmp:
        src = resolve_onnx(req.model, Path(tmp), routing=req.routing)
        float_model = load_onnx_proto(src.onnx_path)
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
        model = prepare_int8_onnx(float_model, calib, req.method, on_step=step, target=req.target)
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
