"""The run directory as storage: a local path or an object-store URI (`s3://`, `gs://`) through `pyarrow.fs`.

Every node of a cluster must reach the run directory: a shared file system path, or a bucket. Writes are atomic
so that nothing half-written is ever taken for a result: on a local file system a file is written under a
temporary name and renamed into place; on an object store one PUT of the whole object is atomic by itself.
Nothing here unpickles: arrays are `.npz` read with `allow_pickle=False`, tables are Parquet, records JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import uuid
import zipfile
from contextlib import contextmanager

import numpy as np
import numpy.lib.format as npformat
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tasks.errors import UserError


def shard_file(index: int, suffix: str) -> str:
    """Where a shard's sample (`npz`) and its record (`json`) live in the run directory."""
    return f"shards/shard-{index:06d}.{suffix}"


def partial_file(name: str, suffix: str) -> str:
    """Where a statistics partial (`npz`) and its record (`json`) live in the run directory."""
    return f"stats/{name}.{suffix}"


def record_checksum(record: dict) -> str:
    """SHA-256 of a record's own content: the canonical JSON (sorted keys, no spaces) of every field but
    `record_sha256`. A shard's record holds its sample file's checksum too, so the pair is covered."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal_record(record: dict) -> dict:
    """Set the record's `record_sha256` (last, once every other field is in place); returns the record."""
    record["record_sha256"] = record_checksum(record)
    return record


def record_intact(record: dict) -> bool:
    """Whether a record read back is the one written: its `record_sha256` matches its content (a record without
    one, or edited since, is not trusted)."""
    return isinstance(record, dict) and record.get("record_sha256") == record_checksum(record)


class _HashingWriter(io.RawIOBase):
    """A write-only, unseekable stream that hashes what passes through it: `zipfile` (under `np.savez`) then
    writes every member once, in order, with a data descriptor, so the hash is that of the file's bytes."""

    def __init__(self, f):
        self.f, self.sha256, self.position = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.f.write(view)
        self.position += len(view)
        return len(view)

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return False

    def seek(self, *args):
        raise io.UnsupportedOperation("seek")


def _npz_views(data) -> dict[str, np.ndarray] | None:
    """The arrays of an uncompressed `.npz` (as `np.savez` writes it) as read-only views into `data`, or None
    when a member is compressed or holds objects (then `np.load` reads it). Uses the zip directory for each
    member's offset, its local header for where the data start (PKWARE APPNOTE 4.3.7: 30 bytes plus the
    name and extra field) and `numpy.lib.format` for the `.npy` header."""
    buf = memoryview(data).cast("B")
    out = {}
    with zipfile.ZipFile(pa.BufferReader(data)) as z:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                return None
            head = info.header_offset
            name_len, extra_len = (int.from_bytes(buf[head + i : head + i + 2], "little") for i in (26, 28))
            start = head + 30 + name_len + extra_len
            fp = io.BytesIO(buf[start : start + min(info.file_size, 1 << 16)])
            version = npformat.read_magic(fp)
            read_header = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
            shape, fortran, dtype = read_header(fp)
            if dtype.hasobject:
                return None
            count = int(np.prod(shape, dtype=np.int64))
            array = np.frombuffer(buf, dtype=dtype, count=count, offset=start + fp.tell())
            out[info.filename[:-4]] = array.reshape(shape, order="F" if fortran else "C")
    return out


def is_uri(root: str) -> bool:
    return "://" in root


class RunStore:
    """Files of one run directory, addressed by paths relative to its root (`shards/shard-000001.npz`)."""

    def __init__(self, root: str):
        self.root = str(root)
        if is_uri(self.root):
            try:
                self.fs, self.base = pafs.FileSystem.from_uri(self.root)
            except (pa.ArrowInvalid, OSError, ValueError) as exc:
                raise UserError(f"run.out {self.root!r} is not a usable storage URI ({exc}); use a path, s3:// or gs://") from None
            self.local = False
        else:
            # Memory-mapped reads: a file's bytes are read from the page cache without a copy into fresh memory.
            self.fs, self.base, self.local = pafs.LocalFileSystem(use_mmap=True), os.path.abspath(self.root), True

    def __reduce__(self):  # ship by root: each process builds its own filesystem client
        return (RunStore, (self.root,))

    @property
    def name(self) -> str:
        """The run directory's own name (its last path component)."""
        return posixpath.basename(self.base.rstrip("/"))

    def path(self, rel: str) -> str:
        return posixpath.join(self.base, rel) if rel else self.base

    def local_path(self, rel: str = "") -> str:
        """The path on the local file system (only for local run directories)."""
        assert self.local, "not a local run directory"
        return self.path(rel)

    # -- writing --------------------------------------------------------------------------------------------

    @contextmanager
    def _atomic(self, rel: str):
        """A binary file object that becomes `rel` only when the block ends without error: on a local file system
        a temporary file renamed into place, on an object store one upload completed at the end."""
        path = self.path(rel)
        parent = posixpath.dirname(path)
        self.fs.create_dir(parent, recursive=True)
        if not self.local:
            with self.fs.open_output_stream(path) as f:
                yield f
            return
        tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                yield f
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self._atomic(rel) as f:
            f.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, obj) -> None:
        self.write_text(rel, json.dumps(obj, indent=2) + "\n")

    def write_parquet(self, rel: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(rel, sink.getvalue().to_pybytes())

    def write_arrays(self, rel: str, arrays: dict[str, np.ndarray]) -> str:
        """Write arrays as `.npz` (uncompressed); returns the SHA-256 of the bytes written. Streamed to the file
        through the hash, with no copy of the whole in memory: a statistics partial can be gigabytes."""
        with self._atomic(rel) as f:
            sink = _HashingWriter(f)
            np.savez(sink, **arrays)
        return sink.sha256.hexdigest()

    # -- reading --------------------------------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def _read_buffer(self, rel: str, sha256: str | None) -> pa.Buffer:
        """The file's bytes as one Arrow buffer (no copy into Python bytes), checked against `sha256` if given."""
        with self.fs.open_input_file(self.path(rel)) as f:  # memory-mapped where local: no copy
            data = f.read_buffer()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"{rel} does not match its checksum")
        return data

    def matches(self, rel: str, sha256: str) -> bool:
        """Whether the file exists and its bytes have this SHA-256 (without parsing them)."""
        try:
            self._read_buffer(rel, sha256)
        except (OSError, ValueError):
            return False
        return True

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def read_parquet(self, rel: str) -> pa.Table:
        return pq.read_table(self.path(rel), filesystem=self.fs)

    def read_arrays(self, rel: str, sha256: str | None = None) -> dict[str, np.ndarray]:
        """Read an `.npz` written by `write_arrays`, never unpickling. With its SHA-256, the file is checked
        against it and the arrays are read-only views of the bytes read (no copy: a statistics partial can be
        gigabytes); without, `np.load` reads (copies) them, checking each member's CRC."""
        data = self._read_buffer(rel, sha256)
        if sha256 is not None:
            views = _npz_views(data)
            if views is not None:
                return views
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {name: z[name] for name in z.files}

    def list(self, rel: str) -> list[str]:
        """Names of the files directly inside a folder (empty if it does not exist)."""
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File)

    def delete(self, rel: str) -> None:
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))

    def check_writable(self) -> None:
        probe = f".write-test-{uuid.uuid4().hex}"
        try:
            self.write_bytes(probe, b"ok")
            self.delete(probe)
        except OSError as exc:
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise UserError(f"cannot write to run.out {self.root!r} ({reason}); choose a writable directory") from None
