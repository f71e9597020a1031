"""Fuzzing: bad input is refused cleanly, never crashes, never corrupts.

Trace parsers (``iopf.trace.load`` with each format, and sniffed) get
arbitrary bytes, arbitrary text, text built from the tokens of the format
and mutated valid files: the result is a ``FAULT_DTYPE`` array or a
``TraceError`` (a ``ValueError``), with and without ``skip_bad``, and the
same whatever the chunk size.

``Queue.report_batch`` gets random bytes viewed as ``FAULT_DTYPE`` (raw, or
with the fields brought into range so that batches get through), and
``Queue.respond_batch`` arbitrary cookies and codes, on four queues in
lockstep (one per strategy): a refused call (``ValueError``/``TypeError``)
leaves the queue exactly as it was and sends nothing; an accepted one keeps
the conservation law of F6, answers each group at most once, and every
strategy gives the same result.

Example counts follow the Hypothesis profile (``HYPOTHESIS_PROFILE``): the
default profile runs this file in about 12 s.
"""
from __future__ import annotations

import importlib.util
import io
import itertools
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import iopf
from iopf import FAULT_DTYPE, Flag, Response
from iopf.trace import LoadStats, TraceError

STRATEGIES = ("hash", "tree", "list", "python")


def fuzz_settings(examples: int) -> settings:
    """``examples`` under the default profile (100), scaled for the others
    (the sanitizer profile draws 25, so a quarter)."""
    profile = settings.default
    assert profile is not None
    scaled = max(5, examples * profile.max_examples // 100)
    return settings(max_examples=scaled, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------
# trace parsers

_counter = itertools.count()
_TMP = tempfile.mkdtemp(prefix="iopf-fuzz-")


@pytest.fixture(scope="module", autouse=True)
def _remove_tmp() -> Iterator[None]:
    yield
    shutil.rmtree(_TMP, ignore_errors=True)


def write(data: bytes, suffix: str) -> str:
    """A fresh file holding data (Hypothesis does not mix with tmp_path)."""
    path = os.path.join(_TMP, f"f{next(_counter)}{suffix}")
    with open(path, "wb") as f:
        f.write(data)
    return path


HAVE_PYARROW = importlib.util.find_spec("pyarrow") is not None


def data_is_parquet(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def check_load(path: str, fmt: str | None) -> np.ndarray | None:
    """The fuzz oracle: a FAULT_DTYPE array or a TraceError, consistently."""
    outcomes: list[tuple[bool, bytes | None]] = []   # None: a TraceError
    for skip_bad, chunk_size in ((False, 1 << 20), (False, 3), (True, 1 << 20), (True, 2)):
        stats = LoadStats()
        try:
            out = iopf.trace.load(path, format=fmt, skip_bad=skip_bad, chunk_size=chunk_size,
                                  stats=stats)
        except iopf.trace.OptionalDependencyError:
            # A sniffed "PAR1" file is Parquet, which needs pyarrow; with
            # pyarrow a bad one is a TraceError like any other.
            assert fmt is None and data_is_parquet(path) and not HAVE_PYARROW
            return None
        except TraceError as e:
            assert isinstance(e, ValueError)
            assert "\n" not in str(e), "a TraceError is one line"
            outcomes.append((skip_bad, None))
            continue
        assert isinstance(out, np.ndarray)
        assert out.dtype == FAULT_DTYPE and out.ndim == 1
        assert stats.records == len(out)
        outcomes.append((skip_bad, out.tobytes()))
    # The chunk size never changes the outcome, only how it is cut.
    assert outcomes[0] == outcomes[1] and outcomes[2] == outcomes[3], path
    strict, lenient = outcomes[0][1], outcomes[2][1]
    if strict is None:
        return None
    # Nothing bad to skip: skip_bad must give the same records.
    assert lenient == strict
    return np.frombuffer(strict, FAULT_DTYPE)


# The format under test, and the suffix its file gets. A suffix that names no
# format, so that format= decides; None sniffs (.txt is sniffed too: it may
# hold CSV or ftrace text).
LOADERS = [("csv", ".dat"), ("prq_report", ".dat"), ("iommufd", ".dat"), ("npy", ".dat"),
           (None, ".dat"), (None, ".txt")]
LOADER_IDS = ["csv", "prq_report", "iommufd", "npy", "sniffed", "sniffed-txt"]


def valid_faults() -> np.ndarray:
    f = iopf.trace.synthetic(12, seed=3, devices=2, lost_lpig=0.2, stop_markers=0.2,
                             no_pasid=0.3)
    f["flags"][[1, 5]] |= np.uint32(Flag.PRIV_DATA)   # prq_report writes private= for these
    f["private"][1] = (0xDEADBEEF, 1)
    f["private"][5] = (2**64 - 1, 0)
    return f


def _valid_files() -> dict[str, bytes]:
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("csv", "prq_report", "iommufd", "npy"):
            path = os.path.join(d, "t.dat")
            iopf.trace.save(path, valid_faults(), format=fmt)
            with open(path, "rb") as f:
                out[fmt] = f.read()
    return out


VALID = _valid_files()


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """A valid file after a few random edits: flip, overwrite, insert, delete,
    duplicate a span, truncate."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "dup", "truncate"]))
        pos = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = draw(st.sampled_from(b"-0x9fF,.: \n\t\0\xff#l/=" + bytes([0x80, 0xc3])))
        elif op == "insert":
            buf[pos:pos] = draw(st.sampled_from(
                [b"-", b",", b"0x", b"\n", b"\r\n", b"\0", b"99999999999999999999999",
                 b"\xff\xfe", b"\xc3", b"#", b" ", b"l", b"private=0x1/0x2",
                 "\u0663".encode(), "\ufeff".encode(), b"prq_report: "]))
        elif op == "delete" and buf:
            del buf[pos:pos + draw(st.integers(1, 16))]
        elif op == "dup" and buf:
            n = draw(st.integers(1, 80))
            buf[pos:pos] = buf[pos:pos + n]
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf)


def _field() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(0, 2**64 + 5).map(str),
        st.integers(0, 2**64 + 5).map(hex),
        st.sampled_from(["", " ", "-1", "0x", "0X1F", "1e3", "1.5", "0x_1", "1_0", "+3",
                         "\u0663", "\u00b2", "nan", "inf", "0b1", "\t7 ", "4294967296",
                         "18446744073709551616"]),
    )


@st.composite
def csv_text(draw: st.DrawFn) -> bytes:
    """CSV-ish text: a header (valid, reordered, short, or junk) and rows of
    fields of every kind."""
    cols = ["time", "dev", "pasid", "grpid", "flags", "perm", "addr", "private0", "private1"]
    header = draw(st.one_of(
        st.permutations(cols),
        st.permutations(cols[1:7]),
        st.lists(st.sampled_from(cols + ["junk", ""]), max_size=10),
    ))
    ncol = len(header)
    if draw(st.booleans()):   # rows that should load, but for an odd field
        clean = st.one_of(st.integers(0, 2**32 - 1).map(str), st.integers(0, 2**32 - 1).map(hex))
        rows = draw(st.lists(st.lists(clean, min_size=ncol, max_size=ncol), max_size=6))
        if rows and ncol and draw(st.booleans()):
            rows[-1][draw(st.integers(0, ncol - 1))] = draw(_field())
    else:
        rows = draw(st.lists(st.lists(_field(), min_size=max(0, ncol - 1), max_size=ncol + 1),
                             max_size=6))
    lines = [",".join(header)] + [",".join(r) for r in rows]
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))),
                     draw(st.sampled_from(["", "# comment", "   ", "\ufeff"])))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines)
    return text.encode("utf-8")


_PRQ_GOOD = (" irq/45-dmar1-pr-812     [003] d..1.  1234.567890: prq_report: "
             "dmar1/0000:6a:01.0 seq# 17: rid=0x6a08 addr=0x7f3c1a2b3 rw--l "
             "pasid=0x2 index=0x3")


@st.composite
def prq_text(draw: st.DrawFn) -> bytes:
    """ftrace text: prq_report lines with fields of every size and shape,
    some other events, comments and blank lines."""
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["prq", "prq", "prq", "other", "comment", "blank", "raw"]))
        if kind == "other":
            lines.append("          <idle>-0       [003] d..2.  1.000001: sched_switch: x")
        elif kind == "comment":
            lines.append("# tracer: nop")
        elif kind == "blank":
            lines.append("")
        elif kind == "raw":
            lines.append(draw(st.text(max_size=60)) + "prq_report:" + draw(st.text(max_size=60)))
        else:
            hexnum = st.one_of(st.integers(0, 2**70).map(lambda v: f"{v:x}"),
                               st.sampled_from(["", "g", "-1", "FFFFFFFFFFFFFFFFFFFF"]))
            ts = draw(st.one_of(
                st.builds(lambda s, f: f"{s}.{f}", st.integers(0, 2**66),
                          st.text("0123456789", min_size=0, max_size=12)),
                st.integers(0, 2**66).map(str),
                st.sampled_from(["\u0661\u0662.\u0663", "1.", ".5"])))
            flags = draw(st.text("rwxpl-", min_size=4, max_size=6))
            line = (f" task-{draw(st.integers(0, 99))}  [000] .....  {ts}: prq_report: "
                    f"dmar0/0000:00:01.0 seq# 1: rid=0x{draw(hexnum)} addr=0x{draw(hexnum)} "
                    f"{flags} pasid=0x{draw(hexnum)} index=0x{draw(hexnum)}")
            if draw(st.booleans()):
                line += f" private=0x{draw(hexnum)}/0x{draw(hexnum)}"
            lines.append(line)
    if draw(st.booleans()):
        lines.append(_PRQ_GOOD)
    return ("\n".join(lines) + draw(st.sampled_from(["", "\n", "\n\n"]))).encode("utf-8")


@st.composite
def npy_bytes(draw: st.DrawFn) -> bytes:
    """A .npy header with a random dict (dtype, order, shape) and a body of
    random length."""
    descr = draw(st.sampled_from([
        repr(FAULT_DTYPE.descr), repr(FAULT_DTYPE.newbyteorder(">").descr), "'<u8'", "'|O'",
        "[('time', '<u8')]", "5", "'x'", "[('a', '<u8', (-1,))]"]))
    shape = draw(st.sampled_from(["(3,)", "()", "(2, 2)", "(-1,)", f"({10**30},)", f"({2**62},)",
                                  f"({2**63},)", f"({2**64 // 52},)", "(0,)", "(100,)", "'x'",
                                  "(3.0,)", "(3L,)"]))
    order = draw(st.sampled_from(["False", "True", "'x'"]))
    header = f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}, }}"
    major = draw(st.sampled_from([1, 2, 3, 9]))
    hbytes = header.encode("latin1")
    if major == 1:
        head = b"\x93NUMPY\x01\x00" + len(hbytes).to_bytes(2, "little")
    else:
        head = b"\x93NUMPY" + bytes([major, 0]) + len(hbytes).to_bytes(4, "little")
    if draw(st.booleans()):   # a wrong length field
        head = head[:8] + draw(st.binary(min_size=len(head) - 8, max_size=len(head) - 8))
    body = bytes(draw(st.integers(0, 400)))
    return head + hbytes + b"\n" + body


@st.composite
def record_files(draw: st.DrawFn, fmt: str) -> bytes:
    """Random records in a well-formed binary file: iommufd records (flags
    mostly within the three defined bits) or an .npy of FAULT_DTYPE (maybe
    cut short)."""
    dtype = iopf.trace.IOMMUFD_DTYPE if fmt == "iommufd" else FAULT_DTYPE
    n = draw(st.integers(0, 8))
    arr = np.frombuffer(draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize)),
                        dtype).copy()
    if fmt == "iommufd":
        if draw(st.integers(0, 3)):
            arr["flags"] &= np.uint32(7)
        return arr.tobytes()
    buf = io.BytesIO()
    np.save(buf, arr)
    data = buf.getvalue()
    return data[:draw(st.integers(0, len(data)))] if draw(st.integers(0, 3)) == 0 else data


def _trace_inputs(fmt: str | None) -> st.SearchStrategy[bytes]:
    valid = [VALID[fmt]] if fmt else list(VALID.values())
    return st.one_of(
        st.binary(max_size=600),
        st.text(max_size=300).map(lambda t: t.encode("utf-8")),
        st.sampled_from(valid).flatmap(mutated),
        csv_text(), prq_text(), npy_bytes(), record_files("iommufd"), record_files("npy"),
    )


def fuzz_load(data: bytes, fmt: str | None, suffix: str) -> str:
    path = write(data, suffix)
    try:
        out = check_load(path, fmt)
    finally:
        os.unlink(path)
    return "loaded" if out is not None else "TraceError"


@pytest.mark.parametrize("fmt, suffix", LOADERS, ids=LOADER_IDS)
@fuzz_settings(250)
@given(data=st.data())
def test_trace_load_fuzz(fmt: str | None, suffix: str, data: st.DataObject) -> None:
    """Any bytes: a FAULT_DTYPE array or a TraceError, nothing else."""
    raw = data.draw(_trace_inputs(fmt), label="file")
    note(repr(raw[:300]))
    event(fuzz_load(raw, fmt, suffix))


@pytest.mark.parametrize("fmt, suffix", LOADERS, ids=LOADER_IDS)
@pytest.mark.parametrize("raw", [b"", b"\n\n", b" ", b"\xef\xbb\xbf", b"\x93NUMPY", bytes(40),
                                 bytes(41), b"\0" * 52, b"#", b"prq_report:", b"PAR1",
                                 b"\x17\x08\x44tracing"])
def test_trace_load_edge_cases(fmt: str | None, suffix: str, raw: bytes) -> None:
    fuzz_load(raw, fmt, suffix)


@pytest.mark.parametrize("fmt", ["csv", "prq_report", "iommufd", "npy"])
def test_valid_files_still_load(fmt: str) -> None:
    """The seeds of the mutation fuzzer are valid: the oracle is not vacuous."""
    out = check_load(write(VALID[fmt], ".dat"), fmt)
    assert out is not None and len(out) == len(valid_faults())
    sniffed = check_load(write(VALID[fmt], ".dat"), None)
    assert sniffed is not None
    assert sniffed.tobytes() == out.tobytes()


@pytest.mark.parametrize("skip_bad", [False, True])
def test_csv_hex_minus_is_a_trace_error(skip_bad: bool) -> None:
    path = write(b"time,dev,pasid,grpid,flags,perm,addr,private0,private1\n"
                 b"1,1,1,1,1,1,1,0,0\n0x-1,1,1,1,1,1,1,0,0\n", ".csv")
    if skip_bad:
        stats = LoadStats()
        out = iopf.trace.load(path, skip_bad=True, stats=stats)
        assert len(out) == 1 and stats.skipped == 1
    else:
        with pytest.raises(TraceError, match=r":3: "):
            iopf.trace.load(path)


def _npy(header: str, body: bytes = bytes(104)) -> bytes:
    raw = header.encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw + b"\n" + body


_NPY_DESCR = repr(FAULT_DTYPE.descr)


def test_npy_corrupt_header_is_a_trace_error() -> None:
    path = write(VALID["npy"].replace(b"'addr'", b"'addr&"), ".npy")
    with pytest.raises(TraceError, match="npy"):
        iopf.trace.load(path)


def test_npy_huge_shape_is_a_trace_error() -> None:
    path = write(_npy(f"{{'descr': {_NPY_DESCR}, 'fortran_order': False, 'shape': ({2**63},), }}"),
                 ".npy")
    with pytest.raises(TraceError):
        iopf.trace.load(path)


def test_npy_overflowing_shape_does_not_warn() -> None:
    path = write(_npy(f"{{'descr': {_NPY_DESCR}, 'fortran_order': False, 'shape': ({2**62},), }}"),
                 ".npy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TraceError):
            iopf.trace.load(path)


def test_npy_python2_header_does_not_warn() -> None:
    path = write(_npy(f"{{'descr': {_NPY_DESCR}, 'fortran_order': False, 'shape': (3L,), }}",
                      bytes(3 * FAULT_DTYPE.itemsize)), ".npy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(iopf.trace.load(path)) == 3


def test_npy_error_is_one_line() -> None:
    path = write(_npy("{" + " " * 20000 + "}"), ".npy")
    with pytest.raises(TraceError) as err:
        iopf.trace.load(path)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------
# the queue's batch entry points

def _policies() -> dict[str, iopf.Policy]:
    P = iopf.policies
    return {
        "pcie": P.PCIE,
        "linux": P.LINUX,
        "vtd-small": P.VTD.replace(queue_depth=24),
        "amd-small": P.AMD.replace(queue_depth=16, response_timeout=40),
        "stall": P.SMMU_STALL,
        "quirks": P.PCIE.replace(priv_data_is_last=True, stop_markers=True, match_pasid=False,
                                 response_timeout=0),
    }


POLICIES = _policies()


def _handler(kind: str):
    if kind == "none":
        return None
    if kind == "const":
        return Response.SUCCESS

    def handler(group: iopf.Group) -> Response | None:
        # Deterministic on the cookie: defers some groups, answers others.
        return None if group.cookie % 3 == 0 else Response(group.cookie % 3)
    return handler


def make_queues(policy_name: str, handler: str, seed: int) -> list[iopf.Queue]:
    """One queue per strategy, in the same state: partials (some stale),
    pending groups, a device allocation, an attachment; outbox emptied."""
    policy = POLICIES[policy_name]
    prime = iopf.trace.synthetic(60, seed=seed, devices=3, pasids_per_device=2,
                                 lost_lpig=0.3, stop_markers=0.1, group_size=(1, 4))
    queues = []
    for s in STRATEGIES:
        q = iopf.Queue(policy, strategy=s, default_handler=_handler(handler))
        q.add_device(1, outstanding=30)
        q.attach(2, 1, Response.SUCCESS if handler == "none" else _handler("python"))
        q.report_batch(prime)
        q.take_responses()
        queues.append(q)
    return queues


def snapshot(q: iopf.Queue) -> tuple:
    """Everything a refused call must leave alone."""
    return (q.stats.as_dict(), q.core.pending_cookies().tolist(), q.partial_count, q.now,
            [(g.cookie, g.faults.tobytes()) for g in q.pending()])


LIMITS = {"pasid": 20, "grpid": 9, "flags": 4, "perm": 4}


@st.composite
def fault_batches(draw: st.DrawFn):
    """Random bytes viewed as FAULT_DTYPE records. "raw" keeps them as drawn
    (almost always refused by the field checks); "fields" masks each field
    into range; "small" also folds devices, PASIDs and group ids onto a few
    values so that groups form, collide with the primed state and overflow.
    Then maybe one bad field, a read-only or strided array, or a wrong type."""
    n = draw(st.integers(0, 24))
    raw = draw(st.binary(min_size=n * FAULT_DTYPE.itemsize, max_size=n * FAULT_DTYPE.itemsize))
    arr = np.frombuffer(raw, dtype=FAULT_DTYPE)
    mode = draw(st.sampled_from(["raw", "fields", "small", "small", "small"]))
    if mode != "raw":
        arr = arr.copy()
        for name, bits in LIMITS.items():
            arr[name] &= np.uint32((1 << bits) - 1)
        if mode == "small":
            arr["dev"] %= 4
            arr["pasid"] %= 3
            arr["grpid"] %= 6
            arr["time"] %= 200
        if n and draw(st.integers(0, 4)) == 0:   # one bad record somewhere
            i = draw(st.integers(0, n - 1))
            name = draw(st.sampled_from(sorted(LIMITS)))
            arr[name][i] = draw(st.integers(1 << LIMITS[name], 2**32 - 1))
        if draw(st.integers(0, 5)) == 0:
            arr.flags.writeable = False
    shape = draw(st.sampled_from(["1d"] * 8 + ["strided", "2d", "bigendian", "list", "bytes"]))
    if shape == "strided":
        return arr[::2]
    if shape == "2d" and n % 2 == 0:
        return arr.reshape(2, -1)
    if shape == "bigendian":
        return arr.astype(FAULT_DTYPE.newbyteorder(">"))
    if shape == "list":
        return arr.tolist()
    if shape == "bytes":
        return raw
    return arr


_weird = st.sampled_from([None, "1", 1.5, [[1, 2]], [None], [1.0, 2.0], True, [True], {}, [],
                          object()])


@st.composite
def cookie_args(draw: st.DrawFn, pending: list[int]):
    """Cookies: pending ones, repeated ones, 0, unknown, huge, negative, out of
    uint64, and things that are not integers; as lists or arrays of any dtype."""
    ints = st.one_of(st.sampled_from(pending) if pending else st.integers(1, 5),
                     st.integers(0, 200), st.integers(2**63, 2**64 - 1), st.integers(-3, -1),
                     st.just(2**64))
    kind = draw(st.sampled_from(["list", "u64", "i64", "u8", "weird"]))
    if kind == "weird":
        return draw(_weird)
    values = draw(st.lists(ints, max_size=8))
    if kind == "list":
        return values
    dtype = {"u64": np.uint64, "i64": np.int64, "u8": np.uint8}[kind]
    return np.array(values, dtype=object).astype(dtype) if _fits(values, dtype) else values


def _fits(values: list[int], dtype: type) -> bool:
    info = np.iinfo(dtype)
    return all(info.min <= v <= info.max for v in values)


@st.composite
def code_args(draw: st.DrawFn, n: int):
    kind = draw(st.sampled_from(["scalar", "scalar", "list", "array", "weird"]))
    code = st.one_of(st.sampled_from(list(Response)), st.integers(-2, 5),
                     st.sampled_from([2**32, 2**64 - 1, -(2**70)]))
    if kind == "scalar":
        return draw(code)
    if kind == "weird":
        return draw(_weird)
    length = draw(st.sampled_from([n, n, n, 1, n + 1]))
    values = draw(st.lists(st.sampled_from([0, 1, 2, 3, -1]), min_size=length, max_size=length))
    if kind == "list":
        return values
    # astype wraps -1 around in the unsigned dtype: a huge code, refused.
    return np.array(values, dtype=np.int64).astype(draw(st.sampled_from([np.int64, np.int8,
                                                                          np.uint32])))


def lockstep(queues: list[iopf.Queue], label: str, call, seen: set[int]) -> tuple:
    """Apply call to every queue. A refusal must change nothing and send
    nothing; an acceptance must conserve; all strategies must agree."""
    results: list[tuple] = []
    for q in queues:
        before = snapshot(q)
        try:
            value = call(q)
        except (ValueError, TypeError) as e:
            assert snapshot(q) == before, f"{q.strategy}: refused call changed the queue"
            assert len(q.take_responses()) == 0, f"{q.strategy}: refused call sent responses"
            results.append(("refused", type(e).__name__, str(e)))
            continue
        stats = q.stats
        assert stats.conserved(), (q.strategy, stats)
        assert stats.partial_now == q.partial_count
        results.append(("ok", value, snapshot(q), q.take_responses().tobytes()))
    for r in results[1:]:
        assert r == results[0], (results[0], r)
    event(f"{label}: {results[0][0]}")
    if results[0][0] == "ok":
        sent = np.frombuffer(results[0][-1], dtype=iopf.RESPONSE_DTYPE)
        cookies = [int(k) for k in sent["cookie"] if k]   # 0: a request answered on arrival
        assert len(cookies) == len(set(cookies)), "a group answered twice in one call"
        assert not seen & set(cookies), "a group answered twice"
        seen.update(cookies)
    return results[0]


def _batch_result(q: iopf.Queue, faults) -> tuple:
    b = q.report_batch(faults)
    return b.faults.tobytes(), b.offsets.tolist(), b.cookies.tolist()


def _respond_result(q: iopf.Queue, cookies, codes) -> list[bool]:
    sent = q.respond_batch(cookies, codes)
    assert isinstance(sent, np.ndarray) and sent.dtype == np.bool_
    return sent.tolist()


@fuzz_settings(400)
@given(policy=st.sampled_from(sorted(POLICIES)),
       handler=st.sampled_from(["none", "const", "python"]),
       seed=st.integers(0, 3),
       steps=st.lists(st.sampled_from(["batch", "respond", "expire", "respond_at", "advance"]),
                      min_size=1, max_size=5),
       data=st.data())
def test_queue_batch_fuzz(policy: str, handler: str, seed: int, steps: list[str],
                          data: st.DataObject) -> None:
    queues = make_queues(policy, handler, seed)
    seen: set[int] = set()
    for step in steps:
        if step == "batch":
            faults = data.draw(fault_batches(), label="faults")
            lockstep(queues, "report_batch", lambda q: _batch_result(q, faults), seen)
        elif step == "respond":
            pending = queues[0].core.pending_cookies().tolist()
            cookies = data.draw(cookie_args(pending), label="cookies")
            n = len(cookies) if isinstance(cookies, (list, np.ndarray)) else 1
            codes = data.draw(code_args(n), label="codes")
            lockstep(queues, "respond_batch", lambda q: _respond_result(q, cookies, codes), seen)
        elif step == "respond_at":
            pending = queues[0].core.pending_cookies().tolist()
            cookies = data.draw(cookie_args(pending), label="cookies")
            n = len(cookies) if isinstance(cookies, (list, np.ndarray)) else 1
            codes = data.draw(code_args(n), label="codes")
            at = data.draw(st.one_of(st.integers(-1, 2**64), st.lists(st.integers(-1, 500),
                                                                      max_size=6)), label="at")
            lockstep(queues, "respond_batch(at=)",
                     lambda q: q.respond_batch(cookies, codes, at=at).tolist(), seen)
        elif step == "advance":
            now = data.draw(st.integers(-1, 600), label="now")
            lockstep(queues, "advance", lambda q: q.advance(now), seen)
        else:
            now = data.draw(st.integers(-1, 400), label="now")
            lockstep(queues, "expire", lambda q: q.expire(now), seen)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_all_raw_random_batches_are_refused_whole(strategy: str) -> None:
    """Pure random records fail a field check almost surely; the batch is
    refused whole, naming the first bad record, and nothing of it is applied."""
    rng = np.random.default_rng(7)
    q = make_queues("pcie", "none", 0)[STRATEGIES.index(strategy)]
    for _ in range(50):
        arr = np.frombuffer(rng.bytes(52 * 30), FAULT_DTYPE)
        before = snapshot(q)
        with pytest.raises(ValueError, match=r"^record \d+: "):
            q.report_batch(arr)
        assert snapshot(q) == before

