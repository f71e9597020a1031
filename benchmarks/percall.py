"""The per-call path against the hand-written dict, rounds interleaved.

    python benchmarks/percall.py [rounds]

pytest-benchmark runs one row's rounds back to back, so on a shared machine
one busy moment can move one row by 30%; here every round runs each variant
once, in turn, and the minimum CPU time (time.process_time) per variant is
kept. Same trace as the ``single`` group: 20,000 faults, 512 open groups,
groups of 4, 64 devices; each completed group is answered at once.

Each loop does what its caller would and no more: the names it calls and
the answer code are bound before the loop, on every side. ``dict, field by
field`` is the hand-written dict for a model that holds scalars (the
``report_values`` loop's unpacking, and a tuple made per fault); the targets
are stated against ``dict`` (the cheaper of the two).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from baselines import DictQueue  # noqa: E402
from workloads import sliding  # noqa: E402

import iopf  # noqa: E402

arr = sliding(20_000, open_groups=512, group_size=4, devices=64)
tuples = arr.tolist()
faults = [iopf.Fault.from_record(r) for r in tuples]


def dict_by_hand() -> None:
    """hand-written dict of lists: report(tuple), respond(cookie)"""
    d = DictQueue()
    report, respond = d.report, d.respond
    for t in tuples:
        g = report(t)
        if g is not None:
            respond(g[0], 0)


def dict_values() -> None:
    """hand-written dict, field by field: report_values(...) makes the tuple"""
    d = DictQueue()
    rv, respond = d.report_values, d.respond
    for t, dev, pasid, grpid, flags, perm, addr, _ in tuples:
        g = rv(dev, pasid, grpid, flags, addr, perm=perm, time=t)
        if g is not None:
            respond(g[0], 0)


def queue_report() -> None:
    """Queue.report(Fault) + group.respond(SUCCESS)"""
    q = iopf.Queue()
    report, ok = q.report, iopf.Response.SUCCESS
    for f in faults:
        g = report(f)
        if g is not None:
            g.respond(ok)


def queue_report_values() -> None:
    """Queue.report_values(dev, pasid, grpid, flags, addr, perm=, time=) + group.respond(0)"""
    q = iopf.Queue()
    rv = q.report_values
    for t, dev, pasid, grpid, flags, perm, addr, _ in tuples:
        g = rv(dev, pasid, grpid, flags, addr, perm=perm, time=t)
        if g is not None:
            g.respond(0)


VARIANTS = [dict_by_hand, dict_values, queue_report, queue_report_values]


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 25
    best = {f: float("inf") for f in VARIANTS}
    for _ in range(rounds):
        for f in VARIANTS:
            t0 = time.process_time()
            f()
            best[f] = min(best[f], time.process_time() - t0)
    base = best[dict_by_hand]
    print("| variant | ns per fault | / dict |\n|---|---:|---:|")
    for f in VARIANTS:
        print(f"| {f.__doc__} | {best[f] / len(tuples) * 1e9:.1f} | {best[f] / base:.2f} |")


if __name__ == "__main__":
    main()
