"""The SimPy adapter (iopf.sim) against bare SimPy, same number of faults.

    python -m pytest benchmarks/test_bench_sim.py --benchmark-only

Baseline ``bare``: four SimPy processes that yield one timeout per fault, the
cheapest way to model a fault in SimPy. ``adapter-gN``: four ``Device``
models sending groups of N requests through a ``SimQueue`` (VT-d policy,
1 ms response timeout) to a 4-worker ``Server``; every group is reported,
handed to the server, served, answered and matched back to the device, which
waits on one event per group. The adapter makes no SimPy event per fault, so
its cost per fault falls with the group size; the goal is a cost per fault
below the baseline's one SimPy event. ``adapter-g16-stubqueue`` is
``adapter-g16`` with the queue's ``report_batch`` and ``respond`` replaced by
stubs that only hand the group to the server and echo a response: the cost
of the adapter and the device and server models alone, without grouping.

Both models offer the same load: one fault per 250 ns per device.
"""
from __future__ import annotations

import itertools
from typing import Any

import pytest

simpy = pytest.importorskip("simpy")

from iopf import Flag, PageResponse, Queue, Reason, Response, policies  # noqa: E402
from iopf.sim import Device, Server, SimQueue  # noqa: E402

N_FAULTS = 49_152  # 4 devices x 64 x 192: whole groups at every size
DEVICES = 4
GAP = 250  # ns between faults of one device


def run_bare() -> int:
    env = simpy.Environment()
    done = 0

    def device():  # type: ignore[no-untyped-def]
        nonlocal done
        for _ in range(N_FAULTS // DEVICES):
            yield env.timeout(GAP)
            done += 1

    for _ in range(DEVICES):
        env.process(device())
    env.run()
    return done


class _StubGroup:
    __slots__ = ("cookie", "n")

    def __init__(self, cookie: int, n: int) -> None:
        self.cookie, self.n = cookie, n

    def __len__(self) -> int:
        return self.n


class _StubBatch:
    __slots__ = ("cookies",)

    def __init__(self, cookie: int) -> None:
        self.cookies = [cookie]


def stub_queue(q: Queue, server: Server) -> None:
    """Replace q's grouping with a hand-off to server and an echoed response."""
    cookies = itertools.count(1)
    sizes: dict[int, int] = {}

    def report_batch(faults: Any) -> _StubBatch:
        cookie = next(cookies)
        sizes[cookie] = len(faults)
        server(_StubGroup(cookie, len(faults)))  # type: ignore[arg-type]
        return _StubBatch(cookie)

    def respond(cookie: int, code: int, time: int | None = None) -> bool:
        assert q.on_response is not None
        q.on_response(PageResponse(time or 0, 0, 0, 0, Response(code), Flag(0), cookie,
                                   sizes.pop(cookie), Reason.CALLER))
        return True

    q.report_batch = report_batch  # type: ignore[method-assign, assignment]
    q.respond = respond  # type: ignore[method-assign, assignment]
    q.expire = lambda now: None  # type: ignore[method-assign]


def run_adapter(group_size: int, stub: bool = False) -> int:
    env = simpy.Environment()
    sim = SimQueue(env, policies.VTD.replace(response_timeout=1_000_000))
    server = Server(sim, service_time=500, per_fault=25, servers=4)
    server.attach_default()
    if stub:
        stub_queue(sim.queue, server)
    devs = [Device(sim, d, pasids=(1, 2), groups=N_FAULTS // DEVICES // group_size,
                   group_size=group_size, interval=GAP * group_size, outstanding=256)
            for d in range(DEVICES)]
    env.run()
    assert stub or sim.queue.stats.conserved()
    assert sim.unmatched == 0
    return sum(d.faults_done for d in devs)


@pytest.mark.benchmark(group="sim")
@pytest.mark.parametrize("strategy", ["bare", "adapter-g4", "adapter-g16", "adapter-g64",
                                      "adapter-g16-stubqueue"])
def test_sim_events_per_second(benchmark: Any, strategy: str) -> None:
    if strategy == "bare":
        fn = run_bare
    else:
        group_size = int(strategy.split("-")[1][1:])
        stub = strategy.endswith("stubqueue")
        fn = lambda: run_adapter(group_size, stub)  # noqa: E731
    benchmark.extra_info["faults"] = N_FAULTS
    done = benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    assert done == N_FAULTS
    benchmark.extra_info["faults_per_s"] = round(N_FAULTS / benchmark.stats.stats.median)
