"""Compare the result tables of two run directories: are they bit-identical?

    python bench/same_results.py RUN_A RUN_B [--files summary histograms ...]

For each Parquet file, prints `identical` when every column holds the same values bit for bit (NaN where NaN),
and otherwise the columns that differ with their largest absolute difference. Exits 1 if any file differs.
Used to check that a change meant to keep the numbers (a refactor) kept them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FILES = ("summary", "histograms", "exemplars", "samples", "moments", "sanity")


def column_bytes(col: pa.ChunkedArray) -> bytes:
    """A column's values as bytes that are equal exactly when the values are bit-identical (nulls included)."""
    col = col.combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return column_bytes(pa.chunked_array([col.flatten()])) + np.asarray(col.offsets).tobytes() + nulls(col)
    if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
        return np.asarray(col.fill_null(0).to_numpy(zero_copy_only=False)).tobytes() + nulls(col)
    return repr(col.to_pylist()).encode()


def nulls(col: pa.Array) -> bytes:
    return np.asarray(col.is_null().to_numpy(zero_copy_only=False)).tobytes()


def differences(a: pa.Table, b: pa.Table) -> list[str]:
    if a.schema != b.schema:
        return [f"schemas differ: {a.schema.names} vs {b.schema.names}"]
    if a.num_rows != b.num_rows:
        return [f"{a.num_rows} rows vs {b.num_rows}"]
    out = []
    for name in a.column_names:
        ca, cb = a.column(name), b.column(name)
        if column_bytes(ca) == column_bytes(cb):
            continue
        if pa.types.is_floating(ca.type):
            x = np.asarray(ca.to_numpy(zero_copy_only=False), dtype=np.float64)
            y = np.asarray(cb.to_numpy(zero_copy_only=False), dtype=np.float64)
            with np.errstate(invalid="ignore"):
                out.append(f"{name}: max |diff| {np.nanmax(np.abs(x - y)):.3g}")
        else:
            out.append(f"{name}: values differ")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--files", nargs="+", default=list(FILES))
    args = ap.parse_args(argv)
    status = 0
    for name in args.files:
        pa_, pb = args.run_a / f"{name}.parquet", args.run_b / f"{name}.parquet"
        if not pa_.exists() and not pb.exists():
            print(f"{name + '.parquet':20s} absent from both")
            continue
        if not pa_.exists() or not pb.exists():
            print(f"{name + '.parquet':20s} present in only one run")
            status = 1
            continue
        diffs = differences(pq.read_table(pa_), pq.read_table(pb))
        print(f"{name + '.parquet':20s} {'identical' if not diffs else 'DIFFERENT: ' + '; '.join(diffs)}")
        status |= bool(diffs)
    return status


if __name__ == "__main__":
    sys.exit(main())
