"""The core's C memory is visible to tracemalloc and comes back when the queue goes."""
from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

import iopf
from iopf import FAULT_DTYPE

C_STRATEGIES = ["hash", "tree", "list"]


def partials(n: int, group_size: int) -> np.ndarray:
    """n partial faults on one device, group_size per group id (no LPIG)."""
    a = np.zeros(n, dtype=FAULT_DTYPE)
    a["dev"] = 1
    a["pasid"] = 3
    a["flags"] = iopf.Flag.PASID_VALID
    a["grpid"] = (np.arange(n) // group_size) % 512
    a["pasid"] = 3 + (np.arange(n) // group_size) // 512
    a["perm"] = iopf.Perm.READ
    return a


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_tracemalloc_sees_core_memory_and_it_returns_to_zero(strategy):
    arr = partials(50_000, 8)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        q = iopf.Queue(strategy=strategy)
        q.report_batch(arr)
        held = tracemalloc.get_traced_memory()[0] - base
        assert q.partial_count == len(arr)
        assert held >= q.sizeof() >= len(arr) * 52   # every node is a traced allocation
        del q
        gc.collect()
        assert tracemalloc.get_traced_memory()[0] - base < 4096
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_sizeof_tracks_growth_and_state(strategy):
    q = iopf.Queue(strategy=strategy)
    empty = q.sizeof()
    q.report_batch(partials(10_000, 4))
    state = q.core.get_state()
    assert state["nodes_used"] == 10_000
    assert state["bytes"] == q.sizeof() > empty
    q.discard_partial()
    assert q.core.get_state()["nodes_used"] == 0


def test_hash_bytes_per_held_partial():
    """The memory goal: at most 64 bytes of C memory per held partial, in groups of 8 or more.

    A node is 52 bytes; each open group adds a hash slot (24 bytes at a load
    of 1/4 to 1/2), so groups of 4 cost 64 to 69 bytes a fault.
    """
    for group_size in (8, 32):
        for n in (65_536, 100_000):
            q = iopf.Queue(strategy="hash")
            q.report_batch(partials(n, group_size))
            assert q.sizeof() / n <= 64, (group_size, n, q.sizeof() / n)


def test_answered_groups_release_their_memory():
    q = iopf.Queue(strategy="hash")
    arr = partials(4096, 4)
    arr["flags"][3::4] |= np.uint32(iopf.Flag.LAST_PAGE)
    for _ in range(20):                 # the same workload again and again
        q.report_batch(arr).respond(iopf.Response.SUCCESS)
        q.take_responses()
    assert q.core.get_state()["nodes_used"] == 0
    first = q.sizeof()
    for _ in range(20):
        q.report_batch(arr).respond(iopf.Response.SUCCESS)
        q.take_responses()
    assert q.sizeof() == first          # no growth: freed nodes are reused
