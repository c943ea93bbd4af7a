"""The backend interface: `load(path, options) -> Runner`; a runner maps a float32 NCHW batch to logits.

A backend that cannot run here (no GPU, no TensorRT, an extra not installed) raises `BackendUnavailable` with the
reason; `bench` turns that into a row marked unavailable instead of failing the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from edgeconv.common.errors import EdgeconvError


class BackendUnavailable(EdgeconvError):
    """This backend cannot run this artifact on this machine; the message says why."""


@dataclass(frozen=True)
class RunOptions:
    """How to run: the device (cpu | cuda | jetson), threads for CPU kernels, and a backend-specific variant
    (for example the ORT execution provider or a TensorRT build precision)."""

    device: str = "cpu"
    threads: int = 1
    variant: str = ""


@dataclass
class Target:
    """One way to run an artifact: which backend, on what, at which precision (a bench row minus the batch)."""

    backend: str  # registry name: torch | ort | tflite | tensorrt
    device: str  # cpu | cuda | jetson
    variant: str = ""  # e.g. ort execution provider "cpu" | "cuda" | "tensorrt"; tensorrt "fp16"
    precision: str | None = None  # None: ask the artifact (fp32, int8, fp16)

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.variant}" if self.variant else self.backend


@runtime_checkable
class Runner(Protocol):
    """A loaded artifact, ready to run.

    A runner that can see routing decisions also sets `last_routes`: router name -> bool per sample of the last
    `run` (True = attention branch); `bench` sums them over the accuracy pass."""

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits [B, classes] for a float32 NCHW batch (already normalised)."""

    def describe(self) -> dict:
        """What runs: backend, provider/delegate, precision, input shape, threads."""


@dataclass
class RouteCounts:
    """Per-router counts of inputs sent to each branch, accumulated over an accuracy pass."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, router: str, branch: str, n: int) -> None:
        self.counts.setdefault(router, {}).setdefault(branch, 0)
        self.counts[router][branch] += int(n)

    def fractions(self) -> dict[str, dict[str, float]]:
        out = {}
        for r, c in self.counts.items():
            total = sum(c.values())
            out[r] = {b: (v / total if total else 0.0) for b, v in c.items()}
        return out


class Backend(Protocol):
    name: str
    suffixes: tuple[str, ...]

    def load(self, path: Path, options: RunOptions) -> Runner:
        """Load the artifact or raise BackendUnavailable / EdgeconvError."""
