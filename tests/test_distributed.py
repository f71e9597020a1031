"""iopf.distributed.replay on a two-worker LocalCluster equals the single-process replay."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import iopf
from conftest import outcome, same
from iopf import ReplayReport, Response, trace

pytest.importorskip("pyarrow")
distributed = pytest.importorskip("distributed")
from iopf import distributed as dist  # noqa: E402  (after the skip: needs dask)
from iopf.cli import main  # noqa: E402

# Six devices behind three IOMMU units, two each (a device sits behind one unit).
UNITS = {0: 0, 1: 1, 2: 2, 3: 0, 4: 1, 5: 2}
def service(sizes: np.ndarray) -> np.ndarray:
    return (sizes * sizes * 7919) % 900_000 + 100


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def faults() -> np.ndarray:
    return trace.synthetic(40_000, seed=15, devices=6, lost_lpig=0.02, stop_markers=0.05,
                           no_pasid=0.1)


def unit_of(faults: np.ndarray) -> np.ndarray:
    return np.array([UNITS[int(d)] for d in faults["dev"]])


def per_unit(faults: np.ndarray, **kw: Any) -> ReplayReport:
    """The single-process replay of a multi-unit trace: one queue per unit."""
    units = unit_of(faults)
    return ReplayReport.merge(*(iopf.replay(faults[units == u], **kw) for u in range(3)))


def test_vtd_sharded_by_iommu(client: Any, faults: np.ndarray, tmp_path: Path) -> None:
    trace.partition(faults, tmp_path / "ds", by="iommu", units=UNITS, chunk_size=5_000)
    # Slow answers: VT-d's 2,048-entry queue overflows, so the units' queues matter.
    kw: dict[str, Any] = {"policy": "vtd", "service_time": 4_000_000}
    got = dist.replay(tmp_path / "ds", client=client, **kw)
    ref = per_unit(faults, **kw)
    assert ref.stats["overflowed"] > 0
    same(got, ref)
    assert sorted(sh["shard"] for sh in got.shards) == ["unit=0", "unit=1", "unit=2"]
    assert got.extra["shard_seconds"] == pytest.approx(sum(sh["wall_seconds"]
                                                           for sh in got.shards))


def test_service_options_are_those_of_iopf_replay(client: Any, faults: np.ndarray,
                                                 tmp_path: Path) -> None:
    """servers, seed and breakdown mean what they mean to iopf.replay: per queue."""
    trace.partition(faults, tmp_path / "ds", by="iommu", units=UNITS)
    kw: dict[str, Any] = {"policy": "vtd", "service_time": "exp:50000", "servers": 2,
                          "seed": 7, "breakdown": False}
    got = dist.replay(tmp_path / "ds", client=client, **kw)
    ref = per_unit(faults, **kw)
    same(got, ref)
    assert got.service is not None and got.service["servers"] == 6   # two per unit
    assert got.devices == {}
    assert outcome(per_unit(faults, **{**kw, "seed": 8})) != outcome(ref)   # the seed counts


def test_pcie_sharded_by_device(client: Any, faults: np.ndarray, tmp_path: Path) -> None:
    """Without queue-wide limits, per-device queues give what one queue gives."""
    trace.partition(faults, tmp_path / "ds", by="device")
    got = dist.replay(tmp_path / "ds", client=client, shard_by="device", policy="pcie",
                      service_time=service)
    same(got, iopf.replay(faults, policy="pcie", service_time=service))
    assert len(got.shards) == 6
    # Again on the same client: the first call's tasks do not get in the way.
    same(dist.replay(tmp_path / "ds", client=client, shard_by="device", policy="pcie",
                     service_time=service), got)


def test_fleet_of_files(client: Any, faults: np.ndarray, tmp_path: Path) -> None:
    trace.save(tmp_path / "host1.npy", faults[:15_000])
    trace.save(tmp_path / "host2.csv", faults[15_000:])
    kw: dict[str, Any] = {"policy": "linux", "service_time": 30_000}
    got = dist.replay(str(tmp_path / "host*"), client=client, shard_by="host", progress=True,
                      **kw)
    same(got, ReplayReport.merge(iopf.replay(faults[:15_000], **kw),
                                 iopf.replay(faults[15_000:], **kw)))
    # Units of raw files: each task reads its host's file and keeps one unit.
    by_unit = dist.replay([tmp_path / "host1.npy"], client=client, units=UNITS, policy="vtd")
    same(by_unit, per_unit(faults[:15_000], policy="vtd"))
    assert len(by_unit.shards) == 3
    # A host's task gives each unit of the mapping a queue, as iopf.replay does.
    host = dist.replay([tmp_path / "host1.npy"], client=client, shard_by="host", units=UNITS,
                       policy="vtd")
    same(host, by_unit)
    assert sorted(sh["shard"] for sh in host.shards) == ["unit=0", "unit=1", "unit=2"]
    # Or a function of the dev array, as iopf.replay and partition take (UNITS is dev % 3).
    by_fn = dist.replay([tmp_path / "host1.npy"], client=client, units=lambda dev: dev % 3,
                        policy="vtd")
    same(by_fn, by_unit)


def test_device_shards_refused_when_the_queue_couples_devices(faults: np.ndarray,
                                                              tmp_path: Path) -> None:
    for policy in ("vtd", "amd", iopf.policies.PCIE.replace(discard_on_overflow=True)):
        with pytest.raises(ValueError, match="shard_by='device' is not exact"):
            dist.replay(tmp_path, policy=policy, shard_by="device")
    # A unit's bounded workers are shared by its devices too.
    for service_kw in ({"service_time": 1_000, "servers": 2},
                       {"service_time": iopf.Service(1_000, servers=2)}):
        with pytest.raises(ValueError, match="shard_by='device' is not exact"):
            dist.replay(tmp_path, policy="pcie", shard_by="device", **service_kw)
    # units= cuts trace files; a dataset was cut by partition already.
    trace.partition(faults[:1_000], tmp_path / "ds", by="iommu", units=UNITS)
    with pytest.raises(ValueError, match="applies to trace files"):
        dist.replay(tmp_path / "ds", policy="vtd", units=UNITS)
    with pytest.raises(ValueError, match="applies to trace files"):
        dist.replay(tmp_path / "ds", policy="vtd", format="csv")
    # Bad options and in-memory arrays fail at the call, before any cluster.
    with pytest.raises(ValueError, match="batch_size"):
        dist.replay(tmp_path, policy="vtd", batch_size=0)
    with pytest.raises(TypeError, match="iopf.trace.partition first"):
        dist.replay(faults, policy="vtd")
    # The policy is checked as iopf.replay checks it (one rule, policies.resolve).
    for bad, error in ((3, TypeError), ("nope", ValueError)):
        with pytest.raises(error, match="policy"):
            dist.replay(tmp_path, policy=bad)  # type: ignore[arg-type]
        with pytest.raises(error, match="policy"):
            iopf.replay(faults[:10], policy=bad)  # type: ignore[arg-type]


def test_a_bad_shard_fails_the_replay_naming_its_file(client: Any, faults: np.ndarray,
                                                      tmp_path: Path) -> None:
    shards = trace.partition(faults, tmp_path / "ds", by="iommu", units=UNITS)
    bad = shards[1].paths[0]
    with open(bad, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 64)
    with pytest.raises(dist.ShardError, match="unit=1") as err:
        dist.replay(tmp_path / "ds", client=client, policy="vtd")
    assert bad in str(err.value)


def test_cli_on_an_existing_cluster(client: Any, faults: np.ndarray, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    trace.partition(faults, tmp_path / "ds", by="iommu", units=UNITS)
    out = tmp_path / "r.json"
    assert main(["replay", str(tmp_path / "ds"), "--scheduler", client.scheduler.address,
                 "--policy", "vtd", "--json", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "shards (3;" in text and "by device (6)" in text
    import json
    d = json.loads(out.read_text())
    assert d["stats"] == per_unit(faults, policy="vtd").stats
    # The service options reach the shards as they reach iopf.replay; --plot draws.
    plot = tmp_path / "latency.png"
    assert main(["replay", str(tmp_path / "ds"), "--scheduler", client.scheduler.address,
                 "--policy", "vtd", "--service-time", "exp:50000", "--servers", "2",
                 "--service-seed", "7", "--json", str(out), "--no-progress",
                 "--plot", str(plot)]) == 0
    assert f"wrote {plot}" in capsys.readouterr().out and plot.stat().st_size > 0
    d = json.loads(out.read_text())
    ref = per_unit(faults, policy="vtd", service_time="exp:50000", servers=2, seed=7)
    assert d["stats"] == ref.stats and d["latency_ns"] == ref.to_dict()["latency_ns"]
    assert main(["replay", str(tmp_path / "ds"), "--scheduler", client.scheduler.address,
                 "--servers", "2"]) == 2
    assert "--servers needs --service-time" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "ds"), "--scheduler", client.scheduler.address,
                 "--shard-by", "device"]) == 2
    assert "partitioned by iommu" in capsys.readouterr().err


def test_a_worker_killed_mid_shard_still_gives_the_exact_result(faults: np.ndarray,
                                                                tmp_path: Path) -> None:
    """The first attempt at a shard kills its worker process after some groups;
    the nanny restarts it, the scheduler runs the shard again, and the result
    is exact."""
    trace.partition(faults[:20_000], tmp_path / "ds", by="iommu", units=UNITS)
    marker = str(tmp_path / "killed")
    calls = [0]

    def answer(group: iopf.Group) -> Response:
        calls[0] += 1
        if calls[0] == 300 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)   # the worker dies in the middle of its shard
        return Response.SUCCESS

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        got = dist.replay(tmp_path / "ds", client=c, policy="vtd", handler=answer)
    assert os.path.exists(marker)   # it did die once (and only then is answer safe here)
    same(got, per_unit(faults[:20_000], policy="vtd", handler=answer))
