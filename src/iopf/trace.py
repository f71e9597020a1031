"""Fault traces: load, save, stream and generate ``FAULT_DTYPE`` arrays.

Formats (``format=`` names):

``"npy"``
    A 1-D ``FAULT_DTYPE`` array saved by ``numpy.save``. Lossless.
``"csv"``
    A header row of the field names (``private`` as ``private0,private1``),
    then one record a line, integers in decimal (``0x`` hex is accepted on
    load). Lossless. On load the columns may come in any order, and ``time``,
    ``private0`` and ``private1`` may be left out (they read as 0).
``"prq_report"``
    ftrace text of the Intel ``intel_iommu:prq_report`` tracepoint, either the
    ``trace`` file layout or ``trace-cmd report`` output. Lines of other
    events, ``#`` comments and blank lines are skipped. What the format cannot
    hold: the low 12 bits of ``addr`` (it prints a page number), time below a
    microsecond (ftrace prints 6 decimals; ``save`` rounds to the nearest
    microsecond as ftrace does), ``perm`` bits above PRIV, ``flags`` other than
    LAST_PAGE, PRIV_DATA and PASID_VALID+NEEDS_PASID (which both follow from
    ``pasid != 0``: pasid 0 is the kernel's "no PASID"; ``save`` therefore
    writes pasid 0 for a record without PASID_VALID), and ``private`` unless
    PRIV_DATA is set.
``"iommufd"``
    ``struct iommu_hwpt_pgfault`` records (40 bytes, little endian), as read
    from an iommufd fault object. ``save`` writes ``__reserved``, ``length``
    and ``cookie`` as 0 and flags bits 0-2 (PASID_VALID, LAST_PAGE and the
    kernel's NEEDS_PASID, which the kernel leaks through the raw ``flags``).
    Lost: ``time`` (``load`` numbers the records 0, 1, 2, ... instead),
    ``private`` and PRIV_DATA. ``load`` ignores ``__reserved`` (kernels
    before v6.14 leaked stack bytes there), ``length`` and ``cookie``. An
    empty file is an empty trace when the format is known (from ``format=``
    or the extension); the sniffer cannot tell it from a failed capture.
``"parquet"``
    One column per field (``private0``, ``private1``), unsigned integers.
    Lossless. Needs pyarrow (``pip install iopf[parquet]``).

Without ``format=``, the format comes from the extension (``.npy``, ``.csv``,
``.trace``, ``.parquet``/``.pq``, ``.bin``/``.iommufd``); otherwise (and for
``.txt``, which may hold CSV or ftrace text) from the content. ``save`` also
maps ``.txt`` to ``"prq_report"``.

>>> import os, tempfile
>>> faults = synthetic(100, seed=1)
>>> with tempfile.TemporaryDirectory() as d:
...     save(os.path.join(d, "t.csv"), faults)
...     bool((load(os.path.join(d, "t.csv")) == faults).all())
True
"""
from __future__ import annotations

import codecs
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .types import FAULT_DTYPE, Flag, Perm

__all__ = [
    "FORMATS", "IOMMUFD_DTYPE", "TraceError", "OptionalDependencyError", "LoadStats",
    "detect_format", "load", "iter_chunks", "save", "synthetic",
]

PathLike = str | os.PathLike

#: The format names ``load`` and ``save`` accept.
FORMATS = ("npy", "csv", "prq_report", "iommufd", "parquet")

_EXTENSIONS = {
    ".npy": "npy", ".csv": "csv", ".trace": "prq_report", ".parquet": "parquet",
    ".pq": "parquet", ".bin": "iommufd", ".iommufd": "iommufd",
}

_U32_MAX = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
_MAX_ERRORS_KEPT = 20
# How much of a file the sniffer reads: enough to get past an ftrace header and
# a screenful of other events without reading a large file twice.
_SNIFF_BYTES = 1 << 16
# Text is parsed in batches of this many lines whatever the chunk size, so a
# large chunk_size never holds millions of Python strings at once.
_TEXT_BATCH = 1 << 16

_CSV_COLUMNS = ("time", "dev", "pasid", "grpid", "flags", "perm", "addr",
                "private0", "private1")
_CSV_OPTIONAL = frozenset({"time", "private0", "private1"})
_SCALAR_FIELDS = _CSV_COLUMNS[:7]
assert FAULT_DTYPE.names == (*_SCALAR_FIELDS, "private")
_CSV_HEADER = ",".join(_CSV_COLUMNS)
_U32_COLUMNS = frozenset({"dev", "pasid", "grpid", "flags", "perm"})

#: ``struct iommu_hwpt_pgfault`` (include/uapi/linux/iommufd.h).
IOMMUFD_DTYPE = np.dtype([
    ("flags", "<u4"), ("dev_id", "<u4"), ("pasid", "<u4"), ("grpid", "<u4"),
    ("perm", "<u4"), ("reserved", "<u4"), ("addr", "<u8"), ("length", "<u4"),
    ("cookie", "<u4"),
])
assert IOMMUFD_DTYPE.itemsize == 40
# The uapi defines bits 0-1; bit 2 is the kernel-internal NEEDS_PASID leaking
# through the raw prm.flags. Our Flag values for those three bits are the same.
_IOMMUFD_FLAGS = int(Flag.PASID_VALID | Flag.LAST_PAGE | Flag.NEEDS_PASID)

_PARQUET_HINT = "pip install iopf[parquet]"


class TraceError(ValueError):
    """A trace file that cannot be read: names the file and the line or record.

    ``str(err)`` is one line: ``path:line: message``,
    ``path: record N: message`` or ``path: message``.
    """

    def __init__(self, message: str, *, path: PathLike | None = None,
                 line: int | None = None, record: int | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.line = line
        self.record = record
        self.reason = message
        if self.path is None:
            text = message
        elif line is not None:
            text = f"{self.path}:{line}: {message}"
        elif record is not None:
            text = f"{self.path}: record {record}: {message}"
        else:
            text = f"{self.path}: {message}"
        super().__init__(text)


class OptionalDependencyError(ImportError):
    """A format needs a package that is not installed (pyarrow for Parquet)."""


@dataclass
class LoadStats:
    """What a load did. Pass one as ``stats=`` to ``load`` or ``iter_chunks``.

    ``records`` counts the records returned, ``skipped`` the malformed lines
    or records dropped with ``skip_bad=True``; ``errors`` keeps the first
    messages of those (as ``TraceError`` would have said them).
    """

    format: str | None = None
    records: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def _skip(self, err: TraceError) -> None:
        self.skipped += 1
        if len(self.errors) < _MAX_ERRORS_KEPT:
            self.errors.append(str(err))


# --------------------------------------------------------------------------
# format detection

def detect_format(path: PathLike, format: str | None = None) -> str:
    """The format ``load`` would use for ``path``: ``format``, else the
    extension, else the content."""
    if format is not None:
        if format not in FORMATS:
            raise TraceError(f"unknown format {format!r} (expected one of "
                             f"{', '.join(FORMATS)})", path=path)
        return format
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    return _sniff(path)


def _format_for_save(path: PathLike, format: str | None) -> str:
    if format is not None:
        return detect_format(path, format)
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".txt":
        return "prq_report"
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    raise TraceError(f"cannot tell the format from the extension {ext!r}; pass "
                     f"format= (one of {', '.join(FORMATS)})", path=path)


_FTRACE_CONTEXT = re.compile(
    r"^\s*.*?-\d+\s+(?:\(\s*(?:\d+|-+)\)\s+)?\[\d+\]\s+(?:\S+\s+)?\d+(?:\.\d+)?:\s+\S+:",
    re.MULTILINE)


def _sniff(path: PathLike) -> str:
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
        size = os.fstat(f.fileno()).st_size
    if not head.strip():
        raise TraceError("empty file", path=path)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"\x17\x08\x44tracing"):
        raise TraceError("this is trace-cmd's binary trace.dat: convert it with "
                         "`trace-cmd report` and load the text", path=path)
    text = _as_text(head)
    if text is not None:
        if "prq_report:" in text:
            return "prq_report"
        lines = [ln for ln in text.lstrip("\ufeff").splitlines() if ln.strip()]
        if not lines:
            raise TraceError("empty file", path=path)
        data = [ln for ln in lines if not ln.lstrip().startswith("#")]
        if data and _csv_header_names(data[0]) is not None:
            return "csv"
        if lines[0].startswith("# tracer:") or _FTRACE_CONTEXT.search(text):
            return "prq_report"
        raise TraceError("cannot determine the format of this text file (no "
                         "prq_report lines, no CSV header); pass format=", path=path)
    if size % IOMMUFD_DTYPE.itemsize == 0:
        return "iommufd"
    raise TraceError(f"cannot determine the format of this binary file ({size} bytes "
                     f"is not a multiple of the {IOMMUFD_DTYPE.itemsize}-byte iommufd "
                     f"record); pass format=", path=path)


def _as_text(head: bytes) -> str | None:
    if b"\0" in head:
        return None
    # final=False: the sniff window may cut a multi-byte character in two.
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None


# --------------------------------------------------------------------------
# public load / iter_chunks / save

def load(path: PathLike, *, format: str | None = None, skip_bad: bool = False,
         chunk_size: int = 1 << 20, stats: LoadStats | None = None) -> np.ndarray:
    """Read a whole trace into one ``FAULT_DTYPE`` array.

    ``skip_bad=True`` drops malformed lines or records instead of raising
    ``TraceError``; pass ``stats=LoadStats()`` to learn how many. The result
    is the concatenation of ``iter_chunks`` with the same arguments.
    """
    chunks = list(iter_chunks(path, format=format, skip_bad=skip_bad,
                              chunk_size=chunk_size, stats=stats))
    if not chunks:
        return np.empty(0, FAULT_DTYPE)
    if len(chunks) == 1:
        return chunks[0]
    return np.concatenate(chunks)


def iter_chunks(path: PathLike, *, format: str | None = None, skip_bad: bool = False,
                chunk_size: int = 1 << 20,
                stats: LoadStats | None = None) -> Iterator[np.ndarray]:
    """Stream a trace as ``FAULT_DTYPE`` arrays of at most ``chunk_size`` records.

    Memory stays bounded by the chunk size whatever the file size. The format
    and file-level problems (empty file, wrong ``.npy`` dtype, truncated
    iommufd record) are checked at the call, before the first chunk.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
    fmt = detect_format(path, format)
    st = stats if stats is not None else LoadStats()
    st.format = fmt
    # Zero bytes is a valid iommufd capture (read() returned nothing); every
    # other format has a header, so an empty file is a failed capture.
    if fmt != "iommufd" and os.path.getsize(path) == 0:
        raise TraceError("empty file", path=path)
    reader = _READERS[fmt]
    chunks = reader(path, skip_bad=skip_bad, chunk_size=chunk_size, stats=st)
    return _count(chunks, st)


def _count(chunks: Iterator[np.ndarray], stats: LoadStats) -> Iterator[np.ndarray]:
    for chunk in chunks:
        stats.records += len(chunk)
        yield chunk


def save(path: PathLike, faults: Any, *, format: str | None = None) -> None:
    """Write ``faults`` (a ``FAULT_DTYPE`` array, or records convertible to
    one) to ``path``. The file is replaced atomically: a failed save leaves
    no partial file behind."""
    fmt = _format_for_save(path, format)
    arr = _as_faults(faults)
    writer = _WRITERS[fmt]
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        writer(tmp, arr)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _as_faults(faults: Any) -> np.ndarray:
    if isinstance(faults, np.ndarray) and faults.dtype == FAULT_DTYPE:
        arr = faults
    elif isinstance(faults, np.ndarray) and faults.dtype.names == FAULT_DTYPE.names:
        arr = faults.astype(FAULT_DTYPE, casting="same_kind")
    else:
        try:
            arr = np.array([tuple(f) for f in faults], dtype=FAULT_DTYPE)
        except (TypeError, ValueError, OverflowError) as e:
            raise TypeError(f"expected a FAULT_DTYPE array or Fault records: {e}") from e
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D array of faults, got shape {arr.shape}")
    return arr


def _rechunk(batches: Iterable[np.ndarray], chunk_size: int) -> Iterator[np.ndarray]:
    """Regroup arrays of any sizes into chunks of exactly ``chunk_size`` (the
    last one shorter), so every reader yields the same chunk boundaries."""
    pending: list[np.ndarray] = []
    held = 0
    for batch in batches:
        while len(batch):
            take = min(chunk_size - held, len(batch))
            pending.append(batch[:take])
            held += take
            batch = batch[take:]
            if held == chunk_size:
                yield pending[0].copy() if len(pending) == 1 else np.concatenate(pending)
                pending, held = [], 0
    if held:
        yield pending[0].copy() if len(pending) == 1 else np.concatenate(pending)


# --------------------------------------------------------------------------
# npy

def _read_npy(path: PathLike, *, skip_bad: bool, chunk_size: int,
              stats: LoadStats) -> Iterator[np.ndarray]:
    # Read the header ourselves first: np.load's own complaint about, say, an
    # object array ("can't be memory-mapped") would not name the dtype.
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy warns on Python 2 headers
                shape, _, dtype = read_header(f)
            data_start = f.tell()
    # numpy's header parser raises more than ValueError on a corrupted header
    # (SyntaxError, tokenize.TokenError from its Python 2 fallback, ...).
    except Exception as e:
        raise TraceError(f"not a readable .npy file: {_one_line(e)}", path=path) from e
    if dtype != FAULT_DTYPE and not np.can_cast(dtype, FAULT_DTYPE, "equiv"):
        raise TraceError(f"wrong dtype {dtype} (expected FAULT_DTYPE {FAULT_DTYPE})",
                         path=path)
    if len(shape) != 1:
        raise TraceError(f"expected a 1-D array, got shape {shape}", path=path)
    # Check the size before np.load: a huge shape would overflow its size
    # computation (OverflowError, RuntimeWarning) instead of failing cleanly.
    have = os.path.getsize(path) - data_start
    if shape[0] * dtype.itemsize > have:
        raise TraceError(f"truncated: the header says {shape[0]} records "
                         f"({shape[0] * dtype.itemsize} bytes), the file holds {have}",
                         path=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the Python 2 header warning, again
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise TraceError(f"not a readable .npy file: {_one_line(e)}", path=path) from e
    return _npy_chunks(arr, chunk_size)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _npy_chunks(arr: np.ndarray, chunk_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(arr), chunk_size):
        # A copy per chunk: the memmap pages are released as we go and the
        # caller owns an ordinary array.
        yield np.array(arr[start:start + chunk_size], dtype=FAULT_DTYPE)


def _write_npy(path: str, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


# --------------------------------------------------------------------------
# csv

def _csv_header_names(line: str) -> list[str] | None:
    names = [n.strip() for n in line.strip().split(",")]
    known = set(_CSV_COLUMNS)
    if (len(names) == len(set(names)) and set(names) <= known
            and known - _CSV_OPTIONAL <= set(names)):
        return names
    return None


def _parse_int(text: str) -> int:
    text = text.strip()
    if text[:2] in ("0x", "0X"):
        digits = text[2:]
        # int(_, 16) alone would take "-1", "+1", " 1" and "1_0".
        if not digits or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise ValueError(f"not a hex integer: {text!r}")
        return int(digits, 16)
    if not text.isdigit():
        raise ValueError(f"not an unsigned integer: {text!r}")
    return int(text, 10)


def _read_csv(path: PathLike, *, skip_bad: bool, chunk_size: int,
              stats: LoadStats) -> Iterator[np.ndarray]:
    # Find the header now so that a file without one fails at the call.
    # utf-8-sig: spreadsheet programs start the file with a byte-order mark.
    names: list[str] | None = None
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                names = _csv_header_names(line)
                if names is None:
                    raise TraceError(f"expected a CSV header ({_CSV_HEADER}), got "
                                     f"{_shorten(line)}", path=path, line=lineno)
                header_line = lineno
                break
    if names is None:
        raise TraceError("empty file (no CSV header)", path=path)
    return _rechunk(_csv_batches(path, names, header_line, skip_bad, stats), chunk_size)


def _csv_batches(path: PathLike, names: list[str], header_line: int, skip_bad: bool,
                 stats: LoadStats) -> Iterator[np.ndarray]:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        linenos: list[int] = []
        lines: list[str] = []
        for lineno, line in enumerate(f, 1):
            if lineno <= header_line or not line.strip() or line.lstrip().startswith("#"):
                continue
            linenos.append(lineno)
            lines.append(line)
            if len(lines) == _TEXT_BATCH:
                yield _csv_batch(path, names, linenos, lines, skip_bad, stats)
                linenos, lines = [], []
        if lines:
            yield _csv_batch(path, names, linenos, lines, skip_bad, stats)


def _csv_batch(path: PathLike, names: list[str], linenos: list[int], lines: list[str],
               skip_bad: bool, stats: LoadStats) -> np.ndarray:
    ncol = len(names)
    u32_cols = [i for i, name in enumerate(names) if name in _U32_COLUMNS]
    table = None
    try:
        # The C parser of loadtxt is ten times faster than int() per field.
        # Anything it refuses (hex, a bad field) or a u4 overflow sends the
        # batch to the slow path, which finds the first line to blame.
        table = np.loadtxt(lines, dtype=np.uint64, delimiter=",", ndmin=2, comments=None)
        if table.shape != (len(lines), ncol) or (table[:, u32_cols] > _U32_MAX).any():
            table = None
    except ValueError:
        pass
    if table is None:
        rows: list[list[int]] = []
        for lineno, line in zip(linenos, lines):
            try:
                rows.append(_csv_row(line, names, u32_cols))
            except ValueError as e:
                err = TraceError(f"bad CSV record ({e}): {_shorten(line)}",
                                 path=path, line=lineno)
                if not skip_bad:
                    raise err from None
                stats._skip(err)
        table = np.array(rows, dtype=np.uint64).reshape(len(rows), ncol)
    out = np.zeros(len(table), FAULT_DTYPE)
    for i, name in enumerate(names):
        if name.startswith("private"):
            out["private"][:, int(name[-1])] = table[:, i]
        else:
            out[name] = table[:, i]
    return out


def _csv_row(line: str, names: list[str], u32_cols: list[int]) -> list[int]:
    fields = line.split(",")
    if len(fields) != len(names):
        raise ValueError(f"{len(fields)} fields, expected {len(names)}")
    row = [_parse_int(x) for x in fields]
    for i, v in enumerate(row):
        if v > (_U32_MAX if i in u32_cols else _U64_MAX):
            raise ValueError(f"{names[i]} out of range for {'u4' if i in u32_cols else 'u8'}")
    return row


def _write_csv(path: str, arr: np.ndarray) -> None:
    fmt = ",".join(["{}"] * len(_CSV_COLUMNS)) + "\n"
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write(_CSV_HEADER + "\n")
        for start in range(0, len(arr), _TEXT_BATCH):
            c = arr[start:start + _TEXT_BATCH]
            cols = [c[n].tolist() for n in _SCALAR_FIELDS]
            cols += [c["private"][:, 0].tolist(), c["private"][:, 1].tolist()]
            f.writelines(map(fmt.format, *cols))


# --------------------------------------------------------------------------
# prq_report (ftrace text)

# The ftrace context: "task-pid [cpu] flags timestamp: " (the `trace` file),
# "task-pid [cpu] timestamp: " (trace-cmd report, or irq-info off), with an
# optional "(tgid)" column. The task name may hold spaces and dashes, hence
# the lazy match up to the first "-pid" followed by the CPU column. Only the
# fields we keep are captured: each capture costs on every line.
_PRQ_LINE = re.compile(
    r"\s*.*?-\d+\s+(?:\(\s*(?:\d+|-+)\)\s+)?\[\d+\]\s+"
    r"(?:\S+\s+)?(\d+)(?:\.(\d+))?:\s+(?:intel_iommu:)?prq_report:\s+"
    r"[^\s/]+/\S+\s+seq#\s+\d+:\s+"
    r"rid=0x([0-9a-fA-F]+)\s+addr=0x([0-9a-fA-F]+)\s+"
    r"([r-][w-][x-][p-][l-])\s+pasid=0x([0-9a-fA-F]+)\s+"
    r"index=0x([0-9a-fA-F]+)"
    r"(?:\s+private=0x([0-9a-fA-F]+)/0x([0-9a-fA-F]+))?\s*")

_PASID_FLAGS = int(Flag.PASID_VALID | Flag.NEEDS_PASID)
_NS_PER_S = 1_000_000_000
_MAX_PAGE = _U64_MAX >> 12


def _perm_codes() -> dict[str, tuple[int, int]]:
    """The 32 flag strings ("rw--l", ...) -> (perm, LAST_PAGE or 0)."""
    meaning = (("r", Perm.READ), ("w", Perm.WRITE), ("x", Perm.EXEC), ("p", Perm.PRIV),
               ("l", Flag.LAST_PAGE))
    codes = {}
    for bits in range(32):
        on = [bits >> i & 1 for i in range(5)]
        chars = "".join(c if set_ else "-" for (c, _), set_ in zip(meaning, on))
        perm = sum(int(value) for (_, value), set_ in zip(meaning[:4], on) if set_)
        codes[chars] = (perm, int(Flag.LAST_PAGE) if on[4] else 0)
    return codes


_PERM_CODES = _perm_codes()


def _prq_record(m: re.Match[str]) -> tuple[int, ...]:
    """One prq_report match as the nine integers of a CSV row, range-checked."""
    sec, frac, rid, page, rw, pasid, index, p0, p1 = m.groups()
    if frac is None:
        # Counter clocks (x86-tsc, counter) print a raw count, no decimals.
        time = int(sec)
    elif len(frac) > 9:
        raise ValueError(f"timestamp {sec}.{frac} finer than a nanosecond")
    else:
        # Exact: 1234.567890 is 1234567890000 ns, which a float cannot promise.
        time = int(sec) * _NS_PER_S + int(frac.ljust(9, "0"))
    rid, page, pasid, index = int(rid, 16), int(page, 16), int(pasid, 16), int(index, 16)
    if time > _U64_MAX or page > _MAX_PAGE or (rid | pasid | index) > _U32_MAX:
        _prq_range_error(time, rid, page, pasid, index)
    perm, flags = _PERM_CODES[rw]
    if pasid:
        flags |= _PASID_FLAGS
    if p0 is None:
        return (time, rid, pasid, index, flags, perm, page << 12, 0, 0)
    p0, p1 = int(p0, 16), int(p1, 16)
    if (p0 | p1) > _U64_MAX:
        raise ValueError("private data out of range for u8")
    return (time, rid, pasid, index, flags | Flag.PRIV_DATA.value, perm, page << 12, p0, p1)


def _prq_range_error(time: int, rid: int, page: int, pasid: int, index: int) -> None:
    if time > _U64_MAX:
        raise ValueError(f"timestamp {time} ns out of range for u8")
    if page > _MAX_PAGE:
        raise ValueError(f"addr=0x{page:x} out of range (page number over 52 bits)")
    for name, value in (("rid", rid), ("pasid", pasid), ("index", index)):
        if value > _U32_MAX:
            raise ValueError(f"{name}=0x{value:x} out of range for u4")


def _read_prq(path: PathLike, *, skip_bad: bool, chunk_size: int,
              stats: LoadStats) -> Iterator[np.ndarray]:
    with open(path, "rb") as f:
        if not f.read(_SNIFF_BYTES).strip():
            raise TraceError("empty file", path=path)
    return _rechunk(_prq_batches(path, skip_bad, stats), chunk_size)


def _prq_batches(path: PathLike, skip_bad: bool, stats: LoadStats) -> Iterator[np.ndarray]:
    match = _PRQ_LINE.fullmatch
    rows: list[tuple[int, ...]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if "prq_report:" not in line or line.lstrip()[:1] == "#":
                continue
            m = match(line)
            try:
                if m is None:
                    raise ValueError("bad prq_report line")
                rows.append(_prq_record(m))
            except ValueError as e:
                reason = str(e) if m is not None else "bad prq_report line"
                err = TraceError(f"{reason}: {_shorten(line)}", path=path, line=lineno)
                if not skip_bad:
                    raise err from None
                stats._skip(err)
                continue
            if len(rows) == _TEXT_BATCH:
                yield _rows_to_faults(rows)
                rows = []
    if rows:
        yield _rows_to_faults(rows)


def _rows_to_faults(rows: list[tuple[int, ...]]) -> np.ndarray:
    table = np.array(rows, dtype=np.uint64)
    out = np.empty(len(rows), FAULT_DTYPE)
    for i, name in enumerate(_SCALAR_FIELDS):
        out[name] = table[:, i]
    out["private"] = table[:, 7:9]
    return out


_FTRACE_HEADER = """\
# tracer: nop
#
# entries-in-buffer/entries-written: {n}/{n}   #P:1
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"""
# The `trace` file layout ("%16s-%-7d [%03d] %s %5lu.%06lu: ") with a fixed
# task iopf-0 on CPU 0, and the kernel's decode_prq_descriptor body.
_PRQ_FORMAT = ("            iopf-0       [000] ..... %5d.%06d: prq_report: dmar0/%s "
               "seq# %d: rid=0x%x addr=0x%x %s pasid=0x%x index=0x%x")
_PERM_CHARS = {code: chars for chars, code in _PERM_CODES.items()}


def _pci_name(rid: int) -> str:
    # Bits above the 16-bit requester id go into the PCI segment, so a dev id
    # that is not a real rid still round-trips.
    return f"{rid >> 16:04x}:{(rid >> 8) & 0xFF:02x}:{(rid >> 3) & 0x1F:02x}.{rid & 7:x}"


def _write_prq(path: str, arr: np.ndarray) -> None:
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write(_FTRACE_HEADER.format(n=len(arr)))
        for start in range(0, len(arr), _TEXT_BATCH):
            c = arr[start:start + _TEXT_BATCH]
            t = c["time"]
            # Round to the microsecond as ftrace's ns2usecs does, without
            # the overflow of t + 500 near 2**64, and so that it loads back.
            usec = np.minimum(t // 1000 + (t % 1000 >= 500), _U64_MAX // 1000)
            flags = c["flags"]
            perm_chars = [_PERM_CHARS[(p & 0xF, l)] for p, l in zip(
                c["perm"].tolist(), (flags & np.uint32(Flag.LAST_PAGE)).tolist())]
            names = {d: _pci_name(d) for d in np.unique(c["dev"]).tolist()}
            dev = c["dev"].tolist()
            pasid = np.where(flags & np.uint32(Flag.PASID_VALID), c["pasid"], 0)
            lines = [_PRQ_FORMAT % row + "\n" for row in zip(
                (usec // 1_000_000).tolist(), (usec % 1_000_000).tolist(),
                map(names.__getitem__, dev), range(start, start + len(c)), dev,
                (c["addr"] >> np.uint64(12)).tolist(), perm_chars, pasid.tolist(),
                c["grpid"].tolist())]
            for i in np.flatnonzero(flags & np.uint32(Flag.PRIV_DATA)).tolist():
                # The kernel ends the private text with its own newline, so a
                # blank line follows in the file.
                p0, p1 = c["private"][i].tolist()
                lines[i] = f"{lines[i][:-1]} private=0x{p0:x}/0x{p1:x}\n\n"
            f.writelines(lines)


# --------------------------------------------------------------------------
# iommufd

def _read_iommufd(path: PathLike, *, skip_bad: bool, chunk_size: int,
                  stats: LoadStats) -> Iterator[np.ndarray]:
    size = os.path.getsize(path)
    whole, tail = divmod(size, IOMMUFD_DTYPE.itemsize)
    if tail:
        err = TraceError(f"truncated record ({tail} of {IOMMUFD_DTYPE.itemsize} bytes)",
                         path=path, record=whole)
        if not skip_bad:
            raise err
        stats._skip(err)
    return _iommufd_chunks(path, whole, skip_bad, chunk_size, stats)


def _iommufd_chunks(path: PathLike, n: int, skip_bad: bool, chunk_size: int,
                    stats: LoadStats) -> Iterator[np.ndarray]:
    with open(path, "rb") as f:
        for start in range(0, n, chunk_size):
            raw = np.fromfile(f, dtype=IOMMUFD_DTYPE, count=min(chunk_size, n - start))
            index = np.arange(start, start + len(raw), dtype=np.uint64)
            bad = (raw["flags"] & ~np.uint32(_IOMMUFD_FLAGS)) != 0
            if bad.any():
                for i in np.flatnonzero(bad):
                    err = TraceError(f"unknown flags 0x{int(raw['flags'][i]):x} "
                                     f"(iommufd defines bits 0-2)", path=path,
                                     record=start + int(i))
                    if not skip_bad:
                        raise err
                    stats._skip(err)
                raw, index = raw[~bad], index[~bad]
            out = np.zeros(len(raw), FAULT_DTYPE)
            out["time"] = index
            out["dev"] = raw["dev_id"]
            for name in ("pasid", "grpid", "flags", "perm", "addr"):
                out[name] = raw[name]
            yield out


def _write_iommufd(path: str, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        for start in range(0, len(arr), 1 << 20):
            c = arr[start:start + (1 << 20)]
            raw = np.zeros(len(c), IOMMUFD_DTYPE)
            raw["flags"] = c["flags"] & np.uint32(_IOMMUFD_FLAGS)
            raw["dev_id"] = c["dev"]
            for name in ("pasid", "grpid", "perm", "addr"):
                raw[name] = c[name]
            raw.tofile(f)


# --------------------------------------------------------------------------
# parquet

def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:
        raise OptionalDependencyError(
            f"the parquet format needs pyarrow: {_PARQUET_HINT}") from e
    return pyarrow, pyarrow.parquet


def _read_parquet(path: PathLike, *, skip_bad: bool, chunk_size: int,
                  stats: LoadStats) -> Iterator[np.ndarray]:
    _, pq = _pyarrow()
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for bad files
        raise TraceError(f"not a readable parquet file: {e}", path=path) from e
    names = set(pf.schema_arrow.names)
    missing = [c for c in _CSV_COLUMNS if c not in names and c not in _CSV_OPTIONAL]
    if missing:
        raise TraceError(f"missing columns {', '.join(missing)}", path=path)
    columns = [c for c in _CSV_COLUMNS if c in names]
    return _parquet_chunks(path, pf, columns, skip_bad, chunk_size, stats)


def _parquet_chunks(path: PathLike, pf: Any, columns: list[str], skip_bad: bool,
                    chunk_size: int, stats: LoadStats) -> Iterator[np.ndarray]:
    start = 0
    for batch in pf.iter_batches(batch_size=chunk_size, columns=columns):
        n = batch.num_rows
        bad = np.zeros(n, dtype=bool)
        values = {}
        for name in columns:
            col = batch.column(name)
            if col.null_count:
                bad |= np.asarray(col.is_null())
                col = col.fill_null(0)
            v = col.to_numpy(zero_copy_only=False)
            if v.dtype.kind not in "iu":
                raise TraceError(f"column {name} has type {col.type}, expected integers",
                                 path=path)
            limit = _U32_MAX if name in _U32_COLUMNS else _U64_MAX
            if v.dtype.kind == "i":
                bad |= v < 0
            if np.iinfo(v.dtype).max > limit:
                bad |= v > limit
            values[name] = v
        if bad.any():
            for i in np.flatnonzero(bad):
                err = TraceError("null or out-of-range value", path=path,
                                 record=start + int(i))
                if not skip_bad:
                    raise err
                stats._skip(err)
        keep = ~bad
        out = np.zeros(int(keep.sum()), FAULT_DTYPE)
        for name, v in values.items():
            v = v[keep].astype(np.uint64)
            if name.startswith("private"):
                out["private"][:, int(name[-1])] = v
            else:
                out[name] = v
        start += n
        yield out


def _write_parquet(path: str, arr: np.ndarray) -> None:
    pa, pq = _pyarrow()
    schema = pa.schema([(n, pa.uint32() if n in _U32_COLUMNS else pa.uint64())
                        for n in _CSV_COLUMNS])
    with pq.ParquetWriter(path, schema) as w:
        for start in range(0, len(arr), 1 << 20):
            c = arr[start:start + (1 << 20)]
            cols = [c[n] for n in _SCALAR_FIELDS]
            cols += [c["private"][:, 0], c["private"][:, 1]]
            w.write_table(pa.Table.from_arrays(
                [pa.array(np.ascontiguousarray(x)) for x in cols], schema=schema))


_Reader = Callable[..., Iterator[np.ndarray]]
_READERS: dict[str, _Reader] = {
    "npy": _read_npy, "csv": _read_csv, "prq_report": _read_prq,
    "iommufd": _read_iommufd, "parquet": _read_parquet,
}
_WRITERS: dict[str, Callable[[str, np.ndarray], None]] = {
    "npy": _write_npy, "csv": _write_csv, "prq_report": _write_prq,
    "iommufd": _write_iommufd, "parquet": _write_parquet,
}


def _shorten(line: str, limit: int = 120) -> str:
    line = line.strip()
    return line if len(line) <= limit else line[:limit] + "..."


# --------------------------------------------------------------------------
# synthetic workloads

def synthetic(n_faults: int, *, seed: int = 0, devices: int = 4, pasids_per_device: int = 4,
              group_size: tuple[int, int] = (1, 8), interleave: int = 16,
              outstanding: int = 512, lost_lpig: float = 0.0, stop_markers: float = 0.0,
              no_pasid: float = 0.0, needs_pasid: bool = True, start_time: int = 0,
              mean_gap_ns: float = 100) -> np.ndarray:
    """A seeded page-request workload: exactly ``n_faults`` ``FAULT_DTYPE`` records.

    Each device sends its groups in blocks of ``interleave`` groups open at
    once; the requests of a block are interleaved, each group's LPIG after
    all its partials, and the next block starts when every group of the
    block has sent its LPIG. Group sizes are uniform in ``group_size``
    (inclusive), then cut so a block never needs more than ``outstanding``
    requests (the device's PRI credit: it forces the LPIG early, as a real
    device does near its allocation; when the credit cannot hold
    ``interleave`` groups of the smallest size, fewer are open at once).
    Group indices count up per device from a random start and wrap at 512
    (9 bits), so the open groups of a device always have distinct indices.
    The devices' streams are interleaved at random.

    ``lost_lpig``: fraction of groups whose LPIG never comes (their requests
    are all partials). ``stop_markers``: probability that a group is followed
    by a stop marker (LAST_PAGE, perm 0, same PASID and index; only groups
    with a PASID, since a stop marker ends the use of one). ``no_pasid``:
    fraction of groups without PASID_VALID (pasid 0). ``needs_pasid``: set
    NEEDS_PASID on requests with a PASID. Devices are ``0..devices-1``,
    PASIDs ``1..pasids_per_device``; time starts at ``start_time`` and grows
    by exponential gaps of mean ``mean_gap_ns`` (rounded down to whole ns).

    >>> f = synthetic(1000, seed=7)
    >>> len(f), bool((f["time"][1:] >= f["time"][:-1]).all()), int(f["grpid"].max()) < 512
    (1000, True, True)
    >>> bool((synthetic(1000, seed=7) == f).all())
    True
    """
    lo, hi = (int(x) for x in group_size)
    if n_faults < 0:
        raise ValueError(f"n_faults must be >= 0, not {n_faults}")
    if devices < 1 or pasids_per_device < 1:
        raise ValueError("devices and pasids_per_device must be at least 1")
    if not 1 <= lo <= hi:
        raise ValueError(f"group_size must be (lo, hi) with 1 <= lo <= hi, not {group_size}")
    if not 1 <= interleave <= 512:
        raise ValueError(f"interleave must be in 1..512 (9-bit group index), not {interleave}")
    if outstanding < 1:
        raise ValueError(f"outstanding must be at least 1, not {outstanding}")
    for name, p in (("lost_lpig", lost_lpig), ("stop_markers", stop_markers),
                    ("no_pasid", no_pasid)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], not {p}")
    if mean_gap_ns < 0 or start_time < 0:
        raise ValueError("mean_gap_ns and start_time must be >= 0")
    if n_faults == 0:
        return np.empty(0, FAULT_DTYPE)

    # Fewer groups open at once when the credit cannot give each its minimum size.
    k = max(1, min(interleave, outstanding // lo))
    mean_size = min((lo + hi) / 2, outstanding / k)
    n_groups = int(n_faults / (mean_size + stop_markers) * 1.1) + 16
    while True:
        rng = np.random.default_rng(seed)
        groups = _synthetic_groups(rng, n_groups, n_faults, devices, pasids_per_device,
                                   lo, hi, k, outstanding, lost_lpig, stop_markers, no_pasid)
        if groups is not None:
            break
        n_groups *= 2  # rare: the estimate fell short; redraw, still deterministic
    return _synthetic_records(rng, groups, n_faults, devices, hi, needs_pasid, start_time,
                              mean_gap_ns)


@dataclass
class _Groups:
    dev: np.ndarray        # device of each group (group order)
    grpid: np.ndarray      # 9-bit index
    block: np.ndarray      # global block id, ordered by (device, block)
    size: np.ndarray       # requests, stop marker excluded
    stop: np.ndarray       # bool: a stop marker follows
    pasid: np.ndarray      # 0: no PASID
    lost: np.ndarray       # bool: the LPIG never comes


def _synthetic_groups(rng: np.random.Generator, g: int, n: int, devices: int, pasids: int,
                      lo: int, hi: int, k: int, credit: int, p_lost: float, p_stop: float,
                      p_no_pasid: float) -> _Groups | None:
    # Every draw is made whatever the probabilities, so that for one seed
    # changing, say, lost_lpig changes only the LPIG flags.
    dev = rng.integers(0, devices, g).astype(np.int64)
    size = rng.integers(lo, hi + 1, g).astype(np.int64)
    lost = rng.random(g) < p_lost
    pasid = np.where(rng.random(g) >= p_no_pasid, rng.integers(1, pasids + 1, g), 0)
    # A stop marker ends a PASID's use: a group without PASID has none.
    stop = (rng.random(g) < p_stop) & (pasid != 0)
    first_index = rng.integers(0, 512, devices)

    # Position of each group in its device's sequence: the order that sorts
    # by device (stable) lists each device's groups in sequence.
    by_dev = np.argsort(dev, kind="stable")
    per_dev = np.bincount(dev, minlength=devices)
    dev_start = np.concatenate(([0], np.cumsum(per_dev)[:-1]))
    pos = np.empty(g, np.int64)
    pos[by_dev] = np.arange(g) - dev_start[dev[by_dev]]
    blocks_per_dev = -(-per_dev // k)
    block_base = np.concatenate(([0], np.cumsum(blocks_per_dev)[:-1]))
    block = block_base[dev] + pos // k

    if credit < k * hi:
        size = _cap_to_credit(size, block, pos % k, by_dev, k, credit)

    # Keep the shortest prefix of groups (in generation order) holding n
    # requests and cut its last group to fit exactly. Every cut leaves the
    # remaining groups' blocks and sizes as they were: the credit cap above
    # reserves room for a full block, so it does not depend on later groups.
    emitted = size + stop
    total = np.cumsum(emitted)
    if total[-1] < n:
        return None
    m = int(np.searchsorted(total, n))
    room = n - (int(total[m - 1]) if m else 0)
    if stop[m] and room < 2:
        stop[m] = False
    size[m] = room - int(stop[m])
    sl = slice(0, m + 1)
    grpid = (first_index[dev[sl]] + pos[sl]) % 512
    return _Groups(dev[sl], grpid, block[sl], size[sl], stop[sl], pasid[sl], lost[sl])


def _cap_to_credit(size: np.ndarray, block: np.ndarray, j: np.ndarray, by_dev: np.ndarray,
                   k: int, credit: int) -> np.ndarray:
    """Cut group sizes so each block needs at most ``credit`` requests.

    In block order, group ``j`` of a block may end the block's running total
    at no more than ``L_j = credit - (k - 1 - j)`` (room for one request in
    each later group). The capped running total is ``x_j = min(x_{j-1} +
    s_j, L_j)``, whose closed form ``C_j + min(0, min_{i<=j} (L_i - C_i))``
    (``C`` the uncapped running total) is a segmented running minimum: one
    ``minimum.accumulate`` after shifting each block below the previous ones.
    """
    s = size[by_dev]          # blocks are contiguous in device order
    b = block[by_dev]
    jj = j[by_dev]
    c = np.cumsum(s)
    block_first = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    c_before = np.repeat(c[block_first] - s[block_first], np.diff(np.r_[block_first, len(s)]))
    c = c - c_before          # within-block running total
    limit = credit - (k - 1 - jj)
    spread = credit + k * int(s.max()) + 2   # > range of limit - c
    shift = b * spread
    run_min = np.minimum.accumulate(limit - c - shift) + shift
    x = c + np.minimum(0, run_min)
    capped = np.diff(np.r_[0, x])
    capped[jj == 0] = x[jj == 0]
    out = np.empty_like(size)
    out[by_dev] = capped
    return out


def _synthetic_records(rng: np.random.Generator, grp: _Groups, n: int, devices: int,
                       hi: int, needs_pasid: bool, start_time: int,
                       mean_gap: float) -> np.ndarray:
    # Work in generation order (group after group, where a per-group value
    # spreads with np.repeat) until the final order is known, then gather
    # each field once. Gathering narrow fields beats building the records
    # and permuting them: half the time and 0.8 GB less at 10M faults.
    g = len(grp.size)
    base_page = rng.integers(0x100, 1 << 35, g)  # anywhere in a 47-bit user space
    t0 = rng.integers(0, 1 << 31, g)

    emitted = grp.size + grp.stop
    starts = np.concatenate(([0], np.cumsum(emitted)[:-1]))
    offset = np.arange(n) - np.repeat(starts, emitted)
    size_r = np.repeat(grp.size, emitted)
    is_stop = offset == size_r
    is_lpig = (offset == size_r - 1) & np.repeat(~grp.lost, emitted)

    # When each request leaves the device, within its block: a random start
    # per group then strictly increasing steps, so the LPIG (largest offset)
    # is the group's last request whatever the interleaving. A stop marker
    # takes its LPIG's key and sorts right after it (low bit).
    key = np.cumsum(1 + rng.integers(0, (1 << 31) // hi, n))
    key += np.repeat(t0 - key[starts], emitted)
    stop_at = np.flatnonzero(is_stop)
    key[stop_at] = key[stop_at - 1]
    order_key = (np.repeat(grp.block, emitted) << 34) | (key << 1) | is_stop
    stream = np.argsort(order_key)    # device streams, device after device

    # Merge the device streams at random: shuffle the device labels of the n
    # slots; the i-th slot of device d takes d's i-th request.
    rec_dev = np.repeat(grp.dev, emitted)
    label_dtype = np.uint16 if devices <= 1 << 16 else np.int64
    slots = np.argsort(rng.permutation(rec_dev.astype(label_dtype)), kind="stable")
    order = np.empty(n, np.int64)
    order[slots] = stream
    del stream, slots, order_key, key, rec_dev

    out = np.zeros(n, FAULT_DTYPE)
    rg = np.repeat(np.arange(g, dtype=np.int32 if g < 2**31 else np.int64), emitted)[order]
    out["dev"] = grp.dev[rg]
    out["pasid"] = grp.pasid[rg]
    out["grpid"] = grp.grpid[rg]
    stop_o = is_stop[order]
    pasid_flags = int(Flag.PASID_VALID | (Flag.NEEDS_PASID if needs_pasid else 0))
    out["flags"] = (np.where(grp.pasid != 0, pasid_flags, 0)[rg]
                    | np.where(is_lpig[order] | stop_o, int(Flag.LAST_PAGE), 0))
    perm = np.array([1, 1, 1, 1, 1, 2, 2, 3, 3, 3], np.uint32)[rng.integers(0, 10, n)]
    perm[stop_o] = 0
    out["perm"] = perm
    out["addr"] = np.where(stop_o, 0, (base_page[rg] + offset[order]) << 12)

    gaps = np.floor(rng.exponential(mean_gap, n)).astype(np.uint64) if mean_gap else \
        np.zeros(n, np.uint64)
    gaps[0] = 0
    out["time"] = np.uint64(start_time) + np.cumsum(gaps, dtype=np.uint64)
    return out


from ._partition import partition  # noqa: E402  (lives in its own module)

__all__ += ["partition"]
