"""Split traces into shards that replay independently: ``iopf.trace.partition``.

A shard is what one queue sees. Groups never span devices, but the queue's
state does: VT-d's page request queue and ``iopf_queue_discard_partial`` are
per IOMMU unit, so the faithful shard is the IOMMU unit (``by="iommu"``), or
the whole host (``by="host"``, one shard per input file). ``by="device"`` is
finer and exact only for a policy without queue-wide coupling (no
``queue_depth``, no ``discard_on_overflow``).

The IOMMU unit of a request: a ``prq_report`` trace records it (``dmar1``),
and that unit is used, so a capture from two units shards into two (named
``unit=dmar0``, ``unit=dmar1``). A mapping from device id to unit number
(``units=``, a ``dict`` or a function of the device array returning the unit
array; a device sits behind exactly one unit) overrides it, and gives the
unit of traces that record none; without either, a host has a single unit, 0.
A device is known by its unit too: in a trace that names its units, the
shards by device are ``unit=dmar0/dev=D``, and the same device number on two
units makes two shards.

The output is a Parquet dataset, one directory per shard in the Hive style
(``host=NAME/unit=K/part-0.parquet``; the ``host=`` level only when there are
several input files), each file in the same columns as
``iopf.trace.save(..., format="parquet")`` and in trace order, plus
``_shards.json``, the list of shards, written last (a dataset without it is
incomplete).
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from .types import FAULT_DTYPE

__all__ = ["partition", "Shard", "shards_of", "read_shard", "read_shard_meta", "MANIFEST",
           "SHARD_KEYS"]

#: The ways to shard, coarsest first.
SHARD_KEYS = ("host", "iommu", "device")
#: The file that lists a dataset's shards.
MANIFEST = "_shards.json"
_VERSION = 1

#: The IOMMU unit of each device: a device id -> unit mapping (a ``dict``), or
#: a function of the ``dev`` array returning the units (a device sits behind
#: one unit). What ``partition`` and ``iopf.distributed.replay`` take.
DeviceUnits = Union[Mapping[int, int], Callable[[np.ndarray], Any]]
#: The IOMMU unit of each record: ``DeviceUnits``, or an integer array with one
#: unit per record of the trace. What ``iopf.replay`` takes: it has the records
#: in hand, while the other two read them from files.
Units = Union[np.ndarray, DeviceUnits]
PathLike = Union[str, "os.PathLike[str]"]

_COLUMNS = ("time", "dev", "pasid", "grpid", "flags", "perm", "addr", "private0", "private1")
_U32 = frozenset({"dev", "pasid", "grpid", "flags", "perm"})


@dataclass(frozen=True)
class Shard:
    """One task's input: a name, the files to read in order, and, for a raw
    trace split on the fly, which records of them belong to it."""

    name: str
    paths: tuple[str, ...]
    format: str | None = None
    #: ``("unit", K)`` or ``("dev", D)``: keep only those records (raw input).
    select: tuple[str, int] | None = None
    units: DeviceUnits | None = None
    faults: int | None = None


def partition(source: Any, out_dir: PathLike, *, by: str = "iommu",
              units: DeviceUnits | None = None, chunk_size: int = 1 << 20,
              format: str | None = None) -> list[Shard]:
    """Write ``source`` as a Parquet dataset with one directory per shard.

    ``source`` is a ``FAULT_DTYPE`` array, a trace file, a list of files or a
    glob (several files are several hosts). One streaming pass: each input
    is read ``chunk_size`` records at a time and at most about one chunk is
    held before it is written, whatever the trace's size. ``by`` is
    ``"iommu"``, ``"device"`` or ``"host"``; the IOMMU unit is the one a
    ``prq_report`` trace records, unless ``units`` maps device ids to units
    (see the module's docstring). ``out_dir`` must not exist
    or be empty. Returns the shards written (also listed in ``_shards.json``).

    >>> import tempfile, iopf
    >>> faults = iopf.trace.synthetic(1_000, devices=4)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     shards = iopf.trace.partition(faults, d, by="iommu", units={0: 0, 1: 0, 2: 1, 3: 1})
    >>> [(s.name, s.faults) for s in shards]
    [('unit=0', 431), ('unit=1', 569)]
    """
    if by not in SHARD_KEYS:
        raise ValueError(f"by must be one of {', '.join(SHARD_KEYS)}, not {by!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
    _check_units(units)
    out = os.fspath(out_dir)
    if os.path.isdir(out) and os.listdir(out):
        raise ValueError(f"{out}: the output directory is not empty")
    hosts = _hosts(source)
    created = not os.path.exists(out)
    os.makedirs(out, exist_ok=True)
    try:
        return _write(hosts, out, by, units, chunk_size, format)
    except BaseException:
        # The directory was empty: leave it so (a half-written dataset has no
        # shard list and could only mislead).
        for entry in os.listdir(out):
            path = os.path.join(out, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        if created:
            os.rmdir(out)
        raise


def _write(hosts: list[tuple[str, _ChunkSource]], out: str, by: str,
           units: DeviceUnits | None, chunk_size: int, format: str | None) -> list[Shard]:
    pa, pq = _pyarrow()
    schema = pa.schema([(n, pa.uint32() if n in _U32 else pa.uint64()) for n in _COLUMNS])
    written: list[Shard] = []
    records: list[dict[str, Any]] = []
    # The units a trace records: the shard of a unit, unless a mapping
    # overrides them, and part of a device's identity (two units may report
    # the same device number).
    recorded = (by == "iommu" and units is None) or by == "device"
    for host, chunks in hosts:
        prefix = f"host={host}" if len(hosts) > 1 or by == "host" else ""
        writers: dict[int, Any] = {}
        counts: dict[int, int] = {}
        held: dict[int, list[np.ndarray]] = {}
        n_held = 0
        names: list[str] = []   # the units the trace names (filled as it is read)

        def flush() -> None:
            for key, parts in held.items():
                if key not in writers:
                    path = os.path.join(out, _shard_dir(prefix, by, key, names),
                                        "part-0.parquet")
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    writers[key] = pq.ParquetWriter(path, schema)
                arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
                writers[key].write_table(_table(pa, schema, arr))
            held.clear()

        try:
            for chunk, meta in chunks(chunk_size, format, names if recorded else None):
                for key, part in _split(chunk, by, units, meta):
                    held.setdefault(key, []).append(part)
                    counts[key] = counts.get(key, 0) + len(part)
                    n_held += len(part)
                if n_held >= chunk_size:
                    flush()
                    n_held = 0
            flush()
        finally:
            for w in writers.values():
                w.close()
        for key in sorted(counts):
            name = _shard_dir(prefix, by, key, names)
            rel = name + "/part-0.parquet"
            written.append(Shard(name, (os.path.join(out, rel),), "parquet",
                                 faults=counts[key]))
            records.append({"shard": name, "path": rel, "faults": counts[key]})
    manifest = {"version": _VERSION, "by": by, "shards": records,
                "units": None if units is None or callable(units)
                else {str(k): int(v) for k, v in units.items()}}
    tmp = os.path.join(out, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out, MANIFEST))
    return written


def shards_of(source: Any, by: str, *, units: DeviceUnits | None = None,
              format: str | None = None) -> list[Shard]:
    """The shards of ``source`` for sharding ``by``: the shards of a dataset
    written by ``partition`` (which must have been partitioned the same way),
    or, for trace files, one shard per file (``by="host"``, or ``"iommu"``
    for a file of one unit) or one per (file, unit or device), each read
    from the whole file and filtered. The units are those of ``units``, else
    those a ``prq_report`` trace records."""
    from . import trace

    if by not in SHARD_KEYS:
        raise ValueError(f"shard_by must be one of {', '.join(SHARD_KEYS)}, not {by!r}")
    _check_units(units)
    if isinstance(source, np.ndarray):
        raise TypeError("a sharded replay reads its shards from files on the workers: "
                        "write the array with iopf.trace.partition first")
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        # What applies to trace files only is refused, not ignored.
        if units is not None:
            raise ValueError(f"{source}: units= applies to trace files; a dataset's shards "
                             "were cut by iopf.trace.partition(..., units=) already")
        if format is not None:
            raise ValueError(f"{source}: format= applies to trace files; a dataset is Parquet")
        return _dataset_shards(os.path.abspath(source), by)
    # A plain dict travels to the workers with each shard (a function as it is).
    units = units if units is None or callable(units) else dict(units)
    # Absolute paths: a worker's working directory is not the client's.
    files = [os.path.abspath(f) for f in _files(source)]
    shards = []
    for host, path in zip(_host_names(files), files):
        prefix = f"host={host}" if len(files) > 1 else ""
        if by == "host" or (by == "iommu" and units is None
                            and trace.detect_format(path, format) != "prq_report"):
            shards.append(Shard(prefix or host, (path,), format, units=units))
            continue
        keys, names = _keys_of(path, by, units, format)
        if by == "iommu" and units is None and len(keys) <= 1:
            shards.append(Shard(prefix or host, (path,), format))   # one unit: the whole file
            continue
        for key in keys:
            name = _shard_dir(prefix, by, key, names)
            column = "unit" if by == "iommu" else "dev"
            shards.append(Shard(name, (path,), format, (column, key), units))
    return shards


def read_shard(shard: Shard, chunk_size: int = 1 << 20) -> Iterator[np.ndarray]:
    """The shard's records as ``FAULT_DTYPE`` chunks, in trace order."""
    return (chunk for chunk, _ in read_shard_meta(shard, chunk_size))


def read_shard_meta(shard: Shard, chunk_size: int = 1 << 20, *,
                    units: list[str] | None = None
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The shard's records with their metadata (``META_DTYPE``: the units a
    trace records), as ``(faults, meta)`` chunks in trace order; ``units``,
    a list, gets the names of those units (``LoadStats.units``)."""
    from . import trace

    names = [] if units is None else units

    column, key = shard.select if shard.select is not None else ("", 0)
    recorded = column == "unit" and shard.units is None   # the unit the trace records
    for path in shard.paths:
        for chunk, meta in trace.iter_chunks(path, format=shard.format, chunk_size=chunk_size,
                                             stats=trace.LoadStats(units=names), meta=True):
            if shard.select is not None:
                ids = (_device_key(chunk, meta) if column == "dev" else meta["unit"] if recorded
                       else _unit_of(chunk["dev"], shard.units))
                keep = ids == key
                chunk, meta = chunk[keep], meta[keep]
            if len(chunk):
                yield chunk, meta


# -- helpers -----------------------------------------------------------------------------

def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:
        raise ImportError('partitioning writes Parquet, which needs pyarrow: '
                          'pip install "iopf[parquet]"') from e
    return pyarrow, pyarrow.parquet


def _table(pa: Any, schema: Any, arr: np.ndarray) -> Any:
    cols = [np.ascontiguousarray(arr[n]) for n in _COLUMNS[:7]]
    cols += [np.ascontiguousarray(arr["private"][:, 0]),
             np.ascontiguousarray(arr["private"][:, 1])]
    return pa.Table.from_arrays([pa.array(c) for c in cols], schema=schema)


def _leaf(by: str, key: int, names: Sequence[str] | None) -> str:
    if by == "device":
        # A trace that names its units: the device within its unit.
        dev = f"dev={key & 0xFFFF_FFFF}"
        return f"{_unit_label(key >> 32, names)}/{dev}" if names else dev
    return {"host": "", "iommu": _unit_label(key, names)}[by]


def _device_key(chunk: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
    """A device's shard key: its id, and above it its recorded unit (so the
    same device number on two units is two devices)."""
    dev = chunk["dev"].astype(np.int64)
    return dev if meta is None else dev | (meta["unit"].astype(np.int64) << 32)


def _unit_label(unit: int, names: Sequence[str] | None) -> str:
    """``unit=NAME`` (``unit=dmar1``) when the trace names the unit, else
    ``unit=K``: a name starting with a letter cannot be taken for a number."""
    name = names[unit] if names is not None and 0 <= unit < len(names) else None
    if name is not None and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name):
        return f"unit={name}"
    return f"unit={unit}"


def _shard_dir(host: str, by: str, key: int, names: Sequence[str] | None = None) -> str:
    return "/".join(p for p in (host, _leaf(by, key, names)) if p)


def _check_units(units: Any) -> None:
    """Refuse what is not ``DeviceUnits`` now, rather than misread it later (an
    array indexed by device id would give units silently wrong)."""
    if units is not None and not callable(units) and not isinstance(units, Mapping):
        raise TypeError(f"units must be a mapping from device id to IOMMU unit or a function "
                        f"of the dev array, not {type(units).__name__} (a unit per record is "
                        f"for iopf.replay, which has the records in hand)")


def _unit_of(dev: np.ndarray, units: DeviceUnits | None) -> np.ndarray:
    if units is None:
        return np.zeros(len(dev), np.int64)
    if callable(units):
        out = np.asarray(units(dev))
        if out.shape != dev.shape or (out.size and out.dtype.kind not in "iu"):
            raise ValueError(f"units() must return one integer unit per device id, "
                             f"got {out.dtype} {out.shape}")
        return out.astype(np.int64)
    # A device sits behind one unit: look each distinct id up once.
    ids, inverse = np.unique(dev, return_inverse=True)
    try:
        table = np.array([units[int(d)] for d in ids], np.int64)
    except KeyError as e:
        raise ValueError(f"device {int(e.args[0]):#x} has no IOMMU unit in units=") from None
    return table[inverse]


def _split(chunk: np.ndarray, by: str, units: DeviceUnits | None,
           meta: np.ndarray | None) -> list[tuple[int, np.ndarray]]:
    if by == "host":
        return [(0, chunk)] if len(chunk) else []
    key = (_device_key(chunk, meta) if by == "device"
           else meta["unit"].astype(np.int64) if units is None and meta is not None
           else _unit_of(chunk["dev"], units))
    order = np.argsort(key, kind="stable")   # stable: trace order within a shard
    keys, starts = np.unique(key[order], return_index=True)
    bounds = [*starts.tolist(), len(chunk)]
    return [(int(k), chunk[order[bounds[i]:bounds[i + 1]]]) for i, k in enumerate(keys)]


def _files(source: Any) -> list[str]:
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if glob.has_magic(text):
            files = sorted(glob.glob(text))
            if not files:
                raise ValueError(f"{text}: no file matches")
            return files
        return [text]
    if isinstance(source, Sequence) and source and all(
            isinstance(p, (str, os.PathLike)) for p in source):
        files = []
        for p in source:
            files += _files(p)
        return files
    raise TypeError("source must be a FAULT_DTYPE array, a trace file, a list of files "
                    f"or a glob, not {type(source).__name__}")


def _host_names(files: list[str]) -> list[str]:
    """A host per file: its name without the extensions, made unique."""
    names: list[str] = []
    for path in files:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(path).split(".")[0]) or "trace"
        name, i = base, 1
        while name in names:
            i += 1
            name = f"{base}-{i}"
        names.append(name)
    return names


#: ``source(chunk_size, format, names)``: the chunks and, when ``names`` is a
#: list (filled with the units the trace names), their metadata.
_ChunkSource = Callable[[int, Union[str, None], Union[list[str], None]],
                        Iterator[tuple[np.ndarray, Union[np.ndarray, None]]]]


def _hosts(source: Any) -> list[tuple[str, _ChunkSource]]:
    from . import trace

    if isinstance(source, np.ndarray):
        if source.dtype != FAULT_DTYPE or source.ndim != 1:
            raise TypeError(f"expected a 1-D FAULT_DTYPE array, got {source.dtype} "
                            f"{source.shape}")
        arr = source

        def from_array(chunk_size: int, _: str | None, __: list[str] | None
                       ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
            for i in range(0, len(arr), chunk_size):
                yield arr[i:i + chunk_size], None     # an array records no unit
        return [("trace", from_array)]
    files = _files(source)

    def reader(path: str) -> _ChunkSource:
        def read(chunk_size: int, fmt: str | None, names: list[str] | None
                 ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
            if names is None:
                yield from ((c, None) for c in trace.iter_chunks(path, format=fmt,
                                                                 chunk_size=chunk_size))
                return
            stats = trace.LoadStats(units=names)   # the reader adds the units it meets
            yield from trace.iter_chunks(path, format=fmt, chunk_size=chunk_size,
                                         stats=stats, meta=True)
        return read
    return [(host, reader(path)) for host, path in zip(_host_names(files), files)]


def _keys_of(path: str, by: str, units: DeviceUnits | None,
             format: str | None) -> tuple[list[int], list[str]]:
    """The units or devices present in a raw trace (one read of the file),
    and the names of the units it records."""
    from . import trace

    seen: set[int] = set()
    stats = trace.LoadStats()
    for chunk, meta in trace.iter_chunks(path, format=format, stats=stats, meta=True):
        ids = (_device_key(chunk, meta) if by == "device" else meta["unit"] if units is None
               else _unit_of(chunk["dev"], units))
        seen.update(np.unique(ids).tolist())
    return sorted(seen), stats.units


def _dataset_shards(root: str, by: str) -> list[Shard]:
    path = os.path.join(root, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        made_by = manifest["by"]
        entries = manifest["shards"]
    except FileNotFoundError:
        raise ValueError(f"{root}: not a dataset written by iopf.trace.partition "
                         f"(no {MANIFEST}; an interrupted partition leaves none)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable shard list: {e}") from None
    if made_by != by:
        raise ValueError(f"{root} is partitioned by {made_by}, not by {by}: pass "
                         f"shard_by={made_by!r} or partition the trace again")
    return [Shard(e["shard"], (os.path.join(root, e["path"]),), "parquet",
                  faults=int(e["faults"])) for e in entries]
