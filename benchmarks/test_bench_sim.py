"""The SimPy adapter (iopf.sim) against bare SimPy models, same number of faults.

    python -m pytest benchmarks/test_bench_sim.py --benchmark-only

Baselines: ``bare`` is four SimPy processes that yield one timeout per
fault, the cheapest way to model a fault in SimPy. ``bare-same-events-gN``
is the adapter's model written by hand in bare SimPy, with the same events:
four devices issue a group of N requests every N * 250 ns within a credit
of 256 requests, a 4-worker FIFO server serves each group for
500 + 25 * N ns and answers it, and the device waits on one event per group
(no grouping, no queue, no timeouts), written with callbacks: the floor
for this model. ``bare-resource-gN`` is the same model as a SimPy user
would usually write it: a ``simpy.Resource`` of 4 workers and one process
per group (request, service timeout, answer).

``adapter-gN``: four ``Device`` models sending groups of N requests
through a ``SimQueue`` (VT-d policy, 1 ms response timeout) to a 4-worker
``Server`` with the same constant service time: every group is reported,
grouped, queued for a worker in the core, answered when the SimQueue timer
reaches its end and matched back to the device. The goal is
``adapter-gN`` within 1.3x of ``bare-resource-gN``, the bare model a SimPy
user would write; ``bare-same-events-gN`` shows how far that is from the
floor.
``adapter-g16-pyserver`` serves with ``per_fault=25`` instead (the Server
then runs Python per group to compute the service time).

Every model offers the same load: one fault per 250 ns per device.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import pytest

simpy = pytest.importorskip("simpy")

from iopf import policies  # noqa: E402
from iopf.sim import Device, Server, SimQueue  # noqa: E402

N_FAULTS = 49_152  # 4 devices x 64 x 192: whole groups at every size
DEVICES = 4
GAP = 250  # ns between faults of one device
WORKERS = 4
CREDIT = 256


def service_ns(group_size: int) -> int:
    return 500 + 25 * group_size


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


def run_bare_same_events(group_size: int) -> int:
    """The adapter's model by hand: devices with credit, a FIFO server, one event per group."""
    env = simpy.Environment()
    busy = 0
    backlog: deque[tuple[simpy.Event, int]] = deque()
    done = 0

    def start(ev: simpy.Event, n: int) -> None:
        env.timeout(service_ns(n)).callbacks.append(lambda _e: finish(ev, n))

    def finish(ev: simpy.Event, n: int) -> None:
        nonlocal busy
        ev.succeed((int(env.now), n))
        if backlog:
            start(*backlog.popleft())
        else:
            busy -= 1

    def device():  # type: ignore[no-untyped-def]
        nonlocal busy, done
        used = 0
        wake: list[simpy.Event] = []

        def answered(ev: simpy.Event) -> None:
            nonlocal used, done
            used -= ev.value[1]
            done += ev.value[1]
            if wake:
                wake.pop().succeed()

        for _ in range(N_FAULTS // DEVICES // group_size):
            yield env.timeout(GAP * group_size)
            while used + group_size > CREDIT:
                w = env.event()
                wake.append(w)
                yield w
            used += group_size
            ev = env.event()
            ev.callbacks.append(answered)
            if busy < WORKERS:
                busy += 1
                start(ev, group_size)
            else:
                backlog.append((ev, group_size))

    for _ in range(DEVICES):
        env.process(device())
    env.run()
    return done


def run_bare_resource(group_size: int) -> int:
    """The same model, written the usual SimPy way: a Resource and a process per group."""
    env = simpy.Environment()
    workers = simpy.Resource(env, capacity=WORKERS)
    done = 0

    def serve(ev: simpy.Event, n: int):  # type: ignore[no-untyped-def]
        with workers.request() as req:
            yield req
            yield env.timeout(service_ns(n))
        ev.succeed((int(env.now), n))

    def device():  # type: ignore[no-untyped-def]
        nonlocal done
        used = 0
        wake: list[simpy.Event] = []

        def answered(ev: simpy.Event) -> None:
            nonlocal used, done
            used -= ev.value[1]
            done += ev.value[1]
            if wake:
                wake.pop().succeed()

        for _ in range(N_FAULTS // DEVICES // group_size):
            yield env.timeout(GAP * group_size)
            while used + group_size > CREDIT:
                w = env.event()
                wake.append(w)
                yield w
            used += group_size
            ev = env.event()
            ev.callbacks.append(answered)
            env.process(serve(ev, group_size))

    for _ in range(DEVICES):
        env.process(device())
    env.run()
    return done


def run_adapter(group_size: int, py_server: bool = False) -> int:
    env = simpy.Environment()
    sim = SimQueue(env, policies.VTD.replace(response_timeout=1_000_000))
    if py_server:
        server = Server(sim, service_time=500, per_fault=25, servers=WORKERS)
    else:
        server = Server(sim, service_time=service_ns(group_size), servers=WORKERS)
    server.attach_default()
    devs = [Device(sim, d, pasids=(1, 2), groups=N_FAULTS // DEVICES // group_size,
                   group_size=group_size, interval=GAP * group_size, outstanding=CREDIT)
            for d in range(DEVICES)]
    env.run()
    assert sim.queue.stats.conserved()
    assert sim.unmatched == 0
    return sum(d.faults_done for d in devs)


@pytest.mark.benchmark(group="sim")
@pytest.mark.parametrize("strategy", ["bare", "bare-same-events-g4", "bare-resource-g4",
                                      "adapter-g4", "bare-same-events-g16", "bare-resource-g16",
                                      "adapter-g16", "bare-same-events-g64", "bare-resource-g64",
                                      "adapter-g64",
                                      "adapter-g16-pyserver"])
def test_sim_events_per_second(benchmark: Any, strategy: str) -> None:
    group_size = int(strategy.split("-g")[1].split("-")[0]) if "-g" in strategy else 1
    if strategy == "bare":
        fn = run_bare
    elif strategy.startswith("bare-same-events"):
        fn = lambda: run_bare_same_events(group_size)  # noqa: E731
    elif strategy.startswith("bare-resource"):
        fn = lambda: run_bare_resource(group_size)  # noqa: E731
    else:
        py_server = strategy.endswith("pyserver")
        fn = lambda: run_adapter(group_size, py_server)  # noqa: E731
    benchmark.extra_info["faults"] = N_FAULTS
    done = benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)
    assert done == N_FAULTS
    benchmark.extra_info["faults_per_s"] = round(N_FAULTS / benchmark.stats.stats.median)
