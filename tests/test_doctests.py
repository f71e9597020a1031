"""The examples in the docstrings run and say what they show."""
from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["iopf", "iopf.queue", "iopf.types", "iopf.policies", "iopf.trace", "iopf._replay",
           "iopf.cli", "iopf.sim", "iopf._partition", "iopf.service", "iopf.iommufd",
           "iopf._display"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    if name == "iopf.sim":
        pytest.importorskip("simpy")
    monkeypatch.chdir(tmp_path)   # examples that write files write them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
