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

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tasks.errors import UserError


def shard_file(index: int, suffix: str) -> str:
    """Where a shard's sample (`npz`) and its record (`json`) live in the run directory."""
    return f"shards/shard-{index:06d}.{suffix}"


def is_uri(root: str) -> bool:
    return "://" in root


class RunStore:
    """Files of one run directory, addressed by paths relative to its root (`shards/shard-00001.npz`)."""

    def __init__(self, root: str):
        self.root = str(root)
        if is_uri(self.root):
            try:
                self.fs, self.base = pafs.FileSystem.from_uri(self.root)
            except (pa.ArrowInvalid, OSError, ValueError) as exc:
                raise UserError(f"run.out {self.root!r} is not a usable storage URI ({exc}); use a path, s3:// or gs://") from None
            self.local = False
        else:
            self.fs, self.base, self.local = pafs.LocalFileSystem(), os.path.abspath(self.root), True

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

    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self.path(rel)
        parent = posixpath.dirname(path)
        self.fs.create_dir(parent, recursive=True)
        if self.local:
            tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        else:
            with self.fs.open_output_stream(path) as f:  # one PUT of the whole object
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
        """Write arrays as `.npz`; returns the SHA-256 of the bytes written."""
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        self.write_bytes(rel, data)
        return hashlib.sha256(data).hexdigest()

    # -- reading --------------------------------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def read_parquet(self, rel: str) -> pa.Table:
        return pq.read_table(self.path(rel), filesystem=self.fs)

    def read_arrays(self, rel: str, sha256: str | None = None) -> dict[str, np.ndarray]:
        """Read an `.npz` written by `write_arrays`, never unpickling; check its SHA-256 when given."""
        data = self.read_bytes(rel)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"{rel} does not match its checksum")
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
