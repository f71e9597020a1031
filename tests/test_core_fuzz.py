"""Fuzzing the raw core (no Queue in between): arbitrary arguments to every
method, and "handlers" that, while a batch is stopped at a group, change the
batch, answer groups and call other methods before the batch goes on.

What must hold, on the four strategies run in lockstep: a refused call raises
ValueError/TypeError/IndexError/OverflowError and leaves the state exactly as
it was (nothing sent); the conservation law of the counters holds after every
call; each group is answered at most once, and every answer is counted; all
strategies give the same results.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import iopf
from iopf import FAULT_DTYPE
from iopf_core import STRATEGIES

NAMES = ["hash", "tree", "list", "python"]
REFUSED = (ValueError, TypeError, IndexError, OverflowError)
EDGE_U32 = [0xFFFFFFFB, 0xFFFFFFFC, 0xFFFFFFFD, 0xFFFFFFFE, 0xFFFFFFFF, 1 << 20, 1 << 31, 512, 70000]

u32 = st.one_of(st.integers(0, 4), st.sampled_from(EDGE_U32))
anyint = st.one_of(st.integers(-2, 4), st.sampled_from(EDGE_U32 + [2**32, 2**64, -(2**63)]))
dev = st.integers(0, 3)
pasid = st.one_of(st.integers(0, 3), st.integers(0, 3), st.sampled_from(EDGE_U32))
code = st.one_of(st.integers(0, 2), st.sampled_from([3, 7, 32575, 2**32 - 1]))
records = st.tuples(st.integers(0, 50), dev, pasid, st.one_of(st.integers(0, 3), st.sampled_from([511, 512, 70000])),
                    st.one_of(st.sampled_from([1, 3, 3]), st.integers(0, 15), st.sampled_from([0x10, 0x80, 0x83])),
                    st.one_of(st.integers(0, 15), st.sampled_from([0x80])),
                    st.integers(0, 2**64 - 1), st.tuples(st.just(0), st.just(0)))
valid = st.tuples(st.integers(0, 50), dev, st.integers(0, 3), st.integers(0, 3), st.sampled_from([0, 1, 2, 3]),
                  st.sampled_from([1, 3]), st.integers(0, 2**64 - 1), st.tuples(st.just(0), st.just(0)))
records = st.one_of(valid, valid, valid, records)
policies = st.sampled_from([iopf.policies.PCIE, iopf.policies.LINUX, iopf.policies.VTD.replace(queue_depth=8),
                            iopf.policies.SMMU_STALL, iopf.policies.PCIE.replace(response_timeout=20)])


def state(core: Any) -> tuple[Any, ...]:
    return (core.stats(), core.partial_count, core.now, core.has_responses,
            [(int(k), core.group_faults(int(k)).tobytes()) for k in core.pending_cookies()])


def conserved(core: Any) -> bool:
    return iopf.Stats(core.stats()).conserved()


def call_op(data: st.DataObject) -> tuple[str, tuple[Any, ...]]:
    """One method call with drawn arguments."""
    op = data.draw(st.sampled_from(
        ["report", "report_values", "report_fault", "run", "run", "run", "run", "respond", "respond_batch", "attach", "detach",
         "flush_pasid", "add_device", "remove_device", "discard_partial", "expire",
         "set_default_handler"]))
    if op in ("report", "report_fault"):
        return op, (data.draw(records),)
    if op == "report_values":     # the per-call entry, field by field
        rec = data.draw(records)
        return op, (*rec[:7], *rec[7])
    if op == "run":
        recs = data.draw(st.lists(records, max_size=12))
        start = data.draw(st.one_of(st.just(0), st.integers(-2, len(recs) + 2)))
        # take: the groups are taken after the batch (else the next batch adds to them)
        return op, (np.array(recs, FAULT_DTYPE), start, data.draw(st.booleans()))
    if op == "respond":
        return op, (data.draw(st.integers(0, 12)), data.draw(code), data.draw(st.sampled_from([10, 0, 11])))
    if op == "respond_batch":
        n = data.draw(st.integers(0, 4))
        m = data.draw(st.sampled_from([n, n, n + 1, max(n - 1, 0)]))
        return op, (np.array(data.draw(st.lists(st.integers(0, 12), min_size=n, max_size=n)), np.int64),
                    np.array(data.draw(st.lists(st.integers(-1, 3), min_size=m, max_size=m)), np.int64))
    if op in ("attach",):
        return op, (data.draw(dev), data.draw(pasid), None, data.draw(st.integers(-2, 3)))
    if op == "detach":
        return op, (data.draw(dev), data.draw(pasid))
    if op == "flush_pasid":
        return op, (data.draw(dev), data.draw(pasid), data.draw(code))
    if op == "add_device":
        return op, (data.draw(dev), data.draw(st.sampled_from([0, 1, 2, 5, 2**32])))
    if op == "remove_device":
        return op, (data.draw(dev),)
    if op == "expire":
        return op, (data.draw(anyint),)
    if op == "set_default_handler":
        return op, (data.draw(st.booleans()), data.draw(st.integers(-2, 3)))
    return op, ()


class Harness:
    """The four cores in lockstep; every response seen is kept."""

    def __init__(self, policy: iopf.Policy) -> None:
        self.cores = [STRATEGIES[n](policy) for n in NAMES]
        self.responses: list[list[tuple[Any, ...]]] = [[] for _ in NAMES]
        self.groups: list[list[tuple[bytes, list[int], list[int]]]] = [[] for _ in NAMES]

    def check(self) -> None:
        states = [state(c) for c in self.cores]
        assert all(s == states[0] for s in states), states
        for core, seen in zip(self.cores, self.responses):
            assert conserved(core), core.stats()
            seen.extend(core.take_responses().tolist())
            cookies = [r[6] for r in seen if r[6]]
            assert len(cookies) == len(set(cookies)), "a group answered twice"
            assert len(cookies) == core.stats()["answered"]
        assert all(r == self.responses[0] for r in self.responses)
        assert all(g == self.groups[0] for g in self.groups)

    def do(self, op: str, args: tuple[Any, ...]) -> None:
        outcomes: list[str | None] = []
        for k, core in enumerate(self.cores):
            before = state(core)
            try:
                if op == "run":
                    self.run(core, args[0], args[1])
                    if args[2]:
                        f, o, c = core.take_groups()
                        self.groups[k].append((f.tobytes(), o.tolist(), c.tolist()))
                else:
                    getattr(core, op)(*args)
                outcomes.append(None)
            except REFUSED as e:
                event(f"{op} refused")
                outcomes.append(type(e).__name__)
                if op != "run":        # a batch keeps its records before the refused one
                    assert state(core) == before, (op, args, e)
        assert all(o == outcomes[0] for o in outcomes), (op, args, outcomes)

    def run(self, core: Any, arr: np.ndarray, start: int) -> None:
        arr = arr.copy()     # each core gets the same batch and the same changes to it
        i = start
        while True:
            i = core.run(arr, i)
            if i >= len(arr) or not core.dispatch:
                break
            # a "handler": changes the batch, answers, re-enters
            self.handler(core, arr, i)

    def handler(self, core: Any, arr: np.ndarray, i: int) -> None:
        # Deterministic in (i, cookie) so that every core gets the same actions.
        event("a handler changed the batch and re-entered")
        cookie = int(core.last_cookie)
        if i % 2 == 0 and i < len(arr):
            arr["pasid"][i:] = 0xFFFFFFFC        # an internal marker into the rest of the batch
        if i % 3 == 0:
            arr["grpid"][i:] = 70000
        if cookie % 2:
            core.respond(cookie, 0)              # answer the group (and once more: stale)
            core.respond(cookie, 1)
        if i % 4 == 1:
            try:
                core.flush_pasid(int(arr["dev"][i - 1]), 0xFFFFFFFD)
            except ValueError:
                pass
            core.discard_partial()


def fuzz_settings(examples: int) -> settings:
    """``examples`` under the default profile (100 a test), scaled for the
    others (the sanitizer profile draws 25, so a quarter); IOPF_CORE_FUZZ_EXAMPLES
    overrides it for a long run."""
    profile = settings.default
    assert profile is not None
    n = int(os.environ.get("IOPF_CORE_FUZZ_EXAMPLES", 0)) or max(5, examples * profile.max_examples // 100)
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@fuzz_settings(300)
@given(policy=policies, data=st.data())
def test_raw_core_survives_anything(policy: iopf.Policy, data: st.DataObject) -> None:
    h = Harness(policy)
    if data.draw(st.booleans()):     # groups wait for a (Python) handler: run() stops at them
        h.do("set_default_handler", (True, -1))
    h.do("attach", (1, 1, None, data.draw(st.integers(-1, 2))))
    for _ in range(data.draw(st.integers(1, 15))):
        op, args = call_op(data)
        h.do(op, args)
        h.check()
