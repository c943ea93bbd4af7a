"""Every timm hybrid through `prune --target-macs 0.5`, reload, export and validate: a sweep, not a list.

    .venv-timm/bin/python benchmarks/timm_sweep.py [--per-family 2] [--max-params 30e6] [--target-macs 0.5]
        [--models a,b,...] [--work DIR] [--json FILE] [--timeout 900]

Which models: every model in timm's registry, grouped by the timm module (file) that defines it, instantiated on
the meta device (no memory, no weights) and kept when it is a hybrid by this rule:

- it has an attention module: an `nn.MultiheadAttention`, or a module with an integer `num_heads` that
  `edgeconv.models.structure.attention_like` recognises (class name with attention/attn, or q/k/v children);
- and it convolves somewhere: at least one `nn.Conv2d` that is not a patchify layer (kernel == stride, no
  padding: the plain ViT patch embedding does not count). A convolutional stem, conv stages, depthwise convs in
  blocks, conv positional encodings and 1x1-conv attention all count.

timm's `test_*` configurations are skipped; of each module's hybrids the `--per-family` smallest by parameter count
(at most `--max-params`) are run. Each model runs in its own process at the smallest input size it accepts among
64, 96, 128, 160, 224, 240, 256 (random init; the BatchNorm scales and bias tables timm initialises to zero are
given random values so that equalities compare real numbers), with random calibration batches (gradient criterion).
Per model: heads and channel units found, attention modules left whole and why, MACs reached (edgeconv's count),
the pruned checkpoint reloaded with `weights_only=True` to the same outputs, ONNX export and `validate`. Prints a
markdown table with the CPU class.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distributed import cpu_class  # noqa: E402

SIZES = (64, 96, 128, 160, 224, 240, 256)
PASS_MACS = 0.60  # a model passes when it reaches at most this share of its MACs, reloads, exports and validates


def is_hybrid(model) -> tuple[bool, str]:
    """The rule of the module docstring: (hybrid?, the first attention class found)."""
    import torch.nn as nn

    from edgeconv.models.structure import attention_like

    attn = next(
        (
            type(m).__name__
            for m in model.modules()
            if isinstance(m, nn.MultiheadAttention) or (attention_like(m) and isinstance(getattr(m, "num_heads", None), int))
        ),
        None,
    )
    convs = any(
        isinstance(m, nn.Conv2d) and not (m.kernel_size == m.stride and m.padding in ((0, 0), "valid"))
        for m in model.modules()
    )
    return bool(attn and convs), attn or ""


def select(per_family: int = 2, max_params: float = 30e6) -> list[tuple[str, str, int]]:
    """(family, model, params) of the smallest hybrids of every timm module, found from timm's registry."""
    import warnings

    import timm
    import torch

    out = []
    for family in timm.list_modules():
        found = []
        for name in timm.list_models(module=family):
            if name.startswith("test_"):
                continue
            try:
                with warnings.catch_warnings(), torch.device("meta"):
                    warnings.simplefilter("ignore")
                    m = timm.create_model(name, pretrained=False)
            except Exception:  # noqa: BLE001 - a model that does not build here is not in the sweep
                continue
            hybrid, _ = is_hybrid(m)
            params = sum(p.numel() for p in m.parameters())
            if hybrid and params <= max_params:
                found.append((params, name))
        out += [(family, name, params) for params, name in sorted(found)[:per_family]]
    return out


def perturbed(model):
    """Random values for the BatchNorm scales/statistics and the attention-bias tables timm initialises to zero."""
    import torch

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.normal_(0, 0.1, generator=g)
                if m.running_mean is not None:
                    m.running_mean.normal_(0, 0.1, generator=g)
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            for name in ("attention_biases", "relative_position_bias_table"):
                t = getattr(m, name, None)
                if isinstance(t, torch.nn.Parameter):
                    t.normal_(0, 0.5, generator=g)
    return model


def build(name: str, sizes=SIZES):
    """(model, size): the model at the smallest input size whose forward runs."""
    import torch

    from edgeconv.models import create_model

    last = None
    for size in sizes:
        try:
            torch.manual_seed(0)
            m = create_model(f"timm:{name}", num_classes=10, in_chans=3, img_size=size).eval()
            with torch.no_grad():
                m(torch.zeros(2, 3, size, size))
            return perturbed(m), size
        except Exception as e:  # noqa: BLE001 - try the next size
            last = e
    msg = (str(last).splitlines() or [""])[0][:120]
    raise RuntimeError(f"no input size in {sizes} runs ({type(last).__name__}: {msg})")


def run_one(name: str, work: Path, target: float = 0.5, sizes=SIZES, batches: int = 2, validate: bool = True) -> dict:
    """Prune one timm model to `target` of its MACs, reload, export and validate; one row of the sweep."""
    import torch

    from edgeconv.artifacts import provenance, save_checkpoint
    from edgeconv.compress.prune import PruneRequest, find_units, prune_model
    from edgeconv.data.sources import Samples
    from edgeconv.models import count_params_macs, load_model

    t0 = time.perf_counter()
    row: dict = {"model": name}
    model, size = build(name, sizes)
    pre = {"size": size, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "layout": "NCHW"}
    row["size"] = size
    units, left = find_units(model, pre)
    row["head units"] = sum(u.kind == "heads" for u in units)
    row["channel units"] = sum(u.kind == "channels" for u in units)
    row["left whole"] = sorted({d["class"].rsplit(".", 1)[-1] for d in left})
    row["left whole why"] = sorted({f"{d['class']}: {d['reason']}" for d in left})
    g = torch.Generator().manual_seed(0)
    calib = Samples(torch.randn(8 * batches, 3, size, size, generator=g), torch.randint(0, 10, (8 * batches,), generator=g),
                    [str(i) for i in range(10)], "random")  # fmt: skip
    pruned, plan = prune_model(model, pre, calib, PruneRequest(target_macs=target, criterion="gradient", batches=batches))
    macs0 = count_params_macs(model, pre)[1]
    macs1 = count_params_macs(pruned, pre)[1]
    row["MACs kept"] = round(macs1 / macs0, 3)
    heads = [lp for lp in plan.layers if lp.kind == "heads"]
    row["heads kept"] = f"{sum(len(lp.keep) for lp in heads)}/{sum(lp.size for lp in heads)}"
    row["notes"] = [n for n in plan.notes if "out of reach" in n or n.startswith("left whole")]
    ckpt = save_checkpoint(work / f"{name}.pt", pruned, preprocessing=pre, classes=[str(i) for i in range(10)],
                           provenance_rec=provenance("benchmarks/timm_sweep.py"))  # fmt: skip
    again, _ = load_model(ckpt)  # read_checkpoint: torch.load(weights_only=True)
    x = torch.randn(2, 3, size, size, generator=g)
    with torch.no_grad():
        ref = pruned.eval()(x)
        row["reload"] = bool(torch.allclose(again(x), ref, atol=1e-5 * max(1.0, float(ref.abs().max()))))
    row["export"] = row["validate"] = False
    if validate:
        from edgeconv.export.onnx import export_onnx
        from edgeconv.measure.validate import validate_onnx

        try:
            onnx = export_onnx(ckpt, work / f"{name}.onnx").path
        except Exception as e:  # noqa: BLE001 - is it the pruning, or does the unpruned model fail the same way?
            base = save_checkpoint(work / f"{name}.unpruned.pt", model, preprocessing=pre,
                                   classes=[str(i) for i in range(10)], provenance_rec=provenance("timm_sweep"))  # fmt: skip
            try:
                export_onnx(base, work / f"{name}.unpruned.onnx")
                same = "the unpruned model exports"
            except Exception:  # noqa: BLE001
                same = "the unpruned model fails to export too"
            row["export error"] = f"{str(e).splitlines()[0][:100]}...; {same}"
            row["pass"] = False
            row["seconds"] = round(time.perf_counter() - t0, 1)
            return row
        row["export"] = True
        import numpy as np

        npz = work / f"{name}.val.npz"  # random images in [0, 1] at the model's shape: parity, not accuracy
        rng = np.random.default_rng(0)
        np.savez(npz, x=rng.random((8, 3, size, size), dtype=np.float32), y=rng.integers(0, 10, 8))
        report = validate_onnx(onnx, data=f"npz:{npz}", limit=8, batch=4)
        row["validate"] = report.passed
        if not report.passed:
            row["validate detail"] = [f"{c.name}: {c.detail}" for c in report.checks if c.status == "FAILED"]
    row["pass"] = row["MACs kept"] <= PASS_MACS and row["reload"] and row["export"] and row["validate"]
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def status_line(row: dict) -> str:
    """One line: what was pruned, and what was left whole (the module class) and why."""
    if row.get("error"):
        return f"error: {row['error']}"
    if row.get("export error"):
        return f"export failed: {row['export error']}"
    what = f"{row['head units']} head units ({row['heads kept']} heads kept), {row['channel units']} channel units"
    whole = "; ".join(row["left whole why"])
    return what + (f"; left whole: {whole}" if whole else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-family", type=int, default=2)
    ap.add_argument("--max-params", type=float, default=30e6)
    ap.add_argument("--target-macs", type=float, default=0.5)
    ap.add_argument("--models", default=None, help="comma-separated timm names instead of the registry sweep")
    ap.add_argument("--work", type=Path, default=Path("runs/timm-sweep"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per model")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.one:  # a worker: one model, its row as JSON on the last line of stdout
        import torch

        torch.set_num_threads(1)
        try:
            row = run_one(a.one, a.work, a.target_macs)
        except Exception as e:  # noqa: BLE001 - the sweep records the failure and goes on
            import traceback

            where = traceback.extract_tb(e.__traceback__)[-1]
            msg = str(e).splitlines()[0][:200] if str(e) else ""
            row = {"model": a.one, "error": f"{type(e).__name__}: {msg} ({Path(where.filename).name}:{where.lineno})"}
        print(json.dumps(row))
        return

    import timm
    import torch

    from edgeconv.common.console import console

    if a.models:
        from timm.models import get_arch_name  # noqa: F401 - the registry knows each model's module

        names = [(timm.models._registry._model_to_module.get(n, "?"), n, 0) for n in a.models.split(",")]
    else:
        names = select(a.per_family, a.max_params)
    console.print(f"CPU: {cpu_class()}, {os.cpu_count()} cores, torch {torch.__version__}, timm {timm.__version__}")
    console.print(f"{len(names)} hybrids from {len({f for f, _, _ in names})} timm modules")
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for family, name, params in names:
        cmd = [sys.executable, __file__, "--one", name, "--work", str(a.work), "--target-macs", str(a.target_macs)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env)
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
            err = (r.stderr.strip().splitlines() or ["?"])[-1][:200]
            row = json.loads(lines[-1]) if lines else {"model": name, "error": err}
        except subprocess.TimeoutExpired:
            row = {"model": name, "error": f"over {a.timeout} s"}
        row.update(family=family, params=params)
        rows.append(row)
        verdict = "PASS" if row.get("pass") else "fail"
        line = f"{family:24s} {name:32s} {row.get('MACs kept', '-')!s:6s} {verdict}  {status_line(row)}"
        console.print(line, markup=False, highlight=False)
        if a.json:
            a.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))


def table(rows: list[dict]) -> str:
    head = "| family | model | px | head units | heads kept | channel units | MACs kept | reload | export+validate "
    head += "| left whole |"
    out = [head, "|" + "---|" * 10]
    for r in rows:
        if r.get("error"):
            out.append(f"| {r['family']} | {r['model']} | | | | | | | | error: {r['error']} |")
            continue
        ok = lambda v: "yes" if v else "no"  # noqa: E731
        out.append(
            f"| {r['family']} | {r['model']} | {r['size']} | {r['head units']} | {r['heads kept']} | {r['channel units']} "
            f"| {100 * r['MACs kept']:.1f}% | {ok(r['reload'])} | {ok(r['export'] and r['validate'])} "
            f"| {', '.join(r['left whole']) or '-'} |"
        )
    n, passed = len(rows), sum(bool(r.get("pass")) for r in rows)
    out.append(f"\n{passed}/{n} pass (<= {PASS_MACS:.0%} of the MACs, reload, export, validate)")
    return "\n".join(out)


if __name__ == "__main__":
    main()
