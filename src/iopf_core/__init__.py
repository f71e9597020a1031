"""iopf_core: the compiled grouping core of iopf, and its pure-Python twin.

``HashGrouper``, ``ListGrouper`` and ``TreeGrouper`` are Cython classes that
hold partial faults in C memory; ``PyGrouper`` is the reference twin. All
four have the same interface and give the same results. Most users want
``iopf.Queue``, which wraps one of them.
"""
from __future__ import annotations

from iopf_core.grouper import TRACE_DOMAIN, Grouper, HashGrouper, ListGrouper, TreeGrouper
from iopf_core.twin import PyGrouper

STRATEGIES: dict[str, type[Grouper] | type[PyGrouper]] = {"hash": HashGrouper, "list": ListGrouper, "tree": TreeGrouper, "python": PyGrouper}

__all__ = ["TRACE_DOMAIN", "Grouper", "HashGrouper", "ListGrouper", "TreeGrouper", "PyGrouper", "STRATEGIES"]
