"""A Cython consumer compiled against the installed package's .pxd files."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import iopf

pytest.importorskip("Cython")
HERE = Path(__file__).parent / "cython_consumer"


def test_cython_consumer_cimports_the_core(tmp_path):
    shutil.copy(HERE / "consumer.pyx", tmp_path)
    (tmp_path / "setup.py").write_text(textwrap.dedent("""
        from Cython.Build import cythonize
        from setuptools import setup
        setup(ext_modules=cythonize("consumer.pyx", quiet=True), script_args=["build_ext", "--inplace"])
    """))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "setup.py"], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = next(tmp_path.glob("consumer*.so"))
    spec = importlib.util.spec_from_file_location("consumer", built)
    consumer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(consumer)

    for strategy in ("hash", "tree", "list"):
        q = iopf.Queue(strategy=strategy)
        assert consumer.group_in_c(q.core, 1000, 4) == 1000
        s = q.stats
        assert (s.groups, s.grouped, s.pending_now, s.partial_now) == (1000, 4000, 1000, 0)
        g = q.pending()[0]
        assert len(g) == 4 and g.dev == 1 and g.pasid == 2 and g.faults["addr"].tolist() == [0, 4096, 8192, 12288]
        # A FAULT_DTYPE array passes as a typed memoryview of FaultRec.
        trace = iopf.trace.synthetic(5000, seed=4)
        twin = iopf.Queue(strategy="python")
        expected = twin.report_batch(trace)
        assert consumer.feed(q.core, trace) == (len(expected), 0)
        # collect=True: the groups go to the batch output one request at a
        # time (no room reserved ahead, as run() reserves it), the same as a batch.
        q = iopf.Queue(strategy=strategy)
        assert consumer.feed(q.core, trace, True) == (len(expected), 0)
        faults, offsets, cookies = q.core.take_groups()
        assert faults.tobytes() == expected.faults.tobytes()
        assert offsets.tolist() == expected.offsets.tolist()
        assert cookies.tolist() == expected.cookies.tolist()
        q.core._check_nodes()
        if strategy in ("hash", "tree"):
            # Its empty partial group records swept at nearly every new group: the same.
            q = iopf.Queue(strategy=strategy)
            q.core._debug_sweep_ratio(1024)
            assert consumer.feed(q.core, trace, True) == (len(expected), 0)
            q.core._check_nodes()
            faults, offsets, cookies = q.core.take_groups()
            assert faults.tobytes() == expected.faults.tobytes()
            assert offsets.tolist() == expected.offsets.tolist()
        # The checked entry: a documented result, never "call a Python handler".
        from iopf_core import grouper as G
        q = iopf.Queue(strategy=strategy)
        q.attach(1, 2, lambda g: 0)                       # a Python handler
        q.attach(1, 3, iopf.Response.SUCCESS)             # a constant one
        before = q.stats
        assert consumer.report_one(q.core, 1, 1, 2, 600, 3, 1) == G.ReportResult.REPORT_REFUSED   # grpid > 9 bits
        assert consumer.report_one(q.core, 1, 1, 2, 5, 0x13, 1) == G.ReportResult.REPORT_REFUSED  # flags > 4 bits
        assert consumer.report_one(q.core, 1, 1, 1 << 20, 5, 3, 1) == G.ReportResult.REPORT_REFUSED
        assert q.stats == before
        assert consumer.report_one(q.core, 1, 1, 2, 5, 1, 1) == G.ReportResult.REPORT_HELD
        assert consumer.report_one(q.core, 2, 1, 2, 5, 3, 1) == G.ReportResult.REPORT_GROUPED      # left pending
        assert consumer.report_one(q.core, 3, 1, 3, 5, 3, 1) == G.ReportResult.REPORT_ANSWERED
        assert [len(g) for g in q.pending()] == [2]
        assert q.stats.conserved()

    # A request from C, without the GIL, that times out the last group of a
    # batch output the grouper keeps: the output goes as that call ends (the
    # grouper takes the GIL for it).
    import gc
    import weakref
    import numpy as np
    # (A timeout longer than the trace: no group times out within the batch.)
    q = iopf.Queue(iopf.policies.PCIE.replace(response_timeout=10**9), auto_advance=True)
    batch = q.report_batch(iopf.trace.synthetic(5000, seed=4))
    kept = weakref.ref(batch.faults)
    del batch
    gc.collect()
    assert kept() is not None and len(q.pending_cookies())
    late = np.zeros(1, iopf.FAULT_DTYPE)
    late["time"], late["dev"], late["flags"], late["perm"] = 2**40, 9, 2, 1
    assert consumer.feed(q.core, late) == (1, 0)
    assert kept() is None and q.core.get_state()["outputs_kept"] == 0
    q.core._check_nodes()
