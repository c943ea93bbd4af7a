"""TFLite FP32 / FP16 / INT8, converted from the PyTorch checkpoint and run in ai_edge_litert.

Route (chosen by trying them, see platform-facts.md): litert-torch converts the PyTorch model to an FP32 .tflite
directly (no TensorFlow, no ONNX hop); ai-edge-quantizer then writes FP16 weights (float casting) or INT8 (static
a8w8: int8 weights per channel, int8 activations calibrated on the calibration samples) on the operators the XNNPACK
delegate runs in int8, the rest float (`--ops auto`; `all` is full-integer, `weights` the weight layers). PT2E
quantization inside litert-torch was tried too: it was ~4x slower to convert here and its INT8 softmax output scale
is rejected by the interpreter (it must be 1/256).

Routed models: litert-torch cannot lower `torch.cond` (TFLite has no route to an ONNX-like `If` from it), so a
hard-routed model is converted with every router's hard decision written as a select: both branches are computed
and each sample keeps the branch its router picks (`torch.where`, TFLite SELECT_V2). The answers are those of
hard routing - the FP32 .tflite is checked against PyTorch's hard routing on real samples, per routing pattern
(which branch each block took) - but no compute is saved. The artifact records this as `routing: select`.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from edgeconv.artifacts import atomic_path, file_sha256
from edgeconv.artifacts.card import model_fields, write_sidecar
from edgeconv.artifacts.formats import is_format
from edgeconv.common.errors import EdgeconvError, MissingDependencyError
from edgeconv.models import load_model
from edgeconv.quantize import QuantizeReport, QuantizeRequest
from edgeconv.quantize.record import (
    accuracy_record,
    accuracy_runtime,
    base_record,
    inputs_for,
    peek_meta,
    quiet,
    size_record,
)
from edgeconv.runtime.tflite import Delegation, TFLiteRunner, interpreter_class, litert_version, operators

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


# Weight layers: what `--ops weights` makes INT8 (float activations elsewhere, a QUANTIZE/DEQUANTIZE pair around each).
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_2D_TRANSPOSE")
MAX_ROUNDS = 4  # `--ops auto`: conversions that move fallen-back operators to float (hybrids need one or two)
TIMING_SECONDS, MIN_TIMING_RUNS = 2.0, 15


def _calibration(fp32: Path, calib_x: np.ndarray) -> tuple[str, list[dict]]:
    Interpreter = interpreter_class()
    sigs = Interpreter(model_path=str(fp32)).get_signature_list()
    name = next(iter(sigs))
    inp = sigs[name]["inputs"][0]
    return name, [{inp: calib_x[i : i + 1].astype(np.float32)} for i in range(len(calib_x))]


def _exact(tensor: str) -> str:
    """The recipe regex of one operator: its scope is its output tensor names, each followed by ';'."""
    return f"^{re.escape(tensor)};$"


class Int8Converter:
    """One calibration of an FP32 .tflite, then any number of INT8 conversions of it with ai-edge-quantizer:
    a base selection (`all`: every operator it can quantize; `weights`: WEIGHT_OPS; `one`: a single operator) with
    given operators (op type, output tensor) kept float."""

    def __init__(self, fp32: Path, calib_x: np.ndarray):
        self.fp32 = fp32
        name, samples = _calibration(fp32, calib_x)
        with quiet(stderr=True):
            # once: every later recipe quantizes a subset of what the full one calibrated
            self.cal = self._quantizer("all").calibrate({name: samples}, num_threads=1)

    def _quantizer(self, base: str, only: tuple[str, str] | None = None):
        from ai_edge_quantizer import quantizer, recipe

        q = quantizer.Quantizer(str(self.fp32))
        if base == "all":
            q.load_quantization_recipe(recipe.static_wi8_ai8())
        elif base == "weights":
            for op in WEIGHT_OPS:
                q.add_static_config(regex=".*", operation_name=op, activation_num_bits=8, weight_num_bits=8)
        elif base == "one" and only is not None:
            q.add_static_config(regex=_exact(only[1]), operation_name=only[0], activation_num_bits=8, weight_num_bits=8)
        else:
            raise EdgeconvError(f"unknown INT8 selection {base!r}")
        return q

    def convert(self, out: Path, base: str, floated=(), only: tuple[str, str] | None = None) -> Delegation:
        with quiet(stderr=True):
            q = self._quantizer(base, only)
            for op, tensor in floated:
                q.update_quantization_recipe(regex=_exact(tensor), operation_name=op, algorithm_key="no_quantize")
            q.quantize(self.cal, enable_progress_report=False).export_model(str(out), overwrite=True)
        return TFLiteRunner(out).delegation()


def select_int8(conv: Int8Converter, out: Path, ops: str = "auto") -> dict:
    """Write the INT8 file for an operator selection and return its record.

    - `all`: full-integer, every operator ai-edge-quantizer can quantize (int8 input and output) - for integer-only
      accelerators; on a CPU the operators XNNPACK has no int8 kernel for fall back to TFLite's built-in kernels.
    - `auto`: int8 where XNNPACK runs it. Starts from `all`, asks the interpreter which operators fell back out of
      the XNNPACK delegate, converts again with exactly those (by output tensor) in float, and repeats until no
      int8 operator is left outside the delegate (or MAX_ROUNDS): float islands then sit inside XNNPACK's one
      graph, where QUANTIZE/DEQUANTIZE are its own ops, instead of splitting it into dozens of partitions.
    - `weights`: only the weight layers (WEIGHT_OPS) in int8.
    """
    base = "weights" if ops == "weights" else "all"
    floated: list[tuple[str, str]] = []
    rounds: list[dict] = []
    while True:
        split = conv.convert(out, base, floated)
        rounds.append({"ops in float": len(floated), **split.to_dict()})
        new = [f for f in split.fallback if f[1] and f not in floated]
        if ops != "auto" or not new or len(rounds) > MAX_ROUNDS:
            break
        floated += new
    return {
        "ops": ops,
        "base": base,
        "floated": floated,
        "rounds": rounds,
        "ops_left_float": dict(Counter(op for op, _ in floated)),
        "xnnpack": split.to_dict(),
    }


def quantize_tflite(
    fp32: Path, out: Path, precision: str, calib_x: np.ndarray | None = None, ops: str = "auto"
) -> dict | None:
    """FP16 weights (float casting), or INT8 (static a8w8 calibrated on `calib_x`, operators by `select_int8`)
    with ai-edge-quantizer. Returns the selection record for INT8 (None for FP16)."""
    if precision == "int8":
        return select_int8(Int8Converter(fp32, calib_x), out, ops)
    if precision != "fp16":
        raise EdgeconvError(f"unknown TFLite precision {precision!r}")
    from ai_edge_quantizer import quantizer

    with quiet(stderr=True):
        q = quantizer.Quantizer(str(fp32))
        q.add_weight_only_config(regex=".*", operation_name="*", num_bits=16, algorithm_key="float_casting")
        q.quantize(enable_progress_report=False).export_model(str(out), overwrite=True)
    return None


SENSITIVITY_SUBSET = 64  # evaluation samples whose logits rank the layers for --max-drop


def keep_within(conv: Int8Converter, out: Path, sel: dict, ev, max_drop: float, step) -> dict:
    """`--max-drop` for TFLite: when INT8 top-1 (in the interpreter, on the evaluation split) is more than
    `max_drop` points below FP32, rank the int8 weight layers by sensitivity (the logit error with only that layer
    int8) and move the most sensitive to float one at a time until it is within budget; fail when even all of them
    float is not. Same rule as onnxruntime's."""
    xe, ye = ev.x.numpy(), ev.y.numpy()
    float_runner = TFLiteRunner(conv.fp32)
    ref = float_runner(xe)
    f_top1 = float((ref.argmax(1) == ye).mean() * 100)

    def top1(path: Path) -> float:
        return float((TFLiteRunner(path)(xe).argmax(1) == ye).mean() * 100)

    q_top1 = top1(out)
    steps = [{"kept float": 0, "top1": round(q_top1, 4)}]
    sel.update(max_drop_steps=steps, kept_float_for_accuracy=[])
    if f_top1 - q_top1 <= max_drop:
        return sel
    cands = [c for c in operators(float_runner.interp) if c[0] in WEIGHT_OPS and c not in sel["floated"]]
    step(f"INT8 drops {f_top1 - q_top1:.2f} points (> {max_drop}); ranking {len(cands)} weight layers by sensitivity")
    probe = out.with_name("sensitivity.tflite")
    scores = {}
    for i, c in enumerate(cands):
        step(f"sensitivity {i + 1}/{len(cands)}")
        conv.convert(probe, "one", only=c)
        scores[c] = float(np.abs(TFLiteRunner(probe)(xe[:SENSITIVITY_SUBSET]) - ref[:SENSITIVITY_SUBSET]).mean())
    probe.unlink(missing_ok=True)
    ranked = sorted(cands, key=lambda c: -scores[c])
    for k in range(1, len(ranked) + 1):
        step(f"keeping {k} weight layer(s) float")
        split = conv.convert(out, sel["base"], sel["floated"] + ranked[:k])
        acc = top1(out)
        steps.append({"kept float": k, "top1": round(acc, 4), "added": f"{ranked[k - 1][0]} {ranked[k - 1][1]}"})
        if f_top1 - acc <= max_drop:
            sel.update(kept_float_for_accuracy=[t for _, t in ranked[:k]], xnnpack=split.to_dict())
            return sel
    best = max(steps, key=lambda r: r["top1"])
    raise EdgeconvError(
        f"--max-drop {max_drop} cannot be met: float top-1 {f_top1:.2f}%, INT8 {q_top1:.2f}%, best with up to "
        f"{len(ranked)} weight layers back in float {best['top1']:.2f}% ({best['kept float']} float); nothing was written"
    )


def latency_check(fp32: Path, int8: Path, step: Callable[[str], None]) -> dict:
    """INT8 vs FP32 .tflite at batch 1, one thread, XNNPACK: interleaved repetitions, the median paired ratio and
    its 95% bootstrap interval (the rule `--ops auto` uses for onnxruntime too)."""
    from edgeconv.common.stats import interleaved_times, paired_ratio

    step("timing INT8 against FP32 in the TFLite interpreter (batch 1)")
    f, q = TFLiteRunner(fp32), TFLiteRunner(int8)
    # the FP32 graph's own input shape (batch 1), so neither runner needs a layout change
    x = np.random.default_rng(0).standard_normal(tuple(int(d) for d in f.inp["shape"])).astype(np.float32)
    f_t, q_t = interleaved_times(
        [f.invoke_prepared(x), q.invoke_prepared(x)], seconds=TIMING_SECONDS, min_runs=MIN_TIMING_RUNS
    )
    r = paired_ratio(q_t, f_t)
    return {
        "batch": 1,
        "float_ms": round(float(np.median(f_t)), 4),
        "int8_ms": round(float(np.median(q_t)), 4),
        "ratio": round(r["ratio"], 4),
        "ratio_ci": [round(v, 4) for v in r["ci"]],
        "repetitions": r["n"],
        "rule": "median of paired ratios, one thread, XNNPACK delegate (the interpreter's default)",
    }


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


def _check_latency(conv: Int8Converter, result: Path, sel: dict, step) -> tuple[Path, dict]:
    """Time the INT8 file against FP32; under `--ops auto`, when it is clearly slower (the whole 95% interval above
    1.0), try the weight layers alone and keep that file only if it is clearly faster than FP32. A `--max-drop`
    selection is never swapped: its accuracy was measured on the file it is."""
    sel["latency_check_ms"] = lat = latency_check(conv.fp32, result, step)
    if sel["ops"] != "auto" or lat["ratio_ci"][0] <= 1.0 or "max_drop_steps" in sel:
        return result, sel
    step("INT8 is clearly slower than FP32 here: trying the weight layers alone")
    alt = result.with_name("model.int8.weights.tflite")
    alt_sel = select_int8(conv, alt, "weights")
    alt_sel["latency_check_ms"] = alt_lat = latency_check(conv.fp32, alt, step)
    decision = {"auto": _ratio_text(lat), "weights": _ratio_text(alt_lat)}
    if alt_lat["ratio_ci"][1] < 1.0:
        alt_sel.update(ops="auto", fell_back_to="weights", decision=decision)
        alt_sel["rounds"] = sel["rounds"] + alt_sel["rounds"]
        return alt, alt_sel
    sel["decision"] = decision
    return result, sel


def _ratio_text(lat: dict) -> str:
    return f"{lat['ratio']:.3f}x [{lat['ratio_ci'][0]:.3f}, {lat['ratio_ci'][1]:.3f}]"


def _selection_notes(sel: dict) -> list[str]:
    notes = []
    if sel["ops_left_float"]:
        notes.append(
            "kept float because they fell back out of XNNPACK in int8: "
            + ", ".join(f"{k} x{v}" for k, v in sorted(sel["ops_left_float"].items(), key=lambda kv: -kv[1]))
        )
    kept = sel.get("kept_float_for_accuracy") or []
    if kept:
        steps = sel["max_drop_steps"]
        notes.append(
            f"--max-drop: {len(kept)} weight layer(s) back in float, most sensitive first (top-1 "
            f"{steps[0]['top1']:.2f}% -> {steps[-1]['top1']:.2f}%)"
        )
    if sel.get("fell_back_to"):
        notes.append(f"int8 where XNNPACK runs it was slower than FP32 here; the weight layers alone pay: {sel['decision']}")
    x = sel["xnnpack"]
    if x["fallback_ops"]:
        notes.append(
            f"{x['partitions']} XNNPACK partitions; outside the delegate (no XNNPACK kernel in this precision): "
            + ", ".join(f"{k} x{v}" for k, v in x["fallback_ops"].items())
        )
    lat = sel["latency_check_ms"]
    verdict = "SLOWER than" if lat["ratio_ci"][0] > 1.0 else "faster than" if lat["ratio_ci"][1] < 1.0 else "as fast as"
    notes.append(
        f"INT8 {verdict} FP32 in the TFLite interpreter: {lat['int8_ms']:.2f} ms vs {lat['float_ms']:.2f} ms at batch 1 "
        f"({_ratio_text(lat)}, {lat['repetitions']} paired repetitions)"
    )
    why = _slower_why(lat)
    if why:
        notes.append(why)
    return notes


def _slower_why(lat: dict) -> str | None:
    """Why INT8 can be slower on this CPU: its class has no int8 dot-product instruction for XNNPACK to use."""
    from edgeconv.runtime.hostcpu import cpu_info, int8_class

    if lat["ratio_ci"][0] <= 1.0:
        return None
    info = cpu_info()
    cls = int8_class([] if info["isa"] == "-" else info["isa"].split(), info["arch"])
    if cls["family"] != "x86" or not cls["u8s8_saturates"]:
        return None
    return (
        f"this CPU ({info['int8']}) has no int8 dot-product instruction: XNNPACK's int8 kernels widen to int16 here "
        "and do not beat its FP32 FMA kernels; on CPUs with VNNI or ARM dot-product the same file is faster than "
        "FP32 (docs/quantization.md)"
    )


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
    model, ck = load_model(ckpt)
    rec = base_record(req, meta, calib, ev)
    if ckpt != Path(req.model):
        rec["source"]["converted_from"] = {"path": str(ckpt.resolve()), "sha256": file_sha256(ckpt)}
    rec["method"] = "moving-average min/max per sample (ai-edge-quantizer static a8w8)" if req.precision == "int8" else None
    rec["per_channel"] = True if req.precision == "int8" else None
    notes: list[str] = []
    if req.precision == "int8" and (req.method != "minmax" or req.per_channel is False):
        notes.append(
            "TFLite INT8 uses ai-edge-quantizer's static a8w8 recipe: moving-average min/max activations, per-channel "
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
        sel = None
        if req.precision == "fp32":
            result = fp32
        else:
            step(f"quantizing with ai-edge-quantizer ({req.precision.upper()}, ops {req.ops})")
            result = Path(tmp) / f"model.{req.precision}.tflite"
            if req.precision == "int8":
                conv = Int8Converter(fp32, calib.samples.x.numpy())
                sel = select_int8(conv, result, req.ops)
                if req.max_drop is not None:
                    sel = keep_within(conv, result, sel, ev, req.max_drop, step)
                result, sel = _check_latency(conv, result, sel, step)
                rec.update({k: sel[k] for k in ("ops", "ops_left_float", "xnnpack", "latency_check_ms")})
                rec["selection_rounds"] = sel["rounds"]
                if req.max_drop is not None:
                    rec["kept_float_for_accuracy"] = sel["kept_float_for_accuracy"]
                    rec["max_drop_steps"] = sel["max_drop_steps"]
                notes.extend(_selection_notes(sel))
            else:
                quantize_tflite(fp32, result, req.precision)
        runner = TFLiteRunner(result)
        if ev is not None:
            step("measuring top-1 in the TFLite interpreter")
            xe, ye = ev.x.numpy(), ev.y.numpy()
            f_top1 = float((runner32(xe).argmax(1) == ye).mean() * 100)
            q_top1 = f_top1 if result == fp32 else float((runner(xe).argmax(1) == ye).mean() * 100)
            accuracy_record(rec, f_top1, q_top1)
            if sel is not None and req.max_drop is not None:
                rec["accuracy"].update(max_drop=req.max_drop, plain_int8_top1=sel["max_drop_steps"][0]["top1"])
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
        "ops": req.ops if sel else "-",
        "XNNPACK partitions": sel["xnnpack"]["partitions"] if sel else "-",
        "INT8 / FP32 latency": _ratio_text(sel["latency_check_ms"]) if sel else "-",
        "size KiB": round(size / 1024, 1),
        "size vs FP32": f"{size / float_bytes:.2f}x",
        "float top-1 %": acc.get("float_top1"),
        "quantized top-1 %": acc.get("quantized_top1"),
        "drop": acc.get("drop"),
    }
    details = [{**r, "max abs diff": f"{r['max abs diff']:.2e}"} for r in rows_routing]
    return QuantizeReport(req.out, rec, [row], details, notes + [f"record: {side}"])
