"""All or nothing: a MemoryError leaves the core as it was before the call (or,
in a batch, after the last whole record, at ``position``), and it goes on working.

``iopf_core.grouper._fail_alloc_after(n)`` lets n more allocations of the core
succeed and fails the next one. The test counts the allocations of a mixed
workload, then for every N fails the Nth: the state after the failed call must
equal that of a core that ran the same calls without it (a batch: up to the
record it stopped at), and the workload finished afterwards must end where an
undisturbed run ends. The twin has no C allocations, so only the compiled
strategies take part.
"""
from __future__ import annotations

import gc
import os
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import iopf
import iopf_core
from iopf import FAULT_DTYPE
from iopf_core import STRATEGIES
from iopf_core.grouper import _fail_alloc_after

C_STRATEGIES = ["hash", "tree", "list"]
SANITIZE = os.environ.get("HYPOTHESIS_PROFILE") == "sanitize"
POLICY = iopf.policies.PCIE.replace(response_timeout=1000)
# The same workload where attaching adds a device and the last detach removes it
# (its extra responses reserved first), and requests of other devices are refused.
VTD_LIKE = POLICY.replace(attach_adds_device=True, require_device=True)


def batch(n: int, seed: int, keys: int) -> np.ndarray:
    """n requests over many (dev, pasid, grpid) keys, a third of them LPIGs."""
    rng = np.random.default_rng(seed)
    a = np.zeros(n, FAULT_DTYPE)
    a["time"] = np.arange(n) + seed * 10_000
    a["dev"] = rng.integers(1, 4, n)
    a["pasid"] = rng.integers(5, 9, n)
    a["grpid"] = rng.integers(0, keys, n)
    a["flags"] = 1 | np.where(rng.random(n) < 0.3, 2, 0)
    a["perm"] = 1
    a["addr"] = np.arange(n) << 12
    return a


N1 = 1500 if SANITIZE else 6000     # more than one 4096-node chunk
A, B = batch(N1, 1, 500), batch(600, 2, 20)
# Groups of a device whose handler is the service model: one worker, so they
# wait for it (its FIFO grows) and their answers are scheduled (the heap grows).
SERVED = batch(400, 4, 30)
SERVED["dev"] = 5

Call = tuple[str, tuple[Any, ...]]
WORKLOAD: list[Call] = [
    ("add_device", (1, 100_000)),
    ("attach", (2, 7, None, -1)),          # a "Python" handler: run stops at its groups
    ("attach", (3, 8, None, 0)),           # a constant one: answered in C
    ("run", (A,)),
    # Timeouts of many groups at once, more responses than the outbox holds
    # (the responses so far taken first): answering grows it.
    ("take_responses", ()),
    ("expire", (int(A["time"][N1 // 4]) + 1000,)),
    ("take_responses", ()),
    ("advance", (int(A["time"][3 * N1 // 4]) + 1000,)),
    ("report", ((N1 * 2, 1, 5, 3, 1, 1, 0, (0, 0)),)),
    ("report", ((N1 * 2 + 1, 1, 5, 3, 3, 1, 0, (0, 0)),)),
    ("respond_half", ()),
    ("flush_pasid", (1, 6, 0, None)),
    ("detach", (2, 7, None)),
    ("auto_advance", (True,)),             # B's first request times out A's groups first
    ("run", (B,)),
    ("auto_advance", (False,)),
    ("expire", (N1 + 700,)),
    ("remove_device", (2, None)),
    ("attach", (1, 5, None, 2)),
    ("run", (batch(300, 3, 4),)),
    ("discard_partial", ()),
    ("set_service", (1, 0, 50.0, 0.0, None, 7, 0)),
    *[("attach", (5, p, None, 3)) for p in range(5, 9)],
    ("run", (SERVED,)),
    ("take_responses", ()),
    ("advance", (2**63,)),                  # every scheduled answer and timeout
]
# Enough (dev, PASID) and device entries for the entry table to grow several times.
WORKLOAD[1:1] = [("add_device", (d, 50)) for d in range(10, 30)]
WORKLOAD[1:1] = [("attach", (4, p, None, p % 3)) for p in range(30)]
# The per-call entries first, while every pool is still empty (so they allocate):
# a partial field by field, then the LPIG as a tuple, which completes the group.
WORKLOAD[0:0] = [("report_values", (0, 1, 9, 2, 1, 1, 0x1000)),
                 ("report_fault", ((1, 1, 9, 2, 3, 1, 0x2000, (0, 0)),))]


def apply(core: Any, name: str, args: tuple[Any, ...], start: int = 0) -> None:
    if name == "run":
        arr = args[0]
        i = start
        while i < len(arr):
            i = core.run(arr, i)
        core.take_groups()
    elif name == "auto_advance":
        core.auto_advance = args[0]
    elif name == "respond_half":
        cookies = core.pending_cookies()[::2]
        core.respond_batch(cookies, np.ones(len(cookies), np.uint32))
    elif name == "respond_all":
        cookies = core.pending_cookies()
        core.respond_batch(cookies, np.zeros(len(cookies), np.uint32))
    else:
        getattr(core, name)(*args)


def first_failure(core: Any, workload: list[tuple[str, tuple[Any, ...]]]) -> int | None:
    """Apply the calls of the workload until one raises MemoryError: its index
    (None: none did)."""
    for k, (name, args) in enumerate(workload):
        try:
            apply(core, name, args)
        except MemoryError:
            return k
    return None


def state(core: Any) -> tuple[Any, ...]:
    st = core.get_state()
    # last_kind too: a failed request leaves the last one's (it is kept only once taken)
    return (core.stats(), core.partial_count, core.now, core.last_kind, st["nodes_used"], st["entries"],
            [(int(k), core.group_faults(int(k)).tobytes()) for k in core.pending_cookies()],
            core.take_responses().tobytes())


def reference(strategy: str, upto: int, position: int | None = None,
              policy: iopf.Policy = POLICY) -> Any:
    """A core that ran WORKLOAD[:upto] (and the batch of WORKLOAD[upto] up to position)."""
    core = STRATEGIES[strategy](policy)
    for name, args in WORKLOAD[:upto]:
        apply(core, name, args)
    if position is not None:
        apply(core, "run", (WORKLOAD[upto][1][0][:position],))
    return core


def count_allocations(strategy: str, policy: iopf.Policy = POLICY) -> int:
    """Allocations of the workload, after the core is made."""
    core = STRATEGIES[strategy](policy)
    before = _fail_alloc_after(-1)
    for name, args in WORKLOAD:
        apply(core, name, args)
    return _fail_alloc_after(-1) - before


@pytest.mark.parametrize("policy", [POLICY, VTD_LIKE], ids=["pcie", "vtd_like"])
@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_every_allocation_failure_leaves_the_state_as_before(strategy: str, policy: iopf.Policy) -> None:
    total = count_allocations(strategy, policy)
    assert total > 30            # the workload grows every pool several times
    final = state(reference(strategy, len(WORKLOAD), policy=policy))
    failed_at: set[str] = set()
    try:
        for n in range(total):
            core: Any = STRATEGIES[strategy](policy)     # compiled: get_state
            _fail_alloc_after(n)
            k = first_failure(core, WORKLOAD)
            if k is None:
                # The one allocation whose failure no call reports: nodes for
                # the groups of a thin batch output, which then stays kept
                # until they are answered. Nothing else may differ.
                _fail_alloc_after(-1)
                assert core.get_state()["thin_failures"] == 1, f"allocation {n} of {total} did not fail"
                assert state(core) == final, n
                failed_at.add("thin output")
                continue
            _fail_alloc_after(-1)
            name, args = WORKLOAD[k]
            failed_at.add(name)
            position = core.position if name == "run" else None
            # after the failure: exactly as a core that never made the call
            # (a batch: that ran its records before `position`)
            assert state(core) == state(reference(strategy, k, position, policy)), (n, name, position)
            # and it goes on: the call again (a batch: from where it stopped), then the rest
            apply(core, name, args, position or 0)
            for name2, args2 in WORKLOAD[k + 1:]:
                apply(core, name2, args2)
            got = state(core)
            # the responses of the first part were taken by the comparison above
            assert got[:7] == final[:7], (n, name)
            assert iopf.Stats(got[0]).conserved()
    finally:
        _fail_alloc_after(-1)
    assert {"run", "attach", "add_device", "report", "report_values",
            "report_fault", "expire", "advance"} <= failed_at, failed_at


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_a_failed_allocation_in_the_queue_keeps_it_usable(strategy: str) -> None:
    q = iopf.Queue(POLICY, strategy=strategy, default_handler=iopf.Response.SUCCESS)
    arr = batch(5000, 9, 300)
    before = q.stats
    try:
        _fail_alloc_after(3)
        with pytest.raises(MemoryError):
            q.report_batch(arr)
    finally:
        _fail_alloc_after(-1)
    pos = q.core.position
    s = q.stats
    assert s.conserved() and s.faults_reported - before.faults_reported == pos
    q.report_batch(arr[pos:])
    ref = iopf.Queue(POLICY, strategy="python", default_handler=iopf.Response.SUCCESS)
    ref.report_batch(arr)
    assert q.stats == ref.stats


def test_fail_alloc_after_counts_and_turns_off() -> None:
    a = _fail_alloc_after(-1)
    core: Callable[..., Any] = STRATEGIES["hash"]
    core(POLICY)
    assert _fail_alloc_after(-1) > a


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_a_failed_last_detach_leaves_the_device_and_its_groups(strategy: str) -> None:
    """The last detach under attach_adds_device removes the device: its responses
    (every group of the device) are reserved before anything changes."""
    def make() -> Any:
        core = STRATEGIES[strategy](VTD_LIKE)
        core.attach(2, 7, None, -1)
        for g in range(300):        # more responses than the outbox holds yet
            core.report((g, 2, 7, g % 512, 3, 1, 0, (0, 0)))
        core.take_groups()
        return core
    core, ref = make(), make()
    assert len(core.pending_cookies()) == 300
    try:
        _fail_alloc_after(0)
        with pytest.raises(MemoryError):
            core.detach(2, 7, None)
    finally:
        _fail_alloc_after(-1)
    assert state(core) == state(ref)
    assert core.detach(2, 7, None) and ref.detach(2, 7, None)
    got = core.take_responses()
    assert got.tobytes() == ref.take_responses().tobytes()
    assert got["cookie"].tolist() == sorted(got["cookie"].tolist(), reverse=True)   # newest first
    assert len(got) == 300 and len(core.pending_cookies()) == 0


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_a_failed_serve_leaves_the_model_and_the_group(strategy: str) -> None:
    """serve(): the model's FIFO place and the heap slot of the answer are made
    before the model counts the group, so a MemoryError changes nothing."""
    core = STRATEGIES[strategy](iopf.policies.PCIE)
    core.set_service(1, 0, 50.0, 0.0, None, 7, 0)    # one worker: the groups wait
    core.attach(1, 1, None, -1)
    for g in range(40):
        core.report((g, 1, 1, g, 3, 1, 0, (0, 0)))
    failed = 0
    for cookie in core.pending_cookies().tolist():
        before = (core.service_stats(), core.next_deadline(), core.stats())
        try:
            _fail_alloc_after(0)
            assert core.serve(cookie, cookie)
        except MemoryError:
            failed += 1
            _fail_alloc_after(-1)
            assert (core.service_stats(), core.next_deadline(), core.stats()) == before
            assert core.serve(cookie, cookie)
        finally:
            _fail_alloc_after(-1)
    assert failed and core.service_stats()["served"] == 40
    core.advance(2**63)
    assert len(core.take_responses()) == 40 and not len(core.pending_cookies())


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_a_failed_report_with_auto_advance_leaves_the_timeouts_due(strategy: str) -> None:
    """With auto_advance, what falls due before a request is sent first; the
    room both take is made before either changes anything, so a MemoryError
    in the request leaves the timeouts unanswered too (and the retry answers them)."""
    def make() -> Any:
        core = STRATEGIES[strategy](POLICY.replace(response_timeout=10, queue_depth=None))
        for g in range(5):      # pending groups, no output buffers used yet
            core.report_group(g, 1, 1, g, 1, 3, 1, 2, 0, 4096)
        core.auto_advance = True
        return core
    rec = (100, 2, 1, 0, 3, 1, 0, (0, 0))    # an LPIG: its group is collected (a new buffer)
    ref = make()
    ref.report(rec)
    expected = state(ref)
    failed = 0
    for n in range(10):
        core = make()
        before = state(core)
        try:
            _fail_alloc_after(n)
            core.report(rec)
        except MemoryError:
            failed += 1
            _fail_alloc_after(-1)
            assert state(core) == before, n
            core.report(rec)
        finally:
            _fail_alloc_after(-1)
        assert state(core) == expected, n
    assert failed >= 2


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_a_failed_respond_batch_at_schedules_nothing(strategy: str) -> None:
    """respond_batch(at=...) makes the heap room for all its answers before it
    schedules the first: a MemoryError schedules none."""
    core = STRATEGIES[strategy](iopf.policies.PCIE)
    for g in range(100):
        core.report((g, 1, 1, g, 3, 1, 0, (0, 0)))
    cookies = core.pending_cookies()
    codes = np.zeros(len(cookies), np.uint32)
    failed = 0
    for n in range(4):
        try:
            _fail_alloc_after(n)
            core.respond_batch(cookies, codes, 10, None, 500)
        except MemoryError:
            failed += 1
            assert core.next_deadline() is None
            continue
        finally:
            _fail_alloc_after(-1)
        break
    assert failed and core.next_deadline() == 500
    core.advance(500)
    assert len(core.take_responses()) == 100 and not len(core.pending_cookies())


class _NumpyFails:
    """np.empty, failing at call number `at` (None: never), counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int | None) -> None:
        self.calls, self.at = 0, at
        monkeypatch.setattr(np, "empty", self.wrap(np.empty))

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.at:
                raise MemoryError
            return real(*args, **kwargs)
        return call


def take_failures(monkeypatch: pytest.MonkeyPatch, take: Callable[[], Any]) -> list[tuple[str, int]]:
    """Every allocation take() makes, as a way to fail it: ("numpy", at) for
    its at-th np.empty (take_responses' group times), ("core", k) for its
    k-th allocation of the core (the array of every output, copied or lent,
    is one)."""
    with monkeypatch.context() as m:
        count = _NumpyFails(m, None)
        before = _fail_alloc_after(-1)
        take()
        allocs = _fail_alloc_after(-1) - before
    return [("numpy", at) for at in range(1, count.calls + 1)] + [("core", k) for k in range(allocs)]


def take_failing(monkeypatch: pytest.MonkeyPatch, how: tuple[str, int], take: Callable[[], Any]) -> None:
    """take() with the allocation `how` (see take_failures) failing: it raises MemoryError."""
    kind, at = how
    with monkeypatch.context() as m:
        if kind == "numpy":
            _NumpyFails(m, at)
        else:
            _fail_alloc_after(at)
        try:
            with pytest.raises(MemoryError):
                take()
        finally:
            _fail_alloc_after(-1)


def grouped(strategy: str, n: int) -> Any:
    """A core holding the output of n faults in groups of 4, half of them answered."""
    core = iopf.Queue(strategy=strategy).core
    a = batch(n, 5, 1)
    a["dev"], a["pasid"] = 1, 5
    a["grpid"] = np.arange(n) // 4 % 256
    a["flags"] = np.where(np.arange(n) % 4 == 3, 3, 1)
    assert core.run(a) == n
    cookies = core.pending_cookies()[::2]
    core.respond_batch(cookies, np.zeros(len(cookies), np.uint32))
    return core


def assert_outputs(core: Any, groups: Any, responses: Any) -> None:
    for got, want in zip(core.take_groups(), groups):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(core.take_responses(group_times=True), responses):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("strategy", C_STRATEGIES)
@pytest.mark.parametrize("n", [40, 8000])       # outputs copied; outputs lent (over 64 KiB)
@pytest.mark.parametrize("call", ["take_groups", "take_responses"])
def test_take_outputs_all_or_nothing_when_an_allocation_fails(monkeypatch, strategy, n, call):
    """take_groups and take_responses make every array before they empty any
    output: when one fails to allocate (numpy's copy of a small output, the
    array a large one is lent to, or the core's own memory), the call raises
    MemoryError and the next calls take everything, as if it had not been
    made."""
    want = grouped(strategy, n)
    groups, responses = want.take_groups(), want.take_responses(group_times=True)
    assert len(groups[2]) == n // 4 and len(responses[0]) == n // 8

    def take(core: Any) -> None:
        if call == "take_groups":
            core.take_groups()
        else:
            core.take_responses(group_times=True)
    counted = grouped(strategy, n)
    failures = take_failures(monkeypatch, lambda: take(counted))
    assert len(failures) >= 2
    for how in failures:
        core = grouped(strategy, n)
        take_failing(monkeypatch, how, lambda: take(core))
        assert_outputs(core, groups, responses)


def core_domain_bytes() -> int:
    """Bytes tracemalloc holds in the core's own trace domain."""
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.DomainFilter(True, iopf_core.TRACE_DOMAIN)])
    return sum(t.size for t in snap.traces)


@pytest.mark.parametrize("strategy", C_STRATEGIES)
@pytest.mark.parametrize("call", ["take_groups", "take_responses"])
def test_a_failed_take_frees_nothing_twice_and_leaks_nothing(monkeypatch, strategy, call):
    """The blocks a failed take made (lent outputs, over 64 KiB) do not own
    their memory: they go with the failed call, and the retry lends the same
    memory to new arrays. Those arrays go (their memory to the spare) and the
    queue goes: nothing is freed twice (a double free aborts the sanitizer
    run) and nothing of the core is left in its trace domain."""
    def take(core: Any) -> None:
        if call == "take_groups":
            core.take_groups()
        else:
            core.take_responses(group_times=True)
    N = 16_000      # every output over 64 KiB: lent, not copied
    counted = grouped(strategy, N)
    failures = take_failures(monkeypatch, lambda: take(counted))
    assert len(failures) >= 2       # at least the array of each output
    del counted
    gc.collect()
    tracemalloc.start()
    try:
        for how in failures:
            core = grouped(strategy, N)
            take_failing(monkeypatch, how, lambda: take(core))
            groups, responses = core.take_groups(), core.take_responses(group_times=True)
            assert len(groups[2]) == N // 4 and len(responses[0]) == N // 8
            assert int(groups[1][-1]) == N and groups[0]["addr"][-1] == (N - 1) << 12
            del groups, responses, core
            gc.collect()
            assert core_domain_bytes() == 0, how
    finally:
        tracemalloc.stop()


#: Nothing checks a partial (no allocation, no handler or device required, no
#: depth): every partial of a batch goes straight to its group from the batch loop.
PLAIN = iopf.policies.PCIE.replace(response_timeout=1000)


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_every_allocation_failure_in_a_batch_of_plain_partials(strategy: str) -> None:
    """The batch loop's own path for plain partials (a new Part, more nodes):
    a failed allocation stops the batch at ``position`` with the records
    before it applied and nothing of that one (the node store whole, no
    empty Part left), and resuming there ends where an undisturbed run ends."""
    arr = batch(N1, 7, 500)

    def whole(core: Any) -> tuple[Any, ...]:
        core._check_nodes()         # (how many are free depends on what grew)
        st = core.get_state()
        return (*state(core), st["parts_used"], st["chains"])

    def made(upto: int | None = None) -> Any:
        core = STRATEGIES[strategy](PLAIN)
        if upto is not None:
            apply(core, "run", (arr[:upto],))
        return core
    final = whole(made(N1))
    core = made()
    before = _fail_alloc_after(-1)
    apply(core, "run", (arr,))
    total = _fail_alloc_after(-1) - before
    assert total >= 6
    try:
        for n in range(total):
            core = made()
            _fail_alloc_after(n)
            with pytest.raises(MemoryError):
                apply(core, "run", (arr,))
            _fail_alloc_after(-1)
            pos = core.position
            assert core.stats()["faults_reported"] == pos
            assert whole(core) == whole(made(pos)), (n, pos)
            apply(core, "run", (arr,), pos)
            assert whole(core)[:7] == final[:7], (n, pos)
    finally:
        _fail_alloc_after(-1)
