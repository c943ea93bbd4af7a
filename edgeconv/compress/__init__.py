"""Compression: structured pruning of attention heads and hidden channels, and knowledge distillation.

- `importance`: criteria (gradient, taylor, l1, random) behind a registry;
- `prune`: plan (per-layer normalised scores, one global ranking, head/channel ratios or a MAC budget) and apply;
- `distill`: Hinton KD with optional feature matching, resumable.
"""

from edgeconv.compress.importance import CRITERIA, get_criterion
from edgeconv.compress.prune import PrunePlan, PruneRequest, apply_plan, plan_pruning, prune_model

__all__ = ["CRITERIA", "get_criterion", "PrunePlan", "PruneRequest", "apply_plan", "plan_pruning", "prune_model"]
