"""The service model (iopf.Service): FIFO workers, seeded draws, replay, SimPy, CLI."""
from __future__ import annotations

import heapq
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import iopf
from conftest import outcome
from iopf import Fault, Reason, Service, policies, trace
from iopf.cli import main

STRATEGIES = ("hash", "tree", "list", "python")
def fifo(arrivals: list[int], durations: list[int], k: int | None) -> list[int]:
    """When each job ends on k FIFO workers (None: one each): the textbook recursion."""
    free = [0] * (k or 0)
    out = []
    for a, d in zip(arrivals, durations):
        if k is None:
            out.append(a + d)
            continue
        start = max(a, free[0])
        heapq.heapreplace(free, start + d)
        out.append(start + d)
    return out


@pytest.mark.parametrize("servers", [None, 1, 3])
def test_workers_are_fifo(make_queue: Callable[..., iopf.Queue], servers: int | None) -> None:
    rng = np.random.default_rng(1)
    arrivals = np.sort(rng.integers(0, 20_000, 200)).tolist()
    samples = rng.integers(0, 900, 50)
    q = make_queue(default_handler=Service(samples, servers, seed=9))
    cookies = []
    for i, t in enumerate(arrivals):
        g = q.report(Fault(1, 1, i % 512, 0, last=True, time=t))
        assert g is not None
        cookies.append(g.cookie)
    q.advance(2**64 - 1)
    out = q.take_responses()
    done = dict(zip(out["cookie"].tolist(), out["time"].tolist()))
    # The durations drawn, recovered from a twin run of the same draws.
    twin = iopf.Queue(strategy="python", default_handler=Service(samples, None, seed=9))
    for i, t in enumerate(arrivals):
        twin.report(Fault(1, 1, i % 512, 0, last=True, time=t))
    twin.advance(2**64 - 1)
    tout = twin.take_responses()
    tdone = dict(zip(tout["cookie"].tolist(), tout["time"].tolist()))
    durations = [tdone[i + 1] - t for i, t in enumerate(arrivals)]
    assert set(durations) <= set(samples.tolist())
    assert [done[c] for c in cookies] == fifo(arrivals, durations, servers)
    assert out["reason"].tolist() == [Reason.CALLER] * len(arrivals)
    assert (np.diff(out["time"].astype(np.int64)) >= 0).all()   # sent in time order
    stats = q.core.service_stats()
    assert stats["served"] == len(arrivals) and stats["busy_ns"] == sum(durations)


def test_draws_are_seeded_and_have_their_mean() -> None:
    def draws(spec: str, seed: int, n: int = 20_000) -> np.ndarray:
        q = iopf.Queue(default_handler=Service(spec, seed=seed))
        q.report_batch(trace.synthetic(n, seed=3))
        q.advance(2**64 - 1)
        out, gt = q.core.take_responses(group_times=True)
        return (out["time"] - gt).astype(np.float64)

    a, b, c = draws("exp:2000", 1), draws("exp:2000", 1), draws("exp:2000", 2)
    assert (a == b).all() and not (a == c).all()
    assert a.mean() == pytest.approx(2000, rel=0.05)
    assert np.median(a) == pytest.approx(2000 * np.log(2), rel=0.05)
    ln = draws("lognormal:5000,0.5", 4)
    assert ln.mean() == pytest.approx(5000, rel=0.05)
    assert np.log(ln).std() == pytest.approx(0.5, rel=0.05)
    assert (draws("const:1234", 1) == 1234).all() and (draws("77", 1) == 77).all()


@pytest.mark.parametrize("text", ["", "exp", "exp:", "exp:-1", "gamma:3", "lognormal:100",
                                  "lognormal:0,1", "const:1.5", "exp:nan", "lognormal:10,99"])
def test_bad_service_times(text: str) -> None:
    with pytest.raises(ValueError):
        Service(text)


def test_bad_service_arguments() -> None:
    for bad in (-1, np.array([], np.int64), np.array([1.5]), np.array([[1]])):
        with pytest.raises(ValueError):
            Service(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Service(10, servers=0)
    q = iopf.Queue()
    with pytest.raises(ValueError, match="service model"):
        q.serve(1)
    q.service = Service(10)
    with pytest.raises(ValueError, match="one service model"):
        q.default_handler = Service(10)
    with pytest.raises(TypeError):
        q.service = 10  # type: ignore[assignment]


# -- replay ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faults() -> np.ndarray:
    return trace.synthetic(30_000, seed=7, lost_lpig=0.02, stop_markers=0.02)


@pytest.mark.parametrize("kw", [
    dict(service_time="exp:4000", servers=2, policy=policies.AMD.replace(response_timeout=60_000)),
    dict(service_time="lognormal:3000,0.7", servers=3, policy="vtd"),
    dict(service_time=20_000, policy="amd"),
    dict(service_time=np.array([100, 5_000, 40_000]), servers=1, policy="pcie"),
], ids=["exp-timeout", "lognormal-vtd", "const-amd", "samples"])
def test_replay_is_the_same_whatever_the_batch_size(faults: np.ndarray, kw: dict[str, Any]) -> None:
    reports = [iopf.replay(faults, batch_size=n, **kw) for n in (1, 7, 65_536)]
    assert outcome(reports[0]) == outcome(reports[1]) == outcome(reports[2])
    chunks = (c for c in np.array_split(faults, 13))
    assert outcome(iopf.replay(chunks, batch_size=1000, **kw)) == outcome(reports[0])
    assert reports[0].stats["pending_now"] == 0


def test_replay_strategies_agree_with_workers(faults: np.ndarray) -> None:
    small = faults[:6_000]
    ref = None
    for s in STRATEGIES:
        r = outcome(iopf.replay(small, strategy=s, service_time="exp:3000", servers=2,
                                policy=policies.VTD.replace(response_timeout=50_000)),
                    "strategy")
        ref = ref or r
        assert r == ref, s


def test_latency_shows_queueing(faults: np.ndarray) -> None:
    free = iopf.replay(faults, service_time=3_000)
    one = iopf.replay(faults, service_time=3_000, servers=1)
    lat_free, lat_one = free.latency_ns, one.latency_ns
    assert lat_free is not None and lat_one is not None
    assert lat_free["p50"] == lat_free["p99"] == 3_000      # no worker limit: no wait
    assert lat_one["min"] == 3_000 and lat_one["p99"] > 3_000 and lat_one["max"] > lat_one["p50"]
    assert one.service is not None and free.service is not None
    assert one.service["wait_max_ns"] == lat_one["max"] - 3_000
    assert one.service["wait_mean_ns"] == pytest.approx(lat_one["mean"] - 3_000)
    assert 0 < one.service["utilization"] <= 1 and free.service["wait_max_ns"] == 0
    assert "service (1 workers" in str(one) and "utilization" in str(one)
    assert one.latency_histogram()[1].sum() == lat_one["count"]


def test_late_answers_are_stale_in_replay() -> None:
    r = iopf.replay(trace.synthetic(5_000, seed=1), service_time=10_000, servers=1,
                    policy=policies.PCIE.replace(response_timeout=20_000))
    assert r.response_reasons["TIMEOUT"] > 0
    # Each timed-out group's answer still comes, too late: counted stale, never sent.
    assert r.stats["stale_responses"] == r.response_reasons["TIMEOUT"]
    assert r.service is not None and r.service["served"] == r.groups


def test_replay_service_arguments() -> None:
    with pytest.raises(ValueError, match="servers"):
        iopf.replay(trace.synthetic(10), servers=2)
    with pytest.raises(ValueError, match="servers"):
        iopf.replay(trace.synthetic(10), service_time=Service(5), servers=2)
    # The seed too: a Service carries its own, and without a service time it means nothing.
    with pytest.raises(ValueError, match="seed is given by the Service"):
        iopf.replay(trace.synthetic(10), service_time=Service(5), seed=3)
    with pytest.raises(ValueError, match="seed needs a service_time"):
        iopf.replay(trace.synthetic(10), seed=3)
    with pytest.raises(ValueError):
        iopf.replay(trace.synthetic(10), service_time="exp:x")


# -- SimPy equals replay -----------------------------------------------------------------------
def test_simpy_equals_a_replay_of_the_same_arrivals() -> None:
    simpy = pytest.importorskip("simpy")
    from iopf.sim import Server, SimQueue

    policy = policies.PCIE.replace(response_timeout=40_000)
    rng = np.random.default_rng(4)
    n = 400
    times = np.cumsum(rng.integers(0, 3_000, n)).tolist()
    sizes = rng.integers(1, 6, n).tolist()

    env = simpy.Environment()
    got: list[iopf.PageResponse] = []
    sim = SimQueue(env, iopf.Queue(policy), on_response=got.append)
    Server(sim, service_time="exp:5000", servers=2, seed=11).attach_default()

    def device() -> Generator[Any, Any, None]:
        for i, (t, k) in enumerate(zip(times, sizes)):
            yield env.timeout(t - env.now)
            sim.send(1, 1 + i % 3, i % 512, k)

    env.process(device())
    env.run()

    # The same arrivals as a trace, replayed.
    recs = []
    for i, (t, k) in enumerate(zip(times, sizes)):
        for j in range(k):
            recs.append(tuple(Fault(1, 1 + i % 3, i % 512, 0x1000 * j, last=j == k - 1, time=t)))
    arr = np.array(recs, dtype=iopf.FAULT_DTYPE)
    q = iopf.Queue(policy, default_handler=Service("exp:5000", 2, seed=11), auto_advance=True)
    q.report_batch(arr)
    q.advance(2**64 - 1)
    expect = q.take_responses()
    assert [tuple(r) for r in got] == [tuple(r) for r in expect.tolist()]
    assert sim.queue.stats == q.stats

    report = iopf.replay(arr, policy=policy, service_time="exp:5000", servers=2, seed=11)
    lat = np.array([r.time for r in got if r.cookie]) - np.array(
        [times[(r.cookie - 1)] for r in got if r.cookie])
    assert report.latency_ns is not None
    assert report.latency_ns["max"] == lat.max() and report.latency_ns["min"] == lat.min()
    assert report.latency_ns["count"] == len(lat)
    assert report.stats == sim.queue.stats.as_dict()


# -- command line ---------------------------------------------------------------------------------
def test_cli_servers_and_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--no-progress", "--faults", "20000", "--servers", "2",
                 "--service-time", "lognormal:3000,0.5"]) == 0
    out = capsys.readouterr().out
    assert "service (2 workers" in out and "lognormal" in out and "p99" in out


def test_cli_service_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--no-progress", "--faults", "100", "--servers", "2"]) == 2
    assert "--servers needs --service-time" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["replay", "--service-time", "gamma:3"])
    assert "unknown service time" in capsys.readouterr().err


def test_cli_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "lat.png"
    assert main(["replay", "--no-progress", "--faults", "5000", "--service-time", "exp:2000",
                 "--servers", "4", "--plot", str(out)]) == 0
    assert out.stat().st_size > 1000 and f"wrote {out}" in capsys.readouterr().out


def test_cli_plot_without_matplotlib_fails_first(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    called: list[Any] = []
    monkeypatch.setattr("iopf.cli.replay", lambda *a, **k: called.append(a))
    assert main(["replay", "--no-progress", "--service-time", "100", "--plot", "x.png"]) == 2
    assert "matplotlib" in capsys.readouterr().err and not called
