"""The driver: one run of the whole data flow on a Ray cluster.

    corpus (driver) -> capture (GPU/CPU actors, one model replica each; shard samples -> run directory)
        -> merge (CPU tasks) -> similarity + baselines (a CPU task per layer and site)
        -> tables, plots, manifest (driver)

The driver holds only small things: shard token ids on their way out, shard records, and per-site results
(counts and numbers). Sample vectors travel actor -> run directory -> merge task -> object store -> site task ->
Parquet. A rerun of the same config into the same run directory reuses every finished shard (resume).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml
from tqdm.auto import tqdm

from tasks.corpus import documents, shards as shard_mod
from tasks.analysis.site import analyze_site
from tasks.analysis.baselines import empirical_gaussian, law_probabilities, wasserstein1
from tasks.analysis.distances import DISTANCES
from tasks.errors import RunError, UserError, first_line
from tasks.report.exemplars import exemplar_rows
from tasks.merge.tree import (
    corrupt_files,
    merge_shard_files,
    merge_states,
    merge_statistics_files,
    split_sites,
    split_statistics,
)
from tasks.capture.models import (
    d_model,
    load_model_config,
    load_tokenizer,
    n_layers,
    resolve_layers,
    site_table,
)
from tasks.report.plots import draw_plots
from tasks.capture.sampling import candidate_threshold
from tasks.analysis.similarity import CosineHistogram, bin_edges
from tasks.storage import RunStore, is_uri, shard_file
from tasks.report.tables import (
    EXEMPLAR_SCHEMA,
    SUMMARY_SCHEMA,
    histogram_rows,
    moments_table,
    rows_to_table,
)
from tasks.analysis.verdict import verdict, verdict_confident
from workflows.capture_pool import CaptureResult, run_capture
from workflows.config import Config
from workflows.interrupts import arm_sigterm, end_run, sigterm_interrupts
from workflows.run_lock import run_lock

log = logging.getLogger(__name__)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MERGE_FAN_IN = 64
# Site-level columns (the same on every variant's row, except where a variant sets its own value, as the
# standardized row does for predicted_cos_var: the prediction from its correlation matrix).
CORPUS_COLUMNS = ("n_tokens_stats", "n_tokens_second_order", "cos_mean_all", "cos2_mean_all", "pr_raw",
                  "pr_corrected", "pc90", "pc95", "pc99", "predicted_cos_var", "mean_share", "kurtosis_max",
                  "kurtosis_median", "kurtosis_share", "kurtosis_share_sample", "pc_kurtosis_max",
                  "pc_kurtosis_median", "pc_kurtosis_share", "norm_mean_all", "norm_std_all", "n_excluded",
                  "excluded_norm_mean", "excluded_norm_std", "rogue_dims",
                  "rogue_share")
RAW_ONLY = ("cos_mean_all", "cos2_mean_all", "mean_share", "rogue_dims", "rogue_share")
DISTANCE_INTERVALS = tuple(f"{m}_{b}_ci_{end}" for b in ("gaussian", "matched") for m in DISTANCES
                           for end in ("low", "high"))
DISTANCE_COLUMNS = ("ks_gaussian", "energy_gaussian", "w1_matched", "ks_matched", "energy_matched",
                    "cos_var_left_top1", "cos_var_left_top3", "cos_var_left_top5",
                    "cos_mean_ci_low", "cos_mean_ci_high", "cos2_over_gaussian_ci_low", "cos2_over_gaussian_ci_high",
                    *DISTANCE_INTERVALS, "dim_inv_cos2", "dim_inv_cos2_ci_low", "dim_inv_cos2_ci_high")
OUTPUTS = ("manifest.json", "config.yaml", "summary.parquet", "histograms.parquet", "exemplars.parquet",
           "samples.parquet", "moments.parquet", "statistics", "stats", "sanity.parquet", "plots", "shards",
           "report.html")


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


def prepare_run_dir(store: RunStore, cfg: Config, fresh: bool) -> dict:
    """Refuse a run directory holding another config's results (or clear it when `fresh`), check that it is
    writable, and mark the run `running`. Finished shards of the same config are kept for resume."""
    store.check_writable()
    old = {}
    if store.exists("manifest.json"):
        try:
            old = store.read_json("manifest.json")
        except ValueError:
            old = {}
        if old.get("config_hash") != cfg.result_hash() and not fresh:
            raise UserError(
                f"run directory {store.root!r} holds results of another config (hash {old.get('config_hash')}); "
                "set run.out to a new directory, or pass --fresh to replace them"
            )
    if fresh:
        for name in OUTPUTS:
            store.delete(name)
        old = {}
    store.delete("samples.parquet")
    store.write_text("config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    manifest = {
        "status": "running",
        "config_hash": cfg.result_hash(),
        "attempt": int(old.get("attempt", 0)) + 1,
        "config": cfg.to_dict(),
        "versions": versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
    }
    store.write_json("manifest.json", manifest)
    return manifest


def reusable_shards(store: RunStore, shards, config_hash: str, with_stats: bool) -> tuple[dict[int, dict], list[dict]]:
    """What an earlier attempt of this config left that can be trusted: the records of finished shards whose
    sample files pass their checksums and, with statistics on, the statistics partials that cover only such
    shards (each shard in at most one). A shard counts as done only when both hold; everything else is run
    again, and partials that cannot be used are deleted so that no statistic is ever counted twice."""
    import ray

    by_index = {s.index: s for s in shards}
    records = {}
    for name in store.list("shards"):
        if not name.endswith(".json"):
            continue
        try:
            rec = store.read_json(f"shards/{name}")
        except (OSError, ValueError):
            continue
        shard = by_index.get(rec.get("shard"))
        if shard is None or rec.get("config_hash") != config_hash or rec.get("fingerprint") != shard.fingerprint():
            continue
        records[shard.index] = rec
    check = ray.remote(corrupt_files).options(num_cpus=1)
    files = [(shard_file(i, "npz"), r["sha256"]) for i, r in records.items() if r.get("n_kept")]
    partials = []
    if with_stats:
        for name in store.list("stats"):
            if name.endswith(".json"):
                try:
                    p = store.read_json(f"stats/{name}")
                except (OSError, ValueError):
                    continue
                if p.get("config_hash") == config_hash and p.get("sha256"):
                    partials.append(p)
        files += [(f"stats/{p['name']}.npz", p["sha256"]) for p in partials]
    chunks = [files[i : i + MERGE_FAN_IN] for i in range(0, len(files), MERGE_FAN_IN)]
    bad = {path for found in ray.get([check.remote(store.root, c) for c in chunks]) for path in found}
    for index in [i for i in records if shard_file(i, "npz") in bad]:
        log.warning("shard %d: saved sample is missing or corrupt; recomputing it", index)
        records.pop(index)
    if not with_stats:
        return records, []
    accepted, covered = [], set()
    for p in sorted(partials, key=lambda p: p["name"]):
        shard_set = set(p["shards"])
        if f"stats/{p['name']}.npz" in bad or not shard_set <= set(records) or shard_set & covered:
            log.warning("statistics partial %s cannot be reused; its shards run again", p["name"])
            store.delete(f"stats/{p['name']}.json")
            store.delete(f"stats/{p['name']}.npz")
            continue
        accepted.append(p)
        covered |= shard_set
    return {i: r for i, r in records.items() if i in covered}, accepted


# ---------------------------------------------------------------------------------------------------------
# Ray


def connect_ray(cfg: Config) -> bool:
    """Join the cluster at RAY_ADDRESS or cluster.address, or start a local one. True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    # Workers import `tasks` and `workflows` from the project root, installed or not. A job submitted with
    # `ray job submit --working-dir` brings its own runtime environment (the uploaded project) instead.
    path = os.pathsep.join(p for p in (PROJECT_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    runtime_env = None if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ else {"env_vars": {"PYTHONPATH": path}}
    address = os.environ.get("RAY_ADDRESS") or cfg.cluster.address
    if address:
        log.info("connecting to Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return False
    log.info("starting a local Ray cluster")
    ray.init(include_dashboard=False, runtime_env=runtime_env)
    return True


def wait_for_gpus(cfg: Config) -> None:
    """Fail at once when actors ask for GPUs the cluster does not have, unless told to wait for an autoscaler."""
    import ray

    if cfg.cluster.gpus_per_actor <= 0:
        return
    deadline = time.monotonic() + cfg.cluster.gpu_wait_s
    while ray.cluster_resources().get("GPU", 0) < cfg.cluster.gpus_per_actor:
        if time.monotonic() >= deadline:
            waited = f" after waiting {cfg.cluster.gpu_wait_s:g} s" if cfg.cluster.gpu_wait_s else ""
            raise UserError(
                f"cluster.gpus_per_actor={cfg.cluster.gpus_per_actor:g} but the Ray cluster has no GPU{waited}; "
                "set cluster.gpus_per_actor=0 to run on CPU, or cluster.gpu_wait_s for an autoscaling cluster"
            )
        time.sleep(2.0)


# ---------------------------------------------------------------------------------------------------------
# Stages


def merge(store: RunStore, k: int, records: list[dict], n_sites: int):
    """Tree-reduce the shard samples (fan-in MERGE_FAN_IN) and split the result per site."""
    import ray

    files = sorted((r["shard"], r["sha256"]) for r in records if r.get("n_kept"))
    first = ray.remote(merge_shard_files)
    refs = [first.remote(k, store.root, files[i : i + MERGE_FAN_IN]) for i in range(0, len(files), MERGE_FAN_IN)]
    fold = ray.remote(merge_states)
    while len(refs) > 1:
        refs = [fold.remote(k, *refs[i : i + MERGE_FAN_IN]) for i in range(0, len(refs), MERGE_FAN_IN)]
    split_task = ray.remote(split_sites).options(num_returns=1 + n_sites)
    keys_ref, *vector_refs = split_task.remote(refs[0])
    return keys_ref, vector_refs


def stats_fan_in(n_partials: int) -> int:
    """Fan-in of the statistics merge tree: about sqrt(partials), so two levels of equal depth. A partial is
    sites x 2 x d^2 float64 (5.9 GB for GPT-2-XL) and a merge task folds its inputs one after another (at about
    the speed of its SHA-256 checks, `bench/stats_partials.py`): sqrt(P) tasks in parallel, then one, take
    2 sqrt(P) folds instead of P in one task (16 instead of 64 for 64 actors), holding one running sum each."""
    return min(max(math.isqrt(max(n_partials - 1, 0)) + 1, 2), MERGE_FAN_IN)


def merge_statistics(store: RunStore, partials: list[dict], n_sites: int) -> list:
    """Tree-reduce the statistics partials (fan-in `stats_fan_in`) and split them per site (object refs)."""
    import ray

    # In the order of the shards they cover, not of their names (which name the actor that wrote them): the
    # same partials merge in the same order, hence to the same bits, whichever actors ran them and however often.
    ordered = sorted(partials, key=lambda p: (sorted(p["shards"]), p["name"]))
    files = [(f"stats/{p['name']}.npz", p["sha256"]) for p in ordered]
    fan_in = stats_fan_in(len(files))
    first = ray.remote(merge_statistics_files)
    refs = [first.remote(store.root, n_sites, files[i : i + fan_in]) for i in range(0, len(files), fan_in)]
    while len(refs) > 1:
        refs = [first.remote(store.root, n_sites, [], *refs[i : i + fan_in]) for i in range(0, len(refs), fan_in)]
    split = ray.remote(split_statistics).options(num_returns=n_sites).remote(refs[0], n_sites)
    return [split] if n_sites == 1 else list(split)


def analyze(cfg: Config, store: RunStore, sites, keys_ref, vector_refs, stats_refs, n: int, d: int) -> tuple[list[dict], CosineHistogram]:
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


def write_results(cfg: Config, store: RunStore, results: list[dict], empirical: CosineHistogram, keys: dict,
                  tokenizer, n_tokens: int, nonfinite: np.ndarray) -> dict:
    """summary.parquet, histograms.parquet, exemplars.parquet; returns the consistency checks for the manifest."""
    bins = cfg.similarity.bins
    edges = bin_edges(bins)
    emp_prob = empirical.counts / empirical.n_pairs
    summary, hist_tables, exemplars, moment_tables = [], [], [], []
    for r, bad in zip(results, nonfinite):
        layer, site, d = r["layer"], r["site"], r["d_model"]
        if "dims" in r:
            moment_tables.append(moments_table(layer, site, r["dims"]))
        for variant, v in r["variants"].items():
            hist = CosineHistogram.load(v["hist"])
            site_level = {name: r.get(name) for name in CORPUS_COLUMNS}
            if variant != "raw":  # these describe the raw states' directions, not the centred ones
                for name in RAW_ONLY:
                    site_level[name] = None
            site_level.update({name: v[name] for name in CORPUS_COLUMNS if name in v})  # a variant's own value
            summary.append(
                {
                    "layer": layer, "site": site, "variant": variant, "d_model": d, "n_tokens": n_tokens,
                    "n_sample": r["n_sample"], "n_pairs": hist.n_pairs, "n_nonfinite": int(bad),
                    "cos_mean": v["cos_mean"], "cos_std": v["cos_std"], "d_fit": v["d_fit"],
                    "w1_gaussian": v["w1_gaussian"], "w1_fit": v["w1_fit"],
                    "norm_mean": v["norm_mean"], "norm_std": v["norm_std"],
                    "cos2_over_gaussian": v.get("cos2_over_gaussian"),
                    **{name: v.get(name) for name in DISTANCE_COLUMNS},
                    **site_level,
                }
            )
            if "matched_counts" in v:
                mc = v["matched_counts"]
                hist_tables.append(histogram_rows(layer, site, variant, "gaussian_matched", edges, mc / mc.sum(), mc))
            hist_tables += [
                histogram_rows(layer, site, variant, "data", edges, hist.counts / hist.n_pairs, hist.counts),
                histogram_rows(layer, site, variant, "gaussian_exact", edges, law_probabilities(d, bins)),
                histogram_rows(layer, site, variant, "gaussian_fit", edges, law_probabilities(v["d_fit"], bins)),
                histogram_rows(layer, site, variant, "gaussian_empirical", edges, emp_prob, empirical.counts),
            ]
            exemplars += exemplar_rows(layer, site, variant, v["pairs"], keys, tokenizer)
    rows = {(r["layer"], r["site"], r["variant"]): r for r in summary}
    for r in summary:
        site_rows = rows[(r["layer"], r["site"], "raw")], rows.get((r["layer"], r["site"], "centered"))
        r["verdict"], r["verdict_confident"] = verdict(*site_rows), verdict_confident(*site_rows)
    store.write_parquet("summary.parquet", rows_to_table(summary, SUMMARY_SCHEMA))
    store.write_parquet("histograms.parquet", pa.concat_tables(hist_tables))
    store.write_parquet("exemplars.parquet", rows_to_table(exemplars, EXEMPLAR_SCHEMA))
    if moment_tables:
        store.write_parquet("moments.parquet", pa.concat_tables(moment_tables))
    else:
        store.delete("moments.parquet")
    d = results[0]["d_model"]
    return {
        "gaussian_empirical_vs_exact": {
            "d": d,
            "n_pairs": empirical.n_pairs,
            "w1": wasserstein1(emp_prob, law_probabilities(d, bins)),
            "cos_std_empirical": empirical.std,
            "cos_std_exact": float(1.0 / np.sqrt(d)),
        }
    }


def run(cfg: Config, fresh: bool = False) -> Path | str:
    """Execute a whole run (resuming finished shards of an earlier attempt); returns the run directory.
    Raises UserError for problems the user can fix, RunError for a run that could not finish."""
    timer = Timer()
    t_start = time.perf_counter()
    store = RunStore(cfg.run.out)
    with timer.stage("validate"):
        trust = cfg.model.trust_remote_code == cfg.model.name
        model_config = load_model_config(cfg.model.name, cfg.model.revision, trust)
        site_table(model_config.model_type)
        layers = resolve_layers(cfg.capture.layers, model_config)
    with run_lock(store), sigterm_interrupts():  # one driver per run directory; SIGTERM ends it as Ctrl-C does
        with timer.stage("validate"):
            manifest = prepare_run_dir(store, cfg, fresh)
        try:
            return _run(cfg, store, manifest, model_config, layers, timer, t_start)
        except BaseException as exc:
            end_run(store, manifest, exc, timer.seconds)  # manifest `failed` or `interrupted`; raises


def _run(cfg: Config, store: RunStore, manifest: dict, model_config, layers, timer: Timer, t_start: float) -> Path | str:
    import ray

    sites = [(layer, site) for layer in layers for site in cfg.capture.sites]
    k = cfg.sample.size
    config_hash = cfg.result_hash()
    with timer.stage("corpus"):
        trust = cfg.model.trust_remote_code == cfg.model.name
        tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision, trust)
        c = cfg.corpus
        texts = documents.load_texts(c.source, name=c.name, config=c.config, split=c.split, files=c.files, text_field=c.text_field)
        docs = documents.tokenize(texts, tokenizer, max_docs=c.max_docs)
        if not docs:
            raise UserError("the corpus has no non-empty document; check corpus.source, corpus.files or corpus.text_field")
        seq_len = shard_mod.context_length(model_config, c.max_length)
        shards = shard_mod.make_shards(shard_mod.make_sequences(docs, tokenizer, seq_len, c.long_docs), c.shard_tokens)
        total = sum(s.n_tokens for s in shards)
        exclusion = shard_mod.Exclusion.from_config(cfg.capture.exclude, tokenizer)
        excluded = sum(exclusion.count(s) for s in shards) if exclusion else 0
    eligible = total - excluded  # the tokens that can be sampled: the threshold must count only these
    if eligible < k:
        hint = ", or set capture.exclude=[] to keep position 0 and special tokens" if excluded else ""
        raise UserError(
            f"the corpus has {eligible} usable tokens, fewer than sample.size={k}; lower sample.size or add documents{hint}"
        )
    threshold = candidate_threshold(k, eligible)
    log.info("corpus: %d documents, %d sequences, %d tokens (%d excluded: %s) in %d shards", len(docs),
             sum(s.n_sequences for s in shards), total, excluded, ", ".join(cfg.capture.exclude) or "none", len(shards))

    with timer.stage("cluster_start"):
        started = connect_ray(cfg)
    arm_sigterm()  # again: ray.init installs its own SIGTERM handler
    try:
        wait_for_gpus(cfg)
        with timer.stage("resume_check"):
            reused, partials = reusable_shards(store, shards, config_hash, cfg.stats.enabled)
        if reused:
            log.info("resuming: %d of %d shards already done", len(reused), len(shards))
        todo = [s for s in shards if s.index not in reused]
        captured = CaptureResult()
        if todo:
            with timer.stage("capture"):
                done_tokens = sum(r["n_tokens"] for r in reused.values())
                captured = run_capture(cfg, store, todo, sites, k, threshold, config_hash, total, done_tokens,
                                       manifest["attempt"], exclusion, seq_len)
            # the driver's own share of the stage: its CPU seconds, and the wall time before every actor was ready
            timer.seconds["capture_driver_cpu"] = round(captured.driver_cpu_s, 3)
            timer.seconds["capture_startup"] = round(captured.startup_s, 3)
        new_records, infos, retries = captured.records, captured.actors, captured.retries
        records = sorted([*reused.values(), *new_records], key=lambda r: r["shard"])
        with timer.stage("merge"):
            keys_ref, vector_refs = merge(store, k, records, len(sites))
            stats_refs = merge_statistics(store, [*partials, *captured.partials], len(sites)) if cfg.stats.enabled else [None] * len(sites)
            keys = ray.get(keys_ref)
        n = len(keys["hash"])
        if n < k:
            raise RunError(f"only {n} finite candidate tokens for sample.size={k}; lower sample.size or use another run.seed")
        with timer.stage("similarity"):
            results, empirical = analyze(cfg, store, sites, keys_ref, vector_refs, stats_refs, n, d_model(model_config))
        # Flat keys (timings stay one number each, as the report page shows them).
        timer.seconds.update({f"similarity_parts.{step}": s for step, s in similarity_parts(results).items()})
    finally:
        if started:
            ray.shutdown()
    nonfinite = np.sum([r["nonfinite"] for r in records], axis=0)
    with timer.stage("report"):
        checks = write_results(cfg, store, results, empirical, keys, tokenizer, total, nonfinite)
        draw_plots(store)
    timer.seconds["total"] = round(time.perf_counter() - t_start, 3)
    capture_s = timer.seconds.get("capture", 0.0)
    examined = sum(r["n_examined"] for r in records)
    manifest.update(
        status="complete",
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        model={"name": cfg.model.name, "model_type": model_config.model_type, "d_model": d_model(model_config),
               "n_layers": n_layers(model_config), "layers": list(layers), "sites": list(cfg.capture.sites)},
        corpus={"documents": len(docs), "sequences": sum(s.n_sequences for s in shards), "tokens": total,
                "tokens_excluded": excluded, "excluded_kinds": list(cfg.capture.exclude),
                "special_ids": list(exclusion.special_ids), "shards": len(shards), "sequence_length": seq_len},
        shards={"total": len(shards), "reused": len(reused), "computed": len(new_records), "retries": retries},
        sample={"size": n, "candidate_threshold": int(threshold), "candidates": sum(r["n_kept"] for r in records),
                "vectors_saved": cfg.sample.save_vectors},
        nonfinite={"tokens_examined": examined,
                   "per_site": {f"L{layer}.{site}": int(v) for (layer, site), v in zip(sites, nonfinite)}},
        actors=infos,
        throughput={"capture_tokens_per_s": round(sum(r["n_tokens"] for r in new_records) / capture_s, 1) if capture_s else None,
                    "forward_batches": sum(r["forward_batches"] for r in records)},
        checks=checks,
        timings=timer.seconds,
    )
    # model sanity check, final manifest and report.html (workflows/finish.py)
    from workflows.finish import finish_run

    finish_run(cfg, store, manifest, model_config.model_type, timer.seconds, t_start)
    log.info("run complete: %s (%.1f s; %d of %d shards reused)", store.root, timer.seconds["total"], len(reused), len(shards))
    return store.root if is_uri(store.root) else Path(store.local_path())
