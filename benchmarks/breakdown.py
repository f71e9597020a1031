"""Where the batch time goes: the report_batch + respond_batch loop of the
benchmarks, taken apart one layer at a time, next to the C floor.

    python benchmarks/breakdown.py [rounds] [--fixed-heap] [--chunks]

Each variant runs the same 400,000-fault trace (512 open groups, groups of
4, 64 devices) in 64K-fault chunks; CPU time (time.process_time), the
minimum of the rounds, variants interleaved so that noise hits all alike.

Every variant keeps a chunk's output until the next chunk's is made, as a
caller holding its ``GroupBatch`` does (and as the floor reuses one buffer):
dropping it at once lets the next chunk write into the same, cache-warm
block, a few ns/fault that the public row would otherwise be charged with.
The last row differs from the one before it only by the Python layer
(queue.py: the batch checks, the lock, GroupBatch, the answer code).

--chunks times the public pair and the floor chunk by chunk instead: a new
queue's first chunks also pay for its first use (tables and pools growing
to their working size, output memory touched for the first time), the
later ones show the steady state a long replay runs at.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import fixed_heap  # noqa: E402
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


def by_chunk(rounds: int) -> None:
    """The public pair (report_batch; respond_batch + take_responses) and the
    floor, each chunk timed alone: minimum over the rounds, ns per fault."""
    best: dict[tuple[str, int], float] = {}

    def keep(name: str, j: int, t: float) -> None:
        best[name, j] = min(best.get((name, j), float("inf")), t)

    for _ in range(rounds):
        q = iopf.Queue()
        for j, c in enumerate(chunks):
            t0 = time.process_time()
            b = q.report_batch(c)
            t1 = time.process_time()
            q.respond_batch(b.cookies, 0)
            q.take_responses()
            keep("report_batch", j, t1 - t0)
            keep("respond_batch + take_responses", j, time.process_time() - t1)
        f = CFloor()
        for j, c in enumerate(chunks):
            t0 = time.process_time()
            f.run(c)
            keep("floor", j, time.process_time() - t0)
    names = ["report_batch", "respond_batch + take_responses", "floor"]
    print("| chunk | faults | " + " | ".join(names) + " | pair x floor |")
    print("|---:|---:|" + "---:|" * (len(names) + 1))
    for j, c in enumerate(chunks):
        ns = [best[name, j] / len(c) * 1e9 for name in names]
        print(f"| {j} | {len(c)} | " + " | ".join(f"{x:.1f}" for x in ns)
              + f" | {(ns[0] + ns[1]) / ns[2]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", type=int, nargs="?", default=9)
    parser.add_argument("--fixed-heap", action="store_true",
                        help="fix glibc's heap first (fixed_heap.py), so the rows measure the code")
    parser.add_argument("--chunks", action="store_true",
                        help="the public pair and the floor chunk by chunk (first use, steady state)")
    args = parser.parse_args()
    if args.fixed_heap:
        print(f"malloc: {fixed_heap.fix()}")
    rounds = args.rounds
    if args.chunks:
        by_chunk(rounds)
        return
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
