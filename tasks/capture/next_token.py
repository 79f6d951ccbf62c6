"""How well the captured model predicts the run's own corpus, against the unigram floor: the sanity check's numbers.

A model whose weights loaded wrong (random, missing, from another model) predicts text no better than token
frequencies do. So the check scores next-token predictions on the first tokens of the run's corpus, read by the
corpus stage's own code (`read_unit`, `unit_sequences`: the same documents, tokenizer and special tokens as the
captured sequences, windows of at most `CONTEXT` tokens), and compares them with the best unigram model:

* the targets: in corpus order, every text token of a sequence that has a token before it (the first token of a
  sequence without a prefix token has no context and is skipped), the first `n_tokens` of them;
* the model: top-1 accuracy (the argmax of the logits is the target) and mean cross-entropy in nats (perplexity
  is its exponential), from the language model's logits in float32;
* the floor: predicting the most frequent target token every time (top-1: its share of the targets), and the
  cross-entropy of the targets' own frequencies on those same targets, the empirical entropy. That is the
  maximum-likelihood unigram fitted on the very tokens it is scored on, so no smoothing is needed (every target
  has a non-zero count) and no unigram distribution does better on them (Gibbs' inequality): a strict floor.

Verdict (`verdict`): "trained" when top-1 beats the floor's and the cross-entropy is at least `MARGIN_NATS`
(ln 2) below the floor's, i.e. perplexity at most half the unigram's; "not better than chance" otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch

from tasks.corpus.sources import Unit, read_unit
from tasks.corpus.tokenized import Framing, unit_sequences

CONTEXT = 512  # tokens per scored sequence at most (special tokens included): cheap attention, full batches
N_TOKENS = 10_000  # targets scored
BATCH_TOKENS = 1024  # padded tokens per forward pass (the float32 logits of a batch: BATCH_TOKENS x vocab)
MARGIN_NATS = math.log(2.0)
TRAINED, CHANCE, UNMEASURED = "trained", "not better than chance", "not measured"
RULE = ("trained: next-token top-1 above the unigram floor's and cross-entropy at least ln 2 nats below the "
        "floor's (perplexity at most half the unigram's); otherwise not better than chance")


@dataclasses.dataclass(frozen=True)
class Scored:
    """Sequences to score (token ids, corpus order) and, per sequence, the positions whose token is a target."""

    sequences: list[np.ndarray]
    targets: list[np.ndarray]

    @property
    def n_tokens(self) -> int:
        return int(sum(len(t) for t in self.targets))

    def target_ids(self) -> np.ndarray:
        return np.concatenate([s[t] for s, t in zip(self.sequences, self.targets)] or [np.zeros(0, np.int64)])


def corpus_targets(units: Sequence[Unit], framing: Framing, tokenizer, n_tokens: int = N_TOKENS,
                   max_docs: int | None = None, max_tokens: int | None = None) -> Scored:
    """The first `n_tokens` targets of the corpus (within `corpus.max_docs` / `corpus.max_tokens`), read unit by
    unit only as far as needed, framed as the run frames them, in windows of at most CONTEXT tokens. No units
    (or no framing): nothing to score."""
    if framing is None or not units:
        return Scored([], [])
    pre, suf = len(framing.prefix), len(framing.suffix)
    framing = dataclasses.replace(framing, body=max(1, min(framing.body, CONTEXT - pre - suf)))
    if max_tokens is not None:
        n_tokens = min(n_tokens, max_tokens)
    sequences, targets, found, docs = [], [], 0, 0
    for unit in units:
        if found >= n_tokens or (max_docs is not None and docs >= max_docs):
            break
        texts = [t for t in read_unit(unit, framing.text_field)[0] if isinstance(t, str) and t.strip()]
        if max_docs is not None:
            texts = texts[: max_docs - docs]
        docs += len(texts)
        meta, data = unit_sequences(texts, tokenizer, framing)
        for i, body in enumerate(meta["body"]):
            ids = data["ids"][data["offsets"][i]: data["offsets"][i + 1]].astype(np.int64)
            positions = np.arange(max(pre, 1), pre + int(body))[: n_tokens - found]
            if len(positions):
                sequences.append(ids)
                targets.append(positions)
                found += len(positions)
            if found >= n_tokens:
                break
    return Scored(sequences, targets)


def _batches(scored: Scored, budget: int) -> list[list[int]]:
    """Consecutive sequences grouped so that a batch's padded size stays within `budget` tokens."""
    out, current, longest = [], [], 0
    for i, seq in enumerate(scored.sequences):
        if current and max(longest, len(seq)) * (len(current) + 1) > budget:
            out.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, len(seq))
    return out + ([current] if current else [])


@torch.no_grad()
def score(model: torch.nn.Module, scored: Scored, pad_id: int = 0, budget: int = BATCH_TOKENS) -> dict:
    """Top-1 hits and the summed negative log-likelihood (nats) of `model` (a causal LM) on the targets, in
    batches padded on the right (causal attention: padding after a token cannot change its logits)."""
    device = next(model.parameters()).device
    hits, nll = 0, 0.0
    for batch in _batches(scored, budget):
        length = max(len(scored.sequences[i]) for i in batch)
        ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        rows, cols = [], []
        for r, i in enumerate(batch):
            seq = scored.sequences[i]
            ids[r, : len(seq)] = torch.from_numpy(seq)
            mask[r, : len(seq)] = 1
            rows.append(np.full(len(scored.targets[i]), r))
            cols.append(scored.targets[i])
        rows_t, cols_t = torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(cols))
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        picked = logits[rows_t.to(device), (cols_t - 1).to(device)].float()  # the logits that predict each target
        del logits
        target = ids[rows_t, cols_t].to(device)
        hits += int((picked.argmax(dim=-1) == target).sum())
        nll += float(-torch.log_softmax(picked, dim=-1).gather(1, target[:, None]).double().sum())
    return {"hits": hits, "nll": nll}


def unigram_floor(target_ids: np.ndarray) -> tuple[float, float]:
    """(top-1, cross-entropy in nats) of the maximum-likelihood unigram of `target_ids`, scored on them."""
    _, counts = np.unique(target_ids, return_counts=True)
    p = counts / counts.sum()
    return float(p.max()), float(-(p * np.log(p)).sum())


def verdict(top1: float, cross_entropy: float, floor_top1: float, floor_ce: float) -> str:
    """The rule of the module's doc."""
    return TRAINED if top1 > floor_top1 and cross_entropy <= floor_ce - MARGIN_NATS else CHANCE


def measures(model: torch.nn.Module, scored: Scored, pad_id: int = 0) -> dict:
    """The manifest's figures: the model's top-1, cross-entropy and perplexity, the unigram floor's, the number of
    tokens and the verdict (`not measured` without any target)."""
    n = scored.n_tokens
    if n == 0:
        return {"tokens": 0, "verdict": UNMEASURED}
    s = score(model, scored, pad_id)
    top1, ce = s["hits"] / n, s["nll"] / n
    floor_top1, floor_ce = unigram_floor(scored.target_ids())
    return {"tokens": n, "context": max(len(q) for q in scored.sequences), "next_token_top1": top1,
            "cross_entropy": ce, "perplexity": _exp(ce), "unigram_top1": floor_top1,
            "unigram_cross_entropy": floor_ce, "unigram_perplexity": _exp(floor_ce),
            "verdict": verdict(top1, ce, floor_top1, floor_ce)}


def _exp(x: float) -> float | None:
    """e**x, or None where it overflows a float (a JSON manifest holds no infinity)."""
    return math.exp(x) if x < 700 else None
