"""The documentation: it speaks in the project's own words, documents every
policy field, and every code sample in it runs.

A ```python block in README.md or docs/*.md runs as it is (as a doctest
when it is a ``>>>`` session, so its outputs are checked), in a fresh
namespace, from a temporary working directory; a block that must not run
(a fragment, or one that needs hardware) has a line ``<!-- skip -->`` just
before it.
"""
from __future__ import annotations

import dataclasses
import doctest
import pathlib
import re
import subprocess
import sys

import pytest

import iopf

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Text a user reads: the README, the docs, the package's sources and examples.
USER_FILES = [*DOC_FILES, *sorted((ROOT / "src").rglob("*.py")),
              *sorted((ROOT / "src").rglob("*.pyx")), *sorted((ROOT / "src").rglob("*.pxd")),
              *sorted((ROOT / "src").rglob("*.pyi")), *sorted((ROOT / "examples").glob("*.py"))]

# A path out of the repository, the developers' specification, or a rule number
# such as "G8" or "F6" (users see words: "conservation", "capacity").
FORBIDDEN = re.compile(r"\.\./shared|/work/|SPEC|§|\b[GRF][0-9]{1,2}\b")


@pytest.mark.parametrize("path", USER_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_outside_references_or_rule_numbers(path: pathlib.Path) -> None:
    hits = [f"{path.name}:{i}: {line.strip()}"
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if FORBIDDEN.search(line)]
    assert hits == []


def test_every_policy_field_is_documented() -> None:
    """help(iopf.Policy) shows each field's meaning (the Attributes section)."""
    doc = iopf.Policy.__doc__ or ""
    section = doc.split("Attributes:", 1)[1]
    documented = set(re.findall(r"^ {8}(\w+):", section, re.MULTILINE))
    fields = {f.name for f in dataclasses.fields(iopf.Policy)}
    assert fields - documented == set()


def _python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            before = text[:m.start()].rstrip().splitlines()
            if before and before[-1].strip() == "<!-- skip -->":
                continue
            line = text.count("\n", 0, m.start()) + 1
            blocks.append((f"{path.relative_to(ROOT)}:{line}", m.group(1)))
    return blocks


BLOCKS = _python_blocks()


@pytest.mark.parametrize("where,code", BLOCKS, ids=[w for w, _ in BLOCKS])
def test_code_sample_runs(where: str, code: str, tmp_path: pathlib.Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["sample"])
    namespace: dict[str, object] = {"__name__": "__sample__"}
    if code.lstrip().startswith(">>>"):
        # A console session: run it as a doctest, so the outputs shown are checked too.
        test = doctest.DocTestParser().get_doctest(code, namespace, where, where, 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS
                                       | doctest.NORMALIZE_WHITESPACE)
        runner.run(test)
        assert runner.failures == 0, f"{where}: {runner.failures} examples failed"
        return
    exec(compile(code, where, "exec"), namespace)   # noqa: S102 (the docs' own samples)


def test_samples_were_found() -> None:
    assert any(w.startswith("README.md") for w, _ in BLOCKS)


def _sh_blocks() -> list[tuple[str, str]]:
    out = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"^```(?:sh|console)\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            out.append((str(path.relative_to(ROOT)), m.group(1)))
    return out


def test_documented_commands_exist() -> None:
    """Every ``iopf COMMAND`` in a shell sample is a real subcommand."""
    commands = {m.group(1) for _, block in _sh_blocks()
                for m in re.finditer(r"(?:^|\s)iopf ([a-z]+)", block)}
    help_text = subprocess.run([sys.executable, "-m", "iopf", "--help"], capture_output=True, text=True,
                               check=True).stdout
    assert {c for c in commands if c not in help_text} == set()
