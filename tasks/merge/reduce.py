"""The merge stage on the cluster: tree reductions of bounded fan-in over the files the capture actors wrote.

Shard samples fold into the run's sample (bottom-k: any grouping gives the same result) and statistics partials
into the corpus-wide statistics, both split into one object per site so that each site's task fetches only its
own part. The driver passes file names and checksums and receives object refs: it never holds the vectors.
"""

from __future__ import annotations

import math

from tasks.merge.tree import (
    corrupt_files,
    merge_shard_files,
    merge_states,
    merge_statistics_files,
    split_sites,
    split_statistics,
)
from tasks.storage import partial_file, shard_file

MERGE_FAN_IN = 64


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def find_corrupt(store_root: str, files: list[tuple[str, str]]) -> set[str]:
    """The paths among (path, sha256) pairs whose file is missing or fails its checksum, checked by CPU tasks."""
    import ray

    check = ray.remote(corrupt_files).options(num_cpus=1)
    return {path for found in ray.get([check.remote(store_root, c) for c in chunks(files, MERGE_FAN_IN)]) for path in found}


def merge_samples(store_root: str, k: int, records: list[dict], n_sites: int):
    """Tree-reduce the shard samples named by their records and split the result per site:
    (ref of the keys, [ref of each site's vectors])."""
    import ray

    files = sorted((r["shard"], r["sha256"]) for r in records if r.get("n_kept"))
    first = ray.remote(merge_shard_files)
    refs = [first.remote(k, store_root, part) for part in chunks(files, MERGE_FAN_IN)]
    fold = ray.remote(merge_states)
    while len(refs) > 1:
        refs = [fold.remote(k, *part) for part in chunks(refs, MERGE_FAN_IN)]
    keys_ref, *vector_refs = ray.remote(split_sites).options(num_returns=1 + n_sites).remote(refs[0])
    return keys_ref, vector_refs


def stats_fan_in(n_partials: int) -> int:
    """Fan-in of the statistics merge tree: about sqrt(partials), so two levels of equal depth. A partial is
    sites x 2 x d^2 float64 (gigabytes for a wide model) and a merge task folds its inputs one after another:
    sqrt(P) tasks in parallel, then one, take 2 sqrt(P) folds instead of P in one task, holding one running sum
    each."""
    return min(max(math.isqrt(max(n_partials - 1, 0)) + 1, 2), MERGE_FAN_IN)


def merge_statistics(store_root: str, partials: list[dict], n_sites: int) -> list:
    """Tree-reduce the statistics partials and split them per site ([ref of each site's state])."""
    import ray

    # In the order of the shards they cover, not of their names (which name the actor that wrote them): the
    # same partials merge in the same order, hence to the same bits, whichever actors ran them and however often.
    ordered = sorted(partials, key=lambda p: (sorted(p["shards"]), p["name"]))
    files = [(partial_file(p["name"], "npz"), p["sha256"]) for p in ordered]
    fan_in = stats_fan_in(len(files))
    first = ray.remote(merge_statistics_files)
    refs = [first.remote(store_root, n_sites, part) for part in chunks(files, fan_in)]
    while len(refs) > 1:
        refs = [first.remote(store_root, n_sites, [], *part) for part in chunks(refs, fan_in)]
    split = ray.remote(split_statistics).options(num_returns=n_sites).remote(refs[0], n_sites)
    return [split] if n_sites == 1 else list(split)


def sample_files(records: dict[int, dict]) -> list[tuple[str, str]]:
    """(path, sha256) of the saved samples of these shard records (shards that kept no token have none)."""
    return [(shard_file(i, "npz"), r["sha256"]) for i, r in records.items() if r.get("n_kept")]
