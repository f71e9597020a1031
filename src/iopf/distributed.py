"""Replay sharded over a Dask cluster: ``iopf.distributed.replay``.

Each shard (an IOMMU unit, a device or a host: see ``iopf.trace.partition``)
is one task. The client sends only the shard's file paths and the replay's
options; the worker reads its files, replays them through its own queue and
returns a ``ReplayReport``; the reports are merged with
``ReplayReport.merge``, which is exact for disjoint shards, so the result
equals a single-process replay of the same shards.

Needs ``dask`` and ``distributed`` (``pip install "iopf[dask]"``). The files
must be readable at the same path on every worker (a shared file system).
"""
from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from . import policies
from ._partition import (SHARD_KEYS, DeviceUnits, Shard, read_shard, read_shard_meta,
                         shards_of)
from ._replay import ReplayReport, ServiceTime, _service
from ._replay import replay as _replay_one
from .policies import Policy
from .queue import Handler
from .types import FAULT_DTYPE, Response

__all__ = ["replay", "ShardError"]


#: Dask settings for the workers of the clusters ``replay`` starts (see
#: ``_client``); give them to your own cluster's workers too.
WORKER_CONFIG: dict[str, Any] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}


class ShardError(ValueError):
    """A shard failed: the message names the shard and its file."""


def replay(source: Any, *, policy: Policy | str = policies.PCIE, client: Any = None,
           shard_by: str = "iommu", units: DeviceUnits | None = None,
           strategy: str = "hash", handler: Handler | Response | None = None,
           service_time: ServiceTime | None = None, servers: int | None = None,
           seed: int | None = None, answer: bool = True, batch_size: int = 65536,
           workers: int | None = None, progress: bool = False, breakdown: bool = True,
           format: str | None = None) -> ReplayReport:
    """Replay ``source`` with one Dask task per shard and merge the reports.

    ``source``: a dataset directory written by ``iopf.trace.partition``
    (partitioned ``by=shard_by``), or trace files: a path, a glob or a list
    (a fleet; each file is a host). With files, ``shard_by="host"`` makes
    one shard per file; ``"iommu"`` one per IOMMU unit of each file (the
    units a ``prq_report`` trace records, or those ``units`` gives, which
    override them; a file of one unit is one shard) and ``"device"`` one per
    device, every such task reading the whole file and keeping its records
    (partition large traces first). ``format`` names the files' format
    (default: from the extension or the content, as ``iopf.trace.load``).

    ``shard_by="device"`` is refused when the queue couples devices: a
    policy with ``queue_depth`` or ``discard_on_overflow``, or a bounded
    number of ``servers`` (a unit's workqueue): a device's overflow or wait
    there depends on the other devices of its IOMMU unit.

    ``client``: a ``distributed.Client``; None starts a ``LocalCluster``
    with ``workers`` single-threaded worker processes (default: one per
    core) for this call.

    The replay's options have the names, meanings and defaults of
    ``iopf.replay``: ``policy``, ``strategy``, ``handler`` (it must pickle),
    ``service_time``, ``servers``, ``seed``, ``answer``, ``batch_size``,
    ``breakdown`` and ``units``. Each shard replays on queues of its own, as
    each IOMMU unit does in ``iopf.replay``: ``servers`` are a queue's
    workers and ``seed`` seeds each queue's draws (so shards by device draw
    other, equally distributed, service times than one queue per unit).
    ``units`` is a device id -> unit mapping or a function of the ``dev``
    array; it applies to trace files (a dataset's shards were cut by
    ``partition(..., units=)`` already, so it is refused there), and a
    unit per record, which ``iopf.replay`` also takes, is refused: the
    records are read on the workers. ``progress=True`` shows a bar of shards
    done (``iopf.replay``'s counts faults, hence its ``total``). Not here:
    ``total`` and ``unit_names`` (a shard's unit names come from its trace).

    The report's ``shards`` lists every shard's faults and times;
    ``wall_seconds`` is the elapsed time from the first task sent to the
    last report received, while ``extra["shard_seconds"]`` adds up the
    shards' own wall times (and ``extra["cluster_start_seconds"]`` is the
    time a cluster made for the call took to start).
    """
    policy = policies.resolve(policy)
    if shard_by not in SHARD_KEYS:
        raise ValueError(f"shard_by must be one of {', '.join(SHARD_KEYS)}, not {shard_by!r}")
    options: dict[str, Any] = {
        "policy": policy, "strategy": strategy, "handler": handler,
        "service_time": service_time, "servers": servers, "seed": seed, "answer": answer,
        "batch_size": batch_size, "breakdown": breakdown}
    # Bad options fail here, once, rather than in every task.
    _replay_one(np.empty(0, FAULT_DTYPE), **options)
    service = _service(service_time, servers, seed)
    if shard_by == "device" and (policy.queue_depth is not None or policy.discard_on_overflow
                                 or (service is not None and service.servers is not None)):
        raise ValueError(
            "shard_by='device' is not exact for this replay: its queue is shared by the "
            "devices of an IOMMU unit (queue_depth, discard_on_overflow or a bounded number "
            "of servers is set), so one device's overflow or wait depends on the others; "
            "shard by 'iommu' or 'host'")
    shards = shards_of(source, shard_by, units=units, format=format)
    if not shards:
        raise ValueError(f"{source}: no shard to replay")
    begin = time.perf_counter()
    with _client(client, workers) as c:
        start = time.perf_counter()
        reports = _run(c, shards, options, progress)
        wall = time.perf_counter() - start
    merged = ReplayReport.merge(*reports)
    merged.extra["shard_seconds"] = merged.wall_seconds
    if client is None:
        merged.extra["cluster_start_seconds"] = start - begin
    merged.wall_seconds = wall
    merged.faults_per_second = merged.faults / wall if wall > 0 else 0.0
    return merged


def replay_shard(shard: Shard, options: dict[str, Any]) -> ReplayReport:
    """Replay one shard in this process (what a worker runs)."""
    path = ", ".join(shard.paths)
    try:
        # A shard that holds several units (a host) replays them with a queue
        # each, as iopf.replay does: the units its trace records, or those
        # of the units= mapping, which override them.
        names: list[str] = []
        records = read_shard_meta(shard, units=names) if shard.units is None \
            else read_shard(shard)
        report = _replay_one(records, units=shard.units, unit_names=names, **options)
    except (ValueError, OSError, ImportError) as e:
        # Messages of the trace readers name the file already; replay's
        # record errors do not.
        text = str(e)
        where = "" if any(p in text for p in shard.paths) else f" ({path})"
        raise ShardError(f"shard {shard.name}{where}: {text}") from None
    report.extra["shard"] = shard.name
    return report


def _run(client: Any, shards: list[Shard], options: dict[str, Any],
         progress: bool) -> list[ReplayReport]:
    from distributed import as_completed
    from tqdm import tqdm

    # A shard whose worker dies is run again elsewhere by the scheduler (up to
    # its allowed-failures, 3 by default); an exception raised by the shard
    # itself is not retried: the same file fails the same way.
    # Keys unique to this call: a cancelled future of an earlier call with the
    # same key would cancel the new one.
    call = uuid.uuid4().hex[:12]
    futures = [client.submit(replay_shard, shard, options, key=f"iopf-{call}-{i}-{shard.name}",
                             pure=False, retries=0)
               for i, shard in enumerate(shards)]
    order = {f.key: i for i, f in enumerate(futures)}
    results: list[ReplayReport | None] = [None] * len(futures)
    try:
        with tqdm(total=len(shards), disable=not progress, unit="shard", leave=False,
                  desc="replay shards", file=sys.stderr) as bar:
            for fut in as_completed(futures):
                rep = fut.result()
                results[order[fut.key]] = rep
                bar.update(1)
                bar.set_postfix_str(f"{rep.extra['shard']}: {rep.faults:,} faults")
    finally:
        for f in futures:
            if not f.done():   # a shard failed, or the caller was interrupted
                f.cancel()
    return [r for r in results if r is not None]


@contextmanager
def _client(given: Any, workers: int | None) -> Iterator[Any]:
    """The given client, or a LocalCluster made (and closed) for one call."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as e:
        raise ImportError('iopf.distributed needs dask and distributed: '
                          'pip install "iopf[dask]"') from e
    if given is not None:
        yield given
        return
    # One single-threaded process per worker: the replay holds the GIL
    # between batches, so threads would not run shards side by side. The
    # nanny's default MALLOC_TRIM_THRESHOLD_ also fixes glibc's mmap
    # threshold, so every batch's arrays would be mapped and unmapped afresh:
    # measured 1.5 to 2 times the CPU per shard. The statistical profiler
    # takes the GIL a hundred times a second: on a busy machine each time
    # costs the replay a wait for the OS to schedule the profiler's thread
    # (measured 1.25 times the wall time with it).
    with dask.config.set(WORKER_CONFIG), \
            LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                         processes=True, dashboard_address=":0",
                         # A failed shard is reported once, as ShardError;
                         # not again by the workers' logs with a traceback.
                         silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster) as client:
        yield client
