"""Benchmarks: run with ``python -m pytest benchmarks --benchmark-only``.

Every group holds the strategies it compares (and the pure-Python twin as the
baseline) so that ratios come from one run on one machine. Each benchmark
stores how many faults one round handles in ``extra_info["faults"]``, from
which ``benchmarks/report.py`` computes ns per fault.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# numpy's OpenBLAS threads spin on the second core between calls; the
# benchmarks use no BLAS, so keep them from stealing the machine's other core.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))  # for `import workloads`
