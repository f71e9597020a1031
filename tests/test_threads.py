"""Threads: one Queue shared by several threads is never corrupted.

``Queue`` takes its lock around every call (the batch loop then runs in C
without the GIL, still inside the lock). These tests hammer one queue from
several threads with ``report``, ``report_batch``, ``respond``,
``respond_batch`` (now or scheduled with ``at``), ``flush_pasid``,
``discard_partial``, ``expire``, ``advance`` and ``take_responses``, with the interpreter's switch interval cut to 10 us so
that threads interleave as often as possible, and then check:

* the counters of F6 (``stats.conserved()``) and ``partial_count``;
* every group answered at most once: the non-zero cookies of all the
  responses are distinct, they are exactly ``answered`` many, and together
  with the pending cookies they are exactly the cookies ``1..groups``;
* where the result does not depend on the interleaving (threads that own
  disjoint devices under a per-device policy), everything equals running
  the same per-device workloads one after the other: counters, the groups
  each device got, the responses each device got (but for cookie and time,
  which depend on the order), and the pending groups left.

The raw groupers (``queue.core``) are not thread-safe: see
docs/reliability.md.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

import iopf
from iopf import RESPONSE_DTYPE, Fault, Response

STRATEGIES = ("hash", "tree", "list", "python")
JOIN_TIMEOUT = 120  # s: a thread still running then is a deadlock


@pytest.fixture(autouse=True)
def _fast_switching() -> Iterator[None]:
    """Make the interpreter switch threads every 10 us instead of 5 ms."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_threads(targets: list[Callable[[], None]]) -> None:
    """Start all targets at once (barrier); re-raise the first error; fail on a hang."""
    barrier = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait()
                fn()
            except BaseException as e:  # reported in the main thread
                errors.append(e)
                barrier.abort()
        return run

    threads = [threading.Thread(target=wrap(fn), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread hung: deadlock?"
    if errors:
        raise errors[0]


def pending_cookies(q: iopf.Queue) -> np.ndarray:
    """The pending cookies, read under the queue's lock (the raw grouper must not
    be read while another thread runs a batch in it)."""
    return q.pending_cookies()


def check_consistent(q: iopf.Queue, responses: np.ndarray) -> None:
    """The invariants that hold whatever the interleaving."""
    s = q.stats
    assert s.conserved(), s
    assert s.partial_now == q.partial_count
    answered = responses["cookie"][responses["cookie"] != 0].astype(np.int64)
    assert len(np.unique(answered)) == len(answered), "a group was answered twice"
    assert len(answered) == s.answered
    pending = q.core.pending_cookies().astype(np.int64)
    assert len(pending) == s.pending_now
    assert not set(pending.tolist()) & set(answered.tolist())
    assert set(pending.tolist()) | set(answered.tolist()) == set(range(1, s.groups + 1))
    groups = q.pending()
    assert [g.cookie for g in groups] == pending.tolist()
    assert sum(len(g) for g in groups) + s.partial_now <= s.faults_reported


# ---------------------------------------------------------------------------
# disjoint devices: the result must equal the sequential one

N_THREADS = 4


def device_workload(dev: int, seed: int, n: int) -> np.ndarray:
    f = iopf.trace.synthetic(n, seed=seed * 100 + dev, devices=1, pasids_per_device=3,
                             lost_lpig=0.1, stop_markers=0.05, no_pasid=0.1, group_size=(1, 6))
    f["dev"] = dev
    return f


def grpid_handler(group: iopf.Group) -> Response | None:
    """A Python handler whose answer depends on the group, not on the cookie
    (cookies depend on the interleaving): defers even group ids."""
    return None if group.grpid % 2 == 0 else Response.FAILURE


@dataclass
class DeviceLog:
    """What one device saw: its groups (faults), in order."""

    groups: list[bytes] = field(default_factory=list)


def device_thread(q: iopf.Queue, dev: int, faults: np.ndarray, seed: int,
                  log: DeviceLog) -> Callable[[], None]:
    """A deterministic sequence of calls that touches only device dev."""

    def run() -> None:
        rng = np.random.default_rng(seed * 1000 + dev)
        mine: list[int] = []      # cookies of this device's groups, oldest first
        done: list[int] = []      # cookies this thread answered (a repeat is stale)
        i = 0
        while i < len(faults):
            op = rng.choice(["batch", "batch", "single", "respond", "respond1", "flush"])
            if op == "batch":
                k = int(rng.integers(1, 200))
                batch = q.report_batch(faults[i:i + k])
                i += k
                log.groups += [g.faults.tobytes() for g in batch]
                mine += batch.cookies.tolist()
            elif op == "single":
                for rec in faults[i:i + int(rng.integers(1, 10))]:
                    i += 1
                    if i % 2:   # both per-call entries, the Fault one and the scalar one
                        g = q.report(Fault.from_record(rec))
                    else:
                        t, d, p, gi, fl, pe, ad, _ = rec.tolist()
                        g = q.report_values(d, p, gi, fl, ad, perm=pe, time=t)
                    if g is not None:
                        log.groups.append(g.faults.tobytes())
                        if rng.random() < 0.3:   # answered through the group at once
                            g.respond(Response.SUCCESS)
                            done.append(g.cookie)
                        else:
                            mine.append(g.cookie)
            elif op == "respond" and mine:
                k = int(rng.integers(1, len(mine) + 1))
                take, mine[:k] = mine[:k], []
                # One cookie already answered (stale, R4), the rest pending or not.
                cookies = np.array(take + done[-1:], dtype=np.uint64)
                q.respond_batch(cookies, rng.integers(0, 3, len(cookies)))
                done += take
            elif op == "respond1" and mine:
                cookie = mine.pop(int(rng.integers(0, len(mine))))
                q.respond(cookie, Response.SUCCESS)
                done.append(cookie)
            elif op == "flush":
                pasid = [None, 1, 2, 3][int(rng.integers(0, 4))]
                q.flush_pasid(dev, pasid, Response.INVALID)
    return run


def make_queue(strategy: str) -> iopf.Queue:
    q = iopf.Queue(iopf.policies.PCIE, strategy=strategy)
    for dev in range(N_THREADS):
        q.add_device(dev, outstanding=48)   # per device: overflows stay per device
        q.attach(dev, 1, Response.SUCCESS)  # a constant handler, answered in C
        q.attach(dev, 2, grpid_handler)     # a Python handler, called inside the lock
    return q


def per_device(responses: np.ndarray) -> dict[int, list[tuple]]:
    """Each device's responses in order, without cookie and time."""
    keep = [n for n in RESPONSE_DTYPE.names or () if n not in ("cookie", "time")]
    return {dev: responses[responses["dev"] == dev][keep].tolist()
            for dev in range(N_THREADS)}


def pending_by_device(q: iopf.Queue) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {dev: [] for dev in range(N_THREADS)}
    for g in q.pending():
        out[g.dev].append(g.faults.tobytes())
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("seed", [1, 2])
def test_disjoint_devices_equal_sequential(strategy: str, seed: int) -> None:
    n = 3000 if strategy == "python" else 12000
    work = {dev: device_workload(dev, seed, n) for dev in range(N_THREADS)}

    # Sequential reference: the same per-device call sequences, one device after another.
    ref = make_queue(strategy)
    ref_logs = {dev: DeviceLog() for dev in work}
    for dev, faults in work.items():
        device_thread(ref, dev, faults, seed, ref_logs[dev])()
    ref_responses = ref.take_responses()

    q = make_queue(strategy)
    logs = {dev: DeviceLog() for dev in work}
    run_threads([device_thread(q, dev, faults, seed, logs[dev]) for dev, faults in work.items()])
    responses = q.take_responses()

    check_consistent(q, responses)
    check_consistent(ref, ref_responses)
    assert q.stats == ref.stats
    assert q.stats.overflowed > 0 and q.stats.flushed > 0 and q.stats.stale_responses > 0
    for dev in work:
        assert logs[dev].groups == ref_logs[dev].groups, f"device {dev}: groups differ"
    assert per_device(responses) == per_device(ref_responses)
    assert pending_by_device(q) == pending_by_device(ref)


# ---------------------------------------------------------------------------
# shared devices, every operation: no corruption whatever the interleaving

class Flaky:
    """A Python handler that answers, defers, answers another pending group
    from inside the handler (the lock is reentrant), or raises (R3)."""

    def __init__(self, q: iopf.Queue) -> None:
        self.q = q

    def __call__(self, group: iopf.Group) -> Response | None:
        kind = group.cookie % 5
        if kind == 0:
            return None
        if kind == 1:
            self.q.respond(group.cookie - 1, Response.SUCCESS)   # maybe stale: fine
            return Response.SUCCESS
        if kind == 2:
            raise KeyError("handler failed")
        return Response(kind - 2)


POLICIES = {
    "pcie": iopf.policies.PCIE,
    "linux-timeout": iopf.policies.LINUX.replace(response_timeout=2_000),
    "vtd-small": iopf.policies.VTD.replace(queue_depth=300, response_timeout=5_000),
}


def chaos_thread(q: iopf.Queue, faults: np.ndarray, seed: int,
                 sink: list[np.ndarray]) -> Callable[[], None]:
    def run() -> None:
        rng = np.random.default_rng(seed)
        i = 0
        while i < len(faults):
            op = rng.choice(["batch", "batch", "single", "respond", "respond_batch", "flush",
                             "discard", "expire", "take", "pending", "respond_at", "advance"])
            try:
                if op == "batch":
                    k = int(rng.integers(1, 300))
                    i += k   # first: a handler's error raises after the whole batch
                    q.report_batch(faults[i - k:i])
                elif op == "single":
                    for rec in faults[i:i + 5]:
                        i += 1
                        q.report(Fault.from_record(rec))
                elif op == "respond":
                    q.respond(int(rng.integers(1, q.stats.groups + 2)), Response.SUCCESS)
                elif op == "respond_batch":
                    cookies = pending_cookies(q)[: int(rng.integers(0, 50))]
                    if rng.random() < 0.5:   # and some that are stale or unknown
                        cookies = np.r_[cookies, rng.integers(1, q.stats.groups + 10, 5)]
                    q.respond_batch(cookies.astype(np.uint64), int(rng.integers(0, 3)))
                elif op == "flush":
                    q.flush_pasid(int(rng.integers(0, 3)), [None, 1, 2][int(rng.integers(0, 3))])
                elif op == "discard" and rng.random() < 0.2:
                    q.discard_partial()
                elif op == "expire":
                    q.expire(q.now)
                elif op == "respond_at":   # scheduled answers, sent by a later advance
                    cookies = pending_cookies(q)[: int(rng.integers(0, 20))]
                    q.respond_batch(cookies.astype(np.uint64), Response.SUCCESS,
                                    at=q.now + int(rng.integers(0, 3_000)))
                elif op == "advance":
                    q.advance(q.now + int(rng.integers(0, 2_000)))
                elif op == "take":
                    sink.append(q.take_responses())
                elif op == "pending":
                    for g in q.pending()[:20]:
                        assert len(g) >= 1 and g.cookie > 0
            except KeyError:
                pass   # a Flaky handler raised: the group was answered FAILURE (R3)
    return run


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_shared_queue_stays_consistent(strategy: str, policy: str) -> None:
    q = iopf.Queue(POLICIES[policy], strategy=strategy)
    q.default_handler = None
    for dev in range(3):
        q.add_device(dev, outstanding=120)
        q.attach(dev, 1, Flaky(q))
        q.attach(dev, 2, Response.SUCCESS)
        q.attach(dev, None, Response.INVALID)
    n = 2500 if strategy == "python" else 10000
    faults = iopf.trace.synthetic(n * N_THREADS, seed=5, devices=3, pasids_per_device=3,
                                  lost_lpig=0.05, stop_markers=0.02, no_pasid=0.1)
    sink: list[np.ndarray] = []
    run_threads([chaos_thread(q, faults[t::N_THREADS], t, sink) for t in range(N_THREADS)])
    sink.append(q.take_responses())
    responses = np.concatenate(sink)
    s = q.stats
    assert s.faults_reported == len(faults)
    assert s.groups > 0 and s.answered > 0
    check_consistent(q, responses)
    if q.policy.queue_depth is not None:
        assert s.partial_now + sum(len(g) for g in q.pending()) <= q.policy.queue_depth

    # Still a working queue: removing every device empties it, consistently.
    for dev in range(3):
        q.remove_device(dev)
    responses = np.concatenate([responses, q.take_responses()])
    check_consistent(q, responses)
    assert q.partial_count == 0 and q.stats.pending_now == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_responder_threads_answer_each_group_once(strategy: str) -> None:
    """One thread reports; three race to answer the same pending groups,
    one by one and in batches: each group is answered exactly once."""
    q = iopf.Queue(strategy=strategy)
    faults = iopf.trace.synthetic(4000 if strategy == "python" else 20000, seed=9)
    faults["flags"] |= np.uint32(iopf.Flag.LAST_PAGE)   # every request a group of one
    done = threading.Event()
    wins: list[list[int]] = [[], [], []]

    def reporter() -> None:
        try:
            for start in range(0, len(faults), 100):
                q.report_batch(faults[start:start + 100])
        finally:
            done.set()

    def responder(k: int) -> Callable[[], None]:
        def run() -> None:
            rng = np.random.default_rng(k)
            while True:
                finished = done.is_set()
                if k == 0:   # one by one, the newest groups, racing the batches of the others
                    groups = q.stats.groups
                    for cookie in range(max(1, groups - 300), groups + 1):
                        if q.respond(cookie, Response.SUCCESS):
                            wins[k].append(cookie)
                else:
                    cookies = pending_cookies(q)
                    rng.shuffle(cookies)
                    sent = q.respond_batch(cookies, Response.INVALID)
                    wins[k] += cookies[sent].tolist()
                if finished:
                    return
        return run

    run_threads([reporter, responder(0), responder(1), responder(2)])
    # The last pass of each responder saw every group formed.
    all_wins = [c for w in wins for c in w]
    assert sorted(all_wins) == list(range(1, len(faults) + 1))
    responses = q.take_responses()
    check_consistent(q, responses)
    assert q.stats.pending_now == 0 and q.stats.answered == len(faults)
    assert np.array_equal(np.sort(responses["cookie"]), np.arange(1, len(faults) + 1))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_per_call_entries_wait_for_a_batch_without_the_gil(strategy: str) -> None:
    """report, report_values, respond and Group.respond skip the queue's lock when no
    Python code can run inside them; they must still never enter the core
    while another thread's batch runs in it without the GIL (big batches make
    that window wide). Each thread owns its devices, so the result must equal
    the sequential one."""
    trace = iopf.trace.synthetic(100_000, seed=3, devices=4)
    batch_part = trace[trace["dev"] % 2 == 0]
    call_part = trace[trace["dev"] % 2 == 1]

    def batches(q: iopf.Queue) -> None:
        for i in range(0, len(batch_part), 16384):
            q.report_batch(batch_part[i:i + 16384]).respond(Response.SUCCESS)

    def calls(q: iopf.Queue) -> None:
        for i, rec in enumerate(call_part.tolist()):
            t, d, p, gi, fl, pe, ad, priv = rec
            private = (int(priv[0]), int(priv[1]))
            g = (q.report(Fault(d, p, gi, ad, perm=pe, flags=fl, time=t, private=private)) if i % 2
                 else q.report_values(d, p, gi, fl, ad, perm=pe, time=t))
            if g is not None:   # both lock-free answers: the group's and the queue's
                g.respond(Response.SUCCESS) if i % 3 else q.respond(g.cookie, Response.SUCCESS)

    alone = iopf.Queue(strategy=strategy)
    batches(alone)
    calls(alone)
    shared = iopf.Queue(strategy=strategy)
    run_threads([lambda: batches(shared), lambda: calls(shared)])
    assert shared.stats.conserved()
    want, got = alone.stats.as_dict(), shared.stats.as_dict()
    assert got == want
    assert shared.partial_count == alone.partial_count


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lock_free_entries_wait_while_another_thread_holds_the_queue(strategy: str) -> None:
    """report, report_values, respond and Group.respond run without the lock
    only while no other thread holds the queue: with its lock held elsewhere
    each of them waits for it (a deterministic form of the race above; the
    join timeout only gives a wrong entry time to finish, a right one never does)."""
    q = iopf.Queue(strategy=strategy)
    groups = [q.report_values(1, 1, i, 3, 0) for i in range(2)]
    g0, g1 = groups
    assert g0 is not None and g1 is not None
    calls = [lambda: q.respond(g0, 0), lambda: g1.respond(0),
             lambda: q.report_values(1, 1, 9, 3, 0), lambda: q.report(Fault(1, 1, 10, 0, last=True))]
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with q._lock:
            held.set()
            release.wait()

    h = threading.Thread(target=holder)
    h.start()
    held.wait()
    results: list[object] = []
    workers = [threading.Thread(target=lambda f=f: results.append(f())) for f in calls]
    for w in workers:
        w.start()
    for w in workers:
        w.join(0.2)
    waited = [w.is_alive() for w in workers]
    answered = q.core.stats()["answered"]      # the core's counters: no lock taken
    release.set()
    h.join()
    for w in workers:
        w.join()
    assert waited == [True] * 4 and answered == 0
    assert sorted(map(bool, results)) == [True] * 4
    assert q.stats.answered == 2 and q.stats.groups == 4
