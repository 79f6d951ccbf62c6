"""The corpus stage as one call: the configured documents read, tokenized and cut into shards, with the counts
the run needs before capture (tokens, excluded tokens) and reports after it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tasks.corpus.documents import load_texts, tokenize
from tasks.corpus.shards import Exclusion, Shard, context_length, make_sequences, make_shards
from tasks.errors import UserError


@dataclass(frozen=True)
class CorpusPlan:
    """The shards of a run and what they hold."""

    shards: list[Shard]
    documents: int
    seq_len: int
    exclusion: Exclusion
    excluded: int  # tokens kept out of the sample and the main statistics by `capture.exclude`

    @property
    def tokens(self) -> int:
        return sum(s.n_tokens for s in self.shards)

    @property
    def sequences(self) -> int:
        return sum(s.n_sequences for s in self.shards)

    @property
    def eligible(self) -> int:
        """The tokens that can be sampled: the sample's candidate threshold must count only these."""
        return self.tokens - self.excluded


def plan_corpus(corpus, tokenizer, model_config, exclude: Sequence[str]) -> CorpusPlan:
    """Read, tokenize and shard the corpus of a `CorpusConfig` for a model (its tokenizer and config)."""
    c = corpus
    texts = load_texts(c.source, name=c.name, config=c.config, split=c.split, files=c.files, text_field=c.text_field)
    docs = tokenize(texts, tokenizer, max_docs=c.max_docs)
    if not docs:
        raise UserError("the corpus has no non-empty document; check corpus.source, corpus.files or corpus.text_field")
    seq_len = context_length(model_config, c.max_length)
    shards = make_shards(make_sequences(docs, tokenizer, seq_len, c.long_docs), c.shard_tokens)
    exclusion = Exclusion.from_config(exclude, tokenizer)
    excluded = sum(exclusion.count(s) for s in shards) if exclusion else 0
    return CorpusPlan(shards, len(docs), seq_len, exclusion, excluded)
