"""Every strategy against the pure-Python twin, driven by the same operations.

A Hypothesis state machine reports random faults (reused group ids, stale
partials, no-PASID requests, lone LPIGs, stop markers, PRIV_DATA), answers,
flushes, discards, removes, attaches handlers that answer, defer or raise,
sets allocations and expires, schedules answers, serves groups through a
service model and advances simulated time (with and without advancing on
report), under a random policy (``report_values``, the scalar entry, and
``report_group``, a whole group from its fields, are among the ways to
report); after every step all queues must agree on
groups, responses, pending groups, the next deadline and counters, and the
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
from iopf_core import COMPILED, Grouper

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


SERVICES = st.sampled_from([None, ("const:7", None), ("exp:20", 1), ("lognormal:30,0.8", 2),
                            ((3, 9, 40), 1), ("const:0", 1)])


def make_handler(mode: str):
    """A constant handler ("const-CODE", answered in the engine), the queue's
    service model ("serve") or a Python one."""
    if mode == "serve":
        return "serve"
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
            [g.faults.tobytes() for g in q.pending()], q.next_deadline(), q.now,
            q.core.service_stats(), q.core.service_at(q.now), q.core.last_kind)


class Agreement(RuleBasedStateMachine):
    @initialize(policy=policies(), service=SERVICES, seed=st.integers(0, 2**64 - 1))
    def setup(self, policy, service, seed):
        self.queues = [iopf.Queue(policy, strategy=s) for s in STRATEGIES]
        if COMPILED:
            # The hash and the tree again, sweeping their empty partial group
            # records as soon as there are three (the pool holds 1,024).
            for s in ("hash", "tree"):
                swept = iopf.Queue(policy, strategy=s)
                swept.core._debug_sweep_ratio(512)
                self.queues.append(swept)
        self.service = service
        if service is not None:
            time, servers = service
            for q in self.queues:
                q.service = iopf.Service(np.array(time) if isinstance(time, tuple) else time,
                                         servers, seed=seed)

    def handler(self, mode: str):
        h = make_handler(mode)
        if h == "serve":
            return self.queues[0].service if self.service is not None else Response.SUCCESS
        return h

    def each(self, mode: str):
        """The handler of each queue (a service model is each queue's own)."""
        return [q.service if mode == "serve" and self.service is not None else self.handler(mode)
                for q in self.queues]

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

    @rule(f=faults())
    def report_values(self, f):
        """The scalar entry: the same request field by field (private is (0, 0))."""
        def run(q):
            g = q.report_values(f.dev, f.pasid, f.grpid, f.flags, f.addr, perm=f.perm, time=f.time)
            return g and (g.cookie, len(g), g.dev, g.pasid, g.grpid, g.time, g.faults.tobytes())
        self.all(run)

    @rule(fs=st.lists(faults(), max_size=12))
    def report_batch(self, fs):
        arr = as_array(fs)

        def run(q):
            b = q.report_batch(arr)
            return b.faults.tobytes(), b.offsets.tolist(), b.cookies.tolist()
        self.all(run)

    @rule(n=st.sampled_from([20, 300, 1300]), keys=st.sampled_from([1, 3, 2000]), lpig=st.sampled_from([0.0, 0.02, 0.3]),
          seed=st.integers(0, 2**32 - 1))
    def report_wide(self, n, keys, lpig, seed):
        """Many requests at once: over many keys, more partial groups than one
        growth of the core's Part array (indexes held across it), or over few,
        groups larger than the batch output has room for (partials of earlier
        batches joining an LPIG of this one)."""
        rng = np.random.default_rng(seed)
        arr = np.zeros(n, FAULT_DTYPE)
        arr["time"] = np.sort(rng.integers(0, 100, n))
        arr["dev"] = rng.integers(0, 3, n)
        arr["pasid"] = rng.choice([0, 1, 2, 0xFFFFF], n)
        arr["grpid"] = rng.integers(0, keys, n) % 512
        arr["flags"] = 1 | np.where(rng.random(n) < lpig, 2, 0)
        arr["perm"] = 1
        arr["addr"] = np.arange(n) << 12

        def run(q):
            b = q.report_batch(arr)
            return b.faults.tobytes(), b.offsets.tolist(), b.cookies.tolist()
        self.all(run)

    @rule(dev=DEVS, pasid=PASIDS, grpid=GRPIDS, flags=st.integers(0, 15),
          last_flags=st.integers(0, 15), perm=st.integers(0, 15), n=st.integers(0, 5),
          addr=st.sampled_from([0, 7 << 12, 2**64 - (2 << 12)]), time=st.integers(0, 100))
    def report_group(self, dev, pasid, grpid, flags, last_flags, perm, n, addr, time):
        """One whole group field by field (the SimPy adapter's entry): as its
        records reported one by one, or refused (an address past 64 bits, a
        request before the last that completes a group) with nothing changed."""
        self.all(lambda q: q._report_group(time, dev, pasid, grpid, flags, last_flags, perm, n,
                                           addr, 4096))

    @rule()
    def take_response_list(self):
        self.all(lambda q: q.core.take_response_list())

    @rule(fs=st.lists(faults(), max_size=6))
    def kinds(self, fs):
        self.all(lambda q: q.core.kinds(as_array(fs)).tolist())

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
          mode=st.sampled_from(["SUCCESS", "INVALID", "defer", "raise", "const-SUCCESS",
                                "const-FAILURE", "serve"]))
    def attach(self, dev, pasid, mode):
        hs = iter(self.each(mode))
        self.all(lambda q: q.attach(dev, pasid, next(hs)))

    @rule(dev=DEVS, pasid=PASID_OR_NONE)
    def detach(self, dev, pasid):
        self.all(lambda q: q.detach(dev, pasid))

    @rule(mode=st.sampled_from([None, "SUCCESS", "defer", "raise", "const-INVALID", "serve"]))
    def default_handler(self, mode):
        hs = iter(self.each(mode) if mode else [None] * len(self.queues))
        self.all(lambda q: setattr(q, "default_handler", next(hs)))

    @rule(dev=DEVS, outstanding=st.sampled_from([None, 1, 2, 5]))
    def add_device(self, dev, outstanding):
        self.all(lambda q: q.add_device(dev, outstanding))

    @rule(now=st.integers(0, 200))
    def expire(self, now):
        self.all(lambda q: q.expire(now))

    @rule(cookie=st.integers(0, 40), code=st.sampled_from(list(Response)), at=st.integers(0, 200))
    def respond_at(self, cookie, code, at):
        self.all(lambda q: q.respond(cookie, code, at=at))

    @rule(cookies=st.lists(st.integers(1, 40), max_size=6), code=st.sampled_from(list(Response)),
          at=st.one_of(st.integers(0, 200), st.lists(st.integers(0, 200), min_size=6, max_size=6)))
    def respond_batch_at(self, cookies, code, at):
        when = at if isinstance(at, int) else np.array(at[:len(cookies)], dtype=np.uint64)
        self.all(lambda q: q.respond_batch(np.array(cookies, dtype=np.uint64), code,
                                           at=when).tolist())

    @rule(now=st.integers(0, 250))
    def advance(self, now):
        self.all(lambda q: q.advance(now))

    @rule(cookie=st.integers(1, 40), at=st.one_of(st.none(), st.integers(0, 200)),
          duration=st.one_of(st.none(), st.integers(0, 60)))
    def serve(self, cookie, at, duration):
        self.all(lambda q: q.serve(cookie, at=at, service_time=duration))

    @rule(on=st.booleans())
    def auto_advance(self, on):
        self.all(lambda q: setattr(q, "auto_advance", on))

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

    @invariant()
    def nodes_accounted(self):
        """Every fault the core holds is one node: a partial, or one of a pending
        group's (which an answer frees by its first and last node and its count)
        unless the group came from a batch, whose faults stay in its output
        once copied there; the free list holds exactly the other nodes."""
        for q in self.queues:
            if COMPILED and isinstance(q.core, Grouper):
                q.core._check_nodes()
                held = q.partial_count + sum(len(g) for g in q.pending())
                state = q.core.get_state()
                assert state["nodes_used"] + state["faults_in_outputs"] == held


Agreement.TestCase.settings = settings(
    max_examples=20 if os.environ.get("HYPOTHESIS_PROFILE") == "sanitize" else 150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestAgreement = Agreement.TestCase
