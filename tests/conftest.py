"""Shared fixtures: every queue test runs once per grouping strategy.

``strategy`` is parametrized over the three compiled groupers and the
pure-Python twin; ``make_queue`` builds an ``iopf.Queue`` with it;
``feed`` reports a list of faults either one by one (``report``) or as one
``FAULT_DTYPE`` array (``report_batch``) and returns the completed groups.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import os

import numpy as np
import pytest
from hypothesis import settings

import iopf

# HYPOTHESIS_PROFILE=sanitize (the ASan/UBSan run, ~5x slower) draws fewer examples.
settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("sanitize", deadline=None, print_blob=True, max_examples=25)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

STRATEGIES = ("hash", "tree", "list", "python")
FEED_MODES = ("report", "batch")


def write(path: Path, data: str | bytes) -> Path:
    """Write a test input file (text or bytes) and return its path."""
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


#: What the machine measures, and how the trace was batched: never part of
#: what a replay decides.
MEASURED = ("wall_seconds", "engine_seconds", "faults_per_second", "batches")
#: What names the shards of a replay cut into several (sharded, one queue per
#: unit, merged) and where it ran: keys one side of a comparison may have alone.
SHARDING = ("shards", "strategy", "shard_seconds", "shard", "cluster_start_seconds", "trace",
            "skipped_records")


def outcome(report: iopf.ReplayReport | dict[str, Any], *ignore: str) -> dict[str, Any]:
    """What a replay decided: its ``to_dict()`` (or the dict ``--json`` wrote)
    without ``MEASURED`` and the keys ``ignore`` names."""
    d = dict(report) if isinstance(report, dict) else report.to_dict()
    for k in (*MEASURED, *ignore):
        d.pop(k, None)
    return d


def same(a: iopf.ReplayReport, b: iopf.ReplayReport) -> None:
    """Two replays of one trace, cut differently, decided the same: counter for
    counter, histogram for histogram."""
    assert outcome(a, *SHARDING) == outcome(b, *SHARDING)
    assert a.histogram == b.histogram


def as_array(faults: Sequence[iopf.Fault]) -> np.ndarray:
    """A list of Fault as a FAULT_DTYPE array (the input of report_batch)."""
    return np.array([tuple(f) for f in faults], dtype=iopf.FAULT_DTYPE)


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> str:
    """The grouping strategy of the queue under test."""
    return request.param


@pytest.fixture
def make_queue(strategy: str) -> Callable[..., iopf.Queue]:
    """``make_queue(policy=PCIE, **kw)``: a Queue of the current strategy."""

    def make(policy: iopf.Policy = iopf.policies.PCIE, **kw: Any) -> iopf.Queue:
        return iopf.Queue(policy, strategy=strategy, **kw)

    return make


@pytest.fixture(params=FEED_MODES)
def feed_mode(request: pytest.FixtureRequest) -> str:
    """How faults reach the queue: ``report`` one by one, or one ``report_batch``."""
    return request.param


@pytest.fixture
def feed(feed_mode: str) -> Callable[[iopf.Queue, Sequence[iopf.Fault]], list[iopf.Group]]:
    """``feed(queue, faults)``: report faults; the groups completed, in order."""

    def run(q: iopf.Queue, faults: Sequence[iopf.Fault]) -> list[iopf.Group]:
        if feed_mode == "report":
            return [g for g in map(q.report, faults) if g is not None]
        return list(q.report_batch(as_array(faults)))

    run.mode = feed_mode  # type: ignore[attr-defined]
    return run
