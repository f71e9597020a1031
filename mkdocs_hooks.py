"""MkDocs hooks: the docstrings use a few reStructuredText roles
(:class:`x`, :func:`x`, ...) that Markdown shows as text; show them as code."""
from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):(<code>)")


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(r"\1", html)
