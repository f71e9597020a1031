"""Attacks on the record copy, the device count of held partials, the entry
hints, check()'s one-pass test and the output arrays made over lent blocks.

Each test names what it checks; the differential ones compare the compiled
strategies with the twin, call for call.
"""
from __future__ import annotations

import gc
import pickle
import random
import sys
import threading
import tracemalloc
from typing import Any

import numpy as np
import pytest

import iopf
import iopf_core
from iopf import FAULT_DTYPE, RESPONSE_DTYPE, Response
from iopf_core import COMPILED, STRATEGIES

C_STRATEGIES = ["hash", "tree", "list"]
NAMES = [*C_STRATEGIES, "python"]
needs_core = pytest.mark.skipif(not COMPILED, reason="the compiled core's memory")


def groups(n: int, size: int = 1, start: int = 0, dev: int = 1) -> np.ndarray:
    """n faults in whole groups of `size` (LPIG last), group ids going up."""
    a = np.zeros(n, FAULT_DTYPE)
    k = np.arange(start, start + n)
    a["time"] = k
    a["dev"], a["pasid"] = dev, 5
    a["grpid"] = k // size % 512
    a["flags"] = np.where(k % size == size - 1, 3, 1)
    a["perm"] = 1
    a["addr"] = k << 12
    return a


def core_domain_bytes() -> int:
    """Bytes tracemalloc holds in the core's own trace domain."""
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.DomainFilter(True, iopf_core.TRACE_DOMAIN)])
    return sum(t.size for t in snap.traces)


# -- output arrays --------------------------------------------------------------------

@needs_core
@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_a_few_responses_do_not_keep_the_room_of_a_big_respond_batch(strategy: str) -> None:
    """respond_batch makes room for an answer per cookie before it knows which
    are stale. When only a few were answered, take_responses gives them as a
    copy and lets the room go (as take_response_list does): a 9 KB array of
    responses must not keep megabytes of the core's memory alive, nor may the
    core keep them once it is gone."""
    core: Any = STRATEGIES[strategy](iopf.policies.PCIE)
    core.run(groups(200))
    _, _, cookies = core.take_groups()
    stale = np.full(100_000, 10**9, np.uint64)       # 4.4 MB of room for answers
    both = np.concatenate([cookies, stale])
    gc.collect()
    tracemalloc.start()
    try:
        core.respond_batch(both, np.zeros(len(both), np.int64))
        assert core_domain_bytes() > 4_000_000       # the room was made
        out = core.take_responses()
        assert len(out) == 200 and out.dtype == RESPONSE_DTYPE
        assert list(out["cookie"]) == list(cookies)
        # (Nor the group times' room, 8 bytes an answer: 0.8 MB here.)
        assert core_domain_bytes() < 200_000, "200 responses keep the room of 100,000"
        del out
        gc.collect()
        assert core_domain_bytes() < 200_000, "the core kept the room of 100,000 answers"
    finally:
        tracemalloc.stop()


@needs_core
def test_output_dtypes_keep_their_refcount_over_many_takes() -> None:
    """new_array gives numpy a reference to the dtype it steals: 10,000 takes
    of copied outputs and some of lent ones leave every dtype's refcount as
    it was (a missing INCREF would drop it, an extra one would grow it)."""
    dtypes = [FAULT_DTYPE, np.dtype(np.int64), np.dtype(np.uint64), RESPONSE_DTYPE]
    core: Any = STRATEGIES["hash"](iopf.policies.PCIE)
    gc.collect()
    before = [sys.getrefcount(d) for d in dtypes]
    for i in range(10_000):
        core.run(groups(1 + i % 3, start=i))
        f, o, k = core.take_groups()
        core.respond_batch(k, np.zeros(len(k), np.int64))
        r = core.take_responses()
    for i in range(20):                 # lent: faults over 64 KiB, offsets and cookies over 4 KiB
        core.run(groups(3000, start=i))
        f, o, k = core.take_groups()
        core.respond_batch(k, np.zeros(len(k), np.int64))
        r = core.take_responses()
    del f, o, k, r
    gc.collect()
    assert [sys.getrefcount(d) for d in dtypes] == before


@pytest.mark.parametrize("strategy", NAMES)
@pytest.mark.parametrize("n", [40, 8000])       # copied; lent (faults, offsets and cookies)
def test_output_arrays_are_contiguous_aligned_and_only_faults_read_only(strategy: str, n: int) -> None:
    core: Any = STRATEGIES[strategy](iopf.policies.PCIE)
    arr = groups(n, size=2)
    core.run(arr)
    faults, offsets, cookies = core.take_groups()
    for a, dtype in ((faults, FAULT_DTYPE), (offsets, np.int64), (cookies, np.uint64)):
        assert a.dtype == dtype and a.ndim == 1
        assert a.flags.c_contiguous and a.flags.aligned
    assert not faults.flags.writeable and offsets.flags.writeable and cookies.flags.writeable
    assert faults.tobytes() == arr.tobytes()
    assert list(offsets) == list(range(0, n + 1, 2)) and len(cookies) == n // 2
    view = faults[3:9]
    assert not view.flags.writeable and not np.asarray(faults).flags.writeable
    with pytest.raises(ValueError):
        view["addr"] = 0


@needs_core
@pytest.mark.parametrize("keep", ["slice", "asarray", "memoryview", "field", "uint8_view"])
def test_a_lent_block_comes_back_only_when_its_last_view_goes(keep: str) -> None:
    """A lent output's memory goes back to the core's spare when its last
    array goes, views included: while a view is alive the next batch of the
    same size gets other memory and the view reads what it read; once it is
    gone, the batch after that writes into it again."""
    q = iopf.Queue()
    first = q.report_batch(groups(8000, size=4))
    addrs = [a.ctypes.data for a in (first.faults, first.offsets, first.cookies)]
    first.respond(Response.SUCCESS)       # the core keeps none of it now
    views: list[Any] = []
    for a in (first.faults, first.offsets, first.cookies):
        if keep == "slice":
            views.append(a[5:50])
        elif keep == "asarray":
            views.append(np.asarray(a)[5:])
        elif keep == "memoryview":
            views.append(memoryview(a))  # type: ignore[arg-type]
        elif keep == "field":
            views.append(a["addr"] if a.dtype.names else a[::3])
        else:
            views.append(a.view(np.uint8))
    expect = [bytes(v) if isinstance(v, memoryview) else v.tobytes() for v in views]
    copies = [pickle.loads(pickle.dumps(a)) for a in (first.faults, first.offsets, first.cookies)]
    del first
    gc.collect()
    second = q.report_batch(groups(8000, size=4, start=8000))
    got = [a.ctypes.data for a in (second.faults, second.offsets, second.cookies)]
    assert not set(got) & set(addrs)
    assert [bytes(v) if isinstance(v, memoryview) else v.tobytes() for v in views] == expect
    assert copies[0].tobytes() == groups(8000, size=4).tobytes()
    second.respond(Response.SUCCESS)
    del views, second
    gc.collect()
    third = q.report_batch(groups(8000, size=4, start=16000))
    assert third.faults.ctypes.data in addrs       # the first block, back from the spare
    assert third.faults.tobytes() == groups(8000, size=4, start=16000).tobytes()


# -- check() -------------------------------------------------------------------------

WIDTHS = [(1, 1), (2, 16), (8, 9), (20, 9), (20, 16), (24, 2), (31, 16), (31, 1)]


@pytest.mark.parametrize("pasid_bits,grpid_bits", WIDTHS)
def test_check_accepts_every_valid_extreme_and_names_the_first_bad_record(
        pasid_bits: int, grpid_bits: int) -> None:
    """check() ORs the fields of the whole batch first: it must still accept
    the largest PASID and group id of the policy's widths and flags/perm 0xF
    (with every other field at its maximum), and name the first bad record,
    as the twin does, whatever the kinds of the later bad ones; run() stops
    at the same record."""
    policy = iopf.policies.PCIE.replace(pasid_bits=pasid_bits, grpid_bits=grpid_bits)
    cores: dict[str, Any] = {n: STRATEGIES[n](policy) for n in NAMES}
    pmax, gmax = (1 << pasid_bits) - 1, (1 << grpid_bits) - 1
    ok = np.zeros(5, FAULT_DTYPE)
    ok["pasid"] = [pmax, 0, pmax, 1, 0]
    ok["grpid"] = [gmax, gmax, 0, 0, 1 % (gmax + 1)]
    ok["flags"] = [0xF, 0, 1, 0xF, 0xE]
    ok["perm"] = [0xF, 0xF, 0, 1, 0xF]
    ok["dev"], ok["time"], ok["addr"], ok["private"] = 2**32 - 1, 2**64 - 1, 2**64 - 1, 2**64 - 1
    for core in cores.values():
        core.check(ok)
    kinds = [("pasid", pmax + 1), ("pasid", 2**32 - 1), ("grpid", gmax + 1), ("grpid", 2**32 - 1),
             ("flags", 0x10), ("perm", 0x10), ("flags", 2**31), ("perm", 2**32 - 1)]
    rng = random.Random(pasid_bits * 100 + grpid_bits)
    for _ in range(20):
        n = rng.randrange(1, 40)
        bad = np.zeros(n, FAULT_DTYPE)
        bad["flags"], bad["perm"], bad["pasid"], bad["grpid"] = 1, 1, pmax, gmax
        where = sorted(rng.sample(range(n), min(n, rng.randrange(1, 4))))
        for i in where:
            field, value = rng.choice(kinds)
            bad[field][i] = value
        for op in ("check", "run"):
            msgs = set()
            for name, core in cores.items():
                with pytest.raises(ValueError) as e:
                    getattr(core, op)(bad.copy())
                msgs.add(str(e.value))
                if op == "run":
                    assert core.position == where[0], name
            assert len(msgs) == 1, msgs
            assert msgs.pop().startswith(f"record {where[0]}:")


# -- entry hints -------------------------------------------------------------------------

def hint_slot(dev: np.ndarray, pasid: int) -> np.ndarray:
    """The hint slot of (dev, pasid) for an array of devices (entry_hint_slot)."""
    return ((dev.astype(np.uint64) * 0x9E3779B1 + pasid * 0x85EBCA77) & 0xFFFFFFFF) >> 24


def sharing_one_slot() -> tuple[list[tuple[int, int]], list[int]]:
    """(dev, PASID) keys, and devices whose device entry, all in the hint slot of (1, 1)."""
    devs = np.arange(1, 1 << 16, dtype=np.uint64)
    s0 = int(hint_slot(np.array([1]), 1)[0])
    keys = [(int(d), p) for p in (1, 2, 3) for d in devs[hint_slot(devs, p) == s0][:3]]
    device = [int(d) for d in devs[hint_slot(devs, 0xFFFFFFFD) == s0][:3]]
    return keys, device


def hint_workload(strategy: str) -> tuple[list[tuple[Any, ...]], bytes, list[Any]]:
    keys, devices = sharing_one_slot()
    q = iopf.Queue(iopf.policies.PCIE, strategy=strategy)
    calls: list[tuple[Any, ...]] = []
    t = 0

    def handler_for(tag: tuple[Any, ...]) -> Any:
        def handler(group: iopf.Group) -> Response | None:
            f = group.faults
            calls.append((tag, int(f["dev"][0]), int(f["pasid"][0]), int(f["grpid"][0]), len(f)))
            return None if len(calls) % 3 == 0 else Response.SUCCESS   # some stay pending
        return handler

    def group(dev: int, pasid: int, grpid: int, size: int) -> list[iopf.Fault]:
        nonlocal t
        out = []
        for j in range(size):
            t += 1
            out.append(iopf.Fault(dev, pasid, grpid, t << 12, last=j == size - 1, time=t))
        return out

    rng = random.Random(7)
    for rnd in range(6):
        for k in rng.sample(keys, 4):               # attach some, one generation a round
            q.attach(*k, handler_for((rnd, *k)))
        faults: list[iopf.Fault] = []
        for k in rng.sample(keys, len(keys)):       # groups of every key, handlers or not
            faults += group(*k, rnd, 1 + rnd % 3)
        if rnd % 2:
            q.report_batch(np.array([tuple(f) for f in faults], FAULT_DTYPE))
        else:
            for f in faults:
                q.report(f)
        # Entries go and come back in the slot: device entries, detaches,
        # flushes, a removal, answers of the groups left pending.
        q.add_device(devices[rnd % 3], None if rnd % 2 else 50)
        for k in rng.sample(keys, 3):
            q.detach(*k)
        d, p = rng.choice(keys)
        q.flush_pasid(d, p)
        if rnd == 3:
            q.remove_device(keys[0][0])
        pend = [g.cookie for g in q.pending()]
        q.respond_batch(pend[::2], Response.INVALID)
    return calls, q.take_responses().tobytes(), sorted(g.cookie for g in q.pending())


def test_hints_of_keys_sharing_one_slot_follow_entries_that_go_and_come_back() -> None:
    """Nine (dev, PASID) keys and three device entries with one hint slot,
    attached, detached, flushed, removed and reported one by one and in
    batches: each group reaches its own key's handler, and every strategy
    calls and answers as the twin does."""
    want = hint_workload("python")
    assert len(want[0]) > 20
    for tag, dev, pasid, _, _ in want[0]:
        assert (dev, pasid) == tuple(tag[1:])     # the twin's handler is its key's
    for strategy in C_STRATEGIES:
        assert hint_workload(strategy) == want, strategy


# -- held partials of limited devices, against the twin -----------------------------------

def _state(core: Any) -> tuple[Any, ...]:
    return (core.stats(), core.partial_count, core.now,
            sorted((int(k), core.group_faults(int(k)).tobytes()) for k in core.pending_cookies()))


def _call(core: Any, name: str, args: tuple[Any, ...], start: int = 0) -> Any:
    if name == "run":
        i = start
        while i < len(args[0]):
            i = core.run(args[0], i)
        core.take_groups()
        return i
    out = getattr(core, name)(*args)
    return out[0] if name == "report_values" and out else out


def limits_workload(seed: int, policy: iopf.Policy, steps: int, inject: bool) -> None:
    from iopf_core.grouper import _fail_alloc_after
    rng = random.Random(seed)
    cores: list[Any] = [STRATEGIES[n](policy) for n in NAMES]
    ndev = rng.choice([2, 4, 40])
    for c in cores:
        if policy.require_handler:
            c.set_default_handler(True, 0)
        if policy.require_device:
            for d in range(ndev):
                c.add_device(d, 0)
    seen: list[list[Any]] = [[] for _ in cores]
    t = 0

    def rec() -> tuple[Any, ...]:
        nonlocal t
        t += 1
        flags = (2 if rng.random() < 0.2 else 0) | (1 if rng.random() < 0.8 else 0)
        return (t, rng.randrange(ndev), rng.randrange(3), rng.randrange(6), flags, 1,
                rng.randrange(1 << 40), (0, 0))

    for step in range(steps):
        op = rng.choice(["report"] * 6 + ["run"] * 3 + ["limit"] * 3 + ["respond"] * 2
                        + ["flush", "remove", "discard", "values", "group"])
        args: tuple[Any, ...]
        if op == "report":
            name, args = "report", (rec(),)
        elif op == "values":
            r = rec()
            name, args = "report_values", (*r[:7], 0, 0)
        elif op == "group":
            r = rec()
            name, args = "report_group", (r[0], r[1], r[2], r[3], 1, 3, 1, rng.randrange(1, 6), 4096)
        elif op == "run":
            name, args = "run", (np.array([rec() for _ in range(rng.randrange(1, 60))], FAULT_DTYPE),)
        elif op == "limit":
            name, args = "add_device", (rng.randrange(ndev), rng.choice([0, 1, 2, 3, 5, 8, 20, 100]))
        elif op == "respond":
            name, args = "respond", (rng.randrange(1, 400), 0)
        elif op == "flush":
            name, args = "flush_pasid", (rng.randrange(ndev), rng.randrange(3))
        elif op == "remove":
            name, args = "remove_device", (rng.randrange(ndev),)
        else:
            name, args = "discard_partial", ()
        outs = []
        for k, core in enumerate(cores):
            a = (args[0].copy(),) if name == "run" else args
            fail = inject and k < 3 and name != "report_group" and rng.random() < 0.3
            before = _state(core)
            try:
                if fail:
                    _fail_alloc_after(rng.randrange(0, 4))
                outs.append(_call(core, name, a))
            except MemoryError:
                _fail_alloc_after(-1)
                if name != "run":       # all or nothing; a batch up to position
                    assert _state(core) == before, (seed, step, name)
                outs.append(_call(core, name, a, core.position if name == "run" else 0))
            except (ValueError, TypeError) as e:
                outs.append(type(e).__name__)
            finally:
                _fail_alloc_after(-1)
            seen[k].extend(core.take_responses().tolist())
        states = [_state(c) for c in cores]
        assert all(s == states[0] for s in states), (seed, step, name, [s[0] for s in states])
        assert all(s == seen[0] for s in seen), (seed, step, name)
        assert all(o == outs[0] for o in outs), (seed, step, name, outs)
        for core in cores[:3]:
            core._check_nodes()
    assert cores[0].stats()["overflowed"] > 0 and cores[0].stats()["groups"] > 0


LIMIT_POLICIES = [iopf.policies.PCIE, iopf.policies.PCIE.replace(discard_on_overflow=True),
                  iopf.policies.LINUX, iopf.policies.VTD.replace(queue_depth=30),
                  iopf.policies.PCIE.replace(match_pasid=False)]


@needs_core
@pytest.mark.parametrize("inject", [False, True], ids=["plain", "memory_errors"])
@pytest.mark.parametrize("policy", LIMIT_POLICIES, ids=["pcie", "discard", "linux", "vtd", "any_pasid"])
def test_outstanding_counts_of_limited_devices_agree_with_the_twin(policy: iopf.Policy,
                                                                  inject: bool) -> None:
    """Partials held plainly (no device has a limit) and by the rules (some
    do): limits set, raised, lowered and removed while partials are held,
    requests one by one, field by field, a group at a time and in batches,
    flushes, removals, discards, and (memory_errors) a failed allocation in
    a compiled core now and then, the call then made again. Every overflow
    decision, response, pending group and counter is the twin's."""
    limits_workload(11, policy, 600, inject)


# -- the record copy ---------------------------------------------------------------------

@needs_core
def test_a_batch_changed_by_another_thread_while_it_runs_applies_only_checked_records() -> None:
    """run() lets go of the GIL; another thread writes bad PASIDs and flags
    into the batch and puts the good ones back, over and over. Each record is
    copied field by field and the copy is checked and applied: whatever the
    interleaving, no grouped fault has a field the policy refuses, every
    refusal names a record, and the counters add up."""
    core: Any = STRATEGIES["hash"](iopf.policies.PCIE)
    a = groups(40_000, size=4)
    stop = threading.Event()

    def writer() -> None:
        p, f = a["pasid"], a["flags"]
        while not stop.is_set():
            p[::7] = 1 << 25
            p[::7] = 5
            f[::11] = 0x31
            f[::11] = 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(5):
            i = 0
            while i < len(a):
                try:
                    i = core.run(a, i)
                except ValueError as e:
                    assert str(e).startswith(f"record {core.position}:")
                    i = core.position + 1
            faults, _, cookies = core.take_groups()
            assert (faults["pasid"] == 5).all() and (faults["flags"] <= 0xF).all()
            core.respond_batch(cookies, np.zeros(len(cookies), np.int64))
            core.take_responses()
            core.discard_partial()
    finally:
        stop.set()
        t.join()
    assert iopf.Stats(core.stats()).conserved()
    core._check_nodes()
