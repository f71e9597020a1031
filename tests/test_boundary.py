"""The core's boundary: whatever a caller does, a clear error and an unchanged
state, never a crash. One regression test per way in that used to break it,
each on all four strategies. What used to crash runs in a subprocess, so that
a regression fails its test instead of killing the run."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest

import iopf
from iopf import FAULT_DTYPE, Fault, Response
from iopf_core import STRATEGIES as CORES

STRATEGIES = ["hash", "tree", "list", "python"]
MARKERS = [0xFFFFFFFB, 0xFFFFFFFC, 0xFFFFFFFD, 0xFFFFFFFE]   # the core's internal PASIDs


def run_child(code: str, strategy: str) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter with STRATEGY set; it must print OK."""
    src = f"STRATEGY = {strategy!r}\n" + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert proc.stdout.strip().endswith("OK"), proc.stdout[-2000:]
    return proc


def core_state(core: Any) -> tuple[Any, ...]:
    return (core.stats(), core.partial_count, core.now, core.has_responses,
            [(int(k), core.group_faults(int(k)).tobytes()) for k in core.pending_cookies()])


def queue_state(q: iopf.Queue) -> tuple[Any, ...]:
    return (q.stats.as_dict(), q.partial_count, q.now,
            [(g.cookie, g.faults.tobytes()) for g in q.pending()])


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def populated(strategy: str, policy: iopf.Policy = iopf.policies.PCIE) -> iopf.Queue:
    """Partials on two keys and two pending groups; the outbox emptied."""
    q = iopf.Queue(policy, strategy=strategy)
    for grp in range(3):
        q.report(Fault(1, 5, grp, 0x1000, time=10))
    q.report(Fault(1, 5, 0, 0x2000, last=True, time=11))
    q.report(Fault(2, 6, 1, 0x3000, last=True, time=12))
    q.take_responses()
    return q


# -- report of something that is not a Fault ------------------------------------------

def test_report_of_a_tuple_or_list_is_a_type_error(strategy):
    run_child("""
        import iopf
        q = iopf.Queue(strategy=STRATEGY)
        for bad in [(1, 1, 0, 0x1000), [1, 1, 0, 0x1000], None, 5, "fault"]:
            try:
                q.report(bad)
            except TypeError:
                pass
            else:
                raise SystemExit(f"accepted {bad!r}")
        for bad in [(1, 1, 0, 0x1000), (0, 1, 0, 0, 0, 0, 0, (0,)), (0, 1, 0, 0, 0, 0, 0, 5)]:
            for call in (q.core.report, q.core.report_fault):
                try:
                    call(bad)
                except TypeError:
                    pass
                else:
                    raise SystemExit(f"core accepted {bad!r}")
        assert q.stats.faults_reported == 0
        print("OK")
    """, strategy)


# -- records changed behind the core's back --------------------------------------------

def test_handler_writing_markers_into_its_batch_cannot_get_them_in(strategy):
    run_child("""
        import numpy as np, iopf
        from iopf import Fault, FAULT_DTYPE
        q = iopf.Queue(strategy=STRATEGY)
        n = 2000
        arr = np.array([tuple(Fault(1, 5, i % 7, i << 12, last=i % 3 == 2)) for i in range(n)],
                       dtype=FAULT_DTYPE)
        def handler(g):
            arr["pasid"][1:] = 0xFFFFFFFC        # the core's empty-slot marker
            arr["grpid"][1:] = 70000
            arr["flags"][1:] = 0x83
            return None                          # leave the group pending
        q.attach(1, 5, handler)
        try:
            q.report_batch(arr)
        except ValueError as e:
            assert "record" in str(e), e
        else:
            raise SystemExit("a changed record was applied")
        s = q.stats
        assert s.conserved(), s
        for g in q.pending():
            assert g.pasid == 5 and g.grpid < 512
            assert g.respond(iopf.Response.SUCCESS)
        q.report_batch(np.zeros(0, FAULT_DTYPE))
        q.discard_partial()
        assert q.stats.conserved() and q.stats.pending_now == 0
        print("OK")
    """, strategy)


def test_another_thread_writing_the_batch_cannot_get_records_in(strategy):
    run_child("""
        import sys, threading, numpy as np, iopf
        from iopf import Fault, FAULT_DTYPE
        sys.setswitchinterval(1e-5)
        q = iopf.Queue(strategy=STRATEGY, default_handler=iopf.Response.SUCCESS)
        n = 20000 if STRATEGY != "python" else 2000
        good = np.array([tuple(Fault(1, 5, i % 7, i << 12, last=i % 3 == 2)) for i in range(n)],
                        dtype=FAULT_DTYPE)
        stop = False
        arr = good.copy()
        def writer():
            while not stop:
                arr["pasid"][::5] = 0xFFFFFFFC
                arr["pasid"][::5] = 5
        t = threading.Thread(target=writer)
        t.start()
        refused = 0
        try:
            for _ in range(20):
                try:
                    q.report_batch(arr)
                except ValueError:
                    refused += 1
        finally:
            stop = True
            t.join()
        s = q.stats
        assert s.conserved(), s
        r = q.take_responses()
        assert set(r["pasid"].tolist()) <= {5}, set(r["pasid"].tolist())
        print("refused", refused, "OK")
    """, strategy)


def test_check_then_run_on_a_changed_buffer_refuses_it(strategy):
    q = populated(strategy)
    core = q.core
    arr = np.array([tuple(Fault(3, 1, 2, 0)), tuple(Fault(3, 1, 2, 0, last=True))], FAULT_DTYPE)
    core.check(arr)
    arr["pasid"][1] = 0xFFFFFFFC
    before = core_state(core)
    with pytest.raises(ValueError, match="record 1: pasid"):
        core.run(arr, 0)
    assert core.position == 1
    # the record before the refused one is applied, the refused one not
    assert core.stats()["faults_reported"] == before[0]["faults_reported"] + 1
    assert core.partial_count == before[1] + 1


def test_run_start_is_bounds_checked(strategy):
    q = populated(strategy)
    arr = np.array([tuple(Fault(3, 1, 2, 0))], FAULT_DTYPE)
    before = core_state(q.core)
    for start in (-1, 2, 10**6, -10**6):
        with pytest.raises(IndexError):
            q.core.run(arr, start)
    assert core_state(q.core) == before
    assert q.core.run(arr, 1) == 1          # the end is a valid (empty) start
    assert core_state(q.core) == before


# -- raw core arguments --------------------------------------------------------------

def test_raw_respond_batch_checks_lengths_and_codes(strategy):
    q = iopf.Queue(strategy=strategy)
    for i in range(8):
        q.report(Fault(1, 1, i, 0, last=True))
    core = q.core
    cookies = core.pending_cookies()
    before = core_state(core)
    bad_calls: list[tuple[Any, Any]] = [
        (cookies, np.array([0], np.uint32)),                 # 8 cookies, 1 code
        (cookies[:1], np.zeros(8, np.uint32)),
        (cookies, np.full(8, 32575, np.uint32)),             # not a code
        (cookies, np.full(8, 3)),
        (cookies, np.full(8, -1)),
        (cookies.astype(np.float64), np.zeros(8, np.uint32)),
        (cookies.reshape(2, 4), np.zeros((2, 4), np.uint32)),
    ]
    for k, c in bad_calls:
        with pytest.raises((ValueError, TypeError)):
            core.respond_batch(k, c)
        assert core_state(core) == before
    for code, reason in ((3, 10), (32575, 10), (0, 11), (0, 1000)):
        with pytest.raises(ValueError):
            core.respond(int(cookies[0]), code, reason)
        assert core_state(core) == before
    with pytest.raises(ValueError):
        core.flush_pasid(1, 1, 7)
    assert core_state(core) == before
    assert core.respond_batch(cookies, np.full(8, 2, np.uint32)).all()
    assert (core.take_responses()["code"] == 2).all()


def test_raw_report_checks_every_field(strategy):
    q = populated(strategy, iopf.policies.SMMU_STALL)
    core = q.core
    before = core_state(core)
    for rec in [(0, 1, 0, 70000, 3, 1, 0, (0, 0)),          # grpid wider than 16 bits
                (0, 1, 0, 1, 0x83, 1, 0, (0, 0)),           # a flag bit where DEAD used to be
                (0, 1, 0, 1, 3, 0x80, 0, (0, 0)),
                (0, 1, 0xFFFFFFFC, 1, 3, 1, 0, (0, 0)),     # an internal marker as PASID
                (0, 1, 1 << 20, 1, 3, 1, 0, (0, 0))]:
        with pytest.raises(ValueError):
            core.report(rec)
        with pytest.raises(ValueError):
            core.report_fault(rec)
        with pytest.raises(ValueError):
            core.report_values(*rec[:7], *rec[7])
        with pytest.raises(ValueError):     # the queue's per-call entry (a C path)
            q.report_values(*rec[1:5], rec[6], perm=rec[5], time=rec[0])
        assert core_state(core) == before
    # the widest group id the policy allows groups and is found again
    q2 = iopf.Queue(iopf.policies.PCIE.replace(grpid_bits=16), strategy=strategy)
    assert q2.report(Fault(1, 1, 65535, 0)) is None
    g = q2.report(Fault(1, 1, 65535, 0x1000, last=True))
    assert g is not None and len(g) == 2 and g.grpid == 65535


def test_report_values_arguments(strategy):
    """Queue.report_values parses its own arguments on a compiled core: every
    spelling of a call means what it means in Python, and a wrong call is a
    TypeError that changes nothing (a float or a bool is refused, as ``Fault``
    refuses it, not truncated)."""
    q = iopf.Queue(strategy=strategy)
    perm, time = "per" + "m", "ti" + "me"     # keyword names Python did not intern
    calls = [((1, 2, 3, 3, 0x1000), {}),
             ((1, 2, 4, 3, 0x2000), {"perm": 2}),
             ((1, 2, 5, 3, 0x3000), {"time": 7}),
             ((1, 2, 6, 3, 0x4000), {"time": 9, "perm": 3}),
             ((1, 2, 7, 3, 0x5000), {perm: 2, time: 11}),
             ((np.uint32(1), 2, 8, 3, 0x6000), {"perm": np.uint8(1), "time": np.uint64(12)}),
             ((1, 2, 9, 3), {"addr": 0x7000, "time": 13})]
    for args, kw in calls:
        g = q.report_values(*args, **kw)
        assert g is not None and len(g) == 1
        want = (kw.get("time", kw.get(time, 0)), *args[:4], kw.get("perm", kw.get(perm, 1)),
                args[4] if len(args) == 5 else kw["addr"])
        assert g.faults.tolist()[0][:7] == want
    before = queue_state(q)
    for args, kw in [((1, 2, 3, 3), {}), ((1, 2, 3, 3, 0, 1), {}), ((1, 2, 3, 3, 0), {"prem": 1}),
                     ((1, 2, 3, 3, 0), {"perm": None}), ((1, 2, 3, 3, 0), {"time": 1.5}),
                     ((1, 2, 3, 3, "0"), {}), ((1, 2, 3, 3), {"adr": 0}),
                     ((1.0, 2, 3, 3, 0), {}), ((1, 2, 3, 3, 0), {"perm": True}),   # as Fault: no
                     ((1, 2, 3, np.bool_(True), 0), {})]:                          # float, no bool
        with pytest.raises(TypeError):
            q.report_values(*args, **kw)
        assert queue_state(q) == before
    for args, kw in [((1, 2, 3, 3, -1), {}), ((1, 2, 3, 3, 0), {"time": -1}),
                     ((1 << 32, 2, 3, 3, 0), {}), ((1, 2, 3, 3, 0), {"perm": 0x10})]:
        with pytest.raises(ValueError):
            q.report_values(*args, **kw)
        assert queue_state(q) == before


def test_group_respond_codes(strategy):
    """Group.respond reads the code in C on a compiled core: the queue's rule
    still holds (a Response or an int 0..2, never a bool), and a refused code
    answers nothing."""
    q = iopf.Queue(strategy=strategy)
    groups = [q.report_values(1, 1, i, 3, 0) for i in range(6)]
    before = queue_state(q)
    for g in groups:
        assert g is not None
        for code in (True, np.bool_(False), 1.0, "0", None):
            with pytest.raises(TypeError):
                g.respond(code)        # type: ignore[arg-type]
        for code in (3, -1, 2**64, -(2**70)):
            with pytest.raises(ValueError):
                g.respond(code)
        assert queue_state(q) == before
    codes = [Response.SUCCESS, 1, np.uint8(2), Response.FAILURE, 0, np.int64(1)]
    assert [g.respond(c) for g, c in zip(groups, codes)] == [True] * 6  # type: ignore[union-attr]
    assert [g.respond(0) for g in groups] == [False] * 6                # type: ignore[union-attr]
    assert q.take_responses()["code"].tolist() == [int(c) for c in codes]


def test_queue_respond_arguments(strategy):
    """Queue.respond runs in C on a compiled core when nothing else can run
    inside it: the same rules as its Python method (a Group of this queue or
    an int cookie, a code 0..2, never a bool), and a refused call answers
    nothing."""
    q, other = iopf.Queue(strategy=strategy), iopf.Queue(strategy=strategy)
    groups = [q.report_values(1, 1, i, 3, 0) for i in range(7)]
    foreign = other.report_values(1, 1, 0, 3, 0)
    before = queue_state(q)
    for group, code, error in [(groups[0], True, TypeError), (groups[0], 3, ValueError),
                               (groups[0], 1.0, TypeError), (True, 0, TypeError),
                               (1.0, 0, TypeError), ("1", 0, TypeError), (None, 0, TypeError),
                               (foreign, 0, ValueError)]:
        with pytest.raises(error):
            q.respond(group, code)     # type: ignore[arg-type]
        assert queue_state(q) == before
    # unknown cookies are stale answers, not errors
    for cookie in (0, -1, 2**64, 10**30, 999):
        assert q.respond(cookie, 0) is False
    assert q.stats.stale_responses == 5
    batch_group = q.pending()[1]           # a Group made in Python, not by report
    answers = [(groups[0], Response.SUCCESS), (batch_group, 1), (groups[2].cookie, 2),
               (np.uint64(groups[3].cookie), 0), (groups[4], np.int8(1))]
    assert [q.respond(g, c) for g, c in answers] == [True] * 5
    assert not q.respond(groups[0], 0) and not q.respond(groups[2].cookie, 0)
    assert q.respond(groups[5], 0, time=50) and q.now == 50
    assert q.respond(groups[6], 1, at=60) and q.take_responses()["code"].tolist() == [0, 1, 2, 0, 1, 0]
    assert other.respond(foreign, 0)


def test_respond_time_is_an_int(strategy):
    """An answer's ``time`` is refused as a float or a bool (TypeError), never
    cut to an int, through Queue.respond and Group.respond alike, and the
    refused call answers nothing. An answer now moves the clock to its time
    even when stale; a scheduled one (``at=``) does not."""
    q = iopf.Queue(strategy=strategy)
    g = q.report_values(1, 1, 1, 3, 0)
    assert g is not None
    before = queue_state(q)
    for bad in (1.5, 2.0, True, np.bool_(False), np.float64(3.0)):
        with pytest.raises(TypeError, match="time must be an int"):
            q.respond(g, 0, time=bad)      # type: ignore[arg-type]
        with pytest.raises(TypeError, match="time must be an int"):
            g.respond(0, time=bad)         # type: ignore[arg-type]
        assert queue_state(q) == before
    assert q.respond(999, 0, time=4) is False and q.now == 4       # stale, the clock moves
    assert q.respond(999, 0, time=8, at=20) is False and q.now == 4
    assert g.respond(0, time=np.uint64(6)) and q.now == 6


def test_respond_batch_checks_time_as_respond_does(strategy):
    """respond_batch takes ``time`` as respond does, however many cookies it
    has: a bad one is refused (nothing answered or scheduled), an answer now
    moves the clock to it even with no cookie, and with ``at=`` it is checked
    but moves nothing."""
    q = iopf.Queue(iopf.policies.PCIE.replace(response_timeout=10**6), strategy=strategy)
    g = q.report_values(1, 1, 1, 3, 0)
    assert g is not None
    before = queue_state(q)
    for cookies in ([], [g.cookie]):
        for bad, exc in ((-1, ValueError), (2**64, ValueError), (1.5, TypeError)):
            for at in (None, 20):
                with pytest.raises(exc, match="time must be"):
                    q.respond_batch(cookies, 0, time=bad, at=at)      # type: ignore[arg-type]
                assert queue_state(q) == before and q.next_deadline() == 10**6
    with pytest.raises(TypeError, match="time must be an int"):
        q.respond(g, 0, time=1.5, at=20)                              # type: ignore[arg-type]
    assert queue_state(q) == before and q.next_deadline() == 10**6
    assert q.respond_batch([], 0, time=100).tolist() == [] and q.now == 100
    assert q.respond_batch([g.cookie], 0, time=150, at=300).tolist() == [True] and q.now == 100
    q.respond(g, 0)
    assert q.take_responses()["time"].tolist() == [100]       # stamped with the clock respond_batch moved


def test_report_group_refuses_bools(strategy):
    """The whole-group entry of the SimPy adapter refuses a bool in any
    field, as report_values does, and changes nothing."""
    q = iopf.Queue(iopf.policies.VTD, strategy=strategy)
    q.add_device(1)
    q.attach(1, 1, 0)
    before = queue_state(q)
    fields = [0, 1, 1, 5, 1, 3, 1, 2, 0, 4096]
    for i in range(len(fields)):
        args = list(fields)
        args[i] = True
        with pytest.raises(TypeError, match="bool"):
            q._report_group(*args)
        assert queue_state(q) == before
    assert q._report_group(*fields) != 0


@pytest.mark.parametrize("pasid", MARKERS + [1 << 20, 1 << 31])
def test_pasid_arguments_cannot_be_internal_markers(strategy, pasid):
    q = populated(strategy)
    core = q.core
    before = core_state(core)
    size = core.sizeof()
    calls = [lambda: core.attach(1, pasid), lambda: core.attach(1, pasid, None, 0),
             lambda: core.detach(1, pasid), lambda: core.flush_pasid(1, pasid),
             lambda: q.attach(1, pasid, Response.SUCCESS), lambda: q.detach(1, pasid),
             lambda: q.flush_pasid(1, pasid)]
    for call in calls:
        with pytest.raises(ValueError, match="pasid"):
            call()
        assert core_state(core) == before
    assert core.sizeof() == size
    # NO_PASID is a real key PASID (requests without PASID_VALID)
    core.attach(1, iopf.NO_PASID)
    assert core.detach(1, iopf.NO_PASID)


def test_attach_detach_churn_does_not_grow_the_tables(strategy):
    q = iopf.Queue(strategy=strategy)
    q.add_device(1, 4)
    for i in range(2000):
        q.attach(1, i % 50, Response.SUCCESS)
        q.detach(1, i % 50)
    size = q.sizeof()
    for i in range(2000):
        q.attach(1, i % 50, Response.SUCCESS)
        q.detach(1, i % 50)
    assert q.sizeof() == size
    # the device allocation still holds
    for i in range(6):
        q.report(Fault(1, 1, i, 0))
    assert q.stats.overflowed == 2 and q.partial_count == 4


def test_policy_is_read_only_and_init_runs_once(strategy):
    core = CORES[strategy](iopf.policies.PCIE)
    with pytest.raises(AttributeError):
        core.policy = iopf.policies.LINUX  # type: ignore[misc]
    core.report((0, 1, 5, 1, 1, 1, 0, (0, 0)))
    with pytest.raises(RuntimeError):
        core.__init__(iopf.policies.LINUX)  # type: ignore[misc]
    assert core.policy is iopf.policies.PCIE
    assert core.partial_count == 1


class _FakePolicy:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(vars(iopf.policies.PCIE))
        self.__dict__.update(kw)


@pytest.mark.parametrize("bad", [dict(pasid_bits=32), dict(pasid_bits=0), dict(grpid_bits=17),
                                 dict(grpid_bits=9.5), dict(pasid_bits=True)])
def test_core_checks_the_widths_of_any_policy_object(strategy, bad):
    with pytest.raises(ValueError):
        CORES[strategy](_FakePolicy(**bad))


def test_raw_grouper_used_by_two_threads_raises_not_crashes(strategy):
    run_child("""
        import sys, threading, numpy as np, iopf
        from iopf import Fault, FAULT_DTYPE
        from iopf_core import STRATEGIES
        sys.setswitchinterval(1e-5)
        core = STRATEGIES[STRATEGY](iopf.policies.PCIE.replace(response_timeout=50))
        core.set_service(2, 0, 100.0, 0.0, None, 1, 0)
        n = 50000 if STRATEGY != "python" else 3000
        arr = np.array([tuple(Fault(i % 13, 5, i % 11, i << 12, last=i % 4 == 3)) for i in range(n)],
                       dtype=FAULT_DTYPE)
        busy = [0]
        stop = False
        def other():
            while not stop:
                for call in (lambda: core.respond(1, 0), lambda: core.discard_partial(),
                             lambda: core.report_values(0, 1, 5, 1, 1, 1, 0),
                             lambda: core.pending_cookies(), lambda: core.flush_pasid(1, 5),
                             lambda: core.take_responses(), lambda: core.advance(core.now + 20),
                             lambda: core.next_deadline(), lambda: core.serve(core.now, core.now),
                             lambda: core.service_at(core.now), lambda: core.set_timeout_quantum(7),
                             lambda: core.set_service(3, 0, 100.0, 0.0, None, 1, 0)):
                    try:
                        call()
                    except RuntimeError:
                        busy[0] += 1
        t = threading.Thread(target=other)
        t.start()
        errors = 0
        try:
            for _ in range(30):
                try:
                    core.run(arr, 0)
                    core.take_groups()
                except RuntimeError:
                    errors += 1
        finally:
            stop = True
            t.join()
        s = iopf.Stats(core.stats())
        assert s.conserved(), s
        print(busy[0], errors, "OK")
    """, strategy)


# -- epochs and counters near their limits ----------------------------------------------

def test_counters_cross_2_to_the_32(strategy):
    """Drops cross the 32-bit epoch wrap; handles and cookies cross 2**32 too:
    groups stay right (the twin has no epoch and gives the reference)."""
    pol = iopf.policies.PCIE.replace(queue_depth=6, discard_on_overflow=True)
    q = iopf.Queue(pol, strategy=strategy)
    ref = iopf.Queue(pol, strategy="python")
    q.core._debug_counters(2**32 - 5, 2**32 - 3, 2**32 - 4)
    ref.core._debug_counters(2**32 - 5, 2**32 - 3, 2**32 - 4)
    rng = np.random.default_rng(7)
    for step in range(400):
        dev, pasid, grp = int(rng.integers(1, 3)), int(rng.integers(4, 7)), int(rng.integers(3, 5))
        last = bool(rng.random() < 0.3)
        for qq in (q, ref):
            qq.attach(dev, pasid, Response.SUCCESS) if step % 37 == 0 else None
            qq.report(Fault(dev, pasid, grp, step << 12, last=last, time=step))
            if step % 11 == 0:
                qq.flush_pasid(dev, pasid)
    assert q.stats == ref.stats and q.stats.conserved()
    assert q.stats.discarded > 0
    a, b = q.take_responses(), ref.take_responses()
    assert a.tobytes() == b.tobytes()
    assert int(a["cookie"].max()) > 2**32


# -- callbacks ------------------------------------------------------------------------

def test_raising_on_response_loses_nothing(strategy):
    got: list[int] = []

    def cb(r: iopf.PageResponse) -> None:
        got.append(r.cookie)
        if len(got) == 1:
            raise KeyError("callback failed")

    q = iopf.Queue(strategy=strategy, on_response=cb)
    for i in range(10):
        q.report(Fault(1, 1, i, 0, last=True))
    with pytest.raises(KeyError):
        q.remove_device(1)
    assert q.stats.answered == 10
    assert len(got) == 1
    q.discard_partial()
    q.expire(0)          # the next delivery gives the rest, in send order
    assert got == list(range(10, 0, -1))   # remove_device answers newest first
    # and with on_response removed they wait for take_responses
    q.on_response = None
    q.report(Fault(1, 1, 0, 0, last=True))
    q.respond(11, Response.SUCCESS)
    assert q.take_responses()["cookie"].tolist() == [11]
    g = q.report_values(1, 1, 1, 3, 0)      # the per-call entries, lock-free now
    assert g is not None and g.respond(0) and not g.respond(0)
    assert q.take_responses()["cookie"].tolist() == [12]


def test_raising_on_response_leaves_the_rest_to_take_responses(strategy):
    def cb(r: iopf.PageResponse) -> None:
        raise RuntimeError("no")

    q = iopf.Queue(strategy=strategy, on_response=cb)
    for i in range(5):
        q.report(Fault(1, 1, i, 0, last=True))
    with pytest.raises(RuntimeError):
        q.remove_device(1)            # newest first: 5 went to the callback
    assert q.take_responses()["cookie"].tolist() == [4, 3, 2, 1]


def test_responses_are_delivered_in_send_order_when_a_callback_reenters(strategy):
    order: list[int] = []
    q: iopf.Queue

    def cb(r: iopf.PageResponse) -> None:
        order.append(r.cookie)
        if r.cookie == 1:
            q.respond(5, Response.SUCCESS)     # answers a later group from the callback

    q = iopf.Queue(strategy=strategy, on_response=cb)
    for i in range(6):
        q.report(Fault(1, 1, i, 0, last=True))
    q.respond_batch([1, 2, 3], [0, 0, 0])
    assert order == [1, 2, 3, 5]
    q.remove_device(1)                         # newest first
    assert order == [1, 2, 3, 5, 6, 4]


@pytest.mark.parametrize("result", [True, False, 1.0, np.float64(2.0), 1 + 0j, "0", np.bool_(True)])
def test_handler_results_are_response_or_int_only(strategy, result):
    q = iopf.Queue(strategy=strategy, default_handler=lambda g: result)
    with pytest.raises(TypeError):
        q.report(Fault(1, 1, 1, 0, last=True))
    [r] = q.take_responses().tolist()
    assert r[4] == int(q.policy.handler_error_code) and r[8] == int(iopf.Reason.HANDLER_ERROR)
    assert q.stats.conserved() and q.stats.pending_now == 0
    with pytest.raises(TypeError):          # the per-call entry: the same rule
        q.report_values(1, 1, 2, 3, 0)
    [r] = q.take_responses().tolist()
    assert r[8] == int(iopf.Reason.HANDLER_ERROR) and q.stats.pending_now == 0
    # the same rule for a constant handler
    with pytest.raises(TypeError):
        q.attach(1, 2, result)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        q.default_handler = result  # type: ignore[assignment]
    for ok in (0, 2, np.int64(1), Response.FAILURE):
        q.attach(1, 2, ok)


def test_respond_refuses_a_group_of_another_queue(strategy):
    a, b = iopf.Queue(strategy=strategy), iopf.Queue(strategy=strategy)
    ga = a.report(Fault(1, 1, 1, 0, last=True))
    gb = b.report(Fault(1, 1, 1, 0, last=True))
    assert ga is not None and gb is not None and ga.cookie == gb.cookie
    before = queue_state(b)
    with pytest.raises(ValueError, match="another queue"):
        b.respond(ga, Response.SUCCESS)
    assert queue_state(b) == before
    assert b.respond(gb, Response.SUCCESS) and ga.respond(Response.SUCCESS)
    # groups of the per-call entries (no handler: they take the lock-free path)
    ga2, gb2 = a.report_values(1, 1, 2, 3, 0), b.report_values(1, 1, 2, 3, 0)
    assert ga2 is not None and gb2 is not None
    with pytest.raises(ValueError, match="another queue"):
        a.respond(gb2, 0)
    assert ga2.respond(0) and not ga2.respond(0) and b.respond(gb2, 1)


# -- Python objects ---------------------------------------------------------------------

@pytest.mark.parametrize("kw, exc, field", [
    (dict(dev=-1), ValueError, "dev"), (dict(dev=2**32), ValueError, "dev"),
    (dict(addr=2**64), ValueError, "addr"), (dict(dev=1.5), TypeError, "dev"),
    (dict(pasid=-1), ValueError, "pasid"), (dict(grpid=2**32), ValueError, "grpid"),
    (dict(time=-1), ValueError, "time"), (dict(flags=0x10), ValueError, "flags"),
    (dict(perm=0x20), ValueError, "perm"), (dict(private=(0, -1)), ValueError, r"private\[1\]"),
    (dict(private=(0,)), TypeError, "private"), (dict(dev=True), TypeError, "dev"),
    (dict(addr="0"), TypeError, "addr"), (dict(grpid=None), TypeError, "grpid"),
])
def test_fault_checks_its_fields_and_names_them(kw, exc, field):
    args = dict(dev=1, pasid=2, grpid=3, addr=0x1000)
    args.update(kw)
    with pytest.raises(exc, match=field):
        Fault(**args)


def test_fault_accepts_numpy_integers_and_limits():
    f = Fault(np.uint32(2**32 - 1), np.int64(5), np.uint16(3), 2**64 - 1, time=2**64 - 1,
              flags=0xF, perm=0xF, private=(2**64 - 1, np.uint64(0)))
    assert type(f.dev) is int and f.addr == 2**64 - 1 and f.private == (2**64 - 1, 0)


@pytest.mark.parametrize("kw, exc", [
    (dict(grpid_bits=9.5), TypeError), (dict(queue_depth=1.5), TypeError),
    (dict(pasid_bits=0), ValueError), (dict(pasid_bits=32), ValueError),
    (dict(grpid_bits=17), ValueError), (dict(queue_depth=-1), ValueError),
    (dict(response_timeout=2**64), ValueError), (dict(match_pasid=1), TypeError),
    (dict(stall="yes"), TypeError), (dict(timeout_code=3), ValueError),
    (dict(overflow_code=True), TypeError), (dict(pasid_bits=True), TypeError),
])
def test_policy_checks_type_and_range_of_every_field(kw, exc):
    with pytest.raises(exc):
        iopf.Policy(**kw)


def test_policy_fields_all_have_a_check():
    import dataclasses
    for f in dataclasses.fields(iopf.Policy):
        kind = str(f.type).replace(" | None", "")
        assert kind in ("bool", "int", "Response"), (f.name, f.type)
