"""INT8 top-1 on more than one CPU class, in one run: this CPU, and x86 CPU models emulated by qemu-user.

For each checkpoint trained on a bundled set (--ckpt, repeatable; all on the same set: digits or fashion) the
float ONNX and two INT8 files are written: the default `--target portable` (7-bit per-channel weights) and
`--target x86-vnni` (full 8-bit weights, what edgeconv wrote before targets existed), both calibrated on that set's
train split. Every file is scored on the set's test split (digits: 359 images; fashion: 10,000, or a seeded
class-stratified --limit of them) by a default onnxruntime session (ORT_ENABLE_ALL) on this CPU, and by the same
onnxruntime under `qemu-x86_64 -cpu MODEL` for each --emulate model (default Haswell: AVX2 without AVX-512 or VNNI;
qemu emulates no AVX-512, so every qemu model is a CPU without VNNI).
The int16 pair-sum check of each file is printed beside it.

    python benchmarks/int8_cpus.py --ckpt routed.pt --ckpt acmix.pt --out /tmp/int8cpus

Needs `apt install qemu-user` for the emulated columns (without it only this CPU is measured).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import onnx


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    from edgeconv.artifacts import read_checkpoint
    from edgeconv.common.console import console, rows_table
    from edgeconv.data.sources import load_samples
    from edgeconv.export.onnx import export_onnx
    from edgeconv.quantize import QuantizeRequest, quantize
    from edgeconv.quantize.crosscpu import qemu, score_files
    from edgeconv.quantize.saturation import check_model
    from edgeconv.runtime.hostcpu import cpu_record

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", action="append", type=Path, required=True, help="checkpoint (repeatable)")
    ap.add_argument("--limit", type=int, default=None, help="score the first N test images only (stratified)")
    ap.add_argument(
        "--emulate", action="append", default=None, help="qemu CPU model to score under (repeatable; default Haswell)"
    )
    ap.add_argument("--out", type=Path, default=None, help="work folder (kept; reruns reuse its files)")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="edgeconv-int8cpus-"))
    work.mkdir(parents=True, exist_ok=True)
    emulate = args.emulate or ["Haswell"]
    if qemu() is None:
        _log("qemu-x86_64 not found: scoring on this CPU only")
        emulate = []
    cpu = cpu_record()
    files: dict[str, dict[str, Path]] = {}
    pre = None
    sets = set()
    for ck in args.ckpt:
        rec = read_checkpoint(ck)
        pre = rec["preprocessing"]
        sets.add(pre.get("dataset") or "digits")
        name = f"{rec['family']}-{rec.get('variant', '')}".strip("-")
        onx = work / f"{ck.stem}.onnx"
        if not onx.exists():
            _log(f"{ck.name}: exporting")
            export_onnx(ck, onx)
        files[name] = {"float": onx}
        for target in ("portable", "x86-vnni"):
            out = work / f"{ck.stem}.{target}.int8.onnx"
            if not out.exists():
                _log(f"{ck.name}: quantizing for {target}")
                quantize(QuantizeRequest(onx, out, "int8", "ort", target=target, command="benchmarks/int8_cpus.py"))
            files[name][target] = out
    if len(sets) != 1:
        sys.exit(f"the checkpoints were trained on different data sets ({', '.join(sorted(sets))}): give one set's")
    data = sets.pop()
    test = load_samples(data, pre, "test")
    if args.limit:
        test = test.stratified(args.limit)
    every = [p for per in files.values() for p in per.values()]
    x, y = test.x.numpy(), test.y.numpy()
    columns = {f"{cpu['model']} ({cpu['int8']}), native": None}
    columns.update({f"qemu -cpu {m} (AVX2, no VNNI)" if m == "Haswell" else f"qemu -cpu {m}": m for m in emulate})
    scores = {}
    for col, model in columns.items():
        _log(f"scoring {len(every)} files: {col}")
        scores[col] = dict(zip(map(str, every), score_files(every, x, y, qemu_cpu=model)))
    rows = []
    for name, per in files.items():
        for kind in ("float", "portable", "x86-vnni"):
            p = per[kind]
            sat = check_model(onnx.load(str(p))) if kind != "float" else None
            row = {
                "model": name,
                "file": "float" if kind == "float" else f"INT8 --target {kind}",
                "max |w|": sat.record()["max_abs_weight"] if sat else "-",
                "pair sums fit int16": ("yes" if sat.safe else "no") if sat else "-",
            }
            for col in columns:
                top = scores[col][str(p)]
                drop = top - scores[col][str(per["float"])]
                row[col] = f"{top:.2f}" if kind == "float" else f"{top:.2f} ({drop:+.2f})"
            rows.append(row)
    console.print(
        rows_table(rows, title=f"{data} test top-1 % ({len(y)} images, drop vs float), default onnxruntime session")
    )
    (work / "int8_cpus.json").write_text(
        json.dumps({"cpu": cpu, "data": data, "images": len(y), "columns": list(columns), "rows": rows}, indent=2)
    )
    _log(f"results in {work / 'int8_cpus.json'}")


if __name__ == "__main__":
    main()
