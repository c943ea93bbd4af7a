"""BatchNorm re-estimation after pruning (compress/recalibrate.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgeconv.data.sources import Samples


def _samples(n: int = 96) -> Samples:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g) * 2.0 + 1.5
    return Samples(x, torch.zeros(n, dtype=torch.long), ["a"], source="test")


def test_running_statistics_become_those_of_the_samples_and_nothing_else_changes():
    from edgeconv.compress.recalibrate import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    model.eval()
    bn = model[1]
    bn.running_mean.fill_(7.0)  # stale statistics, as after removing channels upstream
    bn.running_var.fill_(0.01)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    s = _samples()
    used = recalibrate_batchnorm(model, s, batches=3, batch_size=32)
    assert used == 96
    with torch.no_grad():
        h = model[0](s.x)  # what the BatchNorm sees
    assert torch.allclose(bn.running_mean, h.mean((0, 2, 3)), atol=1e-4)
    # cumulative average of per-batch unbiased variances (3 equal batches): close to the pooled variance
    assert torch.allclose(bn.running_var, h.var((0, 2, 3)), rtol=0.05)
    assert not model.training and bn.momentum == 0.1
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


def test_a_model_without_batchnorm_is_left_alone():
    from edgeconv.compress.recalibrate import recalibrate_batchnorm

    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 2))
    before = [p.clone() for p in model.parameters()]
    assert recalibrate_batchnorm(model, _samples()) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.slow
def test_prune_recalibrates_by_default_and_says_so(trained):
    """can-tiny has BatchNorm in its conv paths: pruning re-estimates it unless told not to."""
    from edgeconv.compress.prune import PruneRequest, prune_model
    from edgeconv.data.sources import load_samples
    from edgeconv.models import load_model

    model, ck = load_model(trained("can-tiny"))
    pre = ck["preprocessing"]
    train = load_samples("digits", pre, "train")
    on, plan_on = prune_model(model, pre, train, PruneRequest(channels=0.3, batches=4))
    off, plan_off = prune_model(model, pre, train, PruneRequest(channels=0.3, batches=4, bn_recalibrate=False))
    assert any("BatchNorm statistics re-estimated" in n for n in plan_on.notes)
    assert not any("BatchNorm" in n for n in plan_off.notes)
    bn_on = [m for m in on.modules() if isinstance(m, nn.BatchNorm2d)]
    bn_off = [m for m in off.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn_on and any(not torch.allclose(a.running_mean, b.running_mean) for a, b in zip(bn_on, bn_off))
    # the same plan either way: recalibration changes statistics, not which units go
    assert [lp.keep for lp in plan_on.layers] == [lp.keep for lp in plan_off.layers]
