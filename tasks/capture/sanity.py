"""Model sanity check: does the captured model predict text better than token frequencies do?

The seed's first cell loaded GPT-2-XL and checked that it completes "Shaquille O'Neal plays the sport of" with
" basketball" before measuring anything: a model that loaded wrong (missing weights, wrong dtype, a tokenizer
from another model) gives statistics of noise. For causal language models this module measures it: next-token
top-1 accuracy and cross-entropy on the run's own corpus against the unigram floor, with a verdict
(`tasks.capture.next_token`), and, as an illustration, the top-k next tokens after each prompt. The model is the
one the actors capture, loaded by the same code (`load_model`: same name resolution, dtype and refusal of
missing weights) as a language model: its base model's weights and its head (for a tied head, the input
embedding itself). For other architectures (BERT encoders) the check does not apply and says so.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import pyarrow as pa
import torch

from tasks.capture import next_token
from tasks.capture.architectures import ARCHITECTURES
from tasks.checkpoint.loading import load_model, load_tokenizer
from tasks.corpus.sources import Unit
from tasks.corpus.tokenized import Framing
from tasks.tables import SANITY_SCHEMA

log = logging.getLogger(__name__)

# `config.model_type`s whose checkpoints load as `AutoModelForCausalLM` with a next-token head: the causal families
# of the site tables.
CAUSAL_LM_TYPES = frozenset(name for name, table in ARCHITECTURES.items() if table.causal)


def applies(model_type: str) -> bool:
    """True when next-token predictions are meaningful for this architecture: a causal family of the site tables,
    or another architecture that `transformers` maps to a causal language model and that is not a known encoder."""
    if model_type in ARCHITECTURES:
        return model_type in CAUSAL_LM_TYPES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def not_applicable_reason(model_type: str) -> str:
    return (
        f"model type {model_type!r} is not a causal language model (next-token predictions apply to: "
        f"{', '.join(sorted(CAUSAL_LM_TYPES))})"
    )


@torch.no_grad()
def check_model(
    name: str, dtype: str, prompts: Sequence[str], top_k: int, units: Sequence[Unit], framing: Framing,
    revision: str | None = None, use_gpu: bool = False, gpus: int = 1, n_tokens: int = next_token.N_TOKENS,
    max_docs: int | None = None, max_tokens: int | None = None,
) -> tuple[pa.Table, dict]:
    """The prompts' top next tokens (a table with SANITY_SCHEMA) and the corpus measures with their verdict (the
    manifest's figures, `next_token.measures`), of the language model loaded as the capture actors load theirs,
    split over `gpus` GPUs as they are."""
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    model = load_model(name, dtype, device, revision, gpus=gpus if device.type == "cuda" else 1, causal_lm=True)
    tokenizer = load_tokenizer(name, revision)
    load_s = time.perf_counter() - t0
    table = prompt_predictions(model, tokenizer, prompts, top_k)
    t0 = time.perf_counter()
    scored = next_token.corpus_targets(units, framing, tokenizer, n_tokens, max_docs, max_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    figures = next_token.measures(model, scored, pad)
    figures["seconds"] = {"load": round(load_s, 3), "score": round(time.perf_counter() - t0, 3)}
    log.info("sanity check: %s on %d corpus tokens (top-1 %s, cross-entropy %s nats; unigram %s, %s)",
             figures["verdict"], figures["tokens"], *(_fmt(figures.get(k)) for k in
             ("next_token_top1", "cross_entropy", "unigram_top1", "unigram_cross_entropy")))
    return table, figures


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


@torch.no_grad()
def prompt_predictions(model: torch.nn.Module, tokenizer, prompts: Sequence[str], top_k: int) -> pa.Table:
    """The `top_k` most probable next tokens after each prompt, as a table with SANITY_SCHEMA.

    Probabilities are the softmax of the last position's logits in float32. Prompts run one at a time, unpadded
    (with the tokenizer's own special tokens, e.g. Llama's BOS), so no attention mask can change them.
    """
    device = next(model.parameters()).device
    k = min(top_k, model.config.vocab_size)
    columns: dict[str, list] = {f.name: [] for f in SANITY_SCHEMA}
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=device)
        logits = model(input_ids=ids).logits[0, -1].float()
        probs, top = torch.topk(torch.softmax(logits, dim=-1), k)
        top_ids = top.cpu().tolist()
        columns["prompt"] += [prompt] * k
        columns["rank"] += list(range(1, k + 1))
        columns["token"] += tokenizer.batch_decode([[t] for t in top_ids])
        columns["token_id"] += top_ids
        columns["probability"] += probs.double().cpu().tolist()
    return pa.table(columns, schema=SANITY_SCHEMA)
