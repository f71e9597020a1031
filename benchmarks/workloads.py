"""Workloads for the benchmarks: exact control of open groups and group sizes."""
from __future__ import annotations

import numpy as np

from iopf import FAULT_DTYPE, Flag, Perm


def sliding(n_faults: int, open_groups: int, group_size: int, devices: int = 1) -> np.ndarray:
    """A stream that keeps ``open_groups`` groups open at every LPIG.

    Group k's partials arrive as one run; its LPIG arrives after the partials
    of the ``open_groups`` groups opened after it, so every LPIG finds
    ``open_groups`` groups (``open_groups * (group_size - 1)`` partials)
    held. Keys are unique among the open groups: grpid k % 512, PASID from
    k // 512, device k % devices, so one device holds them all by default.
    """
    s = group_size
    n_groups = max(1, -(-n_faults // s)) + open_groups
    k = np.arange(n_groups)
    slot = k % open_groups
    dev = (slot % devices).astype(np.uint32)
    pasid = (1 + slot // devices // 512).astype(np.uint32)
    grpid = ((slot // devices) % 512).astype(np.uint32)
    # Block b: the LPIG of group b - open_groups (if any), then the partials of group b.
    parts = np.repeat(k, s - 1)
    order_part = np.repeat(k * s + 1, s - 1) + np.tile(np.arange(s - 1), n_groups)
    lp = k[k >= open_groups] - open_groups
    order_lp = (lp + open_groups) * s
    group = np.concatenate([parts, lp])
    order = np.concatenate([order_part, order_lp])
    is_last = np.concatenate([np.zeros(len(parts), bool), np.ones(len(lp), bool)])
    idx = np.argsort(order, kind="stable")[:n_faults]
    g = group[idx]
    out = np.zeros(len(idx), dtype=FAULT_DTYPE)
    out["time"] = np.arange(len(idx), dtype=np.uint64) * 10
    out["dev"] = dev[g]
    out["pasid"] = pasid[g]
    out["grpid"] = grpid[g]
    out["flags"] = Flag.PASID_VALID | np.where(is_last[idx], Flag.LAST_PAGE, 0).astype(np.uint32)
    out["perm"] = Perm.READ
    out["addr"] = (np.arange(len(idx), dtype=np.uint64) & 0xFFFFF) << 12
    return out


def held_partials(n: int, devices: int = 1, group_size: int = 1) -> np.ndarray:
    """n partials in distinct groups (or groups of group_size), never completed."""
    k = np.arange(n) // group_size
    out = np.zeros(n, dtype=FAULT_DTYPE)
    out["dev"] = k % devices
    out["pasid"] = 100 + (k // devices) // 512
    out["grpid"] = (k // devices) % 512
    out["flags"] = Flag.PASID_VALID
    out["perm"] = Perm.READ
    return out
