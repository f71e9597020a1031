"""A group that a batch completes keeps its faults in the batch's output.

``run()`` (under ``Queue.report_batch``) copies each group it completes into
its output, the faults array that ``take_groups`` gives, and frees the
group's nodes at once: they go back to work while they are still in cache,
and a pending group from a batch holds no node. The grouper keeps that faults
array while any of its groups is pending (``Queue.pending()`` and
``group_faults`` read them from it) and lets it go once they are all
answered. Groups reported one at a time keep their nodes.
"""
from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref
from typing import Any

import numpy as np
import pytest

import iopf
from iopf import FAULT_DTYPE, Response
from iopf_core import COMPILED, STRATEGIES

pytestmark = pytest.mark.skipif(not COMPILED, reason="the compiled core's outputs")
C_STRATEGIES = ["hash", "tree", "list"]


def groups_of_4(n: int, start: int = 0, dev: int = 1) -> np.ndarray:
    """n faults in whole groups of 4 (LPIG last), group ids from start // 4."""
    a = np.zeros(n, FAULT_DTYPE)
    k = np.arange(start, start + n)
    a["time"] = k
    a["dev"], a["pasid"] = dev, 5
    a["grpid"] = k // 4 % 512
    a["flags"] = np.where(k % 4 == 3, 3, 1)
    a["perm"] = 1
    a["addr"] = k << 12
    return a


def compiled(q: iopf.Queue) -> Any:
    """The queue's compiled core (these tests make no other)."""
    return q.core


def state(q: iopf.Queue) -> dict[str, Any]:
    return compiled(q).get_state()


@pytest.mark.parametrize("strategy", C_STRATEGIES)
@pytest.mark.parametrize("n", [40, 8000])       # output copied; output lent (over 64 KiB)
def test_batch_groups_hold_no_nodes_and_keep_their_faults(strategy: str, n: int) -> None:
    q = iopf.Queue(strategy=strategy)
    batch = q.report_batch(groups_of_4(n))
    assert len(batch) == n // 4
    assert not batch.faults.flags.writeable     # the record the queue keeps
    s = state(q)
    assert s["nodes_used"] == q.partial_count == 0
    assert s["faults_in_outputs"] == n and s["outputs_kept"] == 1
    want = {int(c): batch.faults[batch.offsets[i]:batch.offsets[i + 1]].tobytes()
            for i, c in enumerate(batch.cookies)}
    del batch
    gc.collect()
    got = {g.cookie: g.faults.tobytes() for g in q.pending()}
    assert got == want
    compiled(q)._check_nodes()


@pytest.mark.parametrize("strategy", C_STRATEGIES)
@pytest.mark.parametrize("answer", ["respond_batch", "respond", "timeout"])
def test_a_kept_output_goes_once_its_groups_are_answered(strategy: str, answer: str) -> None:
    q = iopf.Queue(iopf.policies.PCIE.replace(response_timeout=10_000), strategy=strategy)
    batch = q.report_batch(groups_of_4(8000))
    faults = weakref.ref(batch.faults)
    cookies = [int(c) for c in batch.cookies]
    del batch
    gc.collect()
    assert faults() is not None and state(q)["outputs_kept"] == 1   # the grouper keeps it
    q.respond_batch(cookies[:1000], Response.SUCCESS)
    q.take_responses()
    assert faults() is not None                                      # half its groups left in it
    assert [g.cookie for g in q.pending()] == cookies[1000:]
    if answer == "respond_batch":
        q.respond_batch(cookies[1000:], Response.SUCCESS)
    elif answer == "respond":
        for g in q.pending():
            q.respond(g, Response.SUCCESS)
    else:
        q.advance(10**9)                # the group times out
        q.take_responses()
    assert faults() is None
    assert state(q)["outputs_kept"] == 0 and len(q.pending_cookies()) == 0
    compiled(q)._check_nodes()


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_outputs_of_many_batches_are_kept_and_let_go_in_any_order(strategy: str) -> None:
    """Each batch leaves groups pending in its own output; they are answered
    in a shuffled order, batches interleaved, and every output goes when it
    keeps under a quarter of its faults (output numbers are reused, and grow
    past the first few)."""
    q = iopf.Queue(strategy=strategy)
    rng = np.random.default_rng(5)
    refs, pending = [], []
    for b in range(12):
        batch = q.report_batch(groups_of_4(400, start=b * 400, dev=b))
        refs.append(weakref.ref(batch.faults))
        pending += [int(c) for c in batch.cookies]
    del batch
    gc.collect()
    assert state(q)["outputs_kept"] == 12
    for chunk in np.array_split(rng.permutation(pending), 7):
        q.respond_batch(chunk, Response.SUCCESS)
        compiled(q)._check_nodes()
        left = set(int(c) for c in q.pending_cookies())
        for b, ref in enumerate(refs):
            mine = set(range(b * 100 + 1, b * 100 + 101))
            # kept while it keeps a quarter of its 400 faults (25 groups) or more
            assert (ref() is not None) == (len(mine & left) >= 25), b
    assert state(q)["outputs_kept"] == 0
    again = q.report_batch(groups_of_4(400, start=0, dev=99))     # an output number reused
    assert state(q)["outputs_kept"] == 1 and len(again) == 100


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_a_thin_output_gives_its_groups_nodes_and_goes(strategy: str) -> None:
    """An output that keeps under a quarter of its faults gives its pending
    groups nodes holding their faults, and goes: a few groups left pending
    never keep a whole batch's output alive."""
    q = iopf.Queue(strategy=strategy)
    batch = q.report_batch(groups_of_4(8000))
    faults = weakref.ref(batch.faults)
    want = {int(c): batch.faults[batch.offsets[i]:batch.offsets[i + 1]].tobytes()
            for i, c in enumerate(batch.cookies)}
    cookies = list(want)
    del batch
    gc.collect()
    q.respond_batch(cookies[:1500], Response.SUCCESS)     # it keeps a quarter: kept
    assert faults() is not None and state(q)["nodes_used"] == 0
    q.respond(cookies[1500], Response.SUCCESS)            # under a quarter: thinned
    assert faults() is None
    s = state(q)
    assert s["outputs_kept"] == 0 and s["faults_in_outputs"] == 0 and s["nodes_used"] == 499 * 4
    assert {g.cookie: g.faults.tobytes() for g in q.pending()} == {c: want[c] for c in cookies[1501:]}
    compiled(q)._check_nodes()
    q.respond_batch(cookies[1501:], Response.SUCCESS)
    assert state(q)["nodes_used"] == 0 and len(q.pending_cookies()) == 0
    compiled(q)._check_nodes()


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_a_thin_output_without_nodes_to_spare_stays_kept_until_answered(strategy: str) -> None:
    """Giving a thin output's groups nodes is all or nothing, and a
    MemoryError there fails nothing: the answer that made the output thin
    is sent, the output stays kept (its groups read from it) until its
    groups are answered, and then goes. For every allocation that can fail:
    the call either changes nothing, or does all it does undisturbed."""
    from iopf_core.grouper import _fail_alloc_after

    arr = groups_of_4(8000)

    def kept_batch() -> Any:
        core: Any = STRATEGIES[strategy](iopf.policies.PCIE)
        core.run(arr)
        core.take_groups()
        core.respond_batch(np.arange(1, 1501, dtype=np.uint64), np.zeros(1500, np.int64))
        core.take_responses()
        return core

    def pending(core: Any) -> list[tuple[int, bytes]]:
        return [(int(c), core.group_faults(int(c)).tobytes()) for c in core.pending_cookies()]

    ref = kept_batch()
    want = pending(ref)[1:]
    assert ref.respond(1501, 0) and ref.get_state()["outputs_kept"] == 0      # thinned
    sent = ref.take_responses().tobytes()
    outcomes: set[str] = set()
    for n in range(40):
        core = kept_batch()
        before = pending(core)
        _fail_alloc_after(n)
        try:
            core.respond(1501, 0)
        except MemoryError:
            outcomes.add("refused")
            assert pending(core) == before and not core.has_responses
            core._check_nodes()
            continue
        finally:
            _fail_alloc_after(-1)
        assert core.take_responses().tobytes() == sent and pending(core) == want
        core._check_nodes()
        s = core.get_state()
        if s["outputs_kept"]:           # no nodes for its groups: it stays as it was
            outcomes.add("kept")
            assert s["nodes_used"] == 0 and s["faults_in_outputs"] == 499 * 4 and s["thin_failures"] == 1
            core.respond(1502, 0)       # still thin: not tried again, still kept
            assert core.get_state()["outputs_kept"] == 1
            core.respond_batch(np.arange(1503, 2001, dtype=np.uint64), np.zeros(498, np.int64))
            assert core.get_state()["outputs_kept"] == 0
        else:
            outcomes.add("thinned")
            assert s["nodes_used"] == 499 * 4 and s["thin_failures"] == 0
            break
    assert {"kept", "thinned"} <= outcomes     # a failure hit the nodes, and the last call none


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_a_batch_mostly_answered_while_it_runs_is_thinned_when_taken(strategy: str) -> None:
    """A constant handler answers most groups inside the batch; the few left
    to a Python handler get nodes when the batch is taken, and its output is
    not kept."""
    q = iopf.Queue(strategy=strategy)
    q.attach(1, 5, Response.SUCCESS)
    seen: list[iopf.Group] = []
    q.attach(2, 5, seen.append)
    arr = np.concatenate([groups_of_4(7960), groups_of_4(40, dev=2)])
    batch = q.report_batch(arr)
    assert len(seen) == 10 and len(q.pending_cookies()) == 10
    s = state(q)
    assert s["outputs_kept"] == 0 and s["nodes_used"] == 40
    assert [g.faults.tobytes() for g in q.pending()] == [g.faults.tobytes() for g in seen]
    del batch
    compiled(q)._check_nodes()


@pytest.mark.parametrize("strategy", C_STRATEGIES)
def test_an_output_cookie_range_starts_again_once_none_of_its_groups_is_pending(strategy: str) -> None:
    """A thin output finds its groups by walking its cookie range. The output
    being filled starts that range again at its next group once none of its
    groups is pending: batches whose groups were all answered as they formed
    (it is then not kept, and filled again) must not stretch the range, or
    the next thin output would walk every cookie handed out since."""
    core: Any = STRATEGIES[strategy](iopf.policies.PCIE)
    core.attach(1, 5, None, 0)                # a constant handler: answered in run()
    for k in range(3):
        core.run(groups_of_4(400, start=400 * k))
        core.take_groups()
        core._check_nodes()
    core.run(groups_of_4(40, dev=2))          # no handler: pending in the output being filled
    cookies = [int(c) for c in core.pending_cookies()]
    assert len(cookies) == 10
    core._check_nodes()
    core.respond_batch(np.array(cookies, np.uint64), np.zeros(10, np.int64))    # before it is taken
    core._check_nodes()
    core.run(np.concatenate([groups_of_4(4000, start=2000), groups_of_4(8, dev=2)]))
    faults, offsets, taken = core.take_groups()
    assert core.get_state()["outputs_kept"] == 0 and core.get_state()["nodes_used"] == 8   # thinned
    assert [core.group_faults(int(c)).tobytes() for c in core.pending_cookies()] == [
        faults[offsets[-3]:offsets[-2]].tobytes(), faults[offsets[-2]:offsets[-1]].tobytes()]
    core._check_nodes()


@pytest.mark.parametrize("strategy", ["hash", "tree", "list", "python"])
def test_a_group_reported_alone_leaves_the_batch_output_as_it_was(strategy: str) -> None:
    """run() collects a group; before it is taken, a group reported one request
    at a time (report_fault) comes and goes back out: take_groups gives the
    batch's group alone, and both groups' faults are read back right."""
    core: Any = STRATEGIES[strategy](iopf.policies.PCIE)
    arr = groups_of_4(4)
    assert core.run(arr) == 4
    alone = groups_of_4(4, start=4, dev=2)
    done = None
    for rec in alone.tolist():
        done = core.report_fault((*rec[:7], tuple(rec[7])))
    assert done is not None
    cookie, records = done
    assert records == alone.tobytes()
    faults, offsets, cookies = core.take_groups()
    assert faults.tobytes() == arr.tobytes() and list(offsets) == [0, 4] and len(cookies) == 1
    assert core.group_faults(int(cookies[0])).tobytes() == arr.tobytes()
    assert core.group_faults(cookie).tobytes() == alone.tobytes()


def test_output_numbers_grow_all_or_nothing() -> None:
    """When the grouper cannot grow its table of kept outputs, take_groups
    raises MemoryError and changes nothing: the next take gives the groups."""
    from iopf_core.grouper import _fail_alloc_after
    core: Any = STRATEGIES["hash"](iopf.policies.PCIE)
    for b in range(4):                   # four outputs kept: the first table is full
        core.run(groups_of_4(8, start=8 * b))
        if b < 3:
            core.take_groups()
    before = [(int(k), core.group_faults(int(k)).tobytes()) for k in core.pending_cookies()]
    _fail_alloc_after(0)
    try:
        with pytest.raises(MemoryError):
            core.take_groups()
    finally:
        _fail_alloc_after(-1)
    assert [(int(k), core.group_faults(int(k)).tobytes()) for k in core.pending_cookies()] == before
    faults, offsets, cookies = core.take_groups()
    assert faults.tobytes() == groups_of_4(8, start=24).tobytes() and len(cookies) == 2
    assert core.get_state()["outputs_kept"] == 4
    core._check_nodes()


def run_child(code: str) -> None:
    """Run code in a fresh interpreter (what used to crash); it must print OK."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert proc.stdout.strip().endswith("OK"), proc.stdout[-2000:]


def test_a_kept_array_changed_in_place_is_read_by_its_memory() -> None:
    """The arrays take_groups gives are the caller's, and the grouper reads a
    pending group's faults back from the faults array it gave: a caller may
    reshape it in place (even to 0-d), give it another dtype, or resize it
    (a small output's copy owns its memory). The grouper goes by the array's
    bytes, not by its first dimension: it reads the group's faults if they
    are still there, else raises SystemError, and never reads past the
    array's memory (a 0-d array used to crash it)."""
    run_child("""
        import numpy as np, iopf
        from iopf import FAULT_DTYPE
        from iopf_core import STRATEGIES
        core = STRATEGIES["hash"](iopf.policies.PCIE)
        one = np.zeros(1, FAULT_DTYPE)
        one["dev"], one["flags"], one["perm"], one["addr"] = 1, 3, 1, 0x5000
        core.run(one)
        f, offsets, cookies = core.take_groups()
        f.shape = ()                                 # 0-d: it has no first dimension
        assert core.group_faults(int(cookies[0])).tobytes() == one.tobytes()

        a = np.zeros(400, FAULT_DTYPE)
        a["dev"], a["pasid"], a["perm"] = 2, 5, 1
        a["grpid"] = np.arange(400) // 4
        a["flags"] = np.where(np.arange(400) % 4 == 3, 3, 1)
        a["addr"] = np.arange(400) << 12
        core.run(a)
        f, offsets, cookies = core.take_groups()
        assert f.flags.owndata                       # a small output: a copy
        f.shape = (100, 4)                           # the same bytes: still read
        assert core.group_faults(int(cookies[-1])).tobytes() == a[-4:].tobytes()
        f.shape = (400,)
        f.dtype = np.uint8                           # 20800 elements, 20800 bytes
        f.resize(8, refcheck=False)                  # 8 bytes left: no group is there
        for k in cookies:
            try:
                core.group_faults(int(k))
            except SystemError:
                pass
            else:
                raise AssertionError(f"group {k} read from 8 bytes")
        print("OK")
    """)


@pytest.mark.parametrize("strategy", C_STRATEGIES)
@pytest.mark.parametrize("answer", ["advance", "expire", "remove_device", "flush_pasid", "detach",
                                    "serve", "report_fault", "respond_at"])
def test_every_call_that_answers_lets_a_kept_output_go(strategy: str, answer: str) -> None:
    """Not only respond and respond_batch: timeouts, scheduled answers, the
    service model, flushing, detaching, removing the device and a request
    that times groups out on its way in all answer groups. Once the last
    group of a kept output is answered, by any of them, the output goes at
    the end of that call (it used to stay until the next respond or batch)."""
    q = iopf.Queue(iopf.policies.PCIE.replace(response_timeout=10_000), strategy=strategy,
                   auto_advance=answer == "report_fault")
    if answer == "detach":
        q.attach(1, 5, Response.SUCCESS)
        q.attach(1, 5, lambda g: None)
    if answer == "serve":
        q.service = iopf.Service("const:5", 1)
    batch = q.report_batch(groups_of_4(8000))
    faults = weakref.ref(batch.faults)
    cookies = [int(c) for c in batch.cookies]
    del batch
    gc.collect()
    assert faults() is not None
    if answer == "advance":
        q.advance(10**9)
    elif answer == "expire":
        q.expire(10**9)
    elif answer == "remove_device":
        q.remove_device(1)
    elif answer == "flush_pasid":
        q.flush_pasid(1, 5)
    elif answer == "detach":
        q.detach(1, 5)
    elif answer == "serve":
        for c in cookies:
            q.serve(c, at=0)
        q.advance(10**6)
    elif answer == "report_fault":          # auto_advance: the request times them out first
        q.report(iopf.Fault(2, 0, 0, 0, last=True, pasid_valid=False, time=10**9))
    else:
        q.respond_batch(cookies, Response.SUCCESS, at=5)
        q.advance(10**6)
    assert len(q.pending_cookies()) == 0 or answer == "report_fault"
    assert not set(cookies) & set(int(c) for c in q.pending_cookies())
    assert faults() is None
    assert state(q)["outputs_kept"] == 0
    compiled(q)._check_nodes()


@pytest.mark.parametrize("strategy", ["hash", "tree", "list", "python"])
@pytest.mark.parametrize("n", [40, 8000])
def test_take_groups_gives_a_read_only_faults_array(strategy: str, n: int) -> None:
    """The faults array from take_groups is the record the grouper reads a
    pending group back from: read-only from the core too (not only in a
    GroupBatch), so that sorting or filling it in place fails instead of
    changing what group_faults gives. Offsets and cookies stay the caller's."""
    core: Any = STRATEGIES[strategy](iopf.policies.PCIE)
    arr = groups_of_4(n)
    core.run(arr)
    faults, offsets, cookies = core.take_groups()
    assert not faults.flags.writeable and offsets.flags.writeable and cookies.flags.writeable
    with pytest.raises(ValueError):
        faults.sort(order="addr")
    with pytest.raises(ValueError):
        faults["addr"] = 0
    assert core.group_faults(int(cookies[-1])).tobytes() == arr[-4:].tobytes()


@pytest.mark.parametrize("n", [40, 8000])
def test_outputs_outlive_their_grouper(n: int) -> None:
    """A grouper that goes while it keeps outputs (and holds one not taken)
    leaves the arrays it gave whole: they are the caller's as well."""
    core: Any = STRATEGIES["tree"](iopf.policies.PCIE)
    core.run(groups_of_4(n))
    first = core.take_groups()
    core.run(groups_of_4(n, start=n))
    second = core.take_groups()
    core.run(groups_of_4(n, start=2 * n))       # not taken
    assert core.get_state()["outputs_kept"] == 2
    del core
    gc.collect()
    assert first[0].tobytes() == groups_of_4(n).tobytes()
    assert second[0].tobytes() == groups_of_4(n, start=n).tobytes()
    assert list(second[1]) == list(range(0, n + 1, 4))


def mixed_batch(rng: np.random.Generator, groups: int, t0: int) -> np.ndarray:
    """Whole groups of 1 to 6 requests over 3 devices, 3 PASIDs and 8 group ids."""
    recs: list[tuple[Any, ...]] = []
    for _ in range(groups):
        dev, pasid, grpid, k = (int(x) for x in rng.integers((1, 0, 0, 1), (4, 3, 8, 7)))
        for j in range(k):
            recs.append((t0 + len(recs), dev, pasid, grpid, 3 if j == k - 1 else 1, int(rng.integers(0, 4)),
                         int(rng.integers(0, 2**40)), (int(rng.integers(0, 5)), 0)))
    return np.array(recs, FAULT_DTYPE)


@pytest.mark.parametrize("seed", range(3))
def test_thinned_outputs_agree_with_every_strategy(seed: int) -> None:
    """Batches leave groups pending in their outputs (some taken later or not
    at all, some answered as they form by a constant handler); answers,
    timeouts, flushes, detaches and device removals thin the outputs and give
    their groups nodes. The four strategies, the twin among them, send the
    same responses and hold the same pending faults after every call, and the
    compiled ones' nodes and outputs stay consistent."""
    rng = np.random.default_rng(seed)
    policy = iopf.policies.PCIE.replace(response_timeout=int(rng.choice([300, 5000])))
    cores: list[Any] = [STRATEGIES[name](policy) for name in ["hash", "tree", "list", "python"]]
    auto_dev = int(rng.integers(1, 4))
    for core in cores:
        core.attach(auto_dev, 0, None, 0)
    sent: list[list[Any]] = [[] for _ in cores]
    t = nodes = thinned = 0
    for _ in range(150):
        op = str(rng.choice(["batch", "batch", "respond", "respond_batch", "advance", "flush", "detach",
                             "attach", "remove_device"]))
        pending = [int(c) for c in cores[0].pending_cookies()]
        dev, pasid = int(rng.integers(1, 4)), int(rng.integers(0, 3))
        outs: list[Any] = []
        for core in cores:
            rng_state = rng.bit_generator.state
            if op == "batch":
                arr = mixed_batch(rng, int(rng.integers(1, 300)), t)
                take = rng.random() < 0.85
                i = 0
                while i < len(arr):
                    i = core.run(arr, i)
                outs.append([a.tobytes() for a in core.take_groups()] if take else None)
            elif op == "respond" and pending:
                outs.append(core.respond(pending[int(rng.integers(len(pending)))], 0, time=t))
            elif op == "respond_batch" and pending:
                share = 0.9 if rng.random() < 0.5 else 0.3
                chosen = [c for c in pending if rng.random() < share]
                outs.append(core.respond_batch(np.array(chosen, np.uint64), np.zeros(len(chosen), np.int64),
                                               time=t))
            elif op == "advance":
                outs.append(core.advance(t + int(rng.integers(0, 3000))))
            elif op == "flush":
                outs.append(core.flush_pasid(dev, pasid, 1, time=t))
            elif op in ("detach", "attach", "remove_device"):
                try:
                    outs.append(core.detach(dev, pasid, time=t) if op == "detach" else
                                core.attach(dev, pasid, time=t, auto=int(rng.integers(0, 2)))
                                if op == "attach" else core.remove_device(dev, time=t))
                except ValueError as e:
                    outs.append(str(e))
            if core is not cores[-1]:
                rng.bit_generator.state = rng_state      # every core draws the same
        outs = [o.tolist() if isinstance(o, np.ndarray) else o for o in outs]
        assert all(o == outs[0] for o in outs), op
        t = max(t + 300, int(cores[0].now))
        for core, seen in zip(cores, sent):
            seen.extend(core.take_responses().tolist())
        assert all(s == sent[0] for s in sent), op
        held = [[(c, core.group_faults(int(c)).tobytes()) for c in core.pending_cookies()] for core in cores]
        assert all(h == held[0] for h in held), op
        for core in cores[:3]:
            core._check_nodes()
        used = cores[0].get_state()["nodes_used"]
        thinned += op != "batch" and used > nodes
        nodes = used
    assert thinned          # some outputs were thinned
