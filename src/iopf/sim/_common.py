"""What the models of iopf.sim share: durations and a few constants."""
from __future__ import annotations

from collections.abc import Callable
from typing import SupportsFloat, Union

import numpy as np

from ..types import Flag, Perm, Reason, Response

#: A duration in ns: a constant, or a callable drawing one from a numpy Generator
#: (``lambda rng: rng.exponential(5_000)``). Draws are rounded to int ns, negatives to 0.
Duration = Union[int, float, Callable[[np.random.Generator], SupportsFloat]]

SUCCESS, INVALID, FAILURE = int(Response.SUCCESS), int(Response.INVALID), int(Response.FAILURE)
OVERFLOW = int(Reason.OVERFLOW)
TIMEOUT = int(Reason.TIMEOUT)
LAST = int(Flag.LAST_PAGE)
PASID_VALID = int(Flag.PASID_VALID)
NEEDS_PASID = int(Flag.NEEDS_PASID)
READ = int(Perm.READ)
#: What the queue's rules make of a request (``SimQueue.kinds``).
KIND_PARTIAL, KIND_LAST, KIND_STOP = 0, 1, 2


def duration(value: Duration, name: str) -> Callable[[np.random.Generator], SupportsFloat] | int:
    """A validated constant (int) or the callable itself."""
    if callable(value):
        return value  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number of ns or a callable(rng), not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(round(value))


def draw(value: Callable[[np.random.Generator], SupportsFloat] | int, rng: np.random.Generator) -> int:
    if value.__class__ is int:
        return value  # type: ignore[return-value]
    d = int(round(float(value(rng))))  # type: ignore[operator]
    return d if d > 0 else 0
