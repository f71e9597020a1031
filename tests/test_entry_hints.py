"""An LPIG finds the entry of its (device, PASID), which holds its handler
and the queue of its pending groups, through a hint: the entry found last
for a (device, PASID) with the same slot of a small table of hints. A hint
is a guess that is checked against the key before use. These tests give the
hints more keys than slots (so keys share slots whatever the slot
function), and entries that are deleted and whose records other keys
reuse; every group must reach its own handler, and every strategy must
answer as the twin does.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import iopf
from iopf import FAULT_DTYPE, Response

STRATEGIES = ["hash", "tree", "list", "python"]
KEYS = 600          # more (device, PASID) keys than the 256 hint slots
P, LAST = 1, 3


def round_robin(keys: np.ndarray, rounds: int, size: int, seed: int) -> np.ndarray:
    """`rounds` groups of `size` faults for every (dev, pasid) of keys, each
    round in a new random order of the keys; group ids go up per key."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(keys)) for _ in range(rounds)])
    k = np.repeat(order, size)
    n = len(k)
    a = np.zeros(n, FAULT_DTYPE)
    a["time"] = np.arange(n)
    a["dev"], a["pasid"] = keys[k, 0], keys[k, 1]
    a["grpid"] = np.repeat(np.arange(len(order)) // len(keys), size)
    a["flags"] = P | iopf.Flag.PASID_VALID
    a["flags"][size - 1::size] = LAST | iopf.Flag.PASID_VALID
    a["perm"] = 1
    a["addr"] = np.arange(n) << 12
    return a


def some_keys(n: int) -> np.ndarray:
    """n distinct (dev, pasid): few devices with many PASIDs, and many with one."""
    devs = np.concatenate([np.repeat(np.arange(4), n // 8), np.arange(100, 100 + n - 4 * (n // 8))])
    pasids = np.concatenate([np.tile(np.arange(1, n // 8 + 1), 4), np.full(n - 4 * (n // 8), 9)])
    keys = np.stack([devs, pasids], axis=1)
    assert len({(int(d), int(p)) for d, p in keys}) == n
    return keys


def check(q: iopf.Queue) -> None:
    if q.strategy != "python":
        core: Any = q.core      # the compiled core (the twin has no entries to check)
        core._check_nodes()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_group_reaches_the_handler_of_its_own_key(strategy: str) -> None:
    keys = some_keys(KEYS)
    q = iopf.Queue(strategy=strategy)
    got: dict[tuple[int, int], list[int]] = {}

    def handler_for(key: tuple[int, int]) -> Any:
        def handler(group: iopf.Group) -> Response:
            faults = group.faults
            assert {(int(d), int(p)) for d, p in zip(faults["dev"], faults["pasid"])} == {key}
            got.setdefault(key, []).append(int(faults["grpid"][0]))
            return Response.SUCCESS
        return handler
    for d, p in keys:
        q.attach(int(d), int(p), handler_for((int(d), int(p))))
    q.report_batch(round_robin(keys, rounds=3, size=4, seed=1))
    check(q)
    assert got == {(int(d), int(p)): [0, 1, 2] for d, p in keys}
    assert len(q.pending()) == 0 and q.partial_count == 0


def answers(strategy: str, seed: int) -> tuple[bytes, int]:
    """Groups without a handler: each (dev, PASID) gets its entry when a group
    goes pending and loses it when the group is answered, so records go and
    are reused by other keys between rounds. The responses, and the check."""
    keys = some_keys(KEYS)
    q = iopf.Queue(strategy=strategy)
    trace = round_robin(keys, rounds=4, size=2, seed=seed)
    out = []
    per_round = 2 * KEYS
    for r in range(4):
        batch = q.report_batch(trace[r * per_round:(r + 1) * per_round])
        # Answer every other group, newest first: entries go in another order
        # than they came, and half of them stay for the next round.
        q.respond_batch(batch.cookies[::-2], Response.SUCCESS)
        check(q)
        out.append(q.take_responses().tobytes())
    q.respond_batch(np.array([g.cookie for g in q.pending()], np.uint64), Response.INVALID)
    out.append(q.take_responses().tobytes())
    check(q)
    return b"".join(out), len(q.pending())


@pytest.mark.parametrize("strategy", ["hash", "tree", "list"])
@pytest.mark.parametrize("seed", [1, 2])
def test_entries_that_go_and_come_back_answer_as_the_twin(strategy: str, seed: int) -> None:
    got, left = answers(strategy, seed)
    assert left == 0
    assert got == answers("python", seed)[0]
