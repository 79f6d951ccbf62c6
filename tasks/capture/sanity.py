"""Model sanity check: does the loaded model predict sensible next tokens?

The seed's first cell loaded GPT-2-XL and checked that it completes "Shaquille O'Neal plays the sport of" with
" basketball" before measuring anything: a model that loaded wrong (missing weights, wrong dtype, a tokenizer
from another model) gives statistics of noise. For causal language models this module returns the top-k next
tokens and their probabilities after each prompt; for other architectures (BERT encoders) the check does not
apply and says so.
"""

from __future__ import annotations

import logging
from typing import Sequence

import pyarrow as pa
import torch

from tasks.capture.architectures import ARCHITECTURES
from tasks.checkpoint.loading import load_model, load_tokenizer
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
def next_token_predictions(
    name: str, dtype: str, prompts: Sequence[str], top_k: int, revision: str | None = None, use_gpu: bool = False,
    gpus: int = 1,
) -> pa.Table:
    """The `top_k` most probable next tokens after each prompt, as a table with SANITY_SCHEMA.

    Loads the checkpoint with its language-model head (`AutoModelForCausalLM`; GPT-2's head is tied to the
    input embedding, so a base-model checkpoint loads too), split over `gpus` GPUs as the capture actors do.
    Probabilities are the softmax of the last position's logits in float32. Prompts run one at a time, unpadded
    (with the tokenizer's own special tokens, e.g. Llama's BOS), so no attention mask can change them.
    """
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    model = load_model(name, dtype, device, revision, gpus=gpus if device.type == "cuda" else 1, causal_lm=True)
    device = next(model.parameters()).device
    tokenizer = load_tokenizer(name, revision)
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
    log.info("sanity check: %d prompt(s), top %d on %s", len(prompts), k, device)
    return pa.table(columns, schema=SANITY_SCHEMA)
