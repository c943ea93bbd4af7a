"""PyTorch eager: runs an edgeconv checkpoint (the float reference) on the CPU or a CUDA GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeconv.models.routed import ROUTED_MODES
from edgeconv.runtime.backends.base import BackendUnavailable, RunOptions


class TorchRunner:
    def __init__(self, path: Path, options: RunOptions):
        from edgeconv.models import load_model, routers

        if options.device in ("cuda", "jetson"):
            if not torch.cuda.is_available():
                raise BackendUnavailable(
                    f"torch {torch.__version__} sees no CUDA GPU (built for CUDA: {torch.version.cuda or 'no'})"
                )
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(options.threads)
        self.model, self.ckpt = load_model(path)
        self.model.to(self.device)
        self.options = options
        self.routers = routers(self.model)
        self.last_routes: dict[str, np.ndarray] = {}  # router -> per-sample decision of the last run (True = attn)

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> np.ndarray:
        y = self.model(torch.from_numpy(x).to(self.device))
        self.last_routes = {
            name: m.last_route.cpu().numpy()
            for name, m in self.routers
            if m.last_route is not None and m.mode in ROUTED_MODES
        }
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # the timer must see the work finish, not just its launch
        return y.float().cpu().numpy()

    def describe(self) -> dict:
        return {
            "backend": "torch",
            "runtime": f"torch {torch.__version__}",
            "device": str(self.device),
            "precision": "fp32",
            "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
            "routing": self.routers[0][1].mode if self.routers else None,
        }


class TorchBackend:
    name = "torch"
    accepts = ("torch",)

    def load(self, path: Path, options: RunOptions) -> TorchRunner:
        return TorchRunner(path, options)


BACKEND = TorchBackend()
