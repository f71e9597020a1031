"""iopf.replay: counters conserved, strategies agree, latency, chunking, report."""
from __future__ import annotations

from typing import Any

import json

import numpy as np
import pytest

import iopf
from conftest import outcome
from iopf import Reason, Response, policies, trace

STRATEGIES = ("hash", "tree", "list", "python")
PRESETS = tuple(policies.PRESETS)


def latency(r: iopf.ReplayReport) -> dict[str, float]:
    """The latency summary of a replay that models time."""
    assert r.latency_ns is not None
    return r.latency_ns


def conserved(s: dict[str, int]) -> bool:
    return (s["faults_reported"] == s["partial_now"] + s["grouped"] + s["stop_markers"]
            + s["rejected"] + s["overflowed"] + s["discarded"] + s["flushed"] + s["removed"]
            and s["groups"] == s["answered"] + s["pending_now"])


@pytest.fixture(scope="module")
def messy() -> np.ndarray:
    """Lost LPIGs, stop markers and requests without PASID: every path is used."""
    return trace.synthetic(20_000, seed=11, lost_lpig=0.02, stop_markers=0.05, no_pasid=0.1)


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    return trace.synthetic(4_000, seed=5, lost_lpig=0.02, stop_markers=0.05, no_pasid=0.1)


@pytest.mark.parametrize("policy", PRESETS)
@pytest.mark.parametrize("service_time", [None, 5_000, 400_000])
def test_counters_conserved(messy: np.ndarray, policy: str, service_time: int | None) -> None:
    r = iopf.replay(messy, policy=policy, service_time=service_time)
    s = r.stats
    assert conserved(s)
    assert s["faults_reported"] == len(messy) == r.faults
    assert r.groups == s["groups"] == sum(r.group_sizes.values())
    assert sum(k * v for k, v in r.group_sizes.items()) == s["grouped"]
    # The replay answers everything it owes before it returns.
    assert s["pending_now"] == 0 and s["stale_responses"] == 0
    # A handler stands for every PASID: require_handler policies reject nothing.
    assert s["rejected"] == 0
    group_reasons = sum(v for k, v in r.response_reasons.items()
                        if k not in ("NO_HANDLER", "OVERFLOW", "STOP_MARKER"))
    assert group_reasons == s["answered"]
    assert sum(r.response_codes.values()) == sum(r.response_reasons.values())
    if policy == "smmu_stall":
        assert set(r.group_sizes) == {1}


def test_overflow_happens_with_a_slow_handler(messy: np.ndarray) -> None:
    """AMD's 512-entry log overflows when answers take long; the overflowing
    LPIGs are answered SUCCESS (F5), and nothing is lost."""
    r = iopf.replay(messy, policy="amd", service_time=400_000)
    assert r.stats["overflowed"] > 0
    assert r.response_reasons["OVERFLOW"] > 0
    assert conserved(r.stats)


def test_strategies_agree(small: np.ndarray) -> None:
    for policy in ("pcie", "linux", "vtd"):
        reports = {s: iopf.replay(small, policy=policy, strategy=s, service_time=30_000)
                   for s in STRATEGIES}
        ref = outcome(reports["hash"], "strategy")
        for s, r in reports.items():
            assert r.strategy == s
            assert outcome(r, "strategy") == ref, (policy, s)


def test_constant_service_time_is_the_latency(messy: np.ndarray) -> None:
    r = iopf.replay(messy, service_time=7_000)
    lat = latency(r)
    assert lat is not None
    assert lat["count"] == r.groups
    for k in ("min", "p50", "p90", "p99", "max", "mean"):
        assert lat[k] == 7_000, k
    assert r.response_codes["SUCCESS"] == r.groups
    assert r.response_reasons["CALLER"] == r.groups


def test_service_time_per_group_size(messy: np.ndarray) -> None:
    r = iopf.replay(messy, service_time=lambda sizes: 1_000 * sizes)
    lat = latency(r)
    sizes = np.repeat(list(r.group_sizes), list(r.group_sizes.values()))
    assert lat["min"] == 1_000 * sizes.min() and lat["max"] == 1_000 * sizes.max()
    assert lat["mean"] == pytest.approx(1_000 * sizes.mean())
    assert lat["p50"] == 1_000 * np.sort(sizes)[int(np.ceil(0.5 * len(sizes))) - 1]


def test_latency_percentiles_are_close_to_exact(messy: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    drawn: list[np.ndarray] = []

    def service(sizes: np.ndarray) -> np.ndarray:
        drawn.append(rng.integers(0, 50_000_000, len(sizes)))
        return drawn[-1]

    lat = latency(iopf.replay(messy, service_time=service))
    values = np.sort(np.concatenate(drawn))
    assert lat["count"] == len(values)
    assert lat["min"] == values[0] and lat["max"] == values[-1]
    assert lat["mean"] == pytest.approx(values.mean())
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        exact = values[int(np.ceil(q * len(values))) - 1]
        assert lat[name] == pytest.approx(exact, rel=1 / 2048), name


def test_chunked_input_gives_the_same_result(messy: np.ndarray) -> None:
    whole = iopf.replay(messy, service_time=20_000)
    cuts = [1, 7, 1000, 1001, 5000, 12_345]
    chunks = (c for c in np.split(messy, cuts))   # a generator: consumed once, lazily
    parts = iopf.replay(chunks, service_time=20_000, batch_size=3000)
    assert outcome(parts) == outcome(whole)
    assert parts.batches > whole.batches


@pytest.mark.parametrize("policy", ["amd", "vtd"])
@pytest.mark.parametrize("service_time", [None, 300_000, lambda s: 40_000 * s])
def test_bounded_queue_independent_of_batch_size(policy: str, service_time: Any) -> None:
    """Answers owed between batches never cause an overflow that an
    event-by-event replay (batch_size=1) would not have."""
    faults = trace.synthetic(6_000, seed=5, lost_lpig=0.02)
    one = iopf.replay(faults, policy=policy, service_time=service_time, batch_size=1)
    big = iopf.replay(faults, policy=policy, service_time=service_time)
    assert outcome(big) == outcome(one)
    if service_time is not None:
        assert one.stats["overflowed"] > 0


def test_timeouts() -> None:
    faults = trace.synthetic(10_000, seed=2)
    policy = policies.PCIE.replace(response_timeout=5_000)
    r = iopf.replay(faults, policy=policy, service_time=lambda s: 1_500 * s)
    small = sum(v for k, v in r.group_sizes.items() if 1_500 * k < 5_000)
    assert r.response_reasons["CALLER"] == small
    assert r.response_reasons["TIMEOUT"] == r.groups - small
    assert r.response_codes["INVALID"] == r.groups - small
    assert latency(r)["max"] == 5_000 and r.stats["pending_now"] == 0

    # A guest that never answers: every group times out, at the timeout.
    silent = iopf.replay(faults, policy=policy, answer=False)
    assert silent.response_reasons["TIMEOUT"] == silent.groups
    assert silent.stats["pending_now"] == 0
    assert silent.latency_ns is None


def test_never_answered_without_timeout() -> None:
    r = iopf.replay(trace.synthetic(5_000, seed=1), answer=False)
    assert r.stats["answered"] == 0 and r.stats["pending_now"] == r.groups > 0
    assert sum(r.response_codes.values()) == 0
    assert conserved(r.stats)


def test_python_handler_with_service_time() -> None:
    """A handler answers some groups itself; the service time answers the rest."""
    faults = trace.synthetic(3_000, seed=4)
    calls = []

    def handler(group: iopf.Group) -> Response | None:
        calls.append(len(group))
        return Response.INVALID if len(group) == 1 else None

    r = iopf.replay(faults, handler=handler, service_time=9_000)
    assert len(calls) == r.groups
    ones = r.group_sizes.get(1, 0)
    assert r.response_reasons["HANDLER"] == r.response_codes["INVALID"] == ones
    assert r.response_reasons["CALLER"] == r.groups - ones
    assert latency(r)["min"] == 0 and latency(r)["max"] == 9_000
    assert "handler handler" in r.model


def test_constant_handler_code() -> None:
    r = iopf.replay(trace.synthetic(3_000, seed=4), handler=Response.FAILURE)
    assert r.response_codes["FAILURE"] == r.groups
    assert latency(r)["max"] == 0


def test_bad_record_is_named_by_its_index_in_the_trace() -> None:
    faults = trace.synthetic(5_000, seed=1)
    faults["grpid"][4_321] = 600      # > 9 bits (G8)
    with pytest.raises(ValueError, match=r"^record 4321: grpid"):
        iopf.replay(iter(np.array_split(faults, 3)), batch_size=1000)


def test_handler_errors_propagate() -> None:
    def handler(group: iopf.Group) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="^boom"):
        iopf.replay(trace.synthetic(100, seed=1), handler=handler)


@pytest.mark.parametrize("kwargs, exc", [
    ({"policy": "nope"}, ValueError),
    ({"policy": 3}, TypeError),
    ({"strategy": "heap"}, ValueError),
    ({"batch_size": 0}, ValueError),
    ({"service_time": -1}, ValueError),
    ({"service_time": 1.5}, ValueError),
    ({"service_time": 10, "answer": False}, ValueError),
    ({"handler": "x"}, TypeError),
])
def test_bad_arguments(kwargs: dict, exc: type) -> None:
    with pytest.raises(exc):
        iopf.replay(trace.synthetic(10), **kwargs)


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="FAULT_DTYPE"):
        iopf.replay(np.zeros(3))
    with pytest.raises(TypeError, match="chunk 1"):
        iopf.replay([trace.synthetic(10), [1, 2, 3]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="service_time"):
        iopf.replay(trace.synthetic(100), service_time=lambda s: np.zeros(len(s) + 1, np.int64))


def test_empty_trace() -> None:
    r = iopf.replay(np.empty(0, iopf.FAULT_DTYPE), service_time=10)
    assert r.faults == 0 and r.groups == 0 and r.latency_ns == {"count": 0}
    assert "no group answered" in str(r)
    json.dumps(r.to_dict())


def test_report_to_dict_and_str(messy: np.ndarray) -> None:
    r = iopf.replay(messy, policy=policies.LINUX, service_time=3_000)
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["policy"] == "linux" and d["strategy"] == "hash"
    assert d["faults"] == len(messy) and d["stats"] == r.stats
    assert d["group_sizes"] == {str(k): v for k, v in r.group_sizes.items()}
    assert set(d["response_codes"]) == {c.name for c in Response}
    assert set(d["response_reasons"]) == {c.name for c in Reason}
    assert set(d["latency_ns"]) == {"count", "min", "p50", "p90", "p99", "max", "mean"}
    for value in d["stats"].values():
        assert type(value) is int
    text = str(r)
    assert "policy linux" in text and "conserved" in text and "True" in text
    assert f"{r.groups:,}" in text and "3.000 us" in text
    custom = iopf.replay(messy[:100], policy=policies.PCIE.replace(queue_depth=64))
    assert custom.policy == "custom"


def test_progress_bar_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    iopf.replay(trace.synthetic(2_000, seed=1), progress=True, batch_size=500)
    out, err = capsys.readouterr()
    assert out == "" and "2.00k" in err
