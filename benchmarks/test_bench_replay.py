"""Replay of a 10,000,000-fault synthetic trace from .npy, streamed in chunks:
faults per second of each strategy against the twin in the same run (goal 30x).

The twin replays the first 500,000 faults of the same file (it takes about
3 s); ns per fault are compared, which the report script does.
"""
from __future__ import annotations

import pytest

import iopf
from iopf import trace

N = 10_000_000
TWIN_N = 500_000
CHUNK = 1 << 18


@pytest.fixture(scope="module")
def npy_trace(synthetic_file):
    return synthetic_file("synthetic-10m.npy", N)


@pytest.mark.benchmark(group="replay: 10M-fault .npy trace, streamed in chunks")
@pytest.mark.parametrize("strategy", ["hash", "tree", "list", "python"])
def test_replay_npy(benchmark, npy_trace, strategy):
    n = TWIN_N if strategy == "python" else N

    def run():
        chunks = trace.iter_chunks(npy_trace, chunk_size=CHUNK)
        if strategy == "python":
            chunks = (c for c, _ in zip(chunks, range(TWIN_N // CHUNK + 1)))
            chunks = _take(chunks, TWIN_N)
        return iopf.replay(chunks, strategy=strategy, service_time=10_000)
    benchmark.extra_info["faults"] = n
    report = benchmark.pedantic(run, rounds=1 if strategy == "python" else 3, iterations=1)
    assert report.stats["faults_reported"] == n


def _take(chunks, n):
    for c in chunks:
        if n <= 0:
            return
        yield c[:n]
        n -= len(c)


SERVICE_N = 2_000_000
MODELS = {
    "answered-on-completion": {},
    "const-10us": {"service_time": 10_000},
    "exp-2us-8-workers": {"service_time": "exp:2000", "servers": 8},
    "lognormal-2us-8-workers-timeout": {"service_time": "lognormal:2000,0.8", "servers": 8,
                                        "policy": iopf.policies.VTD.replace(response_timeout=50_000)},
}


@pytest.fixture(scope="module")
def service_trace():
    return trace.synthetic(SERVICE_N, seed=0)


@pytest.mark.benchmark(group="replay: service model vs none, 2M faults in memory")
@pytest.mark.parametrize("model", list(MODELS))
def test_replay_service_model(benchmark, service_trace, model):
    """The service model (workers in the core, answers scheduled in its time heap)
    against groups answered as they complete: goal within 1.3x."""
    benchmark.extra_info["faults"] = SERVICE_N
    report = benchmark.pedantic(lambda: iopf.replay(service_trace, **MODELS[model]),
                                rounds=3, iterations=1, warmup_rounds=1)
    assert report.stats["pending_now"] == 0
