"""Bad input never crashes, never loses data: a clear error and the queue unchanged."""
from __future__ import annotations

import numpy as np
import pytest

import iopf
from iopf import FAULT_DTYPE, Fault, Response

STRATEGIES = ["hash", "tree", "list", "python"]


def state(q: iopf.Queue):
    return (q.stats.as_dict(), q.partial_count,
            [(g.cookie, g.faults.tobytes()) for g in q.pending()], q.now)


@pytest.fixture(params=STRATEGIES)
def queue(request):
    """A queue holding partials and pending groups, with the outbox emptied."""
    q = iopf.Queue(strategy=request.param)
    for grp in range(4):
        q.report(Fault(1, 5, grp, 0x1000, time=10))
    q.report(Fault(1, 5, 0, 0x2000, last=True, time=11))
    q.report(Fault(2, 6, 1, 0x3000, last=True, time=12))
    q.take_responses()
    return q


def batch(*faults: Fault) -> np.ndarray:
    return np.array([tuple(f) for f in faults], dtype=FAULT_DTYPE)


@pytest.mark.parametrize("bad, match", [
    (Fault(1, 1 << 20, 0, 0), "pasid 0x100000 does not fit in 20 bits"),
    (Fault(1, 0, 512, 0), "grpid 0x200 does not fit in 9 bits"),
])
def test_bad_field_in_report_changes_nothing(queue, bad, match):
    before = state(queue)
    with pytest.raises(ValueError, match=match):
        queue.report(bad)
    assert state(queue) == before
    assert len(queue.take_responses()) == 0


def test_out_of_range_integers_in_report(queue):
    before = state(queue)
    for bad in [(0, -1, 0, 0, 0, 0, 0, (0, 0)), (0, 1 << 32, 0, 0, 0, 0, 0, (0, 0)),
                (-5, 1, 0, 0, 0, 0, 0, (0, 0))]:
        with pytest.raises(ValueError):
            queue.core.report(bad)
    assert state(queue) == before


def test_bad_record_in_batch_names_it_and_applies_nothing(queue):
    arr = batch(Fault(1, 5, 1, 0, last=True), Fault(3, 0, 0, 0), Fault(3, 1 << 21, 0, 0),
                Fault(3, 0, 0, 0, last=True))
    before = state(queue)
    with pytest.raises(ValueError, match=r"^record 2: pasid 0x200000"):
        queue.report_batch(arr)
    assert state(queue) == before
    assert len(queue.take_responses()) == 0


@pytest.mark.parametrize("arr, exc, match", [
    (np.zeros(3, dtype=np.uint64), TypeError, "dtype"),
    ([(0, 1, 2, 3, 0, 0, 0, (0, 0))], TypeError, "numpy array"),
    (np.zeros((2, 2), dtype=FAULT_DTYPE), ValueError, "one-dimensional"),
    (np.zeros(2, dtype=[("time", "<u8"), ("dev", "<u4")]), TypeError, "FAULT_DTYPE"),
])
def test_wrong_array_is_refused(queue, arr, exc, match):
    before = state(queue)
    with pytest.raises(exc, match=match):
        queue.report_batch(arr)
    assert state(queue) == before


def test_empty_batch_is_an_empty_result(queue):
    before = state(queue)
    b = queue.report_batch(np.zeros(0, dtype=FAULT_DTYPE))
    assert len(b) == 0 and b.offsets.tolist() == [0]
    assert state(queue) == before


def test_non_contiguous_batch_is_reported_like_a_copy(queue):
    arr = batch(*[Fault(7, 1, 2, i << 12, last=i % 2 == 1) for i in range(8)])
    q2 = iopf.Queue(strategy=queue.strategy)
    held = queue.partial_count
    b1 = queue.report_batch(arr[::2])       # every other record: the partials only
    b2 = q2.report_batch(arr[::2].copy())
    assert len(b1) == len(b2) == 0
    assert queue.partial_count - held == q2.partial_count == 4


def test_unknown_or_bad_cookie(queue):
    before = state(queue)
    assert queue.respond(12345, Response.SUCCESS) is False
    assert queue.respond(0, Response.SUCCESS) is False
    after = state(queue)
    assert after[0]["stale_responses"] == before[0]["stale_responses"] + 2
    with pytest.raises(TypeError):
        queue.respond("1", Response.SUCCESS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not one of"):
        queue.respond(1, 7)
    assert state(queue) == after


def test_bad_codes_in_respond_batch_apply_nothing(queue):
    cookies = [g.cookie for g in queue.pending()]
    before = state(queue)
    with pytest.raises(ValueError, match=r"codes\[1\]"):
        queue.respond_batch(cookies, [0, 9])
    assert state(queue) == before
    assert queue.respond_batch(cookies + [999], 0).tolist() == [True, True, False]


def test_bad_arguments_elsewhere(queue):
    before = state(queue)
    with pytest.raises(ValueError):
        queue.flush_pasid(1, 5, code=3)
    with pytest.raises(ValueError):
        queue.add_device(1, outstanding=0)
    with pytest.raises(ValueError):
        queue.expire(-1)
    with pytest.raises(TypeError):
        queue.attach(1, 5, "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown strategy"):
        iopf.Queue(strategy="btree")
    assert state(queue) == before


def test_handler_returning_a_bad_code_answers_failure_and_raises():
    q = iopf.Queue(default_handler=lambda g: 42)
    with pytest.raises(ValueError, match="not one of"):
        q.report(Fault(1, 1, 1, 0, last=True))
    (r,) = q.take_responses()
    assert r["code"] == iopf.Policy().handler_error_code
    assert r["reason"] == iopf.Reason.HANDLER_ERROR
    assert q.stats.conserved() and q.stats.pending_now == 0


def test_handler_may_not_report_to_its_own_queue():
    q = iopf.Queue()
    q.default_handler = lambda g: q.report(Fault(1, 1, 2, 0))
    with pytest.raises(RuntimeError, match="handler"):
        q.report(Fault(1, 1, 1, 0, last=True))
    assert q.stats.conserved() and q.partial_count == 0
