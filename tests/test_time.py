"""Simulated time in the core: scheduled answers, timeouts, advance, next_deadline.

Every test runs on every strategy (the three compiled groupers and the twin).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iopf
from iopf import Fault, Reason, Response
from iopf.policies import PCIE

SUCCESS, INVALID, FAILURE = Response.SUCCESS, Response.INVALID, Response.FAILURE
STRATEGIES = ("hash", "tree", "list", "python")


def lpig(grpid: int, time: int, dev: int = 1, pasid: int = 5) -> Fault:
    return Fault(dev, pasid, grpid, 0x1000 * grpid, last=True, time=time)


def take(q: iopf.Queue) -> list[tuple[int, int, int, int]]:
    """(time, cookie, code, reason) of the responses sent since the last call."""
    return [(int(r["time"]), int(r["cookie"]), int(r["code"]), int(r["reason"]))
            for r in q.take_responses()]


def test_answers_and_timeouts_interleave_in_time_order(make_queue: Callable[..., iopf.Queue]) -> None:
    q = make_queue(PCIE.replace(response_timeout=100))
    g = [q.report(lpig(i, t)) for i, t in enumerate((0, 10, 20, 30, 40))]
    assert all(x is not None for x in g)
    c = [x.cookie for x in g if x is not None]
    assert q.respond(c[0], FAILURE, at=150) is True       # after its timeout (100): stale
    assert q.respond(c[1], SUCCESS, at=60) is True
    assert q.respond(c[3], INVALID, at=130) is True       # exactly at its timeout: too late
    assert q.respond(c[4], SUCCESS, at=95)
    assert q.next_deadline() == 60
    assert take(q) == []                                   # nothing is sent before advance
    q.advance(1_000)
    T = int(Reason.TIMEOUT)
    C = int(Reason.CALLER)
    assert take(q) == [
        (60, c[1], SUCCESS, C),
        (95, c[4], SUCCESS, C),
        (100, c[0], INVALID, T),
        (120, c[2], INVALID, T),
        (130, c[3], INVALID, T),     # the timeout was scheduled first (when the group formed)
    ]
    s = q.stats
    assert s.stale_responses == 2 and s.answered == 5 and s.pending_now == 0
    assert q.next_deadline() is None and q.now == 1_000


def test_ties_go_in_scheduling_order(make_queue: Callable[..., iopf.Queue]) -> None:
    q = make_queue()
    g = [q.report(lpig(i, 0)) for i in range(4)]
    cookies = [x.cookie for x in g if x is not None]
    order = [2, 0, 3, 1]
    for i in order:
        q.respond(cookies[i], SUCCESS, at=50)
    q.advance(50)
    assert [c for _, c, _, _ in take(q)] == [cookies[i] for i in order]


def test_advance_stops_at_now_and_stamps_due_times(make_queue: Callable[..., iopf.Queue]) -> None:
    q = make_queue(PCIE.replace(response_timeout=1_000))
    a, b = q.report(lpig(1, 5)), q.report(lpig(2, 6))
    assert a is not None and b is not None
    q.respond_batch([a.cookie, b.cookie], [SUCCESS, FAILURE], at=[300, 200])
    q.advance(199)
    assert take(q) == [] and q.next_deadline() == 200 and q.now == 199
    q.advance(250)
    assert take(q) == [(200, b.cookie, FAILURE, Reason.CALLER)]
    q.advance(300)
    assert take(q) == [(300, a.cookie, SUCCESS, Reason.CALLER)]
    assert q.next_deadline() is None   # the answered groups' timeouts are no deadline


@pytest.mark.parametrize("path", ["flush", "detach", "remove", "timeout", "respond"])
def test_answered_before_its_scheduled_time_is_not_answered_again(
        make_queue: Callable[..., iopf.Queue], path: str) -> None:
    q = make_queue(PCIE.replace(response_timeout=100))
    q.attach(1, 5, lambda g: None)
    g = q.report(lpig(3, 0))
    assert g is not None
    assert g.respond(SUCCESS, at=500) is True
    first: dict[str, Callable[[], Any]] = {
        "flush": lambda: q.flush_pasid(1, 5), "detach": lambda: q.detach(1, 5),
        "remove": lambda: q.remove_device(1), "timeout": lambda: q.advance(100),
        "respond": lambda: q.respond(g, FAILURE)}
    first[path]()
    [(_, cookie, _, reason)] = take(q)
    assert cookie == g.cookie
    assert (reason == Reason.CALLER) == (path == "respond")
    stale = q.stats.stale_responses
    q.advance(10_000)
    assert take(q) == []                              # no second answer
    assert q.stats.stale_responses == stale + 1       # the late answer counts as stale (R4)
    assert q.stats.answered == 1


def test_scheduling_for_a_group_not_pending_is_stale(make_queue: Callable[..., iopf.Queue]) -> None:
    q = make_queue()
    assert q.respond(12345, SUCCESS, at=10) is False
    assert q.respond_batch([7, 8], SUCCESS, at=10).tolist() == [False, False]
    assert q.stats.stale_responses == 3 and q.next_deadline() is None


def test_expire_is_advance_for_timeouts_alone(make_queue: Callable[..., iopf.Queue]) -> None:
    q = make_queue(PCIE.replace(response_timeout=100))
    a, b = q.report(lpig(1, 0)), q.report(lpig(2, 0))
    assert a is not None and b is not None
    q.respond(a, SUCCESS, at=50)
    q.expire(80)
    assert take(q) == [] and q.next_deadline() == 50   # the answer waits for advance
    q.expire(500)                                       # so both groups time out
    assert take(q) == [(100, a.cookie, INVALID, Reason.TIMEOUT),
                       (100, b.cookie, INVALID, Reason.TIMEOUT)]
    assert q.next_deadline() == 50
    q.advance(500)
    assert take(q) == [] and q.stats.stale_responses == 1


def test_auto_advance_sends_what_falls_due_before_each_request(
        make_queue: Callable[..., iopf.Queue]) -> None:
    q = make_queue(auto_advance=True)
    a = q.report(lpig(1, 0))
    assert a is not None
    q.respond(a, SUCCESS, at=100)
    batch = np.array([tuple(lpig(2, 99)), tuple(lpig(3, 100))], dtype=iopf.FAULT_DTYPE)
    q.report_batch(batch)
    got = take(q)
    assert got == [(100, a.cookie, SUCCESS, Reason.CALLER)]
    assert q.pending_cookies().tolist() == [a.cookie + 1, a.cookie + 2]


def test_bad_times_are_refused(make_queue: Callable[..., iopf.Queue]) -> None:
    q = make_queue()
    g = q.report(lpig(1, 0))
    assert g is not None
    with pytest.raises(ValueError):
        q.respond(g, SUCCESS, at=-1)
    with pytest.raises(ValueError):
        q.respond_batch([g.cookie], SUCCESS, at=[1, 2])
    with pytest.raises(ValueError):
        q.advance(-5)
    assert q.next_deadline() is None and q.stats.pending_now == 1


#: Every argument of the Queue that is a time, as a call given the bad value.
TIME_ARGUMENTS: dict[str, Callable[[iopf.Queue, int, Any], object]] = {
    "respond(time=)": lambda q, c, t: q.respond(c, SUCCESS, time=t),
    "respond(at=)": lambda q, c, t: q.respond(c, SUCCESS, at=t),
    "respond_batch(time=)": lambda q, c, t: q.respond_batch([c], SUCCESS, time=t),
    "respond_batch(at=)": lambda q, c, t: q.respond_batch([c], SUCCESS, at=t),
    "advance(now)": lambda q, c, t: q.advance(t),
    "expire(now)": lambda q, c, t: q.expire(t),
    "flush_pasid(time=)": lambda q, c, t: q.flush_pasid(1, 5, time=t),
    "detach(time=)": lambda q, c, t: q.detach(1, 5, time=t),
    "remove_device(time=)": lambda q, c, t: q.remove_device(1, time=t),
    "serve(at=)": lambda q, c, t: q.serve(c, at=t),
    "serve(service_time=)": lambda q, c, t: q.serve(c, service_time=t),
}


@pytest.mark.parametrize("call", list(TIME_ARGUMENTS))
@pytest.mark.parametrize("bad,error", [(1.5, TypeError), (True, TypeError), ("7", TypeError),
                                       (-1, ValueError), (2**64, ValueError)],
                         ids=["float", "bool", "str", "negative", "2**64"])
def test_every_time_argument_one_rule(make_queue: Callable[..., iopf.Queue], call: str,
                                      bad: Any, error: type[Exception]) -> None:
    """A time is an int of ns in [0, 2**64), wherever it is given: another type
    raises TypeError (a float or a bool is refused, never cut), a value out of
    range ValueError, and the refused call changes nothing."""
    q = make_queue(PCIE.replace(response_timeout=100))
    q.service = iopf.Service(1000, servers=2)
    q.add_device(1)
    q.attach(1, 5, lambda group: None)
    g = q.report(lpig(1, 10))
    assert g is not None
    before = (q.stats.as_dict(), q.pending_cookies().tolist(), q.now, q.next_deadline())
    with pytest.raises(error):
        TIME_ARGUMENTS[call](q, g.cookie, bad)
    assert (q.stats.as_dict(), q.pending_cookies().tolist(), q.now, q.next_deadline()) == before
    assert len(q.take_responses()) == 0


OPS = st.lists(st.one_of(
    st.tuples(st.just("report"), st.integers(0, 7), st.integers(0, 300)),
    st.tuples(st.just("at"), st.integers(1, 12), st.integers(0, 400)),
    st.tuples(st.just("flush"), st.integers(0, 1), st.integers(0, 0)),
    st.tuples(st.just("advance"), st.integers(0, 500), st.integers(0, 0)),
    st.tuples(st.just("expire"), st.integers(0, 500), st.integers(0, 0)),
), max_size=40)


@pytest.mark.parametrize("strategy_name", STRATEGIES)
@settings(max_examples=60, deadline=None)
@given(ops=OPS, timeout=st.sampled_from([None, 0, 40, 150]))
def test_next_deadline_is_the_true_minimum(strategy_name: str, ops: list[tuple[str, int, int]],
                                           timeout: int | None) -> None:
    """next_deadline() is the earliest scheduled answer not yet due, or timeout of a
    pending group, after every operation (a model kept by the test)."""
    q = iopf.Queue(PCIE.replace(response_timeout=timeout), strategy=strategy_name)
    answers: list[int] = []                      # times of scheduled answers not yet sent
    formed: dict[int, int] = {}                  # cookie -> group time
    for op, a, b in ops:
        if op == "report":
            g = q.report(Fault(1, a % 2, a, 0, last=True, time=b))
            assert g is not None
            formed[g.cookie] = b
        elif op == "at":
            if q.respond(a, SUCCESS, at=b):
                answers.append(b)
        elif op == "flush":
            q.flush_pasid(1, a)
        elif op == "advance":
            q.advance(a)
            answers = [t for t in answers if t > a]
        else:
            q.expire(a)
        pending = q.pending_cookies().tolist()
        deadlines = list(answers)
        if timeout is not None:
            deadlines += [formed[c] + timeout for c in pending]
        assert q.next_deadline() == (min(deadlines) if deadlines else None)
