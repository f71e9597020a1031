"""Without the compiled core, iopf runs on the pure-Python twin.

Each case runs in a fresh interpreter (the choice is made at import). The
full install without a compiler is tests/test_install.py (slow, run by CI).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys, warnings
    if sys.argv[1] == "missing":
        sys.modules["iopf_core.grouper"] = None      # as if it was never built
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import iopf, iopf_core
        from iopf import Fault, Response
        q = iopf.Queue(iopf.policies.LINUX, strategy="hash")
        for dev in range(4):            # LINUX answers requests of devices not added at once
            q.add_device(dev)
        q.attach(dev=3, pasid=1, handler=lambda g: Response.SUCCESS)
        q.report(Fault(dev=3, pasid=1, grpid=7, addr=0x1000))
        g = q.report(Fault(dev=3, pasid=1, grpid=7, addr=0x2000, last=True))
        q.default_handler = Response.SUCCESS
        batch = q.report_batch(iopf.trace.synthetic(20_000, seed=1))
    print(q.strategy, iopf_core.COMPILED, "iopf_core.grouper" in sys.modules and
          sys.modules["iopf_core.grouper"] is not None)
    print(len(g), q.stats.conserved(), len(batch))
    for w in caught:
        print("warning:", w.category.__name__, str(w.message))
""")


def _run(mode: str, **env: str) -> list[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("IOPF_")}
    p = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                       env={**full, **env}, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def test_missing_extension_falls_back_with_one_warning() -> None:
    out = _run("missing")
    assert out[0] == "python False False"
    assert out[1].split()[:2] == ["2", "True"]
    warnings = [line for line in out if line.startswith("warning:")]
    assert len(warnings) == 1 and "PurePythonWarning" in warnings[0]
    assert "pure-Python twin" in warnings[0] and "IOPF_PURE_PYTHON=1" in warnings[0]


def test_pure_python_on_purpose_loads_no_extension_and_does_not_warn() -> None:
    out = _run("asked", IOPF_PURE_PYTHON="1")
    assert out[0] == "python False False"      # the compiled module is never imported
    assert [line for line in out if line.startswith("warning:")] == []


def test_same_results_as_the_compiled_core() -> None:
    compiled = _run("normal")
    assert compiled[0] == "hash True True"
    assert compiled[1] == _run("missing")[1]     # same group sizes, counters, batch
