"""The forward batch's token budget: `capture.batch_tokens: auto` sizes it to fill the actor's GPU.

A GPU pays for every forward pass it runs half-empty, and a budget fixed in the config fits one card and model
but starves or overflows another. So on a GPU the actor measures, once after loading its model, what one more
sequence of the run's longest length costs in memory with every hook and statistic on (two probe shards through
the real capture code, the difference of their peak allocations), and takes the largest power of two of such
sequences that keeps the peak under `FILL` of the memory its process can have. Powers of two make identical cards
pick identical budgets, so a homogeneous cluster batches every shard the same way whichever actor runs it.

On a CPU a larger batch buys no throughput (the GEMMs are already large enough to run at the cores' rate) and
costs memory, so `auto` is the fixed `CPU_BATCH_TOKENS`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from tasks.corpus.shards import Shard

log = logging.getLogger(__name__)

CPU_BATCH_TOKENS = 4096  # bench/capture_overhead.py measures capture at this budget
FILL = 0.85  # of the memory the process can have: the rest is headroom for the allocator's fragmentation
MAX_SEQUENCES = 1 << 14  # a cap on what the arithmetic may ask for, whatever the card


@dataclass(frozen=True)
class MemoryModel:
    """Peak device memory of a forward batch as `fixed + per_sequence x sequences` (bytes), with the memory the
    process can have (`available`), as measured by `probe`."""

    fixed: int
    per_sequence: int
    available: int

    def peak(self, sequences: int) -> int:
        return self.fixed + self.per_sequence * sequences


def fit_sequences(model: MemoryModel, fill: float = FILL, cap: int = MAX_SEQUENCES) -> int:
    """The largest power of two n <= cap with model.peak(n) <= fill x model.available; 1 when none fits (the run
    then tries one sequence per batch and a shard that runs out of memory is retried as any failed shard is)."""
    room = fill * model.available - model.fixed
    fits = int(room // max(model.per_sequence, 1)) if room > 0 else 0
    if fits < 1:
        return 1
    return 1 << (min(fits, cap).bit_length() - 1)


class CudaMemory:
    """Peak allocation and the memory this process can have on one CUDA device (free plus what torch holds)."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device))

    def available(self) -> int:
        free, _total = torch.cuda.mem_get_info(self.device)
        return int(free) + int(torch.cuda.memory_reserved(self.device))


class OutputBytes:
    """A memory meter for a CPU, where no allocator reports a peak: the bytes of every module output of `model`
    since `reset` (linear in the batch, as activation memory is), with a fixed `available`. Exact and
    deterministic, so the tests hold `probe`'s arithmetic to it, and `bench/gpu.py --device cpu` runs with it."""

    def __init__(self, model: torch.nn.Module, available: int):
        self.total, self._available = 0, available
        for module in model.modules():
            module.register_forward_hook(self._count)

    def _count(self, _module, _inputs, output) -> None:
        for t in output if isinstance(output, tuple) else (output,):
            if isinstance(t, torch.Tensor):
                self.total += t.numel() * t.element_size()

    def reset(self) -> None:
        self.total = 0

    def peak(self) -> int:
        return self.total

    def available(self) -> int:
        return self._available


def probe(measure: Callable[[Shard], int], seq_len: int, k: int, *, vocab: int, sample_row_bytes: int,
          available: int) -> MemoryModel:
    """The memory model for sequences of `seq_len` tokens, from the peak memory `measure(shard)` reports for one
    shard of n1 and one of 2 n1 full-length sequences of random ids, run through the real capture code (every
    token a sample candidate, the d x d statistics on every token). n1 is the fewest sequences that hold k tokens,
    so that both probes gather the sample's full k rows per batch. The sample may hold up to 3 k rows between
    trims (2 k kept, k arriving): the 2 k rows of `sample_row_bytes` each (all sites) that the probes do not hold
    are added to `fixed`. `available` is the memory the process can have."""
    n1 = max(1, -(-k // seq_len))
    rng = np.random.default_rng(0)
    peaks = []
    for n in (n1, 2 * n1):
        shard = Shard(index=-1, ids=rng.integers(0, vocab, n * seq_len, dtype=np.int32),
                      offsets=np.arange(n + 1, dtype=np.int64) * seq_len, doc=np.arange(n, dtype=np.int64),
                      window=np.zeros(n, dtype=np.int64))
        peaks.append(measure(shard))
    per_sequence = max((peaks[1] - peaks[0]) // n1, 1)
    fixed = peaks[0] - n1 * per_sequence + 2 * k * sample_row_bytes
    return MemoryModel(fixed=int(fixed), per_sequence=int(per_sequence), available=int(available))


def resolve(batch_tokens: int | str, seq_len: int, memory_model: Callable[[], MemoryModel] | None) -> int:
    """The forward budget: an int as given; `auto` fitted to `memory_model()` (a GPU's, measured), or
    `CPU_BATCH_TOKENS` where there is no device memory to measure (None: a CPU)."""
    if batch_tokens != "auto":
        return int(batch_tokens)
    if memory_model is None:
        return CPU_BATCH_TOKENS
    model = memory_model()
    n = fit_sequences(model)
    gib = 2.0**30
    log.info("batch_tokens auto: %d sequences of %d tokens (fixed %.2f GiB + %.3f GiB per sequence; %.2f of %.2f GiB)",
             n, seq_len, model.fixed / gib, model.per_sequence / gib, model.peak(n) / gib, model.available / gib)
    return n * seq_len
