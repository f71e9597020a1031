"""The seeded page-request workload generator (``iopf.trace.synthetic``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..types import FAULT_DTYPE, Flag

__all__ = ["synthetic"]


def synthetic(n_faults: int, *, seed: int = 0, devices: int = 4, pasids_per_device: int = 4,
              group_size: tuple[int, int] = (1, 8), interleave: int = 16,
              outstanding: int = 512, lost_lpig: float = 0.0, stop_markers: float = 0.0,
              no_pasid: float = 0.0, needs_pasid: bool = True, start_time: int = 0,
              mean_gap_ns: float = 100) -> np.ndarray:
    """A seeded page-request workload: exactly ``n_faults`` ``FAULT_DTYPE`` records.

    Each device sends its groups in blocks of ``interleave`` groups open at
    once; the requests of a block are interleaved, each group's LPIG after
    all its partials, and the next block starts when every group of the
    block has sent its LPIG. Group sizes are uniform in ``group_size``
    (inclusive), then cut so a block never needs more than ``outstanding``
    requests (the device's PRI credit: it forces the LPIG early, as a real
    device does near its allocation; when the credit cannot hold
    ``interleave`` groups of the smallest size, fewer are open at once).
    Group indices count up per device from a random start and wrap at 512
    (9 bits), so the open groups of a device always have distinct indices.
    The devices' streams are interleaved at random.

    ``lost_lpig``: fraction of groups whose LPIG never comes (their requests
    are all partials). ``stop_markers``: probability that a group is followed
    by a stop marker (LAST_PAGE, perm 0, same PASID and index; only groups
    with a PASID, since a stop marker ends the use of one). ``no_pasid``:
    fraction of groups without PASID_VALID (pasid 0). ``needs_pasid``: set
    NEEDS_PASID on requests with a PASID. Devices are ``0..devices-1``,
    PASIDs ``1..pasids_per_device``; time starts at ``start_time`` and grows
    by exponential gaps of mean ``mean_gap_ns`` (rounded down to whole ns).

    >>> f = synthetic(1000, seed=7)
    >>> len(f), bool((np.diff(f["time"].astype(np.int64)) >= 0).all()), int(f["grpid"].max()) < 512
    (1000, True, True)
    >>> bool((synthetic(1000, seed=7) == f).all())
    True
    """
    lo, hi = (int(x) for x in group_size)
    if n_faults < 0:
        raise ValueError(f"n_faults must be >= 0, not {n_faults}")
    if devices < 1 or pasids_per_device < 1:
        raise ValueError("devices and pasids_per_device must be at least 1")
    if not 1 <= lo <= hi:
        raise ValueError(f"group_size must be (lo, hi) with 1 <= lo <= hi, not {group_size}")
    if not 1 <= interleave <= 512:
        raise ValueError(f"interleave must be in 1..512 (9-bit group index), not {interleave}")
    if outstanding < 1:
        raise ValueError(f"outstanding must be at least 1, not {outstanding}")
    for name, p in (("lost_lpig", lost_lpig), ("stop_markers", stop_markers),
                    ("no_pasid", no_pasid)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], not {p}")
    if mean_gap_ns < 0 or start_time < 0:
        raise ValueError("mean_gap_ns and start_time must be >= 0")
    if n_faults == 0:
        return np.empty(0, FAULT_DTYPE)

    # Fewer groups open at once when the credit cannot give each its minimum size.
    k = max(1, min(interleave, outstanding // lo))
    mean_size = min((lo + hi) / 2, outstanding / k)
    n_groups = int(n_faults / (mean_size + stop_markers) * 1.1) + 16
    while True:
        rng = np.random.default_rng(seed)
        groups = _synthetic_groups(rng, n_groups, n_faults, devices, pasids_per_device,
                                   lo, hi, k, outstanding, lost_lpig, stop_markers, no_pasid)
        if groups is not None:
            break
        n_groups *= 2  # rare: the estimate fell short; redraw, still deterministic
    return _synthetic_records(rng, groups, n_faults, devices, hi, needs_pasid, start_time,
                              mean_gap_ns)


@dataclass
class _Groups:
    dev: np.ndarray        # device of each group (group order)
    grpid: np.ndarray      # 9-bit index
    block: np.ndarray      # global block id, ordered by (device, block)
    size: np.ndarray       # requests, stop marker excluded
    stop: np.ndarray       # bool: a stop marker follows
    pasid: np.ndarray      # 0: no PASID
    lost: np.ndarray       # bool: the LPIG never comes


def _synthetic_groups(rng: np.random.Generator, g: int, n: int, devices: int, pasids: int,
                      lo: int, hi: int, k: int, credit: int, p_lost: float, p_stop: float,
                      p_no_pasid: float) -> _Groups | None:
    # Every draw is made whatever the probabilities, so that for one seed
    # changing, say, lost_lpig changes only the LPIG flags.
    dev = rng.integers(0, devices, g).astype(np.int64)
    size = rng.integers(lo, hi + 1, g).astype(np.int64)
    lost = rng.random(g) < p_lost
    pasid = np.where(rng.random(g) >= p_no_pasid, rng.integers(1, pasids + 1, g), 0)
    # A stop marker ends a PASID's use: a group without PASID has none.
    stop = (rng.random(g) < p_stop) & (pasid != 0)
    first_index = rng.integers(0, 512, devices)

    # Position of each group in its device's sequence: the order that sorts
    # by device (stable) lists each device's groups in sequence.
    by_dev = np.argsort(dev, kind="stable")
    per_dev = np.bincount(dev, minlength=devices)
    dev_start = np.concatenate(([0], np.cumsum(per_dev)[:-1]))
    pos = np.empty(g, np.int64)
    pos[by_dev] = np.arange(g) - dev_start[dev[by_dev]]
    blocks_per_dev = -(-per_dev // k)
    block_base = np.concatenate(([0], np.cumsum(blocks_per_dev)[:-1]))
    block = block_base[dev] + pos // k

    if credit < k * hi:
        size = _cap_to_credit(size, block, pos % k, by_dev, k, credit)

    # Keep the shortest prefix of groups (in generation order) holding n
    # requests and cut its last group to fit exactly. Every cut leaves the
    # remaining groups' blocks and sizes as they were: the credit cap above
    # reserves room for a full block, so it does not depend on later groups.
    emitted = size + stop
    total = np.cumsum(emitted)
    if total[-1] < n:
        return None
    m = int(np.searchsorted(total, n))
    room = n - (int(total[m - 1]) if m else 0)
    if stop[m] and room < 2:
        stop[m] = False
    size[m] = room - int(stop[m])
    sl = slice(0, m + 1)
    grpid = (first_index[dev[sl]] + pos[sl]) % 512
    return _Groups(dev[sl], grpid, block[sl], size[sl], stop[sl], pasid[sl], lost[sl])


def _cap_to_credit(size: np.ndarray, block: np.ndarray, j: np.ndarray, by_dev: np.ndarray,
                   k: int, credit: int) -> np.ndarray:
    """Cut group sizes so each block needs at most ``credit`` requests.

    In block order, group ``j`` of a block may end the block's running total
    at no more than ``L_j = credit - (k - 1 - j)`` (room for one request in
    each later group). The capped running total is ``x_j = min(x_{j-1} +
    s_j, L_j)``, whose closed form ``C_j + min(0, min_{i<=j} (L_i - C_i))``
    (``C`` the uncapped running total) is a segmented running minimum: one
    ``minimum.accumulate`` after shifting each block below the previous ones.
    """
    s = size[by_dev]          # blocks are contiguous in device order
    b = block[by_dev]
    jj = j[by_dev]
    c = np.cumsum(s)
    block_first = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    c_before = np.repeat(c[block_first] - s[block_first], np.diff(np.r_[block_first, len(s)]))
    c = c - c_before          # within-block running total
    limit = credit - (k - 1 - jj)
    spread = credit + k * int(s.max()) + 2   # > range of limit - c
    shift = b * spread
    run_min = np.minimum.accumulate(limit - c - shift) + shift
    x = c + np.minimum(0, run_min)
    capped = np.diff(np.r_[0, x])
    capped[jj == 0] = x[jj == 0]
    out = np.empty_like(size)
    out[by_dev] = capped
    return out


def _synthetic_records(rng: np.random.Generator, grp: _Groups, n: int, devices: int,
                       hi: int, needs_pasid: bool, start_time: int,
                       mean_gap: float) -> np.ndarray:
    # Work in generation order (group after group, where a per-group value
    # spreads with np.repeat) until the final order is known, then gather
    # each field once. Gathering narrow fields beats building the records
    # and permuting them: half the time and 0.8 GB less at 10M faults.
    g = len(grp.size)
    base_page = rng.integers(0x100, 1 << 35, g)  # anywhere in a 47-bit user space
    t0 = rng.integers(0, 1 << 31, g)

    emitted = grp.size + grp.stop
    starts = np.concatenate(([0], np.cumsum(emitted)[:-1]))
    offset = np.arange(n) - np.repeat(starts, emitted)
    size_r = np.repeat(grp.size, emitted)
    is_stop = offset == size_r
    is_lpig = (offset == size_r - 1) & np.repeat(~grp.lost, emitted)

    # When each request leaves the device, within its block: a random start
    # per group then strictly increasing steps, so the LPIG (largest offset)
    # is the group's last request whatever the interleaving. A stop marker
    # takes its LPIG's key and sorts right after it (low bit).
    key = np.cumsum(1 + rng.integers(0, (1 << 31) // hi, n))
    key += np.repeat(t0 - key[starts], emitted)
    stop_at = np.flatnonzero(is_stop)
    key[stop_at] = key[stop_at - 1]
    order_key = (np.repeat(grp.block, emitted) << 34) | (key << 1) | is_stop
    stream = np.argsort(order_key)    # device streams, device after device

    # Merge the device streams at random: shuffle the device labels of the n
    # slots; the i-th slot of device d takes d's i-th request.
    rec_dev = np.repeat(grp.dev, emitted)
    label_dtype = np.uint16 if devices <= 1 << 16 else np.int64
    slots = np.argsort(rng.permutation(rec_dev.astype(label_dtype)), kind="stable")
    order = np.empty(n, np.int64)
    order[slots] = stream
    del stream, slots, order_key, key, rec_dev

    out = np.zeros(n, FAULT_DTYPE)
    rg = np.repeat(np.arange(g, dtype=np.int32 if g < 2**31 else np.int64), emitted)[order]
    out["dev"] = grp.dev[rg]
    out["pasid"] = grp.pasid[rg]
    out["grpid"] = grp.grpid[rg]
    stop_o = is_stop[order]
    pasid_flags = int(Flag.PASID_VALID | (Flag.NEEDS_PASID if needs_pasid else 0))
    out["flags"] = (np.where(grp.pasid != 0, pasid_flags, 0)[rg]
                    | np.where(is_lpig[order] | stop_o, int(Flag.LAST_PAGE), 0))
    perm = np.array([1, 1, 1, 1, 1, 2, 2, 3, 3, 3], np.uint32)[rng.integers(0, 10, n)]
    perm[stop_o] = 0
    out["perm"] = perm
    out["addr"] = np.where(stop_o, 0, (base_page[rg] + offset[order]) << 12)

    gaps = np.floor(rng.exponential(mean_gap, n)).astype(np.uint64) if mean_gap else \
        np.zeros(n, np.uint64)
    gaps[0] = 0
    out["time"] = np.uint64(start_time) + np.cumsum(gaps, dtype=np.uint64)
    return out
