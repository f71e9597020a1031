"""Parsing traces, against baselines in the same run.

* prq_report text (1,000,000 lines of the ftrace ``trace`` layout): ``trace.load``
  (the compiled scanner), the numpy scanner, and the baseline a user would
  write: one compiled regular expression matched line by line over the same
  text (matching only: no conversion to integers). Goal: 1,000,000 lines/s
  and well ahead of the regex.
* CSV (1,000,000 records): ``trace.load`` against ``pyarrow.csv.read_csv``
  on the same file. Goal: at least 80% of pyarrow's speed.

``extra_info["faults"]`` holds the lines or records of one round
(``benchmarks/report.py`` turns it into ns per line).
"""
from __future__ import annotations

import re

import pytest

from iopf import trace
from iopf.trace import _prq_fast, prq_report

N = 1_000_000

# What a user would write for the trace file's lines (the kernel's body after
# the usual ftrace context), compiled once.
USER_REGEX = re.compile(
    r"\s*\S+-\d+\s+\[\d+\]\s+\S+\s+(\d+)\.(\d+):\s+prq_report:\s+(\S+)/(\S+)\s+seq#\s+(\d+):\s+"
    r"rid=0x([0-9a-f]+)\s+addr=0x([0-9a-f]+)\s+([rwxpl-]{5})\s+pasid=0x([0-9a-f]+)\s+"
    r"index=0x([0-9a-f]+)")


@pytest.fixture(scope="module")
def prq_file(synthetic_file):
    return synthetic_file("t.trace", N)


@pytest.fixture(scope="module")
def csv_file(synthetic_file):
    return synthetic_file("t.csv", N)


@pytest.mark.benchmark(group="parse: prq_report text, 1M lines")
def test_prq_load(benchmark, prq_file):
    benchmark.extra_info["faults"] = N
    faults = benchmark.pedantic(trace.load, args=(prq_file,), rounds=3, iterations=1)
    assert len(faults) == N


@pytest.mark.benchmark(group="parse: prq_report text, 1M lines")
def test_prq_numpy_scanner(benchmark, prq_file):
    data = prq_file.read_bytes()
    blocks = _blocks(data)
    benchmark.extra_info["faults"] = N

    def run():
        return sum(len(_prq_fast.parse_numpy(b).lines) for b in blocks)
    assert benchmark.pedantic(run, rounds=2, iterations=1) == N


@pytest.mark.benchmark(group="parse: prq_report text, 1M lines")
def test_prq_regex_baseline(benchmark, prq_file):
    text = prq_file.read_text()
    benchmark.extra_info["faults"] = N

    def run():
        match = USER_REGEX.match
        return sum(1 for line in text.splitlines() if match(line))
    assert benchmark.pedantic(run, rounds=2, iterations=1) == N


@pytest.mark.benchmark(group="parse: prq_report text, 1M lines")
def test_prq_rule_regex(benchmark, prq_file):
    """The project's own rule (the reference every fast line is checked against)."""
    text = prq_file.read_text()
    benchmark.extra_info["faults"] = N

    def run():
        match = prq_report.LINE.fullmatch
        return sum(1 for line in text.splitlines() if match(line))
    assert benchmark.pedantic(run, rounds=1, iterations=1) == N


# Both CSV readers read the same file, each warmed up by one untimed round
# (the file in the page cache, pyarrow imported and its memory pool grown),
# so the rounds compare parsing, not first-time costs.
@pytest.mark.benchmark(group="parse: CSV, 1M records")
def test_csv_load(benchmark, csv_file):
    benchmark.extra_info["faults"] = N
    faults = benchmark.pedantic(trace.load, args=(csv_file,), rounds=7, iterations=1,
                                warmup_rounds=1)
    assert len(faults) == N
    assert (faults == trace.synthetic(N, seed=0)).all()     # the file's records, every field


@pytest.mark.benchmark(group="parse: CSV, 1M records")
def test_csv_pyarrow_baseline(benchmark, csv_file):
    pacsv = pytest.importorskip("pyarrow.csv")
    benchmark.extra_info["faults"] = N
    table = benchmark.pedantic(pacsv.read_csv, args=(csv_file,), rounds=7, iterations=1,
                               warmup_rounds=1)
    assert table.num_rows == N
    assert (table["addr"].to_numpy() == trace.synthetic(N, seed=0)["addr"]).all()


def _blocks(data: bytes, size: int = prq_report.BLOCK_BYTES) -> list[bytes]:
    out, start = [], 0
    while start < len(data):
        cut = data.rfind(b"\n", start, start + size) + 1 if start + size < len(data) else len(data)
        out.append(data[start:cut])
        start = cut
    return out
