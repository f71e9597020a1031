"""Parquet: one column per field (``private0``, ``private1``), unsigned
integers. Lossless. Needs pyarrow (``pip install "iopf[parquet]"``)."""
from __future__ import annotations

import io
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from ..types import FAULT_DTYPE
from ._common import (CSV_COLUMNS, CSV_OPTIONAL, SCALAR_FIELDS, U32_COLUMNS, U32_MAX, U64_MAX,
                      LoadStats, OptionalDependencyError, TraceError)
from ._io import Input

# Quoted, so that zsh does not take the brackets for a glob.
HINT = 'pip install "iopf[parquet]" (from a clone: pip install ".[parquet]")'


def pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:
        raise OptionalDependencyError(f"the parquet format needs pyarrow: {HINT}") from e
    return pyarrow, pyarrow.parquet


def read(src: Input, *, skip_bad: bool, chunk_size: int,
         stats: LoadStats) -> Iterator[tuple[np.ndarray, None]]:
    _, pq = pyarrow()
    # Parquet keeps its schema at the end: a stream is read whole first.
    where: Any = src.path if src.path is not None else io.BytesIO(src.stream.read())
    try:
        pf = pq.ParquetFile(where)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for bad files
        raise TraceError(f"not a readable parquet file: {e}", path=src.name) from e
    names = set(pf.schema_arrow.names)
    missing = [c for c in CSV_COLUMNS if c not in names and c not in CSV_OPTIONAL]
    if missing:
        raise TraceError(f"missing columns {', '.join(missing)}", path=src.name)
    columns = [c for c in CSV_COLUMNS if c in names]
    stats.time_source = "field" if "time" in names else "none"
    return _chunks(src.name, pf, columns, skip_bad, chunk_size, stats)


def _chunks(name: str, pf: Any, columns: list[str], skip_bad: bool, chunk_size: int,
            stats: LoadStats) -> Iterator[tuple[np.ndarray, None]]:
    start = 0
    for batch in pf.iter_batches(batch_size=chunk_size, columns=columns):
        n = batch.num_rows
        bad = np.zeros(n, dtype=bool)
        values = {}
        for col_name in columns:
            col = batch.column(col_name)
            if col.null_count:
                bad |= np.asarray(col.is_null())
                col = col.fill_null(0)
            v = col.to_numpy(zero_copy_only=False)
            if v.dtype.kind not in "iu":
                raise TraceError(f"column {col_name} has type {col.type}, expected integers",
                                 path=name)
            limit = U32_MAX if col_name in U32_COLUMNS else U64_MAX
            if v.dtype.kind == "i":
                bad |= v < 0
            if np.iinfo(v.dtype).max > limit:
                bad |= v > limit
            values[col_name] = v
        if bad.any():
            for i in np.flatnonzero(bad):
                err = TraceError("null or out-of-range value", path=name, record=start + int(i))
                if not skip_bad:
                    raise err
                stats._skip(err)
        keep = ~bad
        out = np.zeros(int(keep.sum()), FAULT_DTYPE)
        for col_name, v in values.items():
            v = v[keep].astype(np.uint64)
            if col_name.startswith("private"):
                out["private"][:, int(col_name[-1])] = v
            else:
                out[col_name] = v
        start += n
        yield out, None


def write(f: IO[bytes], arr: np.ndarray, meta: object, units: object) -> None:
    pa, pq = pyarrow()
    schema = pa.schema([(n, pa.uint32() if n in U32_COLUMNS else pa.uint64())
                        for n in CSV_COLUMNS])
    with pq.ParquetWriter(f, schema) as w:
        for start in range(0, len(arr), 1 << 20):
            c = arr[start:start + (1 << 20)]
            cols = [c[n] for n in SCALAR_FIELDS]
            cols += [c["private"][:, 0], c["private"][:, 1]]
            w.write_table(pa.Table.from_arrays(
                [pa.array(np.ascontiguousarray(x)) for x in cols], schema=schema))
