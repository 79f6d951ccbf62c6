"""One model replica over several GPUs: which device holds which part of the model (`device_plan`).

With `cluster.gpus_per_actor: N > 1` an actor loads its replica with a device map over its N GPUs, as
`transformers`' `device_map="auto"` does: per-device budgets balanced for the model's size (`accelerate`'s
`get_balanced_memory`), then whole blocks placed in order (`infer_auto_device_map`, never splitting a module
class the model lists in `_no_split_modules`). The plan is computed here from the module tree built without
weights, so it is a pure function of the model's config and the budgets, testable without GPUs. Forward hooks
then run on each block's device; each site's statistics live on its layer's device, and the sample is gathered
on the first device (`tasks.capture.hooks.SiteRecorder`).
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch

from tasks.errors import UserError

log = logging.getLogger(__name__)

HEADROOM = 0.85  # of each GPU's free memory offered to the weights: the rest holds activations and statistics


def device_plan(skeleton: torch.nn.Module, memory: Mapping[int, int], dtype: torch.dtype) -> dict[str, int]:
    """Module name -> GPU index for `skeleton` (a model built on the `meta` device) in `dtype`, given each GPU's
    budget in bytes (`memory`). Blocks stay whole; a model that does not fit in the GPUs is a UserError."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    no_split = list(getattr(skeleton, "_no_split_modules", None) or [])
    budgets = {int(i): int(b) for i, b in memory.items()}
    balanced = get_balanced_memory(skeleton, max_memory=budgets, no_split_module_classes=no_split, dtype=dtype)
    balanced = {i: min(int(balanced[i]), budgets[i]) for i in budgets}  # the balance never exceeds a budget
    plan = infer_auto_device_map(skeleton, max_memory=balanced, no_split_module_classes=no_split,
                                 dtype=dtype)
    outside = sorted(name for name, where in plan.items() if not isinstance(where, int))
    if outside:
        need = sum(p.numel() for p in skeleton.parameters()) * torch.finfo(dtype).bits // 8
        raise UserError(f"the model ({need / 2**30:.1f} GiB in {str(dtype).removeprefix('torch.')}) does not fit in "
                        f"{len(budgets)} GPU(s) ({', '.join(outside[:2])} left over); raise cluster.gpus_per_actor "
                        "or use a smaller model.dtype")
    return plan


def gpu_budgets(n: int) -> dict[int, int]:
    """What each of this process's first `n` GPUs offers the weights: HEADROOM of its free memory."""
    if torch.cuda.device_count() < n:
        raise UserError(f"cluster.gpus_per_actor={n} but this actor sees {torch.cuda.device_count()} GPU(s)")
    return {i: int(torch.cuda.mem_get_info(i)[0] * HEADROOM) for i in range(n)}


def devices_used(plan: Mapping[str, int]) -> list[int]:
    """The GPUs a plan uses, in order."""
    return sorted(set(plan.values()))
