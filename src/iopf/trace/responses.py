"""Page responses from ``intel_iommu:qi_submit`` text, and their pairing
with the requests of the same capture.

VT-d answers a page request group with a *page group response* descriptor
on the invalidation queue; the ``qi_submit`` tracepoint
(``drivers/iommu/intel/trace.h``) prints the four quadwords of every
descriptor it submits, naming this type ``page_grp_resp``::

    qi_submit: page_grp_resp dmar1: 0x26a080019 0x1c 0x0 0x0

The fields, as the ``QI_PGRP_*`` macros of ``drivers/iommu/intel/iommu.h``
place them (Linux 5.x to 6.17; ``intel_iommu_page_response`` in
``drivers/iommu/intel/prq.c`` fills them):

* qw0 bits 0-3: descriptor type, 9 (``QI_PGRP_RESP_TYPE``);
* qw0 bit 4: PASID present (``QI_PGRP_PASID_P``);
* qw0 bits 12-15: response code (``QI_PGRP_RESP_CODE``): 0 success,
  1 invalid request, 0xf response failure (the kernel writes its generic
  code unchanged, so a generic FAILURE goes out as 2);
* qw0 bits 16-31: requester id of the device (``QI_PGRP_DID``);
* qw0 bits 32-51: PASID (``QI_PGRP_PASID``);
* qw1 bit 2: last page in group (``QI_PGRP_LPIG``);
* qw1 bits 3-11: page request group index (``QI_PGRP_IDX``).

The descriptor names no PCI segment: a response's ``dev`` is its rid,
completed with the segment of the unit's ``prq_report`` lines in the same
input when there are any.
"""
from __future__ import annotations

import re
from collections import defaultdict, deque
from typing import Any

import numpy as np

from ..types import FAULT_DTYPE, RESPONSE_DTYPE, Flag, Reason
from ._common import META_DTYPE, U64_MAX, LoadStats, PathLike, TraceError, shorten
from ._io import open_input
from .prq_report import CONTEXT, LINE, parse_line, text_blocks, timestamp_ns

__all__ = ["PAIR_DTYPE", "load_responses", "pair", "decode_page_group_response"]

QI_PGRP_RESP_TYPE = 0x9

_QI_LINE = re.compile(
    r"\s*" + CONTEXT + r"(?:intel_iommu:)?qi_submit:\s+(?P<kind>\S+)\s+(?P<unit>[^\s:]+):\s+"
    r"0x(?P<qw0>[0-9a-fA-F]+)\s+0x(?P<qw1>[0-9a-fA-F]+)\s+0x(?P<qw2>[0-9a-fA-F]+)\s+"
    r"0x(?P<qw3>[0-9a-fA-F]+)\s*")

#: One group of a capture and its response: the group's device, PASID
#: (0: none), index and IOMMU unit, the times of its first request, of its
#: last request (LPIG) and of the response, ``latency`` (response time
#: minus LPIG time), the number of requests, the response code as the
#: descriptor carries it, and whether a response was found.
PAIR_DTYPE = np.dtype([
    ("dev", "<u4"), ("pasid", "<u4"), ("grpid", "<u4"), ("unit", "<u2"),
    ("first_time", "<u8"), ("lpig_time", "<u8"), ("response_time", "<u8"),
    ("latency", "<u8"), ("nfaults", "<u4"), ("code", "<u4"), ("answered", "?"),
])


def decode_page_group_response(qw0: int, qw1: int) -> dict[str, int]:
    """The fields of a VT-d page group response descriptor."""
    if qw0 & 0xF != QI_PGRP_RESP_TYPE:
        raise ValueError(f"descriptor type {qw0 & 0xF}, not a page group response "
                         f"({QI_PGRP_RESP_TYPE})")
    if (qw0 | qw1) > U64_MAX:
        raise ValueError("descriptor quadword over 64 bits")
    return {"pasid_present": qw0 >> 4 & 1, "code": qw0 >> 12 & 0xF,
            "rid": qw0 >> 16 & 0xFFFF, "pasid": qw0 >> 32 & 0xFFFFF,
            "lpig": qw1 >> 2 & 1, "grpid": qw1 >> 3 & 0x1FF}


def load_responses(path: PathLike, *, skip_bad: bool = False, stats: LoadStats | None = None,
                   meta: bool = False) -> Any:
    """The page group responses of a text capture (``qi_submit`` events),
    as a ``RESPONSE_DTYPE`` array in file order (``meta=True``: with a
    ``META_DTYPE`` array, the IOMMU unit of each into ``stats.units``).

    ``code`` is the descriptor's response code as sent, ``flags``
    PASID_VALID when the descriptor carries a PASID, ``reason`` CALLER,
    ``cookie`` and ``nfaults`` 0. Other descriptor types are skipped.
    """
    st = stats if stats is not None else LoadStats()
    st.format = "qi_submit"
    rows: list[tuple[int, ...]] = []
    units: list[int] = []
    segment: dict[int, int] = {}
    with open_input(path) as src:
        st.compression = src.compression
        if not src.head.strip():
            raise TraceError("empty file", path=src.name)
        for first, block in text_blocks(src):
            text = bytes(block).decode("utf-8", errors="replace")
            for i, line in enumerate(text.split("\n")):
                if "prq_report:" in line:
                    m = LINE.fullmatch(line)
                    if m is not None:
                        try:
                            rec, unit, _, _ = parse_line(m)
                        except ValueError:
                            continue
                        segment.setdefault(st._unit(unit), rec[1] >> 16)
                    continue
                if "qi_submit:" not in line or line.lstrip()[:1] == "#":
                    continue
                try:
                    row = _response(line)
                    if row is None:
                        continue
                    units.append(st._unit(row[1]))
                    rows.append(row[0])
                except ValueError as e:
                    err = TraceError(f"{e}: {shorten(line)}", path=src.name, line=first + i)
                    if not skip_bad:
                        raise err from None
                    st._skip(err)
    out = np.zeros(len(rows), RESPONSE_DTYPE)
    if rows:
        table = np.array(rows, dtype=np.uint64)
        for i, field in enumerate(("time", "dev", "pasid", "grpid", "code", "flags")):
            out[field] = table[:, i]
    unit_ids = np.asarray(units, np.uint16)
    for unit_id, seg in segment.items():
        out["dev"][unit_ids == unit_id] |= np.uint32(seg << 16)
    out["reason"] = int(Reason.CALLER)
    st.records = len(out)
    st.time_source = "timestamp"
    if not len(out) and st.skipped:
        raise TraceError(f"no valid qi_submit line: all {st.skipped} were malformed "
                         f"(first: {st.errors[0]})", path=src.name)
    if not meta:
        return out
    info = np.zeros(len(out), META_DTYPE)
    info["unit"] = unit_ids
    info["seq"] = np.arange(len(out), dtype=np.uint64)
    return out, info


def _response(line: str) -> tuple[tuple[int, ...], str] | None:
    m = _QI_LINE.fullmatch(line)
    if m is None:
        raise ValueError("bad qi_submit line")
    qw0, qw1 = int(m["qw0"], 16), int(m["qw1"], 16)
    if qw0 & 0xF != QI_PGRP_RESP_TYPE:
        return None      # an invalidation, not a page response
    if m["sec"] is None:
        raise ValueError("qi_submit line without a timestamp")
    d = decode_page_group_response(qw0, qw1)
    time = timestamp_ns(m["sec"], m["frac"])
    if time > U64_MAX:
        raise ValueError(f"timestamp {time} ns out of range for u8")
    flags = int(Flag.PASID_VALID) if d["pasid_present"] else 0
    return (time, d["rid"], d["pasid"] if d["pasid_present"] else 0, d["grpid"], d["code"],
            flags), m["unit"]


def pair(requests: np.ndarray, responses: np.ndarray, *,
         request_meta: np.ndarray | None = None,
         response_meta: np.ndarray | None = None) -> np.ndarray:
    """Every group of ``requests`` with the response that answered it.

    A group is the requests of one (IOMMU unit, device, PASID, index) up to
    its LPIG; a response answers the oldest complete, unanswered group of
    its (unit, rid, PASID, index) whose LPIG came no later than the
    response (PASID 0 when the response carries none). Returns a
    ``PAIR_DTYPE`` array in LPIG order; ``answered`` is False for a group
    no response matched. Pass the metadata of ``load(..., meta=True)`` and
    ``load_responses(..., meta=True)`` (same ``LoadStats``) when the capture
    has several units.

    >>> import numpy as np, iopf
    >>> req = np.array([(10, 5, 1, 3, 1, 1, 0x1000, (0, 0)), (20, 5, 1, 3, 3, 1, 0x2000, (0, 0))],
    ...                dtype=iopf.FAULT_DTYPE)
    >>> resp = np.zeros(1, iopf.RESPONSE_DTYPE)
    >>> resp["time"], resp["dev"], resp["pasid"], resp["grpid"] = 95, 5, 1, 3
    >>> resp["flags"] = iopf.Flag.PASID_VALID
    >>> p = pair(req, resp)
    >>> int(p["latency"][0]), int(p["nfaults"][0]), bool(p["answered"][0])
    (75, 2, True)
    """
    requests = np.asarray(requests)
    responses = np.asarray(responses)
    if requests.dtype != FAULT_DTYPE or responses.dtype != RESPONSE_DTYPE:
        raise TypeError("pair() takes a FAULT_DTYPE and a RESPONSE_DTYPE array")
    req_unit = _units(request_meta, len(requests))
    resp_unit = _units(response_meta, len(responses))
    last_bit = int(Flag.LAST_PAGE)
    pasid_bit = int(Flag.PASID_VALID)
    # Requests first at equal times: a response cannot precede its LPIG.
    events = sorted([(t, 0, i) for i, t in enumerate(requests["time"].tolist())]
                    + [(t, 1, i) for i, t in enumerate(responses["time"].tolist())])
    req = [requests[n].tolist() for n in ("dev", "pasid", "grpid", "flags")]
    resp = [responses[n].tolist() for n in ("dev", "pasid", "grpid", "flags", "code")]
    rtime = requests["time"].tolist()
    stime = responses["time"].tolist()
    open_groups: dict[tuple[int, ...], list[int]] = {}
    waiting: dict[tuple[int, ...], deque[int]] = defaultdict(deque)
    groups: list[list[int]] = []
    for time, kind, i in events:
        if kind == 0:
            dev, pasid, grpid, flags = req[0][i], req[1][i], req[2][i], req[3][i]
            pasid = pasid if flags & pasid_bit else 0
            key = (req_unit[i], dev & 0xFFFF, pasid, grpid)
            g = open_groups.get(key)
            if g is None:
                g = open_groups[key] = [dev, pasid, grpid, req_unit[i], rtime[i], 0, 0, 0,
                                        0, 0, 0]
            g[8] += 1
            if flags & last_bit:
                g[5] = time
                del open_groups[key]
                waiting[key].append(len(groups))
                groups.append(g)
        else:
            dev, pasid, grpid, flags, code = (c[i] for c in resp)
            key = (resp_unit[i], dev & 0xFFFF, pasid if flags & pasid_bit else 0, grpid)
            queue = waiting.get(key)
            if queue:
                g = groups[queue.popleft()]
                g[6], g[7], g[9], g[10] = stime[i], stime[i] - g[5], code, 1
    out = np.zeros(len(groups), PAIR_DTYPE)
    if groups:
        table = np.array(groups, dtype=np.uint64)
        for j, name in enumerate(PAIR_DTYPE.names or ()):
            out[name] = table[:, j]
    return out


def _units(meta: np.ndarray | None, n: int) -> list[int]:
    if meta is None:
        return [0] * n
    if meta.dtype != META_DTYPE or len(meta) != n:
        raise ValueError("metadata must be a META_DTYPE array as long as its records")
    return meta["unit"].tolist()
