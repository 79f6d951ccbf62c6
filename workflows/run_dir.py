"""The run directory across attempts: refuse another config's results, mark the run `running`, and find what an
earlier attempt of the same config finished (resume)."""

from __future__ import annotations

import logging
import platform
import sys
import time

import numpy as np
import pyarrow as pa
import yaml

from tasks.errors import UserError
from tasks.merge.reduce import find_corrupt, sample_files
from tasks.storage import RunStore, partial_file, shard_file
from workflows.config import Config

log = logging.getLogger(__name__)

OUTPUTS = ("manifest.json", "config.yaml", "summary.parquet", "histograms.parquet", "exemplars.parquet",
           "samples.parquet", "moments.parquet", "statistics", "stats", "sanity.parquet", "plots", "shards",
           "report.html")


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


def _records(store: RunStore, folder: str) -> list[dict]:
    """The readable JSON records in a folder of the run directory."""
    out = []
    for name in store.list(folder):
        if name.endswith(".json"):
            try:
                out.append(store.read_json(f"{folder}/{name}"))
            except (OSError, ValueError):
                continue
    return out


def reusable_shards(store: RunStore, shards, config_hash: str, with_stats: bool) -> tuple[dict[int, dict], list[dict]]:
    """What an earlier attempt of this config left that can be trusted: the records of finished shards whose
    sample files pass their checksums and, with statistics on, the statistics partials that cover only such
    shards (each shard in at most one). A shard counts as done only when both hold; everything else is run
    again, and partials that cannot be used are deleted so that no statistic is ever counted twice."""
    by_index = {s.index: s for s in shards}
    records = {}
    for rec in _records(store, "shards"):
        shard = by_index.get(rec.get("shard"))
        if shard is None or rec.get("config_hash") != config_hash or rec.get("fingerprint") != shard.fingerprint():
            continue
        records[shard.index] = rec
    partials = []
    if with_stats:
        partials = [p for p in _records(store, "stats") if p.get("config_hash") == config_hash and p.get("sha256")]
    files = sample_files(records) + [(partial_file(p["name"], "npz"), p["sha256"]) for p in partials]
    bad = find_corrupt(store.root, files)
    for index in [i for i in records if shard_file(i, "npz") in bad]:
        log.warning("shard %d: saved sample is missing or corrupt; recomputing it", index)
        records.pop(index)
    if not with_stats:
        return records, []
    accepted, covered = [], set()
    for p in sorted(partials, key=lambda p: p["name"]):
        shard_set = set(p["shards"])
        if partial_file(p["name"], "npz") in bad or not shard_set <= set(records) or shard_set & covered:
            log.warning("statistics partial %s cannot be reused; its shards run again", p["name"])
            store.delete(partial_file(p["name"], "json"))
            store.delete(partial_file(p["name"], "npz"))
            continue
        accepted.append(p)
        covered |= shard_set
    return {i: r for i, r in records.items() if i in covered}, accepted
