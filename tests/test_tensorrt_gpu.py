"""TensorRT engines on a GPU: FP16 and explicit-quantization INT8 engines build, reuse their timing cache, run
through cuda-python buffers at several batch sizes, and stay within a point of float. Skipped unless `tensorrt`
imports and a CUDA device is present (TensorRT cannot be installed from PyPI alone)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

trt = pytest.importorskip("tensorrt")
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    from edgeconv.common.errors import EdgeconvError
    from edgeconv.runtime.tensorrt import require_gpu

    try:
        return require_gpu()
    except EdgeconvError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def routed_onnx(exported):
    return exported("routed-tiny")


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_builds_runs_and_keeps_accuracy(precision, gpu, routed_onnx, tmp_path):
    from edgeconv.quantize import QuantizeRequest, quantize

    out = tmp_path / f"m.{precision}.engine"
    rep = quantize(QuantizeRequest(routed_onnx, out, precision, backend="tensorrt"))
    rec = json.loads((tmp_path / f"{out.name}.json").read_text())
    assert rec["tensorrt"]["verified_on_gpu"] is True
    assert rec["accuracy"]["runtime"] == "TensorRT" and rec["accuracy"]["drop"] <= 1.0
    cache = tmp_path / f"{out.name}.timing.cache"
    assert cache.stat().st_size > 0
    assert rep.rows[0]["profile"] == "1/8/32"


def test_runner_handles_every_batch_in_the_profile(gpu, routed_onnx, digits_pre):
    from edgeconv.data.sources import load_samples
    from edgeconv.quantize.ort import convert_fp16, ort_logits, ort_session
    from edgeconv.runtime.tensorrt import TensorRTRunner, build_engine, profile_for

    float_model = onnx.load(str(routed_onnx))
    half = convert_fp16(float_model)
    prof = profile_for(half, 1, 4, 16)
    engine = build_engine(half.SerializeToString(), prof, "fp16")
    x = load_samples("digits", digits_pre, "test").x.numpy()[:40]
    ref = ort_logits(ort_session(float_model), x)
    with TensorRTRunner(engine, prof) as run:
        for b in (1, 3, 16):
            got = run(x, batch=b)
            assert got.shape == ref.shape
            assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
            assert np.abs(got - ref).max() < 0.1
