"""The model card: one reader for every format, sources with their hashes, and each metadata key, sidecar name and
session construction spelled in exactly one module."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgeconv.artifacts import file_sha256
from edgeconv.artifacts.card import (
    QUANTIZATION_KEY,
    decode_props,
    encode_props,
    model_fields,
    read_card,
    read_sidecar,
    write_sidecar,
)
from edgeconv.common.errors import EdgeconvError

PACKAGE = Path(__file__).resolve().parents[1] / "edgeconv"


def test_checkpoint_and_exported_onnx_tell_the_same_card(trained, exported):
    ck, onnx_path = trained("routed-tiny"), exported("routed-tiny")
    a, b = read_card(ck), read_card(onnx_path)
    assert (a.format, b.format) == ("checkpoint", "onnx")
    assert a.family == b.family == "routed" and a.classes == b.classes == [str(i) for i in range(10)]
    assert a.preprocessing == b.preprocessing and a.config == b.config
    assert (a.precision, b.precision) == ("fp32", "fp32") and b.routing == "gated" and b.quantization is None
    assert b.sources() == [(str(ck.resolve()), file_sha256(ck))]


def test_an_int8_onnx_card_names_its_record_target_and_both_sources(trained, exported, tmp_path):
    from edgeconv.quantize import QuantizeRequest, quantize

    float_onnx = exported("routed-tiny")
    out = tmp_path / "m.int8.onnx"
    quantize(QuantizeRequest(float_onnx, out, "int8", "ort", ops="weights", command="test"))
    card = read_card(out)
    assert card.precision == "int8" and card.target == "portable" and card.quantization["backend"] == "ort"
    assert card.preprocessing == read_card(float_onnx).preprocessing  # the float card travels with the graph
    # nearest source first: the float ONNX it was quantized from, then the checkpoint that was exported
    assert card.sources() == [
        (str(float_onnx.resolve()), file_sha256(float_onnx)),
        (str(trained("routed-tiny").resolve()), file_sha256(trained("routed-tiny"))),
    ]


def test_precision_never_comes_from_the_file_name(exported, tmp_path):
    """A float graph named like an INT8 file is still fp32 (the card reads the graph and its record)."""
    misleading = tmp_path / "model.int8.onnx"
    misleading.write_bytes(exported("routed-tiny").read_bytes())
    assert read_card(misleading).precision == "fp32"


def test_sidecar_formats_carry_the_model_fields(tmp_path, digits_pre):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not a real engine")
    assert read_card(engine).precision == "?" and read_card(engine).quantization is None  # no record: says so
    meta = {
        "family": "hvt",
        "variant": "tiny",
        "classes": ["a", "b"],
        "preprocessing": digits_pre,
        "config": {},
        "routing": "none",
    }
    rec = {
        "precision": "int8",
        "target": "tensorrt",
        "source": {"path": "/x/m.onnx", "sha256": "ab" * 32},
        **model_fields(meta),
    }
    assert "config" not in rec and "routing" not in rec  # empty and non-card fields are not copied
    side = write_sidecar(engine, rec)
    assert side == tmp_path / "m.engine.json" and read_sidecar(engine) == rec
    card = read_card(engine)
    assert (card.precision, card.target, card.family, card.classes) == ("int8", "tensorrt", "hvt", ["a", "b"])
    assert card.preprocessing == digits_pre and card.sources() == [("/x/m.onnx", "ab" * 32)]


@pytest.mark.parametrize("text, match", [("{not json", "unreadable record"), ("[1, 2]", "not a JSON object")])
def test_a_broken_sidecar_is_one_readable_error(tmp_path, text, match):
    tfl = tmp_path / "m.tflite"
    tfl.write_bytes(b"x")
    (tmp_path / "m.tflite.json").write_text(text)
    with pytest.raises(EdgeconvError, match=match):
        read_card(tfl)


def test_props_round_trip_json_keys_only():
    import onnx

    proto = onnx.ModelProto()
    encode_props(proto, {"classes": ["0", "1"], "opset": "18", QUANTIZATION_KEY: {"precision": "fp16"}})
    encode_props(proto, {"opset": "19"})  # replaces, does not duplicate
    props = decode_props(proto)
    assert props == {"classes": ["0", "1"], "opset": "19", QUANTIZATION_KEY: {"precision": "fp16"}}
    assert len(proto.metadata_props) == 3


def test_unknown_and_missing_files_are_refused(tmp_path):
    with pytest.raises(EdgeconvError, match="unknown artifact type"):
        read_card(tmp_path / "m.bin")
    with pytest.raises(EdgeconvError, match="no such file"):
        read_card(tmp_path / "m.onnx")


# --------------------------------------------------------------------------- each spelling in exactly one module
def _modules_with(pattern: str) -> set[str]:
    rx = re.compile(pattern)
    return {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if rx.search(p.read_text())}


@pytest.mark.parametrize(
    "pattern, home",
    [
        (r"[\"']edgeconv\.quantization[\"']", "artifacts/card.py"),  # the quantization record's key
        (r"[\"']edgeconv\.format[\"']", "artifacts/card.py"),
        (r"\.metadata_props\b", "artifacts/card.py"),  # every read and write of ONNX props
        (r"InferenceSession\(", "runtime/onnxrt.py"),  # session construction
        (r"[\"']\.(onnx|tflite|pt|pth|ckpt|engine|plan)[\"']", "artifacts/formats.py"),  # suffixes
        (r"[\"']\.json[\"']", "artifacts/formats.py"),  # the sidecar name
    ],
)
def test_each_spelling_lives_in_one_module(pattern, home):
    assert _modules_with(pattern) == {home}


def test_record_travels_as_json_in_the_onnx_props(exported, tmp_path):
    """What quantize writes under the key is the JSON object `read_card` returns (no second encoding)."""
    import onnx

    from edgeconv.artifacts.card import set_quantization

    proto = onnx.load(str(exported("routed-tiny")))
    set_quantization(proto, {"precision": "int8", "target": "portable"})
    raw = {p.key: p.value for p in proto.metadata_props}[QUANTIZATION_KEY]
    assert json.loads(raw) == {"precision": "int8", "target": "portable"}
