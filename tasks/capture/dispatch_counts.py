"""What code asks of torch, counted at its dispatcher: every op by name, and among them those that make a GPU's host
wait for the card (a data-dependent shape, `nonzero` or a gather by a boolean mask; a value read back, `item`, or
`bincount`, whose CUDA kernel reads its input's min and max). Counted on any device, so a CPU shows what a GPU's
host would do. Used by `tests/test_capture.py` (the capture hooks never synchronise) and `bench/hook_ops.py` (their
ops per site and forward pass); it needs only torch, so the benchmark can load it by path to measure another
checkout."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

BOOLEAN_INDEX = "aten::index (boolean)"  # `x[mask]`: its result's shape is data-dependent
SYNCHRONISING = frozenset({"aten::masked_select", "aten::bincount", "aten::_local_scalar_dense", BOOLEAN_INDEX})
VIEWS = frozenset({"aten::view", "aten::select", "aten::slice", "aten::unsqueeze", "aten::expand", "aten::permute",
                   "aten::reshape", "aten::_unsafe_view", "aten::squeeze", "aten::t", "aten::transpose",
                   "aten::as_strided", "aten::alias", "aten::detach", "aten::unbind", "aten::split", "aten::chunk"})


def synchronises(name: str) -> bool:
    return name in SYNCHRONISING or name.startswith("aten::nonzero")


class DispatchCounter(TorchDispatchMode):
    """While active (`with DispatchCounter() as ops:`), counts every op dispatched, by schema name in `count`."""

    def __init__(self) -> None:
        super().__init__()
        self.count: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        indices = args[1] if name == "aten::index" and len(args) > 1 else []
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices):
            name = BOOLEAN_INDEX
        self.count[name] += 1
        return func(*args, **(kwargs or {}))

    def synchronising(self, count: Counter | None = None) -> int:
        """Ops that make a GPU's host wait (of `count`, else of all counted)."""
        return sum(v for k, v in (self.count if count is None else count).items() if synchronises(k))

    def kernels(self, count: Counter | None = None) -> int:
        """Ops that are not views (each one a kernel launch on a GPU)."""
        return sum(v for k, v in (self.count if count is None else count).items() if k not in VIEWS)
