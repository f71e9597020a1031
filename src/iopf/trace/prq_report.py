"""Text of the Intel VT-d ``intel_iommu:prq_report`` tracepoint.

The event body is printed by the kernel's ``decode_prq_descriptor``
(``drivers/iommu/intel/iommu.h``, since Linux 5.14)::

    dmar1/0000:6a:01.0 seq# 17: rid=0x6a08 addr=0x7f3c1a2b3 rw--l pasid=0x2 index=0x3

The unit (``dmar1``), the PCI name of the device, the unit's sequence
number, then the descriptor's requester id, page number, the r/w/x/p/l
flags, PASID and page-request-group index, and on kernels before 6.10 an
optional `` private=0x…/0x…`` (whose text ends with its own newline, so a
blank line follows). Accepted before the body, on each line:

* the ``trace`` / ``trace_pipe`` context ``task-pid [cpu] flags sec.usec: ``,
  with or without the irq-info flags column and the ``(tgid)`` column;
* ``trace-cmd report``'s ``task-pid [cpu] sec.usec: `` (it pads the event name);
* ``perf script``'s ``comm tid [cpu] sec.usec: `` with the event named
  ``intel_iommu:prq_report``;
* nothing: bare event bodies. Their ``time`` is their ``seq#`` (only the
  order is real); ``LoadStats.time_source`` says ``"seq"``.

Fields are range-checked as the hardware defines them: rid 16 bits, PASID
20 bits, index 9 bits, page number 52 bits, PCI segment 16 bits. A device
is its segment and requester id, ``dev = segment << 16 | rid``; the unit
goes to the per-record metadata (``META_DTYPE``) and ``LoadStats.units``.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, Any

import numpy as np

from ..types import FAULT_DTYPE, Flag, Perm
from ._common import (META_DTYPE, SCALAR_FIELDS, U64_MAX, LoadStats, TraceError, shorten)
from ._io import Input
from . import _prq_fast

#: Bytes of text parsed at once.
BLOCK_BYTES = 4 << 20

_HEX = r"[0-9a-fA-F]+"
# The context before the event name, in every layout (ftrace's "task-pid
# [cpu] flags ts: ", trace-cmd's "task-pid [cpu] ts: ", perf script's "comm
# tid [cpu] ts: "): anything, then the timestamp token right before the event
# name ("sec.frac:", or a raw count for counter clocks). Only the timestamp
# is read; the columns before it are not checked.
CONTEXT = r"(?:(?:.*\s)?(?P<sec>\d+)(?:\.(?P<frac>\d+))?:\s+)?"
LINE = re.compile(
    r"\s*" + CONTEXT + r"(?:intel_iommu:)?prq_report:\s+"
    r"(?P<unit>[^\s/]+)/(?P<seg>" + _HEX + r"):(?P<bus>[0-9a-fA-F]{2}):"
    r"(?P<slot>[0-9a-fA-F]{2})\.(?P<fn>[0-7])\s+seq#\s+(?P<seq>\d+):\s+"
    r"rid=0x(?P<rid>" + _HEX + r")\s+addr=0x(?P<addr>" + _HEX + r")\s+"
    r"(?P<rw>[r-][w-][x-][p-][l-])\s+pasid=0x(?P<pasid>" + _HEX + r")\s+"
    r"index=0x(?P<index>" + _HEX + r")"
    r"(?:\s+private=0x(?P<p0>" + _HEX + r")/0x(?P<p1>" + _HEX + r"))?\s*")

PASID_FLAGS = int(Flag.PASID_VALID | Flag.NEEDS_PASID)
NS_PER_S = 1_000_000_000
#: Field widths of the page request descriptor (``struct page_req_dsc``).
LIMITS = {"rid": 16, "pasid": 20, "index": 9, "addr": 52, "segment": 16}


def perm_codes() -> dict[str, tuple[int, int]]:
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


PERM_CODES = perm_codes()
PERM_CHARS = {code: chars for chars, code in PERM_CODES.items()}


def timestamp_ns(sec: str, frac: str | None) -> int:
    if frac is None:
        return int(sec)   # counter clocks (x86-tsc, counter) print a raw count
    if len(frac) > 9:
        raise ValueError(f"timestamp {sec}.{frac} finer than a nanosecond")
    # Exact: 1234.567890 is 1234567890000 ns, which a float cannot promise.
    return int(sec) * NS_PER_S + int(frac.ljust(9, "0"))


def check_width(name: str, value: int) -> None:
    bits = LIMITS[name]
    if value >> bits:
        raise ValueError(f"{name}=0x{value:x} out of range ({bits} bits)")


def parse_line(m: re.Match[str]) -> tuple[tuple[int, ...], str, int, bool]:
    """One matched line: the nine integers of a record, the unit, seq#, and
    whether the line had a timestamp. Range errors raise ValueError."""
    g = m.groupdict()
    seg, rid, page = int(g["seg"], 16), int(g["rid"], 16), int(g["addr"], 16)
    pasid, index = int(g["pasid"], 16), int(g["index"], 16)
    for name, value in (("rid", rid), ("addr", page), ("pasid", pasid), ("index", index),
                        ("segment", seg)):
        check_width(name, value)
    seq = int(g["seq"])
    if seq > U64_MAX:
        raise ValueError(f"seq# {seq} out of range for u8")
    stamped = g["sec"] is not None
    time = timestamp_ns(g["sec"], g["frac"]) if stamped else seq
    if time > U64_MAX:
        raise ValueError(f"timestamp {time} ns out of range for u8")
    perm, flags = PERM_CODES[g["rw"]]
    if pasid:
        flags |= PASID_FLAGS
    p0 = p1 = 0
    if g["p0"] is not None:
        p0, p1 = int(g["p0"], 16), int(g["p1"], 16)
        if (p0 | p1) > U64_MAX:
            raise ValueError("private data out of range for u8")
        flags |= int(Flag.PRIV_DATA)
    rec = (time, seg << 16 | rid, pasid, index, flags, perm, page << 12, p0, p1)
    return rec, g["unit"], seq, stamped


def read(src: Input, *, skip_bad: bool, chunk_size: int,
         stats: LoadStats) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    return _blocks(src, skip_bad, stats)


def text_blocks(src: Input, *, first_line: int = 1, refuse_nul: bool = True,
                size: int = BLOCK_BYTES) -> Iterator[tuple[int, memoryview]]:
    """The input in blocks of whole lines: (number of the block's first line,
    the block). A block is a view of a buffer reused for the next one: use
    it before asking for the next. Refuses binary data (a NUL byte) naming
    its line."""
    f = src.stream
    if src.size is not None:      # no bigger than the file (the zeroing costs)
        size = max(1 << 16, min(size, src.size + 1))
    buf = bytearray(size)
    view = memoryview(buf)
    have = 0
    lineno = first_line
    while True:
        if have == len(buf):     # a line longer than the buffer: a bigger one
            buf = buf + bytes(len(buf))
            view = memoryview(buf)
        got = f.readinto(view[have:])
        total = have + (got or 0)
        cut = total if not got else buf.rfind(b"\n", 0, total) + 1
        if cut:
            nul = buf.find(b"\0", 0, cut) if refuse_nul else -1
            if nul >= 0:
                raise TraceError("binary data (a NUL byte) in a text trace", path=src.name,
                                 line=lineno + buf.count(b"\n", 0, nul))
            yield lineno, view[:cut]
            lineno += buf.count(b"\n", 0, cut)
            buf[:total - cut] = buf[cut:total]
        have = total - cut
        if not got:
            return


def _blocks(src: Input, skip_bad: bool,
            stats: LoadStats) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for first, block in text_blocks(src):
        yield parse_block(src.name, block, first, skip_bad, stats)


def parse_block(name: str, block: bytes | memoryview, first: int, skip_bad: bool,
                stats: LoadStats) -> tuple[np.ndarray, np.ndarray]:
    """The records of a block of whole lines whose first is line ``first``.
    The fast parser takes the lines it can; the rule (``LINE``) decides
    every line it leaves, so both accept exactly the same lines."""
    if block[-1:] != b"\n":
        block = bytes(block) + b"\n"   # the last line of an input without a final newline
    fast = _prq_fast.parse(block)
    source = None if fast is None else ("timestamp" if fast.stamped else "seq")
    if fast is None or (len(fast.lines) and (
            stats.time_source not in (None, source)
            or (stats.time_source is None and len(fast.left)))):
        # Mixed layouts, or the first lines of the input undecided: the rule
        # reads the block in order, so it names the same odd line.
        faults, meta, _ = _by_rule(name, bytes(block).split(b"\n"), None, first, skip_bad,
                                   stats)
        return faults, meta
    if len(fast.lines):
        stats.time_source = source
    faults, meta = fast.faults, fast.meta
    if len(fast.units):
        ids = np.array([stats._unit(u) for u in fast.units], np.uint16)
        meta["unit"] = ids[fast.unit_index]
    if not len(fast.left):
        return faults, meta
    more_f, more_m, where = _by_rule(name, bytes(block).split(b"\n"), fast.left, first,
                                     skip_bad, stats)
    order = np.argsort(np.concatenate([fast.lines, where]), kind="stable")
    return np.concatenate([faults, more_f])[order], np.concatenate([meta, more_m])[order]


def _by_rule(name: str, lines: list[bytes], only: np.ndarray | None, first: int,
             skip_bad: bool, stats: LoadStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The prq_report lines among ``lines`` (those at ``only`` if given) by
    the rule: records, metadata, and the index of each record's line."""
    rows: list[tuple[int, ...]] = []
    units: list[int] = []
    seqs: list[int] = []
    where: list[int] = []
    match = LINE.fullmatch
    for at in (range(len(lines)) if only is None else only.tolist()):
        line = lines[at].decode("utf-8", errors="replace")
        if "prq_report:" not in line or line.lstrip()[:1] == "#":
            continue
        m = match(line)
        try:
            if m is None:
                raise ValueError("bad prq_report line")
            rec, unit, seq, stamped = parse_line(m)
            source = "timestamp" if stamped else "seq"
            if stats.time_source is None:
                stats.time_source = source
            elif stats.time_source != source:
                raise ValueError("no timestamp, unlike the lines before" if not stamped
                                 else "a timestamp, unlike the bare lines before")
            unit_id = stats._unit(unit)
        except ValueError as e:
            err = TraceError(f"{e}: {shorten(line)}", path=name, line=first + at)
            if not skip_bad:
                raise err from None
            stats._skip(err)
            continue
        rows.append(rec)
        units.append(unit_id)
        seqs.append(seq)
        where.append(at)
    table = np.array(rows, dtype=np.uint64).reshape(len(rows), 9)
    out = np.empty(len(rows), FAULT_DTYPE)
    for i, field in enumerate(SCALAR_FIELDS):
        out[field] = table[:, i]
    out["private"] = table[:, 7:9]
    meta = np.empty(len(rows), META_DTYPE)
    meta["unit"] = units
    meta["seq"] = seqs
    return out, meta, np.asarray(where, np.int64)


# --------------------------------------------------------------------------
# writing

FTRACE_HEADER = """\
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
_FORMAT = ("            iopf-0       [000] ..... %5d.%06d: prq_report: %s/%s "
           "seq# %d: rid=0x%x addr=0x%x %s pasid=0x%x index=0x%x")


def pci_name(dev: int) -> str:
    """``dev = segment << 16 | rid`` as the kernel's PCI device name."""
    return f"{dev >> 16:04x}:{(dev >> 8) & 0xFF:02x}:{(dev >> 3) & 0x1F:02x}.{dev & 7:x}"


def write(f: IO[bytes], arr: np.ndarray, meta: np.ndarray | None,
          units: list[str] | None) -> None:
    """ftrace ``trace`` layout; unit names and ``seq#`` from ``meta`` and
    ``units`` when given (else ``dmar0`` and the record's position)."""
    names = units or ["dmar0"]
    f.write(FTRACE_HEADER.format(n=len(arr)).encode("ascii"))
    for start in range(0, len(arr), 1 << 16):
        c = arr[start:start + (1 << 16)]
        t = c["time"]
        # Round to the microsecond as ftrace's ns2usecs does, without the
        # overflow of t + 500 near 2**64, and so that it loads back.
        usec = np.minimum(t // 1000 + (t % 1000 >= 500), U64_MAX // 1000)
        flags = c["flags"]
        perm_chars = [PERM_CHARS[(p & 0xF, last)] for p, last in zip(
            c["perm"].tolist(), (flags & np.uint32(Flag.LAST_PAGE)).tolist())]
        dev_names = {d: pci_name(d) for d in np.unique(c["dev"]).tolist()}
        dev = c["dev"].tolist()
        pasid = np.where(flags & np.uint32(Flag.PASID_VALID), c["pasid"], 0)
        if meta is not None:
            m = meta[start:start + (1 << 16)]
            unit_names = [names[u] for u in m["unit"].tolist()]
            seq: Any = m["seq"].tolist()
        else:
            unit_names = [names[0]] * len(c)
            seq = range(start, start + len(c))
        lines = [_FORMAT % row + "\n" for row in zip(
            (usec // 1_000_000).tolist(), (usec % 1_000_000).tolist(), unit_names,
            map(dev_names.__getitem__, dev), seq, [d & 0xFFFF for d in dev],
            (c["addr"] >> np.uint64(12)).tolist(), perm_chars, pasid.tolist(),
            c["grpid"].tolist())]
        for i in np.flatnonzero(flags & np.uint32(Flag.PRIV_DATA)).tolist():
            # The kernel ends the private text with its own newline, so a
            # blank line follows in the file.
            p0, p1 = c["private"][i].tolist()
            lines[i] = f"{lines[i][:-1]} private=0x{p0:x}/0x{p1:x}\n\n"
        f.write("".join(lines).encode("ascii"))
