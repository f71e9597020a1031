"""The empty partial group records (Parts) of the hash and the tree, attacked.

The records a completed group leaves for its key's next group must stay an
implementation detail: every strategy and the pure-Python twin answer the
same operations the same way, ``_check_nodes()`` finds the counts right after
every call (also when a sweep runs at nearly every request), a MemoryError
still leaves a call all or nothing, and held partials keep their memory goal
(at most 128 bytes each in the worst case) while groups whose keys never
recur come and go beside them.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import pytest

import iopf
from iopf import FAULT_DTYPE, Fault, Response
from iopf_core import COMPILED, STRATEGIES
from test_alloc_failure import apply, first_failure

pytestmark = pytest.mark.skipif(not COMPILED, reason="the compiled core's partial group records")


def own_key_partials(n: int) -> np.ndarray:
    """n partials, each its own group and its own (device, PASID): the worst case of memory."""
    a = np.zeros(n, FAULT_DTYPE)
    a["time"] = np.arange(n)
    a["dev"] = np.arange(n)
    a["pasid"] = 1
    a["flags"] = 1
    a["perm"] = 1
    a["addr"] = np.arange(n) << 12
    return a


@pytest.mark.parametrize("strategy", ["hash", "tree"])
@pytest.mark.parametrize("n", [16_385, 24_578])
def test_held_partials_keep_the_memory_goal_while_keys_that_never_recur_come_and_go(
        strategy: str, n: int) -> None:
    """n partials wait (LPIGs lost); then n groups, each with a key never seen
    before, form and are answered one at a time. Their empty records must not
    grow the pool or the tables that the held partials need: before the fix
    the table and pool doubled (171 bytes per held partial at 16,385)."""
    q = iopf.Queue(strategy=strategy, default_handler=Response.SUCCESS)
    q.report_batch(own_key_partials(n))
    core: Any = q.core
    for k in range(n):
        dev = 10**6 + k
        core.report((n + k, dev, 1, 0, 1, 1, 0, (0, 0)))
        core.report((n + k, dev, 1, 0, 3, 1, 0, (0, 0)))
        core.take_groups()
        if k % 1000 == 999:
            core.take_response_list()
    core.take_response_list()
    core._check_nodes()
    st = core.get_state()
    assert st["parts_used"] - st["parts_empty"] == q.partial_count == n
    assert q.stats.groups == q.stats.answered == n
    assert q.sizeof() / n <= 128, (n, q.sizeof() / n, st)


def random_policy(rng: random.Random) -> iopf.Policy:
    base = rng.choice(list(iopf.policies.PRESETS.values()))
    return dataclasses.replace(
        base, match_pasid=rng.random() < 0.5, stop_markers=rng.random() < 0.3,
        priv_data_is_last=rng.random() < 0.3, require_handler=rng.random() < 0.05,
        response_timeout=rng.choice([None, None, 5, 50]),
        queue_depth=rng.choice([None, None, None, None, 8, 64, 5000]),
        discard_on_overflow=rng.random() < 0.5, flush_partial_on_detach=rng.random() < 0.5,
        no_pasid=rng.choice([None, 0, 1]), require_device=rng.random() < 0.05,
        attach_adds_device=rng.random() < 0.3)


def snapshot(q: iopf.Queue) -> tuple[Any, ...]:
    return (q.stats.as_dict(), q.core.pending_cookies().tolist(),
            [g.faults.tobytes() for g in q.pending()], q.next_deadline(), q.now, q.partial_count)


@pytest.mark.parametrize("seed", range(8))
def test_every_strategy_agrees_and_the_records_stay_counted(seed: int) -> None:
    """Random batches and single requests over keys that recur (few group ids)
    and keys that do not (many devices, every group id), between flushes with
    and without PASID matching, discards, removals, detaches that flush,
    overflows that discard, allocations, handlers and time: every strategy,
    the twin, a hash and a tree queue that sweep often (past 1 and 4 empty
    records) agree after every call, and the compiled cores' records check out."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    policy = random_policy(rng)
    queues = [iopf.Queue(policy, strategy=s) for s in ("python", "hash", "tree", "list", "hash", "tree")]
    cores: list[Any] = [q.core for q in queues]
    cores[4]._debug_sweep_ratio(1024)
    cores[5]._debug_sweep_ratio(256)
    ndev, nkeys, t = rng.choice([1, 3, 8]), rng.choice([2, 16, 512]), 0

    def agree(fn: Any) -> None:
        results: list[tuple[Any, ...]] = []
        for q in queues:
            try:
                results.append(("ok", fn(q)))
            except Exception as exc:  # the same exception everywhere is agreement
                results.append(("raised", type(exc).__name__, str(exc)))
        assert all(r == results[0] for r in results), results
        for core in cores[1:]:
            core._check_nodes()
        snaps = [snapshot(q) for q in queues]
        assert all(s == snaps[0] for s in snaps)
        responses = [q.take_responses().tobytes() for q in queues]
        assert all(r == responses[0] for r in responses)

    for step in range(70):
        op = rng.random()
        if op < 0.55:
            n = rng.choice([1, 5, 50, 400, 1500])
            a = np.zeros(n, FAULT_DTYPE)
            t += rng.randint(0, 5)
            a["time"] = t + np.sort(nrng.integers(0, 20, n))
            a["dev"] = nrng.integers(0, ndev, n)
            a["pasid"] = nrng.choice([0, 1, 2, 3, 0xFFFFF], n)
            if rng.random() < 0.3:      # keys that do not recur soon
                a["grpid"] = (step * 37 + np.arange(n)) % 512
            else:
                a["grpid"] = nrng.integers(0, nkeys, n)
            a["flags"] = 1 | np.where(nrng.random(n) < rng.choice([0.02, 0.2, 0.5]), 2, 0)
            a["flags"] |= np.where(nrng.random(n) < 0.05, 4, 0).astype(np.uint32)
            a["perm"] = nrng.integers(0, 3, n)
            a["addr"] = np.arange(n) << 12
            if rng.random() < 0.5:
                def batch(q: iopf.Queue) -> Any:
                    b = q.report_batch(a)
                    return b.faults.tobytes(), b.offsets.tolist(), b.cookies.tolist()
                agree(batch)
            else:
                faults = [Fault(int(r["dev"]), int(r["pasid"]), int(r["grpid"]), int(r["addr"]),
                                perm=int(r["perm"]), flags=int(r["flags"]), time=int(r["time"]))
                          for r in a[:60]]

                def one_by_one(q: iopf.Queue) -> Any:
                    return [(g := q.report(f)) and (g.cookie, g.faults.tobytes()) for f in faults]
                agree(one_by_one)
        elif op < 0.68:
            k = rng.choice([1, 2])
            agree(lambda q: q.respond_batch(q.pending_cookies()[::k], Response.SUCCESS).tolist())
        elif op < 0.73:
            d, p = rng.randrange(ndev), rng.choice([None, 0, 1, 2, 3])
            agree(lambda q: q.flush_pasid(d, p, Response.INVALID))
        elif op < 0.75:
            agree(lambda q: q.discard_partial())
        elif op < 0.78:
            d = rng.randrange(ndev)
            agree(lambda q: q.remove_device(d))
        elif op < 0.83:
            d, o = rng.randrange(ndev), rng.choice([None, 1, 5, 100, 1000])
            agree(lambda q: q.add_device(d, o))
        elif op < 0.88:
            d, p = rng.randrange(ndev), rng.choice([None, 0, 1, 2])
            c = rng.choice([Response.SUCCESS, Response.INVALID])
            agree(lambda q: q.attach(d, p, c))
        elif op < 0.93:
            d, p = rng.randrange(ndev), rng.choice([None, 0, 1, 2])
            agree(lambda q: q.detach(d, p))
        elif op < 0.97:
            now = t + rng.randint(0, 60)
            agree(lambda q: q.advance(now))
        else:
            on = rng.random() < 0.5
            agree(lambda q: setattr(q, "auto_advance", on))


# -- MemoryError: all or nothing, with records emptied, reused and swept ----------------

def batch(n: int, seed: int, devs: int, keys: int, lpig: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.zeros(n, FAULT_DTYPE)
    a["time"] = np.arange(n) + seed * 10_000
    a["dev"] = rng.integers(1, devs + 1, n)
    a["pasid"] = rng.integers(5, 8, n)
    a["grpid"] = rng.integers(0, keys, n)
    a["flags"] = 1 | np.where(rng.random(n) < lpig, 2, 0)
    a["perm"] = 1
    a["addr"] = np.arange(n) << 12
    return a


Call = tuple[str, tuple[Any, ...]]
WORKLOAD: list[Call] = [
    ("run", (batch(300, 1, 300, 1, 0.0),)),        # partials left open throughout
    ("run", (batch(3000, 2, 2000, 512, 0.5),)),    # keys that mostly never recur
    ("report", ((99_999, 7, 5, 3, 1, 1, 0, (0, 0)),)),
    ("report", ((99_999, 7, 5, 3, 3, 1, 0, (0, 0)),)),
    ("flush_pasid", (3, 6, 0, None)),
    ("run", (batch(2000, 3, 4, 16, 0.3),)),        # keys that recur
    ("remove_device", (2, None)),
    ("respond_all", ()),
    ("run", (batch(3000, 4, 3000, 512, 0.5),)),
    ("discard_partial", ()),
    ("run", (batch(1000, 5, 50, 512, 0.4),)),
]


def seen(core: Any) -> tuple[Any, ...]:
    """What a caller can see of the core (and its records checked)."""
    core._check_nodes()
    return (core.stats(), core.partial_count, core.now, core.last_kind,
            [(int(k), core.group_faults(int(k)).tobytes()) for k in core.pending_cookies()],
            core.take_responses().tobytes())


@pytest.mark.parametrize("match_pasid", [True, False])
@pytest.mark.parametrize("sweep_ratio", [1024, 4])
def test_every_allocation_failure_leaves_the_call_all_or_nothing(match_pasid: bool, sweep_ratio: int) -> None:
    from iopf_core.grouper import _fail_alloc_after

    policy = iopf.policies.PCIE.replace(match_pasid=match_pasid)

    def make() -> Any:
        core: Any = STRATEGIES["hash"](policy)
        core._debug_sweep_ratio(sweep_ratio)
        return core

    def reference(upto: int, position: int | None) -> Any:
        core = make()
        for name, args in WORKLOAD[:upto]:
            apply(core, name, args)
        if position is not None:
            apply(core, "run", (WORKLOAD[upto][1][0][:position],))
        return core

    core = make()
    before = _fail_alloc_after(-1)
    for name, args in WORKLOAD:
        apply(core, name, args)
    total = _fail_alloc_after(-1) - before
    final = seen(core)
    assert total > 20
    failed = 0
    try:
        for n in range(total):
            core = make()
            _fail_alloc_after(n)
            k = first_failure(core, WORKLOAD)
            if k is None:
                continue        # (a thin output's nodes: no call reports it)
            _fail_alloc_after(-1)
            name, args = WORKLOAD[k]
            failed += 1
            position = core.position if name == "run" else None
            assert seen(core) == seen(reference(k, position)), (n, name, position)
            apply(core, name, args, position or 0)
            for name2, args2 in WORKLOAD[k + 1:]:
                apply(core, name2, args2)
            assert seen(core)[:5] == final[:5], (n, name)
    finally:
        _fail_alloc_after(-1)
    assert failed > 20


@pytest.mark.parametrize("strategy", ["hash", "tree", "list", "python"])
def test_a_sweep_that_frees_the_record_of_the_last_partial(strategy: str) -> None:
    """Key A's last partial, then its LPIG: A's record is empty and still the
    one the next partial of A would take first. A new key that would grow the
    table sweeps it; A's next group is then a new record's, with nothing of
    the first group in it."""
    q = iopf.Queue(strategy=strategy)

    def rec(t: int, grpid: int, last: bool) -> Fault:
        return Fault(1, 1, grpid, t << 12, last=last, time=t)

    for g in range(11):                     # 11 open groups: the table's 16 slots hold 12
        q.report(rec(g, 100 + g, False))
    q.report(rec(20, 7, False))
    first = q.report(rec(21, 7, True))
    assert first is not None and first.faults["time"].tolist() == [20, 21]
    q.report(rec(22, 8, False))             # a new key: the sweep, not a growth, makes room
    q.report(rec(23, 7, False))
    second = q.report(rec(24, 7, True))
    assert second is not None and second.faults["time"].tolist() == [23, 24]
    assert q.partial_count == 12
    if strategy != "python":
        core: Any = q.core
        core._check_nodes()
    if strategy == "hash":      # the 12 open groups', and A's again, empty
        st = core.get_state()
        assert (st["parts_used"], st["parts_empty"]) == (13, 1)
