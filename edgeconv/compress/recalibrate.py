"""BatchNorm re-estimation after pruning: removing channels changes what every later BatchNorm sees, while its
running mean and variance still describe the unpruned network. Re-estimating them on calibration samples (forward
passes in train mode, no gradients, cumulative averages) changes no weight; it is the standard repair between
structured pruning and fine-tuning (AMC, NetAdapt, Torch-Pruning's examples recalibrate before evaluation), and the
difference between a pruned model at chance and one that still ranks classes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgeconv.data.sources import Samples

RECALIBRATION_BATCHES = 20
RECALIBRATION_BATCH_SIZE = 64


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def recalibrate_batchnorm(
    model: nn.Module,
    samples: Samples,
    batches: int = RECALIBRATION_BATCHES,
    batch_size: int = RECALIBRATION_BATCH_SIZE,
    seed: int = 0,
) -> int:
    """Re-estimate every BatchNorm's running statistics of `model` in place; the number of samples used (0: none)."""
    bns = batchnorms(model)
    if not bns or len(samples) == 0:
        return 0
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over every batch below
    perm = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))
    used = 0
    model.train()
    try:
        with torch.no_grad():
            for i in range(batches):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                if len(idx) < 2:  # BatchNorm in train mode needs more than one value per channel
                    break
                model(samples.x[idx])
                used += len(idx)
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    return used
