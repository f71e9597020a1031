"""Vectorized parsing of well-formed prq_report lines: numpy over a whole
block of text, no Python work per line.

It takes only lines written the way the kernel writes them (single spaces
inside the event body, a four-digit PCI segment, no private data, no
trailing blanks, at most 16 hex digits a field, ASCII) and leaves every
other line holding ``prq_report:`` to the rule (``prq_report.LINE``), which
decides it. It accepts nothing the rule refuses and reads the same values,
so a line's fate never depends on which parser took it.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..types import FAULT_DTYPE, Flag
from ._common import META_DTYPE

_SP, _NL, _CR = 32, 10, 13
_EVENT = np.frombuffer(b"prq_report:", np.uint8)
_PREFIX = np.frombuffer(b"intel_iommu:", np.uint8)
_HEXVAL = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEXVAL[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEXVAL[_c] = 10 + _i
_DECVAL = np.full(256, 255, np.uint8)
_DECVAL[48:58] = np.arange(10)
_POW10 = np.array([10 ** k for k in range(20)], np.uint64)
_PASID_FLAGS = int(Flag.PASID_VALID | Flag.NEEDS_PASID)
_LAST = int(Flag.LAST_PAGE)
_UNIT_BYTES = 16

_scan: Callable[[Any], Any] | None
try:
    from iopf_core.textscan import scan_prq as _scan
except ImportError:      # not built (a source checkout without the extension)
    _scan = None


@dataclass
class Parsed:
    faults: np.ndarray        # FAULT_DTYPE records of the lines parsed
    meta: np.ndarray          # META_DTYPE (unit still to be mapped through units)
    lines: np.ndarray         # index (in the block) of each record's line
    left: np.ndarray          # lines holding prq_report: left to the rule
    units: list[str]          # distinct unit names of the records
    unit_index: np.ndarray    # per record: index into units
    stamped: bool             # the records' lines carry a timestamp


def _find(b: np.ndarray, pat: np.ndarray) -> np.ndarray:
    """Every position of ``pat`` in ``b``."""
    last = len(b) - len(pat)
    if last < 0:
        return np.empty(0, np.int64)
    at = np.flatnonzero(b[:last + 1] == pat[0])
    for k in range(1, len(pat)):
        at = at[b[at + k] == pat[k]]
    return at


def _is(b: np.ndarray, at: np.ndarray, text: bytes) -> np.ndarray:
    """Whether ``text`` starts at each of ``at`` (positions may be out of range)."""
    ok = (at >= 0) & (at + len(text) <= len(b))
    safe = np.where(ok, at, 0)
    for k, c in enumerate(text):
        ok &= b[np.minimum(safe + k, len(b) - 1)] == c
    return ok


def _number(b: np.ndarray, start: np.ndarray, length: np.ndarray, table: np.ndarray,
            base: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Values of the digit strings b[start:start+length] (1 <= length <=
    width, else not ok) and whether each is well formed. Horner's rule, one
    column at a time: no (lines x width) temporaries."""
    ok = (length >= 1) & (length <= width)
    columns = int(min(width, length.max())) if len(length) else 0
    value = np.zeros(len(start), np.uint64)
    last = len(b) - 1
    for j in range(columns):
        active = length > j
        digit = table[b[np.minimum(start + j, last)]]
        ok &= ~active | (digit != 255)
        value = np.where(active, value * np.uint64(base) + digit, value)
    return value, ok


def _empty() -> Parsed:
    none = np.empty(0, np.int64)
    return Parsed(np.empty(0, FAULT_DTYPE), np.empty(0, META_DTYPE), none, none, [], none, True)


def parse(block: bytes | memoryview) -> Parsed | None:
    """The well-formed prq_report lines of ``block`` (whole lines, the last
    ending with a newline), and the other lines holding ``prq_report:``;
    None when the block mixes bare and stamped lines (the rule then names
    the odd one). The compiled scanner when it is built, else numpy."""
    if _scan is None or os.environ.get("IOPF_PURE_PYTHON") == "1":
        return parse_numpy(block)
    found = _scan(block)
    if found is None:
        return _empty()
    if isinstance(found, str):
        return None
    cols, lines, left, units, stamped = found
    out = np.empty(cols.shape[1], FAULT_DTYPE)
    for i, name in enumerate(("time", "dev", "pasid", "grpid", "flags", "perm", "addr")):
        out[name] = cols[i]
    out["private"] = 0
    meta = np.empty(len(out), META_DTYPE)
    meta["seq"] = cols[7]
    meta["unit"] = 0
    return Parsed(out, meta, lines, left, units, cols[8].astype(np.int64), stamped)


def parse_numpy(block: bytes | memoryview) -> Parsed | None:
    """``parse`` by numpy over the whole block."""
    b = np.frombuffer(block, np.uint8)
    n = len(b)
    if n == 0 or b[-1] != _NL:
        return _empty() if n == 0 else parse_numpy(bytes(block) + b"\n")
    hits = _find(b, _EVENT)
    if not len(hits):
        return _empty()
    nl = np.flatnonzero(b == _NL)
    line_of = np.searchsorted(nl, hits)           # line holding each hit
    first = np.r_[True, line_of[1:] != line_of[:-1]]
    q, line = hits[first], line_of[first]        # the first hit of each line
    start = np.r_[0, nl[:-1] + 1][line]
    end = nl[line]
    sp = np.append(np.flatnonzero(b == _SP), n)  # n: a sentinel past the end
    last_sp = len(sp) - 1

    def space(i: np.ndarray) -> np.ndarray:      # the i-th space (n if none)
        return sp[np.clip(i, 0, last_sp)]

    def byte(pos: np.ndarray) -> np.ndarray:
        return b[np.clip(pos, 0, n - 1)]

    def run(i: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Length of the run of spaces at ``pos`` (the i-th space or later)."""
        length = np.zeros(len(pos), np.int64)
        going = space(i) == pos
        k = 0
        while going.any():
            length += going
            k += 1
            going &= space(i + k) == pos + k
        return length

    # Leading spaces; a comment, or other blanks first, are the rule's to judge.
    i_start = np.searchsorted(sp, start)
    first_char = start + run(i_start, start)
    lead = byte(first_char)
    comment = lead == ord("#")
    ok = (lead > 32) & (lead < 128) & ~comment & (first_char < end)
    # The event name, optionally "intel_iommu:" before it.
    prefixed = _is(b, q - 12, b"intel_iommu:")
    event = np.where(prefixed, q - 12, q)
    bare = event == first_char
    i_ev = np.searchsorted(sp, event)          # first space after the event name
    # The timestamp token "sec[.frac]:" and one space before the event name.
    ts_end = event - 2                         # the ':'
    ok &= bare | ((space(i_ev - 1) == event - 1) & (byte(ts_end) == ord(":")))
    ts_start = np.where(bare, event, np.maximum(space(i_ev - 2) + 1, start))
    ts_start = np.where(i_ev >= 2, ts_start, start)
    dot = _first_dot(b, ts_start, ts_end)
    has_frac = dot >= 0
    sec_len = np.where(has_frac, dot - ts_start, ts_end - ts_start)
    sec, ok_sec = _number(b, ts_start, np.where(bare, 1, sec_len), _DECVAL, 10, 19)
    frac_len = np.where(has_frac, ts_end - dot - 1, 1)
    frac, ok_frac = _number(b, dot + 1, frac_len, _DECVAL, 10, 9)
    ok &= bare | (ok_sec & (~has_frac | (ok_frac & (sec_len <= 10))))
    # The body, single spaces, as decode_prq_descriptor prints it: its k-th
    # delimiter is the k-th space after its start.
    pad = run(i_ev, q + 11)                    # trace-cmd pads the event name
    ok &= pad >= 1
    body = q + 11 + pad
    i0 = i_ev + pad
    s1 = space(i0)                             # after "unit/ssss:bb:dd.f"
    dev0 = s1 - 12
    ok &= (byte(dev0 - 1) == ord("/")) & (byte(dev0 + 4) == ord(":")) & \
        (byte(dev0 + 7) == ord(":")) & (byte(dev0 + 10) == ord("."))
    four = np.full(len(q), 4)
    two = np.full(len(q), 2)
    seg, ok1 = _number(b, dev0, four, _HEXVAL, 16, 4)
    _, ok2 = _number(b, dev0 + 5, two, _HEXVAL, 16, 2)
    _, ok3 = _number(b, dev0 + 8, two, _HEXVAL, 16, 2)
    fn = byte(dev0 + 11).astype(np.int64) - 48
    ok &= ok1 & ok2 & ok3 & (fn >= 0) & (fn <= 7)
    unit_len = dev0 - 1 - body
    ok &= (unit_len >= 1) & (unit_len <= _UNIT_BYTES)
    ok &= _is(b, s1 + 1, b"seq# ") & (space(i0 + 1) == s1 + 5)
    s2 = space(i0 + 2)                         # after "17:"
    seq, ok4 = _number(b, s1 + 6, s2 - 1 - (s1 + 6), _DECVAL, 10, 19)
    ok &= ok4 & (byte(s2 - 1) == ord(":")) & _is(b, s2 + 1, b"rid=0x")
    s3 = space(i0 + 3)
    rid, ok5 = _number(b, s2 + 7, s3 - (s2 + 7), _HEXVAL, 16, 16)
    ok &= ok5 & _is(b, s3 + 1, b"addr=0x") & (rid <= 0xFFFF)
    s4 = space(i0 + 4)
    page, ok6 = _number(b, s3 + 8, s4 - (s3 + 8), _HEXVAL, 16, 16)
    ok &= ok6 & (page < np.uint64(1 << 52))
    c = [byte(s4 + 1 + k) for k in range(5)]
    ok &= ((c[0] == ord("r")) | (c[0] == 45)) & ((c[1] == ord("w")) | (c[1] == 45)) & \
        ((c[2] == ord("x")) | (c[2] == 45)) & ((c[3] == ord("p")) | (c[3] == 45)) & \
        ((c[4] == ord("l")) | (c[4] == 45))
    s5 = space(i0 + 5)
    ok &= (s5 == s4 + 6) & _is(b, s5 + 1, b"pasid=0x")
    s6 = space(i0 + 6)
    pasid, ok7 = _number(b, s5 + 9, s6 - (s5 + 9), _HEXVAL, 16, 16)
    ok &= ok7 & _is(b, s6 + 1, b"index=0x") & (pasid <= 0xFFFFF) & (s6 < end)
    # The line ends after the index (a CR before the newline is allowed).
    idx_end = np.where(byte(end - 1) == _CR, end - 1, end)
    index, ok8 = _number(b, s6 + 9, idx_end - (s6 + 9), _HEXVAL, 16, 16)
    ok &= ok8 & (space(i0 + 7) > end) & (index <= 0x1FF)
    # The unit names, as fixed-width byte strings.
    j = np.arange(_UNIT_BYTES)
    raw = b[np.minimum(body[:, None] + j, n - 1)]
    raw = np.where(j < unit_len[:, None], raw, 0).astype(np.uint8)
    ok &= ~((raw == ord("/")) | (raw == _SP) | (raw >= 128) | ((raw < 33) & (raw != 0))).any(1)
    # One kind of line a block: bare bodies or stamped lines, not both.
    if ok.any() and bare[ok].any() and (~bare[ok]).any():
        return None
    stamped = not (ok.any() and bare[ok].all())
    k = np.flatnonzero(ok)
    left = line[~ok & ~comment]
    out = np.zeros(len(k), FAULT_DTYPE)
    if stamped:
        f = frac[k] * _POW10[np.clip(9 - frac_len[k], 0, 19)]
        out["time"] = np.where(has_frac[k], sec[k] * np.uint64(1_000_000_000) + f, sec[k])
    else:
        out["time"] = seq[k]
    out["dev"] = (seg[k] << np.uint64(16)) | rid[k]
    out["pasid"] = pasid[k]
    out["grpid"] = index[k]
    out["perm"] = ((c[0][k] == ord("r")) * 1 | (c[1][k] == ord("w")) * 2
                   | (c[2][k] == ord("x")) * 4 | (c[3][k] == ord("p")) * 8)
    out["flags"] = np.where(c[4][k] == ord("l"), _LAST, 0) | np.where(pasid[k] != 0,
                                                                     _PASID_FLAGS, 0)
    out["addr"] = page[k] << np.uint64(12)
    meta = np.zeros(len(k), META_DTYPE)
    meta["seq"] = seq[k]
    names, first_at, inverse = np.unique(
        np.ascontiguousarray(raw[k]).view(f"S{_UNIT_BYTES}").ravel(), return_index=True,
        return_inverse=True)
    order = np.argsort(first_at)          # units in order of first appearance
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return Parsed(out, meta, line[k], left, [x.decode("ascii") for x in names[order].tolist()],
                  rank[inverse.reshape(-1)], stamped)


def _first_dot(b: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Position of the first '.' in b[start:end] (at most 32 bytes), or -1."""
    found = np.full(len(start), -1, np.int64)
    span = np.minimum(end - start, 32)
    last = len(b) - 1
    for j in range(int(span.max()) if len(span) else 0):
        here = (span > j) & (found < 0) & (b[np.minimum(start + j, last)] == ord("."))
        found[here] = start[here] + j
    return found
