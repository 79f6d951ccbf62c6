"""Merge: fold shard samples into the run's sample, then split it into one vector array per site.

Stage 3 of the data flow, run as CPU Ray tasks. Because every shard sample is a bottom-k by hash
(`tasks.sampling`), merging is "keep the k smallest", so the driver may reduce shard samples in any grouping (a
tree of `merge_states` calls of bounded fan-in) and get the same result as a single pass over the corpus.
"""

from __future__ import annotations

import numpy as np

from tasks.sampling import KEYS, BottomKSample


def merge_states(k: int, *states: dict | None) -> dict | None:
    """The bottom-k of several sample states (None for shards that kept nothing)."""
    merged = BottomKSample(k)
    for state in states:
        if state is not None:
            merged.merge(BottomKSample.load(state))
    return merged.state() if len(merged) else None


def split_sites(state: dict) -> tuple:
    """(keys, vectors of site 0, vectors of site 1, ...): separate objects so that each site's task fetches
    only its own (n, d) array."""
    keys = {name: np.asarray(state[name]) for name in KEYS}
    vectors = np.asarray(state["vectors"])
    return (keys, *[np.ascontiguousarray(vectors[s]) for s in range(vectors.shape[0])])
