"""The SimPy adapter (iopf.sim): clock, events per group, servers, devices, timeouts."""
from __future__ import annotations

import importlib
import itertools
import runpy
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("simpy")

import simpy  # noqa: E402

import iopf  # noqa: E402
from iopf import Reason, Response  # noqa: E402
from iopf.policies import LINUX, PCIE, VTD  # noqa: E402
from iopf.sim import Device, Server, SimQueue  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vtd_simpy.py"


def wait_for(env: simpy.Environment, ev: simpy.Event | None, out: list) -> Generator[Any, Any, None]:
    """A process that waits on one group's event and records (now, response)."""
    assert ev is not None
    resp = yield ev
    out.append((env.now, resp))


def at(env: simpy.Environment, t: int, fn: Any) -> None:
    """Call fn() at simulated time t."""
    def proc() -> Generator[Any, Any, None]:
        yield env.timeout(t - env.now)
        fn()
    env.process(proc())


def test_import_without_simpy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "simpy", None)
    monkeypatch.delitem(sys.modules, "iopf.sim")
    with pytest.raises(ImportError, match=r'pip install "iopf\[sim\]"'):
        importlib.import_module("iopf.sim")


# -- SimQueue: clock, one event per group, response routing ---------------------------------
def test_group_answered_after_service_time_with_env_clock() -> None:
    env = simpy.Environment()
    sim = SimQueue(env)
    Server(sim, service_time=5_000).attach(7, 3)
    out: list = []

    def dev() -> Generator[Any, Any, None]:
        yield env.timeout(100)
        ev = sim.send(7, 3, grpid=5, n=4, addr=0x1000)
        resp = yield ev
        out.append((env.now, resp))

    env.process(dev())
    env.run()
    (t, resp), = out
    assert t == 5_100 and resp.time == 5_100
    assert (resp.dev, resp.pasid, resp.grpid, resp.nfaults) == (7, 3, 5, 4)
    assert resp.code == Response.SUCCESS and resp.reason == Reason.CALLER and resp.cookie > 0
    assert sim.queue.now == 5_100 and sim.unmatched == 0 and sim.responses == 1


def test_requests_are_stamped_with_env_now() -> None:
    env = simpy.Environment()
    groups: list[iopf.Group] = []

    def keep(g: iopf.Group) -> Response:
        groups.append(g)
        return Response.SUCCESS

    sim = SimQueue(env, iopf.Queue(default_handler=keep))
    at(env, 1234, lambda: sim.send(1, 1, 0, n=3))
    env.run()
    assert groups[0].faults["time"].tolist() == [1234, 1234, 1234]
    assert groups[0].faults["addr"].tolist() == [0, 4096, 8192]


def test_bounded_servers_queue_groups_fifo() -> None:
    env = simpy.Environment()
    sim = SimQueue(env)
    server = Server(sim, service_time=1_000, servers=2)
    server.attach_default()
    out: list = []
    for grpid in range(5):
        env.process(wait_for(env, sim.send(1, 1, grpid), out))
    env.run()
    assert [(t, r.grpid) for t, r in out] == [(1000, 0), (1000, 1), (2000, 2), (2000, 3), (3000, 4)]
    assert server.served == 5 and server.max_backlog == 3 and server.busy == 0
    assert server.utilization() == pytest.approx(5_000 / (2 * 3_000))


def test_service_time_drawn_from_a_seeded_generator_and_per_fault() -> None:
    env = simpy.Environment()
    sim = SimQueue(env)
    Server(sim, service_time=lambda rng: rng.exponential(1_000), per_fault=10, servers=10,
           seed=42).attach_default()
    out: list = []
    for grpid in range(5):
        env.process(wait_for(env, sim.send(1, 1, grpid, n=grpid + 1), out))
    env.run()
    rng = np.random.default_rng(42)
    expect = sorted(int(round(rng.exponential(1_000))) + 10 * (k + 1) for k in range(5))
    assert sorted(t for t, _ in out) == expect


def test_shared_resource_server() -> None:
    env = simpy.Environment()
    sim = SimQueue(env)
    cpu = simpy.Resource(env, capacity=1)
    Server(sim, service_time=300, servers=cpu).attach_default()
    out: list = []
    for grpid in range(3):
        env.process(wait_for(env, sim.send(1, 1, grpid), out))
    env.run()
    assert [t for t, _ in out] == [300, 600, 900]


def test_zero_service_answers_inside_the_handler() -> None:
    env = simpy.Environment()
    sim = SimQueue(env)
    Server(sim, service_time=0).attach_default()
    ev = sim.send(1, 1, 0, n=2)
    assert ev is not None and ev.triggered
    assert ev.value is not None and ev.value.reason == Reason.HANDLER


def test_one_simpy_event_per_group_not_per_fault() -> None:
    env = simpy.Environment()
    scheduled = 0
    schedule = env.schedule

    def counting(*args: Any, **kw: Any) -> None:
        nonlocal scheduled
        scheduled += 1
        schedule(*args, **kw)

    env.schedule = counting  # type: ignore[method-assign]
    sim = SimQueue(env)
    Server(sim, service_time=100, servers=4).attach_default()
    dev = Device(sim, 1, groups=50, group_size=32, interval=50, outstanding=512)
    env.run()
    assert dev.faults_done == 1600
    # per group: the device's interval, the server's service, the response event,
    # plus the process bookkeeping: far below one event per fault.
    assert scheduled <= 4 * 50 + 10


def test_cookie0_no_handler_answer_resolves_the_sent_group() -> None:
    env = simpy.Environment()
    sim = SimQueue(env, LINUX)   # require_handler, and nothing attached
    ev = sim.send(4, 9, grpid=17, n=3)
    assert ev is not None and ev.triggered
    resp = ev.value
    assert resp is not None
    assert (resp.code, resp.reason, resp.cookie, resp.grpid) == (
        Response.INVALID, Reason.NO_HANDLER, 0, 17)
    # Linux 6.11+ answers the two partials too: unexpected responses for the device
    assert sim.responses == 3 and sim.unmatched == 2
    s = sim.queue.stats
    assert (s.rejected, s.groups, s.partial_now) == (3, 0, 0) and s.conserved()


def test_existing_on_response_is_kept() -> None:
    env = simpy.Environment()
    seen: list[iopf.PageResponse] = []
    also: list[iopf.PageResponse] = []
    q = iopf.Queue(on_response=seen.append)
    sim = SimQueue(env, q, on_response=also.append)
    Server(sim, service_time=10).attach_default()
    sim.send(1, 1, 0)
    env.run()
    assert len(seen) == len(also) == 1 and seen == also


def test_send_checks_fields() -> None:
    env = simpy.Environment()
    sim = SimQueue(env)
    with pytest.raises(ValueError, match="grpid"):
        sim.send(1, 1, 512)
    with pytest.raises(ValueError):
        sim.send(1, 1, 0, n=0)
    with pytest.raises(ValueError):
        sim.send(-1, 1, 0)
    arr = np.zeros(2, iopf.FAULT_DTYPE)
    arr["flags"] = iopf.Flag.LAST_PAGE
    arr["perm"] = iopf.Perm.READ        # LPIGs, not stop markers (which PCIE drops)
    with pytest.raises(ValueError, match="record 0"):
        sim.send_faults(arr)
    assert sim.queue.stats.faults_reported == 0


def test_send_faults_and_partials_without_lpig() -> None:
    env = simpy.Environment()
    sim = SimQueue(env)
    Server(sim, service_time=10).attach_default()
    assert sim.send(1, 1, 3, n=2, last=False) is None
    arr = np.zeros(1, iopf.FAULT_DTYPE)
    arr[0] = (999, 1, 1, 3, iopf.Flag.PASID_VALID | iopf.Flag.LAST_PAGE, 1, 0, (0, 0))
    out: list = []
    env.process(wait_for(env, sim.send_faults(arr), out))
    env.run()
    assert out[0][1].nfaults == 3 and out[0][0] == 10 and arr["time"][0] == 0


def test_handler_error_propagates_after_the_answer() -> None:
    env = simpy.Environment()
    sim = SimQueue(env)

    def bad(group: iopf.Group) -> None:
        raise RuntimeError("boom")

    sim.queue.attach(1, 1, bad)
    with pytest.raises(RuntimeError, match="boom"):
        sim.send(1, 1, 0)
    s = sim.queue.stats
    assert s.answered == 1 and s.conserved()


# -- timeouts ------------------------------------------------------------------------------
def test_timeouts_fire_exactly_at_group_time_plus_timeout() -> None:
    env = simpy.Environment()
    sim = SimQueue(env, PCIE.replace(response_timeout=10_000))
    server = Server(sim, service_time=50_000, servers=10)
    server.attach_default()
    out: list = []
    grpids = itertools.count()
    for t in (0, 3, 2_500, 2_500, 7_777):
        at(env, t, lambda: env.process(wait_for(env, sim.send(1, 1, next(grpids)), out)))
    env.run()
    assert [t for t, _ in out] == [10_000, 10_003, 12_500, 12_500, 17_777]
    assert all(r.code == Response.INVALID and r.reason == Reason.TIMEOUT for _, r in out)
    assert all(r.time == t for t, r in out)
    assert server.served == 5 and server.stale == 5   # the late answers are stale (R4)
    s = sim.queue.stats
    assert (s.groups, s.answered, s.pending_now, s.stale_responses) == (5, 5, 0, 5)


def test_answer_before_deadline_wins_and_no_timer_is_wasted() -> None:
    env = simpy.Environment()
    sim = SimQueue(env, PCIE.replace(response_timeout=1_000))
    Server(sim, service_time=999).attach_default()
    out: list = []
    env.process(wait_for(env, sim.send(1, 1, 0), out))
    env.run()
    assert out[0][0] == 999 and out[0][1].reason == Reason.CALLER
    # The timer follows the queue's next deadline: the answered group's
    # timeout is not one, so no event is spent at 1_000.
    assert env.now == 999


def test_answer_at_the_deadline_loses() -> None:
    env = simpy.Environment()
    sim = SimQueue(env, PCIE.replace(response_timeout=1_000))
    server = Server(sim, service_time=1_000)
    server.attach_default()
    out: list = []
    env.process(wait_for(env, sim.send(1, 1, 0), out))
    env.run()
    assert out[0][0] == 1_000 and out[0][1].reason == Reason.TIMEOUT and server.stale == 1


def test_expire_every_rounds_deadlines_up() -> None:
    env = simpy.Environment()
    sim = SimQueue(env, PCIE.replace(response_timeout=1_000), expire_every=250)
    out: list = []
    for t in (0, 10, 260):
        at(env, t, lambda: env.process(wait_for(env, sim.send(1, 1, int(env.now)), out)))
    env.run()   # no handler: groups stay pending until they time out
    assert [t for t, _ in out] == [1_000, 1_250, 1_500]


def test_device_sees_timeouts_as_invalid() -> None:
    env = simpy.Environment()
    sim = SimQueue(env, VTD.replace(response_timeout=5_000))
    Server(sim, service_time=8_000).attach_default()
    dev = Device(sim, 1, groups=3, group_size=2, interval=1_000)
    env.run()
    r = dev.results()
    assert r["latency"].tolist() == [5_000] * 3 and dev.invalid == 3 and dev.pri_enabled
    assert r["reason"].tolist() == [Reason.TIMEOUT] * 3


# -- devices ---------------------------------------------------------------------------------
def test_credit_stops_and_resumes_issuing() -> None:
    env = simpy.Environment()
    sim = SimQueue(env)
    Server(sim, service_time=1_000, servers=10).attach_default()
    dev = Device(sim, 1, groups=6, group_size=4, outstanding=8)
    peak = 0

    def watch(resp: iopf.PageResponse) -> None:
        nonlocal peak
        peak = max(peak, sim.queue.stats.pending_now)

    sim.on_response = watch
    env.run()
    r = dev.results()
    assert r["created"].tolist() == [0, 0, 0, 1_000, 1_000, 2_000]
    assert r["issued"].tolist() == [0, 0, 1_000, 1_000, 2_000, 2_000]
    assert r["answered"].tolist() == [1_000, 1_000, 2_000, 2_000, 3_000, 3_000]
    assert dev.credit_stalls == 2 and dev.stall_time == 2_000
    assert dev.credit_used == 0 and dev.finished_at == 3_000
    assert peak <= 2 and sim.queue.stats.overflowed == 0


def test_group_larger_than_the_allocation_is_cut() -> None:
    env = simpy.Environment()
    sim = SimQueue(env)
    Server(sim, service_time=10).attach_default()
    dev = Device(sim, 1, groups=2, group_size=100, outstanding=16)
    env.run()
    assert dev.results()["nfaults"].tolist() == [16, 16]


def test_group_index_wraps_at_9_bits_and_skips_indices_in_use() -> None:
    env = simpy.Environment()
    sim = SimQueue(env)
    Server(sim, service_time=1_000_000, servers=1_000).attach_default()
    dev = Device(sim, 1, groups=514)
    env.run()
    r = dev.results()
    assert r["grpid"].max() == 511 and (r["grpid"][:512] == np.arange(512)).all()
    assert r["grpid"][512:].tolist() == [0, 1]
    assert r["issued"][512:].tolist() == [1_000_000, 1_000_000] and dev.credit_stalls == 1


def test_failure_response_disables_pri() -> None:
    env = simpy.Environment()
    sim = SimQueue(env)
    Server(sim, service_time=1_000, code=Response.FAILURE, servers=8).attach_default()
    dev = Device(sim, 1, groups=10, interval=300, group_size=2)
    env.run()
    assert not dev.pri_enabled and dev.failed_at == 1_300 and dev.failure is not None
    assert dev.failure.code == Response.FAILURE
    assert dev.groups_sent == 4 and dev.failures == 4 and dev.finished_at == 1_500
    s = sim.queue.stats
    assert (s.faults_reported, s.groups, s.answered) == (8, 4, 4) and s.conserved()


def test_failure_for_one_pasid_stops_the_whole_function() -> None:
    env = simpy.Environment()
    sim = SimQueue(env, VTD)
    Server(sim, service_time=100).attach(1, 1)
    Server(sim, service_time=100, code=lambda g: Response.FAILURE).attach(1, 2)
    dev = Device(sim, 1, pasids=(1, 2), groups=50, interval=1_000)
    env.run()
    assert dev.groups_done == 2 and dev.failed_at == 2_100 and dev.finished_at == 3_000


def test_overflow_is_retried_by_the_device(make_queue: Any) -> None:
    env = simpy.Environment()
    sim = SimQueue(env, make_queue(PCIE.replace(queue_depth=4)))
    Server(sim, service_time=1_000).attach_default()
    dev = Device(sim, 1, groups=2, group_size=4, retry_delay=400)
    env.run()
    r = dev.results()
    assert r["issued"].tolist() == [0, 0] and r["answered"].tolist() == [1_000, 2_200]
    assert r["retries"].tolist() == [0, 3] and dev.retries == 3
    s = sim.queue.stats
    assert s.as_dict() == dict(
        faults_reported=20, partial_now=0, grouped=8, stop_markers=0, rejected=0, overflowed=12,
        discarded=0, flushed=0, removed=0, groups=2, answered=2, pending_now=0, stale_responses=0)
    assert s.conserved() and sim.unmatched == 0


def test_lost_lpig_holds_credit_until_given_up() -> None:
    env = simpy.Environment()
    sim = SimQueue(env, LINUX)
    Server(sim, service_time=100).attach_default()
    leaky = Device(sim, 2, groups=3, group_size=2, outstanding=4, lost_lpig=1.0)
    env.run()
    assert leaky.groups_lost == 2 and leaky.credit_used == 4 and leaky.finished_at is None
    assert sim.queue.stats.partial_now == 2

    env = simpy.Environment()
    sim = SimQueue(env, LINUX)
    Server(sim, service_time=100).attach_default()
    dev = Device(sim, 2, groups=3, group_size=2, outstanding=4, lost_lpig=1.0, give_up_after=5_000)
    env.run()
    assert dev.groups_lost == 3 and dev.abandoned == 3 and dev.credit_used == 0
    assert dev.finished_at == 5_000 and dev.groups_done == 0


def test_f6_counters_exact_at_the_end(make_queue: Any) -> None:
    env = simpy.Environment()
    sim = SimQueue(env, make_queue(LINUX.replace(response_timeout=20_000)))
    Server(sim, service_time=lambda rng: rng.uniform(500, 1_500), servers=2, seed=1).attach_default()
    good = Device(sim, 1, pasids=(1, 2), groups=40, group_size=4, interval=700,
                  outstanding=16, stop_markers=True, seed=2)
    lossy = Device(sim, 2, groups=10, group_size=3, interval=2_000, lost_lpig=1.0,
                   give_up_after=10_000, seed=3)
    env.run()
    s = sim.queue.stats
    assert good.groups_done == 40 and good.stop_markers_sent == 2 and lossy.abandoned == 10
    assert s.as_dict() == dict(
        faults_reported=160 + 2 + 20, partial_now=20, grouped=160, stop_markers=2, rejected=0,
        overflowed=0, discarded=0, flushed=0, removed=0, groups=40, answered=40, pending_now=0,
        stale_responses=0)
    assert s.conserved() and sim.pending == 0 and sim.unmatched == 0


def test_stop_marker_without_drop_policy_is_an_unexpected_group() -> None:
    env = simpy.Environment()
    sim = SimQueue(env, PCIE.replace(stop_markers=False))   # a policy that keeps them
    Server(sim, service_time=10).attach_default()
    dev = Device(sim, 1, groups=1, stop_markers=True)
    env.run()
    assert dev.stop_markers_sent == 1 and sim.unmatched == 1
    assert sim.queue.stats.groups == 2


def test_device_without_pasid() -> None:
    env = simpy.Environment()
    sim = SimQueue(env, LINUX)
    Server(sim, service_time=10).attach(1, None)
    dev = Device(sim, 1, pasids=(None,), groups=3, group_size=2)
    env.run()
    assert dev.groups_done == 3 and dev.invalid == 0


def test_device_argument_checks() -> None:
    env = simpy.Environment()
    sim = SimQueue(env)
    with pytest.raises(ValueError, match="interval"):
        Device(sim, 1)
    with pytest.raises(ValueError):
        Device(sim, 1, groups=1, lost_lpig=2.0)
    with pytest.raises(ValueError):
        Server(sim, servers=0)
    with pytest.raises(ValueError):
        Server(sim, service_time=-1)


def test_example_runs(tmp_path: Path) -> None:
    mod = runpy.run_path(str(EXAMPLE))
    summary = mod["main"](["--duration-us", "200", "--out", str(tmp_path / "lat.png")])
    assert summary["conserved"] and summary["faults"] > 1_000


@pytest.mark.parametrize("n", [3, 4, 8, 64])
def test_an_address_past_64_bits_is_refused_for_every_group_size(n: int) -> None:
    # Two pages below 2**64: the third page of a group does not fit. Groups of
    # more than 4 fill their addresses with numpy, which wrapped them to 0.
    sim = SimQueue(simpy.Environment())
    with pytest.raises(ValueError, match="does not fit its record"):
        sim.send(dev=1, pasid=1, grpid=0, n=n, addr=(1 << 64) - 2 * 4096)
    assert sim.queue.stats.faults_reported == 0
    sim.send(dev=1, pasid=1, grpid=0, n=2, addr=(1 << 64) - 2 * 4096)   # both pages fit
    assert sim.queue.stats.faults_reported == 2


def test_a_group_that_would_complete_before_its_last_request_is_refused() -> None:
    # Under the stall policy every request completes a group: a send is one request.
    sim = SimQueue(simpy.Environment(), iopf.policies.PRESETS["smmu_stall"])
    with pytest.raises(ValueError, match="before the last"):
        sim.send(dev=1, pasid=1, grpid=0, n=2)
    with pytest.raises(ValueError, match="before the last"):
        sim.send_group(1, 1, 0, 3, flags=int(iopf.Flag.PASID_VALID), perm=int(iopf.Perm.READ))
    assert sim.queue.stats.faults_reported == 0 and sim.pending == 0
    assert sim.send(dev=1, pasid=1, grpid=0, n=1) is not None and sim.pending == 1
