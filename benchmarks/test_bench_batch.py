"""Batch and single-call grouping: every strategy next to the three baselines.

The baselines, in the same pytest-benchmark group so that ratios come from
one run: ``python`` (the pure-Python twin), ``dict`` (a hand-written dict of
lists on plain tuples, ``baselines.DictQueue``) and ``floor`` (plain C on the
same trace, ``floor.c``, compiled by the benchmarks).
"""
from __future__ import annotations

import numpy as np
import pytest
from baselines import CFloor, DictQueue, floor_available
from workloads import sliding

import iopf
from iopf import Response, policies

STRATEGIES = ["hash", "tree", "list", "python"]
BASELINES = ["dict", "floor"]
N_BATCH = 1_000_000
N_PAIR = 400_000      # report_batch + respond_batch, in chunks as replay does
CHUNK = 1 << 16
TWIN_CAP = 2 * CHUNK  # the twin takes seconds on the whole trace: ns per fault on a prefix
N_SINGLE = 20_000


def needs_floor(name: str) -> None:
    if name.startswith("floor") and not floor_available():
        pytest.skip("no C compiler for the floor")


@pytest.fixture(scope="module")
def trace_1m():
    """1,000,000 faults, 512 groups open at every LPIG, groups of 4, one device."""
    return sliding(N_BATCH, open_groups=512, group_size=4)


@pytest.fixture(scope="module")
def trace_64():
    """400,000 faults, 512 groups open at every LPIG, groups of 4, 64 devices."""
    return sliding(N_PAIR, open_groups=512, group_size=4, devices=64)


@pytest.mark.benchmark(group="batch: 1M faults, 512 open groups, groups of 4")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_report_batch(benchmark, trace_1m, strategy):
    def run(q):
        q.report_batch(trace_1m)
    rounds = 1 if strategy == "python" else 5   # the twin takes seconds a round
    benchmark.extra_info["faults"] = len(trace_1m)
    benchmark.pedantic(run, setup=lambda: ((iopf.Queue(strategy=strategy),), {}),
                       rounds=rounds, iterations=1)


@pytest.mark.benchmark(group="pair: report_batch + respond_batch, 400k faults in 64K chunks, "
                             "512 open groups, 64 devices")
@pytest.mark.parametrize("strategy", STRATEGIES + BASELINES + ["floor-list"])
def test_batch_and_respond(benchmark, trace_64, strategy):
    """Each chunk's groups answered at once; the outbox read after each chunk."""
    needs_floor(strategy)
    trace = trace_64[:TWIN_CAP] if strategy == "python" else trace_64
    chunks = [trace[i:i + CHUNK] for i in range(0, len(trace), CHUNK)]
    if strategy.startswith("floor"):
        def setup():
            return (CFloor(strategy[6:] or "hash"),), {}

        def run(f):
            for c in chunks:
                f.run(c)
    elif strategy == "dict":
        tuples = [c.tolist() for c in chunks]

        def setup():
            return (DictQueue(),), {}

        def run(d):
            for c in tuples:
                for cookie, _ in d.report_batch(c):
                    d.respond(cookie, 0)
    else:
        def setup():
            return (iopf.Queue(strategy=strategy),), {}

        def run(q):
            for c in chunks:
                b = q.report_batch(c)
                q.respond_batch(b.cookies, 0)
                q.take_responses()
    benchmark.extra_info["faults"] = len(trace)
    benchmark.pedantic(run, setup=setup, rounds=3 if strategy in ("python", "list") else 7,
                       iterations=1)


@pytest.mark.benchmark(group="single: one report() and respond() per group, 20k faults, "
                             "512 open groups, 64 devices")
@pytest.mark.parametrize("strategy", STRATEGIES + ["hash-values"] + BASELINES)
def test_report_single(benchmark, trace_64, strategy):
    """One call per fault, one answer per group, as a model without batches does.

    ``hash-values`` is ``Queue.report_values`` (scalars, no Fault object);
    ``dict`` the same loop over a hand-written ``report``/``respond``.
    """
    needs_floor(strategy)
    arr = trace_64[:N_SINGLE]
    tuples = arr.tolist()
    faults = [iopf.Fault.from_record(r) for r in tuples]
    if strategy == "floor":
        def setup():
            return (CFloor(),), {}

        def run(f):
            f.run(arr)
    elif strategy == "dict":
        def setup():
            return (DictQueue(),), {}

        def run(d):
            report, respond = d.report, d.respond
            for t in tuples:
                g = report(t)
                if g is not None:
                    respond(g[0], 0)
    elif strategy == "hash-values":
        def setup():
            return (iopf.Queue(),), {}

        def run(q):
            rv = q.report_values
            for t, dev, pasid, grpid, flags, perm, addr, _ in tuples:
                g = rv(dev, pasid, grpid, flags, addr, perm=perm, time=t)
                if g is not None:
                    g.respond(0)
    else:
        def setup():
            return (iopf.Queue(strategy=strategy),), {}

        def run(q):
            report, ok = q.report, Response.SUCCESS   # bound before the loop, as dict's 0
            for f in faults:
                g = report(f)
                if g is not None:
                    g.respond(ok)
    benchmark.extra_info["faults"] = len(arr)
    benchmark.pedantic(run, setup=setup, rounds=7, iterations=1)


@pytest.mark.benchmark(group="policy: hash batch, groups answered SUCCESS in C")
@pytest.mark.parametrize("name", ["PCIE", "LINUX", "VTD"])
def test_policy_cost(benchmark, trace_1m, name):
    """The same trace under each policy; a constant handler answers every group
    as it forms (LINUX and VTD need a handler and added devices, or every request
    is rejected)."""
    policy = getattr(policies, name)

    def run(q):
        q.report_batch(trace_1m)

    def setup():
        q = iopf.Queue(policy, default_handler=Response.SUCCESS)
        for dev in np.unique(trace_1m["dev"]).tolist():
            q.add_device(dev)
        return (q,), {}
    benchmark.extra_info["faults"] = len(trace_1m)
    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
