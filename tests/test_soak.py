"""Soak: a long replay in many batches stays correct and bounded in memory.

A VT-d queue (``policies.VTD`` with a response timeout and a smaller queue
depth) takes synthetic traces with lost LPIGs and stop markers, batch after
batch, for a fixed time budget. PASIDs are allocated and freed as it goes
(each device's window of live PASIDs moves on; a PASID that leaves the
window is unbound: detached and flushed), so a per-PASID leak would show.
Between batches the caller answers some groups (``respond_batch``, some of
them stale on purpose), expires the rest (``expire``), and now and then
flushes a PASID and discards every partial. After every batch:

* ``stats.conserved()`` and ``partial_count`` agree (F6);
* each group was answered at most once, and every answer is counted;
* the outstanding requests never exceed the queue depth (F5);
* ``q.sizeof()`` (the core's C memory; for the pure-Python twin, the
  number of entries of its tables) stays under a bound taken after a short
  warm-up: it does not grow with the number of batches. The workload is
  seeded batch by batch, so the sizes are the same on every run; only the
  number of batches depends on the machine's speed.

``IOPF_SOAK_SECONDS`` sets the budget of each strategy (default 2 s, so
the file takes about 10 s); set it to, say, 600 for a long soak.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

import iopf
from iopf import Response

STRATEGIES = ("hash", "tree", "list", "python")
BUDGET_S = float(os.environ.get("IOPF_SOAK_SECONDS", "2"))
MIN_BATCHES = 40          # whatever the machine's speed
WARMUP_BATCHES = 20       # the memory bound is 1.25x the largest size seen by then
BATCH = 512               # faults a batch (~50 us of simulated time)
BURST_EVERY = 13          # and every 13th batch a burst of 8x that: overflows
DEVICES = 6
LIVE_PASIDS = 4           # per device, at any time
DEPTH = 1024              # VT-d's queue is 2048 entries; smaller overflows sooner
TIMEOUT_NS = 150_000      # ~3 batches of simulated time


def deferring(group: iopf.Group) -> None:
    """The default handler: takes every group, answers none (the caller
    does, or the timeout). VT-d needs a handler (require_handler)."""
    return None


def twin_size(core: object) -> int:
    """What the pure-Python twin holds: entries of its tables (it has no C memory)."""
    return sum(len(getattr(core, name)) for name in (
        "partials", "pending", "limits", "dev_out", "handles", "autos", "outbox"))


class Soak:
    def __init__(self, strategy: str) -> None:
        # Devices added once and kept (as VT-d before Linux 6.16): the churn's
        # detaches must not remove them.
        policy = iopf.policies.VTD.replace(response_timeout=TIMEOUT_NS, queue_depth=DEPTH,
                                           attach_adds_device=False)
        self.q = iopf.Queue(policy, strategy=strategy, default_handler=deferring)
        for dev in range(DEVICES):
            self.q.add_device(dev)
        self.rng = np.random.default_rng(1)
        self.time = 0
        self.batches = 0
        self.outstanding: list[int] = []   # cookies handed out, maybe still pending
        self.answered: set[int] = set()
        self.answered_count = 0
        self.sizes: list[int] = []
        self.base = {dev: 0 for dev in range(DEVICES)}   # first live PASID of each device

    def live(self, dev: int) -> list[int]:
        return [1 + (self.base[dev] + k) % 0xFFFFE for k in range(LIVE_PASIDS)]

    def trace(self) -> np.ndarray:
        n = BATCH * (8 if self.batches % BURST_EVERY == BURST_EVERY - 1 else 1)
        f = iopf.trace.synthetic(n, seed=self.batches, devices=DEVICES,
                                 pasids_per_device=LIVE_PASIDS, lost_lpig=0.05,
                                 stop_markers=0.01, no_pasid=0.02, start_time=self.time + 1)
        self.time = int(f["time"][-1])
        # Map synthetic PASIDs 1..LIVE_PASIDS onto each device's live window.
        window = np.array([[0] + self.live(dev) for dev in range(DEVICES)], dtype=np.uint32)
        f["pasid"] = window[f["dev"], f["pasid"]]
        return f

    def churn(self) -> None:
        """One device frees its oldest PASID (unbind: detach + flush) and
        allocates a new one, some with a constant handler of their own."""
        dev = int(self.rng.integers(0, DEVICES))
        old = self.live(dev)[0]
        self.q.detach(dev, old)
        self.q.flush_pasid(dev, old, time=self.time)
        self.base[dev] += 1
        new = self.live(dev)[-1]
        if self.rng.random() < 0.3:
            self.q.attach(dev, new, Response.SUCCESS)   # answered in C as it forms

    def step(self) -> None:
        q = self.q
        batch = q.report_batch(self.trace())
        self.outstanding += batch.cookies.tolist()
        # The caller answers a random half of what it holds (some were answered
        # already by a timeout, flush or handler: stale, R4) and forgets them.
        self.rng.shuffle(self.outstanding)
        half = len(self.outstanding) // 2
        answer, self.outstanding = self.outstanding[:half], self.outstanding[half:]
        q.respond_batch(np.array(answer, dtype=np.uint64),
                        self.rng.integers(0, 3, len(answer)))
        q.expire(self.time)
        self.outstanding = self.outstanding[-4 * DEPTH:]   # the rest times out
        if self.batches % 3 == 0:
            self.churn()
        if self.batches % 7 == 0:
            dev = int(self.rng.integers(0, DEVICES))
            q.flush_pasid(dev, self.live(dev)[int(self.rng.integers(0, LIVE_PASIDS))])
        if self.batches % 11 == 0:
            q.discard_partial()
        self.batches += 1
        self.check()

    def check(self) -> None:
        q = self.q
        s = q.stats
        assert s.conserved(), (self.batches, s)
        assert s.partial_now == q.partial_count
        sent = q.take_responses()
        cookies = sent["cookie"][sent["cookie"] != 0].tolist()
        fresh = set(cookies)
        assert len(fresh) == len(cookies) and not fresh & self.answered, "answered twice"
        self.answered |= fresh
        self.answered_count += len(cookies)
        assert self.answered_count == s.answered
        if self.batches % 10 == 0:
            held = s.partial_now + sum(len(g) for g in q.pending())
            assert held <= DEPTH, (self.batches, held)
        self.sizes.append(q.sizeof() if q.strategy != "python" else twin_size(q.core))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_soak_vtd_bounded(strategy: str) -> None:
    soak = Soak(strategy)
    start = time.perf_counter()
    while soak.batches < MIN_BATCHES or time.perf_counter() - start < BUDGET_S:
        soak.step()
    s = soak.q.stats
    # The workload did what it is meant to: every path was taken, many times.
    assert s.groups > 1000 and s.stop_markers > 0 and s.overflowed > 0
    assert s.discarded > 0 and s.flushed > 0 and s.stale_responses > 0
    assert soak.answered_count > 0 and s.rejected == 0

    warm = max(soak.sizes[:WARMUP_BATCHES])
    assert max(soak.sizes) <= 1.25 * warm, (
        f"memory grew from {warm} to {max(soak.sizes)} over {soak.batches} batches")
    if strategy != "python":
        # Small too: at most DEPTH faults held, plus one batch's output.
        assert max(soak.sizes) < 1 << 20

    # Unbinding every device empties the queue, consistently.
    for dev in range(DEVICES):
        soak.q.remove_device(dev)
    soak.check()
    assert soak.q.partial_count == 0 and soak.q.stats.pending_now == 0
