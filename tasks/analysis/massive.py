"""Massive activations per site, from the streaming statistics over every token (`tasks.stats.massive`).

Sun et al. 2024 ("Massive activations in large language models", arXiv:2402.17762) call an activation massive when
its magnitude exceeds 100 and is about 1,000 times the median magnitude of the layer's activations; in Llama-2-7B
they are two coordinates, about 2,000 to 2,600 against a median of about 0.2, on the first token and delimiters.
The two thresholds are the module constants `MASSIVE_ABS` and `MASSIVE_OVER_MEDIAN`. The criterion is applied to the
site's top `stats.massive_top` |x| entries (a coordinate whose largest value is not among them is not flagged);
the median is `AbsHistogram`'s, to bin precision (at most 6.25 %).
"""

from __future__ import annotations

import numpy as np

from tasks.stats.massive import AbsHistogram, TopAbs

MASSIVE_ABS = 100.0  # |x| must exceed this ...
MASSIVE_OVER_MEDIAN = 1000.0  # ... and be at least this many times the site's median |x|


def massive_flags(values: np.ndarray, median: float) -> np.ndarray:
    """Which of `values` meet Sun et al.'s criterion against the median |x|."""
    size = np.abs(np.asarray(values, np.float64))
    return (size > MASSIVE_ABS) & (size >= MASSIVE_OVER_MEDIAN * median)


def massive_numbers(top: TopAbs, hist: AbsHistogram) -> dict:
    """The summary columns (`abs_max`, `abs_median`, `massive_ratio`, `massive_dims`: the coordinates of the
    flagged entries, ascending, comma-separated, "" for none) and the entries themselves (`massive_entries`, with
    `over_median` and `massive` per entry), for `massive.parquet`."""
    entries = top.entries
    median = hist.quantile(0.5)
    if not len(entries["value"]):
        return {"abs_max": None, "abs_median": median, "massive_ratio": None, "massive_dims": None,
                "massive_entries": entries}
    largest = float(abs(entries["value"][0]))
    flags = massive_flags(entries["value"], median)
    entries["over_median"] = np.abs(entries["value"]) / median if median > 0 else np.full(len(flags), np.inf)
    entries["massive"] = flags
    return {"abs_max": largest, "abs_median": median,
            "massive_ratio": largest / median if median > 0 else float("inf"),
            "massive_dims": ",".join(str(int(c)) for c in np.unique(entries["coord"][flags])),
            "massive_entries": entries}
