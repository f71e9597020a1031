"""One whole group reported from its fields (``Grouper.report_group``, the
SimPy adapter's way in) and the responses as tuples (``take_response_list``).

The group entry must do exactly what reporting its records one by one does,
on every strategy; refuse a bad group before any request is applied; and, on
an allocation failure, leave the requests before the failing one applied and
no other, as a batch does.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import iopf
from iopf import Fault, Flag, Perm, Response
from iopf_core import STRATEGIES
from iopf_core.grouper import _fail_alloc_after

PV, LAST = int(Flag.PASID_VALID), int(Flag.LAST_PAGE)
READ = int(Perm.READ)
U64 = (1 << 64) - 1


def records(time: int, dev: int, pasid: int, grpid: int, flags: int, last_flags: int, perm: int,
            n: int, addr: int, stride: int) -> list[Fault]:
    """The requests report_group makes of its fields."""
    return [Fault(dev, pasid, grpid, addr + i * stride, perm=perm,
                  flags=last_flags if i == n - 1 else flags, time=time) for i in range(n)]


def snapshot(q: iopf.Queue) -> tuple[Any, ...]:
    return (q.stats.as_dict(), q.partial_count, q.now, q.next_deadline(), q.core.last_kind,
            [(g.cookie, g.faults.tobytes()) for g in q.pending()], q.take_responses().tobytes())


GROUPS = st.lists(st.tuples(
    st.integers(0, 2),                       # dev
    st.sampled_from([0, 1, 7]),              # pasid
    st.integers(0, 3),                       # grpid
    st.sampled_from([PV, 0, PV | 4, PV | 8]),  # flags of the requests before the last
    st.sampled_from([PV | LAST, LAST, PV, PV | LAST | 4, 0]),  # flags of the last
    st.sampled_from([READ, 3, 0]),           # perm (0 with LAST_PAGE: a stop marker)
    st.integers(1, 6),                       # n
    st.integers(0, 40),                      # time step
), max_size=12)


@pytest.mark.parametrize("policy, handler", [
    (iopf.policies.PCIE.replace(response_timeout=30), None),
    (iopf.policies.VTD.replace(queue_depth=12), Response.SUCCESS),
    (iopf.policies.LINUX, "python"),
    (iopf.policies.PCIE.replace(priv_data_is_last=True), "serve"),
], ids=["pcie-timeout", "vtd-const", "linux-python", "privlast-serve"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(groups=GROUPS)
def test_a_group_equals_its_records_reported_one_by_one(
        strategy: str, policy: iopf.Policy, handler: Any,
        groups: list[tuple[int, ...]]) -> None:
    seen: dict[int, list[tuple[int, bytes]]] = {0: [], 1: []}

    def make(k: int) -> iopf.Queue:
        def python_handler(g: iopf.Group) -> Response | None:
            seen[k].append((g.cookie, g.faults.tobytes()))
            return None if g.cookie % 3 else Response.INVALID
        q = iopf.Queue(policy, strategy=strategy, auto_advance=True)
        q.add_device(1, 5)
        q.add_device(2)
        if handler == "serve":
            q.default_handler = iopf.Service("const:25", 2)
        else:
            q.default_handler = python_handler if handler == "python" else handler
        return q

    by_group, one_by_one = make(0), make(1)
    t = 0
    for dev, pasid, grpid, flags, last_flags, perm, n, step in groups:
        t += step
        args = (t, dev, pasid, grpid, flags, last_flags, perm, n, 0x1000 * (grpid + 1), 0x1000)
        try:
            cookie = by_group._report_group(*args)
        except ValueError:   # a request before the last would complete a group: nothing applied
            assert n > 1 and by_group.core.kinds(np.array(
                [tuple(f) for f in records(*args)[:1]], iopf.FAULT_DTYPE))[0] == 1
            continue
        last = None
        for f in records(*args):
            last = one_by_one.report(f)
        assert cookie == (last.cookie if last is not None else 0)
        assert snapshot(by_group) == snapshot(one_by_one)
    assert seen[0] == seen[1]


@pytest.mark.parametrize("args, error", [
    ((5, 1, 1, 512, PV, PV | LAST, READ, 3, 0, 4096), "grpid"),
    ((5, 1, 1 << 20, 0, PV, PV | LAST, READ, 3, 0, 4096), "pasid"),
    ((5, -1, 1, 0, PV, PV | LAST, READ, 3, 0, 4096), "dev"),
    ((-5, 1, 1, 0, PV, PV | LAST, READ, 3, 0, 4096), "time"),
    ((5, 1 << 32, 1, 0, PV, PV | LAST, READ, 3, 0, 4096), "dev"),
    ((5, 1, 1, 0, 16, PV | LAST, READ, 3, 0, 4096), "flags"),
    ((5, 1, 1, 0, PV, 18, READ, 3, 0, 4096), "flags"),
    ((5, 1, 1, 0, PV, PV | LAST, 16, 3, 0, 4096), "perm"),
    ((5, 1, 1, 0, PV, PV | LAST, READ, 0, 0, 4096), "at least one"),
    ((5, 1, 1, 0, PV, PV | LAST, READ, 3, -4096, 4096), "64 bits"),
    ((5, 1, 1, 0, PV, PV | LAST, READ, 3, 0, -4096), "64 bits"),
    ((5, 1, 1, 0, PV, PV | LAST, READ, 1, 1 << 64, 0), "64 bits"),
    ((5, 1, 1, 0, PV, PV | LAST, READ, 3, U64 - 0x1fff, 4096), "64 bits"),   # the 3rd page wraps
    ((5, 1, 1, 0, PV, PV | LAST, READ, 1 << 40, 0, 1 << 40), "64 bits"),
    ((5, 1, 1, 0, PV | LAST, PV | LAST, READ, 2, 0, 4096), "before the last"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_bad_group_is_refused_with_nothing_changed(make_queue: Any, args: tuple[int, ...],
                                                     error: str) -> None:
    q = make_queue(iopf.policies.PCIE.replace(response_timeout=100))
    q.report(Fault(1, 1, 0, 0x1000, time=3))                       # a partial held
    g = q.report(Fault(1, 1, 1, 0x2000, last=True, time=4))        # a pending group
    assert g is not None
    q.respond(g, Response.SUCCESS, at=50)
    before = snapshot(q)
    with pytest.raises(ValueError, match=error):
        q._report_group(*args)
    with pytest.raises(TypeError):
        q._report_group(5.0, 1, 1, 0, PV, PV | LAST, READ, 3, 0, 4096)
    assert snapshot(q) == before
    # the same group with its fields fixed goes in
    assert q._report_group(5, 1, 1, 0, PV, PV | LAST, READ, 3, U64 - 0x2fff, 4096) > 0


def test_under_the_stall_policy_a_group_is_one_request(make_queue: Any) -> None:
    q = make_queue(iopf.policies.PRESETS["smmu_stall"])
    with pytest.raises(ValueError, match="before the last"):
        q._report_group(1, 1, 1, 0, 0, 0, READ, 2, 0, 4096)
    assert q.stats.faults_reported == 0
    assert q._report_group(1, 1, 1, 0, 0, 0, READ, 1, 0, 4096) == 1


def test_take_response_list_equals_take_responses(make_queue: Any) -> None:
    def run() -> iopf.Queue:
        q = make_queue(iopf.policies.VTD.replace(queue_depth=3000, response_timeout=10))
        q.add_device(1)
        q.report_batch(np.array([(i, 1, i % 7, i % 512, PV | LAST | 4, READ, i << 12, (0, 0))
                                 for i in range(3500)], iopf.FAULT_DTYPE))   # overflows too
        q.expire(20)
        q.report(Fault(2, 1, 1, 0, last=True))                           # not added: INVALID
        return q
    a, b = run(), run()
    got, want = a.core.take_response_list(), b.core.take_responses().tolist()
    assert len(got) > 3000 and got == want                  # more than the outbox keeps
    assert a.core.take_response_list() == [] and not a.core.has_responses
    for q in (a, b):   # and the outbox works on
        q.report(Fault(3, 1, 9, 0, last=True, time=6000))              # not added: INVALID
    got = a.core.take_response_list()
    assert got == b.core.take_responses().tolist() and len(got) == 1


# -- allocation failure: the requests before the failing one, and no other --------------
POLICY = iopf.policies.PCIE.replace(response_timeout=1000)


def workload() -> list[tuple[int, ...]]:
    """Groups over many keys (enough to grow every pool), some without their LPIG."""
    rng = np.random.default_rng(7)
    out: list[tuple[int, ...]] = []
    for i in range(400):
        n = int(rng.integers(1, 24))
        last = PV | LAST if rng.random() < 0.8 else PV
        out.append((i, int(rng.integers(1, 5)), int(rng.integers(0, 6)), i % 512, PV, last,
                    READ, n, i << 20, 4096))
    return out


def core_state(core: Any) -> tuple[Any, ...]:
    st_ = core.get_state()
    return (core.stats(), core.partial_count, core.now, st_["nodes_used"], st_["entries"],
            [(int(k), core.group_faults(int(k)).tobytes()) for k in core.pending_cookies()],
            core.take_responses().tobytes())


def make_core(strategy: str) -> Any:
    core = STRATEGIES[strategy](POLICY)
    for pasid in range(0, 6, 2):
        core.attach(2, pasid, None, 1)      # constant handlers: answered in C (responses)
    return core


@pytest.mark.parametrize("strategy", ["hash", "tree", "list"])
def test_an_allocation_failure_leaves_the_requests_before_it(strategy: str) -> None:
    work = workload()
    core = make_core(strategy)
    before = _fail_alloc_after(-1)
    for args in work:
        core.report_group(*args)
    total = _fail_alloc_after(-1) - before
    final = core_state(core)
    assert total > 20
    try:
        for n_ok in range(total):
            core = make_core(strategy)
            _fail_alloc_after(n_ok)
            k = 0
            for k, args in enumerate(work):
                try:
                    core.report_group(*args)
                except MemoryError:
                    break
            else:
                pytest.fail(f"allocation {n_ok} did not fail")
            _fail_alloc_after(-1)
            t, dev, pasid, grpid, flags, last, perm, n, addr, stride = work[k]
            pos = core.position
            assert 0 <= pos < n
            ref = make_core(strategy)
            for args in work[:k]:
                ref.report_group(*args)
            if pos:   # the requests before the failing one: partials
                ref.report_group(t, dev, pasid, grpid, flags, flags, perm, pos, addr, stride)
            assert core_state(core) == core_state(ref), (n_ok, k, pos)
            # the rest of the group, then the rest of the work: where an undisturbed run ends
            core.report_group(t, dev, pasid, grpid, flags, last, perm, n - pos,
                              addr + pos * stride, stride)
            for args in work[k + 1:]:
                core.report_group(*args)
            assert core_state(core)[:6] == final[:6], n_ok
    finally:
        _fail_alloc_after(-1)
