"""Real traces in: every prq_report layout, IOMMU units, responses from
qi_submit, inputs from anywhere (stdin, FIFOs, compression), safe output,
and the command line's handling of bad inputs."""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator

from hypothesis import example, given, settings
from hypothesis import strategies as st
from pathlib import Path

import numpy as np
import pytest

from conftest import write
import iopf
from iopf import trace
from iopf.trace import META_DTYPE, LoadStats, TraceError
from iopf.trace._io import same_file
from iopf.types import FAULT_DTYPE, RESPONSE_DTYPE, Flag, Perm

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "prq_report_sample.txt"
PV_NP = int(Flag.PASID_VALID | Flag.NEEDS_PASID)
LAST = int(Flag.LAST_PAGE)
R, RW = int(Perm.READ), int(Perm.READ | Perm.WRITE)

#: The eight lines of the sample in the commit that added the tracepoint
#: ("iommu/vt-d: Add prq_report trace event", Lu Baolu, 2021): bare bodies,
#: so time is the seq# number.
SAMPLE_RECORDS = np.array([
    (seq, 0x50, 2, 1, PV_NP | (LAST if last else 0), RW if last else R, page << 12, (0, 0))
    for seq, page, last in [(1, 0x559EF6F97, False), (2, 0x559EF6F9C, True),
                            (3, 0x559EF6F98, False), (4, 0x559EF6F9D, True),
                            (5, 0x559EF6F99, False), (6, 0x559EF6F9E, True),
                            (7, 0x559EF6F9A, False), (8, 0x559EF6F9F, True)]
], dtype=FAULT_DTYPE)

BODY = "dmar1/0000:6a:01.0 seq# 17: rid=0x6a08 addr=0x7f3c1a2b3 rw--l pasid=0x2 index=0x3"
BODY_RECORD = np.array([(1234_567890000, 0x6A08, 2, 3, PV_NP | LAST, RW, 0x7F3C1A2B3 << 12,
                         (0, 0))], dtype=FAULT_DTYPE)

#: One line of each real layout, all carrying BODY at 1234.567890.
LAYOUTS = {
    "ftrace": f" irq/45-dmar1-pr-812     [003] d..1.  1234.567890: prq_report: {BODY}",
    "ftrace-no-irq-info": f" irq/45-dmar1-pr-812     [003]  1234.567890: prq_report: {BODY}",
    "ftrace-tgid": f" irq/45-dmar1-pr-812     (  812) [003] d..1.  1234.567890: prq_report: "
                   f"{BODY}",
    "ftrace-tgid-unknown": f"           <...>-812     (-------) [003] d..1.  1234.567890: "
                           f"prq_report: {BODY}",
    "ftrace-old-flags": f"  kworker/u16:2-mm-812  [003] d..1  1234.567890: prq_report: {BODY}",
    "trace-cmd": f"irq/45-dmar1-pr-812   [003]  1234.567890: prq_report:           {BODY}",
    "trace-cmd-ns": f"irq/45-dmar1-pr-812   [003]  1234.567890000: prq_report: {BODY}",
    "perf-script": f"  irq/45-dmar1-pr   812 [003]  1234.567890: intel_iommu:prq_report: {BODY}",
    "perf-script-pid-tid": f" irq/45-dmar1-pr 812/812 [003] 1234.567890: intel_iommu:prq_report: "
                           f"{BODY}",
}


# ---------------------------------------------------------------- layouts

def test_public_sample_bare_bodies() -> None:
    stats = LoadStats()
    faults, meta = trace.load(SAMPLE, stats=stats, meta=True)
    np.testing.assert_array_equal(faults, SAMPLE_RECORDS)
    assert stats.format == "prq_report" and stats.time_source == "seq"
    assert stats.units == ["dmar0"]
    assert meta["seq"].tolist() == list(range(1, 9)) and set(meta["unit"].tolist()) == {0}
    # Four complete groups of two requests each.
    report = iopf.replay(faults)
    assert report.stats["groups"] == 4


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout(tmp_path: Path, layout: str) -> None:
    header = "# tracer: nop\n#\n" if layout.startswith("ftrace") else ""
    other = (" irq/45-dmar1-pr-812     [003] d..1.  1234.567950: qi_submit: page_grp_resp "
             "dmar1: 0x26a080019 0x1c 0x0 0x0\n")
    p = write(tmp_path / "capture", header + LAYOUTS[layout] + "\n" + other)
    assert trace.detect_format(p) == "prq_report"
    stats = LoadStats()
    faults, meta = trace.load(p, stats=stats, meta=True)
    np.testing.assert_array_equal(faults, BODY_RECORD)
    assert stats.time_source == "timestamp" and stats.units == ["dmar1"]
    assert meta["seq"].tolist() == [17]


def test_units_and_segments_are_kept(tmp_path: Path) -> None:
    """Same rid under two units and two PCI segments: two devices, two units."""
    text = ("prq_report: dmar1/0000:6a:01.0 seq# 5: rid=0x6a08 addr=0x10 r---- pasid=0x1 "
            "index=0x2\n"
            "prq_report: dmar9/0001:6a:01.0 seq# 40: rid=0x6a08 addr=0x20 r---- pasid=0x1 "
            "index=0x2\n"
            "prq_report: dmar1/0000:6a:01.0 seq# 6: rid=0x6a08 addr=0x11 r---l pasid=0x1 "
            "index=0x2\n")
    p = write(tmp_path / "two.trace", text)
    stats = LoadStats()
    faults, meta = trace.load(p, stats=stats, meta=True)
    assert faults["dev"].tolist() == [0x6A08, 0x1_6A08, 0x6A08]
    assert stats.units == ["dmar1", "dmar9"]
    assert meta["unit"].tolist() == [0, 1, 0] and meta["seq"].tolist() == [5, 40, 6]
    # Round trip: unit names, seq# and devices survive.
    out = tmp_path / "back.trace"
    trace.save(out, faults, meta=meta, units=stats.units)
    again = LoadStats()
    f2, m2 = trace.load(out, stats=again, meta=True)
    np.testing.assert_array_equal(f2["dev"], faults["dev"])
    assert again.units == ["dmar1", "dmar9"]
    np.testing.assert_array_equal(m2, meta)
    assert "dmar9/0001:6a:01.0 seq# 40: rid=0x6a08" in out.read_text()
    # The two devices do not share a group.
    assert iopf.replay(faults).stats["partial_now"] == 1


@pytest.mark.parametrize("old, new, reason", [
    ("pasid=0x2", "pasid=0x100000", "pasid=0x100000 out of range (20 bits)"),
    ("index=0x1", "index=0x200", "index=0x200 out of range (9 bits)"),
    ("rid=0x50", "rid=0x16a08", "rid=0x16a08 out of range (16 bits)"),
    ("dmar0/0000:", "dmar0/10000:", "segment=0x10000 out of range (16 bits)"),
])
def test_fields_are_range_checked_at_parse_time(tmp_path: Path, old: str, new: str,
                                                reason: str) -> None:
    lines = SAMPLE.read_text().splitlines(keepends=True)
    lines[4] = lines[4].replace(old, new)
    p = write(tmp_path / "bad.trace", "".join(lines))
    with pytest.raises(TraceError, match=rf"bad\.trace:5: {re.escape(reason)}"):
        trace.load(p)
    stats = LoadStats()
    assert len(trace.load(p, skip_bad=True, stats=stats)) == 7 and stats.skipped == 1


def test_mixed_bare_and_stamped_lines_are_refused(tmp_path: Path) -> None:
    p = write(tmp_path / "mixed.trace", LAYOUTS["ftrace"] + "\nprq_report: " + BODY + "\n")
    with pytest.raises(TraceError, match=r"mixed\.trace:2: no timestamp"):
        trace.load(p)


# ---------------------------------------------------------------- responses

CAPTURE = """\
# tracer: nop
 irq/45-dmar1-pr-812 [003] d..1.  100.000010: prq_report: dmar1/0001:6a:01.0 seq# 1: rid=0x6a08 addr=0x1000 r---- pasid=0x2 index=0x3
 irq/45-dmar1-pr-812 [003] d..1.  100.000020: prq_report: dmar1/0001:6a:01.0 seq# 2: rid=0x6a08 addr=0x1001 rw--l pasid=0x2 index=0x3
 irq/45-dmar1-pr-812 [003] d..1.  100.000030: prq_report: dmar1/0001:6a:01.0 seq# 3: rid=0x6a08 addr=0x2000 r---l pasid=0x0 index=0x4
 kworker/3:1-77      [003] d..1.  100.000045: qi_submit: iotlb_inv dmar1: 0x12 0x0 0x0 0x0
 kworker/3:1-77      [003] d..1.  100.000050: qi_submit: page_grp_resp dmar1: 0x26a080019 0x1c 0x0 0x0
 kworker/3:1-77      [003] d..1.  100.000090: qi_submit: page_grp_resp dmar1: 0x6a081009 0x24 0x0 0x0
"""


def test_responses_are_decoded_and_paired(tmp_path: Path) -> None:
    p = write(tmp_path / "capture.txt", CAPTURE)
    stats = LoadStats()
    resp, rmeta = trace.load_responses(p, stats=stats, meta=True)
    assert resp.dtype == RESPONSE_DTYPE and len(resp) == 2   # the iotlb_inv is not one
    assert resp["time"].tolist() == [100_000_050_000, 100_000_090_000]
    assert resp["dev"].tolist() == [0x1_6A08, 0x1_6A08]   # segment from the prq_report lines
    assert resp["pasid"].tolist() == [2, 0] and resp["grpid"].tolist() == [3, 4]
    assert resp["code"].tolist() == [0, 1]               # success, invalid request
    assert resp["flags"].tolist() == [int(Flag.PASID_VALID), 0]
    assert stats.units == ["dmar1"]
    req, qmeta = trace.load(p, meta=True)
    pairs = trace.pair(req, resp, request_meta=qmeta, response_meta=rmeta)
    assert pairs.dtype == trace.PAIR_DTYPE and pairs["answered"].all()
    assert pairs["latency"].tolist() == [30_000, 60_000]
    assert pairs["nfaults"].tolist() == [2, 1]
    assert pairs["first_time"].tolist() == [100_000_010_000, 100_000_030_000]


def test_decode_page_group_response() -> None:
    d = trace.responses.decode_page_group_response(0x26A08F019, 0x1C)
    assert d == {"pasid_present": 1, "code": 0xF, "rid": 0x6A08, "pasid": 2, "lpig": 1,
                 "grpid": 3}
    with pytest.raises(ValueError, match="not a page group response"):
        trace.responses.decode_page_group_response(0x12, 0)


def test_unanswered_group_and_stray_response() -> None:
    req = np.array([(10, 5, 1, 3, 3, 1, 0, (0, 0)), (20, 5, 1, 4, 3, 1, 0, (0, 0))],
                   dtype=FAULT_DTYPE)
    resp = np.zeros(2, RESPONSE_DTYPE)
    resp["time"], resp["dev"], resp["pasid"], resp["flags"] = [5, 30], 5, 1, 1
    resp["grpid"] = [3, 3]       # the first comes before the LPIG: not an answer
    pairs = trace.pair(req, resp)
    assert pairs["answered"].tolist() == [True, False]
    assert pairs["latency"].tolist() == [20, 0]


# ---------------------------------------------------------------- inputs

@pytest.mark.parametrize("kind, opener", [("gz", gzip.open), ("bz2", bz2.open),
                                          ("xz", lzma.open)])
def test_compressed_inputs(tmp_path: Path, kind: str, opener) -> None:
    f = trace.synthetic(500, seed=4)
    plain = tmp_path / "t.csv"
    trace.save(plain, f)
    packed = tmp_path / f"t.csv.{kind}"
    with opener(packed, "wb") as out:
        out.write(plain.read_bytes())
    stats = LoadStats()
    np.testing.assert_array_equal(trace.load(packed, stats=stats), f)
    assert stats.compression == {"gz": "gzip"}.get(kind, kind) and stats.format == "csv"
    # Told by the content, also without the extensions.
    shutil.copy(packed, tmp_path / "noext")
    np.testing.assert_array_equal(trace.load(tmp_path / "noext"), f)


def test_corrupt_compressed_input(tmp_path: Path) -> None:
    data = gzip.compress(SAMPLE.read_bytes() * 100)
    p = write(tmp_path / "t.trace.gz", data[:len(data) // 2])
    with pytest.raises(TraceError, match=r"t\.trace\.gz: corrupt gzip data"):
        trace.load(p)


def run_cli(*args: object, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    env.pop("IOPF_PURE_PYTHON", None)
    return subprocess.run([sys.executable, "-m", "iopf", *map(str, args)], input=stdin
                          and stdin.decode("latin1"), capture_output=True, text=True,
                          timeout=120, env=env, encoding="latin1")


def test_stdin(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    p = run_cli("convert", "-", out, stdin=gzip.compress(SAMPLE.read_bytes()))
    assert p.returncode == 0, p.stderr
    np.testing.assert_array_equal(trace.load(out), SAMPLE_RECORDS)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    path = tmp_path / "fifo"
    os.mkfifo(path)
    yield path


def feed(path: Path, data: bytes) -> threading.Thread:
    def run() -> None:
        with open(path, "wb") as f:
            f.write(data)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_fifo_without_extension_is_sniffed_and_read_once(fifo: Path) -> None:
    """The sniffer's block is served again to the reader: no reopen, no hang."""
    f = trace.synthetic(3000, seed=2)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "t.csv"
        trace.save(src, f)
        writer = feed(fifo, src.read_bytes())
        np.testing.assert_array_equal(trace.load(fifo), f)
        writer.join(10)


def test_fifo_of_iommufd_records(fifo: Path) -> None:
    f = trace.synthetic(1000, seed=3)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "t.bin"
        trace.save(src, f)
        writer = feed(fifo, src.read_bytes())
        got = trace.load(fifo, format="iommufd")
        writer.join(10)
    assert len(got) == 1000 and (got["addr"] == f["addr"]).all()


def test_character_device_binary_needs_a_format() -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with pytest.raises(TraceError, match="/dev/zero: cannot determine the format of binary"):
        trace.load("/dev/zero")


def test_trace_dat_without_trace_cmd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    p = write(tmp_path / "trace.dat", b"\x17\x08\x44tracing6\x00" + bytes(100))
    with pytest.raises(TraceError, match=r"trace\.dat: this is trace-cmd's binary trace\.dat"
                                         r".*trace-cmd report"):
        trace.load(p)


def test_trace_dat_through_trace_cmd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in trace-cmd on the PATH: its report is what gets parsed."""
    tool = tmp_path / "bin" / "trace-cmd"
    tool.parent.mkdir()
    tool.write_text(f"#!/bin/sh\n{shutil.which('cat')} {SAMPLE}\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tool.parent))
    p = write(tmp_path / "trace.dat", b"\x17\x08\x44tracing6\x00" + bytes(100))
    np.testing.assert_array_equal(trace.load(p), SAMPLE_RECORDS)


# ---------------------------------------------------------------- output

def test_save_keeps_the_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    trace.save(p, trace.synthetic(10))
    p.chmod(0o600)
    trace.save(p, trace.synthetic(20))
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert len(trace.load(p)) == 20
    assert sorted(x.name for x in tmp_path.iterdir()) == ["t.csv"]


def test_planted_symlink_is_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A symlink at the old fixed temporary name, and at the first name the
    random generator would give, leave their targets untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "t.csv"
    os.symlink(victim, f"{target}.{os.getpid()}.tmp")
    names = iter(["planted", "fresh1", "fresh2"])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    os.symlink(victim, tmp_path / ".t.csv.planted.tmp")
    trace.save(target, trace.synthetic(10))
    assert victim.read_text() == "precious"
    assert len(trace.load(target)) == 10
    assert not target.is_symlink()


def test_save_errors_name_the_target(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "t.csv"
    with pytest.raises(OSError) as info:
        trace.save(missing, trace.synthetic(3))
    assert info.value.filename == str(missing)


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    p = tmp_path / "t.npy"
    trace.save(p, trace.synthetic(5))
    before = p.read_bytes()
    with pytest.raises(TypeError):
        trace.save(p, ["not", "faults"])
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["t.npy"]


# ---------------------------------------------------------------- arrow / pandas

def test_to_arrow() -> None:
    pa = pytest.importorskip("pyarrow")
    f = trace.synthetic(50, seed=1)
    f["flags"][0] |= int(Flag.PRIV_DATA)
    f["private"][0] = (7, 9)
    meta = np.zeros(50, META_DTYPE)
    meta["unit"][25:] = 1
    t = trace.to_arrow(f, meta, ["dmar0", "dmar3"])
    assert t.num_rows == 50
    assert t.column("private0")[0].as_py() == 7 and t.column("private1")[0].as_py() == 9
    assert t.column("dev").type == pa.uint32() and t.column("addr").type == pa.uint64()
    assert t.column("iommu").to_pylist()[24:26] == ["dmar0", "dmar3"]
    names = t.column("flag_names").to_pylist()
    assert "PRIV_DATA" in names[0] and all("PASID_VALID" in n for n in names)


def test_to_pandas() -> None:
    pd = pytest.importorskip("pandas")
    f = trace.synthetic(30, seed=2)
    df = trace.to_pandas(f)
    assert list(df.columns[:9]) == ["time", "dev", "pasid", "grpid", "flags", "perm", "addr",
                                    "private0", "private1"]
    assert (df["addr"].to_numpy() == f["addr"]).all()
    assert isinstance(df["perm_names"].dtype, pd.CategoricalDtype)
    r = iopf.replay(f)
    del r
    q = iopf.Queue()
    q.report_batch(f)
    resp = q.take_responses()
    rdf = trace.to_pandas(resp)
    assert set(rdf["code_name"].astype(str)) <= {"SUCCESS", "INVALID", "FAILURE"}
    assert set(rdf["reason_name"].astype(str)) <= {r.name for r in iopf.Reason}


# ---------------------------------------------------------------- the command line

def assert_one_line_error(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("iopf: error: "), p.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _junk(d: Path) -> tuple[Path, str]:
    rng = np.random.default_rng(1)
    data = bytearray(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    data[100] = 0    # random bytes: a NUL early on (line numbers depend on the newlines)
    path = write(d / "junk.trace", bytes(data))
    line = bytes(data[:data.index(0)]).count(b"\n") + 1
    return path, f"{path}:{line}: binary data"


def _npy_as_trace(d: Path) -> tuple[Path, str]:
    src = d / "t.npy"
    trace.save(src, trace.synthetic(10))
    path = d / "t.trace"
    os.rename(src, path)
    return path, f"{path}:1: binary data"


def _no_prq_lines(d: Path) -> tuple[Path, str]:
    path = write(d / "other.trace", "# tracer: nop\n  <idle>-0  [001] d..2.  1.000000: "
                 "sched_switch: prev_comm=swapper/1\n")
    return path, f"{path}: no prq_report line"


def _empty_bin(d: Path) -> tuple[Path, str]:
    path = write(d / "empty.bin", b"")
    return path, f"{path}: empty file"


def _empty_trace(d: Path) -> tuple[Path, str]:
    path = write(d / "empty.trace", b"")
    return path, f"{path}: empty file"


def _wide_pasid(d: Path) -> tuple[Path, str]:
    path = write(d / "wide.trace", SAMPLE.read_text().replace("pasid=0x2 index=0x1\n",
                                                              "pasid=0x100000 index=0x1\n", 3))
    return path, f"{path}:1: pasid=0x100000 out of range"


def _wide_index(d: Path) -> tuple[Path, str]:
    lines = SAMPLE.read_text().splitlines(keepends=True)
    lines[6] = lines[6].replace("index=0x1", "index=0x200")
    path = write(d / "index.trace", "".join(lines))
    return path, f"{path}:7: index=0x200 out of range"


def _wide_rid(d: Path) -> tuple[Path, str]:
    lines = SAMPLE.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("rid=0x50", "rid=0x16a08")
    path = write(d / "rid.trace", "".join(lines))
    return path, f"{path}:2: rid=0x16a08 out of range"


def _truncated_gz(d: Path) -> tuple[Path, str]:
    data = gzip.compress(SAMPLE.read_bytes() * 50)
    path = write(d / "cut.trace.gz", data[:len(data) // 2])
    return path, f"{path}: corrupt gzip data"


BAD_INPUTS = [_junk, _npy_as_trace, _no_prq_lines, _empty_bin, _empty_trace, _wide_pasid,
              _wide_index, _wide_rid, _truncated_gz]


@pytest.mark.parametrize("make", BAD_INPUTS, ids=[f.__name__[1:] for f in BAD_INPUTS])
def test_bad_inputs_on_the_command_line(tmp_path: Path, make) -> None:
    path, needle = make(tmp_path)
    out = tmp_path / "out.csv"
    assert_one_line_error(run_cli("convert", path, out), needle)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries
    if make in (_junk, _no_prq_lines, _empty_bin, _wide_pasid):   # replay reads alike
        assert_one_line_error(run_cli("replay", path, "--no-progress"), needle)


def test_replay_of_dev_zero_is_refused() -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    # The command line names its own option, not the API's format=.
    assert_one_line_error(run_cli("replay", "/dev/zero", "--no-progress"), "/dev/zero",
                          "give --format")


def test_convert_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    src = tmp_path / "x.trace"
    shutil.copy(SAMPLE, src)
    before = src.read_bytes()
    os.symlink(src, tmp_path / "link.trace")
    assert_one_line_error(run_cli("convert", src, tmp_path / "link.trace"), "is the input")
    os.link(src, tmp_path / "hard.trace")
    assert same_file(src, tmp_path / "hard.trace")
    assert same_file(src, tmp_path / "sub" / ".." / "x.trace")
    assert not same_file(src, tmp_path / "other.trace")
    assert src.read_bytes() == before


def test_convert_from_a_pipe_with_a_format(tmp_path: Path) -> None:
    """`iopf convert <(cat t.bin) out.csv --from iommufd`: every record."""
    f = trace.synthetic(1000, seed=9)
    src, out = tmp_path / "t.bin", tmp_path / "out.csv"
    trace.save(src, f)
    p = run_cli("convert", "-", out, "--from", "iommufd", stdin=src.read_bytes())
    assert p.returncode == 0, p.stderr
    assert "converted 1,000 faults" in p.stdout
    assert (trace.load(out)["addr"] == f["addr"]).all()


def test_convert_keeps_unit_names_and_seq(tmp_path: Path) -> None:
    src = write(tmp_path / "in.trace", SAMPLE.read_text().replace("dmar0", "dmar7")
                .replace("seq# ", "seq# 10"))
    out = tmp_path / "out.trace"
    assert run_cli("convert", src, out).returncode == 0
    text = out.read_text()
    assert "prq_report: dmar7/0000:00:0a.0 seq# 101: rid=0x50" in text
    assert "seq# 108:" in text and "dmar0" not in text


def test_replay_the_public_sample() -> None:
    p = run_cli("replay", SAMPLE, "--json", "-")
    assert p.returncode == 0, p.stderr
    import json
    d = json.loads(p.stdout)
    assert d["faults"] == 8 and d["groups"] == 4


# ---------------------------------------------------------------- one acceptance rule

_GOOD_LINES = [LAYOUTS[k] for k in sorted(LAYOUTS)] + SAMPLE.read_text().splitlines()


@st.composite
def prq_blocks(draw: st.DrawFn) -> bytes:
    """Lines of every layout, mutated: a byte changed, inserted or deleted."""
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        line = draw(st.sampled_from(_GOOD_LINES))
        if draw(st.booleans()):
            at = draw(st.integers(0, len(line)))
            what = draw(st.sampled_from([" ", "  ", "\t", "0", "f", "x", "#", ":", ".", "/",
                                         "\r", "-", "l", "9" * 12, "\u00a0", "\u0663", "g"]))
            cut = draw(st.integers(0, 2))
            line = line[:at] + what + line[at + cut:]
        lines.append(line)
    same_kind = draw(st.booleans())
    if same_kind:   # mostly one layout a block, as in real captures
        lines = [ln for ln in lines if ln.lstrip().startswith("prq_report")] or lines
    return ("\n".join(lines) + draw(st.sampled_from(["", "\n"]))).encode("utf-8")


def _outcome(parse: object, block: bytes, skip_bad: bool) -> tuple[object, ...]:
    stats = LoadStats()
    try:
        f, m = parse(block, stats, skip_bad)  # type: ignore[operator]
    except TraceError as e:
        return ("error", str(e))
    return (f.tobytes(), m["seq"].tobytes(), [stats.units[u] for u in m["unit"].tolist()],
            stats.skipped, stats.errors, stats.time_source if len(f) else None)


def _by_fast(block: bytes, stats: LoadStats, skip_bad: bool) -> tuple[np.ndarray, np.ndarray]:
    return trace.prq_report.parse_block("t", block, 1, skip_bad, stats)


def _by_rule(block: bytes, stats: LoadStats, skip_bad: bool) -> tuple[np.ndarray, np.ndarray]:
    if not block.endswith(b"\n"):
        block += b"\n"
    f, m, _ = trace.prq_report._by_rule("t", block.split(b"\n"), None, 1, skip_bad, stats)
    return f, m


@settings(max_examples=200, deadline=None)
@given(prq_blocks(), st.booleans())
def test_fast_parsers_accept_exactly_what_the_rule_accepts(block: bytes, skip_bad: bool) -> None:
    from iopf.trace import _prq_fast
    rule = _outcome(_by_rule, block, skip_bad)
    assert _outcome(_by_fast, block, skip_bad) == rule
    scan = _prq_fast._scan
    try:
        _prq_fast._scan = None            # the numpy scanner
        assert _outcome(_by_fast, block, skip_bad) == rule
    finally:
        _prq_fast._scan = scan


def test_csv_acceptance_does_not_depend_on_neighbours(tmp_path: Path) -> None:
    """The issue's case: `+1` is refused whether or not another line is hex,
    and every fast reader reads what the rule reads."""
    header = "time,dev,pasid,grpid,flags,perm,addr\n"
    odd = ["+1", "-1", " 7 ", "\t7", "0x1F", "0X1f", "007", "1_0", "\u0663", "1e3", "", "0x",
           "18446744073709551615", "18446744073709551616"]
    for field in odd:
        results: list[tuple[object, object]] = []
        for neighbour in ("1,1,1,1,1,1,4096", "0x1,1,1,1,1,1,0x1000"):
            p = write(tmp_path / "t.csv", header + neighbour + "\n" + f"{field},1,1,1,1,1,1\n")
            stats = LoadStats()
            try:
                got = trace.load(p, skip_bad=True, stats=stats)
                results.append((got["time"][-1:].tolist() if len(got) == 2 else None,
                                stats.skipped))
            except TraceError as e:
                results.append(("error", str(e)))
        assert results[0] == results[1], (field, results)
        expect_ok = field in (" 7 ", "\t7", "0x1F", "0X1f", "007", "18446744073709551615")
        assert (results[0][1] == 0) == expect_ok, (field, results)


_CSV_FIELDS = st.one_of(
    st.integers(0, 2**32 - 1).map(str), st.integers(0, 2**64 + 1).map(str),
    st.integers(0, 2**64 + 1).map(hex), st.integers(0, 2**32).map(lambda v: f"0X{v:X}"),
    st.sampled_from(["", " 7 ", "\t7", "7\t", "+1", "-1", "007", "0x", "0x" + "0" * 17 + "1",
                     "1e3", "1_0", "\u0663", "\u00a07", "\"7\"", "7#", "4294967296"]))


@st.composite
def csv_blocks(draw: st.DrawFn) -> bytes:
    """A CSV input: a header, then records, mostly good, with odd fields,
    blank, spaces-only and comment lines, CRLF and lone CR line ends."""
    names = draw(st.sampled_from([list(trace._CSV_HEADER.split(",")),
                                  ["addr", "dev", "pasid", "grpid", "flags", "perm"]]))
    good = st.one_of(st.integers(0, 2**32 - 1).map(str), st.integers(0, 2**32 - 1).map(hex))
    lines = [",".join(names)]
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["good", "good", "good", "odd", "short", "blank", "spaces",
                                     "comment"]))
        if kind in ("good", "odd", "short"):
            fields = draw(st.lists(good, min_size=len(names), max_size=len(names)))
            if kind == "odd":
                fields[draw(st.integers(0, len(names) - 1))] = draw(_CSV_FIELDS)
            if kind == "short":
                fields.pop()
            lines.append(",".join(fields))
        else:
            lines.append({"blank": "", "spaces": "  ", "comment": "# note"}[kind])
    ends = [draw(st.sampled_from(["\n", "\n", "\r\n", "\r", "\r\r\n"])) for _ in lines]
    text = "".join(line + end for line, end in zip(lines, ends))
    if draw(st.booleans()):
        text = text.rstrip("\r\n")        # no line end at the end of the input
    return text.encode("utf-8")


def _csv_outcome(data: bytes, skip_bad: bool, gz: bool = False,
                 **patches: object) -> tuple[object, ...]:
    """What loading ``data`` gives (a plain file or a gzip stream), the
    file's path left out."""
    from iopf.trace import csv as trace_csv
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        for name, value in patches.items():
            mp.setattr(trace_csv, name, value)
        p = write(Path(d) / ("t.csv.gz" if gz else "t.csv"), gzip.compress(data) if gz else data)
        stats = LoadStats()
        try:
            # chunk_size=1: blocks as small as the patched BLOCK_BYTES allows.
            f = trace.load(p, skip_bad=skip_bad, stats=stats, chunk_size=1)
        except TraceError as e:
            return ("error", str(e).replace(str(p), ""))
        return (f.tobytes(), stats.skipped, [e.replace(str(p), "") for e in stats.errors])


_SIX = b"dev,pasid,grpid,flags,perm,addr\n"


@settings(max_examples=150, deadline=None)
@given(csv_blocks(), st.booleans(), st.sampled_from([1 << 20, 64]))
# A lone CR between two records (pyarrow would end a line there), with and
# without a blank line in the block.
@example(_SIX + b"1,1,1,1,1,1\r2,2,2,2,2,2\n3,3,3,3,3,3\n", True, 1 << 20)
@example(_SIX + b"1,1,1,1,1,1\r2,2,2,2,2,2\n\n3,3,3,3,3,3\n", True, 1 << 20)
def test_csv_fast_readers_accept_exactly_what_the_rule_accepts(data: bytes, skip_bad: bool,
                                                               block: int) -> None:
    """Whichever reader parses a block (pyarrow or numpy over a file's or a
    stream's buffer, or the rule alone) and however the input is cut
    into blocks (lines longer than a block included), the records, the lines
    refused and their numbers are the same."""
    from iopf.trace import csv as trace_csv
    rule = _csv_outcome(data, skip_bad, _fast=lambda *args: None)
    assert _csv_outcome(data, skip_bad, BLOCK_BYTES=block) == rule
    assert _csv_outcome(data, skip_bad, gz=True, BLOCK_BYTES=block) == rule
    if trace_csv._pyarrow() is not None:
        assert _csv_outcome(data, skip_bad, BLOCK_BYTES=block, _pa=False) == rule
        assert _csv_outcome(data, skip_bad, gz=True, BLOCK_BYTES=block, _pa=False) == rule


def test_csv_in_small_blocks_of_a_file(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A file read in many blocks: the chunks hold every record
    once, in order, and a bad line's number is counted across blocks."""
    from iopf.trace import csv as trace_csv
    monkeypatch.setattr(trace_csv, "BLOCK_BYTES", 1000)
    faults = trace.synthetic(5000, seed=3)
    p = tmp_path / "t.csv"
    trace.save(p, faults)
    chunks = list(trace.iter_chunks(p, chunk_size=7))
    assert [len(c) for c in chunks[:-1]] == [7] * (len(chunks) - 1)
    np.testing.assert_array_equal(np.concatenate(chunks), faults)
    with open(p, "a") as f:
        f.write("0x1,2,3\n")
    with pytest.raises(TraceError, match=r"t\.csv:5002: bad CSV record \(3 fields"):
        trace.load(p, chunk_size=7)


def test_csv_truncated_while_read_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """A CSV that another process truncates while it is read (a shell's
    ``>``, logrotate's copytruncate) ends the load with the records read so
    far or an error naming the file, never a crash of the reader (a mapped
    file would die of SIGBUS). Run in a subprocess so a crash fails here."""
    p = tmp_path / "t.csv"
    trace.save(p, trace.synthetic(200_000, seed=4))
    code = f"""
import os, iopf.trace as trace
from iopf.trace import csv
csv.BLOCK_BYTES = 1 << 16
chunks = trace.iter_chunks({str(p)!r}, chunk_size=1024)
n = len(next(chunks))
os.truncate({str(p)!r}, 1 << 17)
try:
    for c in chunks:
        n += len(c)
except trace.TraceError as e:
    print("error", e)
print("read", n)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "read " in run.stdout
    assert int(run.stdout.split("read ")[1]) < 200_000
