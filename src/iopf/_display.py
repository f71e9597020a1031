"""How results look to a person: response arrays by name, and notebook HTML.

``take_responses()`` returns a plain ``RESPONSE_DTYPE`` array (the contract);
:func:`describe_responses` turns one into a table with the codes and reasons
by name:

>>> import iopf
>>> q = iopf.Queue(default_handler=iopf.Response.SUCCESS)
>>> for grpid in (1, 2, 3):
...     _ = q.report(iopf.Fault(dev=3, pasid=1, grpid=grpid, addr=0x1000, last=True))
>>> print(iopf.describe_responses(q.take_responses(), limit=2))
time  dev  pasid  grpid  code     reason   nfaults  cookie  flags
   0    3      1      1  SUCCESS  HANDLER        1       1  -
   0    3      1      2  SUCCESS  HANDLER        1       2  -
 ...
 (3 responses, 2 shown)
"""
from __future__ import annotations

import html
from typing import Any

import numpy as np

from .queue import Stats
from .types import RESPONSE_DTYPE, Flag, Reason, Response

__all__ = ["describe_responses"]

_COLUMNS = ("time", "dev", "pasid", "grpid", "code", "reason", "nfaults", "cookie", "flags")


def _name(enum: Any, value: int) -> str:
    try:
        return str(enum(int(value)).name)
    except ValueError:
        return str(int(value))   # not one of ours: show the number


def _response_rows(responses: np.ndarray, limit: int | None) -> tuple[list[list[str]], int]:
    arr = np.asarray(responses)
    if arr.dtype != RESPONSE_DTYPE:
        raise TypeError(f"expected an array of RESPONSE_DTYPE, not {arr.dtype}")
    shown = arr if limit is None else arr[:limit]
    rows = []
    for r in shown:
        row = [str(int(r[c])) for c in ("time", "dev", "pasid", "grpid")]
        row += [_name(Response, r["code"]), _name(Reason, r["reason"]),
                str(int(r["nfaults"])), str(int(r["cookie"])),
                "PASID_VALID" if int(r["flags"]) & Flag.PASID_VALID else "-"]
        rows.append(row)
    return rows, len(arr)


def describe_responses(responses: np.ndarray, *, limit: int | None = 20) -> str:
    """A ``RESPONSE_DTYPE`` array as a text table, codes and reasons by name.

    ``flags`` is PASID_VALID when the response carries the PASID (the
    request had PASID_VALID and NEEDS_PASID), else ``-``. At most ``limit`` rows are shown (None: all);
    a last line says how many there were.
    """
    rows, n = _response_rows(responses, limit)
    if not n:
        return "(no responses)"
    cells = [list(_COLUMNS), *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(_COLUMNS))]
    left = {"code", "reason", "flags"}
    lines = ["  ".join(c.ljust(w) if name in left else c.rjust(w)
                       for c, w, name in zip(row, widths, _COLUMNS)).rstrip()
             for row in cells]
    if len(rows) < n:
        lines += [" ...", f" ({n:,} responses, {len(rows):,} shown)"]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[Any]], caption: str = "") -> str:
    """A small HTML table, every cell escaped."""
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return (f'<table style="display:inline-table;vertical-align:top;margin-right:1em">{cap}'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _number(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):,.1f}"
    return str(v)


def report_html(report: Any) -> str:
    """A ReplayReport for a notebook: the summary line, then one table per section."""
    d = report.to_dict()
    head = (f"<p><b>iopf replay</b>: {d['faults']:,} faults, {d['groups']:,} groups, "
            f"policy {html.escape(str(d['policy']))}, strategy "
            f"{html.escape(str(d['strategy']))}, {html.escape(str(d['model']))}; "
            f"{d['wall_seconds']:.3f} s wall, {d['faults_per_second']:,.0f} faults/s</p>")
    parts = [head]
    stats = dict(d["stats"])
    rows = [[k, _number(v)] for k, v in stats.items()]
    try:
        rows.append(["conserved", str(Stats(stats).conserved())])
    except KeyError:
        pass   # a report without every counter: nothing to check
    parts.append(html_table(["counter", "value"], rows, "counters"))
    parts.append(html_table(["size", "groups"],
                            [[k, _number(v)] for k, v in d["group_sizes"].items()],
                            "group sizes"))
    parts.append(html_table(["code", "responses"],
                            [[k, _number(v)] for k, v in d["response_codes"].items() if v]
                            + [[f"reason {k}", _number(v)]
                               for k, v in d["response_reasons"].items() if v],
                            "responses"))
    if d["latency_ns"]:
        parts.append(html_table(["latency", "ns"],
                                [[k, _number(v)] for k, v in d["latency_ns"].items()],
                                "latency, LPIG to response"))
    for key, label in (("devices", "device"), ("pasids", "PASID")):
        table = d.get(key)
        if isinstance(table, dict) and table:
            parts.append(_breakdown_html(table, label))
    if isinstance(d.get("service"), dict):
        parts.append(html_table(["service", ""], [[k, _number(v)]
                                                  for k, v in d["service"].items()],
                                "service model"))
    known = {"policy", "strategy", "model", "faults", "groups", "stats", "group_sizes",
             "response_codes", "response_reasons", "latency_ns", "batches", "wall_seconds",
             "engine_seconds", "faults_per_second", "devices", "pasids", "service"}
    other = [[k, v if not isinstance(v, (dict, list)) else _short(v)]
             for k, v in d.items() if k not in known]
    if other:
        parts.append(html_table(["", ""], other, "more"))
    return "<div>" + "".join(parts) + "</div>"


def _breakdown_html(table: dict[str, Any], label: str, top: int = 10) -> str:
    """The per-device or per-PASID counts: the ``top`` busiest, by faults."""
    rows = sorted(table.items(), key=lambda kv: -int(kv[1].get("faults", 0)))
    codes = list(next(iter(table.values())).get("codes", {}))
    shown = [[k, _number(v.get("faults", 0)), _number(v.get("groups", 0)),
              *[_number(v.get("codes", {}).get(c, 0)) for c in codes]] for k, v in rows[:top]]
    caption = f"by {label} ({len(table):,})" + (f", top {top}" if len(table) > top else "")
    return html_table([label, "faults", "groups", *codes], shown, caption)


def _short(v: Any, limit: int = 200) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def batch_html(batch: Any, limit: int = 10) -> str:
    """A GroupBatch for a notebook: one row per group (the first ``limit``)."""
    n = len(batch)
    rows = []
    for i in range(min(n, limit)):
        lo, hi = int(batch.offsets[i]), int(batch.offsets[i + 1])
        last = batch.faults[hi - 1]
        rows.append([int(batch.cookies[i]), int(last["dev"]), int(last["pasid"]),
                     int(last["grpid"]), hi - lo, int(last["time"])])
    caption = f"GroupBatch: {n:,} groups, {len(batch.faults):,} faults"
    if n > limit:
        caption += f" ({limit} shown)"
    return html_table(["cookie", "dev", "pasid", "grpid", "faults", "time"], rows, caption)
