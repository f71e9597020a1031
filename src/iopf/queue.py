"""The queue: where page requests are reported, grouped, handed out and answered.

>>> from iopf import Queue, Fault, Response
>>> q = Queue()
>>> q.report(Fault(dev=1, pasid=5, grpid=3, addr=0x1000))       # partial: held
>>> g = q.report(Fault(dev=1, pasid=5, grpid=3, addr=0x2000, last=True))
>>> len(g), g.pasid, g.respond(Response.SUCCESS), g.respond(Response.SUCCESS)
(2, 5, True, False)
>>> q.take_responses()[["grpid", "code", "nfaults"]].tolist()
[(3, 0, 2)]
"""
from __future__ import annotations

import collections
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Union

import numpy as np

from iopf_core import COMPILED, STRATEGIES, Grouper, GroupBase, PyGrouper, QueueLock

from . import policies
from .policies import Policy
from .service import Service
from .types import FAULT_DTYPE, NO_PASID, Fault, Flag, PageResponse, Perm, Reason, Response

__all__ = ["Queue", "Group", "GroupBatch", "Stats", "Handler"]

#: A handler takes a completed group and answers it (a code) or not yet (None).
Handler = Callable[["Group"], Union[Response, int, None]]


class Group(GroupBase):
    """A completed group: the partials of its key in arrival order, LPIG last.

    ``Group(queue, cookie, faults)``. A group from ``report`` keeps its
    records as bytes: the ``faults`` array (writable, its own copy) is made
    the first time it is read, as most callers only answer the group.
    ``respond(code, *, time=None)`` answers it; False if it was answered
    already (one answer per group).
    """

    __slots__ = ()

    @property
    def faults(self) -> np.ndarray:
        """The group's requests (FAULT_DTYPE), arrival order, LPIG last."""
        if self._faults is None:   # a writable array of its own, as the other groups'
            self._faults = np.frombuffer(bytearray(self._raw), FAULT_DTYPE)  # type: ignore[arg-type]
        return self._faults

    def _lpig(self) -> tuple[int, int, int, int, int]:
        """(time, dev, pasid, grpid, flags) of the LPIG, without an array."""
        if self._raw is not None:
            return _LPIG.unpack_from(self._raw, len(self._raw) - _RECORD)  # type: ignore[return-value]
        return tuple(self._faults[-1].tolist()[:5])  # type: ignore[index,return-value]

    @property
    def last(self) -> Fault:
        """The LPIG, the request that completed the group."""
        return Fault.from_record(self.faults[-1])

    @property
    def dev(self) -> int:
        return self._lpig()[1]

    @property
    def pasid(self) -> int:
        return self._lpig()[2]

    @property
    def pasid_valid(self) -> bool:
        return bool(self._lpig()[4] & _PASID_VALID)

    @property
    def grpid(self) -> int:
        return self._lpig()[3]

    @property
    def time(self) -> int:
        return self._lpig()[0]

    def __len__(self) -> int:
        if self._raw is not None:
            return len(self._raw) // _RECORD
        return len(self._faults)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Fault]:
        return (Fault.from_record(r) for r in self.faults)

    def __repr__(self) -> str:
        return (f"Group(cookie={self.cookie}, dev={self.dev}, pasid={self.pasid}, "
                f"grpid={self.grpid}, faults={len(self)}, time={self.time})")


class GroupBatch:
    """The groups completed by one ``report_batch``, as arrays.

    ``faults[offsets[i]:offsets[i+1]]`` are the faults of group i, answered
    with cookie ``cookies[i]``; indexing or iterating gives ``Group`` objects.
    ``faults`` is read-only: the compiled core keeps the faults of a pending
    group from a batch there, not a second copy, and ``Queue.pending()``
    reads them back from it.
    """

    __slots__ = ("_queue", "faults", "offsets", "cookies")

    def __init__(self, queue: Queue, faults: np.ndarray, offsets: np.ndarray, cookies: np.ndarray):
        self._queue = queue
        self.faults = faults
        self.offsets = offsets
        self.cookies = cookies

    def __len__(self) -> int:
        return len(self.cookies)

    def __getitem__(self, i: int) -> Group:
        n = len(self.cookies)
        if not -n <= i < n:
            raise IndexError(f"group index {i} out of range for {n} groups")
        i %= n
        return Group(self._queue, int(self.cookies[i]),
                     self.faults[self.offsets[i]:self.offsets[i + 1]])

    def __iter__(self) -> Iterator[Group]:
        return (self[i] for i in range(len(self)))

    @property
    def sizes(self) -> np.ndarray:
        """Number of faults of each group."""
        return np.diff(self.offsets)

    def respond(self, code: Response | int) -> np.ndarray:
        """Answer every group of the batch with one code; which were sent."""
        return self._queue.respond_batch(self.cookies, np.full(len(self), int(code), np.uint32))

    def __repr__(self) -> str:
        return f"GroupBatch({len(self)} groups, {len(self.faults)} faults)"

    def _repr_html_(self) -> str:
        from ._display import batch_html   # notebooks only
        return batch_html(self)


class Stats:
    """A snapshot of the queue's counters (the conservation law: see :meth:`conserved`)."""

    __slots__ = ("faults_reported", "partial_now", "grouped", "stop_markers", "rejected",
                 "overflowed", "discarded", "flushed", "removed", "groups", "answered",
                 "pending_now", "stale_responses")

    faults_reported: int
    partial_now: int
    grouped: int
    stop_markers: int
    rejected: int
    overflowed: int
    discarded: int
    flushed: int
    removed: int
    groups: int
    answered: int
    pending_now: int
    stale_responses: int

    def __init__(self, counters: dict[str, int]) -> None:
        for name in self.__slots__:
            setattr(self, name, int(counters[name]))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def conserved(self) -> bool:
        """The conservation law: no fault or group unaccounted for."""
        return (self.faults_reported == self.partial_now + self.grouped + self.stop_markers
                + self.rejected + self.overflowed + self.discarded + self.flushed + self.removed
                and self.groups == self.answered + self.pending_now)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stats) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return "Stats(" + ", ".join(f"{k}={v}" for k, v in self.as_dict().items()) + ")"


def _check_time(t: object, name: str) -> int:
    """A time argument, as the core checks its own: an int of ns (a float or a
    bool is refused, never cut: TypeError) in [0, 2**64) (ValueError)."""
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(t).__name__} ({t!r})")
    if not 0 <= t < 2**64:
        raise ValueError(f"{name} must be a whole number of ns in [0, 2**64), not {t!r}")
    return int(t)


def _key_pasid(pasid: int | None, no_pasid: int | None = None) -> int:
    if pasid is None or pasid == no_pasid:  # the policy's "no PASID" value is the RID's
        return NO_PASID
    if not 0 <= pasid < NO_PASID:
        raise ValueError(f"pasid {pasid} out of range")
    return int(pasid)


#: The core's code for "served by the queue's service model".
_SERVE = 3


def _constant_code(handler: object) -> int:
    """The code of a constant handler, -1 for a callable (or None)."""
    if isinstance(handler, Service):
        return _SERVE
    if handler is None or callable(handler):
        return -1
    if isinstance(handler, (int, np.integer)) and not isinstance(handler, bool):
        return _check_code(handler)  # type: ignore[arg-type]
    raise TypeError(f"a handler is a callable or a Response code, not {type(handler).__name__}")


#: Members by value: a dict lookup instead of an Enum call on every response.
_CODES = {int(r): r for r in Response}
_FLAGS = {i: Flag(i) for i in range(16)}
_REASONS = {int(r): r for r in Reason}
_PASID_VALID = int(Flag.PASID_VALID)   # a plain int: `int & Flag` goes through enum code
_LPIG = struct.Struct("<QIIII")        # time, dev, pasid, grpid, flags: a record's first fields
_RECORD = FAULT_DTYPE.itemsize
_READ = int(Perm.READ)
_FAILURE = int(Response.FAILURE)
_CALLER = int(Reason.CALLER)


def _check_code(code: Response | int) -> int:
    """A response code (Response or int 0..2) as an int; one rule for every
    code a caller or a handler gives (bool, float and complex are refused)."""
    if (code.__class__ is int or code.__class__ is Response) and code in _CODES:
        return int(code)
    if isinstance(code, (bool, np.bool_)) or not isinstance(code, (int, np.integer)):
        raise TypeError(f"a response code is a Response or an int, not "
                        f"{type(code).__name__} ({code!r})")
    if int(code) not in _CODES:
        raise ValueError(f"response code {code!r} is not one of "
                         f"{[int(r) for r in Response]} (SUCCESS, INVALID, FAILURE)")
    return int(code)


class Queue:
    """An IOMMU's page request queue.

    ``strategy`` picks where partial faults wait: ``"hash"`` (default),
    ``"tree"``, ``"list"`` (the kernel's) or ``"python"`` (the reference
    twin; also chosen by the environment variable ``IOPF_PURE_PYTHON=1``).

    One queue is safe to share between threads: every call takes the
    queue's lock (the batch loop itself runs without the GIL), except
    ``report``, ``report_values`` and ``group.respond`` while no Python code
    can run inside them (no callable handler, no ``on_response``): those run
    in C, holding the GIL, and take the lock only if another thread holds it.

    Simulated time: timeouts and answers scheduled with ``respond(...,
    at=)`` (or by the :attr:`service` workers) are sent by :meth:`advance`;
    with ``auto_advance=True`` every reported request first advances time
    to its own time, so that what falls due before it is sent first.
    """

    def __init__(self, policy: Policy = policies.PCIE, *, strategy: str = "hash",
                 default_handler: Handler | Response | Service | None = None,
                 on_response: Callable[[PageResponse], Any] | None = None,
                 auto_advance: bool = False) -> None:
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must be an iopf.Policy, not {type(policy).__name__}")
        if os.environ.get("IOPF_PURE_PYTHON") == "1" or not COMPILED:
            strategy = "python"   # the twin, on purpose or for want of the compiled core
        try:
            core_cls = STRATEGIES[strategy]
        except KeyError:
            raise ValueError(f"unknown strategy {strategy!r}; "
                             f"choose from {sorted(STRATEGIES)}") from None
        self.policy = policy
        self.strategy = strategy
        self.core: Grouper | PyGrouper = core_cls(policy)
        self._on_response = on_response   # (the property's setter needs the lock)
        # Responses taken from the core and not yet given to on_response, in
        # send order: what a raising callback leaves is delivered next time.
        self._undelivered: collections.deque[tuple[Any, ...]] = collections.deque()
        self._handlers: dict[tuple[int, int | None], Handler | Response | Service] = {}
        self._default: Handler | Response | Service | None = None
        # Re-entrant; held, it marks the core as this thread's (see report).
        self._lock = QueueLock(self.core)
        self._dispatching = False
        self._service: Service | None = None
        self.core.auto_advance = bool(auto_advance)
        self._py_handlers = 0       # attached handlers that are callables
        self._fast = False
        self.default_handler = default_handler
        if COMPILED and isinstance(self.core, Grouper) and type(self).report is Queue.report:
            # report, report_values and respond go straight to the core's C
            # entries, which take the methods below (with the lock) when they must.
            self.core.bind(self, Group, Fault, Queue.report, Queue.report_values, Queue.respond)
            self.report = self.core.fast_report  # type: ignore[method-assign]
            self.report_values = self.core.report_values_entry()  # type: ignore[method-assign]
            if type(self).respond is Queue.respond:
                self.respond = self.core.fast_respond  # type: ignore[method-assign]

    # -- configuration -----------------------------------------------------------------
    @property
    def default_handler(self) -> Handler | Response | Service | None:
        return self._default

    @default_handler.setter
    def default_handler(self, handler: Handler | Response | Service | None) -> None:
        with self._lock:
            auto = self._auto_code(handler)
            self._default = handler
            self.core.set_default_handler(handler is not None, auto)
            self._update_fast()

    @property
    def on_response(self) -> Callable[[PageResponse], Any] | None:
        """Called with each response as it is sent (None: responses wait in the outbox)."""
        return self._on_response

    @on_response.setter
    def on_response(self, callback: Callable[[PageResponse], Any] | None) -> None:
        with self._lock:
            self._on_response = callback
            self._update_fast()

    def _update_fast(self) -> None:
        # report, report_values and respond skip the lock (see QueueLock) when no
        # Python code can run inside them: a compiled core, no callable
        # handler, no on_response, not inside a handler.
        self._fast = (self.strategy != "python" and self._py_handlers == 0
                      and not callable(self._default) and self._on_response is None
                      and not self._dispatching)
        self.core.fast = self._fast

    def add_device(self, dev: int, outstanding: int | None = None) -> None:
        """Register dev with a PRI allocation of ``outstanding`` requests (None: unlimited).

        Under a ``require_device`` policy (LINUX, VTD) requests of a device that
        was not added (or was removed) are answered INVALID at once, as
        ``iommu_report_device_fault`` does for a device without IOPF enabled.
        """
        if outstanding is not None and not 0 < outstanding < 2**32:
            raise ValueError(f"outstanding must be a positive 32-bit count, got {outstanding}")
        with self._lock:
            self.core.add_device(dev, outstanding or 0)

    def remove_device(self, dev: int, *, time: int | None = None) -> None:
        """Drop dev's partials; answer its pending groups INVALID, newest first, as
        ``iopf_queue_remove_device`` does. The device is no longer added."""
        with self._lock:
            self.core.remove_device(dev, time)
            self._deliver()

    def attach(self, dev: int, pasid: int | None, handler: Handler | Response | Service) -> None:
        """Route the groups of (dev, pasid) to handler; pasid None is no-PASID.

        Under a policy with ``no_pasid`` (Linux: 0, the kernel's IOMMU_NO_PASID)
        that PASID is the RID too: ``attach(dev, 0, h)`` is ``attach(dev, None, h)``,
        and requests with PASID 0 go to it.

        A ``Response`` instead of a callable is a constant handler: every
        group is answered with that code as it forms, without a call into
        Python (a batch then stays in C). A :class:`Service` (the queue's
        service model) queues each group for a worker, in C too, and
        schedules its answer for when its service ends (sent by
        :meth:`advance`). Attaching over an existing handler is a replace: the old attachment's pending groups are answered
        INVALID, as detach does.
        """
        with self._lock:
            auto = self._auto_code(handler)
            self.core.attach(dev, _key_pasid(pasid, self.policy.no_pasid), None, auto)
            key = (dev, self._rid(pasid))
            self._py_handlers += callable(handler) - callable(self._handlers.get(key))
            self._handlers[key] = handler
            self._update_fast()
            self._deliver()

    def detach(self, dev: int, pasid: int | None, *, time: int | None = None) -> bool:
        """Remove the handler of (dev, pasid) and answer its pending groups INVALID.

        Newest first, as iommufd's ``iommufd_auto_response_faults`` answers the
        groups userspace has not read (a group a handler left pending counts as
        not read; ``iopf.iommufd`` models reading). Under ``attach_adds_device``
        (VTD) detaching a device's last handler removes the device instead, as
        ``remove_device`` does (the VT-d driver since Linux 6.16).
        """
        with self._lock:
            self._py_handlers -= callable(self._handlers.pop((dev, self._rid(pasid)), None))
            self._update_fast()
            done = self.core.detach(dev, _key_pasid(pasid, self.policy.no_pasid), time)
            self._deliver()
            return bool(done)

    def _auto_code(self, handler: object) -> int:
        """The core's code for a handler; a Service becomes the queue's service model."""
        auto = _constant_code(handler)
        if isinstance(handler, Service):
            self.service = handler
        return auto

    @property
    def service(self) -> Service | None:
        """The queue's service model (its workqueue), or None. A queue has one:
        every handler that is a :class:`Service` must be this one."""
        return self._service

    @service.setter
    def service(self, service: Service) -> None:
        if not isinstance(service, Service):
            raise TypeError(f"service must be an iopf.Service, not {type(service).__name__}")
        with self._lock:
            if self._service is service:
                return
            if self._service is not None:
                raise ValueError("a queue has one service model (its workqueue); "
                                 f"it has {self._service!r} already")
            service.install(self.core)
            self._service = service

    @property
    def auto_advance(self) -> bool:
        """Whether reporting a request first advances simulated time to its time
        (so scheduled answers and timeouts due before it are sent first)."""
        return bool(self.core.auto_advance)

    @auto_advance.setter
    def auto_advance(self, on: bool) -> None:
        self.core.auto_advance = bool(on)

    # -- reporting -----------------------------------------------------------------------
    def report(self, fault: Fault) -> Group | None:
        """Report one request; the group it completed, if any.

        The group is returned whether or not a handler took it (a handler's
        answer makes later responses to it stale).
        """
        # A compiled core's queue calls Grouper.fast_report instead, which
        # comes here only when it cannot go without the lock.
        if fault.__class__ is not Fault and not isinstance(fault, Fault):
            raise TypeError(f"report takes an iopf.Fault, not {type(fault).__name__}")
        lock = self._lock
        lock.acquire()   # acquire/release: a `with` block costs several times more
        try:
            if self._dispatching:
                self._check_reentry()
            done = self.core.report_fault(fault)
            if not done:   # None: no group (never False: this thread holds the queue)
                if self._on_response is not None:
                    self._deliver()
                return None
            return self._completed(done[0], done[1], fault[1], fault[2], fault[4])
        finally:
            lock.release()

    def report_values(self, dev: int, pasid: int, grpid: int, flags: int, addr: int, *,
                      perm: int = _READ, time: int = 0) -> Group | None:
        """Report one request given field by field, for models that hold no
        ``Fault``: the same as ``report(Fault(dev, pasid, grpid, addr,
        flags=flags, perm=perm, time=time))``, without making the Fault."""
        lock = self._lock
        lock.acquire()
        try:
            if self._dispatching:
                self._check_reentry()
            done = self.core.report_values(time, dev, pasid, grpid, flags, perm, addr)
            if not done:
                if self._on_response is not None:
                    self._deliver()
                return None
            return self._completed(done[0], done[1], dev, pasid, flags)
        finally:
            lock.release()

    def _completed(self, cookie: int, raw: bytes, dev: int, pasid: int, flags: int) -> Group:
        """The Group of a request that completed one (lock held): dispatched to
        its Python handler if it has one, responses delivered."""
        group = Group(self, cookie, None, raw)
        try:
            if self.core.dispatch:
                self._dispatch(self._handler_for(dev, pasid, flags), group)
        finally:  # a handler's FAILURE answer is delivered before its exception
            if self._on_response is not None:
                self._deliver()
        return group

    def report_batch(self, faults: np.ndarray) -> GroupBatch:
        """Report a FAULT_DTYPE array; the groups it completed.

        Every record is checked first: a bad one raises ValueError naming its
        index and nothing of the batch is applied. The loop runs in C
        without the GIL; it returns to Python only to call a handler, once per
        group that has one, so the result equals reporting one by one.
        """
        arr = self._as_batch(faults)
        errors: list[BaseException] = []
        with self._lock:
            self._check_reentry()
            self.core.check(arr)
            core = self.core
            i, n = 0, len(arr)
            try:
                while i < n:
                    i = core.run(arr, i)
                    if core.dispatch:
                        self._dispatch_formed(errors)
            finally:  # even when interrupted: the core's output is taken, responses delivered
                batch = GroupBatch(self, *core.take_groups())
                self._deliver()
        self._raise_handler_errors(errors)
        return batch

    def _report_group(self, time: int, dev: int, pasid: int, grpid: int, flags: int,
                      last_flags: int, perm: int, n: int, addr: int, stride: int) -> int:
        """Report the n requests of one group given by their fields (request i
        at ``addr + i * stride``, the last with ``last_flags``; see the core's
        ``report_group``): what report_batch does with their records, without
        the arrays. The cookie of the group the last request completed, or 0.

        For models that send whole groups (iopf.sim). Every request is checked
        before any is applied; only the last may complete a group.
        """
        errors: list[BaseException] = []
        with self._lock:
            self._check_reentry()
            core = self.core
            try:
                cookie: int = core.report_group(time, dev, pasid, grpid, flags, last_flags, perm,
                                                n, addr, stride)
                if core.dispatch:
                    self._dispatch_formed(errors)
            finally:
                self._deliver()
        self._raise_handler_errors(errors)
        return cookie

    def _dispatch_formed(self, errors: list[BaseException]) -> None:
        """Call the Python handler of the group the core just formed
        (``core.dispatch``); what it raises is kept in errors, raised after
        the whole call (the group is answered already)."""
        group = self._pending_group(self.core.last_cookie)
        try:
            _, dev, pasid, _, flags = group._lpig()
            self._dispatch(self._handler_for(dev, pasid, flags), group)
        except Exception as exc:
            errors.append(exc)

    @staticmethod
    def _raise_handler_errors(errors: list[BaseException]) -> None:
        if errors:
            first = errors[0]
            if len(errors) > 1:
                first.add_note(f"{len(errors) - 1} more handler errors in this batch")
            raise first

    @staticmethod
    def _as_batch(faults: np.ndarray) -> np.ndarray:
        if not isinstance(faults, np.ndarray):
            raise TypeError(f"faults must be a numpy array of FAULT_DTYPE, not {type(faults).__name__}")
        if faults.dtype != FAULT_DTYPE:
            raise TypeError(f"faults must have dtype iopf.FAULT_DTYPE, got {faults.dtype}")
        if faults.ndim != 1:
            raise ValueError(f"faults must be one-dimensional, got shape {faults.shape}")
        return np.ascontiguousarray(faults)

    def _check_reentry(self) -> None:
        if self._dispatching:
            raise RuntimeError("a handler may answer groups but not report faults to its own queue")

    def _handler_for(self, dev: int, pasid: int, flags: int) -> Handler:
        """The handler of the LPIG's (dev, PASID), else the default."""
        key = (dev, self._rid(pasid) if flags & _PASID_VALID else None)
        return self._handlers.get(key, self._default)  # type: ignore[return-value]

    def _rid(self, pasid: int | None) -> int | None:
        """None for the RID: no PASID, or the policy's no_pasid (Linux: PASID 0)."""
        return None if pasid == self.policy.no_pasid else pasid

    def _dispatch(self, handler: Handler, group: Group) -> None:
        """Call the handler; answer with its code, or FAILURE if it raises
        (or returns something that is not a response code)."""
        self._dispatching = True
        try:
            code = handler(group)
            if code is not None:
                code = _check_code(code)
        except BaseException:
            self.core.respond(group.cookie, int(self.policy.handler_error_code), Reason.HANDLER_ERROR)
            raise
        finally:
            self._dispatching = False
            self._update_fast()
        if code is not None:
            self.core.respond(group.cookie, code, Reason.HANDLER)

    # -- responses ---------------------------------------------------------------------
    def respond(self, group: Group | int, code: Response | int, *, time: int | None = None,
                at: int | None = None) -> bool:
        """Answer a pending group (a Group or its cookie); False if not pending (one answer
        per group).

        With ``at`` (simulated ns) the answer is scheduled instead: it is sent
        by the ``advance`` that reaches ``at``, stamped ``at``, unless the
        group has been answered by then (a flush, detach, removal, timeout or
        another answer): it is then stale. True means scheduled.
        """
        if isinstance(group, Group):
            if group._queue is not self:
                raise ValueError("this group belongs to another queue")
            cookie = group.cookie
        else:
            cookie = group
        if cookie.__class__ is not int:
            if not isinstance(cookie, (int, np.integer)) or isinstance(cookie, bool):
                raise TypeError(f"respond takes a Group or an int cookie, not {type(cookie).__name__}")
            cookie = int(cookie)
        if code.__class__ is not int or not 0 <= code <= _FAILURE:  # type: ignore[operator]
            code = _check_code(code)
        if at is not None:
            at = _check_time(at, "at")
        elif self._fast and 0 < cookie < 2**64:  # type: ignore[operator]
            sent = self.core.respond(cookie, code, _CALLER, time)  # None: another thread is inside
            if sent is not None:
                return sent
        lock = self._lock
        lock.acquire()
        try:
            if not 0 < cookie < 2**64:  # type: ignore[operator]
                self.core.respond(0, code, _CALLER, time)  # counted stale, as any unknown cookie
                return False
            sent = self.core.respond(cookie, code, _CALLER, time, at)
            if self._on_response is not None:
                self._deliver()
            return bool(sent)
        finally:
            lock.release()

    def respond_batch(self, cookies: Iterable[int] | np.ndarray,
                      codes: Iterable[int] | np.ndarray | int, *,
                      time: int | None = None,
                      at: int | Iterable[int] | np.ndarray | None = None) -> np.ndarray:
        """Answer many groups (at simulated ``time``, default now); a bool array of
        which were sent. Codes are checked first: a bad one applies nothing.

        With ``at`` (a time, or one per cookie) the answers are scheduled, as
        :meth:`respond` does; the array then says which were scheduled.
        """
        k = np.asarray(cookies)
        if k.ndim != 1 or (k.size and not np.issubdtype(k.dtype, np.integer)):
            raise TypeError("cookies must be a 1-D array of integers")
        if k.size and k.dtype.kind != "u" and k.min() < 0:   # a GroupBatch's are uint64
            raise ValueError("cookies must be positive")
        if codes.__class__ is int or codes.__class__ is Response:
            # One code for all (the common case): checked once, no per-element passes.
            c = np.full(k.shape, _check_code(codes), np.uint32)  # type: ignore[arg-type]
        else:
            c = np.broadcast_to(np.asarray(codes), k.shape)
            if c.size and not np.issubdtype(c.dtype, np.integer):
                raise TypeError("codes must be integers")
            bad = np.flatnonzero((c < 0) | (c > int(Response.FAILURE)))
            if len(bad):
                raise ValueError(f"codes[{bad[0]}] = {c[bad[0]]} is not a response code")
        when = None
        if at is not None:
            a = np.asarray(at)
            if a.ndim > 1 or (a.ndim == 1 and a.shape != k.shape):
                raise ValueError(f"at must be one time or one per cookie ({len(k)}), "
                                 f"got shape {a.shape}")
            if a.dtype == object:       # Python ints too large for int64, or mixed values
                a = np.array([_check_time(x, "at") for x in a.ravel()], np.uint64).reshape(a.shape)
            if a.size and not np.issubdtype(a.dtype, np.integer):
                raise TypeError(f"at must hold ints (ns), not {a.dtype}")
            if a.size and a.min() < 0:
                raise ValueError("at must hold whole ns >= 0")
            when = np.broadcast_to(a, k.shape).astype(np.uint64)
        with self._lock:
            sent = self.core.respond_batch(k.astype(np.uint64, copy=False),
                                           c.astype(np.uint32, copy=False), _CALLER, time, when)
            self._deliver()
            return sent

    def _respond_as(self, cookie: int, code: int, reason: Reason) -> bool:
        """Answer a pending group as the kernel would, with its reason (for iopf.iommufd)."""
        with self._lock:
            sent = self.core.respond(cookie, code, reason)
            self._deliver()
            return bool(sent)

    def serve(self, group: Group | int, *, at: int | None = None,
              service_time: int | None = None, code: Response | int | None = None) -> bool:
        """Hand a pending group to the queue's :attr:`service` model at ``at``
        (default: the group's time): it waits for a free worker, is served
        for ``service_time`` ns (default: a draw of the model) and its answer
        (``code``, default the model's) is scheduled. False (and counted
        stale) if the group is not pending."""
        if self._service is None:
            raise ValueError("the queue has no service model: set Queue.service first")
        when: int | None = at
        if isinstance(group, Group):
            cookie = group.cookie
            if when is None:
                when = group.time
        else:
            cookie = group
        t = _check_time(self.now if when is None else when, "at")
        if service_time is not None:
            service_time = _check_time(service_time, "service_time")
        if not 0 < cookie < 2**64:
            raise ValueError(f"cookie {cookie} out of range")
        c = None if code is None else _check_code(code)
        with self._lock:
            return bool(self.core.serve(int(cookie), t, service_time, c))

    def advance(self, now: int) -> None:
        """Move simulated time to ``now``: send every scheduled answer and every
        timeout due at or before it, in time order (ties in the order they were
        scheduled; a group's timeout counts as scheduled when the group
        formed), each stamped with its due time."""
        now = _check_time(now, "now")
        with self._lock:
            self.core.advance(now)
            self._deliver()

    def next_deadline(self) -> int | None:
        """The earliest scheduled answer or timeout still to come, or None."""
        with self._lock:
            t = self.core.next_deadline()
            return None if t is None else int(t)

    def take_responses(self) -> np.ndarray:
        """Empty the outbox: the responses sent so far, in order (RESPONSE_DTYPE)."""
        with self._lock:
            out = self.core.take_responses()
            if self._undelivered:   # left by a raising on_response: they came first
                out = np.array(list(self._undelivered) + out.tolist(), dtype=out.dtype)
                self._undelivered.clear()
            return out

    def _deliver(self) -> None:
        """Hand responses to on_response if set (else they wait in the outbox).

        One at a time from a queue in send order: a callback that answers
        another group (re-entering here) appends behind the rest, and one
        that raises leaves the rest for the next delivery.
        """
        if self._on_response is None:
            return
        if self.core.has_responses:
            self._undelivered.extend(self.core.take_response_list())
        pending = self._undelivered
        while pending and self._on_response is not None:
            t, dev, pasid, grpid, code, flags, cookie, n, reason = pending.popleft()
            self._on_response(PageResponse(t, dev, pasid, grpid, _CODES[code], _FLAGS[flags],
                                           cookie, n, _REASONS[reason]))

    # -- flush, discard, expire ----------------------------------------------------------
    def flush_pasid(self, dev: int, pasid: int | None, code: Response | int = Response.INVALID,
                    *, time: int | None = None) -> None:
        """Drop the partials of (dev, pasid) and answer its pending groups with code."""
        code = _check_code(code)
        with self._lock:
            self.core.flush_pasid(dev, _key_pasid(pasid, self.policy.no_pasid), code, time)
            self._deliver()

    def discard_partial(self) -> None:
        """Drop every partial fault of every device, without responses."""
        with self._lock:
            self.core.discard_partial()

    def expire(self, now: int) -> None:
        """Answer the pending groups older than policy.response_timeout at ``now``:
        :meth:`advance` for timeouts alone (scheduled answers wait)."""
        now = _check_time(now, "now")
        with self._lock:
            self.core.expire(now)
            self._deliver()

    # -- inspection --------------------------------------------------------------------
    def pending(self) -> list[Group]:
        """The pending groups (handed out, not answered), oldest first."""
        with self._lock:
            return [self._pending_group(int(k)) for k in self.core.pending_cookies()]

    def _pending_group(self, cookie: int) -> Group:
        faults = self.core.group_faults(cookie)
        assert faults is not None, "the core lists a cookie it does not hold"
        return Group(self, cookie, faults)

    def pending_cookies(self) -> np.ndarray:
        """The cookies of the pending groups, ascending (cheaper than ``pending()``)."""
        with self._lock:
            return self.core.pending_cookies()

    @property
    def stats(self) -> Stats:
        with self._lock:
            return Stats(self.core.stats())

    @property
    def partial_count(self) -> int:
        return int(self.core.partial_count)

    @property
    def now(self) -> int:
        """The latest simulated time the queue has seen (ns)."""
        return int(self.core.now)

    def sizeof(self) -> int:
        """Bytes of C memory held by the core (0 for the pure-Python twin)."""
        return int(self.core.sizeof())

    def __repr__(self) -> str:
        s = self.stats
        return (f"Queue(strategy={self.strategy!r}, partial={s.partial_now}, "
                f"pending={s.pending_now}, groups={s.groups})")
