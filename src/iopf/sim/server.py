"""The server model: the iopf workqueue, a handler with a service time and bounded workers."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from functools import partial
from typing import SupportsFloat

import numpy as np
import simpy

from ..queue import Group
from ..service import Service
from ..types import Response
from ._common import Duration, draw, duration
from .queue import SimQueue


class Server:
    """A handler that answers each group after a service time, with bounded servers.

    Like the kernel's iopf workqueue: a group waits (FIFO) for one of
    ``servers`` workers, holds it for ``service_time + per_fault * len(group)``
    ns, then is answered with ``code``. ``service_time`` is a constant, a
    callable drawing from ``rng`` (a numpy Generator; ``seed`` makes one) or
    a distribution in the form of :class:`iopf.Service` (``"exp:2000"``,
    ``"lognormal:20000,0.5"``, drawn in the core from ``seed``). ``code`` is a
    Response or a callable ``Group -> Response``. A callable is called when
    the group arrives (not when its service starts).

    The first Server of a queue is the queue's :attr:`~iopf.Queue.service`:
    its workers live in the compiled core, which schedules each answer for
    the end of its service; the :class:`SimQueue` timer sends it. With a
    constant or core-drawn service time and a constant code, no Python runs
    per group at all. A further Server on the same queue, or one given a
    ``simpy.Resource`` as ``servers`` (shared with other models), runs its
    workers as SimPy events instead (a few events more per group).

    A group that timed out while waiting is still served (the kernel does
    not know either); its late answer is stale (``stale``).

    Attach it with :meth:`attach` / :meth:`attach_default`, or pass it
    anywhere a handler goes: it is a callable ``Group -> None``.
    """

    def __init__(self, sim: SimQueue, *, service_time: Duration | str = 0, per_fault: int = 0,
                 servers: int | simpy.Resource = 1,
                 code: Response | int | Callable[[Group], Response | int] = Response.SUCCESS,
                 seed: int | None = None, rng: np.random.Generator | None = None) -> None:
        self.sim = sim
        self.env = sim.env
        if per_fault < 0:
            raise ValueError(f"per_fault must be >= 0, got {per_fault}")
        self.per_fault = int(per_fault)
        self.resource: simpy.Resource | None = None
        if isinstance(servers, simpy.Resource):
            self.resource = servers
            self.capacity = servers.capacity
        elif isinstance(servers, (int, np.integer)) and not isinstance(servers, bool) and servers >= 1:
            self.capacity = int(servers)
        else:
            raise ValueError(f"servers must be a positive int or a simpy.Resource, got {servers!r}")
        self.code = code if callable(code) else Response(code)
        const_code = Response.SUCCESS if callable(code) else Response(code)
        self._drawn_in_core = isinstance(service_time, str)
        if self._drawn_in_core and per_fault:
            raise ValueError("per_fault needs a service time drawn in Python (a number or a callable)")
        self.service_time: Callable[[np.random.Generator], SupportsFloat] | int = (
            0 if isinstance(service_time, str) else duration(service_time, "service_time"))
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        # The queue's workers, if this is its first Server (see the class docstring).
        self._core = self.resource is None and sim.queue.service is None
        if self._drawn_in_core and not self._core:
            raise ValueError("a service time drawn in the core needs the queue's workers: "
                             "this queue has a Server already (or servers is a Resource)")
        #: The handler the queue calls: the service model itself when no Python is needed.
        self._handler: Server | Service | Response = self
        if self._core:
            st = service_time if isinstance(service_time, str) else (
                self.service_time if self.service_time.__class__ is int else 0)
            spec = Service(st, self.capacity, code=const_code, seed=seed or 0)  # type: ignore[arg-type]
            sim.queue.service = spec
            if not self.per_fault and not callable(self.code) and (
                    self._drawn_in_core or self.service_time.__class__ is int):
                # Everything is known to the core: no Python per group.
                self._handler = self.code if spec.constant == 0 else spec
        self._busy = 0
        self._served = 0
        self._stale = 0
        self._max_backlog = 0
        self._busy_time = 0
        self._backlog: deque[Group] = deque()

    def attach(self, dev: int, pasid: int | None) -> Server:
        """Serve the groups of (dev, pasid)."""
        self.sim.queue.attach(dev, pasid, self._handler)
        return self

    def attach_default(self) -> None:
        """Serve every group without an attached handler (the queue's default handler)."""
        self.sim.queue.default_handler = self._handler

    # -- counters ----------------------------------------------------------------------
    def _stats(self) -> dict[str, int] | None:
        return self.sim.queue.core.service_stats() if self._core else None

    @property
    def served(self) -> int:
        """Groups served (in the core: given to a worker)."""
        s = self._stats()
        return self._served if s is None else s["served"] + self._served

    @property
    def stale(self) -> int:
        """Answers that came after the group had been answered (a timeout, a flush...)."""
        s = self._stats()
        return self._stale if s is None else s["stale"]

    @property
    def max_backlog(self) -> int:
        """The most groups waiting for a worker at once."""
        s = self._stats()
        return self._max_backlog if s is None else s["max_backlog"]

    @property
    def busy_time(self) -> int:
        """ns of service given."""
        s = self._stats()
        return self._busy_time if s is None else s["busy_ns"]

    @property
    def busy(self) -> int:
        """Workers busy now."""
        if self._core:
            return int(self.sim.queue.core.service_at(int(self.env.now))[0])
        return self._busy

    @property
    def backlog(self) -> int:
        """Groups waiting for a free server."""
        if self._core:
            return int(self.sim.queue.core.service_at(int(self.env.now))[1])
        return len(self._backlog)

    def utilization(self) -> float:
        """Fraction of server time busy since time 0."""
        now = self.env.now
        return self.busy_time / (self.capacity * now) if now else 0.0

    # -- serving -------------------------------------------------------------------------
    def _service(self, group: Group) -> int:
        st = self.service_time
        t = st if st.__class__ is int else draw(st, self.rng)  # type: ignore[arg-type]
        return t + self.per_fault * len(group) if self.per_fault else t  # type: ignore[return-value]

    def _code(self, group: Group) -> int:
        return self.code(group) if callable(self.code) else self.code  # type: ignore[return-value]

    def __call__(self, group: Group) -> Response | int | None:
        if self._core:
            if self._drawn_in_core:
                self.sim.serve(group, code=self._code(group))
                return None
            t = self._service(group)
            if t == 0 and self.busy < self.capacity:  # answered inside the handler call
                self._served += 1
                return self._code(group)
            self.sim.serve(group, service_time=t, code=self._code(group))
            return None
        if self.resource is not None:
            self.env.process(self._serve_shared(group))
            return None
        if self._busy < self.capacity:
            t = self._service(group)
            if t == 0:  # answered inside the handler call: no event at all
                self._served += 1
                return self._code(group)
            self._busy += 1
            self._busy_time += t
            self.env.timeout(t).callbacks.append(partial(self._done, group))  # type: ignore[union-attr]
        else:
            self._backlog.append(group)
            if len(self._backlog) > self._max_backlog:
                self._max_backlog = len(self._backlog)
        return None

    def _answer(self, group: Group) -> None:
        self._served += 1
        if not self.sim.respond(group.cookie, self._code(group)):
            self._stale += 1

    def _done(self, group: Group, _ev: simpy.Event) -> None:
        self._answer(group)
        while self._backlog:  # the worker takes the next group
            nxt = self._backlog.popleft()
            t = self._service(nxt)
            if t:
                self._busy_time += t
                done = self.env.timeout(t)
                done.callbacks.append(partial(self._done, nxt))  # type: ignore[union-attr]
                return
            self._answer(nxt)
        self._busy -= 1

    def _serve_shared(self, group: Group):  # type: ignore[no-untyped-def]
        assert self.resource is not None
        with self.resource.request() as req:
            yield req
            t = self._service(group)
            self._busy_time += t
            if t:
                yield self.env.timeout(t)
        self._answer(group)

    def __repr__(self) -> str:
        return (f"Server(servers={self.capacity}, busy={self.busy}, backlog={self.backlog}, "
                f"served={self.served}, stale={self.stale})")


__all__ = ["Server"]
