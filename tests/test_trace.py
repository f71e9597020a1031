"""Tests of iopf.trace: the trace formats, format detection, bad input, and
the synthetic workload generator."""
from __future__ import annotations

import os
import shutil
import struct
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import write
from iopf import trace
from iopf.trace import LoadStats, TraceError
from iopf.types import FAULT_DTYPE, Fault, Flag, Perm

DATA = Path(__file__).parent / "data"
PRQ_FIXTURE = DATA / "prq_report.txt"
BAD_LINE = 22  # the malformed prq_report line of the fixture (addr=0xZZZ)

PV_NP = int(Flag.PASID_VALID | Flag.NEEDS_PASID)
LAST = int(Flag.LAST_PAGE)
IOMMUFD_KEPT = int(Flag.PASID_VALID | Flag.LAST_PAGE | Flag.NEEDS_PASID)

# The six good prq_report lines of the fixture, as FAULT_DTYPE records.
FIXTURE_RECORDS = np.array([
    (1234_567890000, 0x6A08, 2, 3, PV_NP, Perm.READ, 0x7F3C1A2B3 << 12, (0, 0)),
    (1234_567891000, 0x6A08, 2, 3, PV_NP | LAST, Perm.READ | Perm.WRITE,
     0x7F3C1A2B4 << 12, (0, 0)),
    # trace-cmd layout, no PASID, exec + privileged
    (1234_568000000, 0x6A09, 0, 0x1FF, 0, Perm.EXEC | Perm.PRIV, 0x1000 << 12, (0, 0)),
    # trace-cmd with nanosecond timestamps (-t)
    (1234_568100123, 0x6A09, 0, 0x1FF, LAST, Perm.WRITE, 0x1001 << 12, (0, 0)),
    (1234_569000000, 0x6A08, 0xFFFFF, 0, PV_NP | LAST | Flag.PRIV_DATA, Perm.READ,
     0x55AA0 << 12, (0xDEADBEEF, 1)),
    (1235_000001000, 0x6A08, 2, 5, PV_NP | LAST, Perm.READ | Perm.WRITE,
     0x7F3C1A2B5 << 12, (0, 0)),
], dtype=FAULT_DTYPE)


def rich_faults(n: int = 500, seed: int = 3) -> np.ndarray:
    """Synthetic faults plus every field a lossless format must keep."""
    rng = np.random.default_rng(seed)
    f = trace.synthetic(n, seed=seed, no_pasid=0.2, stop_markers=0.1)
    f["time"] += rng.integers(0, 1000, n).cumsum().astype(np.uint64)
    f["addr"] |= rng.integers(0, 4096, n).astype(np.uint64)
    priv = rng.random(n) < 0.3
    f["flags"][priv] |= int(Flag.PRIV_DATA)
    f["private"][priv] = rng.integers(0, 2**63, (int(priv.sum()), 2)).astype(np.uint64)
    f["perm"][::7] |= int(Perm.EXEC | Perm.PRIV)
    f["dev"][::11] = 0xFFFF_FFFF
    return f


def prq_representable(f: np.ndarray) -> np.ndarray:
    """What a prq_report save keeps: pages, microseconds, pasid<->flags, private
    only with PRIV_DATA."""
    g = f.copy()
    g["addr"] &= ~np.uint64(0xFFF)
    g["time"] = (g["time"] + 500) // 1000 * 1000
    g["perm"] &= 0xF
    has_pasid = (g["flags"] & Flag.PASID_VALID) != 0
    g["pasid"][~has_pasid] = 0
    has_pasid &= g["pasid"] != 0
    g["flags"] = (g["flags"] & int(Flag.LAST_PAGE | Flag.PRIV_DATA)) | np.where(has_pasid, PV_NP, 0)
    g["private"][(g["flags"] & Flag.PRIV_DATA) == 0] = 0
    return g


def iommufd_representable(f: np.ndarray) -> np.ndarray:
    g = f.copy()
    g["time"] = np.arange(len(g))
    g["flags"] &= IOMMUFD_KEPT
    g["private"] = 0
    return g


def pack_iommufd(flags, dev_id, pasid, grpid, perm, addr, reserved=0, length=0, cookie=0):
    return struct.pack("<6IQ2I", flags, dev_id, pasid, grpid, perm, reserved, addr,
                       length, cookie)


# ---------------------------------------------------------------- prq_report fixture

def test_fixture_malformed_line_names_file_and_line():
    with pytest.raises(TraceError) as info:
        trace.load(PRQ_FIXTURE)
    err = info.value
    assert isinstance(err, ValueError) and err.line == BAD_LINE and err.record is None
    assert f"prq_report.txt:{BAD_LINE}: bad prq_report line" in str(err)
    assert "addr=0xZZZ" in str(err)
    assert "\n" not in str(err)


def test_fixture_skip_bad_counts_and_keeps_the_rest():
    stats = LoadStats()
    got = trace.load(PRQ_FIXTURE, skip_bad=True, stats=stats)
    np.testing.assert_array_equal(got, FIXTURE_RECORDS)
    assert (stats.format, stats.records, stats.skipped) == ("prq_report", 6, 1)
    assert f":{BAD_LINE}:" in stats.errors[0]


def test_fixture_sniffed_without_extension(tmp_path):
    for name in ("capture", "capture.txt", "capture.log"):
        p = tmp_path / name
        shutil.copy(PRQ_FIXTURE, p)
        assert trace.detect_format(p) == "prq_report"
        np.testing.assert_array_equal(trace.load(p, skip_bad=True), FIXTURE_RECORDS)


def test_prq_other_events_only_is_an_error(tmp_path):
    """A capture without a single prq_report line cannot be told from a
    failed one: an error, never a trace of 0 faults."""
    lines = [ln for ln in PRQ_FIXTURE.read_text().splitlines(True) if "prq_report:" not in ln]
    p = write(tmp_path / "quiet.txt", "".join(lines))
    assert trace.detect_format(p) == "prq_report"
    with pytest.raises(TraceError, match=r"quiet\.txt: no prq_report line"):
        trace.load(p)


@pytest.mark.parametrize("body, reason", [
    ("rid=0x100000000 addr=0x1 r---l pasid=0x1 index=0x1", "rid=0x100000000 out of range"),
    ("rid=0x1 addr=0x1 r---l pasid=0x100000000 index=0x1", "pasid=0x100000000 out of range"),
    ("rid=0x1 addr=0x10000000000000 r---l pasid=0x1 index=0x1", "addr=0x10000000000000"),
    ("rid=0x1 addr=0x1 r---l pasid=0x1 index=0x1 private=0x1/0x10000000000000000",
     "private data out of range"),
    ("rid=0x1 addr=0x1 rq--l pasid=0x1 index=0x1", "bad prq_report line"),
])
def test_prq_out_of_range_names_line(tmp_path, body, reason):
    good = "  iopf-0  [000] .....  1.000000: prq_report: dmar0/0000:00:00.1 seq# 0: " \
           "rid=0x1 addr=0x1 r---l pasid=0x1 index=0x1\n"
    bad = f"  iopf-0  [000] .....  1.000001: prq_report: dmar0/0000:00:00.1 seq# 1: {body}\n"
    p = write(tmp_path / "t.trace", "# tracer: nop\n" + good + good + bad)
    with pytest.raises(TraceError, match=rf"t\.trace:4: {reason}"):
        trace.load(p)
    assert len(trace.load(p, skip_bad=True)) == 2


def test_prq_context_variants(tmp_path):
    body = "prq_report: dmar0/0000:00:00.1 seq# 0: rid=0x1 addr=0x2 rw--l pasid=0x3 index=0x4"
    lines = [
        f"  kworker/u16:2-mm-99  [001] d..1.  5.000001: {body}",   # dashes, slash in comm
        f"  <...>-99 (   99) [001] d..1  5.000002: intel_iommu:{body}",  # tgid, 4 flags
        f"  task-99  [001]  5.000003: {body}",
        f"  task-99  [001]  5: {body}",                             # counter clock
    ]
    p = write(tmp_path / "v.trace", "\r\n".join(lines) + "\r\n")
    got = trace.load(p)
    assert got["time"].tolist() == [5_000_001_000, 5_000_002_000, 5_000_003_000, 5]
    assert set(got["dev"].tolist()) == {1} and set(got["grpid"].tolist()) == {4}


def test_prq_save_layout(tmp_path):
    f = np.array([
        (1_234_567_890_400, 0x6A08, 2, 3, PV_NP, Perm.READ, 0x7F3C1A2B3ABC, (0, 0)),
        (1_234_567_890_500, 0x6A09, 0, 0x1FF, LAST | Flag.PRIV_DATA, Perm.WRITE | Perm.EXEC,
         0x1000, (0xAB, 0xCD)),
        (0, 0x12_0001, 0, 7, LAST, 0, 0, (0, 0)),
    ], dtype=FAULT_DTYPE)
    p = tmp_path / "out.txt"
    trace.save(p, f)
    text = p.read_text()
    assert text.startswith("# tracer: nop\n")
    events = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert events == [
        "            iopf-0       [000] .....  1234.567890: prq_report: dmar0/0000:6a:01.0"
        " seq# 0: rid=0x6a08 addr=0x7f3c1a2b3 r---- pasid=0x2 index=0x3",
        "            iopf-0       [000] .....  1234.567891: prq_report: dmar0/0000:6a:01.1"
        " seq# 1: rid=0x6a09 addr=0x1 -wx-l pasid=0x0 index=0x1ff private=0xab/0xcd",
        "",  # the kernel's private text ends with its own newline
        # dev = segment << 16 | rid: segment 0x12 in the device name
        "            iopf-0       [000] .....     0.000000: prq_report: dmar0/0012:00:00.1"
        " seq# 2: rid=0x1 addr=0x0 ----l pasid=0x0 index=0x7",
    ]
    got = trace.load(p)
    np.testing.assert_array_equal(got, prq_representable(f))
    assert got["time"][:2].tolist() == [1_234_567_890_000, 1_234_567_891_000]  # rounded


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("fmt, ext", [("npy", ".npy"), ("csv", ".csv"), ("parquet", ".parquet")])
def test_lossless_round_trip(tmp_path, fmt, ext):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    f = rich_faults()
    p = tmp_path / f"t{ext}"
    trace.save(p, f)
    got = trace.load(p)
    assert got.dtype == FAULT_DTYPE
    np.testing.assert_array_equal(got, f)
    # format= wins over a misleading extension
    q = tmp_path / "t.data"
    trace.save(q, f, format=fmt)
    np.testing.assert_array_equal(trace.load(q, format=fmt), f)


def test_prq_report_round_trip(tmp_path):
    f = prq_representable(rich_faults())
    assert (f["time"] % 1000 == 0).all()  # only microsecond times survive exactly
    p = tmp_path / "t.trace"
    trace.save(p, f)
    np.testing.assert_array_equal(trace.load(p), f)


def test_prq_report_round_trip_loses_what_the_format_cannot_hold(tmp_path):
    f = rich_faults()
    p = tmp_path / "t.trace"
    trace.save(p, f)
    got = trace.load(p)
    np.testing.assert_array_equal(got, prq_representable(f))
    assert (got["addr"] % 4096 == 0).all() and not (f["addr"] % 4096 == 0).all()


def test_iommufd_round_trip(tmp_path):
    f = rich_faults()
    p = tmp_path / "t.bin"
    trace.save(p, f)
    assert p.stat().st_size == 40 * len(f)
    got = trace.load(p)
    np.testing.assert_array_equal(got, iommufd_representable(f))


def test_iommufd_record_layout(tmp_path):
    f = np.array([(9, 7, 5, 0x1FF, PV_NP | LAST | Flag.PRIV_DATA, Perm.READ | Perm.WRITE,
                   0xDEAD000, (1, 2))], dtype=FAULT_DTYPE)
    p = tmp_path / "t.iommufd"
    trace.save(p, f)
    # flags keeps bit 2 (NEEDS_PASID, the kernel's leak); reserved, length, cookie 0
    assert p.read_bytes() == pack_iommufd(0b111, 7, 5, 0x1FF, 3, 0xDEAD000)


def test_iommufd_load_ignores_reserved_length_cookie(tmp_path):
    raw = (pack_iommufd(1, 3, 4, 5, 1, 0x1000, reserved=0xFFFF, length=4096, cookie=17)
           + pack_iommufd(6, 3, 4, 5, 2, 0x2000, cookie=17))
    got = trace.load(write(tmp_path / "fault.bin", raw))
    expected = np.array([(0, 3, 4, 5, 1, 1, 0x1000, (0, 0)), (1, 3, 4, 5, 6, 2, 0x2000, (0, 0))],
                        dtype=FAULT_DTYPE)
    np.testing.assert_array_equal(got, expected)


def test_save_accepts_fault_records(tmp_path):
    faults = [Fault(1, 2, 3, 0x1000, time=5), Fault(1, 2, 3, 0x2000, last=True, time=6)]
    trace.save(tmp_path / "f.csv", faults)
    got = trace.load(tmp_path / "f.csv")
    assert [Fault.from_record(r) for r in got] == faults


fault_arrays = arrays(FAULT_DTYPE, st.integers(0, 40))


@settings(max_examples=40, deadline=None)
@given(fault_arrays)
def test_csv_round_trip_property(f):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "t.csv")
        trace.save(p, f)
        np.testing.assert_array_equal(trace.load(p), f)


@settings(max_examples=40, deadline=None)
@given(arrays(FAULT_DTYPE, st.integers(1, 40)))
def test_iommufd_round_trip_property(f):
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "t.bin")
        trace.save(p, f)
        np.testing.assert_array_equal(trace.load(p), iommufd_representable(f))


# ---------------------------------------------------------------- format detection

@pytest.mark.parametrize("fmt", trace.FORMATS)
def test_sniffing(tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    f = trace.synthetic(200, seed=5)
    p = tmp_path / "noext"
    trace.save(p, f, format=fmt)
    assert trace.detect_format(p) == fmt
    got = trace.load(p)
    if fmt == "iommufd":
        f = iommufd_representable(f)
    elif fmt == "prq_report":
        f = prq_representable(f)
    np.testing.assert_array_equal(got, f)


def test_extension_beats_content(tmp_path):
    p = tmp_path / "t.csv"
    trace.save(p, trace.synthetic(10), format="npy")
    assert trace.detect_format(p) == "csv"
    with pytest.raises(TraceError, match=r"t\.csv:\d+: expected a CSV header"):
        trace.load(p)


def test_txt_is_sniffed_on_load_and_means_prq_report_on_save(tmp_path):
    f = trace.synthetic(20)
    trace.save(tmp_path / "a.txt", f)
    assert trace.detect_format(tmp_path / "a.txt") == "prq_report"
    trace.save(tmp_path / "b.txt", f, format="csv")
    assert trace.detect_format(tmp_path / "b.txt") == "csv"
    np.testing.assert_array_equal(trace.load(tmp_path / "b.txt"), f)


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"  \n\n", "empty file"),
    ("\ufeff\n".encode(), "empty file"),
    (b"hello, world\nno trace here\n", "cannot determine the format of this text file"),
    (b"\x00\x01" * 7, "14 bytes is not a multiple of the 40-byte"),
    (b"\x17\x08\x44tracing6\x00", "trace-cmd report"),
])
def test_sniffing_failures(tmp_path, content, message):
    p = write(tmp_path / "mystery", content)
    with pytest.raises(TraceError, match=message) as info:
        trace.load(p)
    assert str(info.value).startswith(str(p))


def test_unknown_format_and_extension(tmp_path):
    p = write(tmp_path / "t.csv", trace._CSV_HEADER + "\n")
    with pytest.raises(TraceError, match="unknown format 'xml'"):
        trace.load(p, format="xml")
    with pytest.raises(TraceError, match="pass format="):
        trace.save(tmp_path / "t.xyz", trace.synthetic(3))
    assert not (tmp_path / "t.xyz").exists()


def test_empty_file_with_explicit_format(tmp_path):
    """Zero bytes is an error in every format, sniffed or not."""
    p = write(tmp_path / "t.data", b"")
    for fmt in trace.FORMATS:
        with pytest.raises(TraceError, match="empty file"):
            trace.load(p, format=fmt)
    with pytest.raises(TraceError, match="empty file"):
        trace.load(p)


@pytest.mark.parametrize("fmt", trace.FORMATS)
def test_empty_array_round_trip(tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    p = tmp_path / "empty"
    trace.save(p, np.empty(0, FAULT_DTYPE), format=fmt)
    if fmt in ("prq_report", "iommufd"):
        # No header says "no records": an empty capture is an error.
        with pytest.raises(TraceError, match="empty file|no prq_report line"):
            trace.load(p, format=fmt)
        return
    got = trace.load(p, format=fmt)
    assert got.dtype == FAULT_DTYPE and len(got) == 0


# ---------------------------------------------------------------- csv details

def test_csv_header_only_is_empty(tmp_path):
    p = write(tmp_path / "t.csv", trace._CSV_HEADER + "\n")
    got = trace.load(p)
    assert got.dtype == FAULT_DTYPE and len(got) == 0


def test_csv_hex_reordered_and_optional_columns(tmp_path):
    p = write(tmp_path / "t.csv", "\ufeff# hand written, with a byte-order mark\n"
              "addr,dev,pasid,grpid,flags,perm\n"
              "0x7f000,0x10,1,0x1ff,3,1\n"
              "\n"
              " 4096 , 2 , 0 , 0 , 0 , 2 \n")
    got = trace.load(p)
    expected = np.array([(0, 16, 1, 511, 3, 1, 0x7F000, (0, 0)), (0, 2, 0, 0, 0, 2, 4096, (0, 0))],
                        dtype=FAULT_DTYPE)
    np.testing.assert_array_equal(got, expected)
    shutil.copy(p, tmp_path / "noext")
    assert trace.detect_format(tmp_path / "noext") == "csv"


@pytest.mark.parametrize("row, reason", [
    ("0,4294967296,0,0,0,0,0,0,0", "dev out of range for u4"),
    ("0,-1,0,0,0,0,0,0,0", "bad CSV record"),
    ("0,1,0,0,0,0,18446744073709551616,0,0", "out of range for u8"),
    ("0,1,0,0,0,0,0,0", "8 fields, expected 9"),
    ("0,1,0,0,zero,0,0,0,0", "not an unsigned integer"),
])
def test_csv_bad_rows_name_the_line(tmp_path, row, reason):
    good = "1,2,3,4,5,6,7,8,9\n"
    p = write(tmp_path / "t.csv", trace._CSV_HEADER + "\n" + good + row + "\n" + good)
    with pytest.raises(TraceError, match=rf"t\.csv:3: .*{reason}"):
        trace.load(p)
    stats = LoadStats()
    got = trace.load(p, skip_bad=True, stats=stats)
    assert len(got) == 2 and stats.skipped == 1


# ---------------------------------------------------------------- binary errors

def test_iommufd_truncated_record(tmp_path):
    raw = pack_iommufd(3, 1, 2, 3, 1, 0x1000) * 3 + b"\x00" * 12
    p = write(tmp_path / "t.bin", raw)
    with pytest.raises(TraceError, match=r"t\.bin: record 3: truncated record \(12 of 40"):
        trace.load(p)
    stats = LoadStats()
    assert len(trace.load(p, skip_bad=True, stats=stats)) == 3
    assert stats.skipped == 1


def test_iommufd_unknown_flags(tmp_path):
    raw = pack_iommufd(3, 1, 2, 3, 1, 0x1000) + pack_iommufd(0x10, 1, 2, 3, 1, 0x1000)
    p = write(tmp_path / "t.bin", raw)
    with pytest.raises(TraceError, match=r"record 1: unknown flags 0x10"):
        trace.load(p)
    got = trace.load(p, skip_bad=True)
    assert got["time"].tolist() == [0]


def test_npy_wrong_dtype(tmp_path):
    p = tmp_path / "t.npy"
    np.save(p, np.zeros(4, dtype=[("time", "<u8"), ("dev", "<u4")]))
    with pytest.raises(TraceError, match=r"t\.npy: wrong dtype .*time.*dev"):
        trace.load(p)
    np.save(p, np.zeros((2, 3), dtype=FAULT_DTYPE))
    with pytest.raises(TraceError, match="1-D"):
        trace.load(p)
    np.save(p, np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(TraceError, match="wrong dtype object"):
        trace.load(p)


def test_npy_other_byte_order_is_accepted(tmp_path):
    f = trace.synthetic(50)
    np.save(tmp_path / "be.npy", f.astype(FAULT_DTYPE.newbyteorder(">")))
    np.testing.assert_array_equal(trace.load(tmp_path / "be.npy"), f)


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    with pytest.raises(ImportError, match=r'pip install "iopf\[parquet\]"') as info:
        trace.save(tmp_path / "t.parquet", trace.synthetic(5))
    assert isinstance(info.value, trace.OptionalDependencyError)
    write(tmp_path / "u.parquet", b"PAR1")
    with pytest.raises(trace.OptionalDependencyError):
        trace.load(tmp_path / "u.parquet")


def test_parquet_bad_values(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    cols = {n: [1, 2, 3] for n in ("dev", "pasid", "grpid", "flags", "perm", "addr")}
    # int64 columns (what pandas writes), optional columns left out
    pq.write_table(pa.table(cols), tmp_path / "ok.parquet")
    got = trace.load(tmp_path / "ok.parquet")
    assert got["addr"].tolist() == [1, 2, 3] and got["time"].tolist() == [0, 0, 0]
    pq.write_table(pa.table({**cols, "dev": [1, -1, 2**32]}), tmp_path / "neg.parquet")
    with pytest.raises(TraceError, match=r"neg\.parquet: record 1: null or out-of-range"):
        trace.load(tmp_path / "neg.parquet")
    stats = LoadStats()
    assert len(trace.load(tmp_path / "neg.parquet", skip_bad=True, stats=stats)) == 1
    assert stats.skipped == 2
    pq.write_table(pa.table({**cols, "pasid": [1, None, 3]}), tmp_path / "null.parquet")
    with pytest.raises(TraceError, match="record 1"):
        trace.load(tmp_path / "null.parquet")
    del cols["addr"]
    pq.write_table(pa.table(cols), tmp_path / "noaddr.parquet")
    with pytest.raises(TraceError, match="missing columns addr"):
        trace.load(tmp_path / "noaddr.parquet")


# ---------------------------------------------------------------- streaming

@pytest.mark.parametrize("fmt", trace.FORMATS)
def test_iter_chunks_bounded(tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    f = trace.synthetic(1000, seed=2)
    p = tmp_path / "t"
    trace.save(p, f, format=fmt)
    stats = LoadStats()
    chunks = list(trace.iter_chunks(p, format=fmt, chunk_size=64, stats=stats))
    assert [len(c) for c in chunks] == [64] * 15 + [40]
    assert all(c.dtype == FAULT_DTYPE for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), trace.load(p, format=fmt))
    assert stats.records == 1000


def test_iter_chunks_checks_the_file_at_the_call(tmp_path):
    p = write(tmp_path / "t.bin", b"\x00" * 41)
    with pytest.raises(TraceError, match="record 1"):
        trace.iter_chunks(p)  # no next() needed
    with pytest.raises(ValueError, match="chunk_size"):
        trace.iter_chunks(p, chunk_size=0)


# ---------------------------------------------------------------- synthetic

def simulate(f: np.ndarray, limit: int | None = None) -> dict:
    """Replay a synthetic trace from the devices' side: open groups keyed by
    (dev, grpid); checks credit, distinct indices and LPIG order.

    ``busy`` is the most requests a device sent between two moments when it
    had no open group: a bound stricter than the open-group count, since it
    also counts requests of groups already completed (awaiting responses).
    """
    open_groups: dict[tuple[int, int], list[int]] = {}  # -> [pasid, requests]
    outstanding: dict[int, int] = defaultdict(int)
    busy: dict[int, int] = defaultdict(int)
    peak_busy = 0
    lpigs = stops = 0
    for dev, pasid, grpid, flags, perm in zip(*(f[n].tolist() for n in
                                               ("dev", "pasid", "grpid", "flags", "perm"))):
        last = bool(flags & Flag.LAST_PAGE)
        if last and not perm & (Perm.READ | Perm.WRITE):
            stops += 1
            assert (dev, grpid) not in open_groups  # after its group's LPIG
            continue
        g = open_groups.setdefault((dev, grpid), [pasid, 0])
        assert g[0] == pasid, "two open groups of one device share an index"
        g[1] += 1
        outstanding[dev] += 1
        busy[dev] += 1
        peak_busy = max(peak_busy, busy[dev])
        if limit is not None:
            assert busy[dev] <= limit
        if last:
            lpigs += 1
            outstanding[dev] -= open_groups.pop((dev, grpid))[1]
            if not outstanding[dev]:
                busy[dev] = 0
    return {"open": open_groups, "busy": peak_busy, "lpigs": lpigs, "stops": stops}


def test_synthetic_deterministic_and_exact():
    a = trace.synthetic(5000, seed=11)
    assert a.dtype == FAULT_DTYPE and len(a) == 5000
    np.testing.assert_array_equal(a, trace.synthetic(5000, seed=11))
    assert not np.array_equal(a, trace.synthetic(5000, seed=12))
    for n in (0, 1, 2, 7, 513):
        assert len(trace.synthetic(n, seed=n, stop_markers=0.5, group_size=(3, 9))) == n


def test_synthetic_fields():
    f = trace.synthetic(20_000, seed=4, devices=3, pasids_per_device=5, start_time=10**9,
                        mean_gap_ns=50)
    t = f["time"]
    assert t[0] == 10**9 and (np.diff(t.astype(np.int64)) >= 0).all()
    assert 30 < np.diff(t.astype(np.int64)).mean() < 70
    assert (f["grpid"] < 512).all() and len(np.unique(f["grpid"])) == 512  # wrapped
    assert (f["addr"] % 4096 == 0).all()
    assert set(f["dev"].tolist()) == {0, 1, 2}
    assert set(f["pasid"].tolist()) == {1, 2, 3, 4, 5}
    assert (f["flags"] & ~np.uint32(IOMMUFD_KEPT) == 0).all()
    assert ((f["flags"] & PV_NP) == PV_NP).all()
    assert (f["perm"] & (Perm.READ | Perm.WRITE) != 0).all()
    assert (f["private"] == 0).all()
    sim = simulate(f)
    assert not sim["open"]  # every group completes
    assert sim["stops"] == 0


@pytest.mark.parametrize("kw", [
    {},
    {"outstanding": 20, "interleave": 8, "group_size": (1, 8)},
    {"outstanding": 5, "interleave": 16, "group_size": (2, 4), "stop_markers": 0.3},
    {"outstanding": 64, "interleave": 512, "group_size": (1, 1)},
])
def test_synthetic_credit(kw):
    limit = kw.get("outstanding", 512)
    f = trace.synthetic(20_000, seed=8, **kw)
    sim = simulate(f, limit=limit)
    assert not sim["open"]
    # the cap is reached, not just respected, when the credit is tight
    if limit < 512 and kw["group_size"] != (1, 1):
        assert sim["busy"] == limit


def test_synthetic_interleaves_groups():
    f = trace.synthetic(5000, seed=1, devices=1, interleave=16, group_size=(4, 4))
    # a device with 16 open groups: consecutive requests often belong to different groups
    switches = (np.diff(f["grpid"].astype(np.int64)) != 0).mean()
    assert switches > 0.5
    assert len(trace.synthetic(500, seed=1, interleave=1, devices=1)) == 500
    g = trace.synthetic(2000, seed=1, interleave=1, devices=1)
    assert simulate(g)["busy"] <= 8  # one group at a time


def test_synthetic_lost_lpig():
    # few enough groups that no device wraps its index: a key is one group
    base = trace.synthetic(2000, seed=6)
    lost = trace.synthetic(2000, seed=6, lost_lpig=0.3)
    sim = simulate(lost)
    n_groups = simulate(base)["lpigs"]
    assert 0.2 < len(sim["open"]) / n_groups < 0.4
    assert len(sim["open"]) + sim["lpigs"] == n_groups
    none = trace.synthetic(2000, seed=6, lost_lpig=1.0)
    assert not (none["flags"] & Flag.LAST_PAGE).any()


def test_synthetic_stop_markers():
    f = trace.synthetic(3000, seed=9, stop_markers=0.5)
    is_stop = ((f["flags"] & Flag.LAST_PAGE) != 0) & ((f["perm"] & (Perm.READ | Perm.WRITE)) == 0)
    sim = simulate(f)  # checks each stop marker comes after its group's LPIG
    assert sim["stops"] == is_stop.sum()
    assert 0.35 < sim["stops"] / sim["lpigs"] < 0.65
    assert (f["addr"][is_stop] == 0).all()
    assert simulate(trace.synthetic(3000, seed=9))["stops"] == 0


def test_synthetic_pasid_options():
    f = trace.synthetic(4000, seed=3, no_pasid=0.25, needs_pasid=False)
    no = (f["flags"] & Flag.PASID_VALID) == 0
    assert 0.15 < no.mean() < 0.35
    assert (f["pasid"][no] == 0).all() and (f["pasid"][~no] > 0).all()
    assert not (f["flags"] & Flag.NEEDS_PASID).any()


def test_synthetic_rejects_bad_arguments():
    for kw in ({"group_size": (0, 3)}, {"group_size": (4, 3)}, {"interleave": 513},
               {"outstanding": 0}, {"lost_lpig": 1.5}, {"devices": 0}):
        with pytest.raises(ValueError):
            trace.synthetic(10, **kw)
    with pytest.raises(ValueError):
        trace.synthetic(-1)


def test_synthetic_stop_markers_need_a_pasid():
    f = trace.synthetic(3000, seed=2, stop_markers=1.0, no_pasid=0.5)
    is_stop = ((f["flags"] & Flag.LAST_PAGE) != 0) & ((f["perm"] & (Perm.READ | Perm.WRITE)) == 0)
    assert is_stop.any()
    assert (f["flags"][is_stop] & Flag.PASID_VALID).all() and (f["pasid"][is_stop] > 0).all()


def test_the_public_names_are_the_documented_ones() -> None:
    """The I/O helpers behind load and save are not part of iopf.trace."""
    for name in ("same_file", "open_input", "write_atomically", "Input",
                 "COMPRESSED_EXTENSIONS"):
        assert not hasattr(trace, name), name
    assert [n for n in trace.__all__ if not hasattr(trace, n)] == []
    for name in ("load", "save", "iter_chunks", "synthetic", "detect_format", "partition",
                 "LoadStats", "TraceError", "FORMATS", "META_DTYPE"):
        assert name in trace.__all__
