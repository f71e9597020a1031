"""Every strategy against the pure-Python twin, driven by the same operations.

A Hypothesis state machine reports random faults (reused group ids, stale
partials, no-PASID requests, lone LPIGs, stop markers, PRIV_DATA), answers,
flushes, discards, removes, attaches handlers that answer, defer or raise,
sets allocations and expires, under a random policy; after every step all
queues must agree on groups, responses, pending groups and counters, and the
conservation law of F6 must hold.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import iopf
from iopf import FAULT_DTYPE, Fault, Response

STRATEGIES = ["python", "hash", "tree", "list"]
DEVS = st.integers(0, 2)
PASIDS = st.sampled_from([0, 1, 2, 0xFFFFF])
PASID_OR_NONE = st.one_of(st.none(), PASIDS)
GRPIDS = st.integers(0, 3)


@st.composite
def policies(draw):
    base = draw(st.sampled_from(list(iopf.policies.PRESETS.values())))
    return dataclasses.replace(
        base,
        match_pasid=draw(st.booleans()),
        stop_markers=draw(st.booleans()),
        priv_data_is_last=draw(st.booleans()),
        require_handler=draw(st.booleans()),
        response_timeout=draw(st.sampled_from([None, 0, 5, 50])),
        queue_depth=draw(st.sampled_from([None, 0, 3, 8, 64])),
        discard_on_overflow=draw(st.booleans()),
        flush_partial_on_detach=draw(st.booleans()),
        overflow_code=draw(st.sampled_from(list(Response))),
        no_pasid=draw(st.sampled_from([None, 0, 1])),
        require_device=draw(st.booleans()),
        attach_adds_device=draw(st.booleans()),
    )


@st.composite
def faults(draw):
    return Fault(draw(DEVS), draw(PASIDS), draw(GRPIDS), draw(st.integers(0, 7)) << 12,
                 perm=draw(st.integers(0, 15)), flags=draw(st.integers(0, 15)),
                 time=draw(st.integers(0, 100)), private=(draw(st.integers(0, 3)), 0))


def as_array(fs: list[Fault]) -> np.ndarray:
    return np.array([tuple(f) for f in fs], dtype=FAULT_DTYPE)


def make_handler(mode: str):
    """A constant handler ("const-CODE", answered in the engine) or a Python one."""
    if mode.startswith("const-"):
        return Response[mode[6:]]
    return Handler(mode)


class Handler:
    """Deterministic handler: answers with a code, defers (None) or raises."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, group: iopf.Group):
        if self.mode == "raise":
            raise KeyError("handler failed")
        if self.mode == "defer":
            return None
        return Response[self.mode]


def snapshot(q: iopf.Queue):
    return (q.stats.as_dict(), q.core.pending_cookies().tolist(),
            [g.faults.tobytes() for g in q.pending()])


class Agreement(RuleBasedStateMachine):
    @initialize(policy=policies())
    def setup(self, policy):
        self.queues = [iopf.Queue(policy, strategy=s) for s in STRATEGIES]

    def all(self, fn):
        """Apply fn to every queue; results (or raised exception types) must agree."""
        results = []
        for q in self.queues:
            try:
                results.append(("ok", fn(q)))
            except Exception as exc:  # the same exception everywhere is agreement
                results.append(("raised", type(exc).__name__, str(exc)))
        for r in results[1:]:
            assert r == results[0], (results[0], r)
        return results[0]

    @rule(f=faults())
    def report(self, f):
        self.all(lambda q: (g := q.report(f)) and (g.cookie, g.faults.tobytes()))

    @rule(fs=st.lists(faults(), max_size=12))
    def report_batch(self, fs):
        arr = as_array(fs)

        def run(q):
            b = q.report_batch(arr)
            return b.faults.tobytes(), b.offsets.tolist(), b.cookies.tolist()
        self.all(run)

    @rule(cookie=st.integers(0, 40), code=st.sampled_from(list(Response)))
    def respond(self, cookie, code):
        self.all(lambda q: q.respond(cookie, code))

    @rule(cookies=st.lists(st.integers(1, 40), max_size=6), code=st.sampled_from(list(Response)))
    def respond_batch(self, cookies, code):
        self.all(lambda q: q.respond_batch(np.array(cookies, dtype=np.uint64), code).tolist())

    @rule(dev=DEVS, pasid=PASID_OR_NONE, code=st.sampled_from(list(Response)))
    def flush_pasid(self, dev, pasid, code):
        self.all(lambda q: q.flush_pasid(dev, pasid, code))

    @rule()
    def discard_partial(self):
        self.all(lambda q: q.discard_partial())

    @rule(dev=DEVS)
    def remove_device(self, dev):
        self.all(lambda q: q.remove_device(dev))

    @rule(dev=DEVS, pasid=PASID_OR_NONE,
          mode=st.sampled_from(["SUCCESS", "INVALID", "defer", "raise", "const-SUCCESS", "const-FAILURE"]))
    def attach(self, dev, pasid, mode):
        self.all(lambda q: q.attach(dev, pasid, make_handler(mode)))

    @rule(dev=DEVS, pasid=PASID_OR_NONE)
    def detach(self, dev, pasid):
        self.all(lambda q: q.detach(dev, pasid))

    @rule(mode=st.sampled_from([None, "SUCCESS", "defer", "raise", "const-INVALID"]))
    def default_handler(self, mode):
        self.all(lambda q: setattr(q, "default_handler", mode and make_handler(mode)))

    @rule(dev=DEVS, outstanding=st.sampled_from([None, 1, 2, 5]))
    def add_device(self, dev, outstanding):
        self.all(lambda q: q.add_device(dev, outstanding))

    @rule(now=st.integers(0, 200))
    def expire(self, now):
        self.all(lambda q: q.expire(now))

    @invariant()
    def agree(self):
        self.all(snapshot)
        self.all(lambda q: q.take_responses().tobytes())

    @invariant()
    def conserved(self):
        for q in self.queues:
            s = q.stats
            assert s.conserved(), s
            assert s.partial_now == q.partial_count


Agreement.TestCase.settings = settings(
    max_examples=20 if os.environ.get("HYPOTHESIS_PROFILE") == "sanitize" else 150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestAgreement = Agreement.TestCase
