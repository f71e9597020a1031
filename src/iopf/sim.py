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
the adapter adds far fewer SimPy events than faults.
"""
from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, SupportsFloat, Union

import numpy as np

try:
    import simpy
except ImportError as exc:  # pragma: no cover - exercised with simpy hidden
    raise ImportError('iopf.sim needs SimPy: pip install "iopf[sim]"') from exc

from .policies import Policy
from .queue import Group, Queue
from .types import FAULT_DTYPE, Flag, PageResponse, Perm, Reason, Response

__all__ = ["SimQueue", "Server", "Device", "Duration", "RESULT_DTYPE"]

#: A duration in ns: a constant, or a callable drawing one from a numpy Generator
#: (``lambda rng: rng.exponential(5_000)``). Draws are rounded to int ns, negatives to 0.
Duration = Union[int, float, Callable[[np.random.Generator], SupportsFloat]]

#: One answered group of a :class:`Device` (see :meth:`Device.results`). Times in ns.
RESULT_DTYPE = np.dtype([
    ("pasid", "<u4"), ("grpid", "<u4"), ("nfaults", "<u4"), ("created", "<u8"),
    ("issued", "<u8"), ("answered", "<u8"), ("latency", "<u8"), ("code", "<u4"),
    ("reason", "<u4"), ("retries", "<u4"),
])

_SUCCESS, _INVALID, _FAILURE = int(Response.SUCCESS), int(Response.INVALID), int(Response.FAILURE)
_OVERFLOW = int(Reason.OVERFLOW)
_LAST = int(Flag.LAST_PAGE)
_STALL_ONE = "under the stall policy every request is its own group: send one at a time"
_PASID_VALID = int(Flag.PASID_VALID)
_NEEDS_PASID = int(Flag.NEEDS_PASID)
_RW = int(Perm.READ | Perm.WRITE)
#: One FAULT_DTYPE record (packed, 52 bytes): time dev pasid grpid flags perm addr private[2].
_REC = struct.Struct("<QIIIIIQQQ")


def _duration(value: Duration, name: str) -> Callable[[np.random.Generator], SupportsFloat] | int:
    """A validated constant (int) or the callable itself."""
    if callable(value):
        return value  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number of ns or a callable(rng), not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(round(value))


def _draw(value: Callable[[np.random.Generator], SupportsFloat] | int, rng: np.random.Generator) -> int:
    if value.__class__ is int:
        return value  # type: ignore[return-value]
    d = int(round(float(value(rng))))  # type: ignore[operator]
    return d if d > 0 else 0


class SimQueue:
    """An :class:`iopf.Queue` whose clock is a SimPy environment.

    ``queue`` is a ready Queue, a Policy to build one with, or None for
    ``Queue()``. The adapter takes over ``queue.on_response`` (a callback set
    there before is kept and still called, after the adapter, for every
    response); ``on_response`` adds one.

    Timeouts: when ``queue.policy.response_timeout`` is set, every group sent
    through the adapter is answered with ``policy.timeout_code`` at exactly
    ``group.time + response_timeout`` if nothing answered it before. One
    timer is armed at a time, at the deadline of the oldest group still
    pending, so the cost is about one SimPy event per timeout period, not one
    per group. A response given through :meth:`respond` at the very instant
    of the deadline loses: the group has timed out (a group times out "at or before" its deadline).
    ``expire_every=Q`` rounds deadlines up to multiples of Q ns instead
    (the kernel-style periodic scan: a group times out within Q ns after its
    deadline). Groups reported to ``queue`` directly, bypassing the adapter,
    are expired only when some adapter group's timer fires, or by
    :meth:`expire`.

    Responses: a response with a cookie resolves the event of that group. A
    response with cookie 0 (an LPIG answered at once: no handler under
    ``require_handler``, or an overflow) resolves the event of the group being
    sent, matched on ``(dev, pasid, grpid)``. Extra cookie-0 responses (Linux
    6.11+ answers every request of a group without handler, partials too) are
    what a device sees as unexpected responses: counted in ``unmatched``,
    like responses to groups no event waits on.
    """

    def __init__(self, env: simpy.Environment, queue: Queue | Policy | None = None, *,
                 expire_every: int | None = None,
                 on_response: Callable[[PageResponse], Any] | None = None) -> None:
        if queue is None:
            queue = Queue()
        elif isinstance(queue, Policy):
            queue = Queue(queue)
        elif not isinstance(queue, Queue):
            raise TypeError(f"queue must be an iopf.Queue or Policy, not {type(queue).__name__}")
        if expire_every is not None and expire_every <= 0:
            raise ValueError(f"expire_every must be a positive number of ns, got {expire_every}")
        self.env = env
        self.queue = queue
        self.policy: Policy = queue.policy
        self._chained = queue.on_response
        self.on_response = on_response
        queue.on_response = self._on_response
        #: Responses seen, and those that resolved no waiting event.
        self.responses = 0
        self.unmatched = 0
        self._waiting: dict[int, tuple[simpy.Event, int]] = {}  # cookie -> (event, group time)
        self._buffer: list[PageResponse] | None = None
        self._timeout = queue.policy.response_timeout
        self._expire_every = expire_every
        self._deadlines: deque[tuple[int, int]] = deque()  # (deadline, cookie), deadline order
        self._timer_at: int | None = None
        self._grpid_mask = (1 << queue.policy.grpid_bits) - 1
        self._stall = queue.policy.stall
        self._priv_last = queue.policy.priv_data_is_last
        self._drop_stop = queue.policy.stop_markers

    @property
    def now(self) -> int:
        return int(self.env.now)

    @property
    def pending(self) -> int:
        """Groups sent through the adapter whose event still waits for a response."""
        return len(self._waiting)

    # -- sending -----------------------------------------------------------------------
    def send(self, dev: int, pasid: int | None, grpid: int, n: int = 1, *, addr: int = 0,
             stride: int = 4096, perm: int = Perm.READ, last: bool = True,
             needs_pasid: bool = False) -> simpy.Event | None:
        """Send one group of ``n`` requests at ``env.now``: n-1 partials, then the LPIG.

        Addresses are ``addr + i * stride``; ``pasid=None`` sends requests
        without PASID. Returns the event that succeeds with the group's
        :class:`~iopf.PageResponse`, or None when no response will come
        (``last=False``: partials only).
        """
        if n < 1:
            raise ValueError(f"a group has at least one request, got n={n}")
        if self._stall and n != 1:
            raise ValueError(_STALL_ONE)
        if pasid is None:
            pasid, flags = 0, 0
        else:
            flags = _PASID_VALID | (_NEEDS_PASID if needs_pasid else 0)
        now = int(self.env.now)
        arr = self._pack(now, dev, pasid, grpid, flags, flags | _LAST if last else flags, perm,
                         n, addr, stride)
        expects = last and not (self._drop_stop and not perm & _RW)
        return self._send(arr, (dev, pasid, grpid), now, expects)

    @staticmethod
    def _pack(now: int, dev: int, pasid: int, grpid: int, flags: int, lflags: int, perm: int,
              n: int, addr: int, stride: int) -> np.ndarray:
        """A group's records: packing bytes costs a third of filling the fields
        of a numpy array (1.3 us against 4 us for a group of 8)."""
        try:
            if n <= 4 or not stride:
                pack = _REC.pack
                recs = [pack(now, dev, pasid, grpid, flags, perm, addr + i * stride, 0, 0)
                        for i in range(n - 1)]
                recs.append(pack(now, dev, pasid, grpid, lflags, perm, addr + (n - 1) * stride, 0, 0))
                return np.frombuffer(b"".join(recs), FAULT_DTYPE)
            # one record repeated, then the addresses in one numpy assignment
            data = bytearray(_REC.pack(now, dev, pasid, grpid, flags, perm, 0, 0, 0) * (n - 1))
            data += _REC.pack(now, dev, pasid, grpid, lflags, perm, 0, 0, 0)
            arr = np.frombuffer(data, FAULT_DTYPE)
            arr["addr"] = np.arange(addr, addr + n * stride, stride, dtype=np.uint64)[:n]
            return arr
        except (struct.error, OverflowError, ValueError) as exc:
            raise ValueError(f"a field does not fit its record: dev={dev!r} pasid={pasid!r} "
                             f"grpid={grpid!r} perm={perm!r} addr={addr!r} ({exc})") from None

    def send_faults(self, faults: np.ndarray) -> simpy.Event | None:
        """Send one group given as a ``FAULT_DTYPE`` array (partials, LPIG last).

        The ``time`` field is overwritten in place with ``env.now``. Only the
        last record may complete a group (under the stall policy a group is
        one request). Returns the group's event, or None when the last
        record expects no response (not an LPIG, or a stop marker the policy
        drops).
        """
        if not isinstance(faults, np.ndarray) or faults.dtype != FAULT_DTYPE or faults.ndim != 1:
            raise TypeError("faults must be a one-dimensional FAULT_DTYPE array")
        n = len(faults)
        if n == 0:
            raise ValueError("a group has at least one request")
        flags = faults["flags"]
        closes = (flags & _LAST) != 0
        if self._priv_last:
            closes |= (flags & Flag.PRIV_DATA) != 0
        if self._stall:
            if n != 1:
                raise ValueError(_STALL_ONE)
        elif n > 1 and closes[:-1].any():
            raise ValueError(f"record {int(np.flatnonzero(closes[:-1])[0])} would complete a group "
                             "before the last one: send one group per call")
        now = int(self.env.now)
        faults["time"] = now
        lp = faults[n - 1]
        expects = self._stall or bool(closes[-1])
        if expects and self._drop_stop and int(lp["flags"]) & _LAST and not int(lp["perm"]) & _RW:
            expects = False  # a stop marker, dropped without response
        return self._send(faults, (int(lp["dev"]), int(lp["pasid"]), int(lp["grpid"])), now, expects)

    def _send(self, faults: np.ndarray, key: tuple[int, int, int], now: int,
              expects: bool) -> simpy.Event | None:
        buf: list[PageResponse] = []
        self._buffer = buf
        batch = None
        try:
            batch = self.queue.report_batch(faults)
        finally:
            self._buffer = None
            ev = self._settle(batch, buf, key, now, expects)
        return ev

    def stop_marker(self, dev: int, pasid: int, grpid: int = 0) -> None:
        """Send a stop marker (LAST_PAGE, neither READ nor WRITE) for ``pasid``.

        Policies with ``stop_markers`` drop it; others make it a group of
        one whose response nobody waits for (counted in ``unmatched``).
        """
        ev = self.send(dev, pasid, grpid, 1, perm=0)
        if ev is not None:  # nobody waits: its response counts as unmatched
            self._forget(ev)

    def _forget(self, ev: simpy.Event) -> None:
        for cookie, (e, _) in list(self._waiting.items()):
            if e is ev:
                del self._waiting[cookie]
        if ev.triggered:  # answered during the send: a response no one expected
            self.unmatched += 1

    def _settle(self, batch: Any, buf: list[PageResponse], key: tuple[int, int, int], now: int,
                expects: bool) -> simpy.Event | None:
        """Register the group formed by a send, then route the responses it caused."""
        ev = simpy.Event(self.env) if expects else None
        cookie = 0
        if ev is not None and batch is not None and len(batch.cookies):
            cookie = int(batch.cookies[0])  # only the last record can have formed a group
            self._waiting[cookie] = (ev, now)
        match = None
        for resp in buf:
            if resp.cookie and resp.cookie in self._waiting:
                self._route(resp)
                continue
            self.responses += 1
            if (ev is not None and not cookie and (resp.dev, resp.pasid, resp.grpid) == key
                    and not ev.triggered):
                # Cookie 0 (or, if a handler raised, a cookie we never learnt):
                # the LPIG's own answer is the last one for its key.
                if match is not None:
                    self.unmatched += 1
                match = resp
            else:
                self.unmatched += 1
            self._forward(resp)
        if ev is None:
            return None
        if match is not None:
            ev.succeed(match)
        elif not cookie:
            return None  # nothing formed and nothing answered (cannot happen for an LPIG)
        elif self._timeout is not None and cookie in self._waiting:
            self._track(cookie, now)
        return ev

    # -- responses -----------------------------------------------------------------------
    def _on_response(self, resp: PageResponse) -> None:
        if self._buffer is not None:  # during a send: routed once its cookie is known
            self._buffer.append(resp)
        else:
            self._route(resp)

    def _route(self, resp: PageResponse) -> None:
        self.responses += 1
        w = self._waiting.pop(resp.cookie, None) if resp.cookie else None
        if w is not None:
            w[0].succeed(resp)
        else:
            self.unmatched += 1
        self._forward(resp)

    def _forward(self, resp: PageResponse) -> None:
        """Pass a response on to the queue's earlier callback and to ours."""
        if self._chained is not None:
            self._chained(resp)
        if self.on_response is not None:
            self.on_response(resp)

    def respond(self, group: Group | int, code: Response | int) -> bool:
        """Answer a pending group at ``env.now``; False if it was answered already.

        A group whose deadline is ``env.now`` times out first (see the class
        docstring), so this returns False for it.
        """
        cookie = group.cookie if isinstance(group, Group) else group
        now = int(self.env.now)
        if self._timeout is not None:
            w = self._waiting.get(cookie)
            if w is not None and now - w[1] >= self._timeout:
                self.queue.expire(now)
        return self.queue.respond(cookie, code, time=now)

    def expire(self) -> None:
        """Answer, now, every pending group older than the policy's response_timeout."""
        self.queue.expire(int(self.env.now))

    # -- timeouts ------------------------------------------------------------------------
    def _track(self, cookie: int, time: int) -> None:
        deadline = time + self._timeout  # type: ignore[operator]
        if self._expire_every:
            q = self._expire_every
            deadline = -(-deadline // q) * q
        self._deadlines.append((deadline, cookie))
        if self._timer_at is None:
            self._arm(deadline)

    def _arm(self, at: int) -> None:
        self._timer_at = at
        self.env.timeout(at - self.env.now).callbacks.append(self._on_timer)  # type: ignore[union-attr]

    def _on_timer(self, _ev: simpy.Event) -> None:
        self._timer_at = None
        now = int(self.env.now)
        self.queue.expire(now)
        dq, waiting = self._deadlines, self._waiting
        while dq and (dq[0][0] <= now or dq[0][1] not in waiting):
            dq.popleft()
        if dq:
            self._arm(dq[0][0])

    def __repr__(self) -> str:
        return (f"SimQueue(now={self.env.now}, pending={len(self._waiting)}, "
                f"responses={self.responses}, unmatched={self.unmatched}, queue={self.queue!r})")


class Server:
    """A handler that answers each group after a service time, with bounded servers.

    Like the kernel's iopf workqueue: a group waits (FIFO) for one of
    ``servers`` workers, holds it for ``service_time + per_fault * len(group)``
    ns, then is answered with ``code`` through :meth:`SimQueue.respond`.
    ``service_time`` is a constant or a callable drawing from ``rng`` (a numpy
    Generator; ``seed`` makes one). ``code`` is a Response or a callable
    ``Group -> Response``. ``servers`` may also be a ``simpy.Resource``
    shared with other models (each group then runs as a SimPy process, a few
    events more per group).

    A group that timed out while waiting is still served (the kernel does
    not know either); its late answer is stale (``stale``).

    Attach it with :meth:`attach` / :meth:`attach_default`, or pass it
    anywhere a handler goes: it is a callable ``Group -> None``.
    """

    def __init__(self, sim: SimQueue, *, service_time: Duration = 0, per_fault: int = 0,
                 servers: int | simpy.Resource = 1,
                 code: Response | int | Callable[[Group], Response | int] = Response.SUCCESS,
                 seed: int | None = None, rng: np.random.Generator | None = None) -> None:
        self.sim = sim
        self.env = sim.env
        self.service_time = _duration(service_time, "service_time")
        if per_fault < 0:
            raise ValueError(f"per_fault must be >= 0, got {per_fault}")
        self.per_fault = int(per_fault)
        self.resource: simpy.Resource | None = None
        if isinstance(servers, simpy.Resource):
            self.resource = servers
            self.capacity = servers.capacity
        elif isinstance(servers, (int, np.integer)) and servers >= 1:
            self.capacity = int(servers)
        else:
            raise ValueError(f"servers must be a positive int or a simpy.Resource, got {servers!r}")
        self.code = code if callable(code) else Response(code)
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.busy = 0
        #: Groups served, answers that came too late (stale), peak backlog, ns of service given.
        self.served = 0
        self.stale = 0
        self.max_backlog = 0
        self.busy_time = 0
        self._backlog: deque[Group] = deque()

    def attach(self, dev: int, pasid: int | None) -> Server:
        """Serve the groups of (dev, pasid)."""
        self.sim.queue.attach(dev, pasid, self)
        return self

    def attach_default(self) -> None:
        """Serve every group without an attached handler (the queue's default handler)."""
        self.sim.queue.default_handler = self

    @property
    def backlog(self) -> int:
        """Groups waiting for a free server."""
        return len(self._backlog)

    def utilization(self) -> float:
        """Fraction of server time busy since time 0."""
        now = self.env.now
        return self.busy_time / (self.capacity * now) if now else 0.0

    def _service(self, group: Group) -> int:
        st = self.service_time
        t = st if st.__class__ is int else _draw(st, self.rng)  # type: ignore[arg-type]
        return t + self.per_fault * len(group) if self.per_fault else t  # type: ignore[return-value]

    def _code(self, group: Group) -> int:
        return self.code(group) if callable(self.code) else self.code  # type: ignore[return-value]

    def __call__(self, group: Group) -> Response | int | None:
        if self.resource is not None:
            self.env.process(self._serve_shared(group))
            return None
        if self.busy < self.capacity:
            t = self._service(group)
            if t == 0:  # answered inside the handler call: no event at all
                self.served += 1
                return self._code(group)
            self.busy += 1
            self.busy_time += t
            self.env.timeout(t).callbacks.append(partial(self._done, group))  # type: ignore[union-attr]
        else:
            self._backlog.append(group)
            if len(self._backlog) > self.max_backlog:
                self.max_backlog = len(self._backlog)
        return None

    def _done(self, group: Group, _ev: simpy.Event) -> None:
        self.served += 1
        if not self.sim.respond(group.cookie, self._code(group)):
            self.stale += 1
        while self._backlog:  # the worker takes the next group
            nxt = self._backlog.popleft()
            t = self._service(nxt)
            if t:
                self.busy_time += t
                done = self.env.timeout(t)
                done.callbacks.append(partial(self._done, nxt))  # type: ignore[union-attr]
                return
            self.served += 1
            if not self.sim.respond(nxt.cookie, self._code(nxt)):
                self.stale += 1
        self.busy -= 1

    def _serve_shared(self, group: Group):  # type: ignore[no-untyped-def]
        assert self.resource is not None
        with self.resource.request() as req:
            yield req
            t = self._service(group)
            self.busy_time += t
            if t:
                yield self.env.timeout(t)
        self.served += 1
        if not self.sim.respond(group.cookie, self._code(group)):
            self.stale += 1

    def __repr__(self) -> str:
        return (f"Server(servers={self.capacity}, busy={self.busy}, backlog={self.backlog}, "
                f"served={self.served}, stale={self.stale})")


class _Grp:
    __slots__ = ("pasid", "grpid", "n", "addr", "created", "issued", "retries")

    def __init__(self, pasid: int | None, n: int, addr: int, created: int) -> None:
        self.pasid, self.n, self.addr, self.created = pasid, n, addr, created
        self.grpid = -1
        self.issued = -1
        self.retries = 0


class Device:
    """A PCIe function with PRI, issuing page request groups into a :class:`SimQueue`.

    It issues ``groups`` groups (None: forever), one every ``interval`` ns
    (a constant or a draw), of ``group_size`` requests (a constant or a draw,
    capped at the allocation), cycling over ``pasids``. All requests of a
    group are sent at one instant.

    - **Credit**: at most ``outstanding`` requests sent and not yet answered
      (PCIe's outstanding page request allocation; None: no limit). When a
      group does not fit, the device stalls until responses return credit.
      With ``register`` (default) the same allocation is given to the queue
      with ``add_device``.
    - **Group index**: the next free index modulo ``2**grpid_bits`` (9 bits);
      an index in use by an unanswered group is skipped.
    - **Responses**: SUCCESS completes the group. An overflow (SUCCESS to an
      LPIG the IOMMU dropped, reason OVERFLOW) is retried: the device
      re-faults on its translation and resends the whole group, with a new
      index, ``retry_delay`` ns later. INVALID completes the group with an
      error (``invalid``). FAILURE disables PRI, as PCIe requires: the device
      stops issuing for good (``pri_enabled`` False, ``failed_at``).
    - **Lost LPIGs**: with probability ``lost_lpig`` a group's LPIG never
      reaches the IOMMU (only its partials do). Nothing answers such a group
      (timeouts apply to completed groups only), so the device cannot wait
      for it: its credit and index stay held for ``give_up_after`` ns, then
      come back (``abandoned``); with None they are lost for good and the
      device runs on a smaller allocation. The IOMMU keeps the partials until
      a later group with the same key sweeps them in, an overflow
      discards them or a flush drops them. (The model knows which groups it
      lost; a real device would need a timer on every group.)
    - **Stop markers**: with ``stop_markers``, once its groups are all
      answered the device tears its PASIDs down, sending one stop marker each.

    Results: :meth:`results` (one record per answered group) and counters.
    """

    def __init__(self, sim: SimQueue, dev: int, *, pasids: Sequence[int | None] = (1,),
                 groups: int | None = None, group_size: Duration = 1, interval: Duration = 0,
                 outstanding: int | None = None, lost_lpig: float = 0.0,
                 give_up_after: int | None = None, stop_markers: bool = False,
                 perm: int = Perm.READ, needs_pasid: bool = False, retry_delay: int = 1_000,
                 register: bool = True, seed: int | None = None,
                 rng: np.random.Generator | None = None) -> None:
        if not pasids:
            raise ValueError("a device needs at least one PASID (None for requests without PASID)")
        if groups is not None and groups < 0:
            raise ValueError(f"groups must be >= 0 or None, got {groups}")
        if outstanding is not None and outstanding < 1:
            raise ValueError(f"outstanding must be >= 1 or None, got {outstanding}")
        if not 0.0 <= lost_lpig <= 1.0:
            raise ValueError(f"lost_lpig is a probability, got {lost_lpig}")
        if retry_delay < 0 or (give_up_after is not None and give_up_after < 0):
            raise ValueError("retry_delay and give_up_after must be >= 0")
        self.sim = sim
        self.env = sim.env
        self.dev = int(dev)
        self.pasids = list(pasids)
        self.groups = groups
        self.group_size = _duration(group_size, "group_size")
        self.interval = _duration(interval, "interval")
        if groups is None and self.interval == 0:
            raise ValueError("a device that runs forever (groups=None) needs an interval > 0")
        self.outstanding = outstanding
        self.lost_lpig = float(lost_lpig)
        self.give_up_after = give_up_after
        self.stop_markers = stop_markers
        self.perm = int(perm)
        self.needs_pasid = needs_pasid
        self.retry_delay = int(retry_delay)
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self._mask = sim._grpid_mask
        self._flags = _PASID_VALID | (_NEEDS_PASID if needs_pasid else 0)
        if sim._drop_stop and not self.perm & _RW:
            raise ValueError("a device whose requests have neither READ nor WRITE sends stop "
                             "markers, which this policy drops")
        if sim._stall:
            raise ValueError("the Device model sends PRI groups; "
                             "under the stall policy use SimQueue.send")
        if register:
            sim.queue.add_device(self.dev, outstanding)

        self.pri_enabled = True
        #: Time PRI was disabled by a FAILURE response, and that response.
        self.failed_at: int | None = None
        self.failure: PageResponse | None = None
        #: Requests sent and not answered (PCIe credit in use).
        self.credit_used = 0
        self.in_flight: dict[int, _Grp] = {}   # grpid -> group waiting for its response
        self.lost: dict[int, _Grp] = {}        # grpid -> group whose LPIG was lost
        self.groups_sent = 0      # groups sent, retries included
        self.faults_sent = 0      # requests sent, retries included
        self.groups_done = 0      # groups answered (any code but an overflow)
        self.faults_done = 0
        self.retries = 0          # overflow responses (each one resends the group)
        self.invalid = 0          # groups answered INVALID
        self.failures = 0         # FAILURE responses received
        self.groups_lost = 0      # groups whose LPIG was lost
        self.abandoned = 0        # lost groups given up (credit returned)
        self.stop_markers_sent = 0
        self.credit_stalls = 0    # times the device waited for credit or a free index
        self.stall_time = 0       # ns spent waiting for credit
        self.finished_at: int | None = None
        self._records: list[tuple[int, ...]] = []
        self._retry: deque[_Grp] = deque()
        self._retry_timers = 0
        self._wake: simpy.Event | None = None
        self._next_grpid = 0
        self._made = 0
        self._addr = 0
        self.process = self.env.process(self._run())

    # -- the device's issue loop --------------------------------------------------------
    def _run(self):  # type: ignore[no-untyped-def]
        env = self.env
        interval = self.interval
        while self.pri_enabled:
            if self._retry:
                g = self._retry.popleft()
            elif self.groups is None or self._made < self.groups:
                if interval:
                    yield env.timeout(interval if interval.__class__ is int
                                      else _draw(interval, self.rng))  # type: ignore[arg-type]
                    if not self.pri_enabled:
                        break
                g = self._new_group(int(env.now))
            elif self.in_flight or self._retry_timers:
                yield self._wait()  # drain: every group answered before teardown
                continue
            else:
                break
            if not self._fits(g):
                t0 = env.now
                self.credit_stalls += 1
                while self.pri_enabled and not self._fits(g):
                    yield self._wait()
                self.stall_time += int(env.now - t0)
                if not self.pri_enabled:
                    break
            self._issue(g, int(env.now))
        if self.pri_enabled and self.stop_markers:
            for pasid in self.pasids:
                if pasid is not None:
                    self.sim.stop_marker(self.dev, pasid, max(0, self._free_grpid()))
                    self.stop_markers_sent += 1
        self.finished_at = int(env.now)

    def _new_group(self, now: int) -> _Grp:
        i = self._made
        self._made = i + 1
        gs = self.group_size
        n: int = (gs if gs.__class__ is int  # type: ignore[assignment]
                  else max(1, _draw(gs, self.rng)))  # type: ignore[arg-type]
        if self.outstanding is not None and n > self.outstanding:
            n = self.outstanding  # a device forces the LPIG at its allocation
        addr = self._addr
        self._addr = (addr + n * 4096) & 0xFFFF_FFFF_F000
        return _Grp(self.pasids[i % len(self.pasids)], n, addr, now)

    def _free_grpid(self) -> int:
        """The next group index not held by an unanswered or lost group; -1 if none."""
        mask = self._mask
        i = self._next_grpid
        for _ in range(mask + 1):
            if i not in self.in_flight and i not in self.lost:
                return i
            i = (i + 1) & mask
        return -1

    def _fits(self, g: _Grp) -> bool:
        if self.outstanding is not None and self.credit_used + g.n > self.outstanding:
            return False
        return len(self.in_flight) + len(self.lost) <= self._mask

    def _wait(self) -> simpy.Event:
        if self._wake is None:
            self._wake = self.env.event()
        return self._wake

    def _notify(self) -> None:
        w = self._wake
        if w is not None:
            self._wake = None
            w.succeed()

    def _issue(self, g: _Grp, now: int) -> None:
        in_flight, lost, mask = self.in_flight, self.lost, self._mask
        grpid = self._next_grpid
        while grpid in in_flight or grpid in lost:  # _fits saw a free index
            grpid = (grpid + 1) & mask
        self._next_grpid = (grpid + 1) & mask
        g.grpid = grpid
        if g.issued < 0:
            g.issued = now
        n = g.n
        self.credit_used += n
        self.groups_sent += 1
        self.faults_sent += n
        pasid = g.pasid
        kp, flags = (0, 0) if pasid is None else (pasid, self._flags)
        if self.lost_lpig and self.rng.random() < self.lost_lpig:
            self.groups_lost += 1
            self.faults_sent -= 1  # the LPIG never reaches the IOMMU
            lost[grpid] = g
            if n > 1:
                arr = self.sim._pack(now, self.dev, kp, grpid, flags, flags, self.perm, n - 1,
                                     g.addr, 4096)
                self.sim._send(arr, (self.dev, kp, grpid), now, False)
            if self.give_up_after is not None:
                self.env.timeout(self.give_up_after).callbacks.append(  # type: ignore[union-attr]
                    partial(self._give_up, g))
            return
        sim = self.sim
        arr = sim._pack(now, self.dev, kp, grpid, flags, flags | _LAST, self.perm, n, g.addr, 4096)
        ev = sim._send(arr, (self.dev, kp, grpid), now, True)
        in_flight[grpid] = g
        ev.callbacks.append(partial(self._answered, g))  # type: ignore[union-attr]

    def _give_up(self, g: _Grp, _ev: simpy.Event) -> None:
        if self.lost.get(g.grpid) is g:
            del self.lost[g.grpid]
            self.credit_used -= g.n
            self.abandoned += 1
            self._notify()

    def _answered(self, g: _Grp, ev: simpy.Event) -> None:
        resp: PageResponse = ev.value  # type: ignore[assignment]
        del self.in_flight[g.grpid]
        self.credit_used -= g.n
        now = int(self.env.now)
        code = int(resp.code)
        if code == _SUCCESS and resp.reason == _OVERFLOW:
            self.retries += 1
            g.retries += 1
            if self.pri_enabled:
                self._retry_timers += 1
                self.env.timeout(self.retry_delay).callbacks.append(  # type: ignore[union-attr]
                    partial(self._resend, g))
        else:
            if code == _FAILURE:
                self.failures += 1
                if self.pri_enabled:  # PCIe: Response Failure disables PRI
                    self.pri_enabled = False
                    self.failed_at = now
                    self.failure = resp
            elif code == _INVALID:
                self.invalid += 1
            self.groups_done += 1
            self.faults_done += g.n
            self._records.append((g.pasid or 0, g.grpid, g.n, g.created, g.issued, now,
                                  now - g.issued, code, int(resp.reason), g.retries))
        self._notify()

    def _resend(self, g: _Grp, _ev: simpy.Event) -> None:
        self._retry_timers -= 1
        if self.pri_enabled:
            self._retry.append(g)
        self._notify()

    # -- results -------------------------------------------------------------------------
    def results(self) -> np.ndarray:
        """One ``RESULT_DTYPE`` record per answered group, in answer order.

        ``latency`` is ``answered - issued`` (first issue, retries included);
        ``issued - created`` is the time the group waited for credit.
        """
        return np.array(self._records, dtype=RESULT_DTYPE)

    def __repr__(self) -> str:
        state = "on" if self.pri_enabled else f"disabled at {self.failed_at}"
        return (f"Device(dev={self.dev:#x}, pri={state}, sent={self.groups_sent}, "
                f"done={self.groups_done}, in_flight={len(self.in_flight)}, "
                f"credit_used={self.credit_used}/{self.outstanding})")
