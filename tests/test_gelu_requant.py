"""onnxruntime INT8: a GELU whose output is quantized again runs in its tanh form, and only where that moves no
8-bit code by more than one (edgeconv/quantize/gelu.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper


def dq_gelu_q(
    in_scale: float, in_zero: int | None, out_scale: float, out_zero: int, domain: str = "", codes=TensorProto.UINT8
) -> onnx.ModelProto:
    """`codes` -> DequantizeLinear -> Gelu (exact) -> QuantizeLinear -> uint8 codes (in_zero None: no zero point)."""
    c = lambda name, v, t: helper.make_tensor(name, t, [], [v])  # noqa: E731
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "si", "zi"] if in_zero is not None else ["x", "si"], ["a"]),
        helper.make_node("Gelu", ["a"], ["b"], domain=domain, name="gelu"),
        helper.make_node("QuantizeLinear", ["b", "so", "zo"], ["y"]),
    ]
    if not domain:
        nodes[1].attribute.append(helper.make_attribute("approximate", "none"))
    inits = [
        c("si", in_scale, TensorProto.FLOAT),
        *([c("zi", in_zero, codes)] if in_zero is not None else []),
        c("so", out_scale, TensorProto.FLOAT),
        c("zo", out_zero, TensorProto.UINT8),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", codes, [256])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [256])],
        inits,
    )
    opsets = [helper.make_opsetid("", 20)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(g, opset_imports=opsets)


def run_codes(model: onnx.ModelProto) -> np.ndarray:
    from edgeconv.runtime.onnxrt import session

    codes = np.arange(256, dtype=np.uint8)
    return session(model, level="basic").run(None, {"x": codes})[0].astype(int)


@pytest.mark.parametrize("domain", ["", "com.microsoft"])
def test_requantized_gelu_goes_tanh_and_moves_codes_by_at_most_one_as_recorded(domain):
    """The stem of a conv stage: inputs over +-3.6, output step 0.0147 (a trained hybrid's first GELU)."""
    from edgeconv.quantize.gelu import tanh_where_requantized

    model = dq_gelu_q(0.0283, 128, 0.0147, 12, domain)
    before = run_codes(model)
    rec = tanh_where_requantized(model)
    onnx.checker.check_model(model, full_check=True)
    gelu = model.graph.node[1]
    if domain:
        assert gelu.op_type == "FastGelu"
    else:
        assert helper.get_attribute_value(next(a for a in gelu.attribute if a.name == "approximate")) == b"tanh"
    assert rec["tanh"] == 1 and rec["exact"] == {}
    after = run_codes(model)
    moved = int((after != before).sum())
    assert np.abs(after - before).max() <= 1
    # the record counts the codes that change; onnxruntime's own erf/tanh kernels may round a boundary code
    # differently from float64, so allow one code either way
    recorded = int(rec["layers"]["gelu"]["codes_changed"].split()[0])
    assert abs(moved - recorded) <= 1 and recorded < 256 * 0.05
    assert 0 < rec["layers"]["gelu"]["max_deviation_steps"] < 0.5


def test_gelu_is_kept_exact_where_the_tanh_form_is_half_a_step_away():
    """Mostly negative inputs (down to -3.6) with a narrow output range [-0.17, 0.05]: at x = -2.7 the two forms
    differ by 4.7e-4, more than half of the 0.00086 output step, so the exact form stays."""
    from edgeconv.quantize.gelu import tanh_where_requantized

    model = dq_gelu_q(0.0145, 250, 0.00086, 198)
    rec = tanh_where_requantized(model)
    assert rec["tanh"] == 0 and list(rec["exact"]) == ["gelu"] and "of an output step away" in rec["exact"]["gelu"]
    assert helper.get_attribute_value(model.graph.node[1].attribute[0]) == b"none"


def test_gelu_whose_output_is_used_in_float_stays_exact():
    from edgeconv.quantize.gelu import tanh_where_requantized

    model = dq_gelu_q(0.0283, 128, 0.0147, 12)
    model.graph.output.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [256]))  # float consumer
    rec = tanh_where_requantized(model)
    assert rec["tanh"] == 0 and rec["exact"] == {"gelu": "its output is not only quantized again (per tensor)"}


def test_gelu_read_inside_an_if_branch_stays_exact():
    """A branch reads the GELU's output without naming it as an input of its `If`: that float use counts."""
    from edgeconv.quantize.gelu import tanh_where_requantized

    model = dq_gelu_q(0.0283, 128, 0.0147, 12)
    branch = lambda op: helper.make_graph(  # noqa: E731
        [helper.make_node(op, ["b"], ["r"])], op, [], [helper.make_tensor_value_info("r", TensorProto.FLOAT, [256])]
    )
    g = model.graph
    g.initializer.append(helper.make_tensor("cond", TensorProto.BOOL, [], [True]))
    g.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=branch("Relu"), else_branch=branch("Identity")))
    g.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [256]))
    onnx.checker.check_model(model, full_check=True)
    rec = tanh_where_requantized(model)
    assert rec["tanh"] == 0 and list(rec["exact"]) == ["gelu"]


def test_every_quantizing_consumer_is_checked_not_only_the_finest():
    """Two QuantizeLinear nodes read the GELU: the finer one (0.0008, zero point 0) saturates the negative values
    where the two forms differ most; the other (0.00086, zero point 198, range [-0.17, 0.049]) sees them."""
    from edgeconv.quantize.gelu import tanh_where_requantized

    model = dq_gelu_q(0.0145, 250, 0.0008, 0)
    g = model.graph
    so2 = helper.make_tensor("so2", TensorProto.FLOAT, [], [0.00086])
    g.initializer.extend([so2, helper.make_tensor("zo2", TensorProto.UINT8, [], [198])])
    g.node.append(helper.make_node("QuantizeLinear", ["b", "so2", "zo2"], ["y2"]))
    g.output.append(helper.make_tensor_value_info("y2", TensorProto.UINT8, [256]))
    rec = tanh_where_requantized(model)
    assert rec["tanh"] == 0 and "of an output step away" in rec["exact"]["gelu"]


def test_dequantize_without_zero_point_is_checked_over_the_whole_range():
    """int8 codes with the zero point left out (0, int8 by the tensor's type): the inputs reach -3.6, where the
    tanh form is more than half a step of the narrow output away; the check must not assume uint8 codes 0..255."""
    from edgeconv.quantize.gelu import tanh_where_requantized

    model = dq_gelu_q(0.0283, None, 0.00086, 198, codes=TensorProto.INT8)
    onnx.checker.check_model(model, full_check=True)
    rec = tanh_where_requantized(model)
    assert rec["tanh"] == 0 and "of an output step away" in rec["exact"]["gelu"]


def test_gelu_form_follows_the_option_and_tensorrt_keeps_erf():
    from edgeconv.common.errors import EdgeconvError
    from edgeconv.quantize.ort import Int8Options
    from edgeconv.quantize.targets import resolve_target

    portable, trt = resolve_target(None, "ort"), resolve_target(None, "tensorrt")
    assert Int8Options.for_target(portable).gelu == "tanh"
    assert Int8Options.for_target(portable, gelu="exact").gelu == "exact"
    assert Int8Options.for_target(trt, gelu="tanh").gelu == "exact"  # TensorRT fuses GELU on the GPU itself
    with pytest.raises(EdgeconvError, match="unknown GELU form"):
        Int8Options(gelu="fast")
