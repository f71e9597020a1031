"""iopf: simulate how an IOMMU driver groups I/O page faults and answers them.

>>> import iopf
>>> q = iopf.Queue(iopf.policies.PCIE)
>>> batch = q.report_batch(iopf.trace.synthetic(1000, seed=1))
>>> q.stats.conserved()
True
"""
from . import policies, trace
from ._display import describe_responses
from ._replay import ReplayReport, replay
from .policies import Policy
from .queue import Group, GroupBatch, Handler, Queue, Stats
from .service import Service
from .types import (FAULT_DTYPE, NO_PASID, RESPONSE_DTYPE, Fault, Flag, PageResponse, Perm,
                    Reason, Response)

__version__ = "0.2.0"

__all__ = [
    "FAULT_DTYPE", "RESPONSE_DTYPE", "NO_PASID", "Fault", "Flag", "Perm", "Response", "Reason",
    "PageResponse", "Policy", "policies", "Queue", "Group", "GroupBatch", "Stats", "Handler",
    "trace", "replay", "ReplayReport", "Service", "describe_responses",
]

