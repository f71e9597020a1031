"""iopf.trace.partition: one pass to a Parquet dataset, a directory per shard."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from iopf import trace
from iopf._partition import MANIFEST, read_shard, shards_of

pytest.importorskip("pyarrow")

UNITS = {0: 0, 1: 1, 2: 2, 3: 0, 4: 1, 5: 2}


@pytest.fixture(scope="module")
def faults() -> np.ndarray:
    return trace.synthetic(20_000, seed=4, devices=6, lost_lpig=0.02, no_pasid=0.1)


def unit_of(faults: np.ndarray) -> np.ndarray:
    return np.array([UNITS[int(d)] for d in faults["dev"]])


@pytest.mark.parametrize("chunk_size", [1_000, 1 << 20])
def test_iommu_shards_hold_their_records_in_trace_order(tmp_path: Path, faults: np.ndarray,
                                                        chunk_size: int) -> None:
    shards = trace.partition(faults, tmp_path / "ds", by="iommu", units=UNITS,
                             chunk_size=chunk_size)
    assert [s.name for s in shards] == ["unit=0", "unit=1", "unit=2"]
    units = unit_of(faults)
    for unit, shard in enumerate(shards):
        got = trace.load(shard.paths[0])
        np.testing.assert_array_equal(got, faults[units == unit])
        assert shard.faults == len(got)
    manifest = json.loads((tmp_path / "ds" / MANIFEST).read_text())
    assert manifest["by"] == "iommu" and len(manifest["shards"]) == 3
    # What a worker reads back is the same.
    again = shards_of(tmp_path / "ds", "iommu")
    assert [s.name for s in again] == [s.name for s in shards]
    np.testing.assert_array_equal(np.concatenate(list(read_shard(again[1], 777))),
                                  faults[units == 1])


def test_device_shards_and_a_unit_function(tmp_path: Path, faults: np.ndarray) -> None:
    shards = trace.partition(faults, tmp_path / "dev", by="device")
    assert [s.name for s in shards] == [f"dev={d}" for d in range(6)]
    np.testing.assert_array_equal(trace.load(shards[3].paths[0]), faults[faults["dev"] == 3])
    by_fn = trace.partition(faults, tmp_path / "fn", by="iommu", units=lambda dev: dev % 2)
    assert [s.faults for s in by_fn] == [int((faults["dev"] % 2 == k).sum()) for k in (0, 1)]


def test_files_are_hosts(tmp_path: Path, faults: np.ndarray) -> None:
    trace.save(tmp_path / "web1.npy", faults[:8_000])
    trace.save(tmp_path / "web2.csv", faults[8_000:])
    shards = trace.partition(str(tmp_path / "web*"), tmp_path / "fleet", by="iommu",
                             units=UNITS, chunk_size=3_000)
    names = [s.name for s in shards]
    assert names[:3] == ["host=web1/unit=0", "host=web1/unit=1", "host=web1/unit=2"]
    assert len(names) == 6
    hosts = trace.partition([tmp_path / "web1.npy", tmp_path / "web2.csv"],
                            tmp_path / "hosts", by="host")
    assert [s.name for s in hosts] == ["host=web1", "host=web2"]
    np.testing.assert_array_equal(trace.load(hosts[1].paths[0]), faults[8_000:])


def test_refusals(tmp_path: Path, faults: np.ndarray) -> None:
    with pytest.raises(ValueError, match="by must be"):
        trace.partition(faults, tmp_path / "x", by="socket")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        trace.partition(faults, tmp_path / "full")
    with pytest.raises(ValueError, match="device 0x5 has no IOMMU unit"):
        trace.partition(faults, tmp_path / "y", units={d: 0 for d in range(5)})
    assert not (tmp_path / "y").exists()   # nothing half-written left behind
    # A unit per record is iopf.replay's; indexed by device id it would mislead.
    with pytest.raises(TypeError, match="unit per record"):
        trace.partition(faults, tmp_path / "z", units=unit_of(faults))  # type: ignore[arg-type]
    assert not (tmp_path / "z").exists()
    with pytest.raises(ValueError, match="no file matches"):
        trace.partition(str(tmp_path / "nothing*.npy"), tmp_path / "z")
    trace.partition(faults, tmp_path / "dev", by="device")
    with pytest.raises(ValueError, match="partitioned by device, not by iommu"):
        shards_of(tmp_path / "dev", "iommu")
    os.remove(tmp_path / "dev" / MANIFEST)
    with pytest.raises(ValueError, match="not a dataset"):
        shards_of(tmp_path / "dev", "device")
