"""The core's C memory is visible to tracemalloc and comes back when the queue goes."""
from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

import iopf
import iopf_core
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
        assert held >= q.sizeof() >= len(arr) * 44   # every node (44 bytes) is a traced allocation
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


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_bytes_per_held_partial(strategy):
    """The memory goal: at most 64 bytes of C memory per held partial in groups
    of 4 or more, at most 128 when every partial is its own group and its own
    (device, PASID).

    A node is 44 bytes; each open group adds a Part (28 bytes) and its share of
    the strategy's table (an 8-byte slot of the hash's index table at a load of
    3/8 to 3/4, or a 24-byte tree node), and each (device, PASID) with partials a
    slot of the table of flush chains. Sizes just past a table's resize are the
    worst.
    """
    for group_size in (4, 8, 32):
        for n in (16_385, 30_040, 65_536, 67_330, 100_000):
            q = iopf.Queue(strategy=strategy)
            q.report_batch(partials(n, group_size))
            assert q.sizeof() / n <= 64, (group_size, n, q.sizeof() / n)
    for n in (16_385, 24_578, 49_153, 65_537, 98_305, 100_000):
        worst = partials(n, 1)
        worst["dev"] = np.arange(n)
        q = iopf.Queue(strategy=strategy)
        q.report_batch(worst)
        assert q.partial_count == n
        assert q.sizeof() / n <= 128, (n, q.sizeof() / n)


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


def core_domain_bytes() -> int:
    """Bytes tracemalloc holds in the core's own trace domain."""
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.DomainFilter(True, iopf_core.TRACE_DOMAIN)])
    return sum(t.size for t in snap.traces)


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_core_memory_has_its_own_trace_domain(strategy):
    """Every byte sizeof() counts is one trace in TRACE_DOMAIN, and nothing else
    is there; lent output arrays come back to it, and it all goes with the queue."""
    arr = partials(20_000, 4)
    closing = arr.copy()
    closing["flags"] |= np.uint32(iopf.Flag.LAST_PAGE)   # every held group completes
    gc.collect()
    tracemalloc.start()
    try:
        assert core_domain_bytes() == 0
        q = iopf.Queue(strategy=strategy)
        q.report_batch(arr)
        assert core_domain_bytes() == q.sizeof()
        batch = q.report_batch(closing)                 # large output: lent to numpy
        assert len(batch.faults) == 2 * len(arr)
        lent = core_domain_bytes() - q.sizeof()
        assert lent >= batch.faults.nbytes              # the arrays' memory, same domain
        batch.respond(iopf.Response.SUCCESS)
        del batch
        assert core_domain_bytes() == q.sizeof()        # back in the grouper, for reuse
        del q
        gc.collect()
        assert core_domain_bytes() == 0
    finally:
        tracemalloc.stop()


def test_batch_output_memory_is_reused():
    """A second batch of the same size writes into the first one's memory once
    its arrays are gone, instead of allocating (and faulting in) new pages."""
    q = iopf.Queue()
    arr = partials(40_000, 4)
    arr["flags"][3::4] |= np.uint32(iopf.Flag.LAST_PAGE)
    first = q.report_batch(arr)
    addr = first.faults.ctypes.data
    first.respond(iopf.Response.SUCCESS)
    del first
    second = q.report_batch(arr)
    assert second.faults.ctypes.data == addr
    kept = q.report_batch(arr)                          # `second` still alive: new memory
    assert kept.faults.ctypes.data != second.faults.ctypes.data
    # Each group is 4 consecutive records, LPIG last: the output is the input,
    # and the live batch was not written over by the later one.
    assert second.faults.tobytes() == kept.faults.tobytes() == arr.tobytes()
    assert len(second) == len(kept) == 10_000


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_entries_are_reused_and_keep_their_attachments(strategy):
    """(device, PASID) entries freed by detach are reused (no growth over
    rounds), and deleting some never loses another's attachment."""
    import random
    q = iopf.Queue(strategy=strategy)
    keys = [(d, p) for d in range(1, 9) for p in range(1, 65)]
    code = {}
    for d, p in keys:
        q.attach(d, p, iopf.Response.SUCCESS)
        code[d, p] = int(iopf.Response.SUCCESS)
    first = q.core.get_state()
    rng = random.Random(11)
    for _ in range(5):
        gone = rng.sample(keys, len(keys) // 2)
        for d, p in gone:
            assert q.detach(d, p)
        for d, p in rng.sample(gone, len(gone)):
            q.attach(d, p, iopf.Response.INVALID)
            code[d, p] = int(iopf.Response.INVALID)
    state = q.core.get_state()
    assert state["entries"] == first["entries"]
    assert state["entry_capacity"] == first["entry_capacity"]
    for i, (d, p) in enumerate(keys):       # every attachment still answers its groups
        q.report(iopf.Fault(d, p, i % 512, 0x1000, last=True))
    out = q.take_responses()
    assert [(int(r["dev"]), int(r["pasid"]), int(r["code"])) for r in out] == [
        (d, p, code[d, p]) for d, p in keys]
