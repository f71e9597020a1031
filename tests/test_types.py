"""The data model (flags, permissions, codes, dtypes) and the values the core shares with it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import iopf
from iopf import FAULT_DTYPE, RESPONSE_DTYPE, Fault, Flag, PageResponse, Perm, Reason, Response
from iopf_core import twin


def test_enum_values_match_the_spec_and_the_core():
    assert [(f.name, f.value) for f in Flag] == [
        ("PASID_VALID", 1), ("LAST_PAGE", 2), ("NEEDS_PASID", 4), ("PRIV_DATA", 8)]
    assert [(p.name, p.value) for p in Perm] == [("READ", 1), ("WRITE", 2), ("EXEC", 4), ("PRIV", 8)]
    assert [(r.name, r.value) for r in Response] == [("SUCCESS", 0), ("INVALID", 1), ("FAILURE", 2)]
    assert (twin.PASID_VALID, twin.LAST_PAGE, twin.NEEDS_PASID, twin.PRIV_DATA) == tuple(Flag)
    assert (twin.READ, twin.WRITE) == (Perm.READ, Perm.WRITE)
    for r in Reason:
        assert getattr(twin, r.name) == r.value
    assert (twin.SUCCESS, twin.INVALID, twin.FAILURE) == tuple(Response)


def test_dtypes_field_order_and_sizes():
    assert FAULT_DTYPE.names == ("time", "dev", "pasid", "grpid", "flags", "perm", "addr", "private")
    assert FAULT_DTYPE["private"].shape == (2,) and FAULT_DTYPE.itemsize == 52
    assert RESPONSE_DTYPE.names == ("time", "dev", "pasid", "grpid", "code", "flags", "cookie",
                                    "nfaults", "reason")


def test_fault_constructor_and_properties():
    f = Fault(3, 7, 5, 0x1000, perm=Perm.WRITE, last=True, needs_pasid=True, time=9, private=(1, 2))
    assert tuple(f) == (9, 3, 7, 5, Flag.PASID_VALID | Flag.LAST_PAGE | Flag.NEEDS_PASID,
                        Perm.WRITE, 0x1000, (1, 2))
    assert f.last and f.pasid_valid
    assert Fault(1, 0, 0, 0, pasid_valid=False).flags == 0
    assert Fault(1, 0, 0, 0, last=True, flags=Flag.PRIV_DATA).flags == Flag.PRIV_DATA  # flags win
    with pytest.raises(AttributeError):
        f.dev = 4  # type: ignore[misc]
    rec = np.array([tuple(f)], dtype=FAULT_DTYPE)[0]
    assert Fault.from_record(rec) == f


def test_group_and_page_response():
    q = iopf.Queue()
    q.report(Fault(1, 2, 3, 0x1000, time=5))
    g = q.report(Fault(1, 2, 3, 0x2000, last=True, needs_pasid=True, time=6))
    assert (g.dev, g.pasid, g.grpid, g.time, len(g)) == (1, 2, 3, 6, 2)
    assert g.last == Fault(1, 2, 3, 0x2000, last=True, needs_pasid=True, time=6)
    assert [f.addr for f in g] == [0x1000, 0x2000] and g.cookie > 0
    assert g.respond(Response.SUCCESS)
    (r,) = q.take_responses()
    pr = PageResponse.from_record(r)
    assert pr == (6, 1, 2, 3, Response.SUCCESS, Flag.PASID_VALID, g.cookie, 2, Reason.CALLER)


def test_policy_is_frozen_and_checked():
    p = iopf.Policy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.stall = True  # type: ignore[misc]
    with pytest.raises(ValueError):
        iopf.Policy(pasid_bits=32)
    assert p.replace(queue_depth=5).queue_depth == 5


def test_pure_python_switch(monkeypatch):
    """IOPF_PURE_PYTHON=1 selects the twin whatever strategy is asked for."""
    monkeypatch.setenv("IOPF_PURE_PYTHON", "1")
    q = iopf.Queue(strategy="hash")
    assert q.strategy == "python" and q.sizeof() == 0
    monkeypatch.delenv("IOPF_PURE_PYTHON")
    assert iopf.Queue().strategy == "hash"
