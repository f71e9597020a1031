"""The device model: a PCIe function with PRI issuing page request groups."""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from functools import partial

import numpy as np
import simpy

from ..types import FAULT_DTYPE, PageResponse, Perm
from ._common import (FAILURE, INVALID, KIND_PARTIAL, KIND_STOP, LAST, NEEDS_PASID, OVERFLOW,
                      PASID_VALID, SUCCESS, Duration, draw, duration)
from .queue import SimQueue

__all__ = ["Device", "RESULT_DTYPE"]

#: One answered group of a :class:`Device` (see :meth:`Device.results`). Times in ns.
RESULT_DTYPE = np.dtype([
    ("pasid", "<u4"), ("grpid", "<u4"), ("nfaults", "<u4"), ("created", "<u8"),
    ("issued", "<u8"), ("answered", "<u8"), ("latency", "<u8"), ("code", "<u4"),
    ("reason", "<u4"), ("retries", "<u4"),
])


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
        self.group_size = duration(group_size, "group_size")
        self.interval = duration(interval, "interval")
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
        self._mask = sim.grpid_mask
        self._flags = PASID_VALID | (NEEDS_PASID if needs_pasid else 0)
        # What the queue's rules make of this device's partial and last requests.
        probe = np.zeros(2, FAULT_DTYPE)
        probe["flags"] = (self._flags, self._flags | LAST)
        probe["perm"] = self.perm
        partial_kind, last_kind = sim.kinds(probe).tolist()
        if last_kind == KIND_STOP:
            raise ValueError("a device whose requests have neither READ nor WRITE sends stop "
                             "markers, which this policy drops")
        if partial_kind != KIND_PARTIAL:
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
                                      else draw(interval, self.rng))  # type: ignore[arg-type]
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
                  else max(1, draw(gs, self.rng)))  # type: ignore[arg-type]
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
                self.sim.send_group(self.dev, kp, grpid, n - 1, flags=flags, perm=self.perm,
                                    addr=g.addr, last=False)
            if self.give_up_after is not None:
                self.env.timeout(self.give_up_after).callbacks.append(  # type: ignore[union-attr]
                    partial(self._give_up, g))
            return
        ev = self.sim.send_group(self.dev, kp, grpid, n, flags=flags, perm=self.perm, addr=g.addr)
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
        if code == SUCCESS and resp.reason == OVERFLOW:
            self.retries += 1
            g.retries += 1
            if self.pri_enabled:
                self._retry_timers += 1
                self.env.timeout(self.retry_delay).callbacks.append(  # type: ignore[union-attr]
                    partial(self._resend, g))
        else:
            if code == FAILURE:
                self.failures += 1
                if self.pri_enabled:  # PCIe: Response Failure disables PRI
                    self.pri_enabled = False
                    self.failed_at = now
                    self.failure = resp
            elif code == INVALID:
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
