"""Fault traces: load, save, stream and generate ``FAULT_DTYPE`` arrays.

Formats (``format=`` names; one module each):

``"npy"``
    A 1-D ``FAULT_DTYPE`` array saved by ``numpy.save``. Lossless.
``"csv"``
    A header row of the field names (``private`` as ``private0,private1``),
    then one record a line, integers in decimal (``0x`` hex is accepted on
    load). Lossless. On load the columns may come in any order, and ``time``,
    ``private0`` and ``private1`` may be left out (they read as 0).
``"prq_report"``
    Text of the Intel ``intel_iommu:prq_report`` tracepoint: the ftrace
    ``trace``/``trace_pipe`` layouts (with or without the irq-info and TGID
    columns), ``trace-cmd report``, ``perf script``, or bare event bodies.
    Lines of other events, ``#`` comments and blank lines are skipped. A
    device is ``segment << 16 | rid``; the IOMMU unit and ``seq#`` of each
    record are kept in its metadata (``meta=True``). What the format cannot
    hold: the low 12 bits of ``addr`` (it prints a page number), time below
    a microsecond (``save`` rounds to the nearest microsecond as ftrace
    does), ``perm`` bits above PRIV, ``flags`` other than LAST_PAGE,
    PRIV_DATA and PASID_VALID+NEEDS_PASID (which both follow from
    ``pasid != 0``: pasid 0 is the kernel's "no PASID"), and ``private``
    unless PRIV_DATA is set.
``"iommufd"``
    ``struct iommu_hwpt_pgfault`` records (40 bytes, little endian), as read
    from an iommufd fault object. ``save`` writes ``__reserved``, ``length``
    and ``cookie`` as 0 and flags bits 0-2 (PASID_VALID, LAST_PAGE and the
    kernel's NEEDS_PASID, which the kernel leaks through the raw ``flags``).
    Lost: ``time`` (``load`` numbers the records 0, 1, 2, ... instead),
    ``private`` and PRIV_DATA. ``load`` ignores ``__reserved`` (kernels
    before v6.14 leaked stack bytes there), ``length`` and ``cookie``.
``"parquet"``
    One column per field (``private0``, ``private1``), unsigned integers.
    Lossless. Needs pyarrow (``pip install "iopf[parquet]"``).

Inputs: a path, ``-`` for standard input, a pipe, FIFO or character
device (read once, as a stream), optionally gzip-, bz2- or xz-compressed
(told by the content), or trace-cmd's ``trace.dat`` (converted by
``trace-cmd report`` when trace-cmd is on the PATH). The format comes from
``format=``, else the extension (``.npy``, ``.csv``, ``.trace``,
``.parquet``/``.pq``, ``.bin``/``.iommufd``, under a compression
extension), else the first block of the content (``.txt`` is sniffed: it
may hold CSV or ftrace text). ``save`` maps ``.txt`` to ``"prq_report"``.

Empty input: zero bytes (or, for text, only white space) is an error in
every format. A trace of no records is accepted only when the file says so
(an ``.npy`` of shape ``(0,)``, a CSV header, a Parquet schema): a
``prq_report`` or iommufd input without a single record, or any input
whose every record was malformed, is an error.

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
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, overload

import numpy as np

from ..types import FAULT_DTYPE
from . import csv as _csv
from . import iommufd as _iommufd
from . import npy as _npy
from . import parquet as _parquet
from . import prq_report as _prq
# The I/O helpers stay in their private module (the command line imports
# same_file from there): they are not part of iopf.trace.
from . import _io
from ._common import CSV_HEADER as _CSV_HEADER  # noqa: F401  (kept: the tests build CSVs with it)
from ._common import (FORMATS, META_DTYPE, LoadStats, OptionalDependencyError, PathLike,
                      TraceError)
from .arrow import to_arrow, to_pandas
from .iommufd import IOMMUFD_DTYPE
from .responses import PAIR_DTYPE, load_responses, pair
from .workload import synthetic

__all__ = [
    "FORMATS", "IOMMUFD_DTYPE", "META_DTYPE", "PAIR_DTYPE", "TraceError",
    "OptionalDependencyError", "LoadStats", "detect_format", "load", "iter_chunks", "save",
    "synthetic", "load_responses", "pair", "to_arrow", "to_pandas",
]

_EXTENSIONS = {
    ".npy": "npy", ".csv": "csv", ".trace": "prq_report", ".parquet": "parquet",
    ".pq": "parquet", ".bin": "iommufd", ".iommufd": "iommufd",
}

_Reader = Callable[..., Iterator[tuple[np.ndarray, Any]]]
_READERS: dict[str, _Reader] = {
    "npy": _npy.read, "csv": _csv.read, "prq_report": _prq.read,
    "iommufd": _iommufd.read, "parquet": _parquet.read,
}
_WRITERS: dict[str, Callable[..., None]] = {
    "npy": _npy.write, "csv": _csv.write, "prq_report": _prq.write,
    "iommufd": _iommufd.write, "parquet": _parquet.write,
}
# Formats without a header: zero records cannot be told from a failed capture.
_HEADERLESS = frozenset({"prq_report", "iommufd"})


# --------------------------------------------------------------------------
# format detection

def detect_format(path: PathLike, format: str | None = None) -> str:
    """The format ``load`` would use for ``path``: ``format``, else the
    extension, else the content. (For ``-`` or a pipe this reads its first
    block: use ``load`` or ``iter_chunks`` directly on streams.)"""
    if format is not None:
        return _check_format(format, path)
    ext = _extension(os.fspath(path))
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    with _io.open_input(path) as src:
        return _format_of(src, None)


def _check_format(format: str, path: PathLike) -> str:
    if format not in FORMATS:
        raise TraceError(f"unknown format {format!r} (expected one of "
                         f"{', '.join(FORMATS)})", path=path)
    return format


def _extension(name: str) -> str:
    root, ext = os.path.splitext(name)
    if ext.lower() in _io.COMPRESSED_EXTENSIONS:
        ext = os.path.splitext(root)[1]
    return ext.lower()


def _format_of(src: _io.Input, format: str | None) -> str:
    if format is not None:
        return _check_format(format, src.name)
    if src.ext in _EXTENSIONS:
        return _EXTENSIONS[src.ext]
    return _sniff(src)


def _format_for_save(path: PathLike, format: str | None) -> str:
    if format is not None:
        return _check_format(format, path)
    ext = _extension(os.fspath(path))
    if ext == ".txt":
        return "prq_report"
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    raise TraceError(f"cannot tell the format from the extension {ext!r}; pass "
                     f"format= (one of {', '.join(FORMATS)})", path=path)


_FTRACE_CONTEXT = re.compile(
    r"^\s*.*?-\d+\s+(?:\(\s*(?:\d+|-+)\)\s+)?\[\d+\]\s+(?:\S+\s+)?\d+(?:\.\d+)?:\s+\S+:",
    re.MULTILINE)


def _sniff(src: _io.Input) -> str:
    head = src.head
    if not head.strip():
        raise TraceError("empty file", path=src.name)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PAR1"):
        return "parquet"
    text = _as_text(head)
    if text is not None:
        if "prq_report:" in text:
            return "prq_report"
        lines = [ln for ln in text.lstrip("\ufeff").splitlines() if ln.strip()]
        if not lines:
            raise TraceError("empty file", path=src.name)
        data = [ln for ln in lines if not ln.lstrip().startswith("#")]
        if data and _csv.header_names(data[0]) is not None:
            return "csv"
        if lines[0].startswith("# tracer:") or _FTRACE_CONTEXT.search(text):
            return "prq_report"
        raise TraceError("cannot determine the format of this text file (no "
                         "prq_report lines, no CSV header); pass format=", path=src.name)
    size = src.size
    if size is None:
        raise TraceError("cannot determine the format of binary data read as a stream; "
                         "pass format=", path=src.name)
    if size % IOMMUFD_DTYPE.itemsize == 0:
        return "iommufd"
    raise TraceError(f"cannot determine the format of this binary file ({size} bytes "
                     f"is not a multiple of the {IOMMUFD_DTYPE.itemsize}-byte iommufd "
                     f"record); pass format=", path=src.name)


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

@overload
def load(path: PathLike, *, format: str | None = ..., skip_bad: bool = ...,
         chunk_size: int = ..., stats: LoadStats | None = ...,
         meta: Literal[False] = ...) -> np.ndarray: ...
@overload
def load(path: PathLike, *, format: str | None = ..., skip_bad: bool = ...,
         chunk_size: int = ..., stats: LoadStats | None = ...,
         meta: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...
def load(path: PathLike, *, format: str | None = None, skip_bad: bool = False,
         chunk_size: int = 1 << 20, stats: LoadStats | None = None,
         meta: bool = False) -> Any:
    """Read a whole trace into one ``FAULT_DTYPE`` array.

    ``skip_bad=True`` drops malformed lines or records instead of raising
    ``TraceError``; pass ``stats=LoadStats()`` to learn how many, which IOMMU
    units the trace names and where ``time`` came from. ``meta=True``
    returns ``(faults, meta)``, ``meta`` a ``META_DTYPE`` array (IOMMU unit
    index into ``stats.units`` and ``seq#`` of each record). The result is
    the concatenation of ``iter_chunks`` with the same arguments.
    """
    # The readers' own batches, joined once (no regrouping into chunks first).
    pairs = list(_batches(path, format, skip_bad, chunk_size, stats, meta))
    faults = _concat([f for f, _ in pairs], FAULT_DTYPE)
    if not meta:
        return faults
    return faults, _concat([m for _, m in pairs], META_DTYPE)


def _concat(arrays: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    if not arrays:
        return np.empty(0, dtype)
    if len(arrays) == 1:
        return arrays[0]
    # As bytes: numpy copies packed records field by field, bytes with memcpy.
    raw = [np.ascontiguousarray(a).view(np.uint8) for a in arrays]
    return np.concatenate(raw).view(dtype)


@overload
def iter_chunks(path: PathLike, *, format: str | None = ..., skip_bad: bool = ...,
                chunk_size: int = ..., stats: LoadStats | None = ...,
                meta: Literal[False] = ...) -> Iterator[np.ndarray]: ...
@overload
def iter_chunks(path: PathLike, *, format: str | None = ..., skip_bad: bool = ...,
                chunk_size: int = ..., stats: LoadStats | None = ...,
                meta: Literal[True]) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...
def iter_chunks(path: PathLike, *, format: str | None = None, skip_bad: bool = False,
                chunk_size: int = 1 << 20, stats: LoadStats | None = None,
                meta: bool = False) -> Any:
    """Stream a trace as ``FAULT_DTYPE`` arrays of at most ``chunk_size`` records
    (with ``meta=True``, ``(faults, meta)`` pairs).

    Memory stays bounded by the chunk size whatever the input size. The
    input is opened, its format found and file-level problems (empty input,
    wrong ``.npy`` dtype, a missing CSV header) are checked at the call,
    before the first chunk; the input is closed when the iterator is
    exhausted or closed.
    """
    batches = _batches(path, format, skip_bad, chunk_size, stats, meta)
    return (pair_ if meta else pair_[0] for pair_ in _rechunk(batches, chunk_size, meta))


def _batches(path: PathLike, format: str | None, skip_bad: bool, chunk_size: int,
             stats: LoadStats | None, meta: bool) -> Iterator[tuple[np.ndarray, Any]]:
    """Open the input and check it now; then its records in the reader's
    batches, with metadata when ``meta``, counted in the stats."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
    st = stats if stats is not None else LoadStats()
    src = _io.open_input(path)
    try:
        fmt = _format_of(src, format)
        st.format = fmt
        st.compression = src.compression
        if not src.head or (fmt in ("csv", "prq_report") and not src.head.strip()):
            raise TraceError("empty file", path=src.name)
        batches = _READERS[fmt](src, skip_bad=skip_bad, chunk_size=chunk_size, stats=st)
    except BaseException:
        src.close()
        raise
    return _stream(src, fmt, batches, st, meta)


def _stream(src: _io.Input, fmt: str, batches: Iterator[tuple[np.ndarray, Any]],
            stats: LoadStats, meta: bool) -> Iterator[tuple[np.ndarray, Any]]:
    done = 0
    try:
        for faults, m in batches:
            if not len(faults):
                continue
            if meta and m is None:   # no units in this format: unit 0, position
                m = np.zeros(len(faults), META_DTYPE)
                m["seq"] = np.arange(done, done + len(faults), dtype=np.uint64)
            done += len(faults)
            stats.records += len(faults)
            yield faults, (m if meta else None)
    finally:
        src.close()
    if src.proc is not None and src.proc.returncode:
        raise TraceError(f"`trace-cmd report` failed (exit status {src.proc.returncode})",
                         path=src.name)
    if stats.records == 0 and (fmt in _HEADERLESS or stats.skipped):
        what = "prq_report line" if fmt == "prq_report" else "record"
        if stats.skipped:
            raise TraceError(f"no valid {what}: all {stats.skipped} were malformed "
                             f"(first: {stats.errors[0]})", path=src.name)
        raise TraceError(f"no {what} in the input", path=src.name)


def _rechunk(batches: Iterable[tuple[np.ndarray, Any]], chunk_size: int,
             want_meta: bool) -> Iterator[tuple[np.ndarray, Any]]:
    """Chunks of exactly ``chunk_size`` (the last one shorter), so every
    reader yields the same chunk boundaries, with their metadata when
    wanted (formats without units give unit 0 and the record's position)."""
    pending: list[tuple[np.ndarray, Any]] = []
    held = 0
    for faults, m in batches:
        while len(faults):
            take = min(chunk_size - held, len(faults))
            pending.append((faults[:take], None if m is None else m[:take]))
            held += take
            faults = faults[take:]
            m = None if m is None else m[take:]
            if held == chunk_size:
                yield _join(pending, want_meta)
                pending, held = [], 0
    if held:
        yield _join(pending, want_meta)


def _join(pending: list[tuple[np.ndarray, Any]], want_meta: bool) -> tuple[np.ndarray, Any]:
    if len(pending) == 1:
        f, m = pending[0]
        return f.copy(), None if m is None else m.copy()
    return (_concat([f for f, _ in pending], FAULT_DTYPE),
            _concat([m for _, m in pending], META_DTYPE) if want_meta else None)


def save(path: PathLike, faults: Any, *, format: str | None = None,
         meta: np.ndarray | None = None, units: list[str] | None = None) -> None:
    """Write ``faults`` (a ``FAULT_DTYPE`` array, or records convertible to
    one) to ``path``.

    The file is replaced atomically, keeping its permission bits: the data
    goes to a fresh temporary file in the same folder, renamed over
    ``path`` once complete, so a failed save leaves no partial file behind.
    ``meta`` and ``units`` (from ``load(..., meta=True)`` and
    ``LoadStats.units``) give ``prq_report`` its unit names and ``seq#``.
    """
    fmt = _format_for_save(path, format)
    arr = _as_faults(faults)
    if meta is not None and (meta.dtype != META_DTYPE or len(meta) != len(arr)):
        raise ValueError("meta must be a META_DTYPE array as long as faults")
    if units is not None and meta is not None and len(meta) and \
            int(meta["unit"].max()) >= len(units):
        raise ValueError("meta names a unit beyond units")
    writer = _WRITERS[fmt]
    _io.write_atomically(path, lambda f: writer(f, arr, meta, units))


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


from .._partition import partition  # noqa: E402  (lives in its own module)

__all__ += ["partition"]
