"""The interleaved benchmark scripts the README and benchmarks/RESULTS.md quote
run and print their tables (one round each: this checks that they work, not
what they measure; the numbers come from running them as documented)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import iopf_core

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.skipif(not iopf_core.COMPILED or not BENCH.is_dir(),
                                reason="the scripts time the compiled core, from a source checkout")


def floor_available() -> bool:
    sys.path.insert(0, str(BENCH))
    try:
        from baselines import floor_available as available
        return bool(available())
    finally:
        sys.path.remove(str(BENCH))


def run_script(*args: str) -> str:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH / args[0]), *args[1:]], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def table_rows(out: str) -> list[list[str]]:
    """The body rows of the markdown table(s) a script printed, as cells."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("|") and not line.startswith("|---")]


def test_percall_prints_every_variant_against_the_dict() -> None:
    rows = table_rows(run_script("percall.py", "1"))
    assert rows[0] == ["variant", "ns per fault", "/ dict"]
    assert len(rows) == 5 and rows[1][2] == "1.00"       # the dict is its own baseline
    assert all(float(r[1]) > 0 for r in rows[1:])


@pytest.mark.skipif(not floor_available(), reason="no C compiler for the floor")
def test_breakdown_prints_every_layer_against_the_floor() -> None:
    rows = table_rows(run_script("breakdown.py", "1"))
    assert rows[0] == ["variant", "ns per fault", "x floor"]
    assert len(rows) == 6 and rows[1][2] == "1.00"
    assert all(float(r[1]) > 0 for r in rows[1:])


@pytest.mark.skipif(not floor_available(), reason="no C compiler for the floor")
def test_breakdown_chunks_prints_one_row_per_chunk() -> None:
    rows = table_rows(run_script("breakdown.py", "1", "--chunks"))
    assert rows[0][:2] == ["chunk", "faults"] and rows[0][-1] == "pair x floor"
    body = rows[1:]
    # 400,000 faults in 64K chunks: six whole chunks and the rest.
    assert [int(r[0]) for r in body] == list(range(7))
    assert sum(int(r[1]) for r in body) == 400_000
    for r in body:
        report, respond, floor, ratio = (float(x) for x in r[2:])
        assert ratio == pytest.approx((report + respond) / floor, rel=0.02)   # cells rounded


@pytest.mark.skipif(not floor_available(), reason="no C compiler for the floor")
def test_lpig_rounds_prints_the_ratio_of_its_rows() -> None:
    out = run_script("lpig_rounds.py", "1")
    ns = {r[0]: float(r[1]) for r in table_rows(out)[1:]}
    assert set(ns) == {"hash", "tree", "list", "floor", "floor-list"}
    ratio = float(out.rsplit("list / hash:", 1)[1].strip().rstrip("x"))
    assert ratio == pytest.approx(ns["list"] / ns["hash"], rel=0.06)   # both rounded to 0.1


REFILL = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import fixed_heap
mode = fixed_heap.fix()
def refill():
    b = bytearray(8 << 20)          # 8 MiB, zeroed: every page written
    del b
refill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
refill()
print(mode, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


# fixed_heap.py sets glibc's thresholds: not where another allocator serves
# malloc (the sanitizer job preloads ASan's, whose mallopt does nothing).
glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None
                                or bool(os.environ.get("LD_PRELOAD")),
                                reason="glibc's own malloc only")


@glibc_only
@pytest.mark.parametrize("setting", ["", "default"])
def test_fixed_heap_reuses_a_freed_block_unless_told_not_to(setting: str) -> None:
    """fixed_heap.fix(): a large block freed and allocated again is heap
    memory already faulted in (a few page faults). IOPF_BENCH_MALLOC=default
    leaves glibc as it is (which maps such a block afresh: a fault for each
    of its 2,048 pages here, fewer where the kernel gives it huge pages)."""
    env = {**os.environ, "IOPF_BENCH_MALLOC": setting}
    done = subprocess.run([sys.executable, "-c", REFILL, str(BENCH)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    mode, faults = done.stdout.split()
    if setting == "default":
        assert mode == "default"
    else:
        assert mode == "fixed" and int(faults) < 200


@glibc_only
def test_breakdown_fixed_heap_says_so() -> None:
    out = run_script("breakdown.py", "1", "--fixed-heap")
    assert out.splitlines()[0] == "malloc: fixed"
    assert len(table_rows(out)) == 6
