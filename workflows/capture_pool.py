"""The capture stage's scheduler: a pool of model-replica actors fed shards, with retries and statistics flushes.

Each live actor has at most `cluster.shards_in_flight` shards queued. A shard whose task fails, or whose actor
dies (process exit, out of memory, node lost), goes back to the queue, up to `cluster.max_retries` times; a dead
actor is replaced, and new actors get work only once they are ready. With streaming statistics on, shards go out
by statistics group (`stats.flush_every` consecutive shards, fixed by the config): an actor takes a whole group,
gets its shards in shard order, sums them from empty sums and is told to `flush` the group's partial once it is
sealed; so every partial, and the merge of all of them, is the same bits whichever actors ran the groups and in
whatever order they finished. A shard counts as done only once a flush covering it is written, so the shards of
an actor that dies with unflushed statistics are run again (its whole groups). With statistics on, an actor whose
shard fails is replaced as a dead one is: its statistics may hold the batches the shard ran before failing.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field


from tasks.capture.actor import ShardCapturer
from tasks.capture.sampling import StreamingThreshold
from tasks.corpus.shards import Exclusion
from tasks.corpus.stream import ShardStream, ShardTicket
from tasks.errors import RunError, first_line, user_error
from tasks.storage import RunStore, partial_file
from workflows.config import Config
from workflows.progress import Progress

log = logging.getLogger(__name__)

FAULT_ENV = ("GPT_STATS_FAULTS", "GPT_STATS_FAULT_DIR")


@dataclass(frozen=True)
class CaptureSpec:
    """What every shard of a run is captured with."""

    sites: list[tuple[int, str]]
    k: int  # sample size
    config_hash: str
    seq_len: int  # the longest sequence, for the actors' batch budget
    attempt: int  # of this run directory: names the statistics partials
    exclusion: Exclusion | None = None


@dataclass
class CaptureResult:
    records: list[dict] = field(default_factory=list)  # one per shard run
    partials: list[dict] = field(default_factory=list)  # statistics flushes written
    actors: list[dict] = field(default_factory=list)  # ready() of every actor that came up
    retries: int = 0
    startup_s: float = 0.0  # wall seconds until the first actors were all ready (model loads)
    driver_cpu_s: float = 0.0  # CPU seconds of the driver process during the stage (scheduling overhead)
    corpus_s: float = 0.0  # wall seconds until the whole corpus was read and cut into shards
    first_shard_s: float | None = None  # wall seconds until the first shard was handed to an actor
    threshold: int = 0  # the candidate threshold handed to the last shard



class CapturePool:
    """Runs shards on a pool of `ShardCapturer` actors until every shard is done (and, with statistics on,
    flushed), replacing actors that die or fail."""

    def __init__(self, cfg: Config, store: RunStore, spec: CaptureSpec):
        import ray

        self.cfg, self.store, self.spec = cfg, store, spec
        cc = cfg.cluster
        self.stats_fraction = cfg.stats.second_order_fraction if cfg.stats.enabled else None
        env = {name: os.environ[name] for name in FAULT_ENV if name in os.environ}
        options = dict(num_cpus=cc.cpus_per_actor, num_gpus=cc.gpus_per_actor, max_restarts=0)
        if cc.resources:
            options["resources"] = dict(cc.resources)
        if env:
            options["runtime_env"] = {"env_vars": env}
        # `io`: one thread of its own per actor for statistics flushes, so a flush overlaps the next shards
        self.actor_cls = ray.remote(concurrency_groups={"io": 1})(ShardCapturer).options(**options)
        # each actor fixes its own batch budget, and seals its statistics every `flush_every` shards
        self.budget = (cfg.capture.batch_tokens, spec.seq_len, spec.k, self.stats_fraction is not None,
                       cfg.stats.flush_every, cfg.stats.massive_top)
        self.actors: dict = {}
        self.generation: Counter = Counter()  # slot -> how many times its actor was replaced
        self.live: set[int] = set()
        self.starting: dict = {}  # ready ref -> (slot, generation)
        self.in_flight: dict = {}  # process ref -> (slot, generation, shard)
        self.queued: Counter = Counter()  # (slot, generation) -> its shards in flight
        self.flushing: dict = {}  # flush ref -> (slot, generation)
        self.flushes: Counter = Counter()
        self.unflushed: dict[int, list[int]] = {}  # slot -> shards whose statistics its actor holds
        self.done: dict[int, dict] = {}  # shard index -> record, for shards whose statistics are not yet flushed
        self.flushed_early: set[int] = set()  # flushed before their own result reached the driver
        self.failures: Counter = Counter()
        self.pending: deque[ShardTicket] = deque()
        self.group_size = cfg.stats.flush_every if self.stats_fraction is not None else None
        self.cursor: dict[int, int] = {}  # slot -> the next shard of the statistics group its actor is being sent
        self.by_index: dict[int, ShardTicket] = {}  # shards not yet booked as done (their Shard stays in the store)
        self.threshold = StreamingThreshold(spec.k)  # handed to each shard at dispatch
        self.result = CaptureResult()

    # -- the loop ---------------------------------------------------------------------------------------------

    def run(self, stream: ShardStream, done_tokens: int) -> CaptureResult:
        """Capture every shard `stream` produces (reading the corpus as capture runs); `done_tokens` were
        captured by earlier attempts."""
        import ray

        t0, cpu0 = time.perf_counter(), time.process_time()
        self.t0 = t0
        cc = self.cfg.cluster
        self.stream = stream
        stream.refill(0)
        n_actors = cc.actors
        for slot in range(n_actors):
            self.unflushed[slot] = []
            self.start(slot)
        last_progress = time.monotonic()
        self.progress = Progress(self.cfg.run.progress_s, stream.totals, done_tokens,
                                 max_tokens=self.cfg.corpus.max_tokens)
        try:
            while True:
                stream.refill(0 if self.starved() else len(self.pending))
                self.dispatch()
                if stream.done and not self.pending and not self.in_flight:
                    self.flush_remaining()
                    if not self.flushing:
                        break
                waiting = list(self.in_flight) + list(self.flushing) + list(self.starting) + stream.waiting()
                ready, _ = ray.wait(waiting, num_returns=1, timeout=min(10.0, self.progress.every))
                self.progress.maybe_log(self.shards_done(), self.failures)
                if not ready:
                    if not self.live and time.monotonic() - last_progress > cc.actor_wait_s:
                        raise RunError(f"no capture actor could be placed for {cc.actor_wait_s:g} s; the cluster lacks "
                                       "the resources asked for (cluster.cpus_per_actor, gpus_per_actor, resources)")
                    continue
                ref = ready[0]
                last_progress = time.monotonic()
                if ref in stream.inflight:
                    for ticket in stream.on_ready(ref):
                        self.by_index[ticket.index] = ticket
                        self.pending.append(ticket)
                    if stream.done and not self.result.corpus_s:
                        self.result.corpus_s = time.perf_counter() - t0
                elif ref in self.starting:
                    self.on_started(ref)
                    if not self.result.startup_s and len(self.live) == n_actors:
                        self.result.startup_s = time.perf_counter() - t0
                elif ref in self.flushing:
                    self.on_flushed(ref)
                else:
                    self.progress.captured(self.on_shard(ref))
        finally:
            self.progress.close(self.shards_done(), self.failures)
            for actor in self.actors.values():
                ray.kill(actor, no_restart=True)  # free CPUs/GPUs for merge and similarity; stop work on failure
            stream.close()
        self.result.retries = sum(v for key, v in self.failures.items() if isinstance(key, int))
        self.result.threshold = int(self.threshold.threshold())
        self.result.driver_cpu_s = time.process_time() - cpu0
        return self.result

    def dispatch(self) -> None:
        """Queue pending shards on live actors, up to `cluster.shards_in_flight` each."""
        spec = self.spec
        for slot in sorted(self.live):
            key = (slot, self.generation[slot])
            while self.pending and self.queued[key] < self.cfg.cluster.shards_in_flight:
                shard = self.pending.popleft() if self.group_size is None else self.next_in_group(slot)
                if shard is None:
                    break
                ref = self.actors[slot].process.remote(shard.ref, spec.k, self.threshold.threshold(), self.cfg.run.seed,
                                                       None,
                                                       self.store.root, spec.config_hash, self.stats_fraction,
                                                       spec.exclusion)
                self.in_flight[ref] = (slot, self.generation[slot], shard)
                self.queued[key] += 1
                if self.result.first_shard_s is None:
                    self.result.first_shard_s = time.perf_counter() - self.t0

    def next_in_group(self, slot: int) -> ShardTicket | None:
        """The next shard for the actor in `slot`, with statistics on: the next of the group it is being sent, in
        shard order; once that group is all sent, the first shard of the lowest group that no actor holds (None:
        wait, for the stream to cut the group's next shard or for a group to be free)."""
        g = self.group_size
        by_index = {t.index: t for t in self.pending}
        nxt = self.cursor.get(slot)
        if nxt is not None and nxt % g and not (self.stream.done and nxt >= self.stream.next_shard):
            if nxt not in by_index:
                return None  # not cut yet, or on its way back from a replaced actor
            return self.take(slot, by_index[nxt])
        self.cursor.pop(slot, None)
        held = {i // g for i in self.cursor.values() if i % g}  # groups an actor is still being sent
        free = [i for i in by_index if i % g == 0 and i // g not in held]
        return self.take(slot, by_index[min(free)]) if free else None

    def take(self, slot: int, ticket: ShardTicket) -> ShardTicket:
        self.pending.remove(ticket)
        self.cursor[slot] = ticket.index + 1
        return ticket

    def starved(self) -> bool:
        """True when an actor waits for a shard of its group that is not in the queue (not cut yet, as a rule): the
        stream must read on, whatever waits in the queue for other actors (a retried group)."""
        if self.group_size is None:
            return False
        waiting = {t.index for t in self.pending}
        return any(nxt % self.group_size and nxt not in waiting for nxt in self.cursor.values())

    # -- actors ---------------------------------------------------------------------------------------------

    def start(self, slot: int) -> None:
        cfg = self.cfg
        trust = cfg.model.trust_remote_code == cfg.model.name
        self.actors[slot] = self.actor_cls.remote(cfg.model.name, cfg.model.dtype, self.spec.sites,
                                                  revision=cfg.model.revision, use_gpu=cfg.cluster.gpus_per_actor > 0,
                                                  trust_remote_code=trust, custom_sites=cfg.model.sites,
                                                  gpus=max(1, int(cfg.cluster.gpus_per_actor)))
        self.starting[self.actors[slot].ready.remote(*self.budget)] = (slot, self.generation[slot])

    def replace(self, slot: int) -> None:
        """Kill the actor in this slot (if still there) and start another; its unflushed shards run again."""
        import ray

        self.live.discard(slot)
        self.cursor.pop(slot, None)  # its group goes back whole: its shards sent so far return to the queue
        ray.kill(self.actors[slot], no_restart=True)
        self.requeue(self.unflushed[slot])
        self.unflushed[slot] = []
        self.generation[slot] += 1
        self.start(slot)

    def shards_done(self) -> int:
        """Shards captured in this attempt: booked, or waiting for their actor's statistics flush."""
        return len(self.result.records) + len(self.done)

    def book(self, rec: dict) -> None:
        """A shard is done: its record counts, and its tokens are no longer held for a retry."""
        self.result.records.append(rec)
        self.by_index.pop(rec["shard"], None)

    def requeue(self, indices) -> None:
        for i in indices:
            self.done.pop(i, None)
            self.pending.appendleft(self.by_index[i])

    def reply(self, table: dict, ref, key: str, what: str):
        """(slot, generation, value) of an actor's start or flush reply; on failure the value is None, and unless
        the actor was replaced since (a replaced actor's calls fail as it is killed: its own failure was counted),
        the failure is counted (`key`, `what`: formats of the slot) and the actor replaced."""
        import ray

        slot, gen = table.pop(ref)
        try:
            return slot, gen, ray.get(ref)
        except Exception as exc:
            if gen == self.generation[slot]:
                self.fail(key.format(slot=slot), what.format(slot=slot), exc)
                self.replace(slot)
            return slot, gen, None

    def fail(self, key, what: str, exc: BaseException) -> None:
        """Count a failure; past `cluster.max_retries` of the same key the run stops. A user's mistake found
        inside an actor (a model that cannot load) stops it at once."""
        if (user := user_error(exc)) is not None:
            raise user from None
        self.failures[key] += 1
        retries = self.cfg.cluster.max_retries
        if self.failures[key] > retries:
            raise RunError(f"{what} failed {self.failures[key]} times; last error: {first_line(exc)}; "
                           "finished shards are kept: rerun the same command to resume") from None
        log.warning("%s failed (%s); retrying (%d of %d)", what, first_line(exc), self.failures[key], retries)

    def on_started(self, ref) -> None:
        slot, gen, info = self.reply(self.starting, ref, "actor {slot}", "capture actor {slot} start")
        if info is not None and gen == self.generation[slot]:
            self.live.add(slot)
            self.result.actors.append(info)

    # -- shards ---------------------------------------------------------------------------------------------

    def on_shard(self, ref) -> int:
        """Book a shard's reply; returns the tokens it captured (0 if it failed and was requeued)."""
        import ray

        slot, gen, shard = self.in_flight.pop(ref)
        self.queued[(slot, gen)] -= 1
        try:
            rec = ray.get(ref)
        except Exception as exc:
            self.fail(shard.index, f"shard {shard.index}", exc)
            self.pending.appendleft(shard)
            # a dead actor, or one whose statistics may hold part of the failed shard (it fails after feeding
            # some batches, as a GPU out of memory does): replaced, its unflushed shards run again
            if gen == self.generation[slot] and (self.stats_fraction is not None
                                                 or isinstance(exc, ray.exceptions.RayActorError)):
                self.replace(slot)
            return 0
        self.threshold.add(rec.pop("kept_hashes"))
        if self.stats_fraction is None:
            self.book(rec)
        elif shard.index in self.flushed_early:
            self.flushed_early.discard(shard.index)
            self.book(rec)
        elif gen == self.generation[slot]:
            self.done[shard.index] = rec
            self.unflushed[slot].append(shard.index)
            if self.sealed(slot) and not self.is_flushing(slot):
                self.flush(slot, final=False)
        else:
            self.requeue([shard.index])  # finished on an actor since replaced: its statistics are gone
        return rec["n_tokens"]

    # -- statistics flushes -----------------------------------------------------------------------------------

    def sealed(self, slot: int) -> bool:
        """Whether the actor in `slot` holds a sealed group unwritten: one whose last shard it ran, or one followed
        by a shard of another group."""
        g, held = self.group_size, self.unflushed[slot]
        return any(i % g == g - 1 for i in held) or len({i // g for i in held}) > 1

    def is_flushing(self, slot: int) -> bool:
        return any(s == slot for s, _ in self.flushing.values())

    def flush(self, slot: int, final: bool) -> None:
        """Ask an actor to write the statistics it sealed (each statistics group once its last shard ran; with
        `final`, also the group it is in, the run's last and shorter one). It runs in the actor's own `io` thread while the next shards run; the partials it writes
        name the shards they cover, and the driver books them from those lists."""
        self.flushes[slot] += 1
        name = f"partial-a{self.spec.attempt:03d}-s{slot:03d}-g{self.generation[slot]:03d}-{self.flushes[slot]:05d}"
        call = self.actors[slot].flush.options(concurrency_group="io")
        self.flushing[call.remote(self.store.root, self.spec.config_hash, name, final)] = (slot, self.generation[slot])

    def flush_remaining(self) -> None:
        """Once every shard ran: the final flush of each live actor that holds unflushed statistics."""
        busy = {s for s, _ in self.flushing.values()}
        for slot in sorted(self.live - busy):
            if self.unflushed[slot]:
                self.flush(slot, final=True)

    def on_flushed(self, ref) -> None:
        # on failure the actor's statistics are in an unknown state: it is replaced, its shards run again
        slot, gen, partials = self.reply(self.flushing, ref, "flush {slot}", "statistics flush of actor {slot}")
        if partials is None:
            return
        if gen != self.generation[slot]:
            # written by an actor replaced after it was asked (its flush ran on while a shard failed): its shards
            # went back to the queue at the replacement, so these partials must not count them again
            for partial in partials:
                self.store.delete(partial_file(partial["name"], "json"))
                self.store.delete(partial_file(partial["name"], "npz"))
            return
        for partial in partials:
            self.result.partials.append(partial)
            covered = set(partial["shards"])
            self.unflushed[slot] = [i for i in self.unflushed[slot] if i not in covered]
            for i in covered:
                if i in self.done:
                    self.book(self.done.pop(i))
                else:
                    self.flushed_early.add(i)  # its own result is still on its way to the driver
        if partials and self.sealed(slot):
            self.flush(slot, final=False)  # sealed meanwhile, while this flush was writing
