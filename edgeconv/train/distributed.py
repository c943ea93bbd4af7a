"""Data-parallel training under `torchrun`: PyTorch's DistributedDataParallel and DistributedSampler.

`edgeconv train` and `edgeconv distill` started by torchrun (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) join one process group: gloo on CPU (edgeconv trains on the CPU), NCCL when `EDGECONV_DIST_BACKEND=nccl`
is set for CUDA builds. The global batch size is kept: each of the W processes takes batch/W samples per step, so a
run on W processes follows the same schedule (steps per epoch, learning rate) as on one. Only rank 0 writes files
and prints results; every write is atomic, so a worker killed mid-epoch leaves the last epoch's checkpoint loadable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from edgeconv.common.errors import EdgeconvError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def per_rank_batch(self, batch_size: int) -> int:
        if batch_size % self.world:
            raise EdgeconvError(
                f"--batch-size {batch_size} is not divisible by the {self.world} processes: the global batch is "
                f"kept, so give a multiple of {self.world}"
            )
        return batch_size // self.world

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


_CONTEXT: Context | None = None


def context() -> Context:
    """This process's place in the run; joins the process group on first use when started by torchrun."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        _CONTEXT = Context()
        return _CONTEXT
    import torch.distributed as dist

    backend = os.environ.get("EDGECONV_DIST_BACKEND", "gloo")
    if backend not in ("gloo", "nccl"):
        raise EdgeconvError(f"EDGECONV_DIST_BACKEND must be gloo or nccl, got {backend!r}")
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend)
        except (RuntimeError, ValueError) as e:
            raise EdgeconvError(f"cannot join the torchrun process group ({backend}): {str(e).splitlines()[0]}") from None
    _CONTEXT = Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return _CONTEXT


def shutdown() -> None:
    global _CONTEXT
    if _CONTEXT is not None and _CONTEXT.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _CONTEXT = None


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """The model as DistributedDataParallel (gradients averaged across processes) when distributed, else as is.

    Routed blocks train both branches (soft routing) unless pinned to one (static:*), which leaves the other's
    parameters unused: only then are unused parameters searched for."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    from edgeconv.models import routers

    return DistributedDataParallel(
        model, find_unused_parameters=any(str(m.mode).startswith("static") for _, m in routers(model))
    )


def unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def sampler(n: int, ctx: Context, seed: int, epoch: int):
    """A DistributedSampler over n items (shuffled, seeded, epoch-aware; one replica when not distributed)."""
    from torch.utils.data import DistributedSampler

    s = DistributedSampler(range(n), num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=seed, drop_last=False)
    s.set_epoch(epoch)
    return s
