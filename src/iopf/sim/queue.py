"""The queue adapter: an :class:`iopf.Queue` whose clock is a SimPy environment."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import simpy

from ..policies import Policy
from ..queue import Group, Queue
from ..types import FAULT_DTYPE, PageResponse, Perm, Response
from ._common import KIND_LAST, LAST, NEEDS_PASID, PASID_VALID


class SimQueue:
    """An :class:`iopf.Queue` whose clock is a SimPy environment.

    ``queue`` is a ready Queue, a Policy to build one with, or None for
    ``Queue()``. The adapter takes over ``queue.on_response`` (a callback set
    there before is kept and still called, after the adapter, for every
    response); ``on_response`` adds one.

    Time: the queue holds every timed event itself (timeouts, answers
    scheduled with ``respond(..., at=)``, the workers of a
    :class:`~iopf.sim.Server`); the adapter keeps one SimPy timer armed at
    the queue's :meth:`~iopf.Queue.next_deadline` and advances the queue
    when it fires. Requests reported at ``env.now`` come after everything
    due at or before ``env.now`` (``Queue.auto_advance``), as in a replay of
    the same arrivals.

    Timeouts: with ``queue.policy.response_timeout``, a group is answered
    ``policy.timeout_code`` at exactly ``group.time + response_timeout`` if
    nothing answered it before. An answer at the very instant of the
    deadline loses: the group has timed out ("at or before"), and the late
    answer is stale. ``expire_every=Q`` rounds deadlines up to multiples of
    Q ns instead (a kernel-style periodic scan: a group times out within Q
    ns after its deadline).

    Responses: a response with a cookie resolves the event of that group. A
    response with cookie 0 (an LPIG answered at once: no handler under
    ``require_handler``, or an overflow) resolves the event of the group being
    sent, matched on ``(dev, pasid, grpid)``. Extra cookie-0 responses (Linux
    6.11+ answers every request of a group without handler, partials too) are
    what a device sees as unexpected responses: counted in ``unmatched``,
    like responses to groups no event waits on.

    Requests go into the queue a whole group per call, through the queue's
    own entry for that (no arrays): a ``Queue`` subclass that overrides
    ``report`` or ``report_batch`` does not see them.
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
        self._core = queue.core
        self._chained = queue.on_response
        self.on_response = on_response
        queue.on_response = self._on_response
        queue.auto_advance = True
        if expire_every is not None:
            self._core.set_timeout_quantum(expire_every)
        #: Responses seen, and those that resolved no waiting event.
        self.responses = 0
        self.unmatched = 0
        self._waiting: dict[int, simpy.Event] = {}   # cookie -> the group's event
        self._buffer: list[PageResponse] | None = None
        self._timer_at: int | None = None            # the earliest armed timer
        self._armed: set[int] = set()

    @property
    def now(self) -> int:
        return int(self.env.now)

    @property
    def pending(self) -> int:
        """Groups sent through the adapter whose event still waits for a response."""
        return len(self._waiting)

    @property
    def grpid_mask(self) -> int:
        """The largest group index the policy allows (indices wrap at it)."""
        return (1 << self.policy.grpid_bits) - 1

    def kinds(self, faults: np.ndarray) -> np.ndarray:
        """What the queue's rules make of each request, without reporting it:
        0 held as a partial, 1 completes a group, 2 dropped (a stop marker)."""
        return self._core.kinds(faults)

    # -- sending -----------------------------------------------------------------------
    def send(self, dev: int, pasid: int | None, grpid: int, n: int = 1, *, addr: int = 0,
             stride: int = 4096, perm: int = Perm.READ, last: bool = True,
             needs_pasid: bool = False) -> simpy.Event | None:
        """Send one group of ``n`` requests at ``env.now``: n-1 partials, then the LPIG.

        Addresses are ``addr + i * stride``; ``pasid=None`` sends requests
        without PASID. Returns the event that succeeds with the group's
        :class:`~iopf.PageResponse`, or None when no response will come
        (``last=False``: partials only; or a stop marker the policy drops).
        """
        if pasid is None:
            pasid, flags = 0, 0
        else:
            flags = PASID_VALID | (NEEDS_PASID if needs_pasid else 0)
        return self.send_group(dev, pasid, grpid, n, flags=flags, perm=perm, addr=addr,
                               stride=stride, last=last)

    def send_group(self, dev: int, pasid: int, grpid: int, n: int, *, flags: int, perm: int,
                   addr: int = 0, stride: int = 4096, last: bool = True) -> simpy.Event | None:
        """The device models' way in: :meth:`send` with the request flags given
        (PASID_VALID, NEEDS_PASID; LAST_PAGE is added to the last request when
        ``last``)."""
        # The core builds the records from these fields: no array either way.
        buf: list[PageResponse] = []
        self._buffer = buf
        cookie = 0
        try:
            cookie = self.queue._report_group(int(self.env.now), dev, pasid, grpid, flags,
                                              flags | LAST if last else flags, perm, n, addr, stride)
        finally:
            self._buffer = None
            ev = self._settle(cookie, buf, (dev, pasid, grpid))
            self._arm()
        return ev

    def _check_one_group(self, faults: np.ndarray) -> None:
        early = np.flatnonzero(self._core.kinds(faults)[:-1] == KIND_LAST)
        if len(early):
            raise ValueError(f"record {int(early[0])} would complete a group before the last one "
                             "under this policy: send one group per call")

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
        faults = np.ascontiguousarray(faults)
        if n > 1:
            self._check_one_group(faults)
        faults["time"] = int(self.env.now)
        lp = faults[n - 1]
        return self._send(faults, (int(lp["dev"]), int(lp["pasid"]), int(lp["grpid"])))

    def _send(self, faults: np.ndarray, key: tuple[int, int, int]) -> simpy.Event | None:
        buf: list[PageResponse] = []
        self._buffer = buf
        cookie = 0
        try:
            batch = self.queue.report_batch(faults)
            if len(batch.cookies):  # only the last record can have formed a group
                cookie = int(batch.cookies[-1])
        finally:
            self._buffer = None
            ev = self._settle(cookie, buf, key)
            self._arm()
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
        for cookie, e in list(self._waiting.items()):
            if e is ev:
                del self._waiting[cookie]
        if ev.triggered:  # answered during the send: a response no one expected
            self.unmatched += 1

    def _settle(self, cookie: int, buf: list[PageResponse], key: tuple[int, int, int]
                ) -> simpy.Event | None:
        """Register the group a send formed (its cookie; 0: none, or unknown as
        the send raised), then route the responses it caused.

        Whether a response is owed is the queue's word (what its last request
        was under its rules), not the adapter's.
        """
        ev = simpy.Event(self.env) if self._core.last_kind == KIND_LAST else None
        if ev is None:
            cookie = 0
        elif cookie:
            self._waiting[cookie] = ev
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
            w.succeed(resp)
        else:
            self.unmatched += 1
        self._forward(resp)

    def _forward(self, resp: PageResponse) -> None:
        """Pass a response on to the queue's earlier callback and to ours."""
        if self._chained is not None:
            self._chained(resp)
        if self.on_response is not None:
            self.on_response(resp)

    def respond(self, group: Group | int, code: Response | int, *, at: int | None = None) -> bool:
        """Answer a pending group at ``env.now`` (or schedule it for ``at``);
        False if it was answered already.

        A group whose deadline is ``env.now`` times out first (see the class
        docstring), so this returns False for it.
        """
        now = int(self.env.now)
        if at is None:
            d = self._core.next_deadline()
            if d is not None and d <= now:
                self.queue.advance(now)
            return self.queue.respond(group, code, time=now)
        sent = self.queue.respond(group, code, at=at)
        self._arm()
        return sent

    def serve(self, group: Group | int, *, service_time: int | None = None,
              code: Response | int | None = None) -> bool:
        """Hand a pending group to the queue's workers (``Queue.serve``) at ``env.now``."""
        sent = self.queue.serve(group, at=int(self.env.now), service_time=service_time, code=code)
        self._arm()
        return sent

    def expire(self) -> None:
        """Answer, now, every pending group whose timeout is due (``Queue.expire``)."""
        self.queue.expire(int(self.env.now))

    # -- the timer -------------------------------------------------------------------------
    def _arm(self) -> None:
        """Make sure a timer fires at the queue's next deadline (one timer, not one per group)."""
        d = self._core.next_deadline()
        if d is None or d in self._armed or (self._timer_at is not None and d >= self._timer_at):
            return
        self._timer_at = d
        self._armed.add(d)
        delay = d - self.env.now
        self.env.timeout(delay if delay > 0 else 0).callbacks.append(self._on_timer)  # type: ignore[union-attr]

    def _on_timer(self, ev: simpy.Event) -> None:
        now = int(self.env.now)
        self._armed.discard(now)
        self._timer_at = min(self._armed) if self._armed else None
        self.queue.advance(now)
        self._arm()

    def __repr__(self) -> str:
        return (f"SimQueue(now={self.env.now}, pending={len(self._waiting)}, "
                f"responses={self.responses}, unmatched={self.unmatched}, queue={self.queue!r})")


__all__ = ["SimQueue"]
