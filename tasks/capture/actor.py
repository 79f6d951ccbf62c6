"""The capture actor: one model replica that turns shards into shard samples.

A plain class, made a Ray actor by the driver (`ray.remote(ShardCapturer).options(num_gpus=...)`), so it is
also usable, and tested, without Ray. Each shard yields a small metadata dict and the shard's bottom-k sample
state (arrays), written with a small record to the run directory, where merge tasks read it and a rerun finds
it (resume).
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import Sequence

import numpy as np
import torch

from tasks.capture.batch_budget import CPU_BATCH_TOKENS, CudaMemory, MemoryModel, probe
from tasks.capture.batch_budget import resolve as resolve_budget
from tasks.capture.hooks import SiteRecorder, StatsFeed, forward_and_gather, pad_batch
from tasks.corpus.shards import Exclusion, Shard, batches
from tasks.capture.faults import maybe_fail
from tasks.errors import UserError
from tasks.capture.models import SiteTable, check_sites, site_table
from tasks.checkpoint.loading import load_model, load_model_config
from tasks.stats.bottom_k import BottomKSample
from tasks.stats.massive import MASSIVE_TOP
from tasks.stats.site import SiteStatistics, stack_states
from tasks.capture.sampling import context_ids, token_hash
from tasks.storage import RunStore, partial_file, seal_record, shard_file

log = logging.getLogger(__name__)

MAX_SEALED = 2  # sealed statistics an actor may hold unwritten before its next shard waits


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
        trust_remote_code: bool = False,
        custom_sites: dict[str, str] | None = None,
        gpus: int = 1,
    ):
        """Load the model (with `gpus` > 1, split over that many GPUs) and find its sites (`custom_sites`:
        `model.sites`, for an architecture without a built-in table)."""
        torch.set_grad_enabled(False)
        device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        t0 = time.perf_counter()
        self._error: UserError | None = None
        try:
            config = load_model_config(model_name, revision, trust_remote_code)
            table = site_table(config.model_type, custom_sites)
            model = load_model(model_name, dtype, device, revision, trust_remote_code,
                               gpus=gpus if device.type == "cuda" else 1)
            check_sites(model, table, sites, "model.sites" if custom_sites else "the site table")
        except UserError as exc:
            # Raised from `ready` instead: Ray reports an error in __init__ as a bare ActorDiedError (no cause), which
            # the driver would retry as a crash; from a method it arrives as the UserError, and the run stops at once.
            self._error = exc
            return
        self._attach(model, table, sites, time.perf_counter() - t0)

    @classmethod
    def from_model(cls, model: torch.nn.Module, model_type: str | SiteTable,
                   sites: Sequence[tuple[int, str]]) -> "ShardCapturer":
        """Wrap a model already in memory (benchmarks, notebooks) instead of loading one by name; `model_type`
        names a built-in site table, or is one."""
        self = cls.__new__(cls)
        table = model_type if isinstance(model_type, SiteTable) else site_table(model_type)
        self._attach(model.eval(), table, sites, 0.0)
        return self

    def _attach(self, model: torch.nn.Module, table: SiteTable, sites, load_seconds: float) -> None:
        self.model = model
        if getattr(model.config, "use_cache", None):
            model.config.use_cache = False  # capture never generates: no key/value cache to allocate and return
        self.device = next(model.parameters()).device  # where the inputs go (the first device of a split model)
        self.recorder = SiteRecorder(model, table, sites)
        self.pad_id = 0
        self.load_seconds = load_seconds
        self.stats: list[SiteStatistics] | None = None  # accumulated across shards until `flush`
        self.stats_shards: list[int] = []
        self.batch_tokens = CPU_BATCH_TOKENS  # the budget `process` uses when given none; set by `ready`
        self.flush_every: int | None = None  # shards per statistics group (set by `ready`)
        self.massive_top = MASSIVE_TOP  # |x| entries kept per site (set by `ready`)
        # Sealed statistics, each (on a GPU their packed state on the host, on a CPU the statistics themselves; their
        # shards), waiting for `flush` to write them, guarded by `_state`; the running statistics are `process`'s
        # for a whole shard, under `_lock`.
        self._sealed: list[tuple[dict[str, np.ndarray] | list[SiteStatistics], list[int]]] = []
        self._state = threading.Condition()
        self._lock = threading.Lock()

    def ready(self, batch_tokens: int | str = CPU_BATCH_TOKENS, seq_len: int = 0, k: int = 1, stats: bool = False,
              flush_every: int | None = None, massive_top: int = MASSIVE_TOP) -> dict:
        """Called once by the driver: fixes this replica's forward budget (`auto`: see `tasks.capture.batch_budget`, for
        sequences of `seq_len` tokens, a sample of `k` and statistics on or off), the statistics groups (`flush_every`
        shards each: group g is shards g * flush_every ... (g + 1) * flush_every - 1, one partial) and how many |x|
        entries the statistics keep per site (`massive_top`), and says where it lives, how long its model took to load and the budget it chose."""
        import ray

        if getattr(self, "_error", None) is not None:
            raise self._error
        t0 = time.perf_counter()
        on_gpu = self.device.type == "cuda"
        self.batch_tokens = resolve_budget(batch_tokens, seq_len, (lambda: self.memory_model(seq_len, k, stats)) if on_gpu else None)
        self.flush_every, self.massive_top = flush_every, massive_top
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return {"device": str(self.device), "node": node, "load_seconds": round(self.load_seconds, 3),
                "batch_tokens": self.batch_tokens, "budget_seconds": round(time.perf_counter() - t0, 3)}

    def memory_model(self, seq_len: int, k: int, stats: bool, meter=None) -> MemoryModel:
        """This replica's peak memory against the sequences per batch (`tasks.capture.batch_budget.probe`), measured
        by `meter` (default: the CUDA allocator's peak) on probe shards run through `process`. The probes' statistics
        are discarded, never sealed into a partial."""
        meter = meter or CudaMemory(self.device)

        def measure(shard: Shard) -> int:
            meter.reset()
            self.process(shard, k, np.uint64(2**64 - 1), 0, shard.n_tokens, stats_fraction=1.0 if stats else None)
            return meter.peak()

        config = self.model.config
        width = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
        itemsize = next(self.model.parameters()).element_size()  # the sample stays on the device in the model's dtype
        flush_every, self.flush_every = self.flush_every, None
        try:
            return probe(measure, seq_len, k, vocab=int(getattr(config, "vocab_size", 2)),
                         sample_row_bytes=len(self.recorder.sites) * width * itemsize, available=meter.available())
        finally:
            self.stats, self.stats_shards, self.flush_every = None, [], flush_every
            meter.reset()

    def process(self, shard: Shard, k: int, threshold: np.uint64, seed: int, batch_tokens: int | None = None,
                store_root: str | None = None, config_hash: str = "", stats_fraction: float | None = None,
                exclusion: Exclusion | None = None) -> dict:
        with self._state:  # backpressure: at most MAX_SEALED sealed statistics wait for their write
            self._state.wait_for(lambda: len(self._sealed) < MAX_SEALED)
        with self._lock:
            return self._process(shard, k, threshold, seed, batch_tokens, store_root, config_hash, stats_fraction,
                                 exclusion)

    def _process(self, shard: Shard, k: int, threshold: np.uint64, seed: int, batch_tokens: int | None = None,
                 store_root: str | None = None, config_hash: str = "", stats_fraction: float | None = None,
                 exclusion: Exclusion | None = None) -> dict:
        """Capture one shard into its bottom-k sample. With `store_root`, write the sample (`.npz`) and then
        its record (`.json`) to the run directory and return the record; else return it with the state under
        `"state"` (tests, benchmarks). States with a NaN or Inf at any site are counted per site and kept out
        of the sample and the statistics.

        With `stats_fraction`, every real token of the shard also feeds this actor's streaming statistics
        (`SiteStatistics` per site; the d x d ones on the tokens whose second hash falls in that fraction); they
        accumulate across shards until `flush` writes them.

        With `exclusion`, the tokens it names (position 0, special ids) never enter the sample (the threshold
        must then come from the count of the other tokens) and feed only the statistics' excluded norms.

        `batch_tokens` is the padded-token budget of one forward pass; None takes the one `ready` fixed."""
        t0 = time.perf_counter()
        batch_tokens = batch_tokens or self.batch_tokens
        maybe_fail(shard.index)
        sample = BottomKSample(k, threshold)
        lengths = shard.lengths()
        forwards = examined = n_excluded = 0
        self.recorder.reset_counts(self.device)
        with_stats = stats_fraction is not None
        if with_stats and self.flush_every:
            self._enter_group(shard.index)
        if with_stats and self.stats is None:
            self.stats = [SiteStatistics(self.massive_top) for _ in self.recorder.sites]
        self.recorder.stats = self.stats if with_stats else None
        with self.recorder.attached():
            for seq_index in batches(shard, batch_tokens):
                seq_len = lengths[seq_index]
                # Every real (non-padding) token of the batch: its row in the batch and position in its sequence.
                rows = np.repeat(np.arange(len(seq_index)), seq_len)
                cols = np.arange(int(seq_len.sum())) - np.repeat(np.cumsum(seq_len) - seq_len, seq_len)
                seqs = seq_index[rows]
                hashes = token_hash(seed, shard.doc[seqs], shard.window[seqs], cols)
                token_ids = shard.ids[shard.offsets[seqs] + cols]
                excluded = exclusion.mask(token_ids, cols) if exclusion else None
                eligible = None if excluded is None else ~excluded
                if eligible is not None:
                    n_excluded += int(excluded.sum())
                keep = _candidates(sample, hashes, eligible, sample.k)
                if not keep.any() and not with_stats:
                    continue  # nothing here can enter the sample: skip the forward pass
                if with_stats:  # which tokens feed which statistics, as indices known here: no sync in the hooks
                    chosen = None
                    if stats_fraction < 1.0:
                        chosen = second_order_tokens(seed, shard.doc[seqs], shard.window[seqs], cols, stats_fraction)
                    # the tokens by name, for the massive activations (context ids only for the few they keep)
                    keys = {"doc": shard.doc[seqs], "window": shard.window[seqs], "pos": cols, "token_id": token_ids}
                    context = partial(_contexts, shard, lengths, seqs, cols)
                    width = int(seq_len.max())
                    self.recorder.feed = StatsFeed.of(rows * width + cols, excluded, chosen, self.device, keys,
                                                      context, len(seq_index) * width)
                input_ids, mask = pad_batch(shard.ids, shard.offsets, seq_index, self.pad_id)
                vectors = forward_and_gather(self.model, self.recorder, input_ids, mask, rows[keep], cols[keep])
                forwards += 1
                if forwards == 1:
                    maybe_fail(shard.index, late=True)
                examined += int(seq_len.sum())
                finite = torch.isfinite(vectors).all(dim=2).all(dim=0).cpu().numpy()
                # A NaN or Inf among the batch's best candidates leaves room for the next ones: gathered by another
                # forward pass (without statistics), so the sample is the bottom k of the finite states (rare).
                while not finite.all() and finite.sum() < sample.k:
                    wider = _candidates(sample, hashes, eligible, sample.k + int((~finite).sum()))
                    if wider.sum() <= keep.sum():
                        break  # no other candidate in this batch
                    keep = wider
                    vectors = self._regather(input_ids, mask, rows[keep], cols[keep])
                    finite = torch.isfinite(vectors).all(dim=2).all(dim=0).cpu().numpy()
                rows, cols, seqs, hashes = rows[keep], cols[keep], seqs[keep], hashes[keep]
                keys = {
                    "hash": hashes,
                    "doc": shard.doc[seqs],
                    "window": shard.window[seqs],
                    "pos": cols.astype(np.int64),
                    "token_id": input_ids[rows, cols].astype(np.int32),
                    "context": context_ids(shard.ids, shard.offsets[seqs], lengths[seqs], cols),
                }
                if not finite.all():
                    keys = {name: v[finite] for name, v in keys.items()}
                    vectors = vectors[:, torch.as_tensor(finite, device=vectors.device)]
                sample.add(vectors, keys=keys)
        self.recorder.stats = None  # the statistics are ours until a flush takes them, not the recorder's
        for site_stats in self.stats if with_stats else ():
            site_stats.massive.settle()  # the shard's top |x| entries named, its keys released
        record = {
            "shard": shard.index,
            "fingerprint": shard.fingerprint(),
            "config_hash": config_hash,
            "n_tokens": shard.n_tokens,
            "n_sequences": shard.n_sequences,
            "n_examined": examined,
            "n_excluded": n_excluded,
            "n_kept": sample.n,
            "nonfinite": self.recorder.nonfinite.cpu().tolist(),
            "forward_batches": forwards,
            "batch_tokens": batch_tokens,
            "seconds": round(time.perf_counter() - t0, 4),
        }
        if with_stats:
            self.stats_shards.append(shard.index)
            record["stats_pending"] = True
            if self.flush_every and shard.index % self.flush_every == self.flush_every - 1:
                self._seal()  # the group's last shard: its partial is complete
        state = None if sample.is_empty else sample.state(copy=False)  # the sample is dropped next
        if store_root is None:
            return {**record, "state": state}
        store = RunStore(store_root)
        t_write = time.perf_counter()
        if state is not None:
            record["sha256"] = store.write_arrays(shard_file(shard.index, "npz"), state)
        record["write_seconds"] = round(time.perf_counter() - t_write, 4)  # `seconds` above ends before the write
        store.write_json(shard_file(shard.index, "json"), seal_record(record))  # written last: its presence means done
        # the candidates' hashes travel back with the reply (not saved): the driver tightens the next thresholds
        return {**record, "kept_hashes": np.empty(0, np.uint64) if state is None else state["hash"]}

    def _enter_group(self, index: int) -> None:
        """Before shard `index` feeds the statistics: seal those of another group (the last, short group of a run
        is followed by a retried group's shards), and refuse a shard out of its group's order, which would sum
        the group in another order than every other run's (the driver never sends one: a guard)."""
        group = index // self.flush_every
        if self.stats_shards and self.stats_shards[-1] // self.flush_every != group:
            self._seal()
        expected = self.stats_shards[-1] + 1 if self.stats_shards else group * self.flush_every
        if index != expected:
            raise RuntimeError(f"shard {index} came out of its statistics group's order (expected shard {expected})")

    def _regather(self, input_ids: np.ndarray, mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
        """The states at (rows, cols) from another forward pass of a batch that already fed the statistics and the
        non-finite counts: neither is fed again."""
        stats, counts = self.recorder.stats, self.recorder.nonfinite.clone()
        self.recorder.stats = None
        try:
            return forward_and_gather(self.model, self.recorder, input_ids, mask, rows, cols)
        finally:
            self.recorder.stats, self.recorder.nonfinite = stats, counts

    def _seal(self) -> None:
        """Close the running statistics into a set of their own for `flush` to write (callers hold `_lock`). On a
        GPU the set is packed and moved to the host here, so that the device holds one set of statistics at a time
        (a GPT-2-XL set is 5.9 GB), leaving the checksum and the write, the slow part, to `flush`; on a CPU the
        packing is left to `flush` too."""
        if self.stats is not None and self.stats_shards:
            held = stack_states(self.stats, copy=False, packed=True) if self.device.type == "cuda" else self.stats
            with self._state:
                self._sealed.append((held, self.stats_shards))
        self.stats, self.stats_shards = None, []

    def flush(self, store_root: str, config_hash: str, name: str, final: bool = True) -> list[dict]:
        """Write every sealed set of statistics as `stats/NAME-K.npz` and then its record `stats/NAME-K.json` (the
        shards it covers, checksum); with `final`, first seal the running statistics too. Returns the records.

        The sets are sealed by `process` at the end of each statistics group (and by the final flush), each summed
        over its group's shards in shard order from empty sums, so a partial's shards and bits depend only on the
        config (`flush_every`), not on which actor ran the group or when the driver asked. Safe to call from a second thread while `process` runs
        (the driver runs it in the actor's `io` concurrency group): the checksum and the write (and on a CPU the
        packing) then overlap the next shards' forward passes."""
        if final:
            with self._lock:  # after the shard running now, if any
                self._seal()
        with self._state:
            sets = list(self._sealed)
        records = []
        for k in range(len(sets)):
            held, shards = sets.pop(0)  # dropped as soon as written
            record = {"name": f"{name}-{k}", "config_hash": config_hash, "shards": sorted(shards)}
            if self.flush_every:
                record["group"] = shards[0] // self.flush_every
            store = RunStore(store_root)
            arrays = held if isinstance(held, dict) else stack_states(held, copy=False, packed=True)
            record["sha256"] = store.write_arrays(partial_file(record["name"], "npz"), arrays)
            store.write_json(partial_file(record["name"], "json"), seal_record(record))
            records.append(record)
            del arrays
            with self._state:
                self._sealed = [entry for entry in self._sealed if entry[0] is not held]
                self._state.notify_all()
            del held
        return records


def _contexts(shard: Shard, lengths: np.ndarray, seqs: np.ndarray, cols: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The context ids of a batch's real tokens `index` (`seqs`, `cols`: every real token's sequence and position)."""
    return context_ids(shard.ids, shard.offsets[seqs[index]], lengths[seqs[index]], cols[index])


def _candidates(sample: BottomKSample, hashes: np.ndarray, eligible: np.ndarray | None, limit: int) -> np.ndarray:
    """The batch's tokens that may enter the sample (`sample.candidates`, at most `limit` of them), among the
    `eligible` ones (None: all)."""
    if eligible is None:
        return sample.candidates(hashes, limit)
    keep = eligible.copy()
    keep[keep] = sample.candidates(hashes[keep], limit)
    return keep


def second_order_tokens(seed: int, doc: np.ndarray, window: np.ndarray, pos: np.ndarray, fraction: float) -> np.ndarray:
    """Which tokens feed the d x d statistics: those whose hash under a second seed falls in `fraction` (all when
    1): a deterministic subset, independent of shards and actors, and of the sample's own hash."""
    if fraction >= 1.0:
        return np.ones(len(doc), dtype=bool)
    return token_hash(seed ^ 0x5EC0_0D0E, doc, window, pos) < np.uint64(int(fraction * 2.0**64))
