"""Replay a fault trace through a queue and summarise what happened.

The public names are ``iopf.replay`` and ``iopf.ReplayReport``; this module is
underscored only because ``iopf.replay`` is the function.

>>> import iopf
>>> r = iopf.replay(iopf.trace.synthetic(10_000, seed=3), service_time=2_000)
>>> r.stats["faults_reported"], r.stats["pending_now"], r.latency_ns["p99"]
(10000, 0, 2000)
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from . import policies
from ._partition import Units, _unit_label, _unit_of
from .policies import Policy
from .queue import Group, Handler, Queue
from .service import Service
from .types import FAULT_DTYPE, Reason, Response

__all__ = ["ReplayReport", "replay"]

#: A service time: ns, a distribution (``"exp:2000"``, ``"lognormal:20000,0.5"``,
#: ``"const:20000"``), samples in ns to draw from, a :class:`iopf.Service`, or a
#: function of the group sizes (an int64 array) returning each group's ns.
ServiceTime = Union[int, str, np.ndarray, Service, Callable[[np.ndarray], Any]]

_END_OF_TIME = 2**64 - 1
_RECORD_ERROR = re.compile(r"^record (\d+): (.*)$", re.DOTALL)


@dataclass
class ReplayReport:
    """What a replay did: the conservation counters and the distributions.

    ``stats`` holds the queue's counters at the end (``Queue.stats``);
    ``group_sizes`` maps a group size to how many groups had it;
    ``response_codes`` and ``response_reasons`` count every response sent
    (groups, and requests answered at arrival: overflow, no handler);
    ``latency_ns`` (``min``, ``p50``, ``p90``, ``p99``, ``max``, ``mean``,
    ``count``) is the time from a group's LPIG to its response, over the
    answered groups, or None when the replay does not model time (no
    ``service_time`` and no ``handler``). Percentiles come from a log-linear
    histogram: exact below 4096 ns, within 0.05% above, and clamped to the
    exact min and max (so a constant latency is reported exactly).
    ``wall_seconds`` is the whole replay, reading lazy input included;
    ``engine_seconds`` the part spent in the queue's calls.

    ``devices`` and ``pasids`` break the replay down by device and by PASID:
    each maps an id to ``{"faults": n, "groups": n, "codes": {name: n}}``
    (faults reported, groups completed, by the LPIG's id, and responses sent).
    ``shards`` is empty for a single replay; a merged report lists there each
    shard's faults, groups, wall and engine seconds (see ``merge``).
    ``service`` describes the workers of a service model (``servers``,
    ``served``, ``utilization``, ``wait_mean_ns``, ``wait_max_ns``: the time
    groups waited for a worker), or is None; merged reports add the workers
    and the groups served, average the waits over the groups and the
    utilization over the workers.
    """

    policy: str
    strategy: str
    model: str
    stats: dict[str, int]
    groups: int
    group_sizes: dict[int, int]
    response_codes: dict[str, int]
    response_reasons: dict[str, int]
    latency_ns: dict[str, float] | None
    batches: int
    wall_seconds: float
    engine_seconds: float
    faults_per_second: float
    extra: dict[str, Any] = field(default_factory=dict)
    devices: dict[int, dict[str, Any]] = field(default_factory=dict)
    pasids: dict[int, dict[str, Any]] = field(default_factory=dict)
    shards: list[dict[str, Any]] = field(default_factory=list)
    #: The latency histogram behind ``latency_ns`` (None when not modelled):
    #: kept so that reports merge exactly.
    histogram: _LatencyHistogram | None = field(default=None, repr=False)
    service: dict[str, Any] | None = None

    @property
    def faults(self) -> int:
        return self.stats["faults_reported"]

    def to_dict(self) -> dict[str, Any]:
        """Plain ints, floats and strings, ready for ``json.dumps`` (group sizes
        become string keys, as JSON would make them)."""
        return {
            "policy": self.policy, "strategy": self.strategy, "model": self.model,
            "faults": int(self.faults), "groups": int(self.groups),
            "stats": {k: int(v) for k, v in self.stats.items()},
            "group_sizes": {str(k): int(v) for k, v in sorted(self.group_sizes.items())},
            "response_codes": {k: int(v) for k, v in self.response_codes.items()},
            "response_reasons": {k: int(v) for k, v in self.response_reasons.items()},
            "latency_ns": (None if self.latency_ns is None else
                           {k: (int(v) if k != "mean" else float(v))
                            for k, v in self.latency_ns.items()}),
            "batches": int(self.batches),
            "wall_seconds": float(self.wall_seconds),
            "engine_seconds": float(self.engine_seconds),
            "faults_per_second": float(self.faults_per_second),
            "devices": _breakdown_dict(self.devices),
            "pasids": _breakdown_dict(self.pasids),
            **({"shards": [dict(sh) for sh in self.shards]} if self.shards else {}),
            **({} if self.service is None else {"service": dict(self.service)}),
            **{k: v for k, v in self.extra.items()},
        }

    def latency_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """The latency distribution: the lower bound (ns) of each non-empty
        bucket and how many groups fell in it (empty arrays when latency is
        not modelled). Buckets are one ns wide below 4096 ns, then 1/2048 of
        the value: this is what merges, and what the percentiles are read
        from."""
        if self.histogram is None:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return self.histogram.buckets()

    @classmethod
    def merge(cls, *reports: ReplayReport) -> ReplayReport:
        """One report for the union of disjoint shards (separate queues).

        Counters, group sizes, response codes and reasons, the per-device and
        per-PASID breakdowns add; latency histograms merge bucket by bucket,
        so the percentiles are those a single replay of the union would
        report. ``wall_seconds``, ``engine_seconds`` and ``batches`` are the
        sums (the work done); ``shards`` keeps each shard's own (a report
        that is itself merged contributes its shards). ``extra`` keeps the
        entries on which every report agrees. The reports must share policy
        and handler model.
        """
        if not reports:
            raise ValueError("merge needs at least one report")
        first = reports[0]
        for r in reports[1:]:
            for what in ("policy", "model"):
                if getattr(r, what) != getattr(first, what):
                    raise ValueError(f"cannot merge reports of different {what}: "
                                     f"{getattr(first, what)!r} and {getattr(r, what)!r}")
        timed = [r.latency_ns is not None for r in reports]
        if any(timed) and not all(timed):
            raise ValueError("cannot merge a report that models latency with one that does not")
        stats = _add_counts([r.stats for r in reports])
        hist = None
        if all(timed):
            hist = _LatencyHistogram()
            for r in reports:
                if r.histogram is None:
                    raise ValueError("a report without its latency histogram cannot be "
                                     "merged exactly")
                hist.merge(r.histogram)
        shards: list[dict[str, Any]] = []
        for i, r in enumerate(reports):
            shards += r.shards or [r._shard_entry(i)]
        wall = sum(r.wall_seconds for r in reports)
        extra = {k: v for k, v in first.extra.items()
                 if all(k in r.extra and r.extra[k] == v for r in reports[1:])}
        strategies = dict.fromkeys(r.strategy for r in reports)
        return cls(
            policy=first.policy,
            strategy=",".join(strategies),
            model=first.model,
            stats=stats,
            groups=sum(r.groups for r in reports),
            group_sizes=dict(sorted(_add_counts([r.group_sizes for r in reports]).items())),
            response_codes=_add_counts([r.response_codes for r in reports]),
            response_reasons=_add_counts([r.response_reasons for r in reports]),
            latency_ns=None if hist is None else hist.summary(),
            batches=sum(r.batches for r in reports),
            wall_seconds=wall,
            engine_seconds=sum(r.engine_seconds for r in reports),
            faults_per_second=stats["faults_reported"] / wall if wall > 0 else 0.0,
            extra=extra,
            devices=_add_breakdowns([r.devices for r in reports]),
            pasids=_add_breakdowns([r.pasids for r in reports]),
            shards=shards,
            histogram=hist,
            service=_merge_service([r.service for r in reports]),
        )

    def _shard_entry(self, index: int) -> dict[str, Any]:
        return {"shard": str(self.extra.get("shard", index)),
                "faults": int(self.faults), "groups": int(self.groups),
                "batches": int(self.batches), "wall_seconds": float(self.wall_seconds),
                "engine_seconds": float(self.engine_seconds)}

    def _repr_html_(self) -> str:
        from ._display import report_html   # notebooks only
        return report_html(self)

    def __str__(self) -> str:
        s = self.stats
        lines = [
            f"iopf replay: {s['faults_reported']:,} faults, policy {self.policy}, "
            f"strategy {self.strategy}, {self.model}",
            f"  {self.wall_seconds:.3f} s wall ({_rate(self.faults_per_second)} faults/s), "
            f"{self.engine_seconds:.3f} s in the queue, {self.batches:,} batches",
            "",
            "counters (conservation: no fault or group lost)",
        ]
        width = max(len(k) for k in s)
        lines += [f"  {k:<{width}}  {v:>14,}" for k, v in s.items()]
        lines.append(f"  {'conserved':<{width}}  {str(_conserved(s)):>14}")
        lines += ["", f"group sizes ({self.groups:,} groups)"]
        lines += [f"  {label:>6}  {n:>14,}  {_pct(n, self.groups)}"
                  for label, n in _size_rows(self.group_sizes)]
        total = sum(self.response_codes.values())
        lines += ["", f"responses ({total:,})"]
        lines += [f"  code   {k:<13} {v:>14,}  {_pct(v, total)}"
                  for k, v in self.response_codes.items() if v]
        lines += [f"  reason {k:<13} {v:>14,}  {_pct(v, total)}"
                  for k, v in self.response_reasons.items() if v]
        lines.append("")
        if self.latency_ns is None or not self.latency_ns.get("count"):
            lines.append("latency: not modelled (give a service time or a handler)"
                         if self.latency_ns is None else "latency: no group answered")
        else:
            lat = self.latency_ns
            lines.append(f"latency, LPIG to response ({lat['count']:,} groups)")
            lines += [f"  {k:<5} {_ns(lat[k]):>14}" for k in ("min", "p50", "p90", "p99", "max",
                                                            "mean")]
        lines += _breakdown_lines("device", self.devices)
        lines += _breakdown_lines("PASID", self.pasids)
        lines += _shard_lines(self.shards)
        if self.service is not None:
            sv = self.service
            workers = "unbounded" if not sv["servers"] else f"{sv['servers']:,}"
            lines += ["", f"service ({workers} workers, {sv['served']:,} groups served)",
                      f"  {'utilization':<13} {100 * sv['utilization']:>13.1f}%",
                      f"  {'wait mean':<13} {_ns(sv['wait_mean_ns']):>14}",
                      f"  {'wait max':<13} {_ns(sv['wait_max_ns']):>14}"]
        for k, v in self.extra.items():
            lines.append(f"{k}: {v}")
        return "\n".join(lines)


def replay(faults: np.ndarray | Iterable[np.ndarray | tuple[np.ndarray, np.ndarray]], *,
           policy: Policy | str = policies.PCIE, strategy: str = "hash",
           handler: Handler | Response | None = None,
           service_time: ServiceTime | None = None, servers: int | None = None,
           seed: int | None = None, answer: bool = True, batch_size: int = 65536,
           progress: bool = False, total: int | None = None,
           breakdown: bool = True, units: Units | None = None,
           unit_names: Sequence[str] | None = None) -> ReplayReport:
    """Run a trace through a fresh ``Queue`` (one per IOMMU unit) in batches
    and report on it.

    ``faults`` is a ``FAULT_DTYPE`` array or an iterable of them (such as
    ``trace.iter_chunks(path)``), consumed lazily so memory stays bounded by
    the chunk and batch sizes; or an iterable of ``(faults, meta)`` pairs,
    as ``trace.iter_chunks(path, meta=True)`` yields, whose ``meta["unit"]``
    gives each record's IOMMU unit. ``policy`` is a ``Policy`` or a preset
    name.

    IOMMU units: the kernel has one page request queue per IOMMU unit
    (``iopf_queue_alloc`` per ``dmar`` unit), so a trace from several units
    is replayed with one queue per unit. Each unit's records go through a
    queue of their own (its own ``queue_depth``, partial groups, timeouts
    and, with ``servers``, its own workers), and the report is
    ``ReplayReport.merge`` of the units' reports: exactly what replaying
    each unit's records alone and merging gives, with one entry per unit in
    ``shards`` (named ``unit=dmar1``, or ``unit=K`` without a name). The
    unit of a record comes from ``units`` when given: an integer array, one
    unit per record of the whole trace (such as ``meta["unit"]`` of
    ``trace.load(path, meta=True)``), or a device id -> unit mapping (a
    ``dict``, or a function of the ``dev`` array; a device sits behind one
    unit); else from the ``(faults, meta)`` pairs. ``unit_names`` names the
    units by number for the report (``LoadStats.units``; it is read when
    the report is made, so the stats of a streaming load may be passed).
    Without unit information, or when every record is on one unit, one
    queue replays the whole trace and ``shards`` stays empty.

    How groups are answered (the handler model):

    - ``service_time`` (see :data:`ServiceTime`; a distribution is drawn
      per group, each queue's draws seeded by ``seed``, None meaning 0; a
      ``Service`` carries its own ``servers`` and ``seed``, so giving them
      too is an error, as is giving either without ``service_time``): each
      group is queued at its LPIG time for one of ``servers`` workers
      (None: every group has its own, as on an unbound workqueue), served
      for its service time and answered SUCCESS when that ends, unless a
      timeout (``policy.response_timeout``) came first (the late answer is
      then stale). With bounded workers latency is queueing delay plus
      service time. A function of the group sizes is called once per group,
      with an array of one size.
    - ``handler``: the queue's ``default_handler``. A callable is called once
      per group (the slow path): a code it returns answers the group at
      once, a group it leaves pending is answered after ``service_time`` if
      one is given. A ``Response`` code answers every group with it, in C.
    - neither: every group is answered SUCCESS as it forms, in C (latency is
      then not reported).
    - ``answer=False``: the replay never answers (a guest that does not
      respond); with a ``response_timeout`` policy the groups time out.

    The replay models a handler attached to every (device, PASID), so a
    ``require_handler`` policy (Linux, VT-d) never rejects a request for
    lack of one; and a trace comes from devices that had IOPF enabled, so
    under a ``require_device`` policy (Linux, VT-d) each device is added to
    the queue when it first appears (the report's ``model`` says so).

    Answers and timeouts are scheduled in the queue, which sends those due
    before each request as it comes (``Queue(auto_advance=True)``); after
    the last batch, simulated time runs on until every answer and timeout
    has happened. The result is the same for every ``batch_size`` and
    chunking, 1 included. ``progress=True`` shows a tqdm bar on stderr (``total``: the number of
    faults, when ``faults`` is an iterable). ``breakdown=False`` leaves the
    per-device and per-PASID tables empty and saves their cost.

    ``iopf.distributed.replay`` takes the same options with the same
    meanings and defaults, except ``total`` and ``unit_names`` (it reads
    its shards from files, whose ``format`` it takes instead) and a
    ``units`` array of one unit per record.

    >>> import iopf
    >>> r = iopf.replay(iopf.trace.synthetic(5_000, seed=1), policy="linux")
    >>> r.stats["rejected"], r.groups == r.response_codes["SUCCESS"]
    (0, True)
    >>> r = iopf.replay(iopf.trace.synthetic(5_000, seed=1, devices=4),
    ...                 units={0: 0, 1: 0, 2: 1, 3: 1})   # two units, two devices each
    >>> [(s["shard"], s["faults"]) for s in r.shards], r.faults
    ([('unit=0', ...), ('unit=1', ...)], 5000)
    """
    policy = policies.resolve(policy)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if not answer and service_time is not None:
        raise ValueError("service_time answers groups; it cannot be combined with answer=False")
    if handler is not None and not callable(handler) and not isinstance(handler, int):
        raise TypeError(f"handler must be callable or a Response code, not "
                        f"{type(handler).__name__}")
    service = _service(service_time, servers, seed)
    per_group = service_time if callable(service_time) and not isinstance(service_time, Service) \
        else None
    if isinstance(faults, np.ndarray):
        total = len(faults)
    per_record = _per_record_units(units, faults)

    def new_queue() -> _Replayer:
        return _Replayer(policy, strategy, handler, service if answer else None, per_group,
                         answer, batch_size, breakdown)
    return _run(new_queue, _chunks(faults, units, per_record), batch_size, progress, total,
                unit_names, strategy)


def _per_record_units(units: Units | None,
                      faults: np.ndarray | Iterable[Any]) -> np.ndarray | None:
    """``units`` as an int64 array when it gives one unit per record."""
    if units is None or callable(units) or isinstance(units, Mapping):
        return None
    arr = np.asarray(units)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise TypeError(f"units must be an integer array (one unit per record), a mapping "
                        f"from device id to unit, or a function of the dev array; got "
                        f"{arr.dtype} {arr.shape}")
    if isinstance(faults, np.ndarray) and len(arr) != len(faults):
        raise ValueError(f"units gives {len(arr):,} units for {len(faults):,} records")
    return arr.astype(np.int64, copy=False)


def _run(new_queue: Callable[[], _Replayer],
         chunks: Iterator[tuple[np.ndarray, np.ndarray | None]], batch_size: int,
         progress: bool, total: int | None, unit_names: Sequence[str] | None,
         strategy: str) -> ReplayReport:
    """Replay every batch, each unit's records through that unit's queue
    (made on the unit's first record), then merge the units' reports."""
    from tqdm import tqdm

    queues: dict[int, _Replayer] = {}
    seconds: dict[int, float] = {}    # each unit's own share of the wall time

    def queue(unit: int) -> _Replayer:
        if unit not in queues:
            queues[unit] = new_queue()
            seconds[unit] = 0.0
        return queues[unit]

    start = time.perf_counter()
    done = 0
    with tqdm(total=total, disable=not progress, unit="fault", unit_scale=True,
              desc=f"replay ({strategy})", leave=False) as bar:
        for chunk, chunk_units in chunks:
            for pos in range(0, len(chunk), batch_size):
                batch = chunk[pos:pos + batch_size]
                for unit, rows in _by_unit(None if chunk_units is None
                                           else chunk_units[pos:pos + batch_size]):
                    t = time.perf_counter()
                    queue(unit)._step(batch if rows is None else _take(batch, rows), done,
                                      rows)
                    seconds[unit] += time.perf_counter() - t
                done += len(batch)
                bar.update(len(batch))
        if not queues:
            queue(0)     # an empty trace still reports, on one queue
        for unit, q in queues.items():
            t = time.perf_counter()
            q._finish()
            seconds[unit] += time.perf_counter() - t
    wall = time.perf_counter() - start
    if len(queues) == 1:
        return next(iter(queues.values()))._report(wall)
    reports = []
    for unit in sorted(queues):
        rep = queues[unit]._report(seconds[unit])
        rep.extra["shard"] = _unit_label(unit, unit_names)
        reports.append(rep)
    merged = ReplayReport.merge(*reports)
    merged.wall_seconds = wall
    merged.faults_per_second = merged.faults / wall if wall > 0 else 0.0
    return merged


def _take(batch: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``batch[rows]``, copied as whole records: numpy gathers a structured
    array field by field, measured 50 times slower for FAULT_DTYPE."""
    whole = np.dtype((np.void, batch.dtype.itemsize))
    return np.ascontiguousarray(batch).view(whole).take(rows).view(batch.dtype)


def _by_unit(units: np.ndarray | None) -> list[tuple[int, np.ndarray | None]]:
    """The units of a batch and the rows of each, in trace order (None: all)."""
    if units is None:
        return [(0, None)]
    if not len(units) or (units == units[0]).all():
        return [(int(units[0]) if len(units) else 0, None)]
    # A host has a few units: a pass per unit costs less than sorting.
    if units.min() >= 0 and units.max() < 1 << 16:
        keys = np.flatnonzero(np.bincount(units))
    else:
        keys = np.unique(units)
    if len(keys) <= 8:
        return [(int(k), np.flatnonzero(units == k)) for k in keys]
    order = np.argsort(units, kind="stable")    # stable: trace order within a unit
    keys, starts = np.unique(units[order], return_index=True)
    bounds = [*starts.tolist(), len(units)]
    return [(int(k), order[bounds[i]:bounds[i + 1]]) for i, k in enumerate(keys)]


def _service(service_time: ServiceTime | None, servers: int | None,
             seed: int | None) -> Service | None:
    """The service model the arguments describe (a function of sizes: drawn by it)."""
    if isinstance(service_time, Service):
        for name, value in (("servers", servers), ("seed", seed)):
            if value is not None:
                raise ValueError(f"{name} is given by the Service itself")
        return service_time
    if service_time is None:
        for name, value in (("servers", servers), ("seed", seed)):
            if value is not None:
                raise ValueError(f"{name} needs a service_time")
        return None
    if seed is None:
        seed = 0
    if callable(service_time):
        return Service(0, servers, seed=seed)
    if isinstance(service_time, (float, np.floating)) and float(service_time).is_integer():
        service_time = int(service_time)
    if isinstance(service_time, (bool, float, np.floating)):
        raise ValueError(f"service_time must be a whole number of ns >= 0, not {service_time!r}")
    return Service(service_time, servers, seed=seed)


class _Replayer:
    """The state of one replay: the queue, and what its responses add up to."""

    def __init__(self, policy: Policy, strategy: str, handler: Handler | Response | None,
                 service: Service | None, per_group: Callable[[np.ndarray], Any] | None,
                 answer: bool, batch_size: int, breakdown: bool = True) -> None:
        # The replay stands for a handler on every (dev, PASID) and for devices
        # that had IOPF enabled (see replay's docstring); require_handler and
        # require_device only decide whether a request is answered at once, so
        # lifting them changes nothing else (the replay never removes a device:
        # lifting require_device is adding each device when it first appears)
        # and keeps the batch loop in C.
        run_policy = policy
        if policy.require_handler or policy.require_device:
            run_policy = policy.replace(require_handler=False, require_device=False)
        if isinstance(handler, int):
            service = None   # a constant handler answers every group as it forms
        # Latency means something only when the model says when groups are answered.
        self.timed = handler is not None or service is not None
        self.policy = policy
        self.service = service
        self.queue = Queue(run_policy, strategy=strategy, auto_advance=True)
        if service is not None:
            self.queue.service = service
        self.per_group = per_group
        self.user_handler = handler
        run_handler: Handler | Response | Service | None = handler
        if handler is None:
            # Answered as it forms (a constant handler, in C: credit comes back
            # exactly when it would), or by the workers (in C too).
            run_handler = (service if per_group is None else self._serve) if service is not None \
                else (Response.SUCCESS if answer else None)
        elif callable(handler) and service is not None:
            run_handler = self._handle
        self.queue.default_handler = run_handler
        self.strategy = self.queue.strategy
        self.batch_size = batch_size
        self.timeout = policy.response_timeout
        self.model = _describe(self.user_handler, service, per_group is not None, answer,
                               self.timeout)
        if policy.require_device:
            self.model += ", each device added when it first appears"
        self.sizes_hist = np.zeros(64, np.int64)
        self.codes = np.zeros(len(Response), np.int64)
        self.reasons = np.zeros(len(Reason), np.int64)
        self.lat = _LatencyHistogram()
        self.tally = _Tally(breakdown)
        self.engine = 0.0
        self.batches = 0
        self.first: int | None = None   # simulated time of the first request
        self.last = 0                   # and of the last request or response

    # -- handlers of the model ---------------------------------------------------------------
    def _handle(self, group: Group) -> Response | int | None:
        """The user's handler; a group it leaves pending goes to the workers."""
        assert callable(self.user_handler)
        code = self.user_handler(group)
        if code is None:
            self._serve(group)
        return code

    def _serve(self, group: Group) -> None:
        duration = None
        if self.per_group is not None:
            st = np.asarray(self.per_group(np.array([len(group)], np.int64)))
            if st.shape != (1,) or not np.issubdtype(st.dtype, np.integer) or st[0] < 0:
                raise ValueError(f"service_time() must return one integer >= 0 per group "
                                 f"(one per size given), got {st.dtype} {st.shape}")
            duration = int(st[0])
        self.queue.serve(group, service_time=duration)
        return None

    # -- the loop (driven by _run) -----------------------------------------------------------
    def _step(self, batch: np.ndarray, base: int, rows: np.ndarray | None = None) -> None:
        """Report ``batch``: the records at ``base`` of the trace (or, with
        ``rows``, those rows of the trace's batch at ``base``)."""
        t = time.perf_counter()
        try:
            groups = self.queue.report_batch(batch)
        except ValueError as e:
            m = _RECORD_ERROR.match(str(e))
            if m is None:      # not a field check: a handler's own error
                raise
            # The queue counts records from the start of the batch.
            i = int(m.group(1))
            raise ValueError(f"record {base + (i if rows is None else int(rows[i]))}: "
                             f"{m.group(2)}") from e
        finally:
            self.engine += time.perf_counter() - t
            self._collect()
        self.batches += 1
        self.tally.add_faults(batch)
        if self.first is None:
            self.first = int(batch["time"].min())
        self.last = max(self.last, int(batch["time"].max()))
        sizes = groups.sizes
        if len(sizes):
            lpigs = groups.faults[groups.offsets[1:] - 1]
            self.tally.add_groups(lpigs)
            h = np.bincount(sizes)
            if len(h) > len(self.sizes_hist):
                self.sizes_hist = np.concatenate(
                    [self.sizes_hist, np.zeros(len(h) - len(self.sizes_hist), np.int64)])
            self.sizes_hist[:len(h)] += h

    def _finish(self) -> None:
        """After the trace: run simulated time on until nothing more can happen."""
        t = time.perf_counter()
        self.queue.advance(_END_OF_TIME)
        self.engine += time.perf_counter() - t
        self._collect()

    # -- responses -----------------------------------------------------------------------
    def _collect(self) -> None:
        """Count the responses sent (handler, workers, overflow, timeout, ...)."""
        out, gtime = self.queue.core.take_responses(group_times=True)
        if not len(out):
            return
        self.codes += np.bincount(out["code"], minlength=len(self.codes))[:len(self.codes)]
        self.reasons += np.bincount(out["reason"], minlength=len(self.reasons))[:len(self.reasons)]
        rt = out["time"]
        self.last = max(self.last, int(rt.max()))
        if self.timed:
            grp = out["cookie"] != 0      # answers to groups, not to lone requests
            self.lat.add((rt - np.minimum(rt, gtime))[grp])
        self.tally.add_responses(out)

    # -- the report ----------------------------------------------------------------------
    def _report(self, wall: float) -> ReplayReport:
        stats = self.queue.stats.as_dict()
        nz = np.flatnonzero(self.sizes_hist)
        return ReplayReport(
            policy=_policy_name(self.policy),
            strategy=self.strategy,
            model=self.model,
            stats=stats,
            groups=stats["groups"],
            group_sizes={int(k): int(self.sizes_hist[k]) for k in nz},
            response_codes={r.name: int(self.codes[r]) for r in Response},
            response_reasons={r.name: int(self.reasons[r]) for r in Reason},
            latency_ns=self.lat.summary() if self.timed else None,
            batches=self.batches,
            wall_seconds=wall,
            engine_seconds=self.engine,
            faults_per_second=stats["faults_reported"] / wall if wall > 0 else 0.0,
            devices=self.tally.result("dev"),
            pasids=self.tally.result("pasid"),
            histogram=self.lat if self.timed else None,
            service=self._service_summary(),
        )

    def _service_summary(self) -> dict[str, Any] | None:
        if self.service is None:
            return None
        sv = self.queue.core.service_stats()
        span = self.last - (self.first or 0)
        workers = sv["servers"]
        served = sv["served"]
        return {"servers": workers, "served": served,
                "utilization": (sv["busy_ns"] / (workers * span) if workers and span else 0.0),
                "wait_mean_ns": sv["wait_ns"] / served if served else 0.0,
                "wait_max_ns": sv["max_wait_ns"]}


def _merge_service(services: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The workers of shards together (None unless every shard modelled them)."""
    if not services or any(sv is None for sv in services):
        return None
    svs = [sv for sv in services if sv is not None]
    served = sum(sv["served"] for sv in svs)
    servers = sum(sv["servers"] for sv in svs)
    return {"servers": servers, "served": served,
            "utilization": (sum(sv["utilization"] * sv["servers"] for sv in svs) / servers
                            if servers else 0.0),
            "wait_mean_ns": (sum(sv["wait_mean_ns"] * sv["served"] for sv in svs) / served
                             if served else 0.0),
            "wait_max_ns": max(sv["wait_max_ns"] for sv in svs)}


class _LatencyHistogram:
    """Log-linear histogram of ns values: bounded memory whatever the trace.

    Values below 2**BITS fall in buckets of one; above, a value keeps its top
    BITS bits (a relative error below 2**-(BITS-1)). Min, max and sum are
    exact.
    """

    BITS = 12
    HALF = 1 << (BITS - 1)

    def __init__(self) -> None:
        self.counts = np.zeros(0, np.int64)
        self.n = 0
        self.total = 0
        self.lo: int | None = None
        self.hi = 0

    def add(self, values: np.ndarray) -> None:
        if not len(values):
            return
        v = np.asarray(values, dtype=np.uint64)
        self.n += len(v)
        lo, hi = int(v.min()), int(v.max())
        # An exact integer sum unless it could wrap uint64 (then a float is close enough).
        self.total += int(v.sum()) if hi < (2**64 - 1) // len(v) else int(v.sum(dtype=np.float64))
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = max(self.hi, hi)
        idx = self._index(v)
        h = np.bincount(idx)
        if len(h) > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(len(h) - len(self.counts),
                                                                np.int64)])
        self.counts[:len(h)] += h

    def merge(self, other: _LatencyHistogram) -> None:
        """Add another histogram's values: the buckets are fixed, so this is
        exact (the result is the histogram of both sets of values)."""
        if not other.n:
            return
        if len(other.counts) > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(
                len(other.counts) - len(self.counts), np.int64)])
        self.counts[:len(other.counts)] += other.counts
        self.n += other.n
        self.total += other.total
        self.lo = other.lo if self.lo is None else min(self.lo, other.lo or 0)
        self.hi = max(self.hi, other.hi)

    def buckets(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower bound (ns) and count of each non-empty bucket."""
        idx = np.flatnonzero(self.counts)
        return (np.array([self._lower(int(i)) for i in idx], np.int64),
                self.counts[idx].copy())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _LatencyHistogram):
            return NotImplemented
        return (self.n == other.n and self.total == other.total and self.lo == other.lo
                and self.hi == other.hi
                and np.array_equal(np.trim_zeros(self.counts, "b"),
                                   np.trim_zeros(other.counts, "b")))

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def _index(cls, v: np.ndarray) -> np.ndarray:
        # bit_length via frexp: exact below 2**53 ns (104 days), plenty here.
        _, exp = np.frexp(v.astype(np.float64))
        shift = np.maximum(exp.astype(np.int64) - cls.BITS, 0)
        return (shift * cls.HALF + (v >> shift.astype(np.uint64)).astype(np.int64))

    @classmethod
    def _lower(cls, idx: int) -> int:
        shift = max(0, idx // cls.HALF - 1)
        return (idx - shift * cls.HALF) << shift

    def summary(self) -> dict[str, float]:
        if not self.n:
            return {"count": 0}
        cum = np.cumsum(self.counts)
        out: dict[str, float] = {"count": self.n, "min": self.lo or 0}
        for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
            rank = max(1, int(np.ceil(q * self.n)))   # nearest rank
            bucket = int(np.searchsorted(cum, rank))
            out[name] = min(max(self._lower(bucket), self.lo or 0), self.hi)
        out["max"] = self.hi
        out["mean"] = self.total / self.n
        return out


class _Tally:
    """Faults, groups and response codes counted by device and by PASID.

    Ids are counted per batch with ``bincount`` when they are small (the
    usual case: a few devices, PASIDs allocated from 1), else ``np.unique``;
    the per-id totals live in dicts, one entry per id seen. Counting every
    fault costs two passes over each batch (measured: 12% more CPU time for
    a replay without service time): ``replay(breakdown=False)`` skips it.
    """

    COLUMNS = ("dev", "pasid")

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.faults: dict[str, dict[int, int]] = {c: {} for c in self.COLUMNS}
        self.groups: dict[str, dict[int, int]] = {c: {} for c in self.COLUMNS}
        self.codes: dict[str, dict[int, np.ndarray]] = {c: {} for c in self.COLUMNS}

    def add_faults(self, records: np.ndarray) -> None:
        if self.enabled:
            for c in self.COLUMNS:
                _add_to(self.faults[c], records[c])

    def add_groups(self, lpigs: np.ndarray) -> None:
        if self.enabled:
            for c in self.COLUMNS:
                _add_to(self.groups[c], lpigs[c])

    def add_responses(self, out: np.ndarray) -> None:
        if not self.enabled or not len(out):
            return
        ncodes = len(Response)
        codes = out["code"].astype(np.int64)
        keep = codes < ncodes
        for c in self.COLUMNS:
            into = self.codes[c]
            for key, n in zip(*_counts((out[c].astype(np.int64) * ncodes + codes)[keep])):
                ident, code = divmod(key, ncodes)
                row = into.get(ident)
                if row is None:
                    row = into[ident] = np.zeros(ncodes, np.int64)
                row[code] += n

    def result(self, column: str) -> dict[int, dict[str, Any]]:
        faults, groups, codes = self.faults[column], self.groups[column], self.codes[column]
        zero = np.zeros(len(Response), np.int64)
        return {i: {"faults": faults.get(i, 0), "groups": groups.get(i, 0),
                    "codes": {r.name: int(codes.get(i, zero)[r]) for r in Response}}
                for i in sorted(set(faults) | set(groups) | set(codes))}


def _add_to(into: dict[int, int], ids: np.ndarray) -> None:
    for k, n in zip(*_counts(ids)):
        into[k] = into.get(k, 0) + n


def _counts(ids: np.ndarray) -> tuple[list[int], list[int]]:
    """The distinct ids and how often each occurs."""
    if not len(ids):
        return [], []
    if int(ids.max()) < max(1 << 16, 4 * len(ids)):
        counts = np.bincount(ids)
        keys = np.flatnonzero(counts)
        counts = counts[keys]
    else:
        keys, counts = np.unique(ids, return_counts=True)
    return keys.tolist(), counts.tolist()


# -- helpers -----------------------------------------------------------------------------

def _add_counts(dicts: list[dict[Any, int]]) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _add_breakdowns(parts: list[dict[int, dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for part in parts:
        for ident, row in part.items():
            have = out.get(ident)
            if have is None:
                out[ident] = {"faults": row["faults"], "groups": row["groups"],
                              "codes": dict(row["codes"])}
            else:
                have["faults"] += row["faults"]
                have["groups"] += row["groups"]
                have["codes"] = _add_counts([have["codes"], row["codes"]])
    return dict(sorted(out.items()))


def _breakdown_dict(part: dict[int, dict[str, Any]]) -> dict[str, Any]:
    return {str(ident): {"faults": int(row["faults"]), "groups": int(row["groups"]),
                         "codes": {k: int(v) for k, v in row["codes"].items()}}
            for ident, row in part.items()}


#: Rows of the per-device and per-PASID tables in the text report.
TOP_N = 8


def _breakdown_lines(what: str, part: dict[int, dict[str, Any]]) -> list[str]:
    if not part:
        return []
    top = sorted(part.items(), key=lambda kv: (-kv[1]["faults"], kv[0]))[:TOP_N]
    title = f"by {what} ({len(part):,}" + (f", top {TOP_N} by faults)" if len(part) > TOP_N
                                          else ")")
    lines = ["", title, f"  {what:>10} {'faults':>14} {'groups':>12} " +
             " ".join(f"{r.name:>10}" for r in Response)]
    for ident, row in top:
        lines.append(f"  {ident:>#10x} {row['faults']:>14,} {row['groups']:>12,} " +
                     " ".join(f"{row['codes'].get(r.name, 0):>10,}" for r in Response))
    return lines


def _shard_lines(shards: list[dict[str, Any]]) -> list[str]:
    if not shards:
        return []
    wall = sum(sh["wall_seconds"] for sh in shards)
    engine = sum(sh["engine_seconds"] for sh in shards)
    lines = ["", f"shards ({len(shards):,}; {wall:.3f} s wall and {engine:.3f} s in the "
             "queue, added up)"]
    slow = sorted(shards, key=lambda sh: -sh["wall_seconds"])[:TOP_N]
    for sh in slow:
        lines.append(f"  {sh['shard']:<24} {sh['faults']:>14,} faults "
                     f"{sh['wall_seconds']:>9.3f} s wall {sh['engine_seconds']:>9.3f} s queue")
    if len(shards) > TOP_N:
        lines.append(f"  ... {len(shards) - TOP_N:,} more (the slowest are shown)")
    return lines


def _chunks(faults: np.ndarray | Iterable[Any], units: Units | None,
            per_record: np.ndarray | None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Each chunk of the trace with its records' units (None: no unit given)."""
    if isinstance(faults, np.ndarray):
        faults = (faults,)
    done = 0
    for i, item in enumerate(faults):
        chunk, meta = item if isinstance(item, tuple) and len(item) == 2 else (item, None)
        if not isinstance(chunk, np.ndarray) or chunk.dtype != FAULT_DTYPE:
            what = chunk.dtype if isinstance(chunk, np.ndarray) else type(chunk).__name__
            raise TypeError(f"replay takes FAULT_DTYPE arrays (or an iterable of them, or of "
                            f"(faults, meta) pairs); chunk {i} is {what}")
        if chunk.ndim != 1:
            raise ValueError(f"chunk {i} must be one-dimensional, got shape {chunk.shape}")
        chunk_units: np.ndarray | None = None
        if per_record is not None:
            chunk_units = per_record[done:done + len(chunk)]
            if len(chunk_units) != len(chunk):
                raise ValueError(f"units gives {len(per_record):,} units for more records")
        elif units is not None:
            chunk_units = _unit_of(chunk["dev"], units)  # type: ignore[arg-type]
        elif meta is not None:
            if not isinstance(meta, np.ndarray) or meta.dtype.names is None \
                    or "unit" not in meta.dtype.names or meta.shape != chunk.shape:
                raise TypeError(f"chunk {i}: the meta of a (faults, meta) pair must be a "
                                f"META_DTYPE array as long as the faults")
            chunk_units = meta["unit"]
        done += len(chunk)
        yield chunk, chunk_units
    if per_record is not None and done != len(per_record):
        raise ValueError(f"units gives {len(per_record):,} units for {done:,} records")


def _describe(handler: Handler | Response | None, service: Service | None, per_group: bool,
              answer: bool, timeout: int | None) -> str:
    parts = []
    if isinstance(handler, int):
        parts.append(f"every group answered {Response(handler).name}")
    elif handler is not None:
        parts.append(f"handler {getattr(handler, '__name__', type(handler).__name__)}")
    if service is not None and not isinstance(handler, int):
        parts.append("service time " + ("per group" if per_group else service.text))
        if service.servers is not None:
            parts.append(f"{service.servers:,} workers")
    if not parts:
        parts.append("answered on completion" if answer else "never answered")
    if timeout is not None:
        parts.append(f"timeout {_ns(timeout)}")
    return ", ".join(parts)


def _policy_name(policy: Policy) -> str:
    for name, preset in policies.PRESETS.items():
        if preset == policy:
            return name
    return "custom"


def _conserved(s: dict[str, int]) -> bool:
    return (s["faults_reported"] == s["partial_now"] + s["grouped"] + s["stop_markers"]
            + s["rejected"] + s["overflowed"] + s["discarded"] + s["flushed"] + s["removed"]
            and s["groups"] == s["answered"] + s["pending_now"])


def _size_rows(hist: dict[int, int], rows: int = 12) -> list[tuple[str, int]]:
    items = sorted(hist.items())
    if len(items) <= rows:
        return [(str(k), v) for k, v in items]
    head, tail = items[:rows - 1], items[rows - 1:]
    return [(str(k), v) for k, v in head] + [(f">={tail[0][0]}", sum(v for _, v in tail))]


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:6.2f}%" if total else ""


def _rate(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f}"


def _ns(v: float) -> str:
    if v >= 1e9:
        return f"{v / 1e9:.3f} s"
    if v >= 1e6:
        return f"{v / 1e6:.3f} ms"
    if v >= 1e3:
        return f"{v / 1e3:.3f} us"
    return f"{v:.0f} ns" if float(v).is_integer() else f"{v:.1f} ns"
