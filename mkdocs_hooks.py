"""Build helpers for the documentation site (mkdocs.yml names them).

- ``on_page_content`` (a MkDocs hook): the docstrings use a few
  reStructuredText roles (:class:`x`, :func:`x`, ...) that Markdown shows as
  text; show them as code.
- ``DoctestBlocks`` (a Griffe extension, for mkdocstrings): the docstrings'
  ``>>>`` examples, which Markdown would read as nested quotes, become
  ``pycon`` code blocks.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):(<code>)")


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(r"\1", html)


def fence_doctests(text: str) -> str:
    """Wrap each run of doctest lines (a ``>>>`` line up to the next blank
    line) in a fenced ``pycon`` block at the same indentation."""
    out: list[str] = []
    block: list[str] = []
    indent = ""

    def close() -> None:
        out.extend(["", f"{indent}```pycon", *block, f"{indent}```", ""])
        block.clear()

    for line in text.splitlines():
        if block:
            if line.strip():
                block.append(line)
                continue
            close()
        if line.lstrip().startswith(">>>"):
            indent = line[:len(line) - len(line.lstrip())]
            block.append(line)
        else:
            out.append(line)
    if block:
        close()
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
