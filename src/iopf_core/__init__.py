"""iopf_core: the compiled grouping core of iopf, and its pure-Python twin.

``HashGrouper``, ``ListGrouper`` and ``TreeGrouper`` are Cython classes that
hold partial faults in C memory; ``PyGrouper`` is the reference twin. All
four have the same interface and give the same results. Most users want
``iopf.Queue``, which wraps one of them.

Without the compiled module (installed where no C compiler was found, or
with ``IOPF_NO_EXTENSIONS=1``) every strategy runs on the twin and importing
warns once with :class:`PurePythonWarning`; ``IOPF_PURE_PYTHON=1`` asks for
the twin on purpose (no warning, and the compiled module is not loaded).
``COMPILED`` says which one is in use.
"""
from __future__ import annotations

import os
import warnings

from iopf_core.twin import PyGrouper


class PurePythonWarning(RuntimeWarning):
    """The compiled core is missing: iopf runs on the (slow) pure-Python twin."""


COMPILED = False
_missing: ImportError | None = None
if os.environ.get("IOPF_PURE_PYTHON") != "1":
    try:
        from iopf_core.grouper import Grouper, HashGrouper, ListGrouper, TreeGrouper
        COMPILED = True
    except ImportError as e:
        _missing = e

if not COMPILED:
    # Same names, so code that imports them keeps working on the twin.
    Grouper = HashGrouper = ListGrouper = TreeGrouper = PyGrouper  # type: ignore[misc,assignment]
    if _missing is not None:
        warnings.warn(
            f"iopf: the compiled core is not available ({_missing}); every strategy runs "
            "on the pure-Python twin, about 100x slower. Reinstall with a C compiler for "
            "the fast core, or set IOPF_PURE_PYTHON=1 to choose the twin and silence this.",
            PurePythonWarning, stacklevel=2)

STRATEGIES: dict[str, type[Grouper] | type[PyGrouper]] = {"hash": HashGrouper, "list": ListGrouper, "tree": TreeGrouper, "python": PyGrouper}

__all__ = ["Grouper", "HashGrouper", "ListGrouper", "TreeGrouper", "PyGrouper", "STRATEGIES",
           "COMPILED", "PurePythonWarning"]
