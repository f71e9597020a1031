"""A trace from several IOMMU units replays with one queue per unit: through
``iopf.replay``, ``iopf replay`` and the sharded replay by IOMMU unit."""
from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import iopf
from conftest import SHARDING, outcome, same
from iopf import FAULT_DTYPE, ReplayReport, trace
from iopf.cli import main

UNITS = ["dmar0", "dmar1"]
def per_unit(faults: np.ndarray, unit: np.ndarray, **kw: Any) -> ReplayReport:
    """The reference: each unit's records replayed alone, the reports merged."""
    return ReplayReport.merge(*(iopf.replay(faults[unit == u], **kw)
                                for u in np.unique(unit)))


def two_units_same_rid() -> tuple[np.ndarray, np.ndarray]:
    """Device 0x10 (0000:00:02.0) behind dmar0 and dmar1, same PASID and
    index: dmar0 sends a first page, dmar1 a last page."""
    faults = np.zeros(2, FAULT_DTYPE)
    faults["time"] = [1_000, 2_000]
    faults["dev"] = 0x10
    faults["pasid"] = 1
    faults["grpid"] = 5
    pasid = iopf.Flag.PASID_VALID | iopf.Flag.NEEDS_PASID
    faults["flags"] = [pasid, pasid | iopf.Flag.LAST_PAGE]
    faults["perm"] = iopf.Perm.READ
    faults["addr"] = [0x1000, 0x2000]
    meta = np.zeros(2, trace.META_DTYPE)
    meta["unit"] = [0, 1]
    meta["seq"] = [1, 1]
    return faults, meta


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prq_report capture from two units reporting the same devices:
    each unit's devices 0-2 are the devices 0-5 of a synthetic trace."""
    faults = trace.synthetic(30_000, seed=8, devices=6, lost_lpig=0.02, stop_markers=0.05)
    meta = np.zeros(len(faults), trace.META_DTYPE)
    meta["unit"] = faults["dev"] % 2
    meta["seq"] = np.arange(len(faults))
    faults["dev"] //= 2
    path = tmp_path_factory.mktemp("units") / "capture.trace"
    trace.save(path, faults, meta=meta, units=UNITS)
    return path


def test_same_rid_on_two_units_never_groups(strategy: str, tmp_path: Path) -> None:
    faults, meta = two_units_same_rid()
    path = tmp_path / "two.trace"
    trace.save(path, faults, meta=meta, units=UNITS)
    assert "dmar1/0000:00:02.0" in path.read_text()
    stats = trace.LoadStats()
    streamed = iopf.replay(trace.iter_chunks(path, meta=True, stats=stats), strategy=strategy,
                           unit_names=stats.units)
    loaded, m = trace.load(path, meta=True)
    by_array = iopf.replay(loaded, units=m["unit"], strategy=strategy)
    for r in (streamed, by_array):
        # dmar1's last page is a group of one; dmar0's first page waits alone.
        assert r.group_sizes == {1: 1}
        assert r.stats["partial_now"] == 1 and r.stats["grouped"] == 1
    assert [sh["shard"] for sh in streamed.shards] == ["unit=dmar0", "unit=dmar1"]
    assert [sh["shard"] for sh in by_array.shards] == ["unit=0", "unit=1"]
    # Without the units, one queue joins them.
    assert iopf.replay(loaded, strategy=strategy).group_sizes == {2: 1}


def test_replay_by_unit_is_the_merge_of_the_units(capture: Path) -> None:
    faults, meta = trace.load(capture, meta=True)
    unit = meta["unit"].astype(np.int64)
    # Slow answers: VT-d's queue of each unit overflows, so sharing one would differ.
    kw: dict[str, Any] = {"policy": "vtd", "service_time": 3_000_000}
    ref = per_unit(faults, unit, **kw)
    assert ref.stats["overflowed"] > 0
    got = iopf.replay(trace.iter_chunks(capture, meta=True, chunk_size=7_000),
                      batch_size=1_000, **kw)
    same(got, ref)
    same(iopf.replay(faults, units=unit, **kw), ref)
    assert outcome(iopf.replay(faults, **kw), *SHARDING) != outcome(ref, *SHARDING)
    assert sum(sh["faults"] for sh in got.shards) == len(faults)


def test_device_mapping_gives_the_units(strategy: str) -> None:
    faults = trace.synthetic(8_000, seed=5, devices=4)
    mapping = {0: 0, 1: 1, 2: 0, 3: 1}
    kw: dict[str, Any] = {"policy": "vtd", "service_time": 2_000_000, "strategy": strategy}
    ref = per_unit(faults, faults["dev"].astype(np.int64) % 2, **kw)
    same(iopf.replay(faults, units=mapping, **kw), ref)
    same(iopf.replay(iter(np.array_split(faults, 3)),
                     units=lambda dev: np.asarray(dev) % 2, batch_size=500, **kw), ref)


def test_many_units_and_strided_input() -> None:
    """More units than a batch is split by passes (sorted then), and a
    strided array: still each unit's records alone, in trace order."""
    faults = trace.synthetic(12_000, seed=2, devices=12)[::2]
    unit = faults["dev"].astype(np.int64) * 7 - 20     # twelve units, some negative
    kw: dict[str, Any] = {"policy": "vtd", "service_time": 1_000_000}
    got = iopf.replay(faults, units=unit, batch_size=700, **kw)
    same(got, per_unit(faults, unit, **kw))
    assert len(got.shards) == 12
    assert "unit=-20" in [sh["shard"] for sh in got.shards]


def test_units_override_the_trace(capture: Path) -> None:
    faults = trace.load(capture)
    one = iopf.replay(trace.iter_chunks(capture, meta=True), units={d: 0 for d in range(3)})
    same(one, iopf.replay(faults))
    assert one.shards == []


def test_bad_units(capture: Path) -> None:
    faults, meta = trace.load(capture, meta=True)
    with pytest.raises(ValueError, match="units gives 10 units for 30,000 records"):
        iopf.replay(faults, units=meta["unit"][:10])
    with pytest.raises(ValueError, match="units gives 30,000 units for 29,999 records"):
        iopf.replay(iter([faults[:-1]]), units=meta["unit"])
    with pytest.raises(TypeError, match="units must be an integer array"):
        iopf.replay(faults, units=np.zeros(len(faults)))
    with pytest.raises(ValueError, match="device 0x2 has no IOMMU unit"):
        iopf.replay(faults, units={0: 0, 1: 1})
    # A bad record is named by its place in the trace, not in its unit's batch.
    faults["grpid"][12_345] = 600
    with pytest.raises(ValueError, match=r"^record 12345: grpid"):
        iopf.replay(faults, units=meta["unit"], batch_size=4_000)


def run_cli(*args: Any) -> dict[str, Any]:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main([str(a) for a in args]) == 0
    report: dict[str, Any] = json.loads(out.getvalue())
    return report


def test_cli_replays_one_queue_per_unit(capture: Path) -> None:
    got = run_cli("replay", capture, "--policy", "vtd", "--service-time", "3000000",
                  "--json", "-", "--no-progress")
    stats = trace.LoadStats()
    ref = iopf.replay(trace.iter_chunks(capture, meta=True, stats=stats), policy="vtd",
                      service_time=3_000_000, unit_names=stats.units)
    # Units in the order the trace first names them (its first record is dmar1's).
    assert [sh["shard"] for sh in got["shards"]] == ["unit=dmar1", "unit=dmar0"]
    assert outcome(got, *SHARDING) == outcome(ref, *SHARDING)
    assert got["stats"]["overflowed"] > 0


# -- sharded by IOMMU unit -----------------------------------------------------------------

@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    pytest.importorskip("pyarrow")
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        yield c


def test_partition_by_iommu_uses_the_recorded_units(capture: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    faults, meta = trace.load(capture, meta=True)
    shards = trace.partition(capture, tmp_path / "ds", by="iommu", chunk_size=4_000)
    assert [s.name for s in shards] == ["unit=dmar1", "unit=dmar0"]
    for s, u in zip(shards, (0, 1)):
        assert os.path.isfile(tmp_path / "ds" / s.name / "part-0.parquet")
        assert (trace.load(s.paths[0]) == faults[meta["unit"] == u]).all()
    # A mapping still overrides: every device on one unit.
    one = trace.partition(capture, tmp_path / "one", by="iommu", units={0: 0, 1: 0, 2: 0})
    assert [(s.name, s.faults) for s in one] == [("unit=0", len(faults))]


def test_distributed_by_iommu_equals_the_single_replay(client: Any, capture: Path,
                                                      tmp_path: Path) -> None:
    from iopf import distributed as dist

    kw: dict[str, Any] = {"policy": "vtd", "service_time": 3_000_000}
    ref = iopf.replay(trace.iter_chunks(capture, meta=True), **kw)
    assert len(ref.shards) == 2
    raw = dist.replay(capture, client=client, shard_by="iommu", **kw)
    same(raw, ref)
    assert sorted(sh["shard"] for sh in raw.shards) == ["unit=dmar0", "unit=dmar1"]
    trace.partition(capture, tmp_path / "ds", by="iommu")
    same(dist.replay(tmp_path / "ds", client=client, **kw), ref)
    # A host's task still gives each of its units a queue.
    host = dist.replay(capture, client=client, shard_by="host", **kw)
    same(host, ref)
    assert sorted(sh["shard"] for sh in host.shards) == ["unit=dmar0", "unit=dmar1"]


def test_distributed_by_device_keeps_the_units_apart(client: Any, capture: Path,
                                                     tmp_path: Path) -> None:
    """The same device number on two units is two devices: six shards, not three."""
    from iopf import distributed as dist

    ref = iopf.replay(trace.iter_chunks(capture, meta=True), policy="pcie", service_time=5_000)
    raw = dist.replay(capture, client=client, shard_by="device", policy="pcie",
                      service_time=5_000)
    same(raw, ref)
    shards = trace.partition(capture, tmp_path / "ds", by="device")
    assert sorted(s.name for s in shards) == [f"unit=dmar{u}/dev={d}"
                                              for u in (0, 1) for d in range(3)]
    got = dist.replay(tmp_path / "ds", client=client, shard_by="device", policy="pcie",
                      service_time=5_000)
    same(got, ref)
    assert len(got.shards) == 6
