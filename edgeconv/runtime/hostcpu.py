"""This machine's CPU: model, cores, ISA flags, and the INT8 instruction set its integer kernels use.

The INT8 class matters for correctness, not only speed: on x86-64 with AVX2 or AVX-512 but without VNNI,
onnxruntime's uint8 x int8 (U8S8) kernels multiply with VPMADDUBSW, whose int16 pair sums saturate; VNNI, AMX and
ARM accumulate in int32 and do not (onnxruntime's quantization docs). `quantize`, `bench`, `validate` and
`info --device` name the class next to every INT8 figure. Readers take text or a `root` so they are tested on
recorded files.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# ISA extensions that change what an inference runtime can do (VNNI/AMX for INT8, F16C/FP16 for half, SVE, dotprod)
INTERESTING_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimdhp",
    "asimddp",
    "fphp",
    "sve",
    "sve2",
    "i8mm",
    "bf16",
)

# INT8 classes, most capable first: (name, flags that define it, architecture family, pair sums saturate)
INT8_CLASSES = (
    ("AMX", ("amx_int8",), "x86", False),
    ("AVX-512 VNNI", ("avx512_vnni",), "x86", False),
    ("AVX-VNNI", ("avx_vnni",), "x86", False),
    ("AVX-512 (no VNNI)", ("avx512f",), "x86", True),
    ("AVX2 (no VNNI)", ("avx2",), "x86", True),
    ("NEON dot-product", ("asimddp",), "arm", False),
    ("NEON", ("asimd",), "arm", False),
)


INT8_NOTE = {
    True: "uint8 x int8 pair sums saturate int16 (no VNNI): only --target portable files are exact here",
    False: "int32 accumulation: every INT8 file computes what it recorded here (portable files everywhere)",
    None: "unknown INT8 kernels: validate each file here",
}


def parse_cpuinfo(text: str) -> dict:
    """Model name, physical cores and ISA flags from /proc/cpuinfo (x86 `flags`, ARM `Features`)."""
    model, flags, cores = None, set(), set()
    phys = None
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip().lower(), val.strip()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = val
        elif key in ("flags", "features"):
            flags.update(val.split())
        elif key == "physical id":
            phys = val
        elif key == "core id":
            cores.add((phys, val))
    return {"model": model, "physical_cores": len(cores) or None, "isa": [f for f in INTERESTING_FLAGS if f in flags]}


def int8_class(isa: list[str] | str, arch: str | None = None) -> dict:
    """{"name", "family", "u8s8_saturates"} for a flag list: which INT8 dot-product path onnxruntime takes here.

    An x86 CPU with neither VNNI nor AVX-512/AVX2 (SSE4 only) also saturates (its kernels use PMADDUBSW);
    an unknown architecture is reported as such with `u8s8_saturates` None (not known)."""
    flags = set(isa.split() if isinstance(isa, str) else isa)
    for name, needs, family, saturates in INT8_CLASSES:
        if set(needs) <= flags:
            return {"name": name, "family": family, "u8s8_saturates": saturates}
    arch = (arch or platform.machine()).lower()
    if arch in ("x86_64", "amd64", "i686", "x86"):
        if not flags:  # no flag list to read (not Linux, or /proc hidden): the kernels are not known
            return {"name": "x86 (flags unknown)", "family": "x86", "u8s8_saturates": None}
        return {"name": "SSE (no VNNI)", "family": "x86", "u8s8_saturates": True}
    if arch in ("aarch64", "arm64"):
        return {"name": "NEON", "family": "arm", "u8s8_saturates": False}
    return {"name": f"unknown ({arch})", "family": arch, "u8s8_saturates": None}


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return None


def cpu_info(root: Path = Path("/")) -> dict:
    """Model, architecture, cores, ISA flags and the INT8 class of this machine's CPU."""
    info = parse_cpuinfo(_read(root / "proc/cpuinfo") or "")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    arch = platform.machine()
    cls = int8_class(info["isa"], arch)
    return {
        "model": info["model"] or platform.processor() or arch,
        "arch": arch,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "physical_cores": info["physical_cores"],
        "isa": " ".join(info["isa"]) or "-",
        "int8": cls["name"],
        "int8 kernels": INT8_NOTE[cls["u8s8_saturates"]],
    }


def cpu_record() -> dict:
    """What an INT8 measurement names: the CPU model and its INT8 instruction set (one short dict)."""
    info = cpu_info()
    return {"model": info["model"], "arch": info["arch"], "int8": info["int8"]}


@functools.lru_cache(maxsize=1)
def _this_int8_class() -> tuple:
    info = parse_cpuinfo(_read(Path("/proc/cpuinfo")) or "")
    return tuple(int8_class(info["isa"], platform.machine()).items())


def this_int8_class() -> dict:
    """This machine's INT8 class (read once per process: the CPU does not change under it)."""
    return dict(_this_int8_class())
