"""What every trace format shares: errors, load statistics, field names,
and the regrouping of parsed batches into chunks."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..types import FAULT_DTYPE

PathLike = str | os.PathLike

#: The format names ``load`` and ``save`` accept.
FORMATS = ("npy", "csv", "prq_report", "iommufd", "parquet")

U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
MAX_ERRORS_KEPT = 20

CSV_COLUMNS = ("time", "dev", "pasid", "grpid", "flags", "perm", "addr",
               "private0", "private1")
CSV_OPTIONAL = frozenset({"time", "private0", "private1"})
SCALAR_FIELDS = CSV_COLUMNS[:7]
assert FAULT_DTYPE.names == (*SCALAR_FIELDS, "private")
CSV_HEADER = ",".join(CSV_COLUMNS)
U32_COLUMNS = frozenset({"dev", "pasid", "grpid", "flags", "perm"})

#: Per-record facts a ``FAULT_DTYPE`` record cannot hold: the IOMMU unit
#: (an index into ``LoadStats.units``) and the unit's sequence number
#: (``seq#`` of ``prq_report``; the record's position for other formats).
META_DTYPE = np.dtype([("unit", "<u2"), ("seq", "<u8")])


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
        super().__init__(" ".join(text.split()))


class OptionalDependencyError(ImportError):
    """A format needs a package that is not installed (pyarrow for Parquet)."""


@dataclass
class LoadStats:
    """What a load did. Pass one as ``stats=`` to ``load`` or ``iter_chunks``.

    ``records`` counts the records returned, ``skipped`` the malformed lines
    or records dropped with ``skip_bad=True``; ``errors`` keeps the first
    messages of those (as ``TraceError`` would have said them).
    ``compression`` is ``"gzip"``, ``"bz2"``, ``"xz"`` or None.
    ``units`` names the IOMMU units met, in order of first appearance
    (``prq_report`` only: ``dmar0``, ``dmar1``, ...; the ``unit`` field of
    the per-record metadata indexes it). ``time_source`` says where the
    ``time`` field came from: ``"timestamp"`` (the trace's clock, in ns),
    ``"seq"`` (bare ``prq_report`` bodies: the ``seq#`` number, so only the
    order is real), ``"index"`` (iommufd: the record's position) or
    ``"field"`` (formats that store it).
    """

    format: str | None = None
    records: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    compression: str | None = None
    units: list[str] = field(default_factory=list)
    time_source: str | None = None

    def _skip(self, err: TraceError) -> None:
        self.skipped += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(str(err))

    def _unit(self, name: str) -> int:
        """The index of unit ``name``, added on first sight."""
        try:
            return self.units.index(name)
        except ValueError:
            if len(self.units) > 0xFFFF:
                raise ValueError("more than 65536 IOMMU units") from None
            self.units.append(name)
            return len(self.units) - 1


def shorten(line: str, limit: int = 120) -> str:
    line = line.strip()
    return line if len(line) <= limit else line[:limit] + "..."


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
