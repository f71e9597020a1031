"""iommufd ``struct iommu_hwpt_pgfault`` records (40 bytes, little endian),
as read from an iommufd fault object."""
from __future__ import annotations

from collections.abc import Iterator
from typing import IO

import numpy as np

from ..types import FAULT_DTYPE, Flag
from ._common import LoadStats, TraceError
from ._io import Input, read_head

#: ``struct iommu_hwpt_pgfault`` (include/uapi/linux/iommufd.h).
IOMMUFD_DTYPE = np.dtype([
    ("flags", "<u4"), ("dev_id", "<u4"), ("pasid", "<u4"), ("grpid", "<u4"),
    ("perm", "<u4"), ("reserved", "<u4"), ("addr", "<u8"), ("length", "<u4"),
    ("cookie", "<u4"),
])
assert IOMMUFD_DTYPE.itemsize == 40
# The uapi defines bits 0-1; bit 2 is the kernel-internal NEEDS_PASID leaking
# through the raw prm.flags. Our Flag values for those three bits are the same.
IOMMUFD_FLAGS = int(Flag.PASID_VALID | Flag.LAST_PAGE | Flag.NEEDS_PASID)


def read(src: Input, *, skip_bad: bool, chunk_size: int,
         stats: LoadStats) -> Iterator[tuple[np.ndarray, None]]:
    stats.time_source = "index"
    if src.size is not None and src.size % IOMMUFD_DTYPE.itemsize and not skip_bad:
        # A regular file: say so at the call, before the first chunk.
        whole, tail = divmod(src.size, IOMMUFD_DTYPE.itemsize)
        raise TraceError(f"truncated record ({tail} of {IOMMUFD_DTYPE.itemsize} bytes)",
                         path=src.name, record=whole)
    return _chunks(src, skip_bad, chunk_size, stats)


def _chunks(src: Input, skip_bad: bool, chunk_size: int,
            stats: LoadStats) -> Iterator[tuple[np.ndarray, None]]:
    size = IOMMUFD_DTYPE.itemsize
    start = 0
    while True:
        data = read_head(src.stream, chunk_size * size)
        whole, tail = divmod(len(data), size)
        if whole:
            yield _records(src.name, data[:whole * size], start, skip_bad, stats), None
            start += whole
        if tail:
            err = TraceError(f"truncated record ({tail} of {size} bytes)", path=src.name,
                             record=start)
            if not skip_bad:
                raise err
            stats._skip(err)
        if len(data) < chunk_size * size:
            return


def _records(name: str, data: bytes, start: int, skip_bad: bool,
             stats: LoadStats) -> np.ndarray:
    raw = np.frombuffer(data, IOMMUFD_DTYPE)
    index = np.arange(start, start + len(raw), dtype=np.uint64)
    bad = (raw["flags"] & ~np.uint32(IOMMUFD_FLAGS)) != 0
    if bad.any():
        for i in np.flatnonzero(bad):
            err = TraceError(f"unknown flags 0x{int(raw['flags'][i]):x} "
                             f"(iommufd defines bits 0-2)", path=name, record=start + int(i))
            if not skip_bad:
                raise err
            stats._skip(err)
        raw, index = raw[~bad], index[~bad]
    out = np.zeros(len(raw), FAULT_DTYPE)
    out["time"] = index
    out["dev"] = raw["dev_id"]
    for field in ("pasid", "grpid", "flags", "perm", "addr"):
        out[field] = raw[field]
    return out


def write(f: IO[bytes], arr: np.ndarray, meta: object, units: object) -> None:
    for start in range(0, len(arr), 1 << 20):
        c = arr[start:start + (1 << 20)]
        raw = np.zeros(len(c), IOMMUFD_DTYPE)
        raw["flags"] = c["flags"] & np.uint32(IOMMUFD_FLAGS)
        raw["dev_id"] = c["dev"]
        for name in ("pasid", "grpid", "perm", "addr"):
            raw[name] = c[name]
        f.write(raw.tobytes())
