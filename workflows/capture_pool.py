"""The capture stage's scheduler: a pool of model-replica actors fed shards, with retries and statistics flushes.

Each live actor has at most `cluster.shards_in_flight` shards queued. A shard whose task fails, or whose actor
dies (process exit, out of memory, node lost), goes back to the queue, up to `cluster.max_retries` times; a dead
actor is replaced, and new actors get work only once they are ready. With streaming statistics on, each actor
accumulates statistics over the shards it ran and is told to `flush` them every `stats.flush_every` shards and at
the end; a shard counts as done only once a flush covering it is written, so the shards of an actor that dies
with unflushed statistics are run again. With statistics on, an actor whose shard fails is replaced as a dead one
is: its statistics may hold the batches the shard ran before failing.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from tasks.capture.actor import ShardCapturer
from tasks.errors import RunError, UserError, first_line
from tasks.storage import RunStore
from workflows.config import Config

log = logging.getLogger(__name__)

FAULT_ENV = ("GPT_STATS_FAULTS", "GPT_STATS_FAULT_DIR")


def _user_error(exc: BaseException) -> UserError | None:
    """The UserError raised inside a Ray task or actor, if that is what `exc` carries."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, UserError) else None


@dataclass
class CaptureResult:
    records: list[dict] = field(default_factory=list)  # one per shard run
    partials: list[dict] = field(default_factory=list)  # statistics flushes written
    actors: list[dict] = field(default_factory=list)  # ready() of every actor that came up
    retries: int = 0
    startup_s: float = 0.0  # wall seconds until the first actors were all ready (model loads)
    driver_cpu_s: float = 0.0  # CPU seconds of the driver process during the stage (scheduling overhead)


def run_capture(cfg: Config, store: RunStore, todo, sites, k: int, threshold: np.uint64, config_hash: str,
                total_tokens: int, done_tokens: int, attempt: int, exclusion=None, seq_len: int = 0) -> CaptureResult:
    import ray

    t0, cpu0 = time.perf_counter(), time.process_time()
    cc = cfg.cluster
    stats_fraction = cfg.stats.second_order_fraction if cfg.stats.enabled else None
    env = {name: os.environ[name] for name in FAULT_ENV if name in os.environ}
    options = dict(num_cpus=cc.cpus_per_actor, num_gpus=cc.gpus_per_actor, max_restarts=0)
    if cc.resources:
        options["resources"] = dict(cc.resources)
    if env:
        options["runtime_env"] = {"env_vars": env}
    # `io`: one thread of its own per actor for statistics flushes, so a flush overlaps the next shards
    actor_cls = ray.remote(concurrency_groups={"io": 1})(ShardCapturer).options(**options)
    trust = cfg.model.trust_remote_code == cfg.model.name

    def start():
        return actor_cls.remote(cfg.model.name, cfg.model.dtype, sites, revision=cfg.model.revision,
                                use_gpu=cc.gpus_per_actor > 0, trust_remote_code=trust)

    by_index = {s.index: s for s in todo}
    n_actors = min(cc.actors, len(todo))
    actors = {slot: start() for slot in range(n_actors)}
    generation: Counter = Counter()
    # each actor fixes its own batch budget, and seals its statistics every `flush_every` shards
    budget = (cfg.capture.batch_tokens, seq_len, k, stats_fraction is not None, cfg.stats.flush_every)

    starting = {actors[slot].ready.remote(*budget): (slot, 0) for slot in actors}
    live: set[int] = set()
    pending = deque(todo)
    in_flight: dict = {}  # process ref -> (slot, generation, shard)
    queued: Counter = Counter()  # (slot, generation) -> its shards in flight: O(1) per slot, not a scan of in_flight
    flushing: dict = {}  # flush ref -> (slot, generation)
    unflushed: dict[int, list[int]] = {slot: [] for slot in actors}  # shards whose statistics the actor holds
    done: dict[int, dict] = {}  # shard index -> record, for shards whose statistics are not yet flushed
    failures: Counter = Counter()
    result = CaptureResult()
    last_progress = time.monotonic()
    flushes: Counter = Counter()
    flushed_early: set[int] = set()

    def requeue(indices) -> None:
        for i in indices:
            done.pop(i, None)
            pending.appendleft(by_index[i])

    def reply(table: dict, ref, key: str, what: str):
        """(slot, generation, value) of an actor's start or flush reply; on failure the value is None, and unless
        the actor was replaced since (a replaced actor's calls fail as it is killed: its own failure was counted),
        the failure is counted (`key`, `what`: formats of the slot) and the actor replaced."""
        slot, gen = table.pop(ref)
        try:
            return slot, gen, ray.get(ref)
        except Exception as exc:
            if gen == generation[slot]:
                fail(key.format(slot=slot), what.format(slot=slot), exc)
                replace(slot)
            return slot, gen, None

    def replace(slot: int) -> None:
        """Kill the actor in this slot (if still there) and start another; its unflushed shards run again."""
        live.discard(slot)
        ray.kill(actors[slot], no_restart=True)
        requeue(unflushed[slot])
        unflushed[slot] = []
        generation[slot] += 1
        actors[slot] = start()
        starting[actors[slot].ready.remote(*budget)] = (slot, generation[slot])

    def flush(slot: int, final: bool) -> None:
        """Ask an actor to write the statistics it sealed (every `stats.flush_every` shards; with `final`, also
        those since). It runs in the actor's own `io` thread while the next shards run; the partials it writes
        name the shards they cover, and the driver books them from those lists."""
        flushes[slot] += 1
        name = f"partial-a{attempt:03d}-s{slot:03d}-g{generation[slot]:03d}-{flushes[slot]:05d}"
        flush_call = actors[slot].flush.options(concurrency_group="io")
        flushing[flush_call.remote(store.root, config_hash, name, final)] = (slot, generation[slot])

    def fail(key, what: str, exc: BaseException) -> None:
        if (user := _user_error(exc)) is not None:
            raise user from None
        failures[key] += 1
        if failures[key] > cc.max_retries:
            raise RunError(f"{what} failed {failures[key]} times; last error: {first_line(exc)}; "
                           "finished shards are kept: rerun the same command to resume") from None
        log.warning("%s failed (%s); retrying (%d of %d)", what, first_line(exc), failures[key], cc.max_retries)

    bar = tqdm(total=total_tokens, initial=done_tokens, unit="tok", desc="capture", disable=None)
    try:
        while True:
            for slot in sorted(live):
                key = (slot, generation[slot])
                while pending and queued[key] < cc.shards_in_flight:
                    shard = pending.popleft()
                    ref = actors[slot].process.remote(shard, k, threshold, cfg.run.seed, None, store.root,
                                                      config_hash, stats_fraction, exclusion)
                    in_flight[ref] = (slot, generation[slot], shard)
                    queued[key] += 1
            if not pending and not in_flight:
                busy = {s for s, _ in flushing.values()}
                for slot in sorted(live - busy):
                    if unflushed[slot]:
                        flush(slot, final=True)
                if not flushing:
                    break
            ready, _ = ray.wait(list(in_flight) + list(flushing) + list(starting), num_returns=1, timeout=10.0)
            if not ready:
                if not live and time.monotonic() - last_progress > cc.actor_wait_s:
                    raise RunError(f"no capture actor could be placed for {cc.actor_wait_s:g} s; the cluster lacks "
                                   "the resources asked for (cluster.cpus_per_actor, gpus_per_actor, resources)")
                continue
            ref = ready[0]
            last_progress = time.monotonic()
            if ref in starting:
                slot, gen, info = reply(starting, ref, "actor {slot}", "capture actor {slot} start")
                if info is None:
                    continue
                if gen == generation[slot]:
                    live.add(slot)
                    result.actors.append(info)
                    if not result.startup_s and len(live) == n_actors:
                        result.startup_s = time.perf_counter() - t0
                continue
            if ref in flushing:
                # on failure the actor's statistics are in an unknown state: it is replaced, its shards run again
                slot, gen, partials = reply(flushing, ref, "flush {slot}", "statistics flush of actor {slot}")
                if partials is None:
                    continue
                if gen != generation[slot]:
                    # written by an actor replaced after it was asked (its flush ran on while a shard failed): its
                    # shards went back to the queue at the replacement, so these partials must not count them again
                    for partial in partials:
                        store.delete(f"stats/{partial['name']}.json")
                        store.delete(f"stats/{partial['name']}.npz")
                    continue
                for partial in partials:
                    result.partials.append(partial)
                    covered = set(partial["shards"])
                    unflushed[slot] = [i for i in unflushed[slot] if i not in covered]
                    for i in covered:
                        if i in done:
                            result.records.append(done.pop(i))
                        else:
                            flushed_early.add(i)  # its own result is still on its way to the driver
                if partials and len(unflushed[slot]) >= cfg.stats.flush_every:
                    flush(slot, final=False)  # sealed meanwhile, while this flush was writing
                continue
            slot, gen, shard = in_flight.pop(ref)
            queued[(slot, gen)] -= 1
            try:
                rec = ray.get(ref)
            except Exception as exc:
                fail(shard.index, f"shard {shard.index}", exc)
                pending.appendleft(shard)
                # a dead actor, or one whose statistics may hold part of the failed shard (it fails after feeding
                # some batches, as a GPU out of memory does): replaced, its unflushed shards run again
                if gen == generation[slot] and (stats_fraction is not None or isinstance(exc, ray.exceptions.RayActorError)):
                    replace(slot)
                continue
            bar.update(rec["n_tokens"])
            if stats_fraction is None:
                result.records.append(rec)
                continue
            if shard.index in flushed_early:
                flushed_early.discard(shard.index)
                result.records.append(rec)
            elif gen == generation[slot]:
                done[shard.index] = rec
                unflushed[slot].append(shard.index)
                if len(unflushed[slot]) >= cfg.stats.flush_every and not any(s == slot for s, _ in flushing.values()):
                    flush(slot, final=False)
            else:
                requeue([shard.index])  # finished on an actor since replaced: its statistics are gone
    finally:
        bar.close()
        for actor in actors.values():
            ray.kill(actor, no_restart=True)  # free CPUs/GPUs for merge and similarity; stop work on failure
    result.retries = sum(v for key, v in failures.items() if isinstance(key, int))
    result.driver_cpu_s = time.process_time() - cpu0
    return result
