"""The data model: flags, permissions, response codes, record dtypes, Fault, PageResponse.

Values follow the Linux uapi (``include/linux/iommu.h``) of v5.13-v6.8, where
PRIV_DATA still existed.
"""
from __future__ import annotations

import enum
from typing import Any, NamedTuple

import numpy as np

from iopf_core.records import FAULT_DTYPE, NO_PASID, RESPONSE_DTYPE

__all__ = [
    "Flag", "Perm", "Response", "Reason", "FAULT_DTYPE", "RESPONSE_DTYPE",
    "Fault", "PageResponse", "NO_PASID",
]


class Flag(enum.IntFlag):
    """Page request flags (``IOMMU_FAULT_PAGE_REQUEST_*``)."""

    PASID_VALID = 1
    LAST_PAGE = 2
    NEEDS_PASID = 4
    PRIV_DATA = 8


class Perm(enum.IntFlag):
    """Requested access (``IOMMU_FAULT_PERM_*``)."""

    READ = 1
    WRITE = 2
    EXEC = 4
    PRIV = 8


class Response(enum.IntEnum):
    """Page response codes (``enum iommu_page_response_code``)."""

    SUCCESS = 0
    INVALID = 1
    FAILURE = 2


class Reason(enum.IntEnum):
    """Why a response was sent (the ``reason`` field of a response)."""

    HANDLER = 0
    NO_HANDLER = 1
    HANDLER_ERROR = 2
    STOP_MARKER = 3
    OVERFLOW = 4
    DISCARDED = 5
    FLUSHED = 6
    DETACHED = 7
    REMOVED = 8
    TIMEOUT = 9
    CALLER = 10


class _FaultFields(NamedTuple):
    time: int
    dev: int
    pasid: int
    grpid: int
    flags: int
    perm: int
    addr: int
    private: tuple[int, int]


_U32, _U64 = 2**32 - 1, 2**64 - 1
_FIELDS = ("time", "dev", "pasid", "grpid", "flags", "perm", "addr", "private[0]", "private[1]")
_FIELD_MAX = (2**64 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1, 0xF, 0xF, 2**64 - 1, 2**64 - 1, 2**64 - 1)


def _checked(name: str, value: Any, hi: int) -> int:
    """A Fault field as an int in 0..hi; the error names the field."""
    if value.__class__ is not int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"Fault.{name} must be an int, not {type(value).__name__} ({value!r})")
        value = int(value)
    if not 0 <= value <= hi:
        raise ValueError(f"Fault.{name} = {value} is out of range 0..{hi:#x}")
    return value


class Fault(_FaultFields):
    """One page request: an immutable record with the fields of FAULT_DTYPE.

    >>> f = Fault(3, 7, 5, 0x1000, last=True)
    >>> f.last, f.pasid_valid, f.flags
    (True, True, <Flag.PASID_VALID|LAST_PAGE: 3>)
    >>> Fault(3, 7, 5, 0x1000, flags=0).pasid_valid
    False
    """

    __slots__ = ()

    def __new__(cls, dev: int, pasid: int, grpid: int, addr: int, *,
                perm: int = Perm.READ, last: bool = False, pasid_valid: bool = True,
                needs_pasid: bool = False, flags: int | None = None, time: int = 0,
                private: tuple[int, int] = (0, 0)) -> Fault:
        if flags is None:
            flags = ((Flag.PASID_VALID if pasid_valid else 0)
                     | (Flag.LAST_PAGE if last else 0)
                     | (Flag.NEEDS_PASID if needs_pasid else 0))
        if not isinstance(private, (tuple, list)) or len(private) != 2:
            raise TypeError(f"Fault.private must be a pair of ints, not {private!r}")
        p0, p1 = private
        # Fast path: plain ints in range (one test each); otherwise field by field, naming it.
        if not (time.__class__ is int and dev.__class__ is int and pasid.__class__ is int
                and grpid.__class__ is int and addr.__class__ is int and p0.__class__ is int
                and p1.__class__ is int and flags.__class__ in _FLAG_TYPES
                and perm.__class__ in _FLAG_TYPES and 0 <= time <= _U64 and 0 <= dev <= _U32
                and 0 <= pasid <= _U32 and 0 <= grpid <= _U32 and 0 <= addr <= _U64
                and 0 <= p0 <= _U64 and 0 <= p1 <= _U64 and 0 <= flags <= 0xF and 0 <= perm <= 0xF):
            time, dev, pasid, grpid, flags, perm, addr, p0, p1 = (
                _checked(name, v, hi) for name, v, hi in zip(
                    _FIELDS, (time, dev, pasid, grpid, flags, perm, addr, p0, p1), _FIELD_MAX))
        return super().__new__(cls, time, dev, pasid, grpid, _FLAGS[flags], _PERMS[perm], addr, (p0, p1))

    @classmethod
    def from_record(cls, rec: Any) -> Fault:
        """A Fault from one FAULT_DTYPE record (or a tuple in its field order)."""
        time, dev, pasid, grpid, flags, perm, addr, private = rec
        return cls(dev, pasid, grpid, addr, perm=perm, flags=flags, time=time,
                   private=(int(private[0]), int(private[1])))

    @property
    def last(self) -> bool:
        return bool(self.flags & Flag.LAST_PAGE)

    @property
    def pasid_valid(self) -> bool:
        return bool(self.flags & Flag.PASID_VALID)

    def __repr__(self) -> str:
        return (f"Fault(dev={self.dev}, pasid={self.pasid}, grpid={self.grpid}, "
                f"addr={self.addr:#x}, perm={self.perm!r}, flags={self.flags!r}, "
                f"time={self.time})")


_FLAGS = {i: Flag(i) for i in range(16)}
_PERMS = {i: Perm(i) for i in range(16)}
_FLAG_TYPES = (int, Flag, Perm)


class PageResponse(NamedTuple):
    """One page response, with the fields of RESPONSE_DTYPE."""

    time: int
    dev: int
    pasid: int
    grpid: int
    code: Response
    flags: Flag
    cookie: int
    nfaults: int
    reason: Reason

    @classmethod
    def from_record(cls, rec: np.void) -> PageResponse:
        t, dev, pasid, grpid, code, flags, cookie, nfaults, reason = rec.tolist()
        return cls(t, dev, pasid, grpid, Response(code), Flag(flags), cookie, nfaults,
                   Reason(reason))
