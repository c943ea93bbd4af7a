"""The model card: what an edgeconv artifact says about itself, with one reader and one writer for every format.

Where the card lives depends on the format (`formats.py`):

- a checkpoint (`.pt`): the checkpoint dict itself (`family`, `config`, `classes`, `preprocessing`, `provenance`),
  read with `weights_only=True` by `artifacts.read_checkpoint`;
- an ONNX model: its `metadata_props` (string values; the keys in `JSON_KEYS` hold JSON text), the quantization
  record of a quantized file under `QUANTIZATION_KEY`;
- a TFLite flatbuffer or a TensorRT engine: a `<file>.json` sidecar, which is the quantization record.

`read_card(path)` gives the same `ModelCard` for all of them; `info`, `bench`, `validate` and the pipeline read
precision, target, preprocessing and recorded sources from it, never from file names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconv.artifacts.formats import format_of, sidecar_path, sidecar_paths
from edgeconv.common.errors import EdgeconvError

METADATA_FORMAT = "edgeconv.onnx/1"  # the `edgeconv.format` prop of an exported ONNX
FORMAT_KEY = "edgeconv.format"
RECORD_FORMAT = "edgeconv.quantization/1"  # the `format` field of a quantization record
QUANTIZATION_KEY = "edgeconv.quantization"  # the quantization record: an ONNX metadata key, or the sidecar itself
JSON_KEYS = ("config", "classes", "preprocessing", "provenance", QUANTIZATION_KEY)  # props stored as JSON text
PRECISIONS = ("fp32", "fp16", "int8")
MODEL_KEYS = ("family", "variant", "config", "classes", "preprocessing")  # what a sidecar copies from its source
_INT8_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeLinear",
}


@dataclass
class ModelCard:
    """What one artifact records about itself (fields are None / empty where the file does not say)."""

    path: Path
    format: str  # a `formats.FORMATS` name
    precision: str = "?"  # fp32 | fp16 | int8 (| "engine" for a serialized TensorRT plan)
    family: str | None = None
    variant: str | None = None
    config: dict = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    preprocessing: dict | None = None
    routing: str | None = None
    provenance: dict = field(default_factory=dict)
    quantization: dict | None = None  # the quantization record of a quantized artifact
    props: dict = field(default_factory=dict)  # everything the file stores, decoded (ONNX props or sidecar)

    @property
    def target(self) -> str | None:
        return (self.quantization or {}).get("target")

    def sources(self) -> list[tuple[str | None, str | None]]:
        """(path, sha256) of every file this artifact was made from, nearest first: the quantization record's
        source (and the checkpoint a TFLite conversion read), then the checkpoint an ONNX was exported from."""
        out: list[tuple[str | None, str | None]] = []
        src = (self.quantization or {}).get("source") or {}
        if isinstance(src, dict):
            out.append((src.get("path"), src.get("sha256")))
            conv = src.get("converted_from")
            if isinstance(conv, dict):
                out.append((conv.get("path"), conv.get("sha256")))
        if self.props.get("source_path") or self.props.get("source_sha256"):
            out.append((self.props.get("source_path") or None, self.props.get("source_sha256") or None))
        clean = [(p if isinstance(p, str) and p else None, h if isinstance(h, str) and h else None) for p, h in out]
        return [pair for pair in clean if pair != (None, None)]


# ----------------------------------------------------------------------------------------------- ONNX props
def decode_props(proto) -> dict[str, Any]:
    """An ONNX model's metadata_props as a dict: JSON_KEYS decoded, every other value the string it is."""
    out: dict[str, Any] = {}
    for prop in proto.metadata_props:
        val: Any = prop.value
        if prop.key in JSON_KEYS:
            try:
                val = json.loads(prop.value)
            except json.JSONDecodeError:
                pass
        out[prop.key] = val
    return out


def encode_props(proto, meta: dict[str, Any]) -> None:
    """Set metadata props (replacing keys already present); non-string values are stored as JSON."""
    existing = {p.key: p for p in proto.metadata_props}
    for k, v in meta.items():
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        if k in existing:
            existing[k].value = text
        else:
            prop = proto.metadata_props.add()
            prop.key, prop.value = k, text


def copy_props(src, dst) -> None:
    """Give `dst` (a ModelProto) exactly the metadata props of `src` (a quantized graph keeps its float card)."""
    import copy

    del dst.metadata_props[:]
    dst.metadata_props.extend(copy.deepcopy(src.metadata_props))


def set_quantization(proto, record: dict) -> None:
    """Store a quantization record in an ONNX model's props (the one writer of `QUANTIZATION_KEY`)."""
    encode_props(proto, {QUANTIZATION_KEY: json.dumps(record, default=str)})


def quantization_of(props: dict) -> dict | None:
    """The quantization record in decoded props, or None (also for a record that is not a JSON object)."""
    rec = props.get(QUANTIZATION_KEY)
    return rec if isinstance(rec, dict) else None


def onnx_precision(proto, props: dict | None = None) -> str:
    """The recorded precision, else what the graph holds: int8 when any subgraph holds quantize/dequantize or
    integer ops, fp16 when weights are half precision, else fp32."""
    import onnx

    from edgeconv.artifacts.graphwalk import initializers, nodes

    props = decode_props(proto) if props is None else props
    rec = quantization_of(props)
    if rec and rec.get("precision") in PRECISIONS:
        return rec["precision"]
    if {n.op_type for n in nodes(proto.graph)} & _INT8_OPS:
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in initializers(proto.graph)):
        return "fp16"
    return "fp32"


def load_onnx_proto(path: str | Path, *, external_data: bool = True):
    """An ONNX file as a ModelProto, or one readable error."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise EdgeconvError(f"no such file: {p}")
    try:
        proto = onnx.load_model(str(p), load_external_data=external_data)
    except Exception as e:  # noqa: BLE001 - truncated, not protobuf, missing external data: one user error
        from edgeconv.artifacts.formats import not_a

        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeconvError(not_a(p, "onnx") or f"{p}: not a readable ONNX model ({first[:200]})")
    if not proto.HasField("graph") and proto.ir_version == 0:  # an empty file parses as an empty message
        raise EdgeconvError(f"{p}: not an ONNX model ({'an empty file' if p.stat().st_size == 0 else 'no graph'})")
    if not proto.graph.output:
        raise EdgeconvError(f"{p}: the graph has no outputs, so there is nothing to run or compare")
    if not external_data:
        _check_external_locations(proto, p)
    return proto


def _check_external_locations(proto, p: Path) -> None:
    """External weights must be files inside the model's folder: checked without reading them (a full load, with
    onnx's own check, reads them all)."""
    from edgeconv.artifacts.graphwalk import initializers

    base = p.resolve().parent
    for t in initializers(proto.graph):
        if t.data_location != 1:  # TensorProto.EXTERNAL
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (base / loc).resolve()
        if not loc or Path(loc).is_absolute() or not target.is_relative_to(base):
            raise EdgeconvError(f"{p}: external data of {t.name!r} points outside the model's folder ({loc!r})")
        if not target.is_file():
            raise EdgeconvError(f"{p}: external data file of {t.name!r} is missing ({loc!r})")


def read_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """The decoded metadata props of an ONNX file ({} for an ONNX file edgeconv did not write)."""
    return decode_props(load_onnx_proto(onnx_path, external_data=False))


# ----------------------------------------------------------------------------------------------- sidecars
def read_sidecar(path: str | Path) -> dict | None:
    """The `<file>.json` record of a TFLite/engine file (or the older `<stem>.json`), None when there is none."""
    for side in sidecar_paths(path):
        if not side.is_file():
            continue
        try:
            rec = json.loads(side.read_text())
        except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
            raise EdgeconvError(f"{side}: unreadable record ({str(e).splitlines()[0][:160]})")
        if not isinstance(rec, dict):
            raise EdgeconvError(f"{side}: the record is not a JSON object")
        return rec
    return None


def model_fields(meta: dict) -> dict:
    """The source's card fields (decoded props or checkpoint meta) that a sidecar record carries because its file
    cannot: family, variant, config, classes, preprocessing (so `bench` and `info` read them from the record)."""
    return {k: meta[k] for k in MODEL_KEYS if meta.get(k) not in (None, "", {}, [])}


def write_sidecar(path: str | Path, record: dict) -> Path:
    """Write the `<file>.json` record of a TFLite/engine file atomically; returns its path."""
    from edgeconv.artifacts import atomic_write_json

    side = sidecar_path(path)
    atomic_write_json(side, record)
    return side


# ----------------------------------------------------------------------------------------------- the one reader
def read_card(path: str | Path, proto=None) -> ModelCard:
    """The card of any artifact edgeconv knows (one readable error for a missing, unknown or broken file).
    `proto`: an already loaded ONNX ModelProto of `path` (saves a second parse)."""
    p = Path(path)
    fmt = format_of(p)
    if not p.exists():
        raise EdgeconvError(f"no such file: {p}")
    if fmt.name == "checkpoint":
        from edgeconv.artifacts import read_checkpoint

        ck = read_checkpoint(p)
        cfg = dict(ck["config"])
        return ModelCard(
            p,
            fmt.name,
            precision="fp32",
            family=ck["family"],
            variant=cfg.get("variant"),
            config=cfg,
            classes=[str(c) for c in ck["classes"]],
            preprocessing=ck["preprocessing"],
            routing=None,
            provenance=dict(ck.get("provenance") or {}),
            props={},
        )
    if fmt.name == "onnx":
        proto = load_onnx_proto(p, external_data=False) if proto is None else proto
        props = decode_props(proto)
        card = _card_from(p, fmt.name, props, quantization_of(props))
        card.precision = onnx_precision(proto, props)
        return card
    rec = read_sidecar(p) if fmt.sidecar else None
    card = _card_from(p, fmt.name, rec or {}, rec if rec and rec.get("precision") else None)
    if rec and rec.get("precision") in PRECISIONS:
        card.precision = rec["precision"]
    return card


def _card_from(path: Path, fmt: str, props: dict, rec: dict | None) -> ModelCard:
    src = (rec or {}).get("source") or {}
    cfg = props.get("config") if isinstance(props.get("config"), dict) else {}
    pre = props.get("preprocessing")
    if not isinstance(pre, dict) or not pre:
        pre = (rec or {}).get("preprocessing")
    classes = props.get("classes") if isinstance(props.get("classes"), list) else (rec or {}).get("classes")
    return ModelCard(
        path,
        fmt,
        family=props.get("family") or (src.get("family") if isinstance(src, dict) else None) or cfg.get("family"),
        variant=props.get("variant") or (src.get("variant") if isinstance(src, dict) else None),
        config=cfg,
        classes=[str(c) for c in classes] if isinstance(classes, list) else [],
        preprocessing=pre if isinstance(pre, dict) and pre else None,
        routing=props.get("routing") or (rec or {}).get("routing"),
        provenance=props.get("provenance") if isinstance(props.get("provenance"), dict) else {},
        quantization=rec,
        props=props,
    )
