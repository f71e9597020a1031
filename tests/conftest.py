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
