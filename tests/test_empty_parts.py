"""The hash and tree strategies keep a completed group's partial group
record (Part), empty, under its key, for the next group with that key.

Devices reuse their group ids (a PCIe function has 512 of them), so most
groups find the record their key's previous group left: the LPIG and the
next group's first partial then change no table. The records are an
implementation detail, and these tests check that they stay one: every
strategy forms the same groups with the same faults, an empty record is
never a group, flush, discard and device removal free them with the
others, and when keys do not recur the empty records are swept so that
memory stays bounded. ``Grouper._check_nodes()`` counts the empty records
and checks them against ``get_state()["parts_empty"]``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import iopf
from iopf import FAULT_DTYPE, Response
from iopf_core import COMPILED

pytestmark = pytest.mark.skipif(not COMPILED, reason="the compiled core's partial group records")
P, LAST = 1, 3


def groups(dev: np.ndarray, pasid: np.ndarray, grpid: np.ndarray, size: int, t: int = 0) -> np.ndarray:
    """One group of `size` faults (LPIG last) per (dev, pasid, grpid), one after another."""
    n = len(dev) * size
    a = np.zeros(n, FAULT_DTYPE)
    a["time"] = t + np.arange(n)
    a["dev"] = np.repeat(dev, size)
    a["pasid"] = np.repeat(pasid, size)
    a["grpid"] = np.repeat(grpid, size)
    a["perm"] = 1
    a["addr"] = np.arange(n) << 12
    a["flags"] = P
    a["flags"][size - 1::size] = LAST
    return a


def state(q: iopf.Queue) -> dict[str, int]:
    core: Any = q.core          # the compiled core (the twin has no records)
    core._check_nodes()
    state: dict[str, int] = core.get_state()
    return state


@pytest.mark.parametrize("strategy", ["hash", "tree"])
def test_a_completed_group_leaves_its_record_for_the_next_group_with_its_key(strategy: str) -> None:
    q = iopf.Queue(strategy=strategy)
    one = np.array([1])
    first = q.report_batch(groups(one, one, one * 7, 3))
    st = state(q)
    assert (st["parts_used"], st["parts_empty"], st["chains"]) == (1, 1, 1)
    assert q.partial_count == 0
    second = q.report_batch(groups(one, one, one * 7, 4, t=10))
    st = state(q)
    assert (st["parts_used"], st["parts_empty"]) == (1, 1)      # the same record, reused
    assert [len(first[0].faults), len(second[0].faults)] == [3, 4]
    assert list(second[0].faults["time"]) == [10, 11, 12, 13]
    # A lone LPIG on the key finds the record empty: a group of one.
    lone = q.report_batch(groups(one, one, one * 7, 1, t=20))
    assert list(lone[0].faults["time"]) == [20]
    assert state(q)["parts_empty"] == 1


def test_the_list_frees_the_record() -> None:
    """The list's record is a device's whole list: it goes when it empties."""
    q = iopf.Queue(strategy="list")
    one = np.array([1])
    q.report_batch(groups(one, one, one * 7, 3))
    st = state(q)
    assert (st["parts_used"], st["parts_empty"]) == (0, 0)


@pytest.mark.parametrize("strategy", ["hash", "tree"])
def test_empty_records_are_swept_when_keys_do_not_recur(strategy: str) -> None:
    """50,000 groups, each with a key never seen before: without the sweep
    the records would grow to one a group."""
    q = iopf.Queue(strategy=strategy)
    held = groups(np.arange(100), np.full(100, 9), np.zeros(100, int), 2)
    held = held[held["flags"] == P]     # 100 partial groups left open throughout
    q.report_batch(held)
    for b in range(100):
        k = np.arange(b * 500, (b + 1) * 500)
        q.report_batch(groups(1000 + k // 512, 1 + k % 7, k % 512, 2, t=b * 2000))
        st = state(q)
        live = st["parts_used"] - st["parts_empty"]
        assert live == 100
        assert st["parts_empty"] <= st["part_capacity"] // 4 + 500   # swept at a quarter of the pool
        q.respond_batch(q.pending_cookies(), Response.SUCCESS)
    assert state(q)["part_capacity"] <= 2048
    assert q.partial_count == 100


@pytest.mark.parametrize("strategy", ["hash", "tree"])
@pytest.mark.parametrize("how", ["flush", "discard", "remove_device"])
def test_flush_discard_and_removal_free_empty_records(strategy: str, how: str) -> None:
    q = iopf.Queue(strategy=strategy)
    dev = np.array([1, 1, 1, 2])
    pasid = np.array([1, 1, 2, 1])
    q.report_batch(groups(dev, pasid, np.array([5, 6, 5, 5]), 2))    # four empty records
    q.report_batch(groups(dev, pasid, np.array([8, 9, 8, 8]), 2)[::2])  # four open groups
    assert q.partial_count == 4
    st = state(q)
    assert (st["parts_used"], st["parts_empty"]) == (8, 4)
    if how == "flush":
        q.flush_pasid(1, 1)             # (1, 1): two empty records and two partials
        expect = (4, 2, 2)
    elif how == "discard":
        q.discard_partial()
        expect = (0, 0, 0)
    else:
        q.remove_device(1)              # device 1: three of each
        expect = (2, 1, 1)
    st = state(q)
    assert (st["parts_used"], st["parts_empty"], q.partial_count) == expect


def test_every_strategy_forms_the_same_groups_with_recurring_and_new_keys() -> None:
    """Keys that recur (a device cycling through its group ids), keys that do
    not, open groups across batches, a flush between: the groups and their
    faults are the same whatever keeps the partials."""
    rng = np.random.default_rng(7)
    batches = []
    for b in range(30):
        n = 300
        dev = rng.integers(0, 4, n)
        grpid = np.where(rng.random(n) < 0.7, rng.integers(0, 8, n), rng.integers(0, 512, n))
        a = groups(dev, 1 + b % 3 + np.zeros(n, int), grpid, 3, t=b * 10_000)
        a["flags"][rng.random(len(a)) < 0.1] = P        # some LPIGs lost: groups stay open
        batches.append(a)
    outs: dict[str, list[tuple[list[int], list[int]]]] = {}
    for strategy in ("hash", "tree", "list", "python"):
        q = iopf.Queue(strategy=strategy)
        seen = []
        for i, a in enumerate(batches):
            got = q.report_batch(a)
            seen.append((got.faults["time"].tolist(), got.offsets.tolist()))
            q.respond_batch(got.cookies, Response.SUCCESS)
            if i % 7 == 6:
                q.flush_pasid(int(i % 4), 1 + i % 3)
            if strategy != "python":
                core: Any = q.core
                core._check_nodes()
        seen.append(([q.partial_count], []))
        outs[strategy] = seen
    assert outs["hash"] == outs["tree"] == outs["list"] == outs["python"]


@pytest.mark.parametrize("strategy", ["hash", "tree"])
def test_records_of_keys_that_recur_are_kept_while_tables_are_small(strategy: str) -> None:
    """64 devices taking turns, one key each, beside 32 partials that wait:
    the 96 flush chains fill 3/4 of their table, and the next key would
    make it grow. A table that small grows; it must not sweep the records
    of keys that come back a moment later (that made a sweep every few
    groups, and each key's record new again)."""
    q = iopf.Queue(strategy=strategy)
    waiting = groups(np.arange(32), np.full(32, 100), np.zeros(32, int), 2)
    q.report_batch(waiting[waiting["flags"] == P])
    dev = np.arange(1024) % 64
    stream = groups(dev, np.full(1024, 0xFFFF0), np.zeros(1024, int), 4)
    q.report_batch(stream[:256])                  # every key once: 64 empty records
    assert state(q)["parts_empty"] == 64
    fewest = 64
    for i in range(256, len(stream)):
        q.report_batch(stream[i:i + 1])
        fewest = min(fewest, state(q)["parts_empty"])
    assert fewest == 63                           # one in use at a time, none swept
    assert state(q)["parts_used"] == 32 + 64
