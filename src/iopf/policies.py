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

from .types import Response

__all__ = ["Policy", "PCIE", "LINUX", "VTD", "AMD", "SMMU_STALL", "PRESETS"]


@dataclass(frozen=True)
class Policy:
    """How a queue groups page requests and answers them (SPEC §3-§6)."""

    #: Key partials on (dev, pasid, grpid); False keys on (dev, grpid) as Linux (G3).
    match_pasid: bool = True
    #: SMMUv3 stall model: every request is a group of one (G5).
    stall: bool = False
    #: Drop a LAST_PAGE request with neither READ nor WRITE, unanswered:
    #: PCIe never answers a Stop Marker.
    stop_markers: bool = True
    #: Treat PRIV_DATA as last page in group, as VT-d before Linux 6.10 (G7).
    priv_data_is_last: bool = False
    #: Width of the PASID field; larger values are refused (G8).
    pasid_bits: int = 20
    #: Width of the group index (9 for PRI, 16 for a stall tag) (G8).
    grpid_bits: int = 9
    #: Answer every request whose (dev, pasid) has no handler at once (R2, Linux 6.11+).
    require_handler: bool = False
    no_handler_code: Response = Response.INVALID
    #: Code sent when a handler raises (R3); Linux's err_abort path sends FAILURE.
    handler_error_code: Response = Response.FAILURE
    #: Simulated ns after which ``Queue.expire`` answers a pending group (R7).
    response_timeout: int | None = None
    timeout_code: Response = Response.INVALID
    #: Bound on outstanding requests of the whole queue (F5); None: unbounded.
    queue_depth: int | None = None
    #: Code sent to an overflowing LPIG (SUCCESS: the device retries).
    overflow_code: Response = Response.SUCCESS
    #: On overflow, drop every partial of the queue (VT-d, F5).
    discard_on_overflow: bool = False
    #: detach() also drops the PASID's partials (F2); Linux keeps them.
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
        if not 1 <= self.pasid_bits <= 31:
            raise ValueError(f"pasid_bits must be in 1..31, got {self.pasid_bits}")
        if not 1 <= self.grpid_bits <= 16:   # 9 for PRI, 16 for a stall tag
            raise ValueError(f"grpid_bits must be in 1..16, got {self.grpid_bits}")
        for name in ("no_handler_code", "handler_error_code", "timeout_code", "overflow_code"):
            object.__setattr__(self, name, Response(getattr(self, name)))
        if self.response_timeout is not None and self.response_timeout < 0:
            raise ValueError("response_timeout must be >= 0 or None")
        if self.queue_depth is not None and self.queue_depth < 0:
            raise ValueError("queue_depth must be >= 0 or None")
        self._check_device_fields()

    def _check_device_fields(self) -> None:
        """no_pasid, require_device, attach_adds_device."""
        for name in ("require_device", "attach_adds_device"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        n = self.no_pasid
        if n is not None and (not isinstance(n, int) or isinstance(n, bool)
                              or not 0 <= n < (1 << self.pasid_bits)):
            raise ValueError(f"no_pasid must be None or a PASID below 2**pasid_bits, got {n!r}")

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
#: discarded on overflow, IOPF enabled by attaching a handler (Linux 6.16+).
VTD = LINUX.replace(queue_depth=2048, discard_on_overflow=True, attach_adds_device=True)
#: AMD: a 512-entry PPR log.
AMD = Policy(queue_depth=512)
#: ARM SMMUv3 stall model: each event is its own group, 16-bit stall tags,
#: no stop markers (a stall has none).
SMMU_STALL = Policy(stall=True, grpid_bits=16, stop_markers=False)

PRESETS: dict[str, Policy] = {
    "pcie": PCIE, "linux": LINUX, "vtd": VTD, "amd": AMD, "smmu_stall": SMMU_STALL,
}
