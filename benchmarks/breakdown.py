"""Where the batch time goes: the report_batch + respond_batch loop of the
benchmarks, taken apart one layer at a time, next to the C floor.

    python benchmarks/breakdown.py [rounds] [--fixed-heap]

Each variant runs the same 400,000-fault trace (512 open groups, groups of
4, 64 devices) in 64K-fault chunks; CPU time (time.process_time), the
minimum of the rounds, variants interleaved so that noise hits all alike.

Every variant keeps a chunk's output until the next chunk's is made, as a
caller holding its ``GroupBatch`` does (and as the floor reuses one buffer):
dropping it at once lets the next chunk write into the same, cache-warm
block, a few ns/fault that the public row would otherwise be charged with.
The last row differs from the one before it only by the Python layer
(queue.py: the batch checks, the lock, GroupBatch, the answer code).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from baselines import CFloor  # noqa: E402
from workloads import sliding  # noqa: E402

import iopf  # noqa: E402

N, CHUNK = 400_000, 1 << 16
trace = sliding(N, open_groups=512, group_size=4, devices=64)
chunks = [trace[i:i + CHUNK] for i in range(0, N, CHUNK)]


def floor() -> None:
    """plain C: group, copy each group out, write its response (floor.c)"""
    f = CFloor()
    for c in chunks:
        f.run(c)


def core_run_auto() -> None:
    """core, groups answered in C as they form (constant handler), no checks"""
    g = iopf.Queue(default_handler=iopf.Response.SUCCESS).core
    for c in chunks:
        g.run(c)
        out = g.take_groups()   # noqa: F841 - held until the next chunk, as a caller does
        g.take_responses()


def core_run_respond() -> None:
    """core: run + take_groups + respond_batch + take_responses, no checks"""
    g = iopf.Queue().core
    for c in chunks:
        g.run(c)
        out = g.take_groups()
        g.respond_batch(out[2], np.zeros(len(out[2]), np.uint32))
        g.take_responses()


def core_checked() -> None:
    """as above, plus the check of every record before each chunk"""
    g = iopf.Queue().core
    for c in chunks:
        g.check(c)
        g.run(c)
        out = g.take_groups()
        g.respond_batch(out[2], np.zeros(len(out[2]), np.uint32))
        g.take_responses()


def queue_pair() -> None:
    """public API: Queue.report_batch + Queue.respond_batch + take_responses"""
    q = iopf.Queue()
    for c in chunks:
        b = q.report_batch(c)
        q.respond_batch(b.cookies, 0)
        q.take_responses()


VARIANTS = [floor, core_run_auto, core_run_respond, core_checked, queue_pair]


#: glibc reads it at start-up: a fixed mmap threshold (see --fixed-heap).
FIXED_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", type=int, nargs="?", default=9)
    parser.add_argument("--fixed-heap", action="store_true",
                        help="fix glibc's mmap threshold first, so the rows measure the code")
    args = parser.parse_args()
    if args.fixed_heap and any(os.environ.get(k) != v for k, v in FIXED_HEAP.items()):
        # glibc raises its mmap threshold to the size of any large block the
        # process frees, so whether a variant's large buffers are fresh
        # mappings, which the kernel faults in, or heap memory freed before
        # depends on what ran earlier: the floor moves from 10 to 20 ns a
        # fault with it. A threshold fixed from the start puts every block of
        # these sizes on the heap for all variants alike. (Other C libraries
        # ignore the variable.)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **FIXED_HEAP})
    rounds = args.rounds
    best = {f.__name__: float("inf") for f in VARIANTS}
    for _ in range(rounds):
        for f in VARIANTS:
            t0 = time.process_time()
            f()
            best[f.__name__] = min(best[f.__name__], time.process_time() - t0)
    base = best["floor"]
    print("| variant | ns per fault | x floor |\n|---|---:|---:|")
    for f in VARIANTS:
        ns = best[f.__name__] / N * 1e9
        print(f"| {f.__doc__} | {ns:.1f} | {best[f.__name__] / base:.2f} |")


if __name__ == "__main__":
    main()
