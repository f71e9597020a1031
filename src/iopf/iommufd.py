"""The iommufd fault object as a VMM sees it.

A VMM (QEMU, cloud-hypervisor, OpenVMM) that gives a guest page faults
through iommufd allocates a fault object (``IOMMU_FAULT_QUEUE_ALLOC``),
attaches fault-capable hardware page tables that use it to its devices, then
``read``\\ s ``struct iommu_hwpt_pgfault`` records from the object's file
descriptor and ``write``\\ s ``struct iommu_hwpt_page_response`` records back.
:class:`FaultObject` is that file descriptor, byte for byte, on top of an
:class:`iopf.Queue`, so that the VMM's fault-handling code can be tested
without a kernel. It follows ``drivers/iommu/iommufd/eventq.c`` and
``include/uapi/linux/iommufd.h`` of Linux 6.17 (the uAPI as fixed in 6.14:
``__reserved`` before an aligned ``addr``; codes SUCCESS and INVALID only,
since 6.11), with the replace fix of July 2026 (see :meth:`FaultObject.replace`).

>>> from iopf import Fault, Perm, iommufd, policies, Queue
>>> fo = iommufd.FaultObject(Queue(policies.VTD))
>>> fo.attach(dev=0x10, pasid=1, dev_id=3)       # VT-d: attaching enables IOPF
>>> _ = fo.queue.report(Fault(0x10, 1, 5, 0x1000, perm=Perm.READ))
>>> _ = fo.queue.report(Fault(0x10, 1, 5, 0x2000, perm=Perm.READ, last=True))
>>> recs = iommufd.records(fo.read(40 * 100))
>>> recs[["dev_id", "grpid", "addr", "cookie"]].tolist()
[(3, 5, 4096, 1), (3, 5, 8192, 1)]
>>> fo.write(iommufd.responses([(1, iommufd.PAGE_RESP_SUCCESS)]))
8
>>> fo.queue.take_responses()[["dev", "grpid", "code", "nfaults"]].tolist()
[(16, 5, 0, 2)]
"""
from __future__ import annotations

import errno
import heapq
import select
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from . import policies
from .queue import Group, Queue
from .trace import IOMMUFD_DTYPE
from .types import Flag, Reason, Response

__all__ = ["FaultObject", "PGFAULT_DTYPE", "PAGE_RESPONSE_DTYPE", "PAGE_RESP_SUCCESS",
           "PAGE_RESP_INVALID", "records", "responses"]

#: ``struct iommu_hwpt_pgfault`` (include/uapi/linux/iommufd.h, Linux 6.14+):
#: ``__u32 flags, dev_id, pasid, grpid, perm, __reserved; __aligned_u64 addr;
#: __u32 length, cookie`` -- 40 bytes, little endian (``reserved`` is
#: ``__reserved``, always 0).
PGFAULT_DTYPE = IOMMUFD_DTYPE
#: ``struct iommu_hwpt_page_response`` (Linux 6.11+): ``__u32 cookie, code``.
PAGE_RESPONSE_DTYPE = np.dtype([("cookie", "<u4"), ("code", "<u4")])
assert PGFAULT_DTYPE.itemsize == 40 and PAGE_RESPONSE_DTYPE.itemsize == 8

#: ``enum iommufd_page_response_code``: the only codes userspace may write.
PAGE_RESP_SUCCESS = int(Response.SUCCESS)
PAGE_RESP_INVALID = int(Response.INVALID)

#: The flag bits iommufd_compose_fault_message copies from the kernel's
#: prm.flags: PASID_VALID and LAST_PAGE (the uAPI's), and the kernel-internal
#: NEEDS_PASID (bit 2), which leaks through.
_RECORD_FLAGS = int(Flag.PASID_VALID | Flag.LAST_PAGE | Flag.NEEDS_PASID)
_COOKIE_MAX = 2**32 - 1            # xa_limit_32b


def records(data: bytes) -> np.ndarray:
    """The ``struct iommu_hwpt_pgfault`` records in bytes returned by ``read``."""
    return np.frombuffer(data, dtype=PGFAULT_DTYPE)


def responses(pairs: Iterable[tuple[int, int]]) -> bytes:
    """``struct iommu_hwpt_page_response`` records for ``write``, from (cookie, code)."""
    return np.array(list(pairs), dtype=PAGE_RESPONSE_DTYPE).tobytes()


@dataclass(eq=False)
class _Handle:
    """An attach handle: one attachment of a hwpt of this fault object."""

    dev: int
    pasid: int | None
    dev_id: int


class FaultObject:
    """An iommufd fault object, read and written as its file descriptor.

    ``queue`` is the IOMMU's page request queue (default: a new
    ``Queue(policies.VTD)``: since Linux 6.16 attaching a fault-capable domain
    enables IOPF for the device). Groups reach the object through the handler
    :meth:`attach` installs, as ``iommufd_fault_iopf_handler`` appends them to
    the object's ``deliver`` list; the queue's own ``report``/``report_batch``
    feed it.
    """

    def __init__(self, queue: Queue | None = None) -> None:
        self.queue = queue if queue is not None else Queue(policies.VTD)
        #: Groups not yet read, oldest first (the kernel's fault->common.deliver).
        self._deliver: list[tuple[_Handle, Group]] = []
        #: Groups read and not yet answered, by cookie (the kernel's fault->response).
        self._response: dict[int, tuple[_Handle, Group]] = {}
        self._handles: dict[tuple[int, int | None], _Handle] = {}
        # xa_alloc with XA_FLAGS_ALLOC1: the lowest free id from 1. Ids below
        # _next_id that are free are in the heap.
        self._free_ids: list[int] = []
        self._next_id = 1
        self.destroyed = False

    # -- attachments ---------------------------------------------------------------------
    def attach(self, dev: int, pasid: int | None = None, *, dev_id: int | None = None) -> None:
        """Attach a fault-capable hwpt of this object to (dev, pasid).

        ``dev_id`` is the iommufd device object id the records carry (default:
        ``dev``). (dev, pasid) must have no handler yet; use :meth:`replace` to
        move an attachment.
        """
        self._check_alive()
        key = (dev, self.queue._rid(pasid))
        if key in self.queue._handlers:
            raise ValueError(f"(dev {dev}, pasid {pasid}) is attached already; use replace()")
        self._install(_Handle(dev, key[1], dev if dev_id is None else dev_id))

    def _install(self, handle: _Handle) -> None:
        def iopf_handler(group: Group) -> None:    # iommufd_fault_iopf_handler
            self._deliver.append((handle, group))
            return None

        self._handles[(handle.dev, handle.pasid)] = handle
        self.queue.attach(handle.dev, handle.pasid, iopf_handler)

    def detach(self, dev: int, pasid: int | None = None) -> bool:
        """Detach (dev, pasid) and answer its groups INVALID as the kernel does.

        ``iommufd_hwpt_detach_device`` detaches the domain first: if that was
        the device's last fault-capable domain and the queue's policy has
        ``attach_adds_device`` (VT-d since Linux 6.16), the driver removes the
        device, which answers all its groups newest first
        (``iopf_queue_remove_device``). Then ``iommufd_auto_response_faults``
        answers what is left of the attachment: the groups not yet read,
        newest first, then the read ones in cookie order. False if (dev,
        pasid) is not attached to this object.
        """
        self._check_alive()
        handle = self._handles.pop((dev, self.queue._rid(pasid)), None)
        if handle is None:
            return False
        q = self.queue
        if q.policy.attach_adds_device and sum(d == dev for d, _ in q._handlers) == 1:
            q.detach(dev, handle.pasid)     # the driver removes the device: it answers
            self._auto_respond(handle)      # ... and iommufd finds them answered
        else:
            self._auto_respond(handle)
            q.detach(dev, handle.pasid)     # nothing of the attachment is left to answer
        return True

    def replace(self, dev: int, pasid: int | None = None, new: FaultObject | None = None) -> None:
        """Replace the hwpt of (dev, pasid) by one that uses ``new`` (default: this object).

        Follows the kernel with "iommufd: Fix wrong hwpt passed to
        iommufd_auto_response_faults on replace" (July 2026): the old
        attachment's groups are answered INVALID as :meth:`detach` answers
        them (not yet read: newest first; then read ones in cookie order), and
        the device stays added (the VT-d driver's iopf_for_domain_replace takes
        the new reference before dropping the old). Before that fix (Linux 6.11
        to 6.17 and later stable kernels without it) the old groups were looked
        up on the new hwpt's fault object: a replace to another fault object
        left them unanswered; that bug is not modelled.
        """
        self._check_alive()
        new = self if new is None else new
        if new.queue is not self.queue:
            raise ValueError("a replace stays on the same IOMMU queue")
        old = self._handles.pop((dev, self.queue._rid(pasid)), None)
        if old is None:
            raise ValueError(f"(dev {dev}, pasid {pasid}) is not attached to this fault object")
        # The kernel installs the new handle, then answers the old one's groups;
        # answering first gives the same responses, and the queue's own replace
        # (in _install) then finds none of them left.
        self._auto_respond(old)
        new._install(_Handle(old.dev, old.pasid, old.dev_id))

    def destroy(self) -> None:
        """Destroy the object (``iommufd_fault_destroy``): answer INVALID every group
        not yet read, oldest first, then every read one in cookie order; then
        detach what is still attached (a VMM detaches first: the kernel keeps
        the object alive while a hwpt uses it)."""
        self._check_alive()
        for _, group in self._deliver:
            self._answer(group, PAGE_RESP_INVALID, Reason.DETACHED)
        for cookie in sorted(self._response):
            self._answer(self._response[cookie][1], PAGE_RESP_INVALID, Reason.DETACHED)
        self._deliver.clear()
        self._response.clear()
        for dev, pasid in list(self._handles):
            self.queue.detach(dev, pasid)
        self._handles.clear()
        self.destroyed = True

    def _auto_respond(self, handle: _Handle) -> None:
        """iommufd_auto_response_faults(): unread groups of the handle, newest first
        (list_move to a private list reverses them), then read ones in cookie order
        (xa_for_each). Groups the driver answered already are only freed."""
        unread = [g for h, g in self._deliver if h is handle]
        self._deliver = [(h, g) for h, g in self._deliver if h is not handle]
        read = sorted(c for c, (h, _) in self._response.items() if h is handle)
        for group in reversed(unread):
            self._answer(group, PAGE_RESP_INVALID, Reason.DETACHED)
        for cookie in read:
            self._answer(self._response.pop(cookie)[1], PAGE_RESP_INVALID, Reason.DETACHED)
            self._free_id(cookie)

    def _answer(self, group: Group, code: int, reason: Reason) -> None:
        # iopf_group_response() sends only if the group is still pending.
        if self.queue.core.group_faults(group.cookie) is not None:
            self.queue._respond_as(group.cookie, code, reason)

    # -- the file descriptor ---------------------------------------------------------------
    def read(self, nbytes: int) -> bytes:
        """``read(fd, buf, nbytes)``: whole groups, oldest first, as records.

        ``nbytes`` must be a multiple of 40 (else ``OSError(ESPIPE)``). A group
        that does not fit in what is left stays first in line and the read
        stops there (head-of-line blocking). Each group gets a cookie as it is
        read, the lowest free id from 1 (``xa_alloc``, ``XA_FLAGS_ALLOC1``),
        carried by each of its records. Returns b"" when nothing fits or
        nothing is waiting (the kernel's read does not block).
        """
        self._check_alive()
        size = PGFAULT_DTYPE.itemsize
        if nbytes < 0 or nbytes % size:
            raise OSError(errno.ESPIPE, "read size must be a multiple of 40 bytes")
        out: list[np.ndarray] = []
        room = nbytes // size
        while self._deliver:
            handle, group = self._deliver[0]
            if len(group) > room:
                break                           # iommufd_fault_deliver_restore
            cookie = self._alloc_id()
            if cookie is None:                  # xa_alloc: no free id
                break
            del self._deliver[0]
            self._response[cookie] = (handle, group)
            out.append(self._compose(handle, group, cookie))
            room -= len(group)
        return b"".join(a.tobytes() for a in out)

    @staticmethod
    def _compose(handle: _Handle, group: Group, cookie: int) -> np.ndarray:
        """iommufd_compose_fault_message() for every fault of the group, in order."""
        f = group.faults
        rec = np.zeros(len(f), dtype=PGFAULT_DTYPE)
        rec["flags"] = f["flags"] & _RECORD_FLAGS
        rec["dev_id"] = handle.dev_id
        rec["pasid"] = f["pasid"]
        rec["grpid"] = f["grpid"]
        rec["perm"] = f["perm"]
        rec["addr"] = f["addr"]
        rec["cookie"] = cookie             # length and __reserved stay 0
        return rec

    def write(self, data: bytes) -> int:
        """``write(fd, data)``: ``struct iommu_hwpt_page_response`` records, in order.

        The length must be a multiple of 8 (else ``OSError(ESPIPE)``). Each
        record answers the group of its cookie with its code. Processing stops
        at the first record with a code other than SUCCESS or INVALID or an
        unknown cookie; the bytes consumed before it are returned, or, if it
        was the first, ``OSError(EINVAL)`` is raised. A refused record changes
        nothing.
        """
        self._check_alive()
        size = PAGE_RESPONSE_DTYPE.itemsize
        if len(data) % size:
            raise OSError(errno.ESPIPE, "write size must be a multiple of 8 bytes")
        done = 0
        for cookie, code in np.frombuffer(data, dtype=PAGE_RESPONSE_DTYPE).tolist():
            if code not in (PAGE_RESP_SUCCESS, PAGE_RESP_INVALID):
                error = f"response code {code} is neither SUCCESS (0) nor INVALID (1)"
            elif cookie not in self._response:
                error = f"no group was read with cookie {cookie}"
            else:
                _, group = self._response.pop(cookie)
                self._free_id(cookie)
                self._answer(group, code, Reason.CALLER)
                done += size
                continue
            if done == 0:
                raise OSError(errno.EINVAL, error)
            break
        return done

    def poll(self) -> int:
        """The ``poll`` events: always ``POLLOUT``; ``POLLIN | POLLRDNORM`` when a
        group waits to be read."""
        events = select.POLLOUT
        if self._deliver:
            events |= select.POLLIN | select.POLLRDNORM
        return events

    # -- inspection ----------------------------------------------------------------------
    @property
    def unread(self) -> int:
        """Groups waiting to be read."""
        return len(self._deliver)

    def outstanding(self) -> list[int]:
        """Cookies of the groups read and not answered, ascending."""
        return sorted(self._response)

    def _alloc_id(self) -> int | None:
        if self._free_ids:
            return heapq.heappop(self._free_ids)
        if self._next_id > _COOKIE_MAX:
            return None
        self._next_id += 1
        return self._next_id - 1

    def _free_id(self, cookie: int) -> None:
        heapq.heappush(self._free_ids, cookie)

    def _check_alive(self) -> None:
        if self.destroyed:
            raise ValueError("the fault object was destroyed")

    def __repr__(self) -> str:
        return (f"FaultObject(unread={self.unread}, outstanding={len(self._response)}, "
                f"attached={sorted(self._handles, key=repr)})")
