"""The record layouts the core reads and writes, and the field checks.

``iopf.types`` re-exports the dtypes; they live here so that the compiled
core and the twin share one definition.
"""
from __future__ import annotations

import numpy as np

__all__ = ["FAULT_DTYPE", "RESPONSE_DTYPE", "COUNTERS", "NO_PASID", "check_record", "check_ints",
           "check_answers"]

#: The key PASID of a request without PASID_VALID: above every PASID of at
#: most 31 bits, so it can never collide with a real one.
NO_PASID = 0xFFFFFFFF

#: One page request, packed (52 bytes): the layout the core reads and writes.
FAULT_DTYPE = np.dtype([
    ("time", "<u8"), ("dev", "<u4"), ("pasid", "<u4"), ("grpid", "<u4"),
    ("flags", "<u4"), ("perm", "<u4"), ("addr", "<u8"), ("private", "<u8", (2,)),
])
#: One page response, packed (44 bytes).
RESPONSE_DTYPE = np.dtype([
    ("time", "<u8"), ("dev", "<u4"), ("pasid", "<u4"), ("grpid", "<u4"),
    ("code", "<u4"), ("flags", "<u4"), ("cookie", "<u8"), ("nfaults", "<u4"),
    ("reason", "<u4"),
])
COUNTERS = ("faults_reported", "partial_now", "grouped", "stop_markers", "rejected",
            "overflowed", "discarded", "flushed", "removed", "groups", "answered",
            "pending_now", "stale_responses")
U64 = (1 << 64) - 1


def check_record(i: int | None, rec: tuple, pasid_bits: int, grpid_bits: int) -> None:
    """Raise ValueError naming the record when a field does not fit."""
    time, dev, pasid, grpid, flags, perm = rec[:6]
    where = "" if i is None else f"record {i}: "
    if not 0 <= pasid < (1 << pasid_bits):
        raise ValueError(f"{where}pasid {pasid:#x} does not fit in {pasid_bits} bits")
    if not 0 <= grpid < (1 << grpid_bits):
        raise ValueError(f"{where}grpid {grpid:#x} does not fit in {grpid_bits} bits")
    if not 0 <= flags <= 0xF:
        raise ValueError(f"{where}flags {flags:#x} has bits outside PASID_VALID|LAST_PAGE|NEEDS_PASID|PRIV_DATA")
    if not 0 <= perm <= 0xF:
        raise ValueError(f"{where}perm {perm:#x} has bits outside READ|WRITE|EXEC|PRIV")
    if not 0 <= dev <= 0xFFFFFFFF or not 0 <= time <= U64:
        raise ValueError(f"{where}dev or time out of range")
    if len(rec) == 8 and not (0 <= rec[6] <= U64 and 0 <= rec[7][0] <= U64
                              and 0 <= rec[7][1] <= U64):   # (a group's fields stop at perm)
        raise ValueError(f"{where}addr or private out of range")


#: The largest response code (FAILURE).
MAX_CODE = 2


def check_answers(cookies: object, codes: object) -> tuple[np.ndarray, np.ndarray]:
    """respond_batch's arguments as arrays, checked before anything is
    answered: 1-D, the same length, integers, no negative cookie, codes
    0..MAX_CODE."""
    k, c = np.asarray(cookies), np.asarray(codes)
    if k.ndim != 1 or c.ndim != 1 or k.shape[0] != c.shape[0]:
        raise ValueError(f"cookies and codes must be 1-D of the same length, got shapes "
                         f"{k.shape} and {c.shape}")
    for name, a in (("cookies", k), ("codes", c)):
        if a.size and a.dtype.kind not in "iu":
            raise TypeError(f"{name} must be integers, not {a.dtype}")
        if a.size and a.min() < 0:
            raise ValueError(f"{name} must not be negative")
    if c.size and c.max() > MAX_CODE:
        raise ValueError(f"codes must be response codes 0..{MAX_CODE}, got {c.max()}")
    return k, c


_NAMES = ("time", "dev", "pasid", "grpid", "flags", "perm", "addr", "private[0]", "private[1]")


def check_ints(rec: tuple) -> None:
    """Raise TypeError naming the first field of a record given field by field
    that is not an integer: a float or a bool is refused (as ``iopf.Fault``
    does), never truncated. numpy integers are integers."""
    for name, v in zip(_NAMES, (*rec[:7], *rec[7])):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, not {type(v).__name__} ({v!r})")
