"""glibc's heap, fixed for the benchmarks, so that they measure code rather
than which blocks the process freed before.

glibc puts a large block in a mapping of its own, returns it to the kernel
when it is freed, and raises that size threshold (and the one at which it
trims the top of its heap) to the size of the largest such block freed so
far. So whether a benchmark's large buffers (a batch's output, a table)
are memory the heap already has, or fresh pages the kernel must fault in
and zero (about 1.7 us a 4 KiB page on the machine of benchmarks/RESULTS.md),
depends on what ran earlier in the process: the pair of the batch benchmarks
measured 2.4x the C floor in a full run and 3.3x alone, where only the
queue, the first to run, faulted its pages in every round.

fix() sets both thresholds once, for every contender alike: blocks up to
64 MiB come from the heap, and the heap keeps what is freed, so a round
after the first reuses memory whatever ran before. IOPF_BENCH_MALLOC=default
keeps glibc's own settings (the benchmarks then record "malloc: default").
"""
from __future__ import annotations

import ctypes
import os
import platform

#: mallopt's parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 1 << 30
#: Set to "default" to leave glibc's allocator as it is.
ENV = "IOPF_BENCH_MALLOC"


def fix() -> str:
    """Fix the thresholds if this is glibc and ENV does not say otherwise;
    what the allocator runs with: "fixed" or "default"."""
    if os.environ.get(ENV) == "default" or platform.libc_ver()[0] != "glibc":
        return "default"
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return "default"
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return "fixed" if done else "default"
