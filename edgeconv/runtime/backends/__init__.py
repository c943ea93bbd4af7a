"""Backend registry: which backend runs which artifact type, on which device.

Backends are imported lazily, so a missing optional runtime (ai_edge_litert, tensorrt) only affects its own rows.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from edgeconv.artifacts.formats import format_of
from edgeconv.common.errors import EdgeconvError
from edgeconv.runtime.backends.base import Backend, BackendUnavailable, RouteCounts, Runner, RunOptions, Target

__all__ = [
    "Backend",
    "BackendUnavailable",
    "RouteCounts",
    "RunOptions",
    "Runner",
    "Target",
    "BACKENDS",
    "DEVICES",
    "get_backend",
    "targets_for",
    "artifact_kind",
    "load_runner",
]

# name -> module holding a `BACKEND` object
BACKENDS = {
    "torch": "edgeconv.runtime.backends.torch_runner",
    "ort": "edgeconv.runtime.backends.ort_runner",
    "tflite": "edgeconv.runtime.backends.tflite_runner",
    "tensorrt": "edgeconv.runtime.backends.tensorrt_runner",
}
DEVICES = ("cpu", "cuda", "jetson")


def artifact_kind(path: Path) -> str:
    """The native backend for an artifact file (artifacts/formats.py), or an EdgeconvError naming the known types."""
    return format_of(path).runtime


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise EdgeconvError(f"unknown backend {name!r} (choose auto, {', '.join(BACKENDS)})")
    return importlib.import_module(BACKENDS[name]).BACKEND


def targets_for(path: Path, backend: str = "auto", device: str = "cpu") -> list[Target]:
    """Every way to run `path` on `device` with `backend` (auto: the artifact's native runtimes).

    GPU devices list the GPU runtimes even where this machine has none: those rows come back unavailable
    with the reason, so a table made on a CPU machine still shows what was not measured.
    """
    if device not in DEVICES:
        raise EdgeconvError(f"unknown device {device!r} (choose {', '.join(DEVICES)})")
    kind = artifact_kind(path)
    gpu = device in ("cuda", "jetson")
    if backend == "auto":
        if kind == "ort":
            if gpu:
                return [Target("ort", device, "cuda"), Target("ort", device, "tensorrt"), Target("tensorrt", device)]
            return [Target("ort", device, "cpu")]
        if kind == "tflite":
            return [Target("tflite", "cpu" if device == "cuda" else device)]  # TFLite runs on the CPU cores
        return [Target(kind, device)]
    get_backend(backend)  # validates the name
    if backend == "ort":
        return [Target("ort", device, "cuda"), Target("ort", device, "tensorrt")] if gpu else [Target("ort", device, "cpu")]
    return [Target(backend, device)]


def load_runner(path: Path, target: Target, threads: int) -> Runner:
    """Load `path` for one target; raises BackendUnavailable when this machine cannot run it."""
    kind = artifact_kind(path)
    be = get_backend(target.backend)
    if kind not in getattr(be, "accepts", (kind,)):
        raise BackendUnavailable(f"the {target.backend} backend does not run {Path(path).suffix} files")
    return be.load(Path(path), RunOptions(device=target.device, threads=threads, variant=target.variant))
