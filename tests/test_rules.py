"""One focused test per rule of docs/behaviour.md (grouping G1-G8, answers R1-R7,
flush/discard/remove/capacity/conservation F1-F6, presets).

Every test runs over the four strategies (``strategy`` fixture in
conftest.py) and, where faults are reported, through both ``Queue.report``
and ``Queue.report_batch`` (``feed`` fixture). "ref §x" names the section of the
developers' notes on the Linux kernel that the test follows; each test's
docstring says the kernel behaviour in words.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

import iopf
from iopf import (FAULT_DTYPE, RESPONSE_DTYPE, Fault, Flag, PageResponse, Perm, Policy, Reason,
                  Response)
from iopf.policies import AMD, LINUX, PCIE, SMMU_STALL, VTD

SUCCESS, INVALID, FAILURE = Response.SUCCESS, Response.INVALID, Response.FAILURE
PV, LASTF, NP, PRIV = Flag.PASID_VALID, Flag.LAST_PAGE, Flag.NEEDS_PASID, Flag.PRIV_DATA


# --- helpers --------------------------------------------------------------------------

def P(dev: int, pasid: int, grpid: int, addr: int = 0x1000, **kw) -> Fault:
    """A partial fault (no LAST_PAGE)."""
    return Fault(dev, pasid, grpid, addr, **kw)


def L(dev: int, pasid: int, grpid: int, addr: int = 0x1000, **kw) -> Fault:
    """A last-page fault (LPIG)."""
    return Fault(dev, pasid, grpid, addr, last=True, **kw)


def as_array(faults: list[Fault]) -> np.ndarray:
    return np.array([tuple(f) for f in faults], dtype=FAULT_DTYPE)


def addrs(group: iopf.Group) -> list[int]:
    return group.faults["addr"].tolist()


def take(q: iopf.Queue) -> list[PageResponse]:
    out = q.take_responses()
    assert out.dtype == RESPONSE_DTYPE
    return [PageResponse.from_record(r) for r in out]


def cookies(q: iopf.Queue) -> list[int]:
    return [g.cookie for g in q.pending()]


def snapshot(q: iopf.Queue) -> tuple:
    return (q.stats.as_dict(), cookies(q), q.partial_count, q.now)


class Recorder:
    """A handler that records the groups it gets and answers with ``code``."""

    def __init__(self, code: Response | None = None) -> None:
        self.code = code
        self.groups: list[iopf.Group] = []

    def __call__(self, group: iopf.Group) -> Response | None:
        self.groups.append(group)
        return self.code

    @property
    def cookies(self) -> list[int]:
        return [g.cookie for g in self.groups]


class Boom(Exception):
    pass


# --- presets (§6) -----------------------------------------------------------------------

DEFAULTS = dict(match_pasid=True, stall=False, stop_markers=True, priv_data_is_last=False,
                pasid_bits=20, grpid_bits=9, require_handler=False, no_handler_code=INVALID,
                handler_error_code=FAILURE, response_timeout=None, timeout_code=INVALID,
                queue_depth=None, overflow_code=SUCCESS, discard_on_overflow=False,
                flush_partial_on_detach=False, no_pasid=None, require_device=False,
                attach_adds_device=False)

LINUX_FIELDS = dict(match_pasid=False, require_handler=True, require_device=True, no_pasid=0)
PRESET_FIELDS = {
    "PCIE": (PCIE, {}),
    "LINUX": (LINUX, LINUX_FIELDS),
    "VTD": (VTD, dict(LINUX_FIELDS, queue_depth=2048, discard_on_overflow=True,
                      attach_adds_device=True)),
    "AMD": (AMD, dict(queue_depth=512)),
    "SMMU_STALL": (SMMU_STALL, dict(stall=True, grpid_bits=16, stop_markers=False)),
}


@pytest.mark.parametrize("name", list(PRESET_FIELDS))
def test_policy_presets(make_queue, name):
    """§6: every field of the presets PCIE, LINUX, VTD, AMD, SMMU_STALL; Policy is frozen."""
    preset, changes = PRESET_FIELDS[name]
    assert dataclasses.asdict(preset) == {**DEFAULTS, **changes}
    assert preset == Policy(**changes)
    assert iopf.policies.PCIE == Policy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.match_pasid = not preset.match_pasid  # type: ignore[misc]
    q = make_queue(preset)
    assert q.policy is preset


def test_default_policy_is_pcie(make_queue):
    """§6/§7: Queue() uses PCIE, the strict per-PASID default."""
    q = iopf.Queue(strategy=make_queue().strategy)
    assert q.policy == PCIE


# --- grouping rules (§3) -------------------------------------------------------------------

def test_G1_partial_is_held_without_response(make_queue, feed):
    """G1: a request without LAST_PAGE is stored as a partial fault and gets no response
    (ref §2.3: "a request that is not the last does not need to be ack'd")."""
    handler = Recorder(SUCCESS)
    q = make_queue(default_handler=handler)
    faults = [P(1, 5, 3, 0x1000, time=10), P(1, 5, 4, 0x2000, time=11),
              P(2, 5, 3, 0x3000, time=12), P(1, 6, 3, 0x4000, pasid_valid=False, time=13),
              P(1, 5, 3, 0x5000, needs_pasid=True, perm=Perm.WRITE, time=14),
              P(1, 5, 3, 0x6000, flags=PV | PRIV, time=15)]  # PRIV_DATA alone is not last
    assert feed(q, faults) == []
    if feed.mode == "report":
        extra = P(3, 1, 1)
        assert q.report(extra) is None  # report() of a partial returns None
        faults.append(extra)
    assert q.partial_count == len(faults)
    s = q.stats
    assert (s.faults_reported, s.partial_now, s.grouped, s.groups, s.pending_now, s.answered) \
        == (len(faults), len(faults), 0, 0, 0, 0)
    assert q.pending() == []
    assert handler.groups == []
    assert take(q) == []
    assert s.conserved()


def test_G2_group_arrival_order_lpig_last(make_queue, feed):
    """G2: an LPIG completes a group holding every partial of its key in arrival order,
    LPIG last; the partials leave the store (ref §2.4 ordering result)."""
    q = make_queue()
    faults = [P(1, 5, 3, 0xA000, time=1), P(1, 5, 9, 0xB000, time=2),
              P(1, 5, 3, 0xC000, time=3), P(2, 5, 3, 0xD000, time=4),
              P(1, 5, 3, 0xE000, time=5), L(1, 5, 3, 0xF000, perm=Perm.WRITE, time=6)]
    [g] = feed(q, faults)
    assert addrs(g) == [0xA000, 0xC000, 0xE000, 0xF000]
    assert g.faults.dtype == FAULT_DTYPE
    assert g.faults["time"].tolist() == [1, 3, 5, 6]
    assert (g.dev, g.pasid, g.grpid, g.time, len(g)) == (1, 5, 3, 6, 4)
    assert g.last == faults[-1]
    assert g.cookie > 0
    assert q.partial_count == 2  # other grpid, other device
    assert cookies(q) == [g.cookie]
    s = q.stats
    assert (s.grouped, s.groups, s.pending_now, s.partial_now) == (4, 1, 1, 2)
    assert take(q) == []  # no handler: pending, not answered


def test_G2_group_of_one(make_queue, feed):
    """G2: an LPIG with no partial is a normal group of one; a second LPIG with the same
    key after the first group formed is again a group of one (partials left the store)."""
    q = make_queue()
    g1, g2 = feed(q, [P(1, 5, 3, 0xA000), L(1, 5, 3, 0xB000), L(1, 5, 3, 0xC000, time=9)])
    assert addrs(g1) == [0xA000, 0xB000]
    assert addrs(g2) == [0xC000]
    assert len(g2) == 1 and g2.time == 9 and g2.last.addr == 0xC000
    assert g1.cookie != g2.cookie
    [g3] = feed(q, [L(7, 0, 0, 0xD000)])
    assert len(g3) == 1 and g3.cookie not in (g1.cookie, g2.cookie)
    assert q.partial_count == 0
    assert cookies(q) == [g1.cookie, g2.cookie, g3.cookie]


def test_G3_match_pasid_keys_on_pasid_and_no_pasid(make_queue, feed):
    """G3 (match_pasid=True): other-PASID partials with the same grpid are NOT swept in;
    the no-PASID key (PASID_VALID clear, whatever the pasid field) is distinct from every
    real PASID, pasid 0 and the largest 20-bit PASID included."""
    q = make_queue(PCIE)
    faults = [P(1, 1, 3, 0xA000), P(1, 2, 3, 0xB000), P(1, 0, 3, 0xC000),
              P(1, 0, 3, 0xD000, pasid_valid=False), P(1, 7, 3, 0xE000, pasid_valid=False),
              P(1, 0xFFFFF, 3, 0xF000),
              L(1, 1, 3, 0x1A000), L(1, 0, 3, 0x1D000, pasid_valid=False)]
    g1, gn = feed(q, faults)
    assert addrs(g1) == [0xA000, 0x1A000] and g1.pasid == 1
    assert addrs(gn) == [0xD000, 0xE000, 0x1D000]  # both no-PASID partials, not pasid 0
    assert not gn.last.pasid_valid
    assert q.partial_count == 3
    g0, gb, gmax = feed(q, [L(1, 0, 3, 0x10000), L(1, 2, 3, 0x20000),
                            L(1, 0xFFFFF, 3, 0x30000)])
    assert addrs(g0) == [0xC000, 0x10000]
    assert addrs(gb) == [0xB000, 0x20000]
    assert addrs(gmax) == [0xF000, 0x30000]
    assert q.partial_count == 0
    assert q.stats.conserved()


@pytest.mark.parametrize("policy", [PCIE.replace(match_pasid=False), LINUX],
                         ids=["match_pasid_False", "LINUX"])
def test_G3_no_match_pasid_sweeps_other_pasids(make_queue, feed, policy):
    """G3 (match_pasid=False, as Linux): partials of another PASID (and no-PASID ones) with
    the same grpid on the same device are swept in; the group takes its LPIG's PASID and
    its handler (ref §2.5 a, c)."""
    h1, h2, hn = Recorder(), Recorder(SUCCESS), Recorder()
    q = make_queue(policy)
    q.add_device(1)
    q.add_device(2)
    q.attach(1, 1, h1)
    q.attach(1, 2, h2)
    q.attach(1, None, hn)
    q.attach(2, 1, Recorder())
    faults = [P(1, 1, 3, 0xA000, time=1), P(1, 0, 3, 0xB000, pasid_valid=False, time=2),
              P(2, 1, 3, 0xC000, time=3), P(1, 1, 4, 0xD000, time=4),
              L(1, 2, 3, 0xE000, needs_pasid=True, time=5)]
    [g] = feed(q, faults)
    assert addrs(g) == [0xA000, 0xB000, 0xE000]
    assert (g.dev, g.pasid, g.grpid) == (1, 2, 3)
    assert h2.cookies == [g.cookie]
    assert h1.groups == [] and hn.groups == []
    assert q.partial_count == 2  # the other device's and the other grpid's
    [r] = take(q)
    assert (r.dev, r.pasid, r.grpid, r.code, r.cookie, r.nfaults, r.reason, r.time) \
        == (1, 2, 3, SUCCESS, g.cookie, 3, Reason.HANDLER, 5)
    assert r.flags == PV
    assert q.stats.conserved()


@pytest.mark.parametrize("policy", [PCIE, LINUX], ids=["PCIE", "LINUX"])
def test_G4_stale_partial_swept_into_next_group(make_queue, feed, policy):
    """G4: a partial whose LPIG never came is swept into the next group with the same key
    when the 9-bit index is reused (ref §2.5 b)."""
    q = make_queue(policy)
    q.add_device(1)
    q.attach(1, 5, Recorder())
    faults = [P(1, 5, 7, 0xA000, time=1),  # its LPIG is lost
              P(1, 5, 8, 0xB000, time=2), L(1, 5, 8, 0xC000, time=3),
              P(1, 5, 7, 0xD000, time=4), L(1, 5, 7, 0xE000, time=5)]
    g8, g7 = feed(q, faults)
    assert addrs(g8) == [0xB000, 0xC000]
    assert addrs(g7) == [0xA000, 0xD000, 0xE000]
    assert q.partial_count == 0


@pytest.mark.parametrize("end", ["lpig", "flush", "discard"])
def test_G4_key_reused_right_after_its_group_ends(make_queue, feed, end):
    """G4: a partial group ends (its LPIG, a flush of its PASID, a discard) and
    the very next request reuses its key: it opens a new group and takes
    nothing from the old one (the compiled core tries the group of the last
    partial before any search, so this is the case where a freed group could
    be found again)."""
    q = make_queue()
    q.add_device(1)
    q.attach(1, 5, Recorder())
    first = [P(1, 5, 7, 0xA000, time=1), P(1, 5, 7, 0xB000, time=2)]
    ends = {"lpig": [L(1, 5, 7, 0xC000, time=3)], "flush": [], "discard": []}
    done = feed(q, first + ends[end])
    if end == "flush":
        q.flush_pasid(1, 5)
    elif end == "discard":
        q.discard_partial()
    assert q.partial_count == 0
    assert [addrs(g) for g in done] == ([[0xA000, 0xB000, 0xC000]] if end == "lpig" else [])
    [g] = feed(q, [P(1, 5, 7, 0xD000, time=4), P(1, 5, 8, 0xE000, time=5),
                   P(1, 5, 7, 0xF000, time=6), L(1, 5, 7, 0x10000, time=7)])
    assert addrs(g) == [0xD000, 0xF000, 0x10000]
    assert q.partial_count == 1


@pytest.mark.parametrize("match_pasid", [True, False], ids=["match_pasid", "across_pasids"])
def test_G2_group_larger_than_the_output_room_is_collected_whole(make_queue, feed, match_pasid):
    """G2: an LPIG completes a group of 1500 partials held by an earlier batch
    (or call), among partials of other groups of the device: the group is
    collected whole, in arrival order, though the output had room for one
    request (the compiled core counts the group then, before anything changes)."""
    q = make_queue(PCIE.replace(match_pasid=match_pasid))
    pasids = [5, 6] if not match_pasid else [5, 5]     # across PASIDs: one group
    held = [P(1, pasids[i % 2], 7 if i % 3 else 8, i << 12, time=i) for i in range(2250)]
    assert feed(q, held) == []
    q.report_batch(as_array([P(2, 5, 7, time=3000)]))    # the output shrinks back to one request
    [g] = feed(q, [L(1, 5, 7, 0xFFFF000, time=3001)])
    assert addrs(g) == [f.addr for f in held if f.grpid == 7] + [0xFFFF000]
    assert q.partial_count == 750 + 1


@pytest.mark.parametrize("policy", [PCIE, LINUX], ids=["PCIE", "LINUX"])
def test_G4_partials_survive_detach_and_are_absorbed(make_queue, feed, policy):
    """G4/F2: partials survive a PASID detach and are absorbed by the next LPIG with the
    same grpid (ref §4.2, §8 fix 6: the per-PASID discard was never merged)."""
    q = make_queue(policy)
    q.add_device(1)
    q.attach(1, 5, Recorder())
    assert feed(q, [P(1, 5, 7, 0xA000, time=1)]) == []
    q.detach(1, 5)
    assert q.partial_count == 1
    assert take(q) == []
    h = Recorder()
    q.attach(1, 5, h)
    [g] = feed(q, [L(1, 5, 7, 0xB000, time=2)])
    assert addrs(g) == [0xA000, 0xB000]
    assert h.cookies == [g.cookie]


def test_G5_stall_every_request_is_a_group_of_one(make_queue, feed):
    """G5: in the stall model (SMMUv3) every request is a group of one, whatever its
    LAST_PAGE bit; grpid is the 16-bit stall tag (ref §5.2)."""
    q = make_queue(SMMU_STALL)
    faults = [P(1, 5, 0x1234, 0xA000, time=1), L(1, 5, 0x1234, 0xB000, time=2),
              P(1, 5, 0xFFFF, 0xC000, pasid_valid=False, time=3),
              P(1, 5, 0x1234, 0xD000, time=4), L(2, 0, 0, 0xE000, time=5)]
    groups = feed(q, faults)
    assert [addrs(g) for g in groups] == [[0xA000], [0xB000], [0xC000], [0xD000], [0xE000]]
    assert [g.grpid for g in groups] == [0x1234, 0x1234, 0xFFFF, 0x1234, 0]
    assert len({g.cookie for g in groups}) == 5
    assert q.partial_count == 0
    s = q.stats
    assert (s.groups, s.grouped, s.pending_now) == (5, 5, 5)
    assert q.respond(groups[1], SUCCESS) and q.respond(groups[0], FAILURE)
    assert [(r.cookie, r.code, r.nfaults) for r in take(q)] \
        == [(groups[1].cookie, SUCCESS, 1), (groups[0].cookie, FAILURE, 1)]


@pytest.mark.parametrize("policy", [PCIE, LINUX], ids=["PCIE", "LINUX"])
def test_G6_stop_marker_dropped(make_queue, feed, policy):
    """G6: with stop_markers, an LPIG with neither READ nor WRITE is dropped: no group, no
    response, counted; it does not sweep partials (ref §5.3, §8 fix 10)."""
    h = Recorder(SUCCESS)
    q = make_queue(policy)
    q.add_device(1)
    q.attach(1, 5, h)
    faults = [P(1, 5, 3, 0xA000, time=1),
              L(1, 5, 3, 0xB000, perm=0, time=2),
              L(1, 5, 3, 0xC000, perm=Perm.EXEC | Perm.PRIV, time=3),
              L(2, 5, 3, 0xD000, perm=0, time=4),  # no handler for dev 2: still no response
              P(1, 5, 3, 0xE000, perm=0, time=5)]  # not last: a partial, not a stop marker
    assert feed(q, faults) == []
    s = q.stats
    assert (s.stop_markers, s.rejected, s.groups) == (3, 0, 0)
    assert q.partial_count == 2
    assert take(q) == [] and h.groups == []
    [g] = feed(q, [L(1, 5, 3, 0xF000, perm=Perm.WRITE, time=6)])
    assert addrs(g) == [0xA000, 0xE000, 0xF000]
    assert q.stats.conserved()


def test_G6_stop_marker_is_a_group_without_the_policy(make_queue, feed):
    """G6 (contrast): without stop_markers (SMMU_STALL's setting) an LPIG with no
    READ/WRITE is an ordinary LPIG."""
    q = make_queue(PCIE.replace(stop_markers=False))
    [g] = feed(q, [P(1, 5, 3, 0xA000), L(1, 5, 3, 0xB000, perm=0)])
    assert addrs(g) == [0xA000, 0xB000]
    assert q.stats.stop_markers == 0


@pytest.mark.parametrize("priv_is_last", [True, False])
def test_G7_priv_data_is_last(make_queue, feed, priv_is_last):
    """G7: with priv_data_is_last (VT-d before Linux 6.10) a PRIV_DATA request is an LPIG
    and sweeps its key's partials; otherwise it is a partial (ref §5.3)."""
    q = make_queue(PCIE.replace(priv_data_is_last=priv_is_last))
    faults = [P(1, 5, 3, 0xA000, time=1),
              P(1, 5, 3, 0xB000, flags=PV | PRIV, private=(0xAB, 0xCD), time=2)]
    groups = feed(q, faults)
    if priv_is_last:
        [g] = groups
        assert addrs(g) == [0xA000, 0xB000]
        assert g.last.flags & PRIV and g.last.private == (0xAB, 0xCD)
        assert q.partial_count == 0
    else:
        assert groups == []
        assert q.partial_count == 2


BAD_FIELDS = [
    ("pasid", PCIE, dict(pasid=1 << 20)),
    ("grpid", PCIE, dict(grpid=512)),
    ("grpid", SMMU_STALL, dict(grpid=1 << 16)),
    ("pasid", PCIE.replace(pasid_bits=5), dict(pasid=32)),
    ("flags", PCIE, dict(flags=0x13)),
    ("perm", PCIE, dict(perm=0x11)),
]


def _populate(q: iopf.Queue) -> None:
    """A partial, a pending group and one response waiting in the outbox."""
    q.report(P(1, 5, 3, 0xA000, time=10))
    q.report(L(1, 5, 4, 0xB000, time=11))
    g = q.report(L(1, 5, 6, 0xC000, time=12))
    assert g is not None and g.respond(SUCCESS)


@pytest.mark.parametrize("field,policy,bad", BAD_FIELDS,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_FIELDS)])
def test_G8_field_checks_report(make_queue, field, policy, bad):
    """G8: report() raises ValueError naming the field that does not fit the policy, and
    leaves the queue unchanged (stats, pending, partials, responses, time)."""
    q = make_queue(policy)
    _populate(q)
    before = snapshot(q)
    fields = dict(dev=1, pasid=5, grpid=3, addr=0xD000, time=10**9)
    fields.update(bad)
    with pytest.raises(ValueError, match=field):   # flags and perm: Fault itself refuses them
        fault = Fault(fields.pop("dev"), fields.pop("pasid"), fields.pop("grpid"),
                      fields.pop("addr"), last=True, **fields)
        q.report(fault)
    assert snapshot(q) == before
    [r] = take(q)
    assert r.grpid == 6
    # the largest values that fit are accepted
    ok = Fault(1, (1 << policy.pasid_bits) - 1, (1 << policy.grpid_bits) - 1, 0, last=True,
               flags=0xF, perm=0xF)
    assert q.report(ok) is not None


@pytest.mark.parametrize("field,policy,bad", BAD_FIELDS,
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_FIELDS)])
def test_G8_field_checks_batch(make_queue, field, policy, bad):
    """G8: report_batch() with a bad record raises ValueError naming the field and the
    record's index before any record of the batch is applied."""
    h = Recorder(SUCCESS)
    q = make_queue(policy)
    _populate(q)
    q.attach(1, 5, h)
    before = snapshot(q)
    arr = as_array([P(1, 5, 3, 0xD000, time=20), L(1, 5, 3, 0xE000, time=21),
                    P(1, 5, 9, 0xF000, time=22), L(1, 5, 3, 0x10000, time=23),
                    P(1, 5, 3, 0x11000, time=24)])
    for name, value in bad.items():
        arr[3][name] = value
    with pytest.raises(ValueError, match=field) as info:
        q.report_batch(arr)
    assert re.search(r"\b3\b", str(info.value)), "the message must name record index 3"
    assert snapshot(q) == before
    assert h.groups == []
    [r] = take(q)
    assert r.grpid == 6
    # the same batch without the bad record goes through
    q.report_batch(np.delete(arr, 3))
    if policy.stall:  # every record is a group of one
        assert [addrs(g) for g in h.groups] == [[0xD000], [0xE000], [0xF000], [0x11000]]
        assert q.partial_count == 0
    else:
        [g] = h.groups
        assert addrs(g) == [0xA000, 0xD000, 0xE000] and q.partial_count == 2


# --- handlers and responses (§4) -------------------------------------------------------------

def test_R1_routing_attached_default_and_no_pasid(make_queue, feed):
    """R1: a group goes to the handler attached to (dev, pasid) of its LPIG, pasid None for
    requests without PASID_VALID, else to the default handler; a returned code answers it."""
    hd, h15, hn, h26 = Recorder(SUCCESS), Recorder(SUCCESS), Recorder(INVALID), Recorder(FAILURE)
    q = make_queue(default_handler=hd)
    q.attach(1, 5, h15)
    q.attach(1, None, hn)
    q.attach(2, 6, h26)
    faults = [L(1, 5, 0, time=10),                     # attached (1, 5)
              L(1, 6, 1, time=11),                     # default
              L(1, 5, 2, pasid_valid=False, time=12),  # (1, None), not (1, 5)
              L(2, 5, 3, time=13),                     # default: other device
              L(1, 0, 4, time=14),                     # pasid 0 is not None: default
              L(2, 6, 5, time=15)]                     # attached (2, 6)
    groups = feed(q, faults)
    assert [g.grpid for g in groups] == [0, 1, 2, 3, 4, 5]
    assert [g.grpid for g in h15.groups] == [0]
    assert [g.grpid for g in hd.groups] == [1, 3, 4]
    assert [g.grpid for g in hn.groups] == [2]
    assert [g.grpid for g in h26.groups] == [5]
    assert sorted(h15.cookies + hd.cookies + hn.cookies + h26.cookies) \
        == sorted(g.cookie for g in groups)
    rs = take(q)
    assert [(r.grpid, r.code, r.reason, r.time) for r in rs] == [
        (0, SUCCESS, Reason.HANDLER, 10), (1, SUCCESS, Reason.HANDLER, 11),
        (2, INVALID, Reason.HANDLER, 12), (3, SUCCESS, Reason.HANDLER, 13),
        (4, SUCCESS, Reason.HANDLER, 14), (5, FAILURE, Reason.HANDLER, 15)]
    assert [r.cookie for r in rs] == [g.cookie for g in groups]
    assert q.pending() == []
    # answered by the handler: a later answer is stale (R4)
    assert groups[0].respond(SUCCESS) is False


def test_R1_handler_returning_none_leaves_group_pending(make_queue, feed):
    """R1: a handler returning None leaves the group pending, answered later with
    Group.respond or Queue.respond(cookie, code), at the latest time seen or time=."""
    h = Recorder(None)
    q = make_queue(default_handler=h)
    g1, g2, g3 = feed(q, [P(1, 5, 1, time=5), L(1, 5, 1, time=10), L(1, 5, 2, time=20),
                          L(1, 5, 3, time=30)])
    assert h.cookies == [g1.cookie, g2.cookie, g3.cookie] == cookies(q)
    assert take(q) == []
    assert g2.respond(FAILURE) is True
    assert q.respond(g1.cookie, SUCCESS, time=99) is True
    assert h.groups[2].respond(INVALID, time=100) is True
    rs = take(q)
    assert [(r.cookie, r.code, r.reason, r.time, r.nfaults) for r in rs] == [
        (g2.cookie, FAILURE, Reason.CALLER, 30, 1),
        (g1.cookie, SUCCESS, Reason.CALLER, 99, 2),
        (g3.cookie, INVALID, Reason.CALLER, 100, 1)]
    assert q.pending() == []


def test_R2_no_handler_group_returned_pending(make_queue, feed):
    """R2: with neither an attached nor a default handler the group is returned to the
    caller and stays pending until the caller answers."""
    q = make_queue(PCIE)
    q.attach(1, 6, Recorder(SUCCESS))  # another PASID's handler does not take it
    [g] = feed(q, [P(1, 5, 3, 0xA000, time=1), L(1, 5, 3, 0xB000, time=2)])
    assert addrs(g) == [0xA000, 0xB000]
    assert cookies(q) == [g.cookie]
    assert take(q) == []
    assert q.respond(g, SUCCESS)
    [r] = take(q)
    assert (r.cookie, r.code, r.reason, r.nfaults) == (g.cookie, SUCCESS, Reason.CALLER, 2)


@pytest.mark.parametrize("policy", [LINUX, PCIE.replace(require_handler=True,
                                                        no_handler_code=FAILURE)],
                         ids=["LINUX", "require_handler_FAILURE"])
def test_R2_require_handler_answers_every_request(make_queue, feed, policy):
    """R2: with require_handler, every request whose (dev, pasid) has no handler, last or
    not, is answered at once with no_handler_code, not stored, counted `rejected`
    (ref §2.8, §8 fix 1: Linux 6.11+ answers non-last requests too)."""
    code = policy.no_handler_code
    h = Recorder()
    q = make_queue(policy)
    q.add_device(1)
    q.add_device(2)
    q.attach(1, 5, h)
    faults = [P(1, 6, 3, 0xA000, time=10),
              P(1, 6, 3, 0xB000, needs_pasid=True, time=11),
              L(1, 6, 3, 0xC000, time=12),
              P(1, 5, 3, 0xD000, time=13),  # has a handler: stored
              P(2, 5, 3, 0xE000, pasid_valid=False, time=14),
              L(1, 5, 3, 0xF000, pasid_valid=False, time=15)]  # (1, None) has no handler
    assert feed(q, faults) == []
    rs = take(q)
    assert [(r.time, r.dev, r.pasid, r.grpid, r.code, r.cookie, r.nfaults, r.reason)
            for r in rs] == [(t, d, p, 3, code, 0, 1, Reason.NO_HANDLER)
                             for t, d, p in [(10, 1, 6), (11, 1, 6), (12, 1, 6), (14, 2, 5),
                                             (15, 1, 5)]]
    assert [r.flags for r in rs] == [0, PV, 0, 0, 0]  # R5 applies to these answers too
    s = q.stats
    assert (s.rejected, s.partial_now, s.groups, s.faults_reported) == (5, 1, 0, 6)
    assert s.conserved()
    # the rejected partials were not stored: a later group of (1, 6) does not hold them
    q.attach(1, 6, h)
    [g] = feed(q, [L(1, 6, 3, 0x10000, time=20)])
    assert 0xA000 not in addrs(g) and 0xB000 not in addrs(g)
    assert addrs(g)[-1] == 0x10000


def test_R2_require_handler_satisfied_by_default_handler(make_queue, feed):
    """R2: under require_handler a default handler counts as a handler."""
    hd = Recorder()
    q = make_queue(LINUX, default_handler=hd)
    q.add_device(1)
    [g] = feed(q, [P(1, 6, 3, 0xA000), L(1, 6, 3, 0xB000)])
    assert addrs(g) == [0xA000, 0xB000]
    assert hd.cookies == [g.cookie]
    assert q.stats.rejected == 0 and take(q) == []


@pytest.mark.parametrize("policy", [PCIE, PCIE.replace(handler_error_code=INVALID)],
                         ids=["FAILURE", "INVALID"])
def test_R3_handler_raises(make_queue, feed, policy):
    """R3: a handler that raises: the group is answered with handler_error_code (FAILURE,
    ref §2.7 err_abort) and the exception propagates after the response is recorded. A
    batch is completed first, then the first exception is re-raised."""

    def handler(group):
        if group.grpid == 1:
            raise Boom(group.cookie)
        return SUCCESS

    q = make_queue(policy, default_handler=handler)
    faults = [P(1, 5, 1, 0xA000, time=1), L(1, 5, 1, 0xB000, time=2),  # raises
              P(1, 5, 2, 0xC000, time=3), L(1, 5, 2, 0xD000, time=4),  # answered SUCCESS
              P(1, 5, 3, 0xE000, time=5)]
    if feed.mode == "report":
        assert q.report(faults[0]) is None
        with pytest.raises(Boom):
            q.report(faults[1])
        for f in faults[2:]:
            q.report(f)
    else:
        with pytest.raises(Boom):
            q.report_batch(as_array(faults))
    rs = take(q)
    assert [(r.grpid, r.code, r.nfaults, r.time) for r in rs] == [
        (1, policy.handler_error_code, 2, 2), (2, SUCCESS, 2, 4)]
    assert [r.reason for r in rs] == [Reason.HANDLER_ERROR, Reason.HANDLER]
    failed = rs[0].cookie
    assert failed > 0 and q.pending() == [] and q.partial_count == 1
    s = q.stats
    assert (s.groups, s.answered, s.pending_now) == (2, 2, 0)
    assert q.respond(failed, SUCCESS) is False  # R4
    assert q.stats.stale_responses == 1 and take(q) == []


def test_R3_handler_raises_response_delivered_to_on_response(make_queue, feed):
    """R3 + R6: with on_response, the handler-error response reaches on_response before
    the exception propagates ("after the response is recorded")."""
    got: list[PageResponse] = []

    def handler(group):
        raise Boom()

    q = make_queue(default_handler=handler, on_response=got.append)
    with pytest.raises(Boom):
        feed(q, [P(1, 5, 1, 0xA000, time=1), L(1, 5, 1, 0xB000, time=2)])
    assert [(r.grpid, r.code, r.reason, r.nfaults) for r in got] == [
        (1, FAILURE, Reason.HANDLER_ERROR, 2)]


R4_PATHS = ["respond", "handler", "flush", "detach", "remove", "timeout"]


@pytest.mark.parametrize("path", R4_PATHS)
def test_R4_one_response_per_group(make_queue, feed, path):
    """R4: exactly one response per group; a second one, or one after a flush, detach,
    removal or timeout, sends nothing, returns False and counts a stale response
    (ref §3.1: a response to a group no longer pending is a no-op; §8 fix 2)."""
    h = Recorder(SUCCESS if path == "handler" else None)
    q = make_queue(PCIE.replace(response_timeout=10))
    q.attach(1, 5, h)
    [g] = feed(q, [P(1, 5, 3, time=100), L(1, 5, 3, time=100)])
    first = {"respond": lambda: q.respond(g, FAILURE), "handler": lambda: None,
             "flush": lambda: q.flush_pasid(1, 5), "detach": lambda: q.detach(1, 5),
             "remove": lambda: q.remove_device(1), "timeout": lambda: q.expire(110)}[path]
    first()
    [r] = take(q)
    assert r.cookie == g.cookie
    assert q.pending() == []
    assert g.respond(SUCCESS) is False
    assert q.respond(g.cookie, INVALID) is False
    assert h.groups[0].respond(SUCCESS) is False
    assert q.respond_batch([g.cookie], [SUCCESS]).tolist() == [False]
    assert q.respond(123456, SUCCESS) is False  # never a cookie of this queue
    assert take(q) == []
    s = q.stats
    assert s.stale_responses == 5
    assert (s.groups, s.answered, s.pending_now) == (1, 1, 0)


R5_CASES = [  # (LPIG flags, partial flags, response flags)
    (PV | NP | LASTF, PV, PV),
    (PV | LASTF, PV | NP, 0),   # the LPIG decides, not the partials
    (NP | LASTF, NP, 0),        # NEEDS_PASID without PASID_VALID
    (LASTF, 0, 0),
]


@pytest.mark.parametrize("lpig_flags,partial_flags,expected", R5_CASES,
                         ids=["PV+NP", "PV", "NP", "none"])
@pytest.mark.parametrize("by", ["caller", "handler"])
def test_R5_response_pasid_only_if_needed(make_queue, feed, lpig_flags, partial_flags,
                                           expected, by):
    """R5: a response carries the PASID (PASID_VALID in flags) only if the LPIG had both
    PASID_VALID and NEEDS_PASID (ref §3.2)."""
    q = make_queue(PCIE.replace(match_pasid=False),
                   default_handler=Recorder(SUCCESS) if by == "handler" else None)
    [g] = feed(q, [P(1, 9, 3, 0xA000, flags=partial_flags),
                   Fault(1, 9, 3, 0xB000, flags=lpig_flags)])
    if by == "caller":
        assert g.respond(SUCCESS)
    [r] = take(q)
    assert r.flags == expected
    assert (r.pasid, r.grpid, r.nfaults) == (9, 3, 2)


def _r6_scenario(q: iopf.Queue, feed) -> list[int]:
    g1, g2, g3, g4 = feed(q, [L(1, 5, 1, time=1), L(1, 5, 2, time=2), L(1, 5, 3, time=3),
                              L(1, 5, 4, time=4)])  # grpid 2 and 4 answered by the handler
    assert q.respond(g3, FAILURE) and q.respond(g1, INVALID)
    q.flush_pasid(1, 5)  # nothing pending left: no response
    return [g2.cookie, g4.cookie, g3.cookie, g1.cookie]


def _even_handler(group):
    return SUCCESS if group.grpid % 2 == 0 else None


def test_R6_on_response_gets_page_responses_in_order(make_queue, feed):
    """R6: with on_response, each response is passed as an iopf.PageResponse named tuple,
    in the order sent; the outbox stays empty."""
    got: list[PageResponse] = []
    q = make_queue(default_handler=_even_handler, on_response=got.append)
    order = _r6_scenario(q, feed)
    assert [r.cookie for r in got] == order
    assert all(isinstance(r, PageResponse) for r in got)
    assert [r.code for r in got] == [SUCCESS, SUCCESS, FAILURE, INVALID]
    assert all(isinstance(r.code, Response) and isinstance(r.reason, Reason) for r in got)
    assert got[0]._fields == RESPONSE_DTYPE.names
    assert len(q.take_responses()) == 0
    # the same scenario through the outbox gives the same responses
    q2 = make_queue(default_handler=_even_handler)
    _r6_scenario(q2, feed)
    assert [tuple(r) for r in take(q2)] == [tuple(r) for r in got]


def test_R6_outbox_order_and_take_empties(make_queue, feed):
    """R6: without on_response, take_responses() returns a RESPONSE_DTYPE array in the order
    sent and empties the outbox."""
    q = make_queue(default_handler=_even_handler)
    order = _r6_scenario(q, feed)
    out = q.take_responses()
    assert out.dtype == RESPONSE_DTYPE
    assert out["cookie"].tolist() == order
    assert out["code"].tolist() == [0, 0, 2, 1]
    assert out["reason"].tolist() == [Reason.HANDLER, Reason.HANDLER, Reason.CALLER,
                                      Reason.CALLER]
    again = q.take_responses()
    assert again.dtype == RESPONSE_DTYPE and len(again) == 0


@pytest.mark.parametrize("code", [INVALID, FAILURE])
def test_R7_expire_exact_boundary(make_queue, feed, code):
    """R7: expire(now) answers every pending group formed at or before now - timeout (at
    the exact boundary too, not one ns later) with timeout_code, at time `now`; a group's
    time is its LPIG's; time is always an argument, never a clock."""
    q = make_queue(PCIE.replace(response_timeout=100, timeout_code=code))
    g1, g2 = feed(q, [P(1, 5, 1, time=0), L(1, 5, 1, time=1000), L(1, 5, 2, time=1001)])
    feed(q, [P(2, 5, 1, time=5000)])  # the queue has seen t=5000; expire uses its argument
    q.expire(1099)
    assert take(q) == [] and cookies(q) == [g1.cookie, g2.cookie]
    q.expire(1100)
    [r] = take(q)
    assert (r.cookie, r.code, r.reason, r.time, r.nfaults) \
        == (g1.cookie, code, Reason.TIMEOUT, 1100, 2)
    assert cookies(q) == [g2.cookie]
    q.expire(1100)
    assert take(q) == []
    q.expire(1101)
    [r] = take(q)
    assert (r.cookie, r.time) == (g2.cookie, 1101)
    assert q.pending() == []
    assert g1.respond(SUCCESS) is False


def test_R7_no_timeout_never_expires(make_queue, feed):
    """R7: without response_timeout, expire() answers nothing."""
    q = make_queue(PCIE)
    [g] = feed(q, [L(1, 5, 1, time=1)])
    q.expire(10**15)
    assert take(q) == [] and cookies(q) == [g.cookie]


# --- flush, detach, discard, remove, capacity (§5) ----------------------------------------

@pytest.mark.parametrize("code", [None, FAILURE, SUCCESS])
def test_F1_flush_pasid(make_queue, feed, code):
    """F1: flush_pasid(dev, pasid, code) drops every partial of that (dev, pasid) only and
    answers its pending groups with code (default INVALID), reason FLUSHED; other PASIDs,
    the no-PASID key and other devices are untouched."""
    q = make_queue(PCIE)
    partials = [P(1, 1, 3, 0xA000), P(1, 1, 4, 0xB000), P(1, 2, 3, 0xC000),
                P(2, 1, 3, 0xD000), P(1, 1, 3, 0xE000, pasid_valid=False)]
    g11, g12, g21, g11b = feed(q, partials + [L(1, 1, 5, time=1), L(1, 2, 5, time=2),
                                              L(2, 1, 5, time=3), L(1, 1, 6, time=4)])
    kw = {} if code is None else {"code": code}
    q.flush_pasid(1, 1, time=777, **kw)
    want = INVALID if code is None else code
    assert [(r.cookie, r.code, r.reason, r.time, r.pasid) for r in take(q)] == [
        (g11.cookie, want, Reason.FLUSHED, 777, 1), (g11b.cookie, want, Reason.FLUSHED, 777, 1)]
    assert cookies(q) == [g12.cookie, g21.cookie]
    assert q.partial_count == 3
    assert q.stats.flushed == 2
    gc, ga, gd, ge = feed(q, [L(1, 2, 3, 0x1C000), L(1, 1, 3, 0x1A000), L(2, 1, 3, 0x1D000),
                              L(1, 0, 3, 0x1E000, pasid_valid=False)])
    assert addrs(gc) == [0xC000, 0x1C000]
    assert addrs(ga) == [0x1A000]
    assert addrs(gd) == [0xD000, 0x1D000]
    assert addrs(ge) == [0xE000, 0x1E000]
    assert q.stats.conserved()


def test_F1_flush_no_pasid_key(make_queue, feed):
    """F1: flush_pasid(dev, None) flushes the no-PASID requests of dev, not pasid 0."""
    q = make_queue(PCIE)
    [gn] = feed(q, [P(1, 0, 3, 0xA000, pasid_valid=False), P(1, 0, 3, 0xB000),
                    L(1, 0, 4, 0xC000, pasid_valid=False)])
    q.flush_pasid(1, None)
    [r] = take(q)
    assert (r.cookie, r.reason) == (gn.cookie, Reason.FLUSHED)
    assert q.partial_count == 1
    [g0] = feed(q, [L(1, 0, 3, 0xD000)])
    assert addrs(g0) == [0xB000, 0xD000]


def test_F1_flush_with_match_pasid_false(make_queue, feed):
    """F1 with match_pasid=False: partials sharing a (dev, grpid) key with other PASIDs are
    dropped only if they are of the flushed PASID."""
    q = make_queue(PCIE.replace(match_pasid=False))
    assert feed(q, [P(1, 1, 3, 0xA000), P(1, 2, 3, 0xB000), P(1, 1, 3, 0xC000),
                    P(1, 0, 3, 0xD000, pasid_valid=False)]) == []
    q.flush_pasid(1, 1)
    assert take(q) == []
    assert q.partial_count == 2 and q.stats.flushed == 2
    [g] = feed(q, [L(1, 2, 3, 0xE000)])
    assert addrs(g) == [0xB000, 0xD000, 0xE000]


@pytest.mark.parametrize("flush_partial", [False, True])
def test_F2_detach(make_queue, feed, flush_partial):
    """F2: detach answers the attachment's pending groups INVALID (reason DETACHED, iommufd
    ref §4.7); partials stay (Linux, ref §4.2) unless flush_partial_on_detach."""
    h1, h2 = Recorder(), Recorder()
    q = make_queue(PCIE.replace(flush_partial_on_detach=flush_partial))
    q.attach(1, 1, h1)
    q.attach(1, 2, h2)
    ga, gb, gc = feed(q, [P(1, 1, 3, 0xA000), P(1, 2, 3, 0xB000), L(1, 1, 5, time=1),
                          L(1, 1, 6, time=2), L(1, 2, 5, time=3)])
    q.detach(1, 1, time=500)
    # newest first, as iommufd_auto_response_faults answers unread groups (R8)
    assert [(r.cookie, r.code, r.reason, r.time) for r in take(q)] == [
        (gb.cookie, INVALID, Reason.DETACHED, 500), (ga.cookie, INVALID, Reason.DETACHED, 500)]
    assert cookies(q) == [gc.cookie]
    assert q.partial_count == (1 if flush_partial else 2)
    assert q.stats.conserved()
    assert h1.groups[0].respond(SUCCESS) is False
    # (1, 1) now has no handler (PCIE): its next group is returned to the caller
    [g] = feed(q, [L(1, 1, 3, 0xC000)])
    assert addrs(g) == ([0xC000] if flush_partial else [0xA000, 0xC000])
    assert len(h1.groups) == 2
    q.detach(1, 1)  # nothing attached: the group formed without a handler stays pending
    assert take(q) == [] and cookies(q) == [gc.cookie, g.cookie]


def test_F2_replace_answers_only_old_attachment(make_queue, feed):
    """F2: attach over an attachment is a replace that answers the OLD attachment's pending
    groups INVALID (ref §4.7, §8 fix 19); groups formed while (dev, pasid) had no
    attachment are answered by neither the replace nor a later detach."""
    ha, hb = Recorder(), Recorder()
    q = make_queue(PCIE)
    [g0] = feed(q, [L(1, 1, 1, time=1)])  # no attachment yet
    q.attach(1, 1, ha)
    assert take(q) == []
    [ga] = feed(q, [L(1, 1, 2, time=2)])
    assert ha.cookies == [ga.cookie]
    q.attach(1, 1, hb)
    [r] = take(q)
    assert (r.cookie, r.code, r.reason) == (ga.cookie, INVALID, Reason.DETACHED)
    [gb] = feed(q, [L(1, 1, 3, time=3)])
    assert hb.cookies == [gb.cookie] and ha.cookies == [ga.cookie]
    assert cookies(q) == [g0.cookie, gb.cookie]
    q.detach(1, 1, time=9)
    [r] = take(q)
    assert (r.cookie, r.reason, r.time) == (gb.cookie, Reason.DETACHED, 9)
    assert cookies(q) == [g0.cookie]


def test_F2_detach_ignores_groups_taken_by_default_handler(make_queue, feed):
    """F2: a group the default handler left pending was formed with no attachment of its
    (dev, pasid): a later attach/detach of that (dev, pasid) does not answer it."""
    hd, h = Recorder(), Recorder()
    q = make_queue(PCIE, default_handler=hd)
    [g] = feed(q, [L(1, 1, 1, time=1)])
    assert hd.cookies == [g.cookie]
    q.attach(1, 1, h)
    q.detach(1, 1)
    assert take(q) == [] and cookies(q) == [g.cookie]
    assert g.respond(SUCCESS) is True


def test_F3_discard_partial(make_queue, feed):
    """F3: discard_partial drops every partial fault of every device, with no response;
    pending groups are untouched (ref §4.3)."""
    q = make_queue(PCIE)
    [g] = feed(q, [P(1, 1, 3, 0xA000), P(2, 1, 3, 0xB000), P(1, 0, 4, pasid_valid=False),
                   P(3, 7, 5), L(4, 1, 1)])
    q.discard_partial()
    assert q.partial_count == 0
    assert take(q) == []
    assert cookies(q) == [g.cookie]
    s = q.stats
    assert (s.discarded, s.partial_now) == (4, 0) and s.conserved()
    [g2] = feed(q, [L(1, 1, 3, 0xC000)])
    assert addrs(g2) == [0xC000]


def test_F4_remove_device(make_queue, feed):
    """F4: remove_device drops the device's partials (no response) and answers each of its
    N pending groups INVALID (reason REMOVED), newest first (R8); later answers, by the
    handler too, are stale no-ops; other devices are untouched (ref §4.4, §8 fixes 2-3)."""
    h = Recorder()
    q = make_queue(PCIE)
    q.attach(1, 5, h)
    q.attach(1, 6, h)
    groups = feed(q, [P(1, 5, 1, 0xA000), P(1, 6, 2, 0xB000), P(2, 5, 1, 0xC000),
                      P(1, 5, 3), L(1, 5, 3, time=1), L(1, 6, 4, time=2), L(1, 5, 5, time=3),
                      L(2, 5, 9, time=4)])
    mine, other = groups[:3], groups[3]
    q.remove_device(1, time=900)
    rs = take(q)
    assert [(r.cookie, r.code, r.reason, r.time, r.dev) for r in rs] == [
        (g.cookie, INVALID, Reason.REMOVED, 900, 1) for g in mine[::-1]]
    assert [r.nfaults for r in rs] == [1, 1, 2]
    assert q.partial_count == 1 and q.stats.removed == 2
    assert cookies(q) == [other.cookie]
    assert all(g.respond(SUCCESS) is False for g in h.groups)  # the handler answers late
    assert take(q) == [] and q.stats.stale_responses == 3
    assert other.respond(SUCCESS) is True
    [g] = feed(q, [L(2, 5, 1, 0xD000)])
    assert addrs(g) == [0xC000, 0xD000]
    assert q.stats.conserved()


def test_F4_remove_device_time_defaults_to_now(make_queue, feed):
    """F4: without time=, the responses of remove_device carry the latest time seen."""
    q = make_queue(PCIE)
    feed(q, [L(1, 5, 1, time=10), P(2, 5, 1, time=70)])
    q.remove_device(1)
    [r] = take(q)
    assert r.time == 70 == q.now


@pytest.mark.parametrize("policy", [PCIE, PCIE.replace(overflow_code=INVALID)],
                         ids=["SUCCESS", "INVALID"])
def test_F5_device_allocation(make_queue, feed, policy):
    """F5: add_device(dev, outstanding=N) bounds the device's partials plus the faults of its
    pending groups; a request beyond it is dropped (counted overflowed), an LPIG among them
    answered overflow_code (SUCCESS: the device retries); answered groups return credit."""
    q = make_queue(policy)
    q.add_device(1, outstanding=3)
    [g] = feed(q, [P(1, 5, 1, 0xA000), P(1, 5, 1, 0xB000), L(1, 5, 1, 0xC000, time=1)])
    assert len(g) == 3
    assert feed(q, [P(1, 5, 2, 0xD000, time=2), L(1, 5, 3, 0xE000, needs_pasid=True, time=3),
                    P(2, 5, 2, time=4)]) == []
    rs = take(q)
    assert [(r.time, r.dev, r.pasid, r.grpid, r.code, r.flags, r.cookie, r.nfaults, r.reason)
            for r in rs] == [(3, 1, 5, 3, policy.overflow_code, PV, 0, 1, Reason.OVERFLOW)]
    s = q.stats
    assert (s.overflowed, s.partial_now, s.pending_now) == (2, 1, 1) and s.conserved()
    assert g.respond(SUCCESS)
    take(q)
    gs = feed(q, [P(1, 5, 2, 0xD000), P(1, 5, 2, 0xD100), L(1, 5, 2, 0xD200)])
    assert [addrs(x) for x in gs] == [[0xD000, 0xD100, 0xD200]]
    assert q.stats.overflowed == 2 and take(q) == []


def test_F5_queue_depth(make_queue, feed):
    """F5: policy.queue_depth bounds the outstanding requests of the whole queue."""
    q = make_queue(PCIE.replace(queue_depth=4))
    [g] = feed(q, [P(1, 1, 1), P(2, 1, 1), P(3, 1, 1), L(4, 1, 1)])
    assert feed(q, [P(5, 1, 1), L(5, 1, 2, time=7)]) == []
    [r] = take(q)
    assert (r.dev, r.grpid, r.code, r.reason, r.time) == (5, 2, SUCCESS, Reason.OVERFLOW, 7)
    assert q.stats.overflowed == 2
    assert g.respond(SUCCESS)
    assert len(feed(q, [L(5, 1, 3)])) == 1


@pytest.mark.parametrize("policy", [VTD.replace(queue_depth=4),
                                    PCIE.replace(queue_depth=4, discard_on_overflow=True)],
                         ids=["VTD", "PCIE_discard"])
def test_F5_discard_on_overflow(make_queue, feed, policy):
    """F5: with discard_on_overflow (VT-d), an overflow also discards every partial of the
    queue (F3, counted discarded) with no response but the LPIG's (ref §4.9)."""
    q = make_queue(policy, default_handler=Recorder())
    for dev in (1, 2, 3):
        q.add_device(dev)
    [g] = feed(q, [P(1, 1, 1, 0xA000), P(1, 2, 2), P(2, 1, 1), L(2, 1, 7)])
    assert feed(q, [P(3, 1, 1)]) == []
    s = q.stats
    assert (s.overflowed, s.discarded, s.partial_now) == (1, 3, 0)
    assert take(q) == []
    assert cookies(q) == [g.cookie]
    # fill up again, then an overflowing LPIG: discarded partials, LPIG answered SUCCESS
    feed(q, [P(1, 1, 1), P(1, 1, 1), P(1, 1, 1)])
    assert feed(q, [L(1, 1, 1, 0xB000, time=8)]) == []
    [r] = take(q)
    assert (r.grpid, r.code, r.reason, r.cookie, r.time) == (1, SUCCESS, Reason.OVERFLOW, 0, 8)
    s = q.stats
    assert (s.overflowed, s.discarded, s.partial_now) == (2, 6, 0) and s.conserved()
    [g2] = feed(q, [L(1, 1, 1, 0xC000)])  # the device retries: a group of one
    assert addrs(g2) == [0xC000]


def test_F6_conservation_mixed_scenario(make_queue, feed):
    """F6: after every step of a scenario touching every path, faults_reported equals
    partial_now + grouped + stop_markers + rejected + overflowed + discarded + flushed +
    removed, and groups == answered + pending_now."""
    policy = PCIE.replace(stop_markers=True, require_handler=True, queue_depth=6,
                          response_timeout=100)
    q = make_queue(policy)
    hold = Recorder()
    q.attach(1, 1, hold)
    q.attach(1, 2, Recorder(SUCCESS))
    q.attach(2, 1, hold)
    q.attach(3, 1, hold)
    faults = [P(1, 1, 1, time=1), P(1, 1, 1, time=2), L(1, 1, 1, time=3),  # group of 3
              P(1, 3, 1, time=4),                  # no handler: rejected
              L(1, 2, 2, perm=0, time=5),          # stop marker
              L(1, 2, 2, time=6),                  # answered by its handler
              P(2, 1, 4, time=7), P(2, 1, 5, time=8), P(1, 1, 6, time=9),  # depth 6 reached
              P(1, 1, 7, time=10),                 # overflow
              L(2, 1, 8, time=11)]                 # overflow, answered SUCCESS
    if feed.mode == "report":
        for f in faults:
            q.report(f)
            assert q.stats.conserved()
    else:
        feed(q, faults)
    steps = [lambda: q.flush_pasid(1, 1),          # 1 partial flushed, group of 3 answered
             lambda: q.remove_device(2),           # 2 partials removed
             lambda: feed(q, [P(3, 1, 1, time=20), L(3, 1, 2, time=21)]),
             q.discard_partial,                    # 1 partial discarded
             lambda: q.expire(200),                # the group of (3, 1) times out
             lambda: q.respond(hold.groups[0], SUCCESS)]  # stale
    for step in steps:
        step()
        assert q.stats.conserved()
    s = q.stats
    assert s.as_dict() == dict(faults_reported=13, partial_now=0, grouped=5, stop_markers=1,
                               rejected=1, overflowed=2, discarded=1, flushed=1, removed=2,
                               groups=3, answered=3, pending_now=0, stale_responses=1)
    assert [r.reason for r in take(q)] == [Reason.NO_HANDLER, Reason.HANDLER, Reason.OVERFLOW,
                                           Reason.FLUSHED, Reason.TIMEOUT]


# --- Linux bug-fix scenarios (ref §8) ----------------------------------------------------------

@pytest.mark.parametrize("policy", [PCIE, LINUX], ids=["PCIE", "LINUX"])
def test_fix4_duplicate_grpids_answered_by_cookie(make_queue, feed, policy):
    """ref §8 fix 4 / §3.1: two groups with the same grpid outstanding at once are distinct
    groups, answered by cookie (the object), not FIFO by grpid."""
    h = Recorder()
    q = make_queue(policy)
    q.add_device(1)
    q.attach(1, 5, h)
    g1, g2 = feed(q, [L(1, 5, 3, 0xA000, time=1), P(1, 5, 3, 0xB000, time=2),
                      L(1, 5, 3, 0xC000, time=3)])
    assert g1.cookie != g2.cookie and (g1.grpid, g2.grpid) == (3, 3)
    assert addrs(g2) == [0xB000, 0xC000]
    assert q.respond(g2.cookie, SUCCESS)
    [r] = take(q)
    assert (r.cookie, r.nfaults, r.code) == (g2.cookie, 2, SUCCESS)
    assert cookies(q) == [g1.cookie]
    assert h.groups[0].respond(INVALID)
    [r] = take(q)
    assert (r.cookie, r.nfaults, r.code) == (g1.cookie, 1, INVALID)
    assert q.respond(g2, SUCCESS) is False


def test_fix2_remove_with_unanswered_groups(make_queue, feed):
    """ref §8 fix 2 (CVE-2025-21770): remove a device with N unanswered groups: N INVALID
    responses, nothing left pending, and a later handler response is a no-op."""
    n = 5
    h = Recorder()
    q = make_queue(LINUX)
    q.add_device(7)
    q.attach(7, 1, h)
    groups = feed(q, [L(7, 1, i, time=i) for i in range(n)])
    assert len(groups) == n == len(h.groups)
    q.remove_device(7)
    rs = take(q)
    assert [(r.cookie, r.code, r.reason) for r in rs] \
        == [(g.cookie, INVALID, Reason.REMOVED) for g in groups[::-1]]  # newest first
    assert q.pending() == [] and q.stats.pending_now == 0
    assert [g.respond(SUCCESS) for g in h.groups] == [False] * n
    assert take(q) == [] and q.stats.stale_responses == n
