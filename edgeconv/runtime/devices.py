"""What the benchmark ran on: the CPU (model, cores, ISA flags), a CUDA GPU (name, driver, memory), a Jetson
(module model from the device tree, L4T release from /etc/nv_tegra_release, power mode from `nvpmodel -q`).

File readers take a `root` so the Jetson parsers are tested on recorded device files.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

from edgeconv.common.errors import EdgeconvError
from edgeconv.runtime.hostcpu import cpu_info, parse_cpuinfo  # noqa: F401 - the CPU part of a device description

# L4T major.minor -> JetPack release line (NVIDIA's release notes; the exact JetPack point release varies)
_JETPACK = {
    (32, 7): "4.6.x",
    (32, 6): "4.6",
    (32, 5): "4.5",
    (32, 4): "4.4",
    (34, 1): "5.0 DP",
    (35, 1): "5.0.2",
    (35, 2): "5.1",
    (35, 3): "5.1.1",
    (35, 4): "5.1.2",
    (35, 5): "5.1.3",
    (35, 6): "5.1.4",
    (36, 2): "6.0 DP",
    (36, 3): "6.0",
    (36, 4): "6.1/6.2",
}


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return None


# ----------------------------------------------------------------------------------------------- CUDA
def cuda_info() -> dict:
    """The first CUDA GPU as torch sees it, plus the driver version from nvidia-smi; `available: False` with the
    reason otherwise."""
    try:
        import torch
    except ImportError:
        return {"available": False, "reason": "torch is not installed"}
    if not torch.cuda.is_available():
        return {
            "available": False,
            "reason": f"torch {torch.__version__} sees no CUDA GPU (CUDA build: {torch.version.cuda or 'none'})",
        }
    p = torch.cuda.get_device_properties(0)
    out = {
        "available": True,
        "name": p.name,
        "memory": f"{p.total_memory / 2**30:.1f} GiB",
        "compute_capability": f"{p.major}.{p.minor}",
        "count": torch.cuda.device_count(),
        "cuda_runtime": torch.version.cuda,
    }
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
            )
            out["driver"] = r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            out["driver"] = None
    return out


# ----------------------------------------------------------------------------------------------- Jetson
def parse_tegra_release(text: str) -> dict | None:
    """`# R36 (release), REVISION: 3.0, GCID: ..., BOARD: generic, EABI: aarch64, DATE: ...` -> fields."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not m:
        return None
    major, rev = int(m.group(1)), m.group(2)
    minor = int(rev.split(".")[0]) if rev.split(".")[0].isdigit() else 0
    fields = dict(re.findall(r"(GCID|BOARD|EABI|DATE):\s*([^,\n]+)", text))
    return {
        "l4t": f"{major}.{rev}",
        "jetpack": _JETPACK.get((major, minor)),
        "board": fields.get("BOARD", "").strip() or None,
        "gcid": fields.get("GCID", "").strip() or None,
    }


def parse_nvpmodel(text: str) -> dict | None:
    """`nvpmodel -q` output: `NV Power Mode: NAME` then the mode id on a line of its own (warnings may precede)."""
    lines = [ln.strip() for ln in text.splitlines()]
    for i, ln in enumerate(lines):
        m = re.match(r"NV Power Mode:\s*(.+)$", ln)
        if m:
            mode_id = next((int(x) for x in lines[i + 1 : i + 3] if x.isdigit()), None)
            return {"name": m.group(1).strip(), "id": mode_id}
    return None


def query_nvpmodel() -> dict | None:
    exe = shutil.which("nvpmodel")
    if not exe:
        return None
    try:
        r = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvpmodel(r.stdout + "\n" + r.stderr)


def jetson_info(root: Path = Path("/"), nvpmodel_text: str | None = None) -> dict:
    """Jetson identity from device files under `root`; `is_jetson` False with what was looked at otherwise."""
    release = _read(root / "etc/nv_tegra_release")
    model = _read(root / "proc/device-tree/model")
    model = model.replace("\x00", "").strip() if model else None
    rel = parse_tegra_release(release) if release else None
    is_jetson = rel is not None or bool(model and "jetson" in model.lower())
    out = {"is_jetson": is_jetson, "model": model, **(rel or {"l4t": None, "jetpack": None, "board": None})}
    if is_jetson:
        pm = parse_nvpmodel(nvpmodel_text) if nvpmodel_text is not None else query_nvpmodel()
        out["power_mode"] = f"{pm['name']} (id {pm['id']})" if pm else "unknown (nvpmodel not found)"
        out["tegrastats"] = shutil.which("tegrastats") or "not found"
    return out


def require_jetson(root: Path = Path("/")) -> dict:
    """The Jetson description, or one readable error saying this machine is not one."""
    info = jetson_info(root)
    if not info["is_jetson"]:
        seen = info["model"] or f"{platform.machine()} machine with no device-tree model"
        raise EdgeconvError(
            f"--device jetson: this machine is not a Jetson ({root / 'etc/nv_tegra_release'} is "
            f"missing; device: {seen}); run on the Jetson, or use --host USER@JETSON from here"
        )
    return info


def describe_device(root: Path = Path("/")) -> dict:
    """Sections for `edgeconv info --device` and the bench report."""
    import importlib.metadata as md

    host = {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    versions = {}
    for pkg in ("torch", "onnxruntime", "onnxruntime-gpu", "ai-edge-litert", "tensorrt", "cuda-python"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    out = {"host": host, "cpu": cpu_info(root), "runtimes": versions}
    cuda = cuda_info()
    out["cuda"] = cuda if cuda.get("available") else {"available": False, "reason": cuda["reason"]}
    jet = jetson_info(root)
    out["jetson"] = (
        jet
        if jet["is_jetson"]
        else {"is_jetson": False, "why": f"no {root / 'etc/nv_tegra_release'}, no Jetson device-tree model"}
    )
    return out
