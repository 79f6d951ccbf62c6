"""One synthetic site as a demo-sized run's similarity task sees it, shared by the site benchmarks
(`analysis_site.py`, `site_memory.py`): states of width d with a spread of scales, a per-document component and an
offset (60 tokens per document), their streaming statistics, and n of them sampled with their token keys."""

from __future__ import annotations

from typing import Any

import numpy as np


def synthetic_site(n: int, d: int, statistics: type) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """(sampled states (n, d) float32, their keys, the state of a `statistics` (a `SiteStatistics` class, that of
    the checkout measured) fed every state)."""
    import torch

    rng = np.random.default_rng(0)
    mix = rng.standard_normal((d, d)) * np.linspace(0.05, 1.0, d)
    n_docs = max(2, 10 * n // 60)
    docs = np.repeat(np.arange(n_docs), 60)
    x = (rng.standard_normal((len(docs), d)) @ mix + 0.8 * rng.standard_normal((n_docs, d))[docs] + 0.5).astype(np.float32)
    stats = statistics()
    stats.add(torch.from_numpy(x))
    pick = np.sort(rng.choice(len(x), n, replace=False))
    keys = {"doc": docs[pick], "window": np.zeros(n, np.int64), "pos": pick % 60, "token_id": pick % 1000}
    return x[pick], keys, stats.state()
