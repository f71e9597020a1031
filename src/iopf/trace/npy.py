"""``.npy``: a 1-D ``FAULT_DTYPE`` array saved by ``numpy.save``. Lossless."""
from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from ..types import FAULT_DTYPE
from ._common import LoadStats, TraceError, one_line
from ._io import Input, read_head


def read(src: Input, *, skip_bad: bool, chunk_size: int,
         stats: LoadStats) -> Iterator[tuple[np.ndarray, None]]:
    # Read the header ourselves: np.load's own complaint about, say, an object
    # array ("can't be memory-mapped") would not name the dtype, and a stream
    # cannot be memory-mapped at all.
    f = src.stream
    try:
        hdr = io.BytesIO(_header_bytes(f))
        version = np.lib.format.read_magic(hdr)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns on Python 2 headers
            shape, fortran, dtype = read_header(hdr)
    # numpy's header parser raises more than ValueError on a corrupted header
    # (SyntaxError, tokenize.TokenError from its Python 2 fallback, ...).
    except Exception as e:
        if isinstance(e, TraceError):
            raise
        raise TraceError(f"not a readable .npy file: {one_line(e)}", path=src.name) from e
    if dtype.hasobject or (dtype != FAULT_DTYPE and not np.can_cast(dtype, FAULT_DTYPE, "equiv")):
        raise TraceError(f"wrong dtype {dtype} (expected FAULT_DTYPE {FAULT_DTYPE})",
                         path=src.name)
    if len(shape) != 1:
        raise TraceError(f"expected a 1-D array, got shape {shape}", path=src.name)
    n = shape[0]
    stats.time_source = "field"
    if src.size is not None:
        # Check the size first: a huge shape would otherwise be found out only
        # at the end of the file.
        have = src.size - len(hdr.getvalue())
        if n * dtype.itemsize > have:
            raise TraceError(f"truncated: the header says {n} records "
                             f"({n * dtype.itemsize} bytes), the file holds {have}",
                             path=src.name)
    return _chunks(src.name, f, n, dtype, chunk_size)


def _header_bytes(f: Any) -> bytes:
    """The magic, version, length and header dict of an .npy stream (numpy's
    own readers would seek, which a pipe cannot)."""
    start = read_head(f, 8)
    if len(start) < 8 or not start.startswith(b"\x93NUMPY"):
        raise ValueError("no .npy magic string")
    width = 2 if start[6] == 1 else 4
    size_bytes = read_head(f, width)
    if len(size_bytes) < width:
        raise ValueError("truncated header")
    size = int.from_bytes(size_bytes, "little")
    if size > 1 << 20:
        raise ValueError(f"header of {size} bytes")
    header = read_head(f, size)
    if len(header) < size:
        raise ValueError("truncated header")
    return start + size_bytes + header


def _chunks(name: str, f: Any, n: int, dtype: np.dtype,
            chunk_size: int) -> Iterator[tuple[np.ndarray, None]]:
    done = 0
    while done < n:
        want = min(chunk_size, n - done)
        data = read_head(f, want * dtype.itemsize)
        got = len(data) // dtype.itemsize
        if got < want:
            raise TraceError(f"truncated: the header says {n} records, the input ends "
                             f"after {done + got}", path=name)
        yield np.frombuffer(data, dtype).astype(FAULT_DTYPE), None
        done += got


def write(f: IO[bytes], arr: np.ndarray, meta: object, units: object) -> None:
    np.save(f, arr, allow_pickle=False)
