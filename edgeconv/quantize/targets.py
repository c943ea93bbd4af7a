"""INT8 targets: which CPUs (or engine) an INT8 file is made for, and what that changes in the quantized weights.

The default, `portable`, gives the same answer on every CPU class: weights are quantized to 7 bits (|w| <= 64,
onnxruntime's `reduce_range`) with one scale per output channel, so no pair of uint8 x int8 products can leave
int16 (255 * 64 * 2 = 32640 <= 32767) on the AVX2 / AVX-512 CPUs without VNNI whose kernels saturate, and the
per-channel scales win back most of the lost bit. The U8S8 kernels stay in use everywhere (U8U8 - uint8 weights -
would also be exact, but gives up the U8S8 kernels VNNI accelerates). `x86-vnni` and `arm64` keep full 8-bit
weights: exact on those CPUs, wrong on the others. `tensorrt` is the symmetric Q/DQ graph TensorRT builds engines
from. One row per target; a new target is one row here.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeconv.common.errors import EdgeconvError


@dataclass(frozen=True)
class Int8Target:
    name: str
    backend: str  # the quantize backend that writes it
    reduce_range: bool  # 7-bit weights (|w| <= 64)
    per_channel: bool | None  # forced on (True) or the user's choice (None)
    symmetric_activations: bool
    families: tuple[str, ...]  # CPU families it is made for ("x86", "arm"); () = not a CPU target
    description: str

    def mismatch(self, cpu: dict) -> str | None:
        """Why this file may not give its recorded answers on a CPU of INT8 class `cpu` (hostcpu.int8_class), or
        None when the CPU is one the target is made for."""
        if not self.families:
            return (
                f"quantized for {self.name}: this CPU ({cpu['name']}) runs it only as a stand-in; "
                "the engine's numbers come from the device"
            )
        if cpu["family"] == "x86" and cpu.get("u8s8_saturates") and not self.reduce_range:
            return (
                f"quantized for target {self.name} (full 8-bit weights), but this CPU ({cpu['name']}) has no "
                "VNNI: onnxruntime's uint8 x int8 kernels saturate on it and top-1 can collapse; re-quantize "
                "with --target portable"
            )
        if cpu["family"] not in self.families:
            exact = (
                "its integer kernels accumulate in int32, so it computes what it recorded; only its speed was "
                "tuned for the other CPU"
                if cpu.get("u8s8_saturates") is False
                else "validate it here"
            )
            return f"quantized for target {self.name}, running on a {cpu['family']} CPU ({cpu['name']}): {exact}"
        return None


TARGETS: dict[str, Int8Target] = {
    t.name: t
    for t in (
        Int8Target(
            "portable",
            "ort",
            True,
            True,
            False,
            ("x86", "arm"),
            "every CPU: 7-bit per-channel weights; cannot saturate on x86 without VNNI",
        ),
        Int8Target(
            "x86-vnni",
            "ort",
            False,
            None,
            False,
            ("x86",),
            "x86 with AVX-512 VNNI, AVX-VNNI or AMX: full 8-bit weights (wrong on AVX2-only CPUs)",
        ),
        Int8Target(
            "arm64",
            "ort",
            False,
            None,
            False,
            ("arm",),
            "ARM64 (NEON / dot-product): full 8-bit weights (wrong on x86 CPUs without VNNI)",
        ),
        Int8Target(
            "tensorrt",
            "tensorrt",
            False,
            True,
            True,
            (),
            "TensorRT explicit quantization: symmetric INT8 Q/DQ, per-channel weights",
        ),
    )
}

DEFAULT_TARGET = {"ort": "portable", "tensorrt": "tensorrt"}


def resolve_target(name: str | None, backend: str) -> Int8Target | None:
    """The target a request quantizes for (the backend's default when not given); None for backends that have no
    targets (TFLite: its int8 kernels are signed and do not saturate)."""
    if name is None:
        name = DEFAULT_TARGET.get(backend)
        if name is None:
            return None
    if name not in TARGETS:
        raise EdgeconvError(f"--target {name!r}: unknown; choose one of: {', '.join(TARGETS)}")
    t = TARGETS[name]
    if t.backend != backend:
        choices = [n for n, x in TARGETS.items() if x.backend == backend]
        raise EdgeconvError(
            f"--target {name} is written by --backend {t.backend}, not {backend}"
            + (f" (for {backend}: {', '.join(choices)})" if choices else f" ({backend} has no INT8 targets)")
        )
    return t


def target_warning(record: dict | None, cpu: dict | None = None) -> str | None:
    """A warning line when a quantized file's recorded target is not this CPU (None when it fits, or when the file
    records no INT8 target)."""
    if not record or record.get("precision") != "int8" or not record.get("target"):
        return None
    t = TARGETS.get(record["target"])
    if t is None:
        return f"unknown INT8 target {record['target']!r} in the file's record"
    if cpu is None:
        from edgeconv.runtime.hostcpu import this_int8_class

        cpu = this_int8_class()
    return t.mismatch(cpu)


def artifact_warning(path, record: dict | None, model=None, cpu: dict | None = None) -> str | None:
    """`target_warning` for a file, and for an INT8 ONNX that records no target (written before targets existed):
    its weights are checked directly - a file that can saturate, on a CPU whose kernels do, gets a warning.
    `model`: the file's ModelProto when the caller has it loaded already."""
    from pathlib import Path

    from edgeconv.runtime.hostcpu import this_int8_class

    cpu = cpu or this_int8_class()
    warning = target_warning(record, cpu)
    if warning or (record and record.get("target")):
        return warning
    from edgeconv.artifacts.formats import is_format

    if not record or record.get("precision") != "int8" or not is_format(path, "onnx"):
        return None
    if not cpu.get("u8s8_saturates"):
        return None
    from edgeconv.artifacts.card import load_onnx_proto
    from edgeconv.quantize.saturation import check_model

    report = check_model(model if model is not None else load_onnx_proto(path))
    if report.safe:
        return None
    return (
        f"{Path(path).name} records no INT8 target and {report.summary()}; this CPU ({cpu['name']}) has no "
        "VNNI, so its top-1 here can collapse: re-quantize with --target portable"
    )
