"""policies.LINUX gives the kernel's responses, in the kernel's order.

Each test is one sequence on which an earlier iopf differed from the
kernel's ``drivers/iommu/io-pgfault.c`` (v6.17) and iommufd's
``iommufd_auto_response_faults``: responses are compared as
``(dev, pasid, grpid, code, pasid_carried)``, in the order they were sent,
on every strategy, with faults fed one by one (``report``) and as a batch
(``report_batch``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

import iopf
from iopf import Fault, Flag, Response, policies

PV, LAST, NEEDS = Flag.PASID_VALID, Flag.LAST_PAGE, Flag.NEEDS_PASID
INVALID, FAILURE = int(Response.INVALID), int(Response.FAILURE)
Feed = Callable[[iopf.Queue, Sequence[Fault]], list[iopf.Group]]


def defer(group: iopf.Group) -> None:
    return None


def raises(group: iopf.Group) -> Response:
    raise RuntimeError("handler failed")


def answers(q: iopf.Queue) -> list[tuple[int, int, int, int, bool]]:
    return [(d, p, g, c, bool(f & PV)) for d, p, g, c, f in
            q.take_responses()[["dev", "pasid", "grpid", "code", "flags"]].tolist()]


def req(dev: int, pasid: int, grpid: int, flags: int) -> Fault:
    return Fault(dev, pasid, grpid, 0x1000, perm=iopf.Perm.READ, flags=int(flags))


def test_remove_device_answers_newest_first(make_queue: Callable[..., iopf.Queue], feed: Feed) -> None:
    """iopf_group_alloc() list_add()s each group at the head of fault_param->faults and
    iopf_queue_remove_device() walks from the head: the newest group is answered first."""
    q = make_queue(policies.LINUX)
    q.add_device(0)
    q.attach(0, 2, defer)
    feed(q, [req(0, 2, 3, PV | LAST | NEEDS), req(0, 2, 3, PV | LAST)])
    assert answers(q) == []
    q.remove_device(0)
    # The second group (no NEEDS_PASID: the PASID is not carried) goes first.
    assert answers(q) == [(0, 2, 3, INVALID, False), (0, 2, 3, INVALID, True)]
    assert q.stats.pending_now == 0 and q.stats.conserved()


def test_detach_answers_unread_groups_newest_first(make_queue: Callable[..., iopf.Queue],
                                                   feed: Feed) -> None:
    """iommufd_auto_response_faults() list_move()s the unread groups to a private list
    (reversing them) and answers that list: newest first."""
    q = make_queue(policies.LINUX)
    q.add_device(0)
    q.attach(0, 2, defer)
    feed(q, [req(0, 2, 3, PV | LAST | NEEDS), req(0, 2, 3, PV | LAST)])
    assert q.detach(0, 2)
    assert answers(q) == [(0, 2, 3, INVALID, False), (0, 2, 3, INVALID, True)]


@pytest.mark.parametrize("last", [True, False], ids=["last", "partial"])
def test_requests_after_remove_device_are_answered_at_once(
        make_queue: Callable[..., iopf.Queue], feed: Feed, last: bool) -> None:
    """No iopf_param: iommu_report_device_fault() WARNs and answers INVALID through
    iopf_error_response(), partial or last; the handler is never called."""
    q = make_queue(policies.LINUX)
    q.add_device(0)
    q.remove_device(0)
    q.attach(0, 0, raises)
    groups = feed(q, [req(0, 0, 2, PV | NEEDS | (LAST if last else 0))])
    assert groups == [] and q.partial_count == 0
    assert answers(q) == [(0, 0, 2, INVALID, True)]
    s = q.stats
    assert (s.rejected, s.groups, s.partial_now) == (1, 0, 0) and s.conserved()


@pytest.mark.parametrize("last", [True, False], ids=["last", "partial"])
def test_requests_of_a_device_never_added_are_answered_at_once(
        make_queue: Callable[..., iopf.Queue], feed: Feed, last: bool) -> None:
    q = make_queue(policies.LINUX)
    q.attach(1, 0, defer)
    assert feed(q, [req(1, 0, 0, PV | (LAST if last else 0))]) == []
    assert answers(q) == [(1, 0, 0, INVALID, False)]
    assert q.stats.rejected == 1 and q.partial_count == 0


def test_pasid_0_is_the_rid(make_queue: Callable[..., iopf.Queue], feed: Feed) -> None:
    """IOMMU_NO_PASID is 0: find_fault_handler() looks a PASID 0 request up at the
    RID's attachment, so the RID's handler runs (and its error is FAILURE, err_abort)."""
    q = make_queue(policies.LINUX)
    q.add_device(1)
    q.attach(1, None, raises)
    with pytest.raises(RuntimeError):
        feed(q, [req(1, 0, 2, PV | LAST)])
    assert answers(q) == [(1, 0, 2, FAILURE, False)]


def test_attach_at_pasid_0_is_the_rid_attachment(make_queue: Callable[..., iopf.Queue],
                                                 feed: Feed) -> None:
    """attach(dev, 0) and attach(dev, None) are one attachment under LINUX: a request
    without PASID_VALID goes to it, and detach(dev, None) removes it."""
    q = make_queue(policies.LINUX)
    q.add_device(1)
    q.attach(1, 0, defer)
    (g,) = feed(q, [req(1, 7, 4, LAST)])          # no PASID_VALID: the RID
    assert g.pasid_valid is False and q.stats.rejected == 0
    assert q.detach(1, None) and not q.detach(1, 0)
    assert answers(q) == [(1, 7, 4, INVALID, False)]


def test_pcie_keeps_pasid_0_apart(make_queue: Callable[..., iopf.Queue], feed: Feed) -> None:
    """Without no_pasid (PCIE), PASID 0 is a PASID like any other."""
    q = make_queue(policies.PCIE.replace(require_handler=True))
    q.attach(1, None, defer)
    assert feed(q, [req(1, 0, 2, PV | LAST)]) == []
    assert answers(q) == [(1, 0, 2, INVALID, False)]


@pytest.mark.parametrize("preset", ["pcie", "linux", "vtd", "amd"])
def test_stop_markers_dropped_by_every_pri_preset(preset: str, make_queue: Callable[..., iopf.Queue],
                                                  feed: Feed) -> None:
    """PCIe never answers a Stop Marker (LAST with neither READ nor WRITE)."""
    q = make_queue(iopf.policies.PRESETS[preset], default_handler=Response.SUCCESS)
    q.add_device(5)
    feed(q, [Fault(5, 1, 0, 0, perm=0, last=True)])
    assert answers(q) == [] and q.stats.stop_markers == 1


def test_smmu_stall_has_no_stop_markers(make_queue: Callable[..., iopf.Queue], feed: Feed) -> None:
    q = make_queue(policies.SMMU_STALL, default_handler=Response.SUCCESS)
    feed(q, [Fault(5, 1, 0, 0, perm=0, last=True)])
    assert [a[3] for a in answers(q)] == [int(Response.SUCCESS)] and q.stats.stop_markers == 0


def test_vtd_attach_adds_the_device(make_queue: Callable[..., iopf.Queue], feed: Feed) -> None:
    """VT-d since Linux 6.16 (iopf_for_domain_set / intel_iommu_enable_iopf): the first
    fault-capable attachment adds the device to the queue, the refcount keeps it there
    while another handler is attached (a replace sets the new before removing the old),
    and the last detach removes it (iopf_queue_remove_device: newest first)."""
    q = make_queue(policies.VTD)
    assert feed(q, [req(4, 1, 0, PV | LAST)]) == []        # not added: INVALID
    assert answers(q) == [(4, 1, 0, INVALID, False)]
    q.attach(4, 1, defer)
    q.attach(4, 2, defer)
    feed(q, [req(4, 1, 1, PV | LAST), req(4, 2, 2, PV | LAST), req(4, 1, 3, PV),
             req(4, 1, 4, PV | LAST)])
    q.attach(4, 1, defer)                                  # replace: refcount stays 2
    assert answers(q) == [(4, 1, 4, INVALID, False), (4, 1, 1, INVALID, False)]
    assert q.detach(4, 1)                                  # one handler left
    assert answers(q) == [] and q.partial_count == 1
    feed(q, [req(4, 2, 5, PV | LAST)])
    assert q.detach(4, 2)                                  # the last: the device goes
    assert answers(q) == [(4, 2, 5, INVALID, False), (4, 2, 2, INVALID, False)]
    s = q.stats
    assert (s.removed, s.partial_now, s.pending_now) == (1, 0, 0) and s.conserved()
    feed(q, [req(4, 2, 6, PV)])
    assert answers(q) == [(4, 2, 6, INVALID, False)]       # removed: answered at once


@pytest.mark.parametrize("changes, error", [
    (dict(no_pasid=-1), ValueError), (dict(no_pasid=1 << 20), ValueError),
    (dict(no_pasid=8, pasid_bits=3), ValueError), (dict(no_pasid=True), TypeError),
    (dict(no_pasid="0"), TypeError),
    (dict(require_device=1), TypeError), (dict(attach_adds_device=None), TypeError)])
def test_new_policy_fields_are_validated(changes: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        iopf.Policy(**changes)  # type: ignore[arg-type]


def test_replay_adds_devices_as_they_appear() -> None:
    """A trace comes from devices that had IOPF enabled: nothing is rejected for
    lack of a device (or a handler), and the report says how devices were added."""
    trace = iopf.trace.synthetic(3_000, seed=2, devices=3)
    r = iopf.replay(trace, policy=policies.LINUX)
    assert r.stats["rejected"] == 0 and "each device added when it first appears" in r.model
    assert r.groups == iopf.replay(trace, policy=policies.PCIE.replace(match_pasid=False)).groups


def test_attach_keeps_the_allocation_of_an_added_device(make_queue: Callable[..., iopf.Queue],
                                                        feed: Feed) -> None:
    """Under attach_adds_device, attaching to a device added with an allocation keeps it."""
    q = make_queue(policies.VTD)
    q.add_device(1, outstanding=1)
    q.attach(1, None, Response.SUCCESS)
    feed(q, [req(1, 0, 0, 0), req(1, 0, 0, 0)])
    assert (q.stats.overflowed, q.stats.discarded) == (1, 1)   # VT-d discards on overflow
