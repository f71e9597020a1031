"""A partial that no rule could refuse or drop goes straight to its group,
from the batch loop and from the per-call entries. What decides it can change
between two records of one batch: a handler (called between two run() calls)
adds a device with an allocation, attaches, detaches, removes a device or
turns auto_advance on or off, and calls between batches do the same. Every
strategy must then do what the twin does, which applies every rule to every
request; the explicit cases check the twin too.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import iopf
from iopf import FAULT_DTYPE, Fault, Flag, Response

STRATEGIES = ["python", "hash", "tree", "list"]
P = int(Flag.PASID_VALID)
LAST = int(Flag.PASID_VALID | Flag.LAST_PAGE)
PRIV = int(Flag.PASID_VALID | Flag.PRIV_DATA)


class Script:
    """A handler that does the next of its actions to its own queue, then
    answers SUCCESS (or defers: the group stays pending)."""

    def __init__(self, actions: list[tuple[Any, ...]]) -> None:
        self.actions = list(actions)
        self.q: iopf.Queue | None = None

    def __call__(self, group: iopf.Group) -> Response | None:
        act = self.actions.pop(0) if self.actions else ("answer",)
        q = self.q
        assert q is not None
        kind = act[0]
        if kind == "add_device":
            q.add_device(act[1], act[2])
        elif kind == "auto":
            q.auto_advance = act[1]
        elif kind == "attach":
            q.attach(act[1], act[2], Response.SUCCESS)
        elif kind == "detach":
            q.detach(act[1], act[2])
        elif kind == "remove":
            q.remove_device(act[1])
        return None if kind == "defer" else Response.SUCCESS


def make(policy: iopf.Policy, strategy: str, actions: list[tuple[Any, ...]]) -> iopf.Queue:
    h = Script(actions)
    q = iopf.Queue(policy, strategy=strategy, default_handler=h)
    h.q = q
    return q


def outcome(q: iopf.Queue) -> tuple[Any, ...]:
    """Everything a strategy must agree on (the responses so far are taken)."""
    return (q.stats.as_dict(), q.partial_count, q.now, q.next_deadline(), q.core.last_kind,
            [(g.cookie, g.faults.tobytes()) for g in q.pending()], q.take_responses().tobytes())


def records(rows: list[tuple[int, int, int, int, int, int]]) -> np.ndarray:
    """(time, dev, pasid, grpid, flags, perm) rows as a FAULT_DTYPE array."""
    a = np.zeros(len(rows), FAULT_DTYPE)
    for i, (t, dev, pasid, grpid, flags, perm) in enumerate(rows):
        a[i]["time"], a[i]["dev"], a[i]["pasid"], a[i]["grpid"] = t, dev, pasid, grpid
        a[i]["flags"], a[i]["perm"], a[i]["addr"] = flags, perm, (i + 1) << 12
    return a


def batch_result(q: iopf.Queue, arr: np.ndarray) -> tuple[bytes, list[int], list[int]]:
    b = q.report_batch(arr)
    return b.faults.tobytes(), b.offsets.tolist(), b.cookies.tolist()


def each(policy: iopf.Policy, actions: list[tuple[Any, ...]], steps: Any) -> list[Any]:
    """Run steps(q) on a queue of every strategy; all must give the same."""
    results = [steps(make(policy, s, actions)) for s in STRATEGIES]
    for r in results[1:]:
        assert r == results[0]
    return results[0]


@st.composite
def policies(draw: st.DrawFn) -> iopf.Policy:
    """Any policy; half of them check nothing of a partial (no handler or
    device required, no queue depth), the case the fast path is for (unless
    they stall: then there are no partials)."""
    base = draw(st.sampled_from(list(iopf.policies.PRESETS.values())))
    policy = dataclasses.replace(
        base,
        match_pasid=draw(st.booleans()),
        stop_markers=draw(st.booleans()),
        priv_data_is_last=draw(st.booleans()),
        require_handler=draw(st.booleans()),
        require_device=draw(st.booleans()),
        attach_adds_device=draw(st.booleans()),
        queue_depth=draw(st.sampled_from([None, None, 2, 6, 64])),
        discard_on_overflow=draw(st.booleans()),
        response_timeout=draw(st.sampled_from([None, 3, 20])),
        no_pasid=draw(st.sampled_from([None, 0])),
    )
    if draw(st.booleans()):
        policy = policy.replace(require_handler=False, require_device=False, queue_depth=None)
    return policy


ROWS = st.tuples(st.integers(0, 30), st.integers(0, 2), st.sampled_from([0, 1, 2]), st.integers(0, 2),
                 st.sampled_from([P, P, P, 0, PRIV, PRIV | 4, 8, LAST, LAST, 2, LAST | 8]),
                 st.sampled_from([1, 1, 2, 0]))
ACTIONS = st.one_of(
    st.tuples(st.just("add_device"), st.integers(0, 2), st.sampled_from([None, 1, 2, 4])),
    st.tuples(st.just("auto"), st.booleans()),
    st.tuples(st.just("attach"), st.integers(0, 2), st.sampled_from([None, 1, 2])),
    st.tuples(st.just("detach"), st.integers(0, 2), st.sampled_from([None, 1, 2])),
    st.tuples(st.just("remove"), st.integers(0, 2)),
    st.tuples(st.just("defer")),
    st.tuples(st.just("answer")),
)
BETWEEN = st.tuples(st.booleans(), st.lists(st.tuples(st.integers(0, 2), st.sampled_from([None, 1, 3])),
                                            max_size=2))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), actions=st.lists(ACTIONS, max_size=8),
       batches=st.lists(st.tuples(st.lists(ROWS, max_size=14), BETWEEN, st.booleans()),
                        min_size=1, max_size=3),
       start=st.lists(st.tuples(st.integers(0, 2), st.sampled_from([None, 1, 2])), max_size=3))
def test_rules_that_change_within_and_between_batches(policy, actions, batches, start):
    """Handlers that change attachments, allocations and auto_advance between two
    records of a batch, and calls that change them between batches: a partial
    goes straight to its group exactly when the twin lets it through."""
    def steps(q: iopf.Queue) -> list[Any]:
        out: list[Any] = []
        for dev, limit in start:
            q.add_device(dev, limit)
        t = 0
        for rows, (auto, devices), one_by_one in batches:
            q.auto_advance = auto
            for dev, limit in devices:
                q.add_device(dev, limit)
            arr = records([(t + r[0], *r[1:]) for r in rows])
            t += 31
            if one_by_one:      # the per-call entry (report_one's own test)
                out.append([(g.cookie, g.faults.tobytes()) if (g := q.report(Fault.from_record(r)))
                            else None for r in arr])
            else:
                out.append(batch_result(q, arr))
            out.append(outcome(q))
        return out
    each(policy, actions, steps)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_priv_data_completes_a_group_between_plain_partials(strategy: str) -> None:
    """priv_data_is_last: a request with PRIV_DATA but no LAST_PAGE completes
    its group in a batch of plain partials; the partials after it start a new one."""
    policy = iopf.policies.PCIE.replace(priv_data_is_last=True)
    q = iopf.Queue(policy, strategy=strategy)
    arr = records([(1, 1, 1, 0, P, 1), (2, 1, 1, 0, P, 1), (3, 1, 1, 1, P, 1), (4, 1, 1, 0, PRIV, 1),
                   (5, 1, 1, 0, P, 1), (6, 1, 1, 1, PRIV | 4, 1), (7, 1, 1, 0, P, 1)])
    b = q.report_batch(arr)
    assert b.offsets.tolist() == [0, 3, 5]
    assert b.faults["time"].tolist() == [1, 2, 4, 3, 6]
    assert q.partial_count == 2 and q.core.last_kind == 0
    plain = iopf.Queue(iopf.policies.PCIE, strategy=strategy)       # without the rule: all held
    assert len(plain.report_batch(arr)) == 0 and plain.partial_count == 7


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stall_holds_no_partial_even_when_nothing_is_checked(strategy: str) -> None:
    """Under stall every request is its own group, with or without LAST_PAGE,
    also when no rule checks partials (the fast path must not hold them)."""
    policy = iopf.policies.SMMU_STALL
    assert not (policy.require_handler or policy.require_device or policy.queue_depth)
    q = iopf.Queue(policy, strategy=strategy)
    arr = records([(1, 1, 1, 0, P, 1), (2, 1, 1, 0, 0, 1), (3, 1, 1, 0, LAST, 1), (4, 2, 1, 5, P, 2)])
    b = q.report_batch(arr)
    assert b.offsets.tolist() == [0, 1, 2, 3, 4] and q.partial_count == 0
    assert q.report(Fault(1, 1, 7, 0x1000, time=5)) is not None and q.core.last_kind == 1


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_handler_that_limits_the_device_in_a_batch(strategy: str) -> None:
    """The first group's handler gives device 1 an allocation of 3: the partials
    after it in the same batch are counted against it (the fourth outstanding
    request overflows), those of device 2 are not."""
    q = make(iopf.policies.PCIE, strategy, [("add_device", 1, 3)])
    rows = [(1, 1, 1, 0, LAST, 1)]                     # its group: the handler limits dev 1
    rows += [(2 + i, 1, 1, 1, P, 1) for i in range(4)]  # 3 held, the 4th overflows
    rows += [(9 + i, 2, 1, 1, P, 1) for i in range(4)]  # another device: all held
    b = q.report_batch(records(rows))
    assert len(b) == 1
    s = q.stats
    assert s.overflowed == 1 and q.partial_count == 7
    ref = make(iopf.policies.PCIE, "python", [("add_device", 1, 3)])
    ref.report_batch(records(rows))
    assert outcome(q) == outcome(ref)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_handler_that_turns_auto_advance_on_in_a_batch(strategy: str) -> None:
    """A handler turns auto_advance on in the middle of a batch: the next
    partial first answers the groups whose timeout fell due before it."""
    policy = iopf.policies.PCIE.replace(response_timeout=5)
    q = make(policy, strategy, [("defer",), ("defer",), ("auto", True)])
    rows = [(1, 1, 1, 0, LAST, 1), (2, 1, 1, 1, LAST, 1),   # deferred: time out at 6 and 7
            (3, 1, 1, 2, LAST, 1),                           # its handler turns auto_advance on
            (4, 1, 1, 3, P, 1),                              # nothing due yet
            (7, 1, 1, 3, P, 1),                              # first answers the two timeouts
            (8, 1, 1, 3, P, 1)]
    q.report_batch(records(rows))
    out = q.take_responses()
    assert out["reason"].tolist()[-2:] == [int(iopf.Reason.TIMEOUT)] * 2
    assert out["time"].tolist()[-2:] == [6, 7]
    assert q.partial_count == 3 and q.auto_advance
    ref = make(policy, "python", [("defer",), ("defer",), ("auto", True)])
    ref.report_batch(records(rows))
    ref.take_responses()
    assert outcome(q) == outcome(ref)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_auto_advance_turned_on_between_batches(strategy: str) -> None:
    """Groups pending with a timeout, then auto_advance on: a batch of partials
    alone sends the timeouts due before its first request, first."""
    policy = iopf.policies.PCIE.replace(response_timeout=10)
    q = iopf.Queue(policy, strategy=strategy)
    q.report_batch(records([(i, 1, 1, i, LAST, 1) for i in range(4)]))
    assert not len(q.take_responses())
    q.auto_advance = True
    q.report_batch(records([(12, 2, 1, 0, P, 1), (100, 2, 1, 0, P, 1)]))
    out = q.take_responses()
    assert out["time"].tolist() == [10, 11, 12, 13] and q.partial_count == 2
    assert q.next_deadline() is None
