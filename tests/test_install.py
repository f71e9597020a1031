"""Install iopf where the compiled core cannot be built, and use it.

Each case makes a fresh virtual environment and runs ``pip install`` on the
repository, so it takes about a minute: it runs only with
``IOPF_TEST_INSTALL=1`` (``.ci/run`` does it as a step of its own).
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("IOPF_TEST_INSTALL") != "1",
                       reason="installs into a new venv: set IOPF_TEST_INSTALL=1"),
]


def _readme_example() -> tuple[str, list[str]]:
    """The README's "Ten lines" sample, and the results its comments promise."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Ten lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    promised = re.findall(r"# (\d+ [\[\w].*)$", code.group(1), re.MULTILINE)
    return code.group(1), promised


@pytest.mark.parametrize("how", ["IOPF_NO_EXTENSIONS", "no compiler"])
def test_install_without_the_compiled_core(how: str, tmp_path: pathlib.Path) -> None:
    # A clean copy: a build/ left by an earlier in-place build would be reused.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "site", "*.egg-info", "*.so", "*.c", "__pycache__",
        ".hypothesis", ".benchmarks", ".pytest_cache"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOPF_")}
    if how == "IOPF_NO_EXTENSIONS":
        env["IOPF_NO_EXTENSIONS"] = "1"
    else:
        env["CC"] = env["LDSHARED"] = "/bin/false"   # every compile and link fails
    # -v: pip shows the build's own output, and with it the fallback's warning.
    wheels = tmp_path / "wheels"
    build = subprocess.run([python, "-m", "pip", "wheel", "-v", "--no-deps", "--no-cache-dir",
                            "-w", str(wheels), str(src)], env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    if how == "no compiler":
        assert "installing the pure-Python package" in build.stdout + build.stderr
    (wheel,) = wheels.glob("iopf-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert [n for n in names if n.endswith((".c", ".so"))] == []   # pure: no C, no module
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], env=env, check=True)

    code, promised = _readme_example()
    script = tmp_path / "example.py"
    script.write_text(code)
    run = subprocess.run([python, str(script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    # The comments' results, on the twin.
    out = run.stdout.splitlines()
    assert out == promised, run.stdout
    # One clear warning, once.
    assert run.stderr.count("PurePythonWarning") == 1, run.stderr
    assert "pure-Python twin" in run.stderr

    # The command line works too, and on purpose (IOPF_PURE_PYTHON=1) nothing warns.
    cli = subprocess.run([str(venv / "bin" / "iopf"), "replay", "--faults", "20000",
                          "--no-progress"], env={**env, "IOPF_PURE_PYTHON": "1"},
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert "strategy python" in cli.stdout and cli.stderr == ""
