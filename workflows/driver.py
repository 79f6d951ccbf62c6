"""The driver: one run of the whole data flow on a Ray cluster.

    corpus (driver) -> capture (GPU/CPU actors, one model replica each) -> merge (CPU tasks)
        -> similarity + baselines (a CPU task per layer and site) -> tables, plots, manifest (driver)

The driver holds only small things: shard token ids on their way out, per-shard metadata, and per-site results
(counts and numbers). Sample vectors travel actor -> object store -> merge task -> site task -> Parquet.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml
from tqdm.auto import tqdm

from tasks import corpus as corpus_mod
from tasks.actor import ShardCapturer
from tasks.analysis import analyze_site
from tasks.baselines import empirical_gaussian, law_probabilities, wasserstein1
from tasks.errors import UserError
from tasks.exemplars import exemplar_rows
from tasks.merge import merge_states, split_sites
from tasks.models import d_model, load_model_config, load_tokenizer, n_layers, resolve_layers, site_table
from tasks.plots import draw_plots
from tasks.sampling import candidate_threshold
from tasks.similarity import CosineHistogram, bin_edges
from tasks.tables import (
    EXEMPLAR_SCHEMA,
    SUMMARY_SCHEMA,
    histogram_rows,
    rows_to_table,
    write_json,
    write_parquet,
    write_text,
)
from workflows.config import Config

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MERGE_FAN_IN = 64
VARIANT = "raw"


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


def versions() -> dict[str, str]:
    import datasets
    import ray
    import scipy
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "ray": ray.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "scipy": scipy.__version__,
    }


# ---------------------------------------------------------------------------------------------------------
# Run directory


def prepare_run_dir(out: Path, cfg: Config) -> dict:
    """Create the run directory, refuse one holding another config's results, and mark the run `running`."""
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        import json

        try:
            old = json.loads(manifest_path.read_text())
        except ValueError:
            old = {}
        if old.get("config_hash") != cfg.result_hash():
            raise UserError(
                f"run directory {str(out)!r} holds results of another config (hash {old.get('config_hash')}); "
                "set run.out to a new directory or delete that one"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to run.out {str(out)!r} ({exc.strerror}); choose a writable directory") from None
    for stale in ("samples.parquet", "plots"):
        shutil.rmtree(out / stale, ignore_errors=True)
    write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), out / "config.yaml")
    manifest = {
        "status": "running",
        "config_hash": cfg.result_hash(),
        "config": cfg.to_dict(),
        "versions": versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
    }
    write_json(manifest, manifest_path)
    return manifest


# ---------------------------------------------------------------------------------------------------------
# Ray


def connect_ray(cfg: Config) -> bool:
    """Join the cluster at RAY_ADDRESS or cluster.address, or start a local one. True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or cfg.cluster.address
    if address:
        log.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return False
    log.info("starting a local Ray cluster")
    # Workers import `tasks` and `workflows` from the project root, installed or not.
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    return True


def _unwrap(exc: Exception) -> Exception:
    """A UserError raised inside a Ray task or actor, if that is what `exc` carries."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, UserError) else exc


def check_gpus(cfg: Config, started_locally: bool) -> None:
    import ray

    if cfg.cluster.gpus_per_actor <= 0:
        return
    have = ray.cluster_resources().get("GPU", 0)
    if have == 0 and started_locally:
        raise UserError("cluster.gpus_per_actor > 0 but this machine has no GPU; set cluster.gpus_per_actor=0 to run on CPU")
    if have == 0:
        log.warning("the cluster has no GPU yet; waiting for the autoscaler to add GPU workers")


# ---------------------------------------------------------------------------------------------------------
# Stages


def capture(cfg: Config, shards, sites, k: int, threshold: np.uint64, total_tokens: int, timer: Timer):
    """Run all shards through a pool of actors, a bounded number in flight each. Returns (metas, state refs,
    actor infos)."""
    import ray

    cc = cfg.cluster
    actor_cls = ray.remote(ShardCapturer).options(num_cpus=cc.cpus_per_actor, num_gpus=cc.gpus_per_actor)
    n_actors = min(cc.actors, len(shards))
    with timer.stage("model_load"):
        actors = [
            actor_cls.remote(cfg.model.name, cfg.model.dtype, sites, revision=cfg.model.revision, use_gpu=cc.gpus_per_actor > 0)
            for _ in range(n_actors)
        ]
        try:
            infos = ray.get([a.ready.remote() for a in actors])
        except Exception as exc:
            raise _unwrap(exc) from None
    log.info("%d actor(s) ready: %s", n_actors, ", ".join(i["device"] for i in infos))

    pending = deque(shards)
    in_flight: dict = {}
    metas: list[dict] = []
    states: list[tuple[int, object]] = []

    def submit(actor) -> None:
        shard = pending.popleft()
        meta_ref, state_ref = actor.process.options(num_returns=2).remote(
            shard, k, threshold, cfg.run.seed, cfg.capture.batch_tokens
        )
        in_flight[meta_ref] = (actor, state_ref)

    with timer.stage("capture"), tqdm(total=total_tokens, unit="tok", desc="capture", disable=None) as bar:
        for actor in actors:
            for _ in range(cc.shards_in_flight):
                if pending:
                    submit(actor)
        while in_flight:
            [done], _ = ray.wait(list(in_flight), num_returns=1)
            actor, state_ref = in_flight.pop(done)
            try:
                meta = ray.get(done)
            except Exception as exc:
                raise _unwrap(exc) from None
            metas.append(meta)
            if meta["n_kept"]:
                states.append((meta["shard"], state_ref))
            bar.update(meta["n_tokens"])
            if pending:
                submit(actor)
    for actor in actors:
        ray.kill(actor)  # free their CPUs/GPUs for the merge and similarity tasks
    return sorted(metas, key=lambda m: m["shard"]), [ref for _, ref in sorted(states, key=lambda s: s[0])], infos


def merge(k: int, state_refs: list, n_sites: int):
    """Tree-reduce shard samples (fan-in MERGE_FAN_IN) and split the result per site."""
    import ray

    merge_task = ray.remote(merge_states)
    def reduce(refs: list) -> list:
        return [merge_task.remote(k, *refs[i : i + MERGE_FAN_IN]) for i in range(0, len(refs), MERGE_FAN_IN)]

    refs = reduce(state_refs)
    while len(refs) > 1:
        refs = reduce(refs)
    split_task = ray.remote(split_sites).options(num_returns=1 + n_sites)
    keys_ref, *vector_refs = split_task.remote(refs[0])
    return keys_ref, vector_refs


def analyze(cfg: Config, sites, keys_ref, vector_refs, n: int, d: int, out: Path) -> tuple[list[dict], CosineHistogram]:
    """One task per site plus one for the empirical Gaussian baseline; results in site order."""
    import ray

    sc = cfg.similarity
    task = ray.remote(analyze_site).options(num_cpus=1)
    refs = []
    for (layer, site), vec_ref in zip(sites, vector_refs):
        path = str(out / "samples.parquet" / f"part-L{layer:03d}-{site}.parquet") if cfg.sample.save_vectors else None
        refs.append(
            task.remote(layer, site, vec_ref, keys_ref, bins=sc.bins, tile=sc.tile, quantiles=sc.quantiles, samples_path=path)
        )
    empirical_ref = ray.remote(empirical_gaussian).options(num_cpus=1).remote(n, d, cfg.run.seed, sc.bins, sc.tile)
    with tqdm(total=len(refs) + 1, unit="site", desc="similarity", disable=None) as bar:
        remaining = refs + [empirical_ref]
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            bar.update(len(done))
    return ray.get(refs), ray.get(empirical_ref)


def write_results(cfg: Config, out: Path, results: list[dict], empirical: CosineHistogram, keys: dict, tokenizer, n_tokens: int) -> dict:
    """summary.parquet, histograms.parquet, exemplars.parquet; returns the consistency checks for the manifest."""
    bins = cfg.similarity.bins
    edges = bin_edges(bins)
    emp_prob = empirical.counts / empirical.n_pairs
    summary, hist_tables, exemplars = [], [], []
    for r in results:
        hist = CosineHistogram.load(r["hist"])
        layer, site, d = r["layer"], r["site"], r["d_model"]
        summary.append(
            {
                "layer": layer, "site": site, "variant": VARIANT, "d_model": d, "n_tokens": n_tokens,
                "n_sample": r["n_sample"], "n_pairs": hist.n_pairs, "cos_mean": r["cos_mean"], "cos_std": r["cos_std"],
                "d_fit": r["d_fit"], "w1_gaussian": r["w1_gaussian"], "w1_fit": r["w1_fit"],
                "norm_mean": r["norm_mean"], "norm_std": r["norm_std"],
            }
        )
        hist_tables += [
            histogram_rows(layer, site, VARIANT, "data", edges, hist.counts / hist.n_pairs, hist.counts),
            histogram_rows(layer, site, VARIANT, "gaussian_exact", edges, law_probabilities(d, bins)),
            histogram_rows(layer, site, VARIANT, "gaussian_fit", edges, law_probabilities(r["d_fit"], bins)),
            histogram_rows(layer, site, VARIANT, "gaussian_empirical", edges, emp_prob, empirical.counts),
        ]
        exemplars += exemplar_rows(layer, site, VARIANT, r["pairs"], keys, tokenizer)
    write_parquet(rows_to_table(summary, SUMMARY_SCHEMA), out / "summary.parquet")
    write_parquet(pa.concat_tables(hist_tables), out / "histograms.parquet")
    write_parquet(rows_to_table(exemplars, EXEMPLAR_SCHEMA), out / "exemplars.parquet")
    d = results[0]["d_model"]
    exact = law_probabilities(d, bins)
    return {
        "gaussian_empirical_vs_exact": {
            "d": d,
            "n_pairs": empirical.n_pairs,
            "w1": wasserstein1(emp_prob, exact),
            "cos_std_empirical": empirical.std,
            "cos_std_exact": float(1.0 / np.sqrt(d)),
        }
    }


def run(cfg: Config) -> Path:
    """Execute a whole run; returns the run directory. Raises UserError for problems the user can fix."""
    timer = Timer()
    out = Path(cfg.run.out)
    t_start = time.perf_counter()
    with timer.stage("validate"):
        model_config = load_model_config(cfg.model.name, cfg.model.revision)
        site_table(model_config.model_type)
        layers = resolve_layers(cfg.capture.layers, model_config)
        manifest = prepare_run_dir(out, cfg)
    try:
        return _run(cfg, out, manifest, model_config, layers, timer, t_start)
    except BaseException as exc:
        manifest.update(status="failed", reason=f"{type(exc).__name__}: {exc}", timings=timer.seconds)
        write_json(manifest, out / "manifest.json")
        raise


def _run(cfg, out, manifest, model_config, layers, timer, t_start) -> Path:
    import ray

    sites = [(layer, site) for layer in layers for site in cfg.capture.sites]
    k = cfg.sample.size
    with timer.stage("corpus"):
        tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision)
        c = cfg.corpus
        texts = corpus_mod.load_texts(c.source, name=c.name, config=c.config, split=c.split, files=c.files, text_field=c.text_field)
        docs = corpus_mod.tokenize(texts, tokenizer, max_docs=c.max_docs)
        seq_len = corpus_mod.context_length(model_config, c.max_length)
        shards = corpus_mod.make_shards(corpus_mod.make_sequences(docs, tokenizer, seq_len, c.long_docs), c.shard_tokens)
        total = sum(s.n_tokens for s in shards)
    if total < k:
        raise UserError(
            f"the corpus has {total} usable tokens, fewer than sample.size={k}; lower sample.size or add documents"
        )
    threshold = candidate_threshold(k, total)
    log.info("corpus: %d documents, %d sequences, %d tokens in %d shards", len(docs), sum(s.n_sequences for s in shards), total, len(shards))

    with timer.stage("cluster_start"):
        started = connect_ray(cfg)
    try:
        check_gpus(cfg, started)
        metas, state_refs, infos = capture(cfg, shards, sites, k, threshold, total, timer)
        with timer.stage("merge"):
            keys_ref, vector_refs = merge(k, state_refs, len(sites))
            keys = ray.get(keys_ref)
        n = len(keys["hash"])
        if n < k:
            raise RuntimeError(f"only {n} candidate tokens survived the sampling threshold for k={k}; rerun with another run.seed")
        with timer.stage("similarity"):
            results, empirical = analyze(cfg, sites, keys_ref, vector_refs, n, d_model(model_config), out)
    finally:
        if started:
            ray.shutdown()
    with timer.stage("report"):
        checks = write_results(cfg, out, results, empirical, keys, tokenizer, total)
        draw_plots(out)
    timer.seconds["total"] = round(time.perf_counter() - t_start, 3)
    capture_s = timer.seconds.get("capture", 0.0)
    manifest.update(
        status="complete",
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        model={"name": cfg.model.name, "model_type": model_config.model_type, "d_model": d_model(model_config),
               "n_layers": n_layers(model_config), "layers": list(layers), "sites": list(cfg.capture.sites)},
        corpus={"documents": len(docs), "sequences": sum(s.n_sequences for s in shards), "tokens": total,
                "shards": len(shards), "sequence_length": seq_len},
        sample={"size": n, "candidate_threshold": int(threshold), "candidates": sum(m["n_kept"] for m in metas),
                "vectors_saved": cfg.sample.save_vectors},
        actors=infos,
        throughput={"capture_tokens_per_s": round(total / capture_s, 1) if capture_s else None,
                    "forward_batches": sum(m["forward_batches"] for m in metas)},
        checks=checks,
        timings=timer.seconds,
    )
    write_json(manifest, out / "manifest.json")
    # -- model sanity check, final manifest and report.html (issue 5; all in workflows/finish.py) --
    from workflows.finish import finish_run

    finish_run(cfg, out, manifest, model_config.model_type, timer.seconds, t_start)
    # -- end issue 5 --
    log.info("run complete: %s (%.1f s)", out, timer.seconds["total"])
    return out
