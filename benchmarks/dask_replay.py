"""Sharded replay on Dask: 1 worker against 2 on a partitioned trace.

Run it as a script (it starts its own local clusters; it is not a pytest
benchmark because each measurement is one multi-second run):

    python benchmarks/dask_replay.py --faults 20e6 --units 4 --out /tmp/iopf-bench-ds

It writes the trace once (``--units`` hosts of synthetic faults, partitioned
by IOMMU unit into a Parquet dataset; reused when it exists), then replays
it with the VT-d policy: in this process (no Dask), and on a LocalCluster of
1 and of 2 single-threaded worker processes. For each it prints the wall
time, the sum of the shards' own times, the time in the queue, and the time
spent moving data: reading and decoding the shards' Parquet files (measured
alone, per shard) and what the client and workers exchange (the pickled task
arguments and reports). From the per-shard throughput it estimates how many
workers replay 10**10 faults in 5 minutes.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
import numpy as np

import iopf
from iopf import ReplayReport, distributed, trace
from iopf._partition import read_shard, shards_of


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--faults", type=float, default=20e6)
    p.add_argument("--units", type=int, default=4, help="shards (IOMMU units)")
    p.add_argument("--out", default="/tmp/iopf-bench-ds")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--policy", default="vtd")
    p.add_argument("--repeat", type=int, default=2, help="runs of each; the fastest counts")
    args = p.parse_args()
    n = int(args.faults)
    if not os.path.exists(os.path.join(args.out, "_shards.json")):
        make_dataset(args.out, n, args.units)
    shards = shards_of(args.out, "iommu")
    total = sum(s.faults or 0 for s in shards)
    print(f"dataset {args.out}: {total:,} faults in {len(shards)} shards "
          f"({du(args.out) / 2**20:.0f} MiB on disk)")

    t = time.perf_counter()
    read = 0
    for s in shards:
        for chunk in read_shard(s):
            read += len(chunk)
    read_s = time.perf_counter() - t
    print(f"read + decode only: {read_s:.2f} s ({read / read_s / 1e6:.2f} M faults/s, "
          "one process)")

    options = {"policy": iopf.policies.PRESETS[args.policy], "strategy": "hash",
               "handler": None, "service_time": None, "answer": True, "batch_size": 65536}
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores")
    best_local: tuple[float, float, ReplayReport] | None = None
    for _ in range(args.repeat):
        t, cpu = time.perf_counter(), time.process_time()
        local = ReplayReport.merge(*(distributed.replay_shard(s, options) for s in shards))
        run = (time.perf_counter() - t, time.process_time() - cpu, local)
        if best_local is None or run[0] < best_local[0]:
            best_local = run
    assert best_local is not None
    local_wall, local_cpu, local = best_local
    row("in-process, shard after shard", local, local_wall, local_cpu)
    print(f"  task arguments {len(pickle.dumps((shards[0], options))):,} bytes a shard, "
          f"report {len(pickle.dumps(local)):,} bytes")

    results: dict[int, float] = {}
    for w in (int(x) for x in args.workers.split(",")):
        import dask
        from distributed import Client, LocalCluster

        # As iopf.distributed starts its own clusters (distributed.WORKER_CONFIG).
        with dask.config.set(distributed.WORKER_CONFIG), \
                LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                             dashboard_address=":0") as cluster, Client(cluster) as c:
            c.run(_warm)   # workers up, imports done, before the clock starts
            best: tuple[float, float, ReplayReport] | None = None
            for _ in range(args.repeat):
                before = c.run(time.process_time)
                t = time.perf_counter()
                rep = distributed.replay(args.out, client=c, policy=args.policy)
                wall = time.perf_counter() - t
                after = c.run(time.process_time)
                cpu = sum(after[k] - before[k] for k in after)
                assert rep.stats == local.stats, "sharded replay differs from in-process"
                if best is None or wall < best[0]:
                    best = (wall, cpu, rep)
        assert best is not None
        results[w] = best[0]
        row(f"Dask, {w} worker{'s' if w > 1 else ''}", best[2], best[0], best[1])
    if 1 in results and 2 in results:
        print(f"speed-up 2 workers / 1: {results[1] / results[2]:.2f}x")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    need = 1e10 / 300
    wall_rate = float(np.mean([sh["faults"] / sh["wall_seconds"] for sh in local.shards]))
    cpu_rate = total / local_cpu
    print(f"10^10 faults in 300 s needs {need / 1e6:.1f} M faults/s. Per shard, in-process: "
          f"{wall_rate / 1e6:.2f} M faults/s of wall time -> {int(np.ceil(need / wall_rate))} "
          f"workers; {cpu_rate / 1e6:.2f} M faults per CPU second -> "
          f"{int(np.ceil(need / cpu_rate))} cores (at perfect scaling, one shard per worker "
          "at a time)")


def _warm() -> None:
    import pyarrow.parquet  # noqa: F401
    import tqdm  # noqa: F401

    import iopf.distributed  # noqa: F401


def make_dataset(out: str, n: int, units: int) -> None:
    """``units`` files of synthetic faults (hosts of one IOMMU unit each, with
    their own devices), partitioned by unit in one pass."""
    import shutil

    tmp = out + ".src"
    os.makedirs(tmp, exist_ok=True)
    files = []
    t = time.perf_counter()
    for u in range(units):
        f = os.path.join(tmp, f"u{u}.npy")
        faults = trace.synthetic(n // units, seed=u, devices=4)
        faults["dev"] += np.uint32(4 * u)    # distinct devices per unit
        trace.save(f, faults)
        files.append(f)
        del faults
    gen = time.perf_counter() - t
    t = time.perf_counter()
    shards = trace.partition(files, out, by="iommu", units={d: d // 4 for d in range(4 * units)})
    print(f"generated in {gen:.1f} s; partitioned {sum(s.faults or 0 for s in shards):,} "
          f"faults in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    shutil.rmtree(tmp)


def row(label: str, rep: ReplayReport, wall: float, cpu: float) -> None:
    shard_wall = sum(sh["wall_seconds"] for sh in rep.shards)
    engine = sum(sh["engine_seconds"] for sh in rep.shards)
    print(f"{label:<30} wall {wall:6.2f} s ({rep.faults / wall / 1e6:5.2f} M faults/s), "
          f"CPU {cpu:6.2f} s; shards {shard_wall:6.2f} s, of which queue {engine:5.2f} s, "
          f"reading and bookkeeping {shard_wall - engine:5.2f} s")


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


if __name__ == "__main__":
    main()
