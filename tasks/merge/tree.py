"""Merge: fold shard samples into the run's sample, then split it into one vector array per site.

Stage 3 of the data flow, run as CPU Ray tasks. The first level reads the shard samples that the capture actors
wrote to the run directory (checking their checksums); later levels fold merged states. Because every shard sample
is a bottom-k by hash (`tasks.stats.bottom_k`), merging is "keep the k smallest", so the driver may reduce shard
samples in any grouping (a tree of `merge_states` calls of bounded fan-in) and get the same result as a single pass
over the corpus. Statistics partials merge the same way (`tasks.stats`), to the one-pass result up to rounding.
"""

from __future__ import annotations

import itertools

import numpy as np

from tasks.stats.bottom_k import KEYS, BottomKSample
from tasks.stats.site import stack_states, unstack_states
from tasks.storage import RunStore, shard_file


def merge_states(k: int, *states: dict | None) -> dict | None:
    """The bottom-k of several sample states (None for shards that kept nothing)."""
    merged = BottomKSample(k)
    for state in states:
        if state is not None:
            merged.merge(BottomKSample.load(state))
    return None if merged.is_empty else merged.state(copy=False)


def split_sites(state: dict) -> tuple:
    """(keys, vectors of site 0, vectors of site 1, ...): separate objects so that each site's task fetches
    only its own (n, d) array."""
    keys = {name: np.asarray(state[name]) for name in KEYS}
    vectors = np.asarray(state["vectors"])
    return (keys, *[np.ascontiguousarray(vectors[s]) for s in range(vectors.shape[0])])


def merge_shard_files(k: int, store_root: str, shards: list[tuple[int, str]]) -> dict | None:
    """The bottom-k of shard samples read from the run directory ((index, sha256) pairs), checksums checked."""
    store = RunStore(store_root)
    merged = BottomKSample(k)
    for index, sha in shards:
        merged.merge(BottomKSample.load(store.read_arrays(shard_file(index, "npz"), sha)))
    return None if merged.is_empty else merged.state(copy=False)


def corrupt_files(store_root: str, files: list[tuple[str, str]]) -> list[str]:
    """The paths among (path, sha256) pairs whose file is missing or does not match its checksum."""
    store = RunStore(store_root)
    return [path for path, sha in files if not store.matches(path, sha)]


def merge_statistics_files(store_root: str, n_sites: int, files: list[tuple[str, str]], *states: dict) -> dict:
    """Merge statistics partials read from the run directory ((path, sha256) pairs, checksums checked) and
    already-merged states, all sites at once; returns the stacked state. Folds one part at a time, reading each
    as views of its file's bytes (`RunStore.read_arrays`), so that the task holds the running sum and one part:
    a GPT-2-XL partial is gigabytes."""
    store = RunStore(store_root)
    parts = (store.read_arrays(path, sha) for path, sha in files)  # read lazily, one at a time
    parts = itertools.chain(parts, states)
    merged = unstack_states(next(parts), n_sites)  # copied: the running sum is updated in place
    for state in parts:
        for mine, other in zip(merged, unstack_states(state, n_sites, copy=False)):
            mine.merge(other)
        del state, other  # release this part's views before the next one is read
    return stack_states(merged, copy=False, packed=True)  # half the bytes to the next level


def split_statistics(state: dict, n_sites: int):
    """One state dict per site, so that each site's task fetches only its own d x d matrices."""
    per_site = unstack_states(state, n_sites, copy=False)  # views: the states are only read, then sent on
    states = tuple(s.state(copy=False) for s in per_site)
    return states if n_sites > 1 else states[0]
