"""ReplayReport.merge: reports of disjoint shards add up to the replay of the union."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iopf
from conftest import outcome
from iopf import ReplayReport, trace
from iopf._replay import _LatencyHistogram

DEVICES = 6
def service(sizes: np.ndarray) -> np.ndarray:
    # Spread over several decades, so percentiles fall in the log-linear buckets.
    return (sizes * sizes * 997) % 3_000_000 + 10


@pytest.fixture(scope="module")
def faults() -> np.ndarray:
    return trace.synthetic(30_000, seed=21, devices=DEVICES, lost_lpig=0.02, stop_markers=0.05,
                           no_pasid=0.1)


@pytest.fixture(scope="module")
def whole(faults: np.ndarray) -> ReplayReport:
    return iopf.replay(faults, policy="pcie", service_time=service)


@settings(max_examples=25)
@given(cuts=st.lists(st.integers(1, DEVICES - 1), max_size=DEVICES - 1, unique=True),
       regroup=st.booleans())
def test_merge_of_device_shards_is_the_whole_replay(faults: np.ndarray, whole: ReplayReport,
                                                   cuts: list[int], regroup: bool) -> None:
    """Split the devices at any points; without queue-wide limits each shard
    is independent, and the merged report is the single replay's."""
    bounds = [0, *sorted(cuts), DEVICES]
    parts = [iopf.replay(faults[(faults["dev"] >= lo) & (faults["dev"] < hi)], policy="pcie",
                         service_time=service)
             for lo, hi in zip(bounds, bounds[1:])]
    if regroup and len(parts) > 2:   # merging is associative
        merged = ReplayReport.merge(ReplayReport.merge(*parts[:2]), *parts[2:])
    else:
        merged = ReplayReport.merge(*parts)
    assert outcome(merged, "shards") == outcome(whole, "shards")   # the strategy too
    assert merged.latency_ns == whole.latency_ns
    assert merged.histogram == whole.histogram
    assert [b.tolist() for b in merged.latency_histogram()] == \
        [b.tolist() for b in whole.latency_histogram()]
    assert len(merged.shards) == len(parts)
    assert sum(sh["faults"] for sh in merged.shards) == len(faults)
    assert merged.wall_seconds == pytest.approx(sum(p.wall_seconds for p in parts))
    assert merged.engine_seconds == pytest.approx(sum(p.engine_seconds for p in parts))


@settings(max_examples=50)
@given(values=st.lists(st.integers(0, 2**40), min_size=1, max_size=300),
       data=st.data())
def test_histogram_merge_is_exact(values: list[int], data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(values)), max_size=4)))
    arr = np.array(values, np.uint64)
    one = _LatencyHistogram()
    one.add(arr)
    merged = _LatencyHistogram()
    for lo, hi in zip([0, *cuts], [*cuts, len(values)]):
        part = _LatencyHistogram()
        part.add(arr[lo:hi])
        merged.merge(part)
    assert merged == one
    assert merged.summary() == one.summary()


def test_breakdown_adds_up(whole: ReplayReport, faults: np.ndarray) -> None:
    assert set(whole.devices) == set(np.unique(faults["dev"]).tolist())
    assert sum(r["faults"] for r in whole.devices.values()) == whole.faults
    assert sum(r["faults"] for r in whole.pasids.values()) == whole.faults
    assert sum(r["groups"] for r in whole.devices.values()) == whole.groups
    for name, n in whole.response_codes.items():
        assert sum(r["codes"][name] for r in whole.devices.values()) == n
        assert sum(r["codes"][name] for r in whole.pasids.values()) == n
    dev0 = faults[faults["dev"] == 0]
    assert whole.devices[0]["faults"] == len(dev0)
    assert "by device" in str(whole) and "by PASID" in str(whole)
    d = whole.to_dict()
    assert d["devices"]["0"]["faults"] == len(dev0)


def test_merge_refuses_different_policies(faults: np.ndarray) -> None:
    a = iopf.replay(faults[:1000], policy="pcie")
    b = iopf.replay(faults[1000:2000], policy="linux")
    with pytest.raises(ValueError, match="policy"):
        ReplayReport.merge(a, b)
    c = iopf.replay(faults[1000:2000], policy="pcie", service_time=100)
    with pytest.raises(ValueError):
        ReplayReport.merge(a, c)
    with pytest.raises(ValueError, match="at least one"):
        ReplayReport.merge()


def test_merged_report_prints_its_shards(faults: np.ndarray) -> None:
    parts = []
    for d in range(2):
        r = iopf.replay(faults[faults["dev"] == d])
        r.extra["shard"] = f"dev={d}"
        parts.append(r)
    merged = ReplayReport.merge(*parts)
    assert [sh["shard"] for sh in merged.shards] == ["dev=0", "dev=1"]
    assert "shard" not in merged.extra   # the shards disagree on it
    text = str(merged)
    assert "shards (2;" in text and "dev=1" in text
    assert merged.latency_ns is None and merged.histogram is None
