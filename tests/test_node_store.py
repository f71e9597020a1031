"""The core's node store stays whole on every path that forms, changes or
answers a group.

An answered group gives its nodes back at once, by its first and last node
and its count (node_release_list): that is right only if a pending group's
nodes are always exactly the list head..tail, ending there, with nfaults
nodes. A group a batch completes gives them back the same way as soon as it
is copied into the batch's output, where its faults then stay (see
tests/test_batch_outputs.py). ``Grouper._check_nodes()`` walks the store and
checks that every node is on exactly one list (free, a partial group's, a
pending group's), that each list ends at its tail and has the count the core
keeps, and that the groups kept in outputs agree with the outputs' counts. The workload
below forms groups every way (a lone LPIG, partials of earlier batches, a
device's one list, across PASIDs, by a handler, a constant handler, the
service model) and ends them every way (answers, scheduled answers,
timeouts on advance and on report, detach, remove_device, flush, overflow);
after each call the store must check out, and over rounds of the same work
it must not grow (freed nodes are all reused).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import iopf
from iopf import FAULT_DTYPE, Fault, Response
from iopf_core import COMPILED, Grouper

pytestmark = pytest.mark.skipif(not COMPILED, reason="the compiled core's node store")
C_STRATEGIES = ["hash", "tree", "list"]
P, LAST = 1, 3


def groups(t: int, dev: int, pasid: int, sizes: list[int], grpid: int = 0, lpig: bool = True) -> np.ndarray:
    """Consecutive groups of the given sizes (LPIG last unless not lpig), from time t."""
    n = sum(sizes)
    a = np.zeros(n, FAULT_DTYPE)
    a["time"] = t + np.arange(n)
    a["dev"], a["pasid"], a["perm"] = dev, pasid, 1
    a["addr"] = np.arange(n) << 12
    a["flags"] = P
    ends = np.cumsum(sizes) - 1
    a["grpid"] = np.repeat(grpid + np.arange(len(sizes)), sizes) % 512
    if lpig:
        a["flags"][ends] = LAST
    return a


def workload(t: int) -> list[Callable[[iopf.Queue], object]]:
    """One round of calls from time t (every group formed in it is ended in it)."""
    service = iopf.Service("const:7", 1)

    def serve_dev3(q: iopf.Queue) -> None:     # a queue keeps its first service model
        q.attach(3, 1, q.service or service)

    return [
        lambda q: q.report_batch(groups(t, 1, 1, [1, 1, 1])),          # lone LPIGs
        lambda q: q.report_batch(groups(t + 10, 1, 1, [5, 3], grpid=8, lpig=False)),
        lambda q: q.report_batch(groups(t + 20, 1, 1, [1, 1], grpid=8)),  # join earlier partials
        lambda q: q.report(Fault(1, 2, 8, 0x1000, time=t + 25)),       # same grpid, other PASID
        lambda q: q.report(Fault(1, 1, 8, 0x2000, last=True, time=t + 26)),
        lambda q: q.report(Fault(1, 2, 8, 0x3000, last=True, time=t + 27)),
        lambda q: q.report_batch(groups(t + 30, 2, 1, [4, 4, 2, 6], grpid=40)),
        lambda q: q.respond_batch(q.pending_cookies()[::2], Response.SUCCESS),
        lambda q: [q.respond(int(c), Response.INVALID, at=t + 60) for c in q.pending_cookies()[:3]],
        lambda q: q.advance(t + 60),
        lambda q: q.attach(2, 1, Response.SUCCESS),                     # answered in C as formed
        lambda q: q.report_batch(groups(t + 70, 2, 1, [3, 1, 2], grpid=100)),
        serve_dev3,
        lambda q: q.report_batch(groups(t + 80, 3, 1, [2, 5, 1, 3], grpid=200)),
        lambda q: q.advance(t + 200),                                   # the service's answers
        lambda q: q.detach(2, 1),
        lambda q: q.detach(3, 1),
        lambda q: q.report_batch(groups(t + 210, 2, 1, [3, 3], grpid=300)),   # time out at +1000
        lambda q: q.expire(t + 1220),
        lambda q: setattr(q, "auto_advance", True),
        lambda q: q.report_batch(groups(t + 1230, 1, 1, [2, 4], grpid=310)),
        lambda q: q.report_batch(groups(t + 2300, 1, 1, [2], grpid=320, lpig=False)),  # times out the two
        lambda q: setattr(q, "auto_advance", False),
        lambda q: q.attach(1, 1, iopf.Response.SUCCESS),
        lambda q: q.report_batch(groups(t + 2310, 1, 1, [3, 1], grpid=320)),  # partials of the last batch
        lambda q: q.detach(1, 1),
        lambda q: q.report_batch(groups(t + 2320, 1, 2, [4, 2], grpid=330)),
        lambda q: q.report_batch(groups(t + 2330, 1, 2, [3], grpid=340, lpig=False)),
        lambda q: q.flush_pasid(1, 2),                                  # its partials and groups
        lambda q: q.report_batch(groups(t + 2340, 2, 1, [2, 3], grpid=350)),
        lambda q: q.report_batch(groups(t + 2350, 2, 1, [2], grpid=360, lpig=False)),
        lambda q: q.remove_device(2),
        lambda q: q.add_device(1, 4),
        lambda q: q.report_batch(groups(t + 2360, 1, 1, [3, 3], grpid=370)),   # overflows
        lambda q: q.add_device(1, None),
        lambda q: q.discard_partial(),
        lambda q: q.advance(t + 5000),
        lambda q: q.respond_batch(q.pending_cookies(), Response.SUCCESS),
    ]


def core(q: iopf.Queue) -> Grouper:
    assert isinstance(q.core, Grouper)
    return q.core


def check(q: iopf.Queue) -> None:
    free = core(q)._check_nodes()
    state = core(q).get_state()
    held = q.partial_count + sum(len(g) for g in q.pending())
    assert state["nodes_used"] + state["faults_in_outputs"] == held
    assert free == state["node_capacity"] - state["nodes_used"]


@pytest.mark.parametrize("strategy", C_STRATEGIES)
@pytest.mark.parametrize("match_pasid", [True, False])
def test_every_way_a_group_forms_and_ends_keeps_the_node_store_whole(strategy: str,
                                                                    match_pasid: bool) -> None:
    policy = iopf.policies.PCIE.replace(response_timeout=1000, match_pasid=match_pasid)
    q = iopf.Queue(policy, strategy=strategy)
    capacity = []
    for r in range(3):
        for i, step in enumerate(workload(r * 10_000)):
            step(q)
            q.take_responses()
            try:
                check(q)
            except AssertionError as e:
                raise AssertionError(f"round {r}, step {i}: {e}") from None
        assert q.partial_count == 0 and len(q.pending_cookies()) == 0
        assert q.stats.conserved()
        capacity.append(core(q).get_state()["node_capacity"])
    assert capacity[0] == capacity[-1]


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_answered_groups_of_every_size_are_reused_whole(strategy: str) -> None:
    """Groups of 1 to 64 faults answered in every order: no node is lost or freed
    twice, so rounds of the same work keep the same capacity (a lost node
    shows as growth, one freed twice as a node on two lists)."""
    q = iopf.Queue(strategy=strategy)
    rng = np.random.default_rng(3)
    sizes = [int(s) for s in rng.integers(1, 65, 200)]
    capacity = []
    for r in range(4):
        q.report_batch(groups(r * 100_000, 1, 1, sizes))
        cookies = q.pending_cookies()
        q.respond_batch(rng.permutation(cookies), Response.SUCCESS)
        check(q)
        assert core(q).get_state()["nodes_used"] == 0
        capacity.append(core(q).get_state()["node_capacity"])
    assert capacity[0] == capacity[-1] and capacity[0] <= sum(sizes) + 2048
