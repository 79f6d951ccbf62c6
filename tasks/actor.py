"""The capture actor: one model replica that turns shards into shard samples.

A plain class, made a Ray actor by the driver (`ray.remote(ShardCapturer).options(num_gpus=...)`), so it is
also usable, and tested, without Ray. Each shard yields a small metadata dict and the shard's bottom-k sample
state (arrays), which stays in Ray's object store until a merge task consumes it.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import torch

from tasks.capture import SiteRecorder, forward_and_gather, pad_batch
from tasks.corpus import Shard, batches
from tasks.models import load_model, load_model_config, site_table
from tasks.sampling import BottomKSample, context_ids, token_hash

log = logging.getLogger(__name__)


class ShardCapturer:
    """Holds a model and a recorder for the chosen sites; `process` runs one shard."""

    def __init__(
        self,
        model_name: str,
        dtype: str,
        sites: Sequence[tuple[int, str]],
        *,
        revision: str | None = None,
        use_gpu: bool = False,
    ):
        torch.set_grad_enabled(False)
        device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        t0 = time.perf_counter()
        config = load_model_config(model_name, revision)
        model = load_model(model_name, dtype, device, revision)
        self._attach(model, config.model_type, sites, time.perf_counter() - t0)

    @classmethod
    def from_model(cls, model: torch.nn.Module, model_type: str, sites: Sequence[tuple[int, str]]) -> "ShardCapturer":
        """Wrap a model already in memory (benchmarks, notebooks) instead of loading one by name."""
        self = cls.__new__(cls)
        self._attach(model.eval(), model_type, sites, 0.0)
        return self

    def _attach(self, model: torch.nn.Module, model_type: str, sites, load_seconds: float) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.recorder = SiteRecorder(model, site_table(model_type), sites)
        self.pad_id = 0
        self.load_seconds = load_seconds

    def ready(self) -> dict:
        """Called once by the driver: where this replica lives and how long it took to load."""
        return {"device": str(self.device), "load_seconds": self.load_seconds}

    def process(self, shard: Shard, k: int, threshold: np.uint64, seed: int, batch_tokens: int):
        """Capture one shard. Returns (meta, sample state); the state is None when no token was a candidate."""
        t0 = time.perf_counter()
        sample = BottomKSample(k, threshold)
        lengths = shard.lengths()
        forwards = 0
        with self.recorder.attached():
            for seq_index in batches(shard, batch_tokens):
                seq_len = lengths[seq_index]
                # Every real (non-padding) token of the batch: its row in the batch and position in its sequence.
                rows = np.repeat(np.arange(len(seq_index)), seq_len)
                cols = np.arange(int(seq_len.sum())) - np.repeat(np.cumsum(seq_len) - seq_len, seq_len)
                seqs = seq_index[rows]
                hashes = token_hash(seed, shard.doc[seqs], shard.window[seqs], cols)
                keep = sample.candidates(hashes)
                if not keep.any():
                    continue  # nothing here can enter the sample: skip the forward pass
                rows, cols, seqs, hashes = rows[keep], cols[keep], seqs[keep], hashes[keep]
                input_ids, mask = pad_batch(shard.ids, shard.offsets, seq_index, self.pad_id)
                vectors = forward_and_gather(self.model, self.recorder, input_ids, mask, rows, cols)
                forwards += 1
                keys = {
                    "hash": hashes,
                    "doc": shard.doc[seqs],
                    "window": shard.window[seqs],
                    "pos": cols.astype(np.int64),
                    "token_id": input_ids[rows, cols].astype(np.int32),
                    "context": context_ids(shard.ids, shard.offsets[seqs], lengths[seqs], cols),
                }
                sample.add(keys, vectors)
        seconds = time.perf_counter() - t0
        meta = {
            "shard": shard.index,
            "n_tokens": shard.n_tokens,
            "n_sequences": shard.n_sequences,
            "n_kept": len(sample),
            "forward_batches": forwards,
            "seconds": seconds,
        }
        return meta, (sample.state() if len(sample) else None)
