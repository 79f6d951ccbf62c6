"""Where documents come from, as a list of read units in corpus order, and how one unit is read.

A unit is a line-aligned byte range of a `.txt` or `.jsonl` file, one Parquet row group, a whole `.json` file or
the embedded text. Units are listed from file sizes and Parquet footers only, so listing reads no text; each unit
is then read on its own (a Ray task, `tasks.corpus.stream`), anywhere on the cluster. Files are local paths or
object-store URIs (`s3://bucket/dir/*.txt?endpoint_override=...`, `gs://...`), opened through pyarrow's
filesystems; hub datasets are read from their Parquet export (`hf://`, through `huggingface_hub`'s fsspec
filesystem). Documents are the units' non-empty texts in unit order, the same ones, in the same order, that
`tasks.corpus.documents.load_texts` gives for the same files.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import posixpath
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from tasks.corpus.documents import TEXT_SUFFIXES, _expand_files, embedded_texts
from tasks.corpus.json_rows import check_encodable, column_texts, json_rows, line_of
from tasks.errors import UserError

UNIT_BYTES = 2 << 20  # bytes of text or JSON Lines per unit: about a second of tokenizing; the first shard waits for one
HUB_PARQUET = "hf://datasets/{name}@~parquet/{config}/{split}"  # the hub's Parquet export of a dataset's split


@dataclass(frozen=True)
class Unit:
    """One piece of the corpus read as a whole: `kind` text/json/jsonl (bytes `start`-`stop` of the file, lines
    that begin in that range), parquet (row group `start`), hub-stream (shard `start` of `stop` of the streamed
    hub dataset `path`, `fs` its config and split) or embedded. `fs` is the filesystem's URI ("" for the
    local one), `path` the file's path in it; `size` and `mtime` are the file's as listed (a changed corpus is
    refused on resume)."""

    index: int
    kind: str
    fs: str = ""
    path: str = ""
    start: int = 0
    stop: int = 0
    size: int = 0
    mtime: str = ""

    @property
    def name(self) -> str:
        """The file as the user would name it."""
        if self.kind == "hub-stream":
            return f"{self.path} (data file {self.start + 1} of {self.stop})"
        if self.fs.startswith("hf:"):
            return f"hf://{self.path}"
        return f"{self.fs.split('?')[0].rstrip('/')}/{self.path.split('/', 1)[-1]}" if self.fs else self.path

    def stamp(self) -> dict:
        """What identifies this unit in a saved plan."""
        return {"kind": self.kind, "file": self.name, "start": self.start, "stop": self.stop, "size": self.size,
                "mtime": self.mtime}


def filesystem(fs_uri: str):
    """A pyarrow filesystem from a unit's `fs` ("" local, `hf://` the hub, else a pyarrow URI with its options)."""
    import pyarrow.fs as pafs

    if not fs_uri:
        return pafs.LocalFileSystem()
    if fs_uri.startswith("hf:"):
        from huggingface_hub import HfFileSystem

        return pafs.PyFileSystem(pafs.FSSpecHandler(HfFileSystem()))
    return pafs.FileSystem.from_uri(fs_uri)[0]


def _split_uri(pattern: str) -> tuple[str, str]:
    """(filesystem URI, path in it) of a file pattern: `s3://b/d/*.txt?opt=1` -> (`s3://b?opt=1`, `b/d/*.txt`)."""
    if pattern.startswith("hf://"):
        return "hf://", pattern[len("hf://"):]
    if "://" not in pattern:
        return "", pattern
    scheme, rest = pattern.split("://", 1)
    rest, _, query = rest.partition("?")
    bucket = rest.split("/", 1)[0]
    return f"{scheme}://{bucket}" + (f"?{query}" if query else ""), rest


def _glob_remote(fs, fs_uri: str, pattern: str) -> list[tuple[str, int, str]]:
    """(path, size, mtime) of the files of a remote filesystem matching a pattern (wildcards in the last parts)."""
    import pyarrow.fs as pafs

    parts = pattern.split("/")
    fixed = next((i for i, p in enumerate(parts) if any(c in p for c in "*?[")), len(parts))
    if fixed == len(parts):
        infos = [fs.get_file_info(pattern)]
    else:
        base = "/".join(parts[:fixed])
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=fixed < len(parts) - 1, allow_not_found=True))
        infos = [i for i in infos if fnmatch.fnmatchcase(i.path, pattern)]
    shown = f"{fs_uri.split('?')[0]}/{pattern}"
    files = sorted((i.path, int(i.size or 0), str(i.mtime_ns or "")) for i in infos if i.type == pafs.FileType.File)
    if not files:
        raise UserError(f"corpus.files pattern {shown!r} matches no file; check the path")
    for path, size, _ in files:
        if size == 0:
            raise UserError(f"corpus file {shown.rsplit('/', 1)[0]}/{posixpath.basename(path)!r} is empty; "
                            "give a file with text in it")
    return files


def _files(patterns: Sequence[str]) -> list[tuple[str, str, int, str]]:
    """(fs URI, path, size, mtime) of every file the patterns name, in order, checked as `load_texts` checks them."""
    out = []
    for pattern in patterns:
        fs_uri, path = _split_uri(pattern)
        if not fs_uri:
            for p in _expand_files([pattern]):
                st = p.stat()
                out.append(("", str(p), st.st_size, str(st.st_mtime_ns)))
            continue
        try:
            fs = filesystem(fs_uri)
            found = _glob_remote(fs, fs_uri, path)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"could not list corpus files {pattern!r} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); check the path and credentials") from None
        out.extend((fs_uri, p, size, mtime) for p, size, mtime in found)
    kinds = {TEXT_SUFFIXES.get(Path(p).suffix.lower()) for _, p, _, _ in out}
    if None in kinds:
        bad = next(p for _, p, _, _ in out if Path(p).suffix.lower() not in TEXT_SUFFIXES)
        raise UserError(f"corpus file {bad!r} has an unsupported type; use .txt, .parquet, .json or .jsonl")
    if len(kinds) > 1:
        raise UserError("corpus.files mixes file types; give files of one type (.txt, .parquet or .jsonl)")
    return out


def hub_parquet_files(name: str, config: str | None, split: str) -> list[str]:
    """The Parquet files of a hub dataset's split in its Parquet export (`refs/convert/parquet`), in name order."""
    root = HUB_PARQUET.format(name=name, config=config or "default", split=split)
    fs_uri, path = _split_uri(root)
    try:
        fs = filesystem(fs_uri)
        found = _glob_remote(fs, fs_uri, f"{path}/*.parquet")
    except Exception as exc:
        raise UserError(f"could not load dataset {name!r} (config {config!r}, split {split!r}): {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}; check the names and network, or set "
                        "corpus.streaming: true for a dataset without Parquet files") from None
    return [(f"{fs_uri}{p}" if fs_uri == "hf://" else (p if not fs_uri else f"{fs_uri.split('?')[0]}/{p}"))
            for p, _, _ in found]


def _hub_stream(name: str, fs: str):
    import datasets

    config, split = json.loads(fs)
    datasets.disable_progress_bars()
    return datasets.load_dataset(name, config, split=split, streaming=True)


def hub_stream_units(name: str, config: str | None, split: str) -> list[Unit]:
    """A hub dataset read through `datasets` streaming: one unit per data file (`IterableDataset` shard), each
    streamed through by its own task; their order is the dataset's."""
    fs = json.dumps([config, split])
    try:
        n = _hub_stream(name, fs).num_shards
    except Exception as exc:
        raise UserError(f"could not load dataset {name!r} (config {config!r}, split {split!r}): {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}; check the names and network") from None
    return [Unit(i, "hub-stream", fs, name, i, n) for i in range(n)]


def list_units(corpus) -> list[Unit]:
    """The units of a `CorpusConfig`'s source, in corpus order (streamed hub datasets have none: see stream.py)."""
    if corpus.source == "embedded":
        return [Unit(0, "embedded")]
    if corpus.source == "hub" and corpus.streaming:
        return hub_stream_units(corpus.name, corpus.config, corpus.split)
    if corpus.source == "hub":
        files = _files(hub_parquet_files(corpus.name, corpus.config, corpus.split))
    elif corpus.source == "files":
        files = _files(corpus.files)
    else:
        raise UserError(f"corpus.source must be embedded, hub or files, got {corpus.source!r}")
    units: list[Unit] = []
    for fs_uri, path, size, mtime in files:
        kind = TEXT_SUFFIXES[Path(path).suffix.lower()]
        if kind == "parquet":
            import pyarrow.parquet as pq

            try:
                with filesystem(fs_uri).open_input_file(path) as f:
                    groups = pq.ParquetFile(f).metadata.num_row_groups
            except Exception as exc:
                raise UserError(f"corpus file {path!r} is not a readable Parquet file ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}); check it") from None
            units += [Unit(len(units) + g, "parquet", fs_uri, path, g, g + 1, size, mtime) for g in range(groups)]
        elif kind == "json" and Path(path).suffix.lower() == ".json":
            units.append(Unit(len(units), "json", fs_uri, path, 0, size, size, mtime))  # one JSON document, or lines
        else:
            kind = "text" if kind == "text" else "jsonl"
            for start in range(0, size, UNIT_BYTES):
                units.append(Unit(len(units), kind, fs_uri, path, start, min(start + UNIT_BYTES, size), size, mtime))
    return units


# -- reading one unit --------------------------------------------------------------------------------------------


def _read_lines(f, start: int, stop: int, size: int) -> tuple[bytes, int]:
    """The bytes of the lines that begin in [start, stop), from the first line start at or after `start` to the end
    of the line holding byte stop - 1, and the offset they begin at."""
    lo = max(start - 1, 0)
    f.seek(lo)
    data = f.read(stop - lo)
    if stop < size and not data.endswith(b"\n"):
        tail = []
        while chunk := f.read(1 << 16):
            cut = chunk.find(b"\n")
            tail.append(chunk if cut < 0 else chunk[: cut + 1])
            if cut >= 0:
                break
        data += b"".join(tail)
    if start == 0:
        return data, 0
    first = data.find(b"\n")
    return (data[first + 1 :], lo + first + 1) if first >= 0 else (b"", stop)


def _decode(unit: Unit, f, data: bytes, begin: int) -> str:
    """UTF-8 text of bytes read from `begin`, or the UserError `check_utf8` gives, naming byte and line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = begin + exc.start
        what = (f"a character cut off by the end of the file at byte {at}" if exc.reason == "unexpected end of data"
                and begin + len(data) >= unit.size else f"invalid byte 0x{data[exc.start]:02x} at byte {at}")
        raise UserError(f"corpus file {unit.name!r} is not UTF-8 text: {what} (line {line_of(f, at)}); "
                        "convert it to UTF-8 or remove it") from None


@contextmanager
def _opened(unit: Unit) -> Iterator:
    """The unit's file, open for reading; a failure to open or read it (a UserError excepted) becomes a UserError
    naming the file."""
    try:
        with filesystem(unit.fs).open_input_file(unit.path) as f:
            yield f
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"corpus file {unit.name!r} could not be read ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); check the file") from None


def _texts_sha256(texts: list) -> str:
    return hashlib.sha256("\0".join(t for t in texts if isinstance(t, str)).encode("utf-8", "replace")).hexdigest()


def _column_sha256(col) -> str:
    """SHA-256 of the buffers of a Parquet row group's text column (what a resumed run compares)."""
    h = hashlib.sha256()
    for chunk in col.chunks:
        for buf in chunk.buffers():
            if buf is not None:
                h.update(buf)
    return h.hexdigest()


def text_lines(text: str) -> list[str]:
    r"""The lines of a `.txt` unit's text: split at line ends only, `\n`, `\r\n` or a lone `\r` (as Python's
    universal newlines and `datasets`' text reader do), so form feeds, vertical tabs, U+0085, U+2028, U+2029 and
    the other characters `str.splitlines` also splits at stay inside their document. No empty last line after a
    final line end."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines and not lines[-1] else lines


def unit_sha256(unit: Unit, text_field: str = "text") -> str:
    """The checksum `read_unit` gives for a unit, from its bytes alone (nothing decoded or parsed): what a resumed
    run compares when a listed file's modification time changed but not its size, to tell a file rewritten with
    the same bytes from a changed one."""
    if unit.kind in ("embedded", "hub-stream"):
        return read_unit(unit, text_field)[1]
    with _opened(unit) as f:
        if unit.kind == "parquet":
            import pyarrow.parquet as pq

            return _column_sha256(pq.ParquetFile(f).read_row_group(unit.start, columns=[text_field]).column(0))
        return hashlib.sha256(_read_lines(f, unit.start, unit.stop, unit.size)[0]).hexdigest()


def read_unit(unit: Unit, text_field: str = "text") -> tuple[list, str]:
    """The texts of one unit, in order (empty and non-text ones included; they are dropped later), and the SHA-256
    of the bytes read (a resumed run refuses a unit whose bytes changed). A file that cannot be read or parsed
    raises UserError naming it and the problem."""
    if unit.kind in ("embedded", "hub-stream"):
        if unit.kind == "embedded":
            texts = embedded_texts()
        else:
            part = _hub_stream(unit.path, unit.fs).shard(num_shards=unit.stop, index=unit.start, contiguous=True)
            texts = [row.get(text_field) for row in part]
        return texts, _texts_sha256(texts)
    with _opened(unit) as f:
        if unit.kind == "parquet":
            return _read_parquet(unit, f, text_field)
        data, begin = _read_lines(f, unit.start, unit.stop, unit.size)
        digest = hashlib.sha256(data).hexdigest()
        text = _decode(unit, f, data, begin)
        if begin == 0 and text.startswith("\ufeff"):
            text = text[1:]  # a leading byte order mark is encoding, not text
        if unit.kind == "text":
            return text_lines(text), digest
        rows, lines = json_rows(unit, f, text, begin, unit.kind == "json")
        texts = column_texts(unit, f, rows, lines, begin, text_field)
        check_encodable(unit, f, texts, lines, begin)
        return texts, digest


def _read_parquet(unit: Unit, f, field: str) -> tuple[list, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    names = pf.schema_arrow.names
    if field not in names:
        raise UserError(f"corpus file {unit.name!r} has no column {field!r} (columns: {', '.join(names)}); "
                        "set corpus.text_field")
    kind = pf.schema_arrow.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
            or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind))):
        raise UserError(f"corpus file {unit.name!r}: column {field!r} holds {kind}, not text; set corpus.text_field to "
                        "the column that holds the documents' text")
    col = pf.read_row_group(unit.start, columns=[field]).column(0)
    return col.to_pylist(), _column_sha256(col)
