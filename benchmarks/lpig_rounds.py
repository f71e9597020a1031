"""LPIG cost, 512 outstanding groups on one device, rounds interleaved.

    python benchmarks/lpig_rounds.py [rounds]

The same case as the ``lpig: 512 outstanding groups on 1 device(s), groups
of 4`` group of test_bench_groupers.py (the same setup: the background
partials held, one pass of the stream answered, then the stream's 4,096
faults timed), but every round runs each strategy once, in turn, and the
minimum CPU time (time.process_time) per strategy is kept, so that a busy
moment of a shared machine hits all of them alike. Prints ns per fault and
list / hash, the ratio of the issue's goal.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))
from baselines import floor_available  # noqa: E402
from test_bench_groupers import steady_floor, steady_queue, stream  # noqa: E402
from workloads import held_partials  # noqa: E402

background = held_partials(512, devices=1)
work = stream(4, 1)


def queue(strategy: str) -> Callable[[], Callable[[], Any]]:
    """Set up a queue as the benchmark does; the call to time."""
    def setup() -> Callable[[], Any]:
        q = steady_queue(strategy, background, work)
        return lambda: q.report_batch(work)
    return setup


def floor(kind: str) -> Callable[[], Callable[[], Any]]:
    """Set up the plain C loop as the benchmark does; the call to time."""
    def setup() -> Callable[[], Any]:
        f = steady_floor(kind, background, work)
        return lambda: f.run(work)
    return setup


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    variants = {"hash": queue("hash"), "tree": queue("tree"), "list": queue("list")}
    if floor_available():
        variants.update({"floor": floor("hash"), "floor-list": floor("list")})
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):
        for name, setup in variants.items():
            run = setup()
            t0 = time.process_time()
            run()
            best[name] = min(best[name], time.process_time() - t0)
    print("| strategy | ns per fault |\n|---|---:|")
    for name, t in best.items():
        print(f"| {name} | {t / len(work) * 1e9:.1f} |")
    print(f"\nlist / hash: {best['list'] / best['hash']:.1f}x")


if __name__ == "__main__":
    main()
