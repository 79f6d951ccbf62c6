"""The driver: one run of the whole data flow on a Ray cluster.

    corpus (CPU tasks, streamed) -> capture (GPU/CPU actors, one model replica each; shard samples -> run directory)
        -> merge (CPU tasks) -> similarity + baselines (a CPU task per layer and site)
        -> tables, plots, manifest (driver)

The driver holds only small things: shard records (object-store references and counts; the corpus is read,
tokenized and cut into shards by Ray tasks while capture runs), and per-site results (counts and numbers). Sample vectors travel actor -> run directory -> merge task -> object store -> site task ->
Parquet. A rerun of the same config into the same run directory reuses every finished shard (resume).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tasks.analysis.baselines import check_bins, empirical_gaussian
from tasks.analysis.site import analyze_site, samples_part
from tasks.capture.models import d_model, n_layers, resolve_layers, validated_table
from tasks.capture.sanity import applies as causal_lm
from tasks.checkpoint.completeness import check_weights
from tasks.checkpoint.loading import load_model_config, load_tokenizer
from tasks.corpus.shards import Exclusion, context_length, special_tokens
from tasks.corpus.size import check_corpus_size, too_small
from tasks.corpus.sources import list_units
from tasks.corpus.stream import ShardStream, Totals, load_plan, planned_fingerprints
from tasks.corpus.tokenized import Framing
from tasks.errors import RunError, UserError
from tasks.merge.reduce import merge_samples, merge_statistics
from tasks.report.plots import draw_plots
from tasks.report.results import write_results
from tasks.sites import site_key
from tasks.storage import RunStore, is_uri
from workflows.capture_pool import CapturePool, CaptureResult, CaptureSpec
from workflows.cluster import connect_ray, wait_for_gpus
from workflows.config import Config
from workflows.interrupts import arm_sigterm, end_run, sigterm_interrupts
from workflows.run_dir import check_run_dir, failed_manifest, prepare_run_dir, prune_samples, reusable_shards
from workflows.run_lock import run_lock

log = logging.getLogger(__name__)


class Timer:
    """Wall time per stage, in the order the stages ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


def run(cfg: Config, fresh: bool = False) -> Path | str:
    """Execute a whole run (resuming finished shards of an earlier attempt); returns the run directory.
    Raises UserError for problems the user can fix, RunError for a run that could not finish."""
    timer = Timer()
    t_start = time.perf_counter()
    store = RunStore(cfg.run.out)
    with timer.stage("validate"):
        trust = cfg.model.trust_remote_code == cfg.model.name
        model_config = load_model_config(cfg.model.name, cfg.model.revision, trust)
        layers = resolve_layers(cfg.capture.layers, model_config)
        validated_table(model_config, cfg.model.sites, [(i, s) for i in layers for s in cfg.capture.sites], trust)
        # weights the checkpoint lacks stop the run here when its tensor names tell; else at the actors' load
        check_weights(cfg.model.name, model_config, cfg.model.revision, trust, causal_lm(model_config.model_type))
        check_bins(cfg.similarity.bins, d_model(model_config))
    with run_lock(store), sigterm_interrupts():  # one driver per run directory; SIGTERM ends it as Ctrl-C does
        check_run_dir(store, cfg, fresh)  # changes nothing: the directory is taken over once every check passed
        manifest: dict = {}
        try:
            return _run(cfg, store, fresh, manifest, model_config, layers, timer, t_start)
        except BaseException as exc:
            if not manifest and not store.exists("manifest.json"):  # a new directory: say why it stopped
                manifest.update(failed_manifest(cfg, "", timer.seconds))
            # the manifest says `failed` or `interrupted`, unless this attempt stopped before taking over a
            # directory that holds an earlier run's manifest (`prepare_run_dir`)
            end_run(store, manifest, exc, timer.seconds)


def _run(cfg: Config, store: RunStore, fresh: bool, manifest: dict, model_config, layers, timer: Timer,
         t_start: float) -> Path | str:
    import ray

    sites = [(layer, site) for layer in layers for site in cfg.capture.sites]
    k = cfg.sample.size
    with timer.stage("corpus"):  # the listing: file sizes and Parquet footers; the text is read during capture
        trust = cfg.model.trust_remote_code == cfg.model.name
        tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision, trust)
        units = list_units(cfg.corpus)
        # the saved plan of an earlier attempt, checked against the corpus as it is now (a changed file refuses the
        # rerun) before the directory is taken over; --fresh deletes it
        plan = [] if fresh else load_plan(store, cfg.result_hash(), units, cfg.corpus.text_field)
        seq_len = context_length(model_config, cfg.corpus.max_length)
        framing = corpus_framing(cfg, tokenizer, seq_len)
        exclusion = Exclusion.from_config(cfg.capture.exclude, tokenizer)

    with timer.stage("cluster_start"):
        started = connect_ray(cfg)
    arm_sigterm()  # again: ray.init installs its own SIGTERM handler
    try:
        wait_for_gpus(cfg)
        with timer.stage("validate"):  # every input check passed: only now is the run directory changed
            manifest.update(prepare_run_dir(store, cfg, fresh))
        spec = CaptureSpec(sites, k, cfg.result_hash(), seq_len, manifest["attempt"], exclusion)
        # capture: corpus units -> shards -> actor pool -> shard samples and statistics partials in the run directory
        with timer.stage("resume_check"):
            planned = planned_fingerprints(plan)
            last = max(planned) if planned and plan[-1].get("end") else None
            reused, partials = reusable_shards(store, planned, spec.config_hash, cfg.stats.enabled,
                                               cfg.stats.flush_every, last)
        if reused:
            log.info("resuming: %d shards already done", len(reused))
        stream = ShardStream(cfg.corpus, framing, units, store, spec.config_hash, plan, set(reused),
                             readers=corpus_readers(cfg), backlog=2 * cfg.cluster.actors * cfg.cluster.shards_in_flight,
                             on_done=lambda totals: check_corpus_size(totals, framing, exclusion, k))
        captured = CaptureResult()
        if not stream.done:
            with timer.stage("capture"):
                done_tokens = sum(r["n_tokens"] for r in reused.values())
                captured = CapturePool(cfg, store, spec).run(stream, done_tokens)
            # the driver's own share of the stage: its CPU seconds, and the wall time before every actor was ready
            timer.seconds["capture_driver_cpu"] = round(captured.driver_cpu_s, 3)
            timer.seconds["capture_startup"] = round(captured.startup_s, 3)
            timer.seconds["corpus_read"] = round(captured.corpus_s, 3)  # overlaps capture
        records = sorted([*reused.values(), *captured.records], key=lambda r: r["shard"])
        corpus = CorpusSummary(stream.totals, sum(r["n_excluded"] for r in records), seq_len, exclusion)
        if corpus.eligible < k:
            raise too_small(str(corpus.eligible), k, bool(corpus.excluded))
        log.info("corpus: %d documents, %d sequences, %d tokens (%d excluded: %s) in %d shards", corpus.documents,
                 corpus.sequences, corpus.tokens, corpus.excluded, ", ".join(cfg.capture.exclude) or "none",
                 corpus.shards)
        # merge: tree reductions to one sample and one set of statistics, split per site
        with timer.stage("merge"):
            keys_ref, vector_refs = merge_samples(store.root, k, records, len(sites))
            stats_refs = (merge_statistics(store.root, [*partials, *captured.partials], len(sites))
                          if cfg.stats.enabled else [None] * len(sites))
            keys = ray.get(keys_ref)
        n = len(keys["hash"])
        if n < k:
            raise RunError(f"only {n} finite candidate tokens for sample.size={k}; lower sample.size or use another run.seed")
        # similarity and baselines: a task per site
        with timer.stage("similarity"):
            results, empirical = analyze(cfg, store, sites, keys_ref, vector_refs, stats_refs, n, d_model(model_config))
            prune_samples(store, {samples_part(*s) for s in sites} if cfg.sample.save_vectors else set())
        timer.seconds.update({f"similarity_parts.{step}": s for step, s in similarity_parts(results).items()})
    finally:
        if started:
            ray.shutdown()
    nonfinite = np.sum([r["nonfinite"] for r in records], axis=0)
    with timer.stage("report"):
        checks = write_results(store, results, empirical, keys, tokenizer, cfg.similarity.bins, corpus.tokens, nonfinite)
        draw_plots(store)
    timer.seconds["total"] = round(time.perf_counter() - t_start, 3)
    manifest.update(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    **run_summary(cfg, model_config, layers, corpus, spec, records, reused, captured, n, nonfinite,
                                  timer.seconds.get("capture", 0.0)),
                    checks=checks, timings=timer.seconds)
    # model sanity check, final manifest and report.html (workflows/finish.py)
    from workflows.finish import finish_run

    finish_run(cfg, store, manifest, model_config.model_type, timer.seconds, t_start, units=units, framing=framing)
    log.info("run complete: %s (%.1f s; %d of %d shards reused)", store.root, timer.seconds["total"], len(reused),
             corpus.shards)
    return store.root if is_uri(store.root) else Path(store.local_path())


@dataclass(frozen=True)
class CorpusSummary:
    """What the corpus stage read, for the manifest: the stream's totals and the excluded tokens the shards
    counted."""

    totals: Totals
    excluded: int
    seq_len: int
    exclusion: Exclusion

    def __getattr__(self, name):
        return getattr(self.totals, name)  # documents, sequences, tokens, shards, units_read

    @property
    def eligible(self) -> int:
        """The tokens that can be sampled."""
        return self.tokens - self.excluded


def corpus_framing(cfg: Config, tokenizer, seq_len: int) -> Framing:
    """How the corpus tasks turn documents into model inputs (the tokenizer is loaded again in each worker)."""
    prefix, suffix = special_tokens(tokenizer)
    body = seq_len - len(prefix) - len(suffix)
    if body <= 0:
        raise UserError(f"sequence length {seq_len} leaves no room for tokens; raise corpus.max_length")
    return Framing(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code == cfg.model.name, tuple(prefix),
                   tuple(suffix), body, cfg.corpus.long_docs, cfg.corpus.text_field)


def corpus_readers(cfg: Config) -> int:
    """`corpus.readers`, or (auto) the cluster's CPUs left by the actors, at least one."""
    import ray

    if cfg.corpus.readers != "auto":
        return cfg.corpus.readers
    cpus = ray.cluster_resources().get("CPU", 1.0)
    return max(1, int(cpus - cfg.cluster.actors * cfg.cluster.cpus_per_actor))


def analyze(cfg: Config, store: RunStore, sites, keys_ref, vector_refs, stats_refs, n: int, d: int):
    """One task per site plus one for the empirical Gaussian baseline; results in site order."""
    import ray

    sc = cfg.similarity
    task = ray.remote(analyze_site).options(num_cpus=1)
    refs = [
        task.remote(layer, site, vec_ref, keys_ref, bins=sc.bins, tile=sc.tile, quantiles=sc.quantiles,
                    store_root=store.root, save_samples=cfg.sample.save_vectors, stats=stats_ref,
                    matched_seed=cfg.run.seed * 1_000_003 + index, n_boot=cfg.stats.bootstrap)
        for index, ((layer, site), vec_ref, stats_ref) in enumerate(zip(sites, vector_refs, stats_refs))
    ]
    empirical_ref = ray.remote(empirical_gaussian).options(num_cpus=1).remote(n, d, cfg.run.seed, sc.bins, sc.tile)
    with tqdm(total=len(refs) + 1, unit="site", desc="similarity", disable=None) as bar:
        remaining = refs + [empirical_ref]
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            bar.update(len(done))
    return ray.get(refs), ray.get(empirical_ref)


def similarity_parts(results: list[dict]) -> dict[str, float]:
    """Seconds per step of the site tasks (`analyze_site`'s `timings`), summed over sites: task time, so with
    tasks running in parallel the sum can exceed the similarity stage's wall time."""
    total: dict[str, float] = {}
    for r in results:
        for step, s in r.get("timings", {}).items():
            total[step] = total.get(step, 0.0) + s
    return {step: round(s, 3) for step, s in total.items()}


def run_summary(cfg: Config, model_config, layers, corpus: CorpusSummary, spec: CaptureSpec, records: list[dict],
                reused: dict, captured: CaptureResult, n: int, nonfinite: np.ndarray, capture_s: float) -> dict:
    """The manifest's account of what the run read, captured and reused."""
    new = captured.records
    rate = round(sum(r["n_tokens"] for r in new) / capture_s, 1) if capture_s else None
    return {
        "model": {"name": cfg.model.name, "model_type": model_config.model_type, "d_model": d_model(model_config),
                  "n_layers": n_layers(model_config), "layers": list(layers), "sites": list(cfg.capture.sites)},
        "corpus": {"documents": corpus.documents, "sequences": corpus.sequences, "tokens": corpus.tokens,
                   "tokens_excluded": corpus.excluded, "excluded_kinds": list(cfg.capture.exclude),
                   "special_ids": list(corpus.exclusion.special_ids), "shards": corpus.shards,
                   "sequence_length": corpus.seq_len, "units_read": corpus.units_read},
        "shards": {"total": corpus.shards, "reused": len(reused), "computed": len(new),
                   "retries": captured.retries},
        "sample": {"size": n, "candidate_threshold": captured.threshold,
                   "candidates": sum(r["n_kept"] for r in records), "vectors_saved": cfg.sample.save_vectors},
        "nonfinite": {"tokens_examined": sum(r["n_examined"] for r in records),
                      "per_site": {site_key(layer, site): int(v) for (layer, site), v in zip(spec.sites, nonfinite)}},
        "actors": captured.actors,
        "throughput": {"capture_tokens_per_s": rate, "forward_batches": sum(r["forward_batches"] for r in records)},
    }
