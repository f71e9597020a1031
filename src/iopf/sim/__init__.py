"""Discrete-event models on top of a queue: a SimPy adapter, devices and handlers.

SimPy is an optional dependency (``pip install "iopf[sim]"``). Three pieces:

- :class:`SimQueue` puts an :class:`iopf.Queue` inside a
  :class:`simpy.Environment`. The environment's clock (``env.now``, an int in
  ns) is the queue's time: requests are stamped with it, responses and
  timeouts carry it. :meth:`SimQueue.send` reports one page request group at
  ``env.now`` and returns **one** SimPy event for the whole group, which
  succeeds with the group's :class:`iopf.PageResponse`.
- :class:`Server` is a handler with a service time and a bounded number of
  servers, like the kernel's iopf workqueue.
- :class:`Device` is a PRI function: it issues groups within its
  outstanding-request allocation, wraps its 9-bit group index, retries
  overflowed groups, may lose LPIGs, sends stop markers at PASID teardown and
  disables PRI on a Response Failure.

>>> import simpy, iopf
>>> from iopf.sim import SimQueue, Server, Device
>>> env = simpy.Environment()
>>> sim = SimQueue(env, iopf.policies.VTD)
>>> Server(sim, service_time=900, servers=2).attach_default()
>>> dev = Device(sim, dev=0x6a08, groups=100, group_size=8, interval=500, outstanding=32)
>>> env.run()
>>> dev.groups_done, int(dev.results()["latency"].max()), env.now
(100, 900, 50900)
>>> sim.queue.stats.conserved()
True

Requests of one group are sent at one simulated instant (one
``report_batch``), and waiting costs one event per group, not per request:
the adapter adds far fewer SimPy events than faults. Simulated time lives
in the queue (timeouts, scheduled answers, the workers of a Server); the
adapter keeps one SimPy timer armed at the queue's next deadline.

One module per model: :mod:`iopf.sim.queue` (the adapter),
:mod:`iopf.sim.server` and :mod:`iopf.sim.device`.
"""
from __future__ import annotations

try:
    import simpy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised with simpy hidden
    raise ImportError('iopf.sim needs SimPy: pip install "iopf[sim]"') from exc

from ._common import Duration
from .device import RESULT_DTYPE, Device
from .queue import SimQueue
from .server import Server

__all__ = ["SimQueue", "Server", "Device", "Duration", "RESULT_DTYPE"]
