"""The corpus stage on the cluster: units read and tokenized by reader actors, cut into shards by the driver in
corpus order, each shard assembled by a reader into the object store. The driver holds only small records.

The reads and the shard assembly run on `corpus.readers` reader actors (`CorpusReader`) that hold no CPU, so
that they never wait behind capture actors holding every CPU; actors, not tasks, because Ray gives a task that
holds no CPU a new worker process whenever none is idle, and each new process loads the tokenizer again.

`ShardStream` keeps at most `corpus.readers` unit reads in flight, takes their results in unit order (so
documents, their indices and the shards do not depend on how many readers ran or which finished first), and
cuts shards of `corpus.shard_tokens` exactly as `tasks.corpus.shards.make_shards` does over the whole corpus.
`corpus.max_docs` and `corpus.max_tokens` end the corpus inside the unit where they fall: no later unit is read
(with more than one reader, reads already running past it are cancelled and their results dropped).

The plan is saved as it is cut, one sealed record per unit in `corpus/` of the run directory (the file's size,
modification time and the checksum of the bytes read; the shards that close in the unit, with their slices and
fingerprints). A resumed run replays it: units whose shards are all finished are not read again, the units that
are read again must have the same checksum, and a listed file whose size changed, or whose modification time
changed over other bytes, stops the run before the run directory is taken over, as a changed config does.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tasks.corpus.sources import Unit, unit_sha256
from tasks.corpus.tokenized import Framing, assemble_shard, tokenize_unit
from tasks.errors import RunError, UserError, first_line, user_error
from tasks.storage import RunStore, record_intact, seal_record

log = logging.getLogger(__name__)

PLAN_DIR = "corpus"


def unit_file(index: int) -> str:
    return f"{PLAN_DIR}/unit-{index:06d}.json"


class CorpusReader:
    """A reader actor's work: units read and tokenized (`tokenize_unit`), shards assembled from them
    (`assemble_shard`); its worker process keeps the tokenizer loaded from one unit to the next."""

    def read(self, unit: Unit, framing: Framing) -> tuple[dict, dict]:
        return tokenize_unit(unit, framing)

    def assemble(self, *args) -> object:
        return assemble_shard(*args)


def reader_pool(n: int) -> list:
    """`n` reader actors, holding no CPU, restarted where they die (a lost node): a call that was running or
    queued then runs again on the new one."""
    import ray

    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3)(CorpusReader)
    return [actor.remote() for _ in range(n)]


@dataclass(frozen=True)
class ShardTicket:
    """What the driver holds of a shard: its index, the object-store reference of its `Shard`, its size and
    fingerprint."""

    index: int
    ref: object
    n_tokens: int
    n_sequences: int
    fingerprint: str


@dataclass
class Totals:
    """What the corpus stage has read so far."""

    units: int = 0  # units in the corpus (known from the listing)
    units_read: int = 0
    documents: int = 0
    sequences: int = 0
    tokens: int = 0  # model-input tokens, special tokens included
    body_tokens: int = 0  # text tokens (what `corpus.max_tokens` counts)
    shards: int = 0
    read_units: list[int] = field(default_factory=list)  # units whose read was started, in order
    done: bool = False


def load_plan(store: RunStore, config_hash: str, units: list[Unit], text_field: str = "text") -> list[dict]:
    """The saved plan's unit records 0..m of this config (the longest intact run from unit 0). Changes nothing, so
    the driver calls it before it takes the run directory over. Raises UserError when a listed file changed since
    they were written: its size differs, or its modification time and its bytes do (a file rewritten with the
    same bytes, `touch`ed or restored from a copy, is the same corpus)."""
    plan = []
    for u in range(len(units)):
        try:
            rec = store.read_json(unit_file(u))
        except (OSError, ValueError):
            break
        if not record_intact(rec) or rec.get("config_hash") != config_hash:
            break
        if not _unchanged(rec, units[u], text_field):
            raise UserError(f"corpus file {units[u].name!r} changed since this run directory's earlier attempt (its size "
                            "or contents differ); restore it, or pass --fresh to start over with the corpus as it is now")
        plan.append(rec)
        if rec.get("end"):
            break
    return plan


def _unchanged(rec: dict, unit: Unit, text_field: str) -> bool:
    """Whether a planned unit is still what its record saw: the same listing stamp, or a stamp that differs only
    in the file's modification time over bytes with the record's checksum."""
    stamp = unit.stamp()
    if rec["stamp"] == stamp:
        return True
    if {**rec["stamp"], "mtime": stamp["mtime"]} != stamp:
        return False
    same = unit_sha256(unit, text_field) == rec["sha256"]
    if same:
        log.debug("corpus file %s: modification time changed, bytes of unit %d unchanged", unit.name, unit.index)
    return same


def planned_fingerprints(plan: list[dict]) -> dict[int, str]:
    return {s["index"]: s["fingerprint"] for rec in plan for s in rec["shards"]}



class ShardStream:
    """Produces `ShardTicket`s in corpus order for the capture pool (`workflows.capture_pool`)."""

    def __init__(self, corpus, framing: Framing, units: list[Unit], store: RunStore, config_hash: str,
                 plan: list[dict], finished: set[int], readers: int, backlog: int, pool: list | None = None,
                 on_done: Callable[[Totals], None] | None = None):
        self.corpus, self.framing, self.units, self.store = corpus, framing, units, store
        self.on_done = on_done  # called once the whole corpus is read (it may refuse it: a UserError)
        self.config_hash, self.plan, self.finished = config_hash, plan, finished
        self.readers, self.backlog = max(1, readers), max(1, backlog)
        self.own_pool = pool is None  # reader actors made here are stopped by `close`; a given pool is the caller's
        self.pool = reader_pool(self.readers) if pool is None else list(pool)
        self.assembled = 0
        self.totals = Totals(units=len(units))
        self.special = len(framing.prefix) + len(framing.suffix)
        # units to read, in order: a planned unit only if an unfinished shard needs it, then every later unit
        needed: set[int] = set()
        for rec in plan:
            for s in rec["shards"]:
                if s["index"] not in finished:
                    needed |= {p[0] for p in s["parts"]}
        if plan and not plan[-1].get("end"):
            needed |= {p[0] for p in plan[-1]["open"]}
        tail = [] if plan and plan[-1].get("end") else list(range(len(plan), len(units)))
        self.order = sorted(needed) + tail
        self.launched = 0  # into `order`
        self.taken = 0  # into `order`: units processed, in order
        self.inflight: dict = {}  # meta ref -> (unit, data ref)
        self.arrived: dict[int, tuple[dict, object]] = {}
        self.data: dict[int, object] = {}  # unit -> its data ref, while a shard to assemble may need it
        self._sha: dict[int, str] = {}  # unit -> checksum of its bytes, for units cut in this attempt
        last = plan[-1] if plan else None
        self.open: list[list[int]] = list(last["open"]) if last else []
        self.open_tokens = int(last["open_tokens"]) if last else 0
        self.next_shard = max([s["index"] for rec in plan for s in rec["shards"]], default=-1) + 1
        for rec in plan:
            self._count(rec)
        self.totals.done = not self.order

    # -- the pool's side -------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.totals.done

    def close(self) -> None:
        """Stop the reader actors, once capture is over (until then a shard whose object is lost with its node is
        rebuilt by its reader)."""
        import ray

        if self.own_pool:
            for reader in self.pool:
                ray.kill(reader, no_restart=True)
        self.pool = []

    def waiting(self) -> list:
        return list(self.inflight)

    def refill(self, pending: int) -> None:
        """Start unit reads, up to `readers` in flight, while fewer than `backlog` shards wait for an actor."""
        while (not self.totals.done and self.launched < len(self.order) and len(self.inflight) < self.readers
               and pending < self.backlog):
            u = self.order[self.launched]
            reader = self.pool[self.launched % len(self.pool)]
            meta_ref, data_ref = reader.read.options(num_returns=2).remote(self.units[u], self.framing)
            self.inflight[meta_ref] = (u, data_ref)
            self.totals.read_units.append(u)
            self.launched += 1

    def on_ready(self, ref) -> list[ShardTicket]:
        """Take a finished read; returns the shards it completes (in order)."""
        import ray

        u, data_ref = self.inflight.pop(ref)
        try:
            meta = ray.get(ref)
        except Exception as exc:
            try:
                ray.get(data_ref)  # the same failure: taken, so that Ray does not report it again as unhandled
            except Exception:  # noqa: BLE001
                pass
            if (user := user_error(exc)) is not None:
                raise user from None
            raise RunError(f"reading corpus file {self.units[u].name!r} failed: {first_line(exc)}") from None
        self.arrived[u] = (meta, data_ref)
        out: list[ShardTicket] = []
        while not self.totals.done and self.taken < len(self.order) and self.order[self.taken] in self.arrived:
            u = self.order[self.taken]
            meta, data_ref = self.arrived.pop(u)
            self.taken += 1
            self.totals.units_read += 1
            out += self._replay(u, meta, data_ref) if u < len(self.plan) else self._cut(u, meta, data_ref)
            if self.taken == len(self.order):
                self.totals.done = True
        if self.totals.done:
            if not self.totals.documents:
                raise UserError("the corpus has no non-empty document; check corpus.source, corpus.files or "
                                "corpus.text_field")
            for pending in list(self.inflight):  # reads past the end of a cut corpus: not used
                ray.cancel(pending)
            self.inflight.clear()
            self.arrived.clear()
            if self.on_done is not None:
                self.on_done(self.totals)
        self._release()
        return out

    # -- replaying a saved plan ------------------------------------------------------------------------------

    def _count(self, rec: dict) -> None:
        t = self.totals
        t.documents, t.sequences = rec["doc_offset"] + rec["docs"], t.sequences + rec["sequences"]
        t.tokens, t.body_tokens = t.tokens + rec["tokens"], t.body_tokens + rec["body_tokens"]
        t.shards += len(rec["shards"])

    def _replay(self, u: int, meta: dict, data_ref) -> list[ShardTicket]:
        rec = self.plan[u]
        if meta["sha256"] != rec["sha256"]:
            raise UserError(f"corpus file {self.units[u].name!r} changed since this run directory's earlier attempt "
                            "(its bytes differ); restore it, or pass --fresh to start over with the corpus as it is now")
        self.data[u] = data_ref
        return [self._assemble(s) for s in rec["shards"] if s["index"] not in self.finished]

    # -- cutting new shards ----------------------------------------------------------------------------------

    def _limit(self, meta: dict) -> tuple[int, int | None, int, bool]:
        """(sequences kept, body tokens of the last one when cut, documents kept, whether the corpus ends here)."""
        c, t = self.corpus, self.totals
        n, docs, end = len(meta["body"]), meta["docs"], False
        if c.max_docs is not None and t.documents + docs >= c.max_docs:
            docs, end = c.max_docs - t.documents, True
            n = int(np.searchsorted(meta["seq_doc"], docs, side="left"))
        cut = None
        if c.max_tokens is not None:
            body = np.cumsum(meta["body"][:n].astype(np.int64))
            left = c.max_tokens - t.body_tokens
            if n and body[-1] >= left:
                j = int(np.searchsorted(body, left, side="left"))
                r = left - (int(body[j - 1]) if j else 0)
                n, docs, end = j + 1, int(meta["seq_doc"][j]) + 1, True
                cut = r if r < int(meta["body"][j]) else None
            elif left <= 0:
                n, docs, end = 0, 0, True
        return n, cut, docs, end

    def _cut(self, u: int, meta: dict, data_ref) -> list[ShardTicket]:
        n, cut, docs, end = self._limit(meta)
        end = end or u == len(self.units) - 1
        self.data[u], self._sha[u] = data_ref, meta["sha256"]
        lengths = meta["body"][:n].astype(np.int64) + self.special
        if cut is not None:
            lengths[-1] = cut + self.special
        ends = np.cumsum(lengths)
        doc_offset = self.totals.documents
        closed, pos, base = [], 0, 0
        shard_tokens = self.corpus.shard_tokens
        while pos < n:
            j = int(np.searchsorted(ends, base + shard_tokens - self.open_tokens, side="left"))
            if j >= n:
                self.open.append([u, pos, n, doc_offset])
                self.open_tokens += int(ends[-1]) - base
                break
            self.open.append([u, pos, j + 1, doc_offset])
            closed.append(self._close(int(ends[j]) - base + self.open_tokens, None))
            base, pos = int(ends[j]), j + 1
        if end and self.open:
            closed.append(self._close(self.open_tokens, None))
        if cut is not None:
            closed[-1]["cut"] = cut
            closed[-1]["fingerprint"] = self._fingerprint(closed[-1]["parts"], cut)
        rec = {"unit": u, "config_hash": self.config_hash, "stamp": self.units[u].stamp(), "sha256": meta["sha256"],
               "doc_offset": doc_offset, "docs": docs, "sequences": n, "tokens": int(lengths.sum()),
               "body_tokens": int(lengths.sum()) - n * self.special, "shards": closed, "open": self.open,
               "open_tokens": self.open_tokens, "end": end}
        self.store.write_json(unit_file(u), seal_record(rec))  # before any of its shards can finish
        self._count(rec)
        if end:
            self.order = self.order[: self.taken]
        return [self._assemble(s) for s in closed]

    def _fingerprint(self, parts: list, cut: int | None) -> str:
        return hashlib.sha256(self._origin(parts, cut).encode()).hexdigest()[:16]

    def _origin(self, parts: list, cut: int | None) -> str:
        sums = [self.plan[p[0]]["sha256"] if p[0] < len(self.plan) else self._sha[p[0]] for p in parts]
        return json.dumps([[s, *p] for s, p in zip(sums, parts)] + [cut])

    def _close(self, tokens: int, cut: int | None) -> dict:
        parts, self.open, self.open_tokens = self.open, [], 0
        shard = {"index": self.next_shard, "parts": parts, "cut": cut, "n_tokens": tokens,
                 "n_sequences": sum(p[2] - p[1] for p in parts), "fingerprint": self._fingerprint(parts, cut)}
        self.next_shard += 1
        return shard

    def _assemble(self, s: dict) -> ShardTicket:
        reader = self.pool[self.assembled % len(self.pool)]
        self.assembled += 1
        ref = reader.assemble.remote(s["index"], s["parts"], s["cut"], self.framing, self._origin(s["parts"], s["cut"]),
                                     *[self.data[p[0]] for p in s["parts"]])
        return ShardTicket(s["index"], ref, s["n_tokens"], s["n_sequences"], s["fingerprint"])

    def _release(self) -> None:
        """Drop the data of units no shard still to be assembled needs (the object store frees them once the
        assembling tasks that use them are done)."""
        keep = {p[0] for p in self.open}
        for rec in self.plan[self._replayed_upto():]:
            for s in rec["shards"]:
                if s["index"] not in self.finished:
                    keep |= {p[0] for p in s["parts"]}
        for u in [u for u in self.data if u not in keep]:
            del self.data[u]

    def _replayed_upto(self) -> int:
        """Plan records whose shards were all assembled: those of the units processed so far."""
        done = [u for u in self.order[: self.taken] if u < len(self.plan)]
        return (max(done) + 1) if done else 0
