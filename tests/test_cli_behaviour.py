"""The command line behaves: one test per defect a new user met.

Checks come before the work (output paths, formats, optional packages),
options that do not apply are refused, messages name the command line's
flags, install hints are quoted, results come as JSON on request, progress
bars appear only on a terminal, and binary junk is never echoed.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from iopf import cli, trace


def iopf_main(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def assert_error(status: int, err: str, *needles: str) -> str:
    assert status == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("iopf: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture()
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the work itself fail loudly, to show a check came before it."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the work started before the check")
    monkeypatch.setattr(trace, "synthetic", refuse)
    monkeypatch.setattr(cli, "replay", refuse)


@pytest.fixture()
def npy(tmp_path: Path) -> Path:
    path = tmp_path / "t.npy"
    trace.save(path, trace.synthetic(2000, seed=1))
    return path


def test_json_output_path_checked_before_the_replay(capsys: pytest.CaptureFixture[str],
                                                     no_work: None) -> None:
    status, out, err = iopf_main(capsys, "replay", "--faults", "1000",
                                 "--json", "/nonexistent-dir/x.json")
    assert_error(status, err, "--json", "/nonexistent-dir")
    assert out == ""   # no table printed before failing


def test_generate_checks_its_output_before_generating(capsys: pytest.CaptureFixture[str],
                                                      no_work: None) -> None:
    status, _, err = iopf_main(capsys, "generate", "/nonexistent-dir/t.npy")
    assert_error(status, err, "/nonexistent-dir")


def test_generate_parquet_without_pyarrow_fails_first(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path, no_work: None) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)   # `import pyarrow` fails
    status, _, err = iopf_main(capsys, "generate", tmp_path / "big.parquet")
    assert_error(status, err, "pyarrow", 'pip install "iopf[parquet]"')
    assert not (tmp_path / "big.parquet").exists()


def test_plot_without_matplotlib_fails_first(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             no_work: None) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, _, err = iopf_main(capsys, "bench", "--plot", tmp_path / "b.png")
    # Quoted, and a form that works from a clone too.
    assert_error(status, err, 'pip install "iopf[plot]"', 'pip install ".[plot]"')


def test_plot_path_checked_first(capsys: pytest.CaptureFixture[str], no_work: None) -> None:
    status, _, err = iopf_main(capsys, "bench", "--plot", "/nonexistent-dir/b.png")
    assert_error(status, err, "--plot", "/nonexistent-dir")


@pytest.mark.parametrize("command", ["replay", "bench"])
@pytest.mark.parametrize("option", [["--faults", "10"], ["--seed", "3"]])
def test_synthetic_options_refused_with_a_trace(command: str, option: list[str], npy: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                no_work: None) -> None:
    """One rule: an option that does not apply is an error, never ignored."""
    status, _, err = iopf_main(capsys, command, npy, *option)
    assert_error(status, err, option[0], "TRACE")


@pytest.mark.parametrize("args,flag", [
    (["generate", "{tmp}/t.xyz"], "--format"),
    (["convert", "{npy}", "{tmp}/t.xyz"], "--to"),
    (["convert", "{tmp}/mystery", "{tmp}/t.csv"], "--from"),
    (["replay", "{tmp}/mystery"], "--format"),
])
def test_messages_name_the_flags(args: list[str], flag: str, npy: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mystery").write_text("hello\nworld\n")
    argv = [a.format(tmp=tmp_path, npy=npy) for a in args]
    status, _, err = iopf_main(capsys, *argv)
    line = assert_error(status, err, flag)
    assert "format=" not in line


def test_errors_name_the_users_file_not_a_temporary_one(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    def disk_full(f: Any, arr: np.ndarray, *args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device", getattr(f, "name", f))
    monkeypatch.setitem(trace._WRITERS, "csv", disk_full)
    out = tmp_path / "t.csv"
    status, _, err = iopf_main(capsys, "generate", out, "--faults", "10")
    line = assert_error(status, err, f"{out}: No space left on device")
    assert ".tmp" not in line


def test_binary_junk_is_not_echoed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.csv"
    junk.write_bytes(b"\x1b[31m\x00\x01\xff\xfe" + bytes(range(256)) * 8 + b"\n")
    status, _, err = iopf_main(capsys, "replay", junk)
    line = assert_error(status, err, "junk.csv")
    assert line.isprintable() and "\ufffd" not in line
    assert len(line) < 400


@pytest.mark.parametrize("command", ["generate", "replay", "convert", "bench"])
def test_json_on_every_command(command: str, npy: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    argv = {"generate": ["generate", tmp_path / "g.csv", "--faults", "100"],
            "replay": ["replay", npy],
            "convert": ["convert", npy, tmp_path / "c.csv"],
            "bench": ["bench", npy, "--repeat", "1", "--strategies", "hash"]}[command]
    status, out, _ = iopf_main(capsys, *argv, "--json", "-")
    assert status == 0
    result = json.loads(out)   # the JSON alone on stdout
    assert result["faults"] in (100, 2000)
    # --json FILE writes the same and prints the table too.
    status, out, _ = iopf_main(capsys, *argv, "--json", tmp_path / "r.json")
    assert status == 0 and out.strip() and not out.lstrip().startswith("{")
    assert json.loads((tmp_path / "r.json").read_text())["faults"] == result["faults"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("command", ["generate", "convert", "bench"])
def test_progress_bars_only_on_a_terminal(command: str, npy: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = {"generate": ["generate", tmp_path / "g.npy", "--faults", "100"],
            "convert": ["convert", npy, tmp_path / "c.csv"],
            "bench": ["bench", npy, "--repeat", "1", "--strategies", "hash"]}[command]
    # Not a terminal (pytest's capture): no bar.
    status, _, err = iopf_main(capsys, *argv)
    assert status == 0 and err == ""
    # A terminal: a bar, unless --no-progress.
    for extra, expect_bar in (([], True), (["--no-progress"], False)):
        tty = _Terminal()
        monkeypatch.setattr(sys, "stderr", tty)
        assert cli.main([str(a) for a in argv] + extra) == 0
        assert ("\r" in tty.getvalue()) == expect_bar, tty.getvalue()
    capsys.readouterr()


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_help_shows_defaults_and_choices(name: str) -> None:
    command = _subcommands()[name]
    text = command.format_help()
    for action in command._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name}: {action.dest} has no help"
        if action.choices is not None and not isinstance(action.choices, dict):
            assert ",".join(map(str, action.choices)) in text, (name, action.dest)
        if action.option_strings and action.default not in (None, False):
            help_text = command._get_formatter()._expand_help(action)  # type: ignore[attr-defined]
            assert "default" in help_text, f"{name}: {action.dest} shows no default"
