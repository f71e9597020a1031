"""List, tree and hash: LPIG completion against outstanding groups, flush, discard,
memory (the question of seeds/003: is a tree or hash worth it for 512 outstanding?)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from baselines import CFloor, DictQueue, floor_available
from workloads import held_partials, sliding

import iopf
import iopf_core

STRATEGIES = ["hash", "tree", "list", "python"]
#: Next to the twin: hand-written dict of lists, plain C hash and plain C list (floor.c).
BASELINES = ["dict", "floor", "floor-list"]
STREAM = 4096


def stream(group_size: int, devices: int) -> np.ndarray:
    """Groups that arrive whole, one after another, keyed apart from the background."""
    s = sliding(STREAM, open_groups=1, group_size=group_size, devices=1)
    s["pasid"] = 0xFFFF0
    s["dev"] = np.arange(len(s)) // group_size % devices
    return s


def steady_floor(kind: str, background: np.ndarray, work: np.ndarray) -> CFloor:
    """The plain C grouping ("hash" or "list") holding background, after one pass of work."""
    f = CFloor(kind)
    f.run(background)
    f.run(work)
    return f


def steady_queue(strategy: str, background: np.ndarray, work: np.ndarray) -> iopf.Queue:
    """A queue holding background, after one pass of work, answered: its
    tables are at their steady size, so that what is timed next is LPIG
    completion, not one table resize."""
    q = iopf.Queue(strategy=strategy)
    q.report_batch(background)
    q.report_batch(work).respond(iopf.Response.SUCCESS)
    q.take_responses()
    return q


def lpig_case(benchmark, strategy, outstanding, devices, group_size):
    background = held_partials(outstanding, devices=devices)
    work = stream(group_size, devices)
    benchmark.extra_info.update(faults=len(work), outstanding=outstanding, devices=devices,
                                group_size=group_size)
    if strategy.startswith("floor"):
        if not floor_available():
            pytest.skip("no C compiler for the floor")

        def setup_floor():
            return (steady_floor("list" if strategy == "floor-list" else "hash", background, work),), {}
        slow_list = strategy == "floor-list" and outstanding // devices >= 4096
        benchmark.pedantic(lambda f: f.run(work), setup=setup_floor, rounds=3 if slow_list else 10,
                           iterations=1)
        return
    if strategy == "dict":
        bg, tuples = background.tolist(), work.tolist()

        def setup_dict():
            d = DictQueue()
            d.report_batch(bg)
            for cookie, _ in d.report_batch(tuples):
                d.respond(cookie, 0)
            return (d,), {}
        benchmark.pedantic(lambda d: d.report_batch(tuples), setup=setup_dict, rounds=10,
                           iterations=1)
        return

    def setup():
        return (steady_queue(strategy, background, work),), {}

    def run(q):
        q.report_batch(work)
    slow = strategy == "python" or (strategy == "list" and outstanding // devices >= 4096)
    benchmark.pedantic(run, setup=setup, rounds=3 if slow else 10, iterations=1)


@pytest.mark.parametrize("strategy", STRATEGIES + BASELINES)
@pytest.mark.parametrize("outstanding", [32, 512, 4096, 65536])
@pytest.mark.parametrize("devices", [1, 64])
def test_lpig_vs_outstanding(benchmark, strategy, outstanding, devices):
    benchmark.group = f"lpig: {outstanding} outstanding groups on {devices} device(s), groups of 4"
    lpig_case(benchmark, strategy, outstanding, devices, 4)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("group_size", [1, 32])
def test_lpig_group_size(benchmark, strategy, group_size):
    benchmark.group = f"lpig: 512 outstanding groups on 1 device(s), groups of {group_size}"
    lpig_case(benchmark, strategy, 512, 1, group_size)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("held", [10, 1000, 100_000, 1_000_000])
def test_flush_pasid(benchmark, strategy, held):
    """Report 10 partials of one PASID and flush them, among `held` other partials."""
    if strategy == "python" and held > 100_000:
        pytest.skip("the twin's flush scans every partial: capped at 100,000")
    benchmark.group = f"flush: 10 faults of one PASID among {held} held partials"
    q = iopf.Queue(strategy=strategy)
    q.report_batch(held_partials(held))
    mine = held_partials(10)
    mine["pasid"] = 7

    def run():
        q.report_batch(mine)
        q.flush_pasid(0, 7)
    benchmark.extra_info.update(faults=10, held=held)
    benchmark(run)
    assert q.partial_count == held


@pytest.mark.benchmark(group="discard: 100,000 held partials")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_discard(benchmark, strategy):
    background = held_partials(100_000, devices=8, group_size=8)

    def setup():
        q = iopf.Queue(strategy=strategy)
        q.report_batch(background)
        return (q,), {}
    benchmark.extra_info["faults"] = len(background)
    benchmark.pedantic(lambda q: q.discard_partial(), setup=setup, rounds=5, iterations=1)


#: How the held partials are keyed: (devices, group size) of held_partials.
LAYOUTS = {"groups of 1": (1, 1), "groups of 4": (1, 4), "groups of 8": (1, 8),
           "one per (dev, PASID)": (100_000, 1)}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_memory_per_held_fault(benchmark, strategy, layout):
    """Times holding the partials; bytes per held fault in extra_info: the
    core's trace domain (tracemalloc) for the compiled strategies, every
    Python object for the twin."""
    devices, group_size = LAYOUTS[layout]
    benchmark.group = f"memory: hold 100,000 partials, {layout}"
    background = held_partials(100_000, devices=devices, group_size=group_size)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    q = iopf.Queue(strategy=strategy)
    q.report_batch(background)
    if strategy == "python":
        held = tracemalloc.get_traced_memory()[0] - base
    else:
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.DomainFilter(True, iopf_core.TRACE_DOMAIN)])
        held = sum(t.size for t in snap.traces)
        assert held == q.sizeof()
    tracemalloc.stop()
    benchmark.extra_info.update(faults=len(background),
                                bytes_per_fault=round(held / len(background), 1))
    del q
    benchmark.pedantic(lambda: iopf.Queue(strategy=strategy).report_batch(background),
                       rounds=3, iterations=1)
