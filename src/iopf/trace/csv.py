"""CSV: a header row of field names, then one record a line. Lossless.

One acceptance rule for every line, whichever code path parses it: a field
is optional spaces or tabs, then decimal digits or ``0x``/``0X`` and hex
digits, then optional spaces or tabs; a record has exactly one field per
header column; ``dev``, ``pasid``, ``grpid``, ``flags`` and ``perm`` fit in
32 bits, the others in 64; blank lines and lines starting with ``#`` are
skipped. Whole blocks go through pyarrow's CSV reader when it is installed
(it accepts exactly these fields) or numpy's when a block holds nothing but
digits, commas and line ends; a block either fast reader refuses is read
line by line by the rule itself, so a line's fate never depends on its
neighbours.
"""
from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from ..types import FAULT_DTYPE
from ._common import (CSV_COLUMNS, CSV_HEADER, CSV_OPTIONAL, SCALAR_FIELDS, U32_COLUMNS,
                      U32_MAX, U64_MAX, LoadStats, TraceError, shorten)
from ._io import Input

#: Bytes handed to the block readers at once.
BLOCK_BYTES = 16 << 20

_FIELD = re.compile(r"[ \t]*(?:0[xX]([0-9a-fA-F]+)|([0-9]+))[ \t]*")
# Only these bytes: numpy's reader then takes exactly the rule's lines.
_PLAIN_BYTES = np.ones(256, bool)
_PLAIN_BYTES[list(b"0123456789,\r\n")] = False


def header_names(line: str) -> list[str] | None:
    names = [n.strip() for n in line.strip().split(",")]
    known = set(CSV_COLUMNS)
    if (len(names) == len(set(names)) and set(names) <= known
            and known - CSV_OPTIONAL <= set(names)):
        return names
    return None


def parse_int(text: str) -> int:
    """One field by the rule."""
    m = _FIELD.fullmatch(text)
    if m is None:
        raise ValueError(f"not an unsigned integer: {text.strip()!r}")
    hexdigits, digits = m.groups()
    return int(hexdigits, 16) if hexdigits is not None else int(digits, 10)


def read(src: Input, *, skip_bad: bool, chunk_size: int,
         stats: LoadStats) -> Iterator[tuple[np.ndarray, None]]:
    # Find the header now so that an input without one fails at the call.
    f = src.stream
    lineno = 0
    names: list[str] | None = None
    while True:
        raw = f.readline()
        if not raw:
            break
        lineno += 1
        line = raw.decode("utf-8", errors="replace")
        if lineno == 1:
            line = line.removeprefix("\ufeff")   # spreadsheets start with a BOM
        if line.strip() and not line.lstrip().startswith("#"):
            names = header_names(line)
            if names is None:
                raise TraceError(f"expected a CSV header ({CSV_HEADER}), got "
                                 f"{shorten(line)}", path=src.name, line=lineno)
            break
    if names is None:
        raise TraceError("empty file (no CSV header)", path=src.name)
    stats.time_source = "field" if "time" in names else "none"
    return _blocks(src, names, lineno, skip_bad, chunk_size, stats)


def _blocks(src: Input, names: list[str], lineno: int, skip_bad: bool, chunk_size: int,
            stats: LoadStats) -> Iterator[tuple[np.ndarray, None]]:
    from .prq_report import text_blocks
    # Blocks as large as a chunk of records (about 60 bytes each): a whole
    # load of a million records is then parsed and assembled at once.
    size = max(BLOCK_BYTES, chunk_size * 64)
    for first, block in text_blocks(src, first_line=lineno + 1, refuse_nul=False, size=size):
        yield _block(src.name, block, names, first - 1, skip_bad, stats), None


def _block(name: str, block: memoryview, names: list[str], first: int, skip_bad: bool,
           stats: LoadStats) -> np.ndarray:
    """The records of ``block`` (a view valid until the next block), whose
    first line is line ``first + 1``."""
    table = _fast(block, names)
    if table is None:
        table = _by_rule(name, block, names, first, skip_bad, stats)
    n = len(table[0]) if table else 0
    out = np.empty(n, FAULT_DTYPE)
    given = dict(zip(names, table))
    # Every field written once (no zeroing first), a cache-sized slice of
    # records at a time: field by field over the whole array would stream
    # it through memory nine times.
    step = 1 << 15
    for start in range(0, n, step):
        part = out[start:start + step]
        for col in CSV_COLUMNS:
            column = given.get(col)
            values: Any = 0 if column is None else column[start:start + step]
            if col.startswith("private"):
                part["private"][:, int(col[-1])] = values
            else:
                part[col] = values
    return out


def _fast(block: memoryview, names: list[str]) -> list[np.ndarray] | None:
    """The columns of a block by a fast reader, or None for the rule to decide."""
    whole: Any = memoryview(block).obj    # the buffer under the view: its find is memchr
    if whole.find(b"#", 0, len(block)) >= 0:
        return None
    columns = _pyarrow_block(block, names)
    if columns is None and not _PLAIN_BYTES[np.frombuffer(block, np.uint8)].any():
        try:
            t = np.loadtxt(io.BytesIO(block), dtype=np.uint64, delimiter=",", ndmin=2,
                           comments=None)
        except ValueError:
            return None
        if t.shape[1:] != (len(names),) and len(t):
            return None
        columns = [t[:, i] for i in range(len(names))]
    if columns is None:
        return None
    for col, values in zip(names, columns):
        if col in U32_COLUMNS and len(values) and values.max() > U32_MAX:
            return None
    return columns


_pa_csv: Any = None


def _pyarrow_block(block: memoryview, names: list[str]) -> list[np.ndarray] | None:
    global _pa_csv
    if _pa_csv is False:
        return None
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:
        _pa_csv = False
        return None
    try:
        t = pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(block)),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=True),
            parse_options=pacsv.ParseOptions(quote_char=False, double_quote=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.uint64() for n in names}, strings_can_be_null=False,
                null_values=[]))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if t.num_rows and any(c.null_count for c in t.columns):
        return None
    return [c.to_numpy() for c in t.columns]


def _by_rule(name: str, block: memoryview, names: list[str], first: int, skip_bad: bool,
             stats: LoadStats) -> list[np.ndarray]:
    u32 = [n in U32_COLUMNS for n in names]
    rows: list[list[int]] = []
    text = bytes(block).decode("utf-8", errors="replace")
    for lineno, line in enumerate(text.split("\n"), first + 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            rows.append(row(line.rstrip("\r"), names, u32))
        except ValueError as e:
            err = TraceError(f"bad CSV record ({e}): {shorten(line)}", path=name, line=lineno)
            if not skip_bad:
                raise err from None
            stats._skip(err)
    table = np.array(rows, dtype=np.uint64).reshape(len(rows), len(names))
    return [table[:, i] for i in range(len(names))]


def row(line: str, names: list[str], u32: list[bool]) -> list[int]:
    fields = line.split(",")
    if len(fields) != len(names):
        raise ValueError(f"{len(fields)} fields, expected {len(names)}")
    values = [parse_int(x) for x in fields]
    for name, small, v in zip(names, u32, values):
        if v > (U32_MAX if small else U64_MAX):
            raise ValueError(f"{name} out of range for {'u4' if small else 'u8'}")
    return values


def write(f: IO[bytes], arr: np.ndarray, meta: object, units: object) -> None:
    fmt = ",".join(["{}"] * len(CSV_COLUMNS)) + "\n"
    out = io.TextIOWrapper(f, encoding="ascii", newline="\n", write_through=False)
    out.write(CSV_HEADER + "\n")
    for start in range(0, len(arr), 1 << 16):
        c = arr[start:start + (1 << 16)]
        cols = [c[n].tolist() for n in SCALAR_FIELDS]
        cols += [c["private"][:, 0].tolist(), c["private"][:, 1].tolist()]
        out.writelines(map(fmt.format, *cols))
    out.flush()
    out.detach()
