"""Exemplars: the token pairs behind chosen quantiles of a cosine histogram, shown as the seed showed them.

Each token is shown with its context: the ten tokens ending at it, then the next token in brackets, or `<END>`
when it is the last token of its sequence.
"""

from __future__ import annotations

import numpy as np

from tasks.stats.bottom_k import CONTEXT


def context_text(tokenizer, context: np.ndarray) -> str:
    """Decode one row of `context` ids (CONTEXT ids ending at the token, -1 padded, then the next id or -1)."""
    before = [int(t) for t in context[:CONTEXT] if t >= 0]
    nxt = int(context[CONTEXT])
    tail = f"[{tokenizer.decode([nxt])}]" if nxt >= 0 else "<END>"
    return tokenizer.decode(before) + tail


def exemplar_rows(layer: int, site: str, variant: str, pairs: list[dict], keys: dict, tokenizer) -> list[dict]:
    """Rows of `exemplars.parquet` for one site: both tokens' identity and decoded context per quantile."""
    rows = []
    for p in pairs:
        row = {"layer": layer, "site": site, "variant": variant, "quantile": p["quantile"], "rank": p["rank"], "cos": p["cos"]}
        for side, idx in (("a", p["i"]), ("b", p["j"])):
            row[f"{side}_index"] = idx
            row[f"{side}_doc"] = int(keys["doc"][idx])
            row[f"{side}_window"] = int(keys["window"][idx])
            row[f"{side}_pos"] = int(keys["pos"][idx])
            row[f"{side}_token_id"] = int(keys["token_id"][idx])
            row[f"{side}_text"] = context_text(tokenizer, keys["context"][idx])
        rows.append(row)
    return rows


def massive_rows(layer: int, site: str, entries: dict, tokenizer) -> list[dict]:
    """Rows of `massive.parquet` for one site: each top |x| entry (`tasks.analysis.massive.massive_numbers`) with
    its token decoded alone (`token`) and in context (`text`, as the exemplars show theirs)."""
    rows = []
    for rank in range(len(entries["value"])):
        e = {k: v[rank] for k, v in entries.items()}
        known = int(e["token_id"]) >= 0
        rows.append({
            "layer": layer, "site": site, "rank": rank, "value": float(e["value"]), "coord": int(e["coord"]),
            "over_median": float(e["over_median"]), "massive": bool(e["massive"]), "excluded": bool(e["excluded"]),
            **{k: int(e[k]) for k in ("doc", "window", "pos", "token_id")},
            "token": tokenizer.decode([int(e["token_id"])]) if known else None,
            "text": context_text(tokenizer, e["context"]) if known and (e["context"] >= 0).any() else None,
        })
    return rows
