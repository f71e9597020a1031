"""Benchmarks: run with ``python -m pytest benchmarks --benchmark-only``.

Every group holds the strategies it compares (and the pure-Python twin as the
baseline) so that ratios come from one run on one machine. Each benchmark
stores how many faults one round handles in ``extra_info["faults"]``, from
which ``benchmarks/report.py`` computes ns per fault.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# numpy's OpenBLAS threads spin on the second core between calls; the
# benchmarks use no BLAS, so keep them from stealing the machine's other core.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))  # for `import workloads`

import fixed_heap  # noqa: E402

# Before any benchmark allocates: the same heap for every contender (fixed_heap.py).
MALLOC = fixed_heap.fix()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["malloc"] = MALLOC       # report.py prints it with the results


@pytest.fixture(scope="session")
def synthetic_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int], Path]:
    """``synthetic_file(name, n)``: ``trace.synthetic(n, seed=0)`` saved as
    ``name`` in a fresh directory (its extension picks the format): the input
    of the benchmarks that read a trace file."""
    from iopf import trace   # here: numpy must come after OPENBLAS_NUM_THREADS above

    def make(name: str, n: int) -> Path:
        path = tmp_path_factory.mktemp("trace") / name
        trace.save(path, trace.synthetic(n, seed=0))
        return path

    return make
