"""TensorRT up to the builder call: the symmetric Q/DQ ONNX for explicit quantization, batch profiles, and clear
errors where TensorRT or a GPU is missing (this machine has neither)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeconv.common.errors import EdgeconvError

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def routed_onnx(exported):
    return exported("routed-tiny")


@pytest.fixture(scope="module")
def qdq(routed_onnx, digits_pre):
    from edgeconv.quantize.calibration import load_calibration
    from edgeconv.quantize.tensorrt import prepare_int8_onnx

    return prepare_int8_onnx(onnx.load(str(routed_onnx)), load_calibration(digits_pre))


def _walk(graph):
    from edgeconv.quantize.onnx_graph import subgraph_attrs

    for node in graph.node:
        yield node
        for _, sub in subgraph_attrs(node):
            yield from _walk(sub)


def test_qdq_onnx_is_symmetric_int8_per_channel_and_keeps_ifs(qdq):
    from edgeconv.export.onnx import count_if_nodes
    from edgeconv.quantize.onnx_graph import all_initializers
    from edgeconv.quantize.tensorrt import check_symmetric

    assert count_if_nodes(qdq) == 4
    onnx.checker.check_model(qdq, full_check=True)
    inits = all_initializers(qdq.graph)
    zps = [
        numpy_helper.to_array(inits[n.input[2]])
        for n in _walk(qdq.graph)
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2
    ]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    # Weights are per output channel: some DQ scale is a vector.
    scales = [numpy_helper.to_array(inits[n.input[1]]) for n in _walk(qdq.graph) if n.op_type == "DequantizeLinear"]
    assert any(s.ndim == 1 and s.size > 1 for s in scales)
    # Softmax and q.k are quantized too: TensorRT fuses them on the GPU.
    producers = {o: n.op_type for n in _walk(qdq.graph) for o in n.output}
    assert any(n.op_type == "Softmax" and producers.get(n.input[0]) == "DequantizeLinear" for n in _walk(qdq.graph))
    assert check_symmetric(qdq) > 50


def test_check_symmetric_rejects_the_cpu_uint8_graph(routed_onnx, digits_pre):
    from edgeconv.quantize.calibration import load_calibration
    from edgeconv.quantize.ort import Int8Options, quantize_int8
    from edgeconv.quantize.tensorrt import check_symmetric

    res = quantize_int8(onnx.load(str(routed_onnx)), load_calibration(digits_pre), Int8Options(ops="weights"))
    with pytest.raises(EdgeconvError, match="symmetric INT8"):
        check_symmetric(res.model)


def test_qdq_onnx_runs_in_onnxruntime_within_a_point(qdq, routed_onnx, digits_pre):
    """Measured the way the CPU stand-in is recorded: Q/DQ in float (ORT_ENABLE_BASIC), which cannot saturate;
    a default session would run x86 U8S8 kernels, whose answer depends on the CPU, not on the engine."""
    from edgeconv.data.sources import load_samples
    from edgeconv.quantize.ort import ort_logits, ort_session, top1

    s = load_samples("digits", digits_pre, "test")
    a = top1(ort_logits(ort_session(str(routed_onnx)), s.x.numpy()), s.y.numpy())
    b = top1(ort_logits(ort_session(qdq, level="basic"), s.x.numpy()), s.y.numpy())
    assert a - b <= 1.5


def test_profiles_follow_the_dynamic_batch(routed_onnx):
    from edgeconv.runtime.tensorrt import Profile, profile_for

    p = profile_for(onnx.load(str(routed_onnx)), 1, 8, 32)
    assert p.input_name == "input" and p.shapes() == ((1, 1, 32, 32), (8, 1, 32, 32), (32, 1, 32, 32))
    with pytest.raises(EdgeconvError, match="min <= opt <= max"):
        Profile("input", (1, 32, 32), 4, 2, 8)
    m = onnx.load(str(routed_onnx))
    d = m.graph.input[0].type.tensor_type.shape.dim[0]
    d.Clear()
    d.dim_value = 1
    with pytest.raises(EdgeconvError, match="static batch of 1"):
        profile_for(m, 1, 8, 32)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_engine_without_tensorrt_is_one_line_with_the_hint_and_no_output(routed_onnx, tmp_path):
    from typer.testing import CliRunner

    from edgeconv.cli import app

    out = tmp_path / "m.engine"
    r = CliRunner().invoke(app, ["quantize", str(routed_onnx), "--int8", "-b", "tensorrt", "-o", str(out)])
    assert isinstance(r.exception, EdgeconvError)
    msg = str(r.exception)
    assert "TensorRT" in msg and "pypi.nvidia.com" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_no_gpu_is_a_clear_error():
    from edgeconv.runtime.tensorrt import require_gpu

    if importlib.util.find_spec("cuda") is None:
        pytest.skip("cuda-python not installed")
    try:
        n = require_gpu()
    except EdgeconvError as e:
        assert "no usable NVIDIA GPU" in str(e)
    else:
        assert n >= 1


def test_tensorrt_ready_onnx_is_written_without_tensorrt(routed_onnx, tmp_path):
    from typer.testing import CliRunner

    from edgeconv.cli import app

    out = tmp_path / "m.trt.int8.onnx"
    r = CliRunner().invoke(app, ["quantize", str(routed_onnx), "--int8", "-b", "tensorrt", "-o", str(out)])
    assert r.exit_code == 0, r.output
    rec = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["edgeconv.quantization"])
    assert rec["backend"] == "tensorrt" and rec["per_channel"] is True and rec["activations"] == "int8 symmetric"
    assert rec["tensorrt"]["profile"] == {"input": "input", "min": 1, "opt": 8, "max": 32}
    assert rec["tensorrt"]["verified_on_gpu"] is False
    assert rec["accuracy"]["drop"] <= 1.5 and rec["calibration"]["size"] == 100
    assert rec["target"] == "tensorrt" and "cannot saturate" in rec["accuracy"]["runtime"]
    assert "trtexec" in r.output
