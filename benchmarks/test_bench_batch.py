"""Batch and single-call grouping, hash and the other strategies against the twin
(goals: batch at least 30x the twin, one report() per fault at least 2x;
policies LINUX and VTD within 1.5x of the default on the same trace)."""
from __future__ import annotations

import numpy as np
import pytest
from workloads import sliding

import iopf
from iopf import Response, policies

STRATEGIES = ["hash", "tree", "list", "python"]
N_BATCH = 1_000_000
N_SINGLE = 20_000


@pytest.fixture(scope="module")
def trace_1m():
    """1,000,000 faults, 512 groups open at every LPIG, groups of 4, one device."""
    return sliding(N_BATCH, open_groups=512, group_size=4)


@pytest.mark.benchmark(group="batch: 1M faults, 512 open groups, groups of 4")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_report_batch(benchmark, trace_1m, strategy):
    def run(q):
        q.report_batch(trace_1m)
    rounds = 1 if strategy == "python" else 5   # the twin takes seconds a round
    benchmark.extra_info["faults"] = len(trace_1m)
    benchmark.pedantic(run, setup=lambda: ((iopf.Queue(strategy=strategy),), {}),
                       rounds=rounds, iterations=1)


@pytest.mark.benchmark(group="single: one report() call per fault, 20k faults")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_report_single(benchmark, trace_1m, strategy):
    faults = [iopf.Fault.from_record(r) for r in trace_1m[:N_SINGLE]]

    def run(q):
        report = q.report
        for f in faults:
            report(f)
    benchmark.extra_info["faults"] = len(faults)
    benchmark.pedantic(run, setup=lambda: ((iopf.Queue(strategy=strategy),), {}),
                       rounds=5, iterations=1)


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
