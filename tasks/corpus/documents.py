"""Documents in, token ids out: read the configured source and tokenize it without special tokens.

Documents come through `datasets` (hub or local files) or from the embedded demo text. A document's index is
its place among the non-empty documents kept, in source order (`tasks.corpus.shards` builds on it).
"""

from __future__ import annotations

import glob
import logging
import tempfile
from pathlib import Path
from typing import Sequence

from tasks.errors import UserError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt": "text", ".text": "text", ".parquet": "parquet", ".json": "json", ".jsonl": "json"}


def embedded_texts() -> list[str]:
    """Python's reference-manual topics (`pydoc_data.topics`), sorted by topic name: ~0.5 MB of English
    technical prose that every CPython ships, so the demo needs no download."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _expand_files(patterns: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise UserError(f"corpus.files pattern {pattern!r} matches no file; check the path")
        for m in matches:
            p = Path(m)
            if not p.is_file():
                raise UserError(f"corpus file {m!r} does not exist; check corpus.files")
            if p.stat().st_size == 0:
                raise UserError(f"corpus file {m!r} is empty; give a file with text in it")
            paths.append(p)
    kinds = {TEXT_SUFFIXES.get(p.suffix.lower()) for p in paths}
    if None in kinds:
        bad = next(p for p in paths if p.suffix.lower() not in TEXT_SUFFIXES)
        raise UserError(f"corpus file {str(bad)!r} has an unsupported type; use .txt, .parquet, .json or .jsonl")
    if len(kinds) > 1:
        raise UserError("corpus.files mixes file types; give files of one type (.txt, .parquet or .jsonl)")
    return paths


def _column(ds, text_field: str, where: str) -> list[str]:
    if text_field not in ds.column_names:
        raise UserError(
            f"{where} has no column {text_field!r} (columns: {', '.join(ds.column_names)}); set corpus.text_field"
        )
    return ds[text_field]


def load_texts(source: str, *, name=None, config=None, split="train", files=(), text_field="text") -> list[str]:
    """All documents of the configured source, in source order (empty ones included; they are dropped later)."""
    if source == "embedded":
        return embedded_texts()
    import datasets

    datasets.disable_progress_bars()
    if source == "files":
        paths = _expand_files(files)
        kind = TEXT_SUFFIXES[paths[0].suffix.lower()]
        if kind == "text":
            for p in paths:
                try:
                    p.read_bytes()[:65536].decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(f"corpus file {str(p)!r} is not UTF-8 text; convert it or remove it") from None
        # A cache of its own, deleted once read: `datasets` keys its cache on path and mtime, so a file rewritten in
        # place with its mtime kept (`cp -p`, `rsync -t`) would be read stale from the shared cache. Local files are
        # read as they are; the conversion to Arrow that a cache would save costs about as much as hashing them.
        with tempfile.TemporaryDirectory(prefix="gpt-stats-corpus-") as cache:
            try:
                ds = datasets.load_dataset(kind, data_files=[str(p) for p in paths], split="train", cache_dir=cache)
            except Exception as exc:  # datasets raises many types for unreadable files
                raise UserError(f"could not read corpus files ({type(exc).__name__}: {exc}); check their format") from None
            return list(_column(ds, text_field if kind != "text" else "text", "corpus files"))
    if source == "hub":
        try:
            ds = datasets.load_dataset(name, config, split=split)
        except Exception as exc:
            raise UserError(
                f"could not load dataset {name!r} (config {config!r}, split {split!r}): "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; check the names and network"
            ) from None
        return _column(ds, text_field, f"dataset {name!r}")
    raise UserError(f"corpus.source must be embedded, hub or files, got {source!r}")


def tokenize(texts: Sequence[str], tokenizer, *, max_docs: int | None = None, chunk: int = 1000) -> list[list[int]]:
    """Token ids (no special tokens) of the non-empty documents, in order, up to `max_docs` of them."""
    kept = [t for t in texts if isinstance(t, str) and t.strip()]
    if max_docs is not None:
        kept = kept[:max_docs]
    out: list[list[int]] = []
    for start in range(0, len(kept), chunk):
        out.extend(tokenizer(kept[start : start + chunk], add_special_tokens=False)["input_ids"])
    return out
