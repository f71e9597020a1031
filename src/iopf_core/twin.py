"""The pure-Python reference twin of the compiled groupers.

Small and dict based, written to be obviously correct rather than fast: every
compiled strategy must give exactly the results this class gives, and the
tests drive them side by side. It is also the baseline of the benchmarks.

The comments name the rule each line follows (see docs/behaviour.md).
"""
from __future__ import annotations

import functools
import heapq
import math
import operator
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from iopf_core.records import (COUNTERS, FAULT_DTYPE, NO_PASID, RESPONSE_DTYPE, check_answers,
                               check_ints, check_record)

# The values of iopf.types' enums (tests/test_types.py checks they agree).
PASID_VALID, LAST_PAGE, NEEDS_PASID, PRIV_DATA = 1, 2, 4, 8
READ, WRITE = 1, 2
(HANDLER, NO_HANDLER, HANDLER_ERROR, STOP_MARKER, OVERFLOW, DISCARDED, FLUSHED,
 DETACHED, REMOVED, TIMEOUT, CALLER) = range(11)
SUCCESS, INVALID, FAILURE = 0, 1, 2
ANY_PASID = 0xFFFFFFFE  # key PASID when match_pasid is False
SERVE = 3               # the auto code of groups served by the service model
U64 = (1 << 64) - 1
SV_CONST, SV_EXP, SV_LOGNORMAL, SV_SAMPLES = range(4)
BY_SERVICE = 0x100      # reason mark of an answer scheduled by the service model


class _Service:
    """The service model: FIFO over `servers` workers (0: one per group)."""

    def __init__(self, servers: int, kind: int, a: float, b: float, samples: Any, seed: int,
                 code: int) -> None:
        self.servers, self.kind, self.a, self.b, self.code = servers, kind, a, b, code
        self.samples = [] if samples is None else [int(x) for x in np.asarray(samples).tolist()]
        self.rng = seed & U64
        self.free = [0] * servers
        self.served = self.busy = self.wait = self.max_wait = self.stale = self.max_backlog = 0
        self.fifo: list[int] = []   # start times of the groups waiting for a worker

    def _next(self) -> int:  # splitmix64, as the compiled core
        self.rng = (self.rng + 0x9E3779B97F4A7C15) & U64
        z = self.rng
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
        return z ^ (z >> 31)

    def _unit(self) -> float:
        return ((self._next() >> 11) + 1) * (1.0 / 9007199254740992.0)

    def draw(self) -> int:
        if self.kind == SV_CONST:
            return int(self.a)
        if self.kind == SV_SAMPLES:
            return self.samples[self._next() % len(self.samples)]
        if self.kind == SV_EXP:
            x = -math.log(self._unit()) * self.a
        else:
            x = math.sqrt(-2.0 * math.log(self._unit()))
            x = math.exp(self.a + self.b * x * math.cos(6.283185307179586 * self._unit()))
        x = x + 0.5
        return U64 if x >= 1.8446744073709552e19 else int(x)


_F = TypeVar("_F", bound=Callable[..., Any])


def _exclusive(method: _F) -> _F:
    """One thread at a time in a grouper, as the compiled core's busy flag:
    another thread gets RuntimeError (the same thread may nest calls)."""
    @functools.wraps(method)
    def call(self: PyGrouper, *args: Any, **kwargs: Any) -> Any:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("iopf_core: this grouper is in use by another thread "
                               "(share it through one iopf.Queue, which serialises calls)")
        try:
            return method(self, *args, **kwargs)
        finally:
            self._busy.release()
    return call  # type: ignore[return-value]


def _u(bits: int, *values: Any) -> None:
    """Arguments the compiled core takes as C unsigned ints: the same errors."""
    for v in values:
        if not isinstance(v, (int, np.integer)):
            raise TypeError(f"an integer is required, not {type(v).__name__}")
        if not 0 <= v < (1 << bits):
            raise OverflowError(f"{v} does not fit in an unsigned {bits}-bit int")


def _int_time(time: Any) -> int:
    """A call's time argument: a float or a bool is refused, never cut."""
    if isinstance(time, bool) or not isinstance(time, (int, np.integer)):
        raise TypeError(f"time must be an int, not {type(time).__name__} ({time!r})")
    if not 0 <= time < 2**64:
        raise ValueError(f"time must be a whole number of ns in [0, 2**64), not {time!r}")
    return int(time)


class _Pending:
    __slots__ = ("cookie", "time", "dev", "kpasid", "faults", "handle")

    def __init__(self, cookie: int, time: int, dev: int, kpasid: int, faults: list, handle: int):
        self.cookie, self.time, self.dev, self.kpasid = cookie, time, dev, kpasid
        self.faults, self.handle = faults, handle


TRACE_DOMAIN = 0x696F7066   # "iopf": the compiled core's tracemalloc domain (the twin has no C memory)


class GroupBase:
    """The twin of the compiled core's GroupBase, the base of ``iopf.Group``
    when the compiled module is not in use: a group always answers through
    its queue (there is no lock-free path without the compiled core)."""

    __slots__ = ("_queue", "cookie", "_faults", "_raw", "core")

    def __init__(self, queue: Any, cookie: int, faults: Any = None, raw: Any = None) -> None:
        self._queue = queue
        self.cookie = int(cookie)
        self._faults = faults
        self._raw = raw
        self.core = None

    def respond(self, code: Any, *, time: int | None = None, at: int | None = None) -> bool:
        """Answer the group (or schedule the answer for ``at``); False if it was
        answered already."""
        return bool(self._queue.respond(self.cookie, code, time=time, at=at))


def QueueLock(core: Any) -> Any:
    """The queue's lock without the compiled core: a re-entrant lock (the
    compiled QueueLock also marks the holding thread in the core, which only
    its lock-free entries read)."""
    return threading.RLock()


class PyGrouper:
    """Reference implementation of the grouping engine (strategy ``"python"``)."""

    strategy = "python"

    def __init__(self, policy: Any) -> None:
        if getattr(self, "_policy", None) is not None:
            raise RuntimeError("a grouper is initialised once; make a new one for another policy")
        for name, lo, hi in (("pasid_bits", 1, 31), ("grpid_bits", 1, 16)):
            v = getattr(policy, name)
            if type(v) is not int or not lo <= v <= hi:
                raise ValueError(f"policy.{name} must be an int in {lo}..{hi}, got {v!r}")
        self._policy = policy
        # One call at a time, as the compiled core's busy flag.
        self._busy = threading.RLock()
        self.position = 0
        self.pasid_bits = policy.pasid_bits
        self.grpid_bits = policy.grpid_bits
        self.partials: dict[tuple[int, int, int], list[tuple]] = {}
        self.pending: dict[int, _Pending] = {}
        self.limits: dict[int, int] = {}
        self.devices: set[int] = set()   # added and not removed (require_device)
        # PASID_VALID requests with this PASID are the RID's; -1: none.
        self.no_pasid = -1 if policy.no_pasid is None else policy.no_pasid
        self.dev_out: dict[int, int] = {}
        self.total_out = 0
        self.handles: dict[tuple[int, int], int] = {}
        self.default_handler = False
        self.default_auto: int | None = None   # constant handlers answer in the engine
        self.autos: dict[tuple[int, int], int | None] = {}
        self.dispatch = False
        self.owner = 0   # as the compiled core's; the twin is always called under the queue's lock
        self.fast = False
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.outbox: list[tuple] = []
        self.now = 0
        self.next_cookie = 1
        self.next_handle = 1
        self.last_cookie = 0
        self.last_kind = 0
        self._out_faults: list[tuple] = []
        self._out_offsets: list[int] = [0]
        self._out_cookies: list[int] = []
        # (time, seq, cookie, code, reason): timeouts and scheduled answers
        self.heap: list[tuple[int, int, int, int, int]] = []
        self.seq = 0
        self.auto_advance = False
        self.service: _Service | None = None
        self.outbox_gtime: list[int] = []
        self.tmo_quantum = 0

    @property
    def policy(self) -> Any:
        """The policy (read-only: the rules do not change under live tables)."""
        return self._policy

    def _check_kpasid(self, kpasid: int) -> None:
        if kpasid != NO_PASID and not 0 <= kpasid < (1 << self.pasid_bits):
            raise ValueError(f"pasid {kpasid:#x} does not fit in {self.pasid_bits} bits "
                             f"(and is not NO_PASID, {NO_PASID:#x})")

    @staticmethod
    def _check_code(code: int, reason: int = CALLER) -> None:
        if not 0 <= code <= FAILURE:
            raise ValueError(f"response code {code} is not one of 0..{FAILURE} (SUCCESS, INVALID, FAILURE)")
        if not 0 <= reason & ~BY_SERVICE <= CALLER:    # (the service model marks its answers)
            raise ValueError(f"reason {reason} is not one of 0..{CALLER}")

    @staticmethod
    def _check_auto(auto: int) -> None:
        if not -1 <= auto <= SERVE:
            raise ValueError(f"auto must be -1 (a Python handler), a code 0..{FAILURE} or {SERVE} "
                             f"(the service model), got {auto}")

    def _debug_counters(self, epoch: int, next_handle: int, next_cookie: int) -> None:
        """Debug: start the handle and cookie counters near a limit (the twin has
        no epoch; Python ints do not wrap)."""
        if self.pending or self.partials or self.handles:
            raise RuntimeError("only on an empty grouper")
        self.next_handle = next_handle or 1
        self.next_cookie = next_cookie or 1

    # -- helpers -----------------------------------------------------------------
    def kpasid(self, rec: tuple) -> int:
        return rec[2] if rec[4] & PASID_VALID and rec[2] != self.no_pasid else NO_PASID

    def _key(self, rec: tuple) -> tuple[int, int, int]:
        return (rec[1], self.kpasid(rec) if self.policy.match_pasid else ANY_PASID, rec[3])

    def _send(self, time: int, rec: tuple, code: int, cookie: int, nfaults: int, reason: int,
              gtime: int | None = None) -> None:
        flags = rec[4]
        out_flags = PASID_VALID if flags & PASID_VALID and flags & NEEDS_PASID else 0  # PASID only if asked
        self.outbox.append((time, rec[1], rec[2], rec[3], code, out_flags, cookie, nfaults, reason))
        self.outbox_gtime.append(rec[0] if gtime is None else gtime)

    def _hold(self, dev: int, n: int) -> None:
        self.dev_out[dev] = self.dev_out.get(dev, 0) + n
        self.total_out += n

    def _release(self, dev: int, n: int) -> None:
        self.dev_out[dev] -= n
        self.total_out -= n

    def _time(self, time: int | None) -> int:
        if time is None:
            return self.now
        time = _int_time(time)
        self.now = max(self.now, time)
        return time

    # -- configuration --------------------------------------------------------------
    @_exclusive
    def add_device(self, dev: int, limit: int) -> None:
        _u(32, dev, limit)
        self.devices.add(dev)
        if limit:
            self.limits[dev] = limit
        else:
            self.limits.pop(dev, None)

    @_exclusive
    def set_default_handler(self, present: bool, auto: int = -1) -> None:
        self._check_auto(auto)
        if auto == SERVE and self.service is None:
            raise ValueError("no service model")
        self.default_handler = bool(present)
        self.default_auto = auto if present and auto >= 0 else None

    @_exclusive
    def attach(self, dev: int, kpasid: int, time: int | None = None, auto: int = -1) -> None:
        self._check_auto(auto)
        _u(32, dev, kpasid)
        if auto == SERVE and self.service is None:
            raise ValueError("no service model")
        self._check_kpasid(kpasid)
        if time is not None:
            _int_time(time)
        if self.policy.attach_adds_device and not self._attached(dev):
            self.devices.add(dev)  # The first handler enables IOPF for the device
        self._detach(dev, kpasid, time)  # a replace answers the old attachment's groups
        self.handles[(dev, kpasid)] = self.next_handle
        self.autos[(dev, kpasid)] = auto if auto >= 0 else None
        self.next_handle += 1

    def _attached(self, dev: int) -> bool:
        return any(d == dev for d, _ in self.handles)

    @_exclusive
    def detach(self, dev: int, kpasid: int, time: int | None = None) -> bool:
        _u(32, dev, kpasid)
        self._check_kpasid(kpasid)
        if time is not None:
            _int_time(time)
        if self.policy.attach_adds_device and (dev, kpasid) in self.handles \
                and sum(d == dev for d, _ in self.handles) == 1:
            # The last handler goes, so the driver removes the device, which
            # answers all its groups (iommufd then finds none left to answer).
            del self.handles[(dev, kpasid)]
            self.autos.pop((dev, kpasid), None)
            self.remove_device(dev, time)
            return True
        return self._detach(dev, kpasid, time)

    def _detach(self, dev: int, kpasid: int, time: int | None) -> bool:
        """Detach one handler (arguments checked by the caller); the device stays."""
        handle = self.handles.pop((dev, kpasid), 0)
        self.autos.pop((dev, kpasid), None)
        if not handle:
            return False
        t = self._time(time)
        # Newest first, as iommufd_auto_response_faults answers unread groups.
        for g in sorted(self.pending.values(), key=lambda g: -g.cookie):
            if g.dev == dev and g.kpasid == kpasid and g.handle == handle:
                self._answer(g, INVALID, DETACHED, t)
        if self.policy.flush_partial_on_detach:
            self._drop_partials(lambda f: f[1] == dev and self.kpasid(f) == kpasid, "flushed")
        return True

    # -- reporting -------------------------------------------------------------------
    @_exclusive
    def check(self, arr: np.ndarray) -> None:
        for i, rec in enumerate(arr.tolist()):
            check_record(i, rec, self.pasid_bits, self.grpid_bits)

    @_exclusive
    def report(self, rec: tuple) -> int:
        if (not isinstance(rec, tuple) or len(rec) != 8 or not isinstance(rec[7], (tuple, list))
                or len(rec[7]) != 2):
            raise TypeError(f"a record is a tuple (time, dev, pasid, grpid, flags, perm, addr, "
                            f"(priv0, priv1)), not {rec!r}")
        check_ints(rec)
        check_record(None, rec, self.pasid_bits, self.grpid_bits)
        self._report(tuple(rec), collect=True)     # after what run() collected, not taken yet
        return self.last_cookie

    @_exclusive
    def report_fault(self, fault: tuple) -> tuple[int, bytes] | None:
        """One request as a FAULT_DTYPE-ordered tuple; None, or (cookie, records)
        of the group it completed, records as bytes of FAULT_DTYPE (LPIG last)."""
        if (not isinstance(fault, tuple) or len(fault) != 8
                or not isinstance(fault[7], (tuple, list)) or len(fault[7]) != 2):
            raise TypeError("a fault is a tuple of the 8 fields of FAULT_DTYPE")
        p0, p1 = fault[7]
        return self.report_values(*fault[:7], p0, p1)

    @_exclusive
    def report_values(self, time: int, dev: int, pasid: int, grpid: int, flags: int, perm: int,
                      addr: int, priv0: int = 0, priv1: int = 0) -> tuple[int, bytes] | None:
        rec = (time, dev, pasid, grpid, flags, perm, addr, (priv0, priv1))
        check_ints(rec)
        check_record(None, rec, self.pasid_bits, self.grpid_bits)
        # The group is collected and taken back off: what run() collected and
        # was not taken yet stays as it was.
        n = len(self._out_faults)
        self._report(rec, collect=True)
        if not self.last_cookie:
            return None
        faults = np.array(self._out_faults[n:], dtype=FAULT_DTYPE)
        del self._out_faults[n:], self._out_offsets[-1], self._out_cookies[-1]
        return self.last_cookie, faults.tobytes()

    @_exclusive
    def run(self, arr: np.ndarray, start: int = 0) -> int:
        """Report arr[start:], each record checked as it is read; stop after a
        group to dispatch. A refused record raises ValueError (position: its index)."""
        if not 0 <= start <= len(arr):
            raise IndexError(f"start {start} is outside the array (0..{len(arr)})")
        # In growing slices: the queue calls again after each group it
        # dispatches, and converting the whole rest of the array each time
        # would be quadratic.
        n, lo, size = len(arr), start, 256
        while lo < n:
            for j, rec in enumerate(arr[lo:lo + size].tolist()):
                i = lo + j
                self.position = i
                rec = rec[:7] + (tuple(rec[7]),)
                check_record(i, rec, self.pasid_bits, self.grpid_bits)
                if self._report(rec, collect=True) == 2:
                    self.position = i + 1
                    return i + 1
            lo, size = lo + size, min(2 * size, 65536)
        self.position = n
        return n

    @_exclusive
    def report_group(self, time: int, dev: int, pasid: int, grpid: int, flags: int,
                     last_flags: int, perm: int, n: int, addr: int, stride: int = 4096) -> int:
        """The n requests of one group from their fields (request i at address
        addr + i * stride, the last with last_flags), all checked before any
        is applied; as run() on their records. The cookie of the group the
        last one completed, or 0."""
        # The compiled core's checks, in its order (the same errors).
        if any(isinstance(v, bool) for v in (time, dev, pasid, grpid, flags, last_flags, perm,
                                             n, addr, stride)):
            raise TypeError("a field of the group must be an int, not bool")
        time, dev, pasid, grpid, flags, last_flags, perm, n, addr, stride = map(
            operator.index, (time, dev, pasid, grpid, flags, last_flags, perm, n, addr, stride))
        if not (0 <= time <= U64 and all(0 <= v < 1 << 32 for v in (dev, pasid, grpid, flags,
                                                                    last_flags, perm))
                and -(1 << 63) <= n < 1 << 63):
            for f in (flags, last_flags):
                check_record(None, (time, dev, pasid, grpid, f, perm), self.pasid_bits,
                             self.grpid_bits)
            raise ValueError(f"a field of the group is out of range: time={time!r} dev={dev!r} "
                             f"pasid={pasid!r} grpid={grpid!r} n={n!r}")
        if n < 1:
            raise ValueError(f"a group has at least one request, got n={n}")
        if not (0 <= addr <= U64 and 0 <= stride <= U64):
            raise ValueError(f"the addresses addr={addr!r} + i * stride={stride!r} do not fit "
                             "its record (64 bits, ascending)")
        if addr + (n - 1) * stride > U64:
            raise ValueError(f"the address of request {n - 1} ({addr:#x} + {n - 1} * "
                             f"{stride:#x}) does not fit its record (64 bits)")
        for f in (flags, last_flags):
            check_record(None, (time, dev, pasid, grpid, f, perm), self.pasid_bits, self.grpid_bits)
        if n > 1 and self._kind(flags, perm) == 1:   # one group: only the last completes it
            raise ValueError("request 0 would complete a group before the last one under this "
                             "policy: report one group per call")
        for i in range(n):
            self.position = i
            self._report((time, dev, pasid, grpid, last_flags if i == n - 1 else flags, perm,
                          addr + i * stride, (0, 0)), collect=False)
        self.position = n
        return self.last_cookie

    def _report(self, rec: tuple, collect: bool) -> int:
        """0; 1 if a group completed (last_cookie); 2 if it awaits a Python handler."""
        p = self.policy
        c = self.counters
        time, dev, pasid, grpid, flags, perm = rec[:6]
        if self.auto_advance and self.heap and self.heap[0][0] <= time:
            self.advance(time)  # what falls due before this request comes first
        c["faults_reported"] += 1
        self.now = max(self.now, time)
        self.last_cookie = 0
        self.dispatch = False
        self.last_kind = self._kind(flags, perm)
        last = self.last_kind == 1
        if self.last_kind == 2:  # stop marker
            c["stop_markers"] += 1
            return 0
        kpasid = self.kpasid(rec)
        if p.require_handler and not self.default_handler and not self.handles.get((dev, kpasid)):
            self._send(time, rec, p.no_handler_code, 0, 1, NO_HANDLER)  # no handler: even non-last
            c["rejected"] += 1
            return 0
        if p.require_device and dev not in self.devices:
            self._send(time, rec, INVALID, 0, 1, NO_HANDLER)  # no iopf_param, even non-last
            c["rejected"] += 1
            return 0
        limit = self.limits.get(dev, 0)
        if (limit and self.dev_out.get(dev, 0) + 1 > limit) or (
                p.queue_depth is not None and self.total_out + 1 > p.queue_depth):  # capacity
            c["overflowed"] += 1
            if last:
                self._send(time, rec, p.overflow_code, 0, 1, OVERFLOW)
            if p.discard_on_overflow:
                self.discard_partial()
            return 0
        self._hold(dev, 1)
        key = self._key(rec)
        if not last:  # partial
            self.partials.setdefault(key, []).append(rec)
            c["partial_now"] += 1
            return 0
        faults = self.partials.pop(key, [])  # stale and other-PASID partials too
        c["partial_now"] -= len(faults)
        faults.append(rec)
        cookie = self.next_cookie
        self.next_cookie += 1
        g = _Pending(cookie, time, dev, kpasid, faults, self.handles.get((dev, kpasid), 0))
        self.pending[cookie] = g
        c["grouped"] += len(faults)
        c["groups"] += 1
        c["pending_now"] += 1
        if p.response_timeout is not None:
            deadline = min(time + p.response_timeout, U64)
            if self.tmo_quantum and deadline % self.tmo_quantum:
                deadline = min(deadline + self.tmo_quantum - deadline % self.tmo_quantum, U64)
            self._push(deadline, cookie, p.timeout_code, TIMEOUT)
        self.last_cookie = cookie
        if collect:
            self._out_faults.extend(faults)
            self._out_offsets.append(len(self._out_faults))
            self._out_cookies.append(cookie)
        auto = self.autos.get((dev, kpasid)) if g.handle else self.default_auto  # handler lookup
        if auto == SERVE:
            self.serve(cookie, time)
            return 1
        if auto is not None:
            self._answer(g, auto, HANDLER, time)
            return 1
        if g.handle or self.default_handler:
            self.dispatch = True
            return 2
        return 1

    def _kind(self, flags: int, perm: int) -> int:
        """0: held as a partial; 1: completes a group (a last request, any
        request under stall, PRIV_DATA when it counts as last); 2: a dropped stop marker."""
        p = self.policy
        if p.stop_markers and flags & LAST_PAGE and not perm & (READ | WRITE):
            return 2
        if p.stall or flags & LAST_PAGE or (p.priv_data_is_last and flags & PRIV_DATA):
            return 1
        return 0

    def kinds(self, arr: np.ndarray) -> np.ndarray:
        return np.array([self._kind(int(f), int(p)) for f, p in zip(arr["flags"], arr["perm"])],
                        dtype=np.uint8)

    @_exclusive
    def take_groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        faults = np.array(self._out_faults, dtype=FAULT_DTYPE)
        faults.flags.writeable = False      # as the compiled core's (which reads it back)
        offsets = np.array(self._out_offsets, dtype=np.int64)
        cookies = np.array(self._out_cookies, dtype=np.uint64)
        self._out_faults, self._out_offsets, self._out_cookies = [], [0], []
        return faults, offsets, cookies

    # -- responses ---------------------------------------------------------------------
    def _answer(self, g: _Pending, code: int, reason: int, time: int) -> None:
        del self.pending[g.cookie]
        self._send(time, g.faults[-1], code, g.cookie, len(g.faults), reason, g.time)
        self._release(g.dev, len(g.faults))
        self.counters["answered"] += 1
        self.counters["pending_now"] -= 1

    def respond(self, cookie: int, code: int, reason: int = CALLER, time: int | None = None,
                at: int | None = None) -> bool:
        _u(64, cookie)
        _u(32, code, reason)
        if at is not None:
            _u(64, at)
        self._check_code(code, reason)
        # An answer now moves the clock to time even when stale, as the
        # compiled core does; a scheduled one only checks time.
        if at is None:
            t = self._time(time)
        elif time is not None:
            _int_time(time)
        g = self.pending.get(cookie)
        if g is None:  # answered already: stale
            self.counters["stale_responses"] += 1
            return False
        if at is not None:
            self._push(at, cookie, code, reason)
        else:
            self._answer(g, code, reason, t)
        return True

    @_exclusive
    def respond_batch(self, cookies: np.ndarray, codes: np.ndarray, reason: int = CALLER,
                      time: int | None = None, at: Any = None) -> np.ndarray:
        k, c = check_answers(cookies, codes)
        self._check_code(0, reason)
        # time as respond takes it, once, even with no cookie: checked, and
        # an answer now moves the clock to it (as the compiled core does).
        if at is None:
            time = self._time(time)
        elif time is not None:
            _int_time(time)
        k, c = k.tolist(), c.tolist()
        ats = [None] * len(k) if at is None else np.broadcast_to(
            np.asarray(at, dtype=np.uint64), (len(k),)).tolist()
        return np.array([self.respond(int(a), int(b), reason, time, t)
                         for a, b, t in zip(k, c, ats)], dtype=bool)

    # -- simulated time: timeouts and scheduled answers --------------------------------
    def _push(self, time: int, cookie: int, code: int, reason: int) -> None:
        heapq.heappush(self.heap, (time, self.seq, cookie, code, reason))
        self.seq += 1

    @_exclusive
    def advance(self, now: int, timeouts_only: bool = False) -> None:
        self.now = max(self.now, now)
        kept = []
        while self.heap and self.heap[0][0] <= now:
            item = heapq.heappop(self.heap)
            time, _, cookie, code, reason = item
            if reason == TIMEOUT:
                if cookie in self.pending:
                    self._answer(self.pending[cookie], code, TIMEOUT, time)
            elif timeouts_only:
                kept.append(item)
            elif not self.respond(cookie, code, reason & 0xFF, time) and reason & BY_SERVICE:
                assert self.service is not None  # stale if answered meanwhile
                self.service.stale += 1
        for item in kept:
            heapq.heappush(self.heap, item)

    @_exclusive
    def next_deadline(self) -> int | None:
        while self.heap and self.heap[0][4] == TIMEOUT and self.heap[0][2] not in self.pending:
            heapq.heappop(self.heap)
        return self.heap[0][0] if self.heap else None

    @_exclusive
    def set_service(self, servers: int, kind: int, a: float, b: float, samples: Any, seed: int,
                    code: int) -> None:
        if kind > SV_SAMPLES or (kind == SV_SAMPLES and (samples is None or not len(samples))):
            raise ValueError("bad service model")
        self.service = _Service(servers, kind, a, b, samples, seed, code)

    @_exclusive
    def serve(self, cookie: int, arrival: int, duration: int | None = None,
              code: int | None = None) -> bool:
        v = self.service
        if v is None:
            raise ValueError("no service model")
        if cookie not in self.pending:
            self.counters["stale_responses"] += 1
            return False
        d = v.draw() if duration is None else duration
        start = arrival
        if v.servers:
            start = max(arrival, v.free[0])
            heapq.heapreplace(v.free, min(start + d, U64))
        done = min(start + d, U64)
        v.served += 1
        v.busy += d
        v.wait += start - arrival
        v.max_wait = max(v.max_wait, start - arrival)
        while v.fifo and v.fifo[0] <= arrival:  # FIFO: starts grow with the arrivals
            v.fifo.pop(0)
        if start > arrival:
            v.fifo.append(start)
            v.max_backlog = max(v.max_backlog, len(v.fifo))
        return self.respond(cookie, v.code if code is None else code, CALLER | BY_SERVICE, None, done)

    def service_stats(self) -> dict[str, int]:
        v = self.service
        if v is None:
            return {"servers": 0, "served": 0, "busy_ns": 0, "wait_ns": 0, "max_wait_ns": 0,
                    "stale": 0, "max_backlog": 0}
        return {"servers": v.servers, "served": v.served, "busy_ns": v.busy, "wait_ns": v.wait,
                "max_wait_ns": v.max_wait, "stale": v.stale, "max_backlog": v.max_backlog}

    @_exclusive
    def service_at(self, now: int) -> tuple[int, int]:
        v = self.service
        if v is None:
            return 0, 0
        return sum(f > now for f in v.free), sum(s > now for s in v.fifo)

    @_exclusive
    def set_timeout_quantum(self, quantum: int) -> None:
        self.tmo_quantum = quantum

    @property
    def has_responses(self) -> bool:
        return bool(self.outbox)

    @_exclusive
    def take_responses(self, group_times: bool = False) -> Any:
        out = np.array(self.outbox, dtype=RESPONSE_DTYPE)
        gt = np.array(self.outbox_gtime, dtype=np.uint64)
        self.outbox, self.outbox_gtime = [], []
        return (out, gt) if group_times else out

    def take_response_list(self) -> list[tuple[int, ...]]:
        return self.take_responses().tolist()  # type: ignore[no-any-return]

    # -- flush, discard, remove, expire -------------------------------------------------
    def _drop_partials(self, doomed: Any, counter: str) -> None:
        for key in list(self.partials):
            keep = []
            for f in self.partials[key]:
                if doomed(f):
                    self.counters[counter] += 1
                    self.counters["partial_now"] -= 1
                    self._release(f[1], 1)
                else:
                    keep.append(f)
            if keep:
                self.partials[key] = keep
            else:
                del self.partials[key]

    def _answer_all(self, which: Any, code: int, reason: int, time: int,
                    newest_first: bool = False) -> None:
        for g in sorted(self.pending.values(), key=lambda g: -g.cookie if newest_first else g.cookie):
            if which(g):
                self._answer(g, code, reason, time)

    @_exclusive
    def flush_pasid(self, dev: int, kpasid: int, code: int = INVALID, time: int | None = None) -> None:
        _u(32, dev, kpasid, code)
        if time is not None:
            _int_time(time)
        self._check_code(code)
        self._check_kpasid(kpasid)
        t = self._time(time)
        self._drop_partials(lambda f: f[1] == dev and self.kpasid(f) == kpasid, "flushed")
        self._answer_all(lambda g: g.dev == dev and g.kpasid == kpasid, code, FLUSHED, t)

    @_exclusive
    def discard_partial(self) -> None:
        self._drop_partials(lambda f: True, "discarded")

    @_exclusive
    def remove_device(self, dev: int, time: int | None = None) -> None:
        _u(32, dev)
        if time is not None:
            _int_time(time)
        t = self._time(time)
        self._drop_partials(lambda f: f[1] == dev, "removed")
        # Newest first, as iopf_queue_remove_device walks fault_param->faults.
        self._answer_all(lambda g: g.dev == dev, INVALID, REMOVED, t, newest_first=True)
        self.limits.pop(dev, None)
        self.devices.discard(dev)

    @_exclusive
    def expire(self, now: int) -> None:
        _u(64, now)
        self.advance(now, timeouts_only=True)

    # -- inspection ----------------------------------------------------------------------
    @property
    def partial_count(self) -> int:
        return self.counters["partial_now"]

    @_exclusive
    def pending_cookies(self) -> np.ndarray:
        return np.array(sorted(self.pending), dtype=np.uint64)

    @_exclusive
    def group_faults(self, cookie: int) -> np.ndarray | None:
        g = self.pending.get(cookie)
        return None if g is None else np.array(g.faults, dtype=FAULT_DTYPE)

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    def sizeof(self) -> int:
        return 0  # no C memory
