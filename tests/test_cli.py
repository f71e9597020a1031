"""The ``iopf`` command line, end to end through ``python -m iopf``."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import iopf
from iopf import cli, trace

DATA = Path(__file__).parent / "data"


def run(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONWARNINGS": "error", **(env or {})}
    full_env.pop("IOPF_PURE_PYTHON", None)
    return subprocess.run([sys.executable, "-m", "iopf", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=full_env)


def assert_user_error(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2 and exactly one line on stderr, naming what went wrong."""
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("iopf: error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def conserved(s: dict[str, int]) -> bool:
    return (s["faults_reported"] == s["partial_now"] + s["grouped"] + s["stop_markers"]
            + s["rejected"] + s["overflowed"] + s["discarded"] + s["flushed"] + s["removed"]
            and s["groups"] == s["answered"] + s["pending_now"])


@pytest.fixture(scope="module")
def npy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "t.npy"
    p = run("generate", path, "--faults", "20000", "--seed", "3", "--devices", "3",
            "--lost-lpig", "0.01", "--stop-markers", "0.05")
    assert p.returncode == 0, p.stderr
    assert "wrote 20,000 faults" in p.stdout and "(npy)" in p.stdout
    return path


def test_generate_matches_the_library(npy: Path) -> None:
    expected = trace.synthetic(20_000, seed=3, devices=3, lost_lpig=0.01, stop_markers=0.05)
    assert (trace.load(npy) == expected).all()


def test_generate_replay_json(npy: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    p = run("replay", npy, "--policy", "linux", "--strategy", "list", "--service-time",
            "25000", "--batch-size", "4096", "--json", out, "--no-progress")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""   # no progress bar: stderr is not a terminal
    assert "policy linux" in p.stdout and "conserved" in p.stdout
    d = json.loads(out.read_text())
    assert d["faults"] == 20_000 and d["policy"] == "linux" and d["strategy"] == "list"
    assert d["trace"] == str(npy)
    assert conserved(d["stats"]) and d["stats"]["stop_markers"] > 0
    assert d["latency_ns"]["p50"] == d["latency_ns"]["max"] == 25_000
    # The command line gives what the library gives.
    lib = iopf.replay(trace.load(npy), policy="linux", strategy="list",
                      service_time=25_000).to_dict()
    for key in ("stats", "group_sizes", "response_codes", "response_reasons", "latency_ns"):
        assert d[key] == lib[key], key


def test_replay_json_to_stdout(npy: Path) -> None:
    p = run("replay", npy, "--json", "-", "--timeout", "1000", "--service-time", "2000")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)   # nothing but the JSON on stdout
    assert d["response_reasons"]["TIMEOUT"] == d["groups"]


def test_replay_without_a_trace() -> None:
    p = run("replay")
    assert p.returncode == 0, p.stderr
    assert "1,000,000 faults" in p.stdout and "policy pcie" in p.stdout
    assert "synthetic" in p.stdout
    small = run("replay", "--faults", "5000", "--seed", "2", "--json", "-")
    assert json.loads(small.stdout)["faults"] == 5000


def test_convert_round_trip(npy: Path, tmp_path: Path) -> None:
    faults = trace.load(npy)
    csv, back = tmp_path / "t.csv", tmp_path / "back.npy"
    p = run("convert", npy, csv)
    assert p.returncode == 0, p.stderr
    assert "converted 20,000 faults" in p.stdout and "(csv)" in p.stdout
    assert run("convert", csv, back).returncode == 0
    assert (trace.load(back) == faults).all()
    # Explicit formats, odd extensions; iommufd keeps all but time and private.
    raw, raw_back = tmp_path / "t.dat", tmp_path / "raw.csv"
    assert run("convert", npy, raw, "--to", "iommufd").returncode == 0
    assert run("convert", raw, raw_back, "--from", "iommufd").returncode == 0
    got = trace.load(raw_back)
    for name in ("dev", "pasid", "grpid", "flags", "perm", "addr"):
        assert (got[name] == faults[name]).all(), name


def test_bench_tiny(npy: Path, tmp_path: Path) -> None:
    p = run("bench", "--faults", "3000", "--repeat", "1")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "vs python" in lines[1]
    rows = {ln.split()[0]: ln for ln in lines[2:6]}
    assert set(rows) == {"hash", "tree", "list", "python"}
    assert rows["python"].rstrip().endswith("1.0x")
    assert "warning" not in p.stderr
    p = run("bench", npy, "--strategies", "hash,list", "--repeat", "2", "--policy", "vtd")
    assert p.returncode == 0, p.stderr
    assert "vs hash" in p.stdout and "*" not in p.stdout
    assert "python" not in p.stdout.split("\n", 2)[2]


def test_bench_caps_the_python_twin() -> None:
    p = run("bench", "--faults", str(cli.PYTHON_CAP + 1000), "--strategies", "python,hash",
            "--repeat", "1")
    assert p.returncode == 0, p.stderr
    assert f"{cli.PYTHON_CAP:,}*" in p.stdout and "only the first" in p.stdout


def test_bench_plot_without_matplotlib(tmp_path: Path) -> None:
    # A package that shadows matplotlib and fails to import, as a missing one does.
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    p = run("bench", "--faults", "1000", "--plot", tmp_path / "b.png",
            env={"PYTHONPATH": os.pathsep.join(filter(None, [str(fake.parent),
                                                            os.environ.get("PYTHONPATH")]))})
    assert_user_error(p, 'pip install "iopf[plot]"')
    assert not (tmp_path / "b.png").exists()


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="matplotlib is not installed")
def test_bench_plot(tmp_path: Path) -> None:
    p = run("bench", "--faults", "1000", "--repeat", "1", "--plot", tmp_path / "b.png")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "b.png").read_bytes().startswith(b"\x89PNG")


# -- errors ----------------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npy"
    assert_user_error(run("replay", missing), str(missing))
    assert_user_error(run("convert", missing, tmp_path / "x.csv"), str(missing))


def test_malformed_prq_report_line(tmp_path: Path) -> None:
    good = tmp_path / "good.trace"
    trace.save(good, trace.synthetic(50, seed=1))
    lines = good.read_text().splitlines(keepends=True)
    n = [i for i, ln in enumerate(lines) if "prq_report:" in ln][20]
    lines[n] = lines[n].replace(" addr=0x", " addr=0xZZZ")
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(lines))
    assert_user_error(run("replay", bad), f"{bad}:{n + 1}:", "ZZZ")
    # --skip-bad: the other records are replayed, the skip is reported.
    p = run("replay", bad, "--skip-bad", "--json", "-")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["skipped_records"] == 1 and d["faults"] == 49
    assert "skipped 1 malformed" in p.stderr and f"{bad}:{n + 1}:" in p.stderr


def test_shipped_prq_report_sample(tmp_path: Path) -> None:
    """The sample ftrace file (other events, blank lines, a bad line)."""
    sample = DATA / "prq_report.txt"
    p = run("replay", sample, "--skip-bad", "--json", "-")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["faults"] == len(trace.load(sample, skip_bad=True))


def test_malformed_csv_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("time,dev,pasid,grpid,flags,perm,addr\n"
                   "1,2,3,4,1,1,4096\n"
                   "2,2,3,4,3,1,8192\n"
                   "3,2,three,4,3,1,8192\n")
    assert_user_error(run("replay", bad), f"{bad}:4:", "three")
    assert_user_error(run("convert", bad, tmp_path / "out.npy"), f"{bad}:4:")
    assert not (tmp_path / "out.npy").exists()
    p = run("convert", bad, tmp_path / "out.npy", "--skip-bad")
    assert p.returncode == 0 and len(trace.load(tmp_path / "out.npy")) == 2


def test_field_out_of_range_names_the_record(tmp_path: Path) -> None:
    bad = tmp_path / "wide.csv"
    bad.write_text("time,dev,pasid,grpid,flags,perm,addr\n"
                   "1,2,3,4,1,1,4096\n"
                   "2,2,3,600,3,1,8192\n")
    assert_user_error(run("replay", bad), f"{bad}: record 1:", "grpid")


def test_unknown_format(tmp_path: Path, npy: Path) -> None:
    p = run("replay", npy, "--format", "yaml")
    assert p.returncode == 2 and "invalid choice" in p.stderr and "Traceback" not in p.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello\nworld\n")
    assert_user_error(run("replay", text), str(text), "format")
    assert_user_error(run("convert", npy, tmp_path / "out.yaml"), "out.yaml", "extension")


def test_truncated_iommufd(tmp_path: Path) -> None:
    path = tmp_path / "faults.bin"
    trace.save(path, trace.synthetic(10, seed=1), format="iommufd")
    with open(path, "ab") as f:
        f.write(b"\0" * 17)
    assert_user_error(run("replay", path), str(path), "record 10", "truncated")
    p = run("replay", path, "--skip-bad", "--json", "-")
    assert p.returncode == 0 and json.loads(p.stdout)["faults"] == 10


@pytest.mark.parametrize("args", [
    ["replay", "--batch-size", "0"],
    ["replay", "--policy", "windows"],
    ["bench", "--strategies", "hash,heap"],
    ["generate"],
    ["generate", "x.npy", "--lost-lpig", "2"],
    [],
])
def test_usage_errors(args: list[str]) -> None:
    p = run(*args)
    assert p.returncode == 2 and "usage:" in p.stderr and "Traceback" not in p.stderr


def test_faults_option_needs_the_synthetic_trace(npy: Path) -> None:
    assert_user_error(run("replay", npy, "--faults", "10"), "--faults")


def test_interrupt_exits_130_quietly(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: object, **kwargs: object) -> np.ndarray:
        raise KeyboardInterrupt

    monkeypatch.setattr(trace, "synthetic", interrupted)
    assert cli.main(["replay"]) == 130
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_version() -> None:
    p = run("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"iopf {iopf.__version__}"
