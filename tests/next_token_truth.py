"""The tests' independent truth for the sanity check's next-token figures: a causal LM's own logits, window by
window, in plain `transformers` and torch (no project code)."""

from __future__ import annotations

from typing import Iterable

import numpy as np


def score_windows(model, token_ids: Iterable[list[int]], window: int, limit: int) -> tuple[int, float, np.ndarray]:
    """Top-1 hits, summed negative log-likelihood (nats, float64) and the target ids of `model` on each document's
    ids cut into windows of `window` tokens, every token after a window's first a target, the first `limit`."""
    import torch

    hits, nll, targets = 0, 0.0, []
    for ids in token_ids:
        for start in range(0, len(ids), window):
            chunk = ids[start: start + window][: limit - len(targets) + 1]
            if len(chunk) < 2:
                continue
            with torch.no_grad():
                logits = model(torch.tensor([chunk])).logits[0, :-1].double()
            target = torch.tensor(chunk[1:])
            hits += int((logits.argmax(-1) == target).sum())
            nll -= float(torch.log_softmax(logits, -1)[torch.arange(len(target)), target].sum())
            targets += chunk[1:]
        if len(targets) >= limit:
            break
    return hits, nll, np.asarray(targets, dtype=np.int64)
