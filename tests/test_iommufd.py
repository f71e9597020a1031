"""iopf.iommufd: the fault object's read/write/poll, byte for byte as Linux 6.17's
iommufd/eventq.c and include/uapi/linux/iommufd.h, on every strategy."""
from __future__ import annotations

import errno
import select
import struct
from collections.abc import Callable, Sequence

import numpy as np
import pytest

import iopf
from iopf import Fault, Flag, Perm, Reason, Response, iommufd, policies
from iopf.iommufd import FaultObject

MakeQueue = Callable[..., iopf.Queue]
Feed = Callable[[iopf.Queue, Sequence[Fault]], list[iopf.Group]]
REC = iommufd.PGFAULT_DTYPE.itemsize
SIZES = (1, 2, 3)          # the three groups of `three_groups`, in order


def group(dev: int, pasid: int, grpid: int, n: int, base: int = 0) -> list[Fault]:
    return [Fault(dev, pasid, grpid, (base + i) << 12, perm=Perm.READ | Perm.WRITE,
                  last=i == n - 1, needs_pasid=True) for i in range(n)]


def three_groups(make_queue: MakeQueue, feed: Feed) -> FaultObject:
    fo = FaultObject(make_queue(policies.VTD))
    fo.attach(7, 1, dev_id=42)
    faults = [f for k, n in enumerate(SIZES) for f in group(7, 1, k, n, base=16 * k)]
    assert len(feed(fo.queue, faults)) == 3
    assert fo.unread == 3
    return fo


def answers(fo: FaultObject) -> list[tuple[int, int, int]]:
    return [(g, c, r) for g, c, r in
            fo.queue.take_responses()[["grpid", "code", "reason"]].tolist()]


def read_groups(data: bytes) -> list[int]:
    """The grpids of the groups in a read, checking each group's records share a cookie."""
    recs = iommufd.records(data)
    out: list[int] = []
    for cookie in dict.fromkeys(recs["cookie"].tolist()):
        mine = recs[recs["cookie"] == cookie]
        assert len(set(mine["grpid"].tolist())) == 1
        out.append(int(mine["grpid"][0]))
    return out


@pytest.mark.parametrize("nrec", range(sum(SIZES) + 1))
def test_read_gets_only_whole_groups(make_queue: MakeQueue, feed: Feed, nrec: int) -> None:
    """A buffer of nrec records gets the groups, oldest first, that fit whole; the first
    group that does not fit blocks those behind it (iommufd_fault_fops_read)."""
    fo = three_groups(make_queue, feed)
    data = fo.read(nrec * REC)
    fitting, used = [], 0
    for grpid, n in enumerate(SIZES):
        if used + n > nrec:
            break
        fitting.append(grpid)
        used += n
    assert len(data) == used * REC
    assert read_groups(data) == fitting
    assert fo.unread == 3 - len(fitting)
    rest = fo.read(sum(SIZES) * REC)                 # a big read takes the rest, in order
    assert read_groups(rest) == [g for g in range(3) if g not in fitting]
    assert fo.read(REC * 10) == b"" and fo.unread == 0


def test_head_of_line_blocking(make_queue: MakeQueue, feed: Feed) -> None:
    fo = three_groups(make_queue, feed)
    assert read_groups(fo.read(REC)) == [0]
    assert fo.read(REC) == b""                       # the group of 2 blocks the one behind
    assert fo.unread == 2


@pytest.mark.parametrize("nbytes", [1, 39, 41, 100])
def test_read_size_must_be_whole_records(make_queue: MakeQueue, feed: Feed, nbytes: int) -> None:
    fo = three_groups(make_queue, feed)
    with pytest.raises(OSError) as e:
        fo.read(nbytes)
    assert e.value.errno == errno.ESPIPE and fo.unread == 3


def test_record_layout_is_the_uapi_struct(make_queue: MakeQueue, feed: Feed) -> None:
    """struct iommu_hwpt_pgfault {u32 flags, dev_id, pasid, grpid, perm, __reserved;
    __aligned_u64 addr; u32 length, cookie}: reserved fields zero, raw flags (the
    kernel-internal NEEDS_PASID bit leaks through), the cookie on every record."""
    fo = three_groups(make_queue, feed)
    data = fo.read(3 * REC)
    assert len(data) == 3 * REC
    rows = [struct.unpack_from("<6IQ2I", data, i * REC) for i in range(3)]
    pv, last, needs = int(Flag.PASID_VALID), int(Flag.LAST_PAGE), int(Flag.NEEDS_PASID)
    assert rows == [
        (pv | last | needs, 42, 1, 0, 3, 0, 0 << 12, 0, 1),
        (pv | needs, 42, 1, 1, 3, 0, 16 << 12, 0, 2),
        (pv | last | needs, 42, 1, 1, 3, 0, 17 << 12, 0, 2)]


def test_cookies_are_lowest_free_ids_reused_after_a_response(make_queue: MakeQueue,
                                                             feed: Feed) -> None:
    """xa_alloc(xa_limit_32b) on an XA_FLAGS_ALLOC1 array: the lowest free id from 1."""
    fo = FaultObject(make_queue(policies.VTD))
    fo.attach(1, None)
    feed(fo.queue, [f for k in range(4) for f in group(1, 0, k, 1)])
    assert iommufd.records(fo.read(3 * REC))["cookie"].tolist() == [1, 2, 3]
    assert fo.write(iommufd.responses([(2, 0), (1, 1)])) == 16
    assert fo.outstanding() == [3]
    feed(fo.queue, group(1, 0, 9, 1))
    assert iommufd.records(fo.read(10 * REC))["cookie"].tolist() == [1, 2]   # reused
    assert [(g, c) for g, c, _ in answers(fo)] == [(1, 0), (0, 1)]


def state(fo: FaultObject) -> tuple[object, ...]:
    return (fo.unread, fo.outstanding(), fo.queue.stats.as_dict(),
            fo.queue.pending_cookies().tolist(), fo.poll())


@pytest.mark.parametrize("bad", [(1, 2), (1, 3), (99, 0), (0, 0)],
                         ids=["FAILURE", "code3", "unknown", "cookie0"])
def test_refused_write_leaves_state_unchanged(make_queue: MakeQueue, feed: Feed,
                                              bad: tuple[int, int]) -> None:
    """Codes other than SUCCESS and INVALID (FAILURE was removed from the uAPI in 6.11)
    and unknown cookies give EINVAL and change nothing."""
    fo = three_groups(make_queue, feed)
    fo.read(3 * REC)
    before = state(fo)
    with pytest.raises(OSError) as e:
        fo.write(iommufd.responses([bad]))
    assert e.value.errno == errno.EINVAL
    assert state(fo) == before and answers(fo) == []
    with pytest.raises(OSError) as e:
        fo.write(b"\0" * 7)
    assert e.value.errno == errno.ESPIPE and state(fo) == before
    assert fo.write(b"") == 0 and state(fo) == before


def test_write_stops_at_the_first_bad_record(make_queue: MakeQueue, feed: Feed) -> None:
    """Processing stops at the first error; the bytes consumed before it are returned."""
    fo = three_groups(make_queue, feed)
    fo.read(6 * REC)
    assert fo.write(iommufd.responses([(2, 0), (3, 2), (1, 0)])) == 8
    assert fo.outstanding() == [1, 3]
    assert answers(fo) == [(1, 0, Reason.CALLER)]
    with pytest.raises(OSError):
        fo.write(iommufd.responses([(2, 0)]))        # answered: unknown now


def test_detach_answers_unread_newest_first_then_read_in_cookie_order(
        make_queue: MakeQueue, feed: Feed) -> None:
    """iommufd_auto_response_faults: unread groups list_move()d to a private list
    (newest first), then xa_for_each over the read ones (cookie order)."""
    fo = FaultObject(make_queue(policies.VTD))
    fo.attach(1, 1)
    fo.attach(1, 2)                  # keeps the device added when (1, 1) goes
    feed(fo.queue, [f for k in range(6) for f in group(1, 1, k, 1)])
    fo.read(3 * REC)                 # groups 0, 1, 2 get cookies 1, 2, 3
    assert fo.write(iommufd.responses([(1, 0)])) == 8      # 0 answered: cookie 1 free
    feed(fo.queue, group(1, 1, 6, 1))
    fo.read(REC)                     # group 3 gets cookie 1
    answers(fo)
    assert fo.detach(1, 1) and not fo.detach(1, 1)
    assert answers(fo) == [(g, 1, Reason.DETACHED) for g in (6, 5, 4, 3, 1, 2)]
    assert fo.unread == 0 and fo.outstanding() == []


def test_last_detach_removes_the_vtd_device_first(make_queue: MakeQueue, feed: Feed) -> None:
    """VT-d (Linux 6.16+): detaching the last fault-capable domain removes the device
    inside iommu_detach_group_handle, before iommufd answers: iopf_queue_remove_device
    answers every group of the device newest first, read or not."""
    fo = FaultObject(make_queue(policies.VTD))
    fo.attach(1, 1)
    feed(fo.queue, [f for k in range(4) for f in group(1, 1, k, 1)])
    fo.read(2 * REC)
    fo.detach(1, 1)
    assert answers(fo) == [(g, 1, Reason.REMOVED) for g in (3, 2, 1, 0)]
    assert fo.outstanding() == [] and fo.unread == 0 and fo.queue.stats.pending_now == 0


def test_replace_answers_the_old_attachment(make_queue: MakeQueue, feed: Feed) -> None:
    """Replace (with the July 2026 fix): the old handle's groups are answered as on
    detach; the device stays added; new groups go to the new fault object."""
    q = make_queue(policies.VTD)
    a, b = FaultObject(q), FaultObject(q)
    a.attach(1, 1)
    feed(q, [f for k in range(3) for f in group(1, 1, k, 1)])
    a.read(REC)
    a.replace(1, 1, b)
    assert answers(a) == [(g, 1, Reason.DETACHED) for g in (2, 1, 0)]
    feed(q, group(1, 1, 5, 1))
    assert (a.unread, b.unread) == (0, 1) and q.stats.rejected == 0
    with pytest.raises(ValueError):
        a.attach(1, 1)               # attached (to b) already


def test_destroy_answers_unread_oldest_first_then_read(make_queue: MakeQueue,
                                                       feed: Feed) -> None:
    """iommufd_fault_destroy walks deliver from the head (oldest first), then the
    response xarray (cookie order)."""
    fo = FaultObject(make_queue(policies.VTD))
    fo.attach(1, 1)
    feed(fo.queue, [f for k in range(5) for f in group(1, 1, k, 1)])
    fo.read(2 * REC)
    fo.destroy()
    assert [g for g, _, _ in answers(fo)] == [2, 3, 4, 0, 1]
    with pytest.raises(ValueError):
        fo.read(REC)


def test_poll(make_queue: MakeQueue, feed: Feed) -> None:
    fo = three_groups(make_queue, feed)
    assert fo.poll() == select.POLLOUT | select.POLLIN | select.POLLRDNORM
    fo.read(10 * REC)
    assert fo.poll() == select.POLLOUT


def test_other_handlers_and_devices_are_untouched(make_queue: MakeQueue, feed: Feed) -> None:
    """Only groups of this object's attachments are delivered; a queue-level answer
    to a delivered group makes the VMM's later write a no-op for the device."""
    q = make_queue(policies.LINUX)
    q.add_device(1)
    fo = FaultObject(q)
    fo.attach(1, 1)
    q.attach(1, 2, Response.SUCCESS)
    feed(q, group(1, 2, 0, 2) + group(1, 1, 1, 1))
    assert fo.unread == 1 and [g for g, _, _ in answers(fo)] == [0]
    recs = iommufd.records(fo.read(REC))
    q.remove_device(1)
    assert answers(fo) == [(1, 1, Reason.REMOVED)]
    assert fo.write(iommufd.responses([(int(recs["cookie"][0]), 0)])) == 8
    assert answers(fo) == [] and fo.outstanding() == []
    assert np.all(recs["reserved"] == 0) and np.all(recs["length"] == 0)


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/iommufd.md's example runs and prints what its comments say."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "docs" / "iommufd.md").read_text()
    code = re.search(r"## Example\n\n```python\n(.*?)```", text, re.S)
    assert code is not None
    exec(compile(code.group(1), "docs/iommufd.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    expected = [line[2:].split("  --")[0] for line in code.group(1).splitlines()
                if line.startswith("# [(")]
    assert [p for p in printed if p.startswith("[(")] == expected
