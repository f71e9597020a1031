"""Policies: what one engine does differently for each architecture.

A :class:`Policy` is a frozen dataclass; the presets model a strict PCIe
implementation (the default), the Linux kernel and its drivers. Derive your
own with :func:`dataclasses.replace`:

>>> import dataclasses
>>> dataclasses.replace(LINUX, queue_depth=64).queue_depth
64
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .types import Response

#: Bounds of the int fields that are not 0..2**64-1.
_INT_RANGES = {
    "pasid_bits": (1, 31),
    "grpid_bits": (1, 16),   # 9 for PRI, 16 for a stall tag
    "no_pasid": (0, 2**31 - 1),   # and below 2**pasid_bits, checked after the loop
}

__all__ = ["Policy", "PCIE", "LINUX", "VTD", "AMD", "SMMU_STALL", "PRESETS", "resolve"]


@dataclass(frozen=True)
class Policy:
    """How a queue groups page requests and answers them.

    A frozen dataclass: every preset in :mod:`iopf.policies` is one, and
    ``policy.replace(field=value)`` derives another. Times are simulated
    nanoseconds; codes are :class:`iopf.Response` values.

    Attributes:
        match_pasid: Key partial faults on (device, PASID, group index).
            False keys them on (device, group index) only, as Linux does
            (``iopf_group_alloc`` never compares the PASID): partials of
            another PASID with the same index join the group, whose PASID and
            handler are those of its last request.
        stall: The ARM SMMUv3 stall model: every request is a group of one,
            whatever its LAST_PAGE bit, and ``grpid`` is the stall tag.
        stop_markers: Drop a LAST_PAGE request with neither READ nor WRITE (a
            PCIe stop marker) without a group or a response, as the VT-d
            driver does since Linux 5.18; counted in ``stop_markers``.
        priv_data_is_last: Treat a request with PRIV_DATA as the last of its
            group, as the VT-d driver did before Linux 6.10.
        pasid_bits: Width of the PASID field (1 to 31; 20 for PCIe). A request
            with a larger PASID is refused with ``ValueError``.
        grpid_bits: Width of the group index (1 to 16; 9 for a PCIe page
            request group, 16 for an SMMUv3 stall tag). Larger values are
            refused with ``ValueError``.
        require_handler: Answer a request whose (device, PASID) has no handler
            at once with ``no_handler_code``, even when it is not the last of
            its group, and do not store it (Linux 6.11 and later,
            ``iopf_error_response``). False: the group is returned to the
            caller of ``report``, who answers it.
        no_handler_code: The code of those answers (INVALID since Linux 6.11;
            FAILURE before).
        handler_error_code: The code sent when a handler raises (FAILURE, as
            the kernel's ``err_abort`` path sends); the exception then reaches
            the caller.
        response_timeout: Simulated ns after which ``Queue.expire`` (or
            ``advance``) answers a pending group with ``timeout_code``; None:
            groups wait for ever, as in the kernel.
        timeout_code: The code of those answers (INVALID).
        queue_depth: Bound on the requests outstanding in the whole queue
            (partials plus the faults of pending groups); None: unbounded.
            A request beyond it, or beyond its device's allocation
            (``add_device(dev, outstanding=N)``), overflows: it is dropped,
            and answered with ``overflow_code`` if it is the last of its
            group. VT-d's page request queue holds 2048 entries since Linux
            5.19, AMD's PPR log 512.
        overflow_code: The code sent to an overflowing last request (SUCCESS:
            the device retries the whole group).
        discard_on_overflow: On overflow, also drop every partial fault of the
            queue without responses, as VT-d calls
            ``iopf_queue_discard_partial``.
        flush_partial_on_detach: ``detach`` also drops the PASID's partial
            faults. Linux keeps them: they wait for a later group with the
            same index, or for a discard or a device removal.
        no_pasid: A PASID value that means "no PASID" (LINUX: 0, the kernel's
            ``IOMMU_NO_PASID``): a request with that PASID, and an attachment
            at it, are treated as requests without PASID, routed to the
            device's own (RID) attachment. None: every PASID is a real one.
        require_device: Answer INVALID at once, and do not store, a request
            from a device that is not in the queue (never added with
            ``add_device``, or removed), last or not, as
            ``iommu_report_device_fault`` does for a device without fault
            parameters; counted in ``rejected``.
        attach_adds_device: Attaching a device's first handler adds the device
            to the queue, and detaching its last handler removes it (answering
            its pending groups INVALID), as VT-d does since Linux 6.16, where
            attaching a fault-capable domain enables page requests.
    """

    #: Key partials on (dev, pasid, grpid); False keys on (dev, grpid) as Linux.
    match_pasid: bool = True
    #: SMMUv3 stall model: every request is a group of one.
    stall: bool = False
    #: Drop a LAST_PAGE request with neither READ nor WRITE, unanswered:
    #: PCIe never answers a Stop Marker.
    stop_markers: bool = True
    #: Treat PRIV_DATA as last page in group, as VT-d before Linux 6.10.
    priv_data_is_last: bool = False
    #: Width of the PASID field; larger values are refused.
    pasid_bits: int = 20
    #: Width of the group index (9 for PRI, 16 for a stall tag).
    grpid_bits: int = 9
    #: Answer every request whose (dev, pasid) has no handler at once (Linux 6.11+).
    require_handler: bool = False
    no_handler_code: Response = Response.INVALID
    #: Code sent when a handler raises; Linux's err_abort path sends FAILURE.
    handler_error_code: Response = Response.FAILURE
    #: Simulated ns after which ``Queue.expire`` answers a pending group.
    response_timeout: int | None = None
    timeout_code: Response = Response.INVALID
    #: Bound on outstanding requests of the whole queue; None: unbounded.
    queue_depth: int | None = None
    #: Code sent to an overflowing LPIG (SUCCESS: the device retries).
    overflow_code: Response = Response.SUCCESS
    #: On overflow, drop every partial of the queue (VT-d).
    discard_on_overflow: bool = False
    #: detach() also drops the PASID's partials; Linux keeps them.
    flush_partial_on_detach: bool = False
    #: A PASID value that means "no PASID" (Linux: 0, the kernel's IOMMU_NO_PASID): a
    #: PASID_VALID request with it, and an attachment at it, are the RID's.
    no_pasid: int | None = None
    #: Answer INVALID at once every request of a device that was never added or was
    #: removed, partial or last, as iommu_report_device_fault does without iopf_param.
    require_device: bool = False
    #: Attaching a device's first handler adds it; detaching its last removes it,
    #: as the VT-d driver does since Linux 6.16 (iopf_for_domain_set, iopf_refcount).
    attach_adds_device: bool = False

    def __post_init__(self) -> None:
        # Every field is checked by its declared type: "bool", "Response",
        # "int" or "int | None" (a new field needs a line in _INT_RANGES only
        # if it is an int with other bounds than 0..2**64-1).
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = str(f.type)
            if kind.endswith("| None"):
                if value is None:
                    continue
                kind = kind[:-len("| None")].strip()
            if kind == "bool":
                if not isinstance(value, (bool, np.bool_)):
                    raise TypeError(f"Policy.{f.name} must be a bool, not {type(value).__name__}")
                object.__setattr__(self, f.name, bool(value))
                continue
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"Policy.{f.name} must be an int, not {type(value).__name__}")
            lo, hi = (0, len(Response) - 1) if kind == "Response" else _INT_RANGES.get(f.name, (0, 2**64 - 1))
            if not lo <= value <= hi:
                raise ValueError(f"Policy.{f.name} must be in {lo}..{hi}, got {value}")
            object.__setattr__(self, f.name, Response(int(value)) if kind == "Response" else int(value))
        if self.no_pasid is not None and self.no_pasid >= 1 << self.pasid_bits:
            raise ValueError(f"Policy.no_pasid must be below 2**pasid_bits, got {self.no_pasid}")

    def replace(self, **changes: object) -> Policy:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


#: Strict PCIe: partials keyed per PASID, every group returned or handled,
#: stop markers dropped.
PCIE = Policy()
#: The Linux kernel (v6.11+): groups keyed on (dev, grpid) only, requests
#: without a handler, or of a device not added, answered INVALID at once,
#: PASID 0 is the RID (IOMMU_NO_PASID), stop markers dropped.
LINUX = Policy(match_pasid=False, require_handler=True, require_device=True, no_pasid=0)
#: Intel VT-d under Linux: a 2048-entry page request queue, partials
#: discarded on overflow (``iopf_queue_discard_partial``), IOPF enabled by
#: attaching a handler (Linux 6.16+).
VTD = LINUX.replace(queue_depth=2048, discard_on_overflow=True, attach_adds_device=True)
#: AMD: a 512-entry PPR log.
AMD = Policy(queue_depth=512)
#: ARM SMMUv3 stall model: each event is its own group, 16-bit stall tags,
#: no stop markers (a stall has none).
SMMU_STALL = Policy(stall=True, grpid_bits=16, stop_markers=False)

PRESETS: dict[str, Policy] = {
    "pcie": PCIE, "linux": LINUX, "vtd": VTD, "amd": AMD, "smmu_stall": SMMU_STALL,
}


def resolve(policy: Policy | str) -> Policy:
    """A ``Policy`` given as itself or by preset name (any case).

    >>> resolve("VTD") is VTD
    True
    """
    if isinstance(policy, str):
        try:
            return PRESETS[policy.lower()]
        except KeyError:
            raise ValueError(f"unknown policy {policy!r}; choose from "
                             f"{', '.join(PRESETS)}") from None
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be an iopf.Policy or a preset name, not "
                        f"{type(policy).__name__}")
    return policy
