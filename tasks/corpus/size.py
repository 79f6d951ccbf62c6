"""Whether a corpus can fill the sample: refused with one line when it has fewer usable tokens (not excluded by
`capture.exclude`) than `sample.size`."""

from __future__ import annotations

from tasks.corpus.shards import Exclusion
from tasks.corpus.stream import Totals
from tasks.corpus.tokenized import Framing
from tasks.errors import UserError


def too_small(usable: str, k: int, excluding: bool) -> UserError:
    """The line for a corpus of `usable` usable tokens (a count, or "at most N") and a sample of k; `excluding`:
    whether `capture.exclude` kept tokens out (then lifting it is a way out too)."""
    hint = ", or set capture.exclude=[] to keep position 0 and special tokens" if excluding else ""
    return UserError(f"the corpus has {usable} usable tokens, fewer than sample.size={k}; lower sample.size or add "
                     f"documents{hint}")


def check_corpus_size(totals: Totals, framing: Framing, exclusion: Exclusion, k: int) -> None:
    """Refuse a corpus, as soon as it is read, whose tokens less those excluded whatever the text (each
    sequence's framing and first token) cannot fill the sample: capture would run for nothing. The exact count,
    after capture, catches the rest."""
    most = totals.tokens - totals.sequences * exclusion.per_sequence(framing.prefix, framing.suffix)
    if most < k:
        raise too_small(f"at most {most}", k, bool(exclusion))
