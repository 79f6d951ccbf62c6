"""Documents in, token ids out: read the configured source and tokenize it without special tokens.

Documents come through `datasets` (hub or local files) or from the embedded demo text. A document's index is
its place among the non-empty documents kept, in source order (`tasks.corpus.shards` builds on it).
"""

from __future__ import annotations

import codecs
import glob
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Sequence

from tasks.errors import UserError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt": "text", ".text": "text", ".parquet": "parquet", ".json": "json", ".jsonl": "json"}
CHECK_CHUNK = 1 << 20  # bytes per read of the UTF-8 check
# A \uD800-\uDFFF escape that is not part of a high-low pair: JSON allows it, but it stands for no character.
LONE_SURROGATE = re.compile(r"(?<!\\)\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                            r"|(?<![dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")


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
            if p.is_dir():
                raise UserError(f"corpus file {m!r} is a directory; name the files in it, e.g. {m.rstrip('/') + '/*.txt'!r}")
            if p.exists() and not p.is_file():
                raise UserError(f"corpus file {m!r} is not a regular file (a pipe, socket or device); "
                                "copy its text into a file and name that")
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


def check_utf8(path: Path) -> None:
    """Raise UserError unless the whole file is UTF-8, naming the byte offset and line of the first error. Read in
    chunks through an incremental decoder, so a character split across two chunks is no error."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0  # bytes and newlines of the chunks decoded so far
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHECK_CHUNK)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                held = len(exc.object) - len(chunk)  # bytes of a character begun in the previous chunk
                at = offset - held + exc.start
                line = lines + exc.object[max(held, 0) : exc.start].count(b"\n") + 1
                what = (f"a character cut off by the end of the file at byte {at}" if exc.reason == "unexpected end of data"
                        else f"invalid byte 0x{exc.object[exc.start]:02x} at byte {at}")
                raise UserError(f"corpus file {str(path)!r} is not UTF-8 text: {what} (line {line}); "
                                "convert it to UTF-8 or remove it") from None
            if not chunk:
                return
            offset += len(chunk)
            lines += chunk.count(b"\n")


def _json_problem(path: Path) -> str | None:
    """What is wrong with a JSON or JSON Lines file that `datasets` could not read, with the line where known."""
    check_utf8(path)
    text = path.read_text(encoding="utf-8-sig")
    try:
        json.loads(text)
        rows = [(None, text)]  # one JSON document
    except ValueError:
        rows = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    for n, row in rows:
        try:
            obj = json.loads(row)
        except ValueError as exc:
            return f"line {n}: not valid JSON ({exc})" if n else f"not valid JSON ({exc})"
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            found = LONE_SURROGATE.search(row)
            escape = f" {found.group(0)}" if found else ""
            if n is None and found:
                n = text.count("\n", 0, found.start()) + 1
            where = f"line {n}: " if n else ""
            return f"{where}lone surrogate escape{escape} (half of a UTF-16 pair, no character); fix or remove it"
    return None


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
        options = {}
        if kind == "text":
            for p in paths:
                check_utf8(p)
            options["encoding"] = "utf-8-sig"  # a leading byte order mark is encoding, not text
        # A cache of its own, deleted once read: `datasets` keys its cache on path and mtime, so a file rewritten in
        # place with its mtime kept (`cp -p`, `rsync -t`) would be read stale from the shared cache. Local files are
        # read as they are; the conversion to Arrow that a cache would save costs about as much as hashing them.
        with tempfile.TemporaryDirectory(prefix="gpt-stats-corpus-") as cache:
            try:
                ds = datasets.load_dataset(kind, data_files=[str(p) for p in paths], split="train", cache_dir=cache,
                                           **options)
            except Exception as exc:  # datasets raises many types for unreadable files
                for p in paths if kind == "json" else ():
                    if (problem := _json_problem(p)) is not None:
                        raise UserError(f"corpus file {str(p)!r} {problem}") from None
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
