"""CSV: a header row of field names, then one record a line. Lossless.

One acceptance rule for every line, whichever code path parses it: a field
is optional spaces or tabs, then decimal digits or ``0x``/``0X`` and hex
digits, then optional spaces or tabs; a record has exactly one field per
header column; ``dev``, ``pasid``, ``grpid``, ``flags`` and ``perm`` fit in
32 bits, the others in 64; blank lines and lines starting with ``#`` are
skipped; a line ends at LF (a CR before it is dropped). Whole blocks go
through pyarrow's CSV reader when it is installed (it accepts exactly these
fields, but also ends a line at a lone CR: such a block is left to the
rule) or numpy's when a block holds nothing but digits, commas and line
ends; a block either fast reader refuses is read line by line by the rule
itself, so a line's fate never depends on its neighbours.

Speed: with pyarrow, every input is read into one buffer from pyarrow's
memory pool and parsed there.
pyarrow reads the 32-bit columns as 32-bit and the others as 64-bit
unsigned integers, and each of its batches is written into the records
while in cache.
"""
from __future__ import annotations

import io
import re
import warnings
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


def _blocks(src: Input, names: list[str], lineno: int, skip_bad: bool,
            chunk_size: int, stats: LoadStats) -> Iterator[tuple[np.ndarray, None]]:
    # Blocks as large as a chunk of records (about 60 bytes each): a whole
    # load of a million records is then parsed and assembled at once.
    size = max(BLOCK_BYTES, chunk_size * 64)
    # Read, not mapped: a mapped file that another process truncates kills
    # the reader with SIGBUS, and a mapping's pages stay resident while the
    # rest of the file is read; the copy costs a few percent.
    blocks = _whole_lines(src.stream, size if src.size is None else
                          min(size, src.size + 1))  # no bigger than the file
    first = lineno + 1            # the number of the next block's first line
    for block, owned in blocks:
        fast = _fast(block, owned, names)
        if fast is None:
            faults, lines = _by_rule(src.name, block, names, first, skip_bad, stats)
        else:
            faults, lines = fast
        first += lines
        yield faults, None


# Each block as a view, and as a pyarrow buffer of the same bytes (None
# without pyarrow). pyarrow is only ever given memory it owns: its threads
# may drop their references to a block after a failed read, and dropping a
# Python object's buffer then needs the interpreter, which at exit aborts
# the process ("terminate called without an active exception").
Blocks = Iterator[tuple[memoryview, Any]]


def _whole_lines(f: io.BufferedIOBase, size: int) -> Blocks:
    """The stream in blocks of whole lines (the last may lack its line end),
    each a view of one buffer reused for the next block: use it before
    asking for the next. The buffer comes from pyarrow's memory pool when
    pyarrow is installed (it keeps its pages from one load to the next, so
    they are not faulted in again) and from numpy otherwise (never zeroed)."""
    pa = _pyarrow()
    owner, buf = _buffer(size)
    have = 0
    while True:
        if have == len(buf):     # a line longer than the buffer: a bigger one
            bigger, bigger_view = _buffer(2 * len(buf))
            bigger_view[:have] = buf
            owner, buf = bigger, bigger_view
        got = f.readinto(buf[have:]) or 0
        total = have + got
        cut = total if not got else _after_last_newline(buf, total)
        if cut:
            yield buf[:cut], None if pa is None else owner.slice(0, cut)
            buf[:total - cut] = buf[cut:total]
        have = total - cut
        if not got:
            return


def _buffer(size: int) -> tuple[Any, memoryview]:
    pa = _pyarrow()
    raw: Any = np.empty(size, np.uint8) if pa is None else pa.allocate_buffer(size)
    return raw, memoryview(raw).cast("B")


def _after_last_newline(buf: memoryview, end: int, start: int = 0) -> int:
    """The offset just past the last line end in ``buf[start:end]`` (0: none)."""
    while end > start:          # back a window at a time: lines are short
        lo = max(start, end - (1 << 16))
        at = bytes(buf[lo:end]).rfind(b"\n")
        if at >= 0:
            return lo + at + 1
        end = lo
    return 0


def _fill(out: np.ndarray, names: list[str], columns: list[np.ndarray]) -> None:
    """Write the columns into FAULT_DTYPE records, absent columns as zero:
    every field written once (no zeroing first)."""
    given = dict(zip(names, columns))
    for col in CSV_COLUMNS:
        values: Any = given.get(col, 0)
        if col.startswith("private"):
            out["private"][:, int(col[-1])] = values
        else:
            out[col] = values


def _assemble(columns: list[np.ndarray], names: list[str]) -> np.ndarray:
    out = np.empty(len(columns[0]), FAULT_DTYPE)
    # A cache-sized slice of records at a time: field by field over the
    # whole array would stream it through memory nine times.
    step = 1 << 15
    for start in range(0, len(out), step):
        _fill(out[start:start + step], names, [c[start:start + step] for c in columns])
    return out


def _fast(block: memoryview, owned: Any, names: list[str]) -> tuple[np.ndarray, int] | None:
    """The records of a block by a fast reader and its number of lines, or
    None for the rule to decide. ``owned``: the block as a pyarrow buffer."""
    data = np.frombuffer(block, np.uint8)
    unended = int(len(block) > 0 and block[-1] != ord("\n"))
    if owned is not None:
        # First with every line a record: then, with no lone CR (a line end
        # to pyarrow, not to the rule), records and lines are as many. If
        # that fails, blank lines may be why: again skipping them, with lone
        # CRs looked for. Any other failure goes to the rule either way.
        table = _pyarrow_table(owned, names, skip_blank=False)
        if table is not None:
            lines = _count_lines(data)
            if table.num_rows != lines + unended:
                return None
            return _records(table, names), lines
        table = _pyarrow_table(owned, names, skip_blank=True)
        if table is None or np.count_nonzero(
                (data[:-1] == ord("\r")) & (data[1:] != ord("\n"))):
            return None
        return _records(table, names), _count_lines(data)
    # numpy's reader takes exactly the rule's lines when the block holds
    # nothing but digits, commas and line ends (it refuses a lone CR).
    if _PLAIN_BYTES[data].any():
        return None
    try:
        with warnings.catch_warnings():   # a block of blank lines: "no data"
            warnings.simplefilter("ignore", UserWarning)
            t = np.loadtxt(io.BytesIO(block), dtype=np.uint64, delimiter=",", ndmin=2,
                           comments=None)
    except ValueError:
        return None
    if not len(t):                        # blank lines only
        t = np.empty((0, len(names)), np.uint64)
    if t.shape[1:] != (len(names),):
        return None
    columns = [t[:, i] for i in range(len(names))]
    for col, values in zip(names, columns):
        if col in U32_COLUMNS and len(values) and values.max() > U32_MAX:
            return None
    return _assemble(columns, names), _count_lines(data)


def _count_lines(data: np.ndarray) -> int:
    # A megabyte at a time: the comparison's temporary stays in cache.
    step = 1 << 20
    return sum(int(np.count_nonzero(data[i:i + step] == ord("\n")))
               for i in range(0, len(data), step))


_pa: Any = None


def _pyarrow() -> Any:
    """pyarrow with its CSV reader, or None when it is not installed."""
    global _pa
    if _pa is None:
        try:
            import pyarrow
            import pyarrow.csv  # noqa: F401
            _pa = pyarrow
        except ImportError:
            _pa = False
    return _pa or None


def _pyarrow_table(block: Any, names: list[str], *, skip_blank: bool) -> Any:
    """pyarrow's table of the block, or None if it refuses it. Its integer
    fields are the rule's (optional spaces or tabs around decimal or ``0x``
    hex digits), and the 32-bit columns are read as such, so a value out of
    range is refused here and named by the rule."""
    pa = _pyarrow()
    try:
        # The whole-table reader: with the streaming one, a process exiting
        # after it stopped at an error aborted now and then (3 in 40 runs of
        # the command line on a bad file), and it was no faster.
        table = pa.csv.read_csv(
            pa.BufferReader(block),
            read_options=pa.csv.ReadOptions(column_names=names, block_size=4 << 20),
            parse_options=pa.csv.ParseOptions(quote_char=False, double_quote=False,
                                              ignore_empty_lines=skip_blank),
            convert_options=pa.csv.ConvertOptions(
                column_types={n: pa.uint32() if n in U32_COLUMNS else pa.uint64()
                              for n in names},
                strings_can_be_null=False, null_values=[]))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    return None if any(c.null_count for c in table.columns) else table


def _records(table: Any, names: list[str]) -> np.ndarray:
    out = np.empty(table.num_rows, FAULT_DTYPE)
    at = 0
    for batch in table.to_batches():   # one per block pyarrow parsed: cache-sized
        n = batch.num_rows
        _fill(out[at:at + n], names, [c.to_numpy() for c in batch.columns])
        at += n
    return out


def _by_rule(name: str, block: memoryview, names: list[str], first: int, skip_bad: bool,
             stats: LoadStats) -> tuple[np.ndarray, int]:
    """The records of a block by the rule, line by line (the first is line
    ``first``), and its number of lines."""
    u32 = [n in U32_COLUMNS for n in names]
    rows: list[list[int]] = []
    lines = bytes(block).decode("utf-8", errors="replace").split("\n")
    for lineno, line in enumerate(lines, first):
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
    return _assemble([table[:, i] for i in range(len(names))], names), len(lines) - 1


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
