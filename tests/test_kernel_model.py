"""Queue(policies.LINUX) against a small model of the kernel's own lists.

``Kernel`` below is written from ``drivers/iommu/io-pgfault.c`` (Linux
v6.17-rc3) and ``iommufd_auto_response_faults`` (``drivers/iommu/iommufd/
eventq.c``), statement by statement and nothing more: Python lists stand for
the kernel's ``list_head``\\ s, index 0 for the head. The test drives it and a
queue of every strategy with the same random sequences of reports (one by one
and in batches), responses, discards, device adds and removals, attaches
and detaches, and compares every response, in order, and every group.

The handler modes: ``defer`` is iommufd's handler (``iommufd_fault_iopf_handler``
puts the group on the fault object's ``deliver`` list, unread, and returns 0);
``SUCCESS``/``INVALID`` answer inside the handler (``iopf_group_response``);
``raise`` is a handler that fails (``err_abort``: FAILURE).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iopf
from iopf import Fault, Flag, Perm, Response, policies

PV, LAST, NEEDS = int(Flag.PASID_VALID), int(Flag.LAST_PAGE), int(Flag.NEEDS_PASID)
SUCCESS, INVALID, FAILURE = 0, 1, 2
IOMMU_NO_PASID = 0
Resp = tuple[int, int, int, int, bool]     # dev, pasid, grpid, code, PASID carried


@dataclass(eq=False)
class IopfGroup:
    """struct iopf_group: faults (LPIG last), and whether pending_node is on a list."""

    dev: int
    faults: list[Fault]
    handle: Handle
    cookie: int
    pending: bool = True

    @property
    def last_fault(self) -> Fault:
        return self.faults[-1]


@dataclass(eq=False)
class Handle:
    """An attach handle and its domain's iopf_handler."""

    mode: str
    deliver: list[IopfGroup] = field(default_factory=list)   # iommufd: groups not read


@dataclass
class FaultParam:
    """struct iommu_fault_param: the device's two lists, heads at index 0."""

    partial: list[Fault] = field(default_factory=list)
    faults: list[IopfGroup] = field(default_factory=list)


class Kernel:
    def __init__(self) -> None:
        self.fault_param: dict[int, FaultParam] = {}        # dev->iommu->fault_param
        self.handles: dict[tuple[int, int], Handle] = {}    # iommu_attach_handle_get()
        self.by_cookie: dict[int, IopfGroup] = {}
        self.cookies = 0
        self.sent: list[Resp] = []
        self.groups: list[list[int]] = []

    def page_response(self, dev: int, f: Fault, code: int) -> None:
        # ops->page_response(): the PASID goes back if the request had PASID_VALID
        # and NEEDS_PASID (iopf_group_response builds resp from last_fault).
        carried = bool(f.flags & PV and f.flags & NEEDS)
        self.sent.append((dev, f.pasid, f.grpid, code, carried))

    # -- io-pgfault.c -------------------------------------------------------------------
    def find_fault_handler(self, dev: int, f: Fault) -> Handle | None:
        # PASID_VALID: the handle at prm.pasid; else at IOMMU_NO_PASID (which is 0, so
        # a PASID 0 request finds the RID's handle). No user_pasid_table fallback.
        pasid = f.pasid if f.flags & PV else IOMMU_NO_PASID
        return self.handles.get((dev, pasid))

    def report(self, f: Fault) -> None:
        """iommu_report_device_fault(); the driver (prq_event_thread) drops stop markers."""
        if f.flags & LAST and not f.perm & (Perm.READ | Perm.WRITE):
            return
        dev = f.dev
        handle = self.find_fault_handler(dev, f)
        param = self.fault_param.get(dev)       # iopf_get_dev_fault_param()
        if handle is None or param is None:     # err_bad_iopf: iopf_error_response()
            self.page_response(dev, f, INVALID)
            return
        if not f.flags & LAST:                  # report_partial_fault(): list_add
            param.partial.insert(0, f)
            return
        # iopf_group_alloc(): list_add(last_fault, group->faults); walk partial from the
        # head, list_move() every entry with the same grpid to the head of group->faults;
        # list_add(pending_node, fault_param->faults).
        faults = [f]
        for p in list(param.partial):
            if p.grpid == f.grpid:
                param.partial.remove(p)
                faults.insert(0, p)
        self.cookies += 1
        group = IopfGroup(dev, faults, handle, self.cookies)
        param.faults.insert(0, group)
        self.by_cookie[group.cookie] = group
        self.groups.append([x.addr for x in faults])
        if handle.mode == "raise":              # iopf_handler() fails: err_abort
            self.iopf_group_response(group, FAILURE)
        elif handle.mode == "defer":            # iommufd_fault_iopf_handler(): list_add_tail
            handle.deliver.append(group)
        else:                                   # a handler that answers at once
            self.iopf_group_response(group, SUCCESS if handle.mode == "SUCCESS" else INVALID)

    def iopf_group_response(self, group: IopfGroup, code: int) -> None:
        # "Only send response if there is a fault report pending": list_del_init.
        if group.pending:
            self.page_response(group.dev, group.last_fault, code)
            self.fault_param_of(group).faults.remove(group)
            group.pending = False

    def fault_param_of(self, group: IopfGroup) -> FaultParam:
        return self.fault_param[group.dev]

    def respond(self, cookie: int, code: int) -> None:
        group = self.by_cookie.get(cookie)
        if group is not None:
            self.iopf_group_response(group, code)
            if group in group.handle.deliver:
                group.handle.deliver.remove(group)     # answered: freed

    def discard_partial(self) -> None:
        """iopf_queue_discard_partial(): free every partial, no response."""
        for param in self.fault_param.values():
            param.partial.clear()

    def add_device(self, dev: int) -> None:
        """iopf_queue_add_device(): -EBUSY if the device has a fault_param already."""
        self.fault_param.setdefault(dev, FaultParam())

    def remove_device(self, dev: int) -> None:
        """iopf_queue_remove_device(): WARN if not added; free the partials; walk
        fault_param->faults from the head answering INVALID; unpublish."""
        param = self.fault_param.pop(dev, None)
        if param is None:
            return
        for group in param.faults:
            self.page_response(dev, group.last_fault, INVALID)
            group.pending = False

    # -- attach / detach (iommufd) -------------------------------------------------------
    def attach(self, dev: int, pasid: int | None, mode: str) -> None:
        key = (dev, IOMMU_NO_PASID if pasid is None else pasid)
        old = self.handles.get(key)
        self.handles[key] = Handle(mode)
        if old is not None:                     # replace, with the July 2026 fix
            self.auto_response(old)

    def detach(self, dev: int, pasid: int | None) -> None:
        old = self.handles.pop((dev, IOMMU_NO_PASID if pasid is None else pasid), None)
        if old is not None:
            self.auto_response(old)

    def auto_response(self, handle: Handle) -> None:
        """iommufd_auto_response_faults(): list_move() the handle's groups on deliver to
        a private list (reversing them), answer that list INVALID. (No group is read:
        the response xarray is empty.)"""
        free_list: list[IopfGroup] = []
        for group in handle.deliver:
            free_list.insert(0, group)
        handle.deliver.clear()
        for group in free_list:
            self.iopf_group_response(group, INVALID)


# -- the differential test -------------------------------------------------------------------

def defer(group: iopf.Group) -> None:
    return None


def raises(group: iopf.Group) -> None:
    raise RuntimeError("handler failed")


HANDLERS: dict[str, Any] = {"defer": defer, "raise": raises, "SUCCESS": Response.SUCCESS,
                            "INVALID": lambda g: Response.INVALID}

faults = st.builds(
    lambda dev, pasid, grpid, flags, rw, addr: Fault(
        dev, pasid, grpid, addr << 12, perm=Perm.READ if rw else 0, flags=flags),
    st.integers(0, 1), st.sampled_from([0, 1, 2]), st.integers(0, 3),
    st.sampled_from([PV | LAST, PV, PV | LAST | NEEDS, PV | NEEDS, LAST, 0]),
    st.integers(0, 9).map(lambda x: x > 0), st.integers(0, 1 << 20))
OPS = {
    "report": st.tuples(st.just("report"), faults),
    "batch": st.tuples(st.just("batch"), st.lists(faults, max_size=6)),
    "respond": st.tuples(st.just("respond"), st.integers(1, 12), st.sampled_from([0, 1, 2])),
    "discard_partial": st.tuples(st.just("discard_partial")),
    "add_device": st.tuples(st.just("add_device"), st.integers(0, 2)),
    "remove_device": st.tuples(st.just("remove_device"), st.integers(0, 2)),
    "attach": st.tuples(st.just("attach"), st.integers(0, 2), st.sampled_from([None, 0, 1, 2]),
                        st.sampled_from(sorted(HANDLERS))),
    "detach": st.tuples(st.just("detach"), st.integers(0, 2), st.sampled_from([None, 0, 1, 2])),
}
# Reports weigh most: groups must pile up before a removal or detach for its order to show.
ops = st.sampled_from(["report"] * 6 + ["batch"] * 2 + sorted(OPS)).flatmap(OPS.__getitem__)


def run_queue(q: iopf.Queue, op: tuple[Any, ...]) -> list[list[int]]:
    """Apply op to q; the groups it formed (their addresses)."""
    kind = op[0]
    try:
        if kind == "report":
            g = q.report(op[1])
            return [] if g is None else [g.faults["addr"].tolist()]
        if kind == "batch":
            arr = np.array([tuple(f) for f in op[1]], dtype=iopf.FAULT_DTYPE)
            return [g.faults["addr"].tolist() for g in q.report_batch(arr)]
    except RuntimeError:                     # a handler's error, after the group was answered
        return []
    if kind == "respond":
        q.respond(op[1], op[2])
    elif kind == "attach":
        q.attach(op[1], op[2], HANDLERS[op[3]])
    else:
        getattr(q, kind)(*op[1:])
    return []


def run_kernel(k: Kernel, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "report":
        k.report(op[1])
    elif kind == "batch":
        for f in op[1]:
            k.report(f)
    elif kind == "respond":
        k.respond(op[1], op[2])
    else:
        getattr(k, kind)(*op[1:])


@pytest.mark.parametrize("strategy", ["hash", "tree", "list", "python"])
@settings(max_examples=120, deadline=None)
@given(setup=st.lists(st.sampled_from(sorted(HANDLERS)), min_size=6, max_size=6),
       seq=st.lists(ops, min_size=20, max_size=50))
def test_linux_policy_is_the_kernel(strategy: str, setup: list[str],
                                    seq: list[tuple[Any, ...]]) -> None:
    q = iopf.Queue(policies.LINUX, strategy=strategy)
    k = Kernel()
    # Every device added, a handler on its RID and PASID 1 (mostly deferring), then
    # random operations.
    start: list[tuple[Any, ...]] = [("add_device", dev) for dev in range(3)]
    start += [("attach", i // 2, (None, 1)[i % 2], mode if mode != "INVALID" else "defer")
              for i, mode in enumerate(setup)]
    for op in start + seq:
        run_queue(q, op)
        run_kernel(k, op)
        got = [(d, p, g, c, bool(f & PV)) for d, p, g, c, f in
               q.take_responses()[["dev", "pasid", "grpid", "code", "flags"]].tolist()]
        assert got == k.sent, op
        k.sent.clear()
    assert q.stats.groups == k.cookies
    assert q.stats.pending_now == sum(len(p.faults) for p in k.fault_param.values())


@pytest.mark.parametrize("strategy", ["hash", "list"])
def test_groups_are_the_kernels(strategy: str) -> None:
    """The groups themselves: arrival order, LPIG last, other PASIDs' partials swept in."""
    q = iopf.Queue(policies.LINUX, strategy=strategy)
    k = Kernel()
    seq: list[tuple[Any, ...]] = [("add_device", 0), ("attach", 0, 1, "defer"),
                                  ("attach", 0, 2, "defer"), ("attach", 0, None, "defer")]
    seq += [("report", Fault(0, p, 3, a << 12, flags=PV)) for a, p in enumerate([1, 2, 1])]
    seq += [("report", Fault(0, 0, 3, 9 << 12, flags=LAST)), ("report", Fault(0, 1, 3, 0xA << 12,
                                                                            flags=PV | LAST))]
    formed: list[list[int]] = []
    for op in seq:
        formed += run_queue(q, op)
        run_kernel(k, op)
    assert formed == k.groups == [[0, 1 << 12, 2 << 12, 9 << 12], [0xA << 12]]
