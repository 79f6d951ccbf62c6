"""Tiny random configs of every architecture with a built-in site table (2 layers, width 32, the fixture BPE
tokenizer's 2048-token vocabulary), plus the variants whose config flag changes the residual kind."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import TOKENIZER

VOCAB = 2048
_TOKENS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)  # the fixture tokenizer's <|endoftext|>
_DECODER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=256, **_TOKENS)

# case name -> (model_type, config class name, keyword arguments)
CASES: dict[str, tuple[str, str, dict]] = {
    "gpt2": ("gpt2", "GPT2Config", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256, **_TOKENS)),
    "llama": ("llama", "LlamaConfig", dict(_DECODER, num_key_value_heads=2)),
    "mistral": ("mistral", "MistralConfig", dict(_DECODER, num_key_value_heads=2)),
    "mixtral": ("mixtral", "MixtralConfig", dict(_DECODER, num_key_value_heads=2, num_local_experts=4,
                                                 num_experts_per_tok=2)),
    "qwen2": ("qwen2", "Qwen2Config", dict(_DECODER, num_key_value_heads=2)),
    "qwen3": ("qwen3", "Qwen3Config", dict(_DECODER, num_key_value_heads=2, head_dim=8)),
    "gemma": ("gemma", "GemmaConfig", dict(_DECODER, num_key_value_heads=1, head_dim=8)),
    "gemma2": ("gemma2", "Gemma2Config", dict(_DECODER, num_key_value_heads=2, head_dim=8)),
    "gemma3_text": ("gemma3_text", "Gemma3TextConfig", dict(_DECODER, num_key_value_heads=2, head_dim=8,
                                                            sliding_window=16)),
    "olmo2": ("olmo2", "Olmo2Config", dict(_DECODER)),
    "phi3": ("phi3", "Phi3Config", dict(_DECODER)),
    "phi": ("phi", "PhiConfig", dict(_DECODER)),
    "gpt_neox": ("gpt_neox", "GPTNeoXConfig", dict(_DECODER)),
    "gpt_neox-sequential": ("gpt_neox", "GPTNeoXConfig", dict(_DECODER, use_parallel_residual=False)),
    "gptj": ("gptj", "GPTJConfig", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                        rotary_dim=4, **_TOKENS)),
    "falcon": ("falcon", "FalconConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, **_TOKENS)),
    "falcon-new": ("falcon", "FalconConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=4, num_kv_heads=2,
                                                  new_decoder_architecture=True, **_TOKENS)),
    "falcon-sequential": ("falcon", "FalconConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                         num_attention_heads=4, parallel_attn=False, **_TOKENS)),
    "gpt_bigcode": ("gpt_bigcode", "GPTBigCodeConfig", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                            n_positions=256, **_TOKENS)),
    "opt": ("opt", "OPTConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     ffn_dim=64, max_position_embeddings=256, word_embed_proj_dim=32, **_TOKENS)),
    "opt-post-norm": ("opt", "OPTConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, ffn_dim=64, max_position_embeddings=256,
                                               word_embed_proj_dim=32, do_layer_norm_before=False, **_TOKENS)),
    "bert": ("bert", "BertConfig", dict(_DECODER)),
    "roberta": ("roberta", "RobertaConfig", dict(_DECODER, type_vocab_size=1)),
    "distilbert": ("distilbert", "DistilBertConfig", dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                                                          hidden_dim=64, max_position_embeddings=256, pad_token_id=0)),
}


def tiny_config(case: str, **overrides):
    """The `transformers` config of one case (`overrides` replace its keyword arguments)."""
    import transformers

    _model_type, cls, kwargs = CASES[case]
    return getattr(transformers, cls)(**{**kwargs, **overrides})


def tiny_model(case: str):
    """The base model of one case, random weights (seed 0), float32, eval mode. Norm weights and biases are
    initialised to constants; they get noise too, so that no two norms of a block compute the same function."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_config(case)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


def save_tiny(case: str, folder: Path, causal: bool) -> Path:
    """A model folder of one case with the fixture tokenizer: the language model (head included) for a causal
    family, so that the sanity check reads its head; the base model otherwise."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    (AutoModelForCausalLM if causal else AutoModel).from_config(tiny_config(case)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(folder)
    return folder
