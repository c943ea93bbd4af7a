"""`edgeconv bench`: rows measured on the same data, unavailable backends as rows, reports, compare.

Small iteration counts only: these tests check what is measured and written, never how fast anything is.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeconv.common.errors import EdgeconvError
from edgeconv.measure import results as report
from edgeconv.measure.bench import BenchConfig, latency_stats, measure, run_bench
from edgeconv.measure.tables import pareto_front

FAST = dict(warmup=1, iters=3, limit=60, threads=1)


@pytest.fixture(scope="module")
def ckpt(trained) -> Path:
    return trained("routed-tiny", 12)


@pytest.fixture(scope="module")
def onnx_fp32(ckpt, cache_dir) -> Path:
    from edgeconv.export.onnx import export_onnx

    out = cache_dir / f"{ckpt.stem}.bench.onnx"
    if not out.exists():
        export_onnx(ckpt, out)
    return out


@pytest.fixture(scope="module")
def quantized(ckpt, onnx_fp32, cache_dir) -> dict:
    """INT8 ONNX (onnxruntime Q/DQ) and, with the tflite extra, an FP32 TFLite, made by `edgeconv.quantize`."""
    from edgeconv.quantize import QuantizeRequest, quantize

    out = {"int8": cache_dir / f"{ckpt.stem}.bench.int8.onnx", "tflite": cache_dir / f"{ckpt.stem}.bench.tflite"}
    if not out["int8"].exists():
        quantize(QuantizeRequest(model=onnx_fp32, out=out["int8"], precision="int8", backend="ort", calib_limit=64))
    try:
        import ai_edge_litert  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError:
        out.pop("tflite")
        return out
    if not out["tflite"].exists():
        quantize(QuantizeRequest(model=ckpt, out=out["tflite"], precision="fp32", backend="tflite"))
    return out


def by(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def test_checkpoint_rows_and_unavailable_gpu_rows(ckpt):
    res = run_bench([ckpt], BenchConfig(batches=[1, 4], devices=["cpu", "cuda"], **FAST))
    rows = res["rows"]
    assert [(r["device"], r["batch"]) for r in rows] == [("cpu", 1), ("cpu", 4), ("cuda", 1), ("cuda", 4)]
    for r in by(rows, device="cpu"):
        assert r["status"] == "ok" and r["n"] == 60
        assert r["agree"] == 100.0 and r["delta_top1"] == 0.0  # the checkpoint is its own float reference
        assert r["top1"] == pytest.approx(res["reference"]["top1"])
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["params"] > 0 and r["macs"] > r["params"]
        assert 0.0 <= r["attn_share"] <= 100.0 and set(r["routing"]) == {"blocks.0", "blocks.1"}
    import torch

    if not torch.cuda.is_available():
        for r in by(rows, device="cuda"):
            assert r["status"] == "unavailable" and "CUDA" in r["reason"]
    assert res["data"]["source"] == "digits:test" and res["data"]["n"] == 60
    assert res["settings"]["iters"] == 3 and "perf_counter_ns" in res["settings"]["clock"]


@pytest.mark.slow
def test_onnx_rows_agree_with_the_checkpoint(ckpt, onnx_fp32):
    res = run_bench([ckpt, onnx_fp32], BenchConfig(batches=[1, 8], devices=["cpu", "cuda"], **FAST))
    assert res["reference"]["path"] == str(ckpt)
    ort = by(res["rows"], model=onnx_fp32.name, device="cpu")
    assert [r["backend"] for r in ort] == ["ort:cpu", "ort:cpu"]
    torch_b1 = by(res["rows"], model=ckpt.name, batch=1)[0]
    for r in ort:
        assert r["status"] == "ok" and r["precision"] == "fp32"
        assert r["agree"] >= 98.0 and abs(r["delta_top1"]) <= 2.0
        assert r["macs"] == torch_b1["macs"]  # found through the source hash in the ONNX metadata
    # the branch each input took, read from the ONNX graph's own router comparison, matches PyTorch's decisions
    assert ort[0]["attn_share"] == pytest.approx(torch_b1["attn_share"], abs=2.0)
    gpu = by(res["rows"], model=onnx_fp32.name, device="cuda")
    assert {r["backend"] for r in gpu} == {"ort:cuda", "ort:tensorrt", "tensorrt"}
    import onnxruntime as ort_mod

    if "CUDAExecutionProvider" not in ort_mod.get_available_providers():
        assert all(r["status"] == "unavailable" and r["reason"] for r in gpu)


@pytest.mark.slow
def test_cli_writes_every_report_and_compares(ckpt, onnx_fp32, tmp_path, monkeypatch):
    from edgeconv.cli import app
    from edgeconv.common.console import console

    monkeypatch.setattr(console, "width", 240)  # the table is wide; CliRunner's default terminal is 80 columns

    j, c, m, p = (tmp_path / f"b.{s}" for s in ("json", "csv", "md", "png"))
    args = [
        "bench",
        str(ckpt),
        str(onnx_fp32),
        "--batch",
        "1,2",
        "--warmup",
        "1",
        "--iters",
        "3",
        "--limit",
        "40",
        "--threads",
        "1",
    ]
    r = CliRunner().invoke(app, [*args, "--json", str(j), "--csv", str(c), "--md", str(m), "--plot", str(p)])
    assert r.exit_code == 0, r.output
    data = json.loads(j.read_text())
    assert len(data["rows"]) == 4 and all(row["status"] == "ok" for row in data["rows"])
    assert data["settings"]["threads"] == 1
    with c.open() as f:
        csv_rows = list(csv.DictReader(f))
    assert [row["backend"] for row in csv_rows] == ["torch", "torch", "ort:cpu", "ort:cpu"]
    md = m.read_text()
    assert md.count("\n| ") >= 5 and "p90/p50" in md and "perf_counter_ns" in md
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "p90/p50" in r.output
    r2 = CliRunner().invoke(app, [*args, "--compare", str(j)])
    assert r2.exit_code == 0, r2.output
    assert "within" in r2.output and "compared with" in r2.output


def test_unrunnable_backend_is_a_row_not_a_failure(ckpt):
    res = run_bench([ckpt], BenchConfig(backend="tflite", **FAST))
    (row,) = res["rows"]
    assert row["status"] == "unavailable" and "does not run .pt" in row["reason"]


def test_jetson_device_on_this_machine_is_refused_clearly(ckpt):
    from edgeconv.runtime.devices import jetson_info

    if jetson_info()["is_jetson"]:
        pytest.skip("this machine is a Jetson")
    with pytest.raises(EdgeconvError, match="not a Jetson"):
        run_bench([ckpt], BenchConfig(devices=["jetson"], **FAST))


def test_bad_inputs_are_one_line_errors(ckpt, tmp_path):
    with pytest.raises(EdgeconvError, match="no such file"):
        run_bench([tmp_path / "missing.onnx"], BenchConfig(**FAST))
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not an onnx file")
    with pytest.raises(EdgeconvError, match="not a readable ONNX|a text file, not an ONNX model"):
        run_bench([bogus], BenchConfig(**FAST))
    with pytest.raises(EdgeconvError, match="unknown artifact type"):
        run_bench([tmp_path / "x.txt"], BenchConfig(**FAST)) if (tmp_path / "x.txt").write_text("x") else None
    with pytest.raises(EdgeconvError, match="unknown device"):
        run_bench([ckpt], BenchConfig(devices=["tpu"], **FAST))
    from edgeconv.cli import app

    r = CliRunner().invoke(app, ["bench", str(ckpt), "--batch", "1,x"])
    assert isinstance(r.exception, EdgeconvError) and "--batch" in str(r.exception)
    r = CliRunner().invoke(app, ["bench", str(ckpt), "--compare", str(bogus)])
    assert isinstance(r.exception, EdgeconvError) and "not a bench JSON" in str(r.exception)


def test_measure_pads_the_last_batch_and_records_tegrastats(tmp_path):
    """A runner that only accepts its fixed batch still sees every sample once; a sampler's summary lands in the
    row with energy per image."""

    class FixedBatchRunner:
        def __init__(self):
            self.calls = []

        def run(self, x):
            assert x.shape[0] == 4
            self.calls.append(x.shape[0])
            return np.eye(10, dtype=np.float32)[(x[:, 0, 0, 0] > 0).astype(int)]

    class Sampler:
        def start(self):
            return self

        def stop(self):
            pass

        def summary(self):
            return {"samples": 5, "power_mw_mean": 5000.0, "power_source": "VDD_IN"}

    x = np.zeros((10, 1, 2, 2), np.float32)
    x[::2] = 1.0
    y = (x[:, 0, 0, 0] > 0).astype(int)
    runner = FixedBatchRunner()
    row = measure(runner, x, y, batch=4, warmup=2, iters=5, ref_pred=y, ref_top1=100.0, sampler_factory=Sampler)
    assert row["n"] == 10 and row["top1"] == 100.0 and row["agree"] == 100.0
    assert len(runner.calls) == 3 + 2 + 5  # ceil(10/4) accuracy calls, warm-up, timed
    assert row["tegrastats"]["power_source"] == "VDD_IN"
    assert row["energy_mj_per_img"] == pytest.approx(5000.0 * row["mean_ms"] / 4 / 1e3)


def test_latency_stats_and_pareto_front():
    st = latency_stats([1_000_000] * 8 + [2_000_000, 10_000_000], batch=2)
    assert st["p50_ms"] == 1.0 and st["p90_ms"] == pytest.approx(2.8) and st["p99_ms"] > st["p90_ms"]
    assert st["throughput_ips"] == pytest.approx(2 * 10 / (20e-3))
    pts = [(1.0, 90.0), (2.0, 95.0), (3.0, 94.0), (0.5, 80.0), (2.0, 96.0)]
    assert pareto_front(pts) == [3, 0, 4]


def test_compare_flags_changes_beyond_the_spread():
    def row(p50, p90, top1=99.0):
        return {
            "model": "m",
            "backend": "ort:cpu",
            "device": "cpu",
            "precision": "fp32",
            "batch": 1,
            "status": "ok",
            "p50_ms": p50,
            "p90_ms": p90,
            "top1": top1,
        }

    base = {"rows": [row(1.0, 1.2)]}
    same = report.compare({"rows": [row(1.1, 1.3)]}, base)[0]
    assert same["within spread"] == "yes" and same["Δp50 %"] == pytest.approx(10.0)
    slower = report.compare({"rows": [row(2.0, 2.1, top1=98.0)]}, base)[0]
    assert slower["within spread"] == "NO" and slower["Δtop1"] == pytest.approx(-1.0)
    assert report.compare({"rows": [{**row(1.0, 1.1), "batch": 8}]}, base) == []


@pytest.mark.slow
def test_one_table_over_checkpoint_onnx_int8_and_tflite(ckpt, onnx_fp32, quantized):
    models = [ckpt, onnx_fp32, *quantized.values()]
    res = run_bench(models, BenchConfig(batches=[1, 2], **FAST))
    rows = res["rows"]
    assert {r["model"] for r in rows} == {m.name for m in models}
    macs = {r["macs"] for r in rows}
    assert len(macs) == 1  # every artifact traced back to the same source checkpoint
    (int8_b1,) = by(rows, model=quantized["int8"].name, batch=1)
    assert int8_b1["status"] == "ok" and int8_b1["precision"] == "int8" and int8_b1["agree"] >= 95.0
    assert int8_b1["size_kib"] < by(rows, model=onnx_fp32.name, batch=1)[0]["size_kib"]
    if "tflite" in quantized:
        (t1,) = by(rows, model=quantized["tflite"].name, batch=1)
        assert t1["status"] == "ok" and t1["backend"] == "tflite" and t1["agree"] >= 99.0
        (t2,) = by(rows, model=quantized["tflite"].name, batch=2)
        assert t2["status"] == "unavailable" and "fixed batch of 1" in t2["reason"]


def test_folder_with_some_classes_is_scored_in_the_models_class_order(ckpt, tmp_path):
    """A folder holding only classes 3 and 7: labels must index the model's ten classes, not the folder's two."""
    import shutil

    from edgeconv.data.sources import default_calib_dir

    for c in ("3", "7"):
        shutil.copytree(default_calib_dir() / c, tmp_path / c)
    res = run_bench(
        [ckpt],
        BenchConfig(batches=[1], devices=["cpu"], data=f"imagefolder:{tmp_path}", split="all", **{**FAST, "limit": None}),
    )
    # Read as classes 0 and 1 the trained model would score near 0%; in its own order it recognises them.
    assert res["reference"]["top1"] >= 80.0
