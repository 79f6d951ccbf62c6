"""The run directory across attempts: refuse another config's results, mark the run `running`, and find what an
earlier attempt of the same config finished (resume)."""

from __future__ import annotations

import logging
import platform
import re
import sys
import time

import numpy as np
import pyarrow as pa
import yaml

from tasks.errors import UserError
from tasks.merge.reduce import find_corrupt, sample_files
from tasks.storage import RunStore, partial_file, record_intact, shard_file
from workflows.config import Config

log = logging.getLogger(__name__)

OUTPUTS = ("manifest.json", "config.yaml", "summary.parquet", "histograms.parquet", "exemplars.parquet",
           "samples.parquet", "moments.parquet", "massive.parquet", "statistics", "stats", "sanity.parquet", "plots",
           "shards", "corpus", "report.html")


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


def read_manifest(store: RunStore) -> dict | None:
    """The run directory's manifest: {} when there is none, None when it is unreadable (not a JSON object)."""
    if not store.exists("manifest.json"):
        return {}
    try:
        old = store.read_json("manifest.json")
    except (OSError, ValueError):  # ValueError: not JSON, not UTF-8
        return None
    return old if isinstance(old, dict) else None


def _dir_config_hash(store: RunStore) -> str | None:
    """The result hash of the run directory's own `config.yaml`, None when it is missing or unreadable."""
    from workflows.config import config_from_dict

    try:
        return config_from_dict(yaml.safe_load(store.read_bytes("config.yaml"))).result_hash()
    except (OSError, ValueError, yaml.YAMLError, UserError):
        return None


def check_run_dir(store: RunStore, cfg: Config, fresh: bool) -> dict:
    """Whether this config may run into `run.out`, changing nothing there (a probe file comes and goes): refuse
    a directory holding another config's results unless `fresh`. Returns the earlier manifest ({} if none).

    A manifest that is not a JSON object (damaged) says nothing about whose results the directory holds. Its own
    `config.yaml` can: when that is this config, the directory is this config's and resumes (every finished shard
    is checked against its own record's checksum and config hash, not against the manifest); otherwise the run
    stops, since overwriting could destroy another config's results."""
    store.check_writable()
    old = read_manifest(store)
    if fresh:
        return {}
    if old is None:
        if _dir_config_hash(store) != cfg.result_hash():
            raise UserError(
                f"run directory {store.root!r}: manifest.json is unreadable (not a JSON object) and config.yaml does "
                "not show this config; restore manifest.json, or pass --fresh to replace the directory's results"
            )
        log.warning("run directory %s: manifest.json is unreadable; its config.yaml is this config's, so the run "
                    "resumes (finished shards are checked against their own records) and writes a new manifest",
                    store.root)
        return {"config_hash": cfg.result_hash()}
    if old and old.get("config_hash") != cfg.result_hash():
        raise UserError(
            f"run directory {store.root!r} holds results of another config (hash {old.get('config_hash')}); "
            "set run.out to a new directory, or pass --fresh to replace them"
        )
    return old


def _last_attempt(store: RunStore, old: dict) -> int:
    """The latest attempt that wrote into the directory: the manifest's, or the newest statistics partial's name
    (`partial-aNNN-...`) where that is later (a lost or damaged manifest), so that a new attempt never writes a
    partial under the name of one it reuses."""
    attempts = [int(m.group(1)) for name in store.list("stats") if (m := re.match(r"partial-a(\d+)-", name))]
    try:
        last = int(old.get("attempt", 0))
    except (TypeError, ValueError):
        last = 0
    return max([last, *attempts])


def prepare_run_dir(store: RunStore, cfg: Config, fresh: bool) -> dict:
    """Take the run directory over for this attempt, once every input check has passed: check it again
    (`check_run_dir`), clear it when `fresh`, write `config.yaml` and mark the run `running`. Finished shards of
    the same config are kept for resume, and a finished run's results stay until new ones replace them."""
    old = check_run_dir(store, cfg, fresh)
    if fresh:
        for name in OUTPUTS:
            store.delete(name)
    store.write_text("config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    # Over a complete run of this config, its account of the results (model, corpus, shards, sample, checks, ...)
    # stays until this attempt's replaces it: the tables it describes stay until new ones of the same numbers
    # replace them, so an attempt that stops after the takeover leaves them described.
    kept = {k: v for k, v in old.items() if k not in ("finished", "timings")} if old.get("status") == "complete" else {}
    manifest = {
        **kept,
        "status": "running",
        "config_hash": cfg.result_hash(),
        "attempt": _last_attempt(store, old) + 1,
        "config": cfg.to_dict(),
        "versions": versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
    }
    store.write_json("manifest.json", manifest)
    return manifest


def failed_manifest(cfg: Config, reason: str, timings: dict) -> dict:
    """The manifest of a run that stopped on its input before taking a new directory over (attempt 0: it wrote
    nothing else). Written only where no manifest is, so never over a finished run's."""
    return {"status": "failed", "config_hash": cfg.result_hash(), "attempt": 0, "config": cfg.to_dict(),
            "reason": reason, "timings": timings, "command": " ".join(sys.argv)}


def prune_samples(store: RunStore, parts: set[str]) -> None:
    """Delete the files of `samples.parquet` that are not among this run's `parts` (written by the site tasks),
    once those are in place: a stale part never mixes into the dataset, and nothing is deleted before."""
    for name in store.list("samples.parquet"):
        if f"samples.parquet/{name}" not in parts:
            store.delete(f"samples.parquet/{name}")


def _records(store: RunStore, folder: str) -> list[tuple[str, dict]]:
    """The readable JSON records (objects) in a folder of the run directory, each with its file's name."""
    out = []
    for name in store.list(folder):
        if name.endswith(".json"):
            try:
                record = store.read_json(f"{folder}/{name}")
            except (OSError, ValueError):
                continue
            if isinstance(record, dict):
                out.append((name, record))
    return out


def whole_group(shards: list[int], group_size: int, last_shard: int | None) -> bool:
    """Whether a partial's shards are one statistics group: `group_size` consecutive shards from a multiple of it,
    or the run's last, shorter group (`last_shard`: the corpus's last shard, None while the plan is unfinished).
    Only those merge to the bits of every other run; a partial of another grouping (another `stats.flush_every`,
    an older version) is not reused."""
    shards = sorted(shards)
    first = shards[0] if shards else -1
    return (first % group_size == 0 and shards == list(range(first, first + len(shards)))
            and (len(shards) == group_size or (last_shard is not None and shards[-1] == last_shard
                                               and len(shards) < group_size)))


def reusable_shards(store: RunStore, fingerprints: dict[int, str], config_hash: str,
                    with_stats: bool, group_size: int = 1,
                    last_shard: int | None = None) -> tuple[dict[int, dict], list[dict]]:
    """What an earlier attempt of this config left that can be trusted: the records of finished shards of the saved
    corpus plan (`fingerprints`: shard index -> fingerprint) whose sample files pass their checksums and, with statistics on, the statistics partials that cover only such
    shards (each shard in at most one). A shard counts as done only when both hold; everything else is run
    again, and partials that cannot be used (or that are not one statistics group, `whole_group`) are deleted so
    that no statistic is ever counted twice and every run merges the same groups."""
    records = {}
    for _, rec in _records(store, "shards"):
        index = rec.get("shard")
        if index not in fingerprints or rec.get("config_hash") != config_hash or rec.get("fingerprint") != fingerprints[index]:
            continue
        if not record_intact(rec):
            log.warning("shard %d: its record does not match its own checksum; recomputing the shard", index)
            continue
        records[index] = rec
    partials = []
    if with_stats:
        for file, p in _records(store, "stats"):
            if p.get("config_hash") != config_hash or not p.get("sha256"):
                continue
            if not record_intact(p) or p.get("name") != file[: -len(".json")]:
                log.warning("statistics partial %s: its record does not match its own checksum; deleted, its shards "
                            "run again", file)
                store.delete(partial_file(file[: -len(".json")], "json"))
                store.delete(partial_file(file[: -len(".json")], "npz"))
                continue
            partials.append(p)
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
        if (partial_file(p["name"], "npz") in bad or not shard_set <= set(records) or shard_set & covered
                or not whole_group(p["shards"], group_size, last_shard)):
            log.warning("statistics partial %s cannot be reused; its shards run again", p["name"])
            store.delete(partial_file(p["name"], "json"))
            store.delete(partial_file(p["name"], "npz"))
            continue
        accepted.append(p)
        covered |= shard_set
    return {i: r for i, r in records.items() if i in covered}, accepted
