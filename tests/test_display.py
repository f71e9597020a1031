"""What people look at: response arrays by name, notebook displays."""
from __future__ import annotations

import html.parser

import numpy as np
import pytest

import iopf
from iopf import Fault, Response


class _Parser(html.parser.HTMLParser):
    """Collects the text and checks that every tag opened is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack.pop() == tag

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(markup: str) -> str:
    p = _Parser()
    p.feed(markup)
    p.close()
    assert p.stack == []
    return " ".join(p.text)


def test_describe_responses_names_codes_and_reasons(make_queue) -> None:
    q = make_queue()
    g = q.report(Fault(dev=3, pasid=1, grpid=7, addr=0x1000, last=True, needs_pasid=True))
    q.report(Fault(dev=3, pasid=2, grpid=8, addr=0x2000, last=True))
    g.respond(Response.INVALID)
    q.flush_pasid(3, 2)
    arr = q.take_responses()
    assert isinstance(arr, np.ndarray) and arr.dtype == iopf.RESPONSE_DTYPE  # the contract
    lines = iopf.describe_responses(arr).splitlines()
    assert lines[0].split() == ["time", "dev", "pasid", "grpid", "code", "reason", "nfaults",
                                "cookie", "flags"]
    assert lines[1].split() == ["0", "3", "1", "7", "INVALID", "CALLER", "1", "1", "PASID_VALID"]
    assert lines[2].split() == ["0", "3", "2", "8", "INVALID", "FLUSHED", "1", "2", "-"]


def test_describe_responses_limits_and_edge_cases() -> None:
    q = iopf.Queue(default_handler=Response.SUCCESS)
    for grpid in range(30):
        q.report(Fault(dev=1, pasid=1, grpid=grpid, addr=0, last=True))
    arr = q.take_responses()
    text = iopf.describe_responses(arr, limit=5)
    assert len(text.splitlines()) == 1 + 5 + 2 and "(30 responses, 5 shown)" in text
    assert len(iopf.describe_responses(arr, limit=None).splitlines()) == 31
    assert iopf.describe_responses(q.take_responses()) == "(no responses)"
    odd = arr[:1].copy()
    odd["code"], odd["reason"] = 7, 99       # not ours: shown as numbers
    assert iopf.describe_responses(odd).splitlines()[1].split()[4:6] == ["7", "99"]
    with pytest.raises(TypeError, match="RESPONSE_DTYPE"):
        iopf.describe_responses(np.zeros(3))


def test_on_response_bypasses_the_outbox() -> None:
    sent: list[iopf.PageResponse] = []
    q = iopf.Queue(default_handler=Response.SUCCESS, on_response=sent.append)
    q.report(Fault(dev=1, pasid=1, grpid=1, addr=0, last=True))
    assert [r.grpid for r in sent] == [1]
    out = q.take_responses()
    assert out.dtype == iopf.RESPONSE_DTYPE and len(out) == 0


def test_replay_report_html() -> None:
    report = iopf.replay(iopf.trace.synthetic(5000, seed=2), policy="vtd", service_time=1000)
    report.extra["trace"] = "<script>alert(1)</script>"     # escaped, never markup
    markup = report._repr_html_()
    text = _parse(markup)
    assert "<script>" not in markup and "alert(1)" in text
    assert "5,000 faults" in text and "policy vtd" in text
    assert "conserved True" in " ".join(text.split())
    assert f"{report.groups:,}" in text
    assert "p99" in text          # latency modelled with a service time
    flat = " ".join(text.split())
    assert "by device" in flat and "by PASID" in flat
    busiest = max(report.devices.values(), key=lambda v: v["faults"])
    assert f"{busiest['faults']:,}" in flat


def test_group_batch_html() -> None:
    q = iopf.Queue(default_handler=Response.SUCCESS)
    batch = q.report_batch(iopf.trace.synthetic(2000, seed=5))
    text = " ".join(_parse(batch._repr_html_()).split())
    assert f"GroupBatch: {len(batch):,} groups, {len(batch.faults):,} faults (10 shown)" in text
    first = batch[0]
    assert f"{first.cookie} {first.dev} {first.pasid} {first.grpid} {len(first)}" in text
