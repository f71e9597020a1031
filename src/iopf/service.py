"""The service model: how long the handler of a group takes, and on how many workers.

The kernel hands each completed group to a workqueue (``iopf_queue`` has
one); a bounded number of workers run the handlers, so a group that finds
every worker busy waits. :class:`Service` models that in the compiled core:
used as a queue's handler, each group is queued FIFO for the next free
worker at its LPIG's time, served for a duration drawn per group, and its
answer is scheduled for the moment the service ends. Nothing is sent until
simulated time gets there (``Queue.advance``).

>>> import iopf
>>> q = iopf.Queue(default_handler=iopf.Service(1_000, servers=1))
>>> a = q.report(iopf.Fault(1, 1, 0, 0, last=True, time=0))
>>> b = q.report(iopf.Fault(1, 1, 1, 0, last=True, time=0))
>>> q.next_deadline()
1000
>>> q.advance(5_000)
>>> q.take_responses()["time"].tolist()       # the second group waited for the worker
[1000, 2000]
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import numpy as np

from .types import Response

__all__ = ["Service", "ServiceTime"]

#: A service time: ns (a constant), a text form (``"exp:2000"``,
#: ``"lognormal:20000,0.5"``, ``"const:20000"`` or a bare number), or samples
#: in ns to draw from.
ServiceTime = Union[int, str, Sequence[int], np.ndarray]

_KINDS = {"const": 0, "exp": 1, "lognormal": 2}
_SAMPLES = 3
_MAX_NS = 2**63


class Service:
    """Workers that answer each group ``code`` after a service time.

    ``service_time``: see :data:`ServiceTime`. ``exp:MEAN`` draws from an
    exponential distribution of that mean (ns); ``lognormal:MEAN,SIGMA``
    from a lognormal of that mean (ns) whose logarithm has standard deviation
    SIGMA; samples are drawn uniformly. Draws are rounded to whole ns.
    ``servers``: the number of workers (None: every group has its own, so a
    group never waits). ``seed`` seeds the draws: the same seed and the same
    groups give the same times, whatever the batch sizes.
    """

    __slots__ = ("kind", "a", "b", "samples", "servers", "code", "seed", "text")

    def __init__(self, service_time: ServiceTime, servers: int | None = None, *,
                 code: Response | int = Response.SUCCESS, seed: int = 0) -> None:
        if servers is not None and (isinstance(servers, bool) or not isinstance(servers, int)
                                    or not 1 <= servers < 2**32):
            raise ValueError(f"servers must be a positive int or None, not {servers!r}")
        self.servers = servers
        self.code = Response(code)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), not {seed!r}")
        self.seed = seed
        self.samples: np.ndarray | None = None
        self.b = 0.0
        if isinstance(service_time, str):
            self.kind, self.a, self.b, self.text = _parse(service_time)
        elif isinstance(service_time, (int, np.integer)) and not isinstance(service_time, bool):
            if not 0 <= service_time < _MAX_NS:
                raise ValueError(f"service time must be >= 0 ns, not {service_time}")
            self.kind, self.a, self.text = 0, float(service_time), _ns_text(int(service_time))
        else:
            s = np.asarray(service_time)
            if s.ndim != 1 or not len(s) or not np.issubdtype(s.dtype, np.integer) \
                    or s.min() < 0 or s.max() >= _MAX_NS:
                raise ValueError("service time samples must be a non-empty 1-D array of "
                                 "whole ns >= 0")
            if len(s) >= 2**32:
                raise ValueError("at most 2**32 - 1 service time samples")
            self.kind, self.a, self.samples = _SAMPLES, 0.0, s.astype(np.uint64)
            self.text = f"{len(s):,} samples (mean {_ns_text(float(s.mean()))})"

    @classmethod
    def parse(cls, text: str, servers: int | None = None, *, seed: int = 0) -> Service:
        """The command line's form: ``exp:2000``, ``lognormal:20000,0.5``, ``const:5000``, ``5000``."""
        return cls(text, servers, seed=seed)

    @property
    def constant(self) -> int | None:
        """The service time when it is a constant, else None."""
        return int(self.a) if self.kind == 0 else None

    def install(self, core: object) -> None:
        """Give the model to a core (``Queue.core``): workers all free, generator seeded."""
        core.set_service(self.servers or 0, self.kind, self.a, self.b,  # type: ignore[attr-defined]
                         self.samples, self.seed, int(self.code))

    def __repr__(self) -> str:
        workers = "unbounded" if self.servers is None else str(self.servers)
        return f"Service({self.text}, servers={workers}, code={self.code.name}, seed={self.seed})"

    __str__ = __repr__


def _parse(text: str) -> tuple[int, float, float, str]:
    """(kind, a, b, description) of a text service time."""
    name, sep, arg = text.strip().partition(":")
    if not sep:
        name, arg = "const", text.strip()
    kind = _KINDS.get(name.strip().lower())
    if kind is None:
        raise ValueError(f"unknown service time {text!r}: give NS, const:NS, exp:MEAN "
                         "or lognormal:MEAN,SIGMA")
    try:
        nums = [float(x) for x in arg.split(",")]
    except ValueError:
        raise ValueError(f"service time {text!r}: not a number") from None
    if len(nums) != (2 if kind == 2 else 1) or not all(math.isfinite(x) for x in nums):
        raise ValueError(f"service time {text!r}: {name} takes "
                         + ("MEAN,SIGMA" if kind == 2 else "one number of ns"))
    mean = nums[0]
    if not 0 <= mean < _MAX_NS or (kind == 0 and not mean.is_integer()):
        raise ValueError(f"service time {text!r}: the time must be a whole number of ns >= 0")
    if kind == 0:
        return 0, mean, 0.0, _ns_text(mean)
    if kind == 1:
        return 1, mean, 0.0, f"exponential, mean {_ns_text(mean)}"
    sigma = nums[1]
    if mean <= 0 or not 0 <= sigma <= 10:
        raise ValueError(f"service time {text!r}: lognormal needs MEAN > 0 and 0 <= SIGMA <= 10")
    # The log-mean that gives this mean: E[exp(N(mu, s))] = exp(mu + s^2 / 2).
    return 2, math.log(mean) - sigma * sigma / 2, sigma, \
        f"lognormal, mean {_ns_text(mean)}, sigma {sigma:g}"


def _ns_text(v: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if v >= scale:
            return f"{v / scale:.3f} {unit}"
    return f"{v:.0f} ns"
