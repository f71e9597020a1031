"""The hash of a partial group's key (device, key PASID, group id) spreads
the keys a trace has over the low bits the index tables take.

The tables probe linearly and fill to 3/4 before they grow: a hash that
left structure in its low bits (devices that differ only above bit 8, as
bus numbers do; PASIDs or group ids in steps of a power of two) would put
such keys in runs, and every search would walk them. Each key set below is
put in a table of that load, with the core's own hash, and the probes a
search takes are counted: on average they stay near what a random hash
gives at that load (2.5), and no run grows much longer than a random
hash's longest (about 150 slots of 16384 at this load).
"""
from __future__ import annotations

import pytest

from iopf_core.grouper import _part_hash

N = 24 * 512         # keys a set: 3/4 of a table of 16384 slots
CAP = 1 << 14


def key_sets() -> dict[str, list[tuple[int, int, int]]]:
    return {
        "devices x group ids": [(d, 1, g) for d in range(24) for g in range(512)],
        "devices apart by 256 (bus numbers)": [(d << 8, 1, g) for d in range(24) for g in range(512)],
        "devices apart by 65536": [(d << 16, p, 0) for d in range(24) for p in range(512)],
        "PASIDs apart by 1024": [(1, p << 10, g) for p in range(24) for g in range(512)],
        "one device, PASIDs x group ids": [(0, 1 + k // 512, k % 512) for k in range(N)],
        "group ids apart by 16": [(d, 1, g << 4) for d in range(24) for g in range(512)],
        "one key PASID, devices only": [(d, 0xFFFFFFFF, 0) for d in range(N)],
        "large values": [(0xFFFF0000 + d, 0xFFFFF - p, 511) for d in range(24) for p in range(512)],
    }


def probes(keys: list[tuple[int, int, int]]) -> tuple[float, int]:
    """Insert keys in a linear-probing table of CAP slots (filled to 3/4,
    itab_reserve's most): the mean and the longest number of slots a search
    for one of them reads."""
    cap = CAP
    taken = [False] * cap
    total = longest = 0
    for k in keys:
        i, n = _part_hash(*k) & (cap - 1), 1
        while taken[i]:
            i, n = (i + 1) & (cap - 1), n + 1
        taken[i] = True
        total += n
        longest = max(longest, n)
    return total / len(keys), longest


@pytest.mark.parametrize("name", list(key_sets()))
def test_structured_keys_probe_as_random_keys_do(name: str) -> None:
    keys = key_sets()[name]
    assert len(set(keys)) == len(keys) == N
    mean, longest = probes(keys)
    assert mean <= 3.0, (name, mean)
    assert longest <= 200, (name, longest)


def test_the_counting_finds_a_hash_that_keeps_structure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The measure has teeth: a hash that is the sum of the fields, with
    devices apart by 256, puts the keys of 24 devices in overlapping runs."""
    monkeypatch.setitem(globals(), "_part_hash", lambda d, p, g: d + p + g)
    mean, longest = probes(key_sets()["devices apart by 256 (bus numbers)"])
    assert mean > 3.0 or longest > 200
