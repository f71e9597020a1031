"""Turn a pytest-benchmark JSON file into the README tables and a plot.

    python -m pytest benchmarks --benchmark-only --benchmark-json=bench.json
    python benchmarks/report.py bench.json --plot benchmarks/lpig.png  # "All groups" of RESULTS.md

Times are the minimum of the rounds (the machine is shared: the least
disturbed round is the best estimate), divided by the faults one round
handles (``extra_info["faults"]``). Each row is compared with the three
baselines of its group, from the same run: "/ floor" and "/ dict" are the
row's time over the plain C floor's and the hand-written dict's (below 1:
faster), "twin / row" how many times faster than the pure-Python twin.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict


def per_fault_ns(bench: dict) -> float:
    return bench["stats"]["min"] / bench["extra_info"].get("faults", 1) * 1e9


def strategy_of(bench: dict) -> str:
    params = bench.get("params") or {}
    return str(params.get("strategy") or params.get("name") or bench["name"])


def baseline(rows: list[dict], *names: str) -> float | None:
    return next((per_fault_ns(b) for b in rows if strategy_of(b) in names), None)


def tables(benchmarks: list[dict]) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in benchmarks:
        groups[b["group"] or b["name"]].append(b)
    out = []
    for group in sorted(groups, key=_natural):
        rows = groups[group]
        floor, hand = baseline(rows, "floor"), baseline(rows, "dict")
        twin = baseline(rows, "python", "PCIE", "bare")
        memory = any("bytes_per_fault" in b["extra_info"] for b in rows)
        head = "| strategy | ns per fault | / floor | / dict | twin / row |"
        out += [f"**{group}**", "", head + (" bytes per held fault |" if memory else ""),
                "|---|---:|---:|---:|---:|" + ("---:|" if memory else "")]
        for b in sorted(rows, key=per_fault_ns):
            ns = per_fault_ns(b)
            # A round shorter than the CPU clock's tick reads 0: no ratio for it.
            cells = [f"{ns / floor:.2f}" if floor else "", f"{ns / hand:.2f}" if hand else "",
                     f"{twin / ns:.1f}" if twin and ns else ""]
            line = f"| {strategy_of(b)} | {ns:,.1f} | " + " | ".join(cells) + " |"
            if memory:
                line += f" {b['extra_info'].get('bytes_per_fault', '')} |"
            out.append(line)
        out.append("")
    return "\n".join(out)


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def plot(benchmarks: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, devices in zip(axes, (1, 64)):
        series: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for b in benchmarks:
            info = b["extra_info"]
            if (b["name"].startswith("test_lpig_vs_outstanding")
                    and info.get("devices") == devices):
                series[strategy_of(b)].append((info["outstanding"], per_fault_ns(b)))
        for name, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("outstanding groups (held partials)")
        ax.set_title(f"LPIG completion, groups of 4, {devices} device(s)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ns per fault (min of rounds)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--plot", help="write a PNG of LPIG cost against outstanding groups")
    args = ap.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    info = data.get("machine_info", {})
    print(f"Measured {data.get('datetime', '')[:10]} on {info.get('cpu', {}).get('brand_raw', '?')}, "
          f"Python {info.get('python_version', '?')}, {info.get('cpu', {}).get('count', '?')} cores, "
          f"malloc {info.get('malloc', 'default')} (benchmarks/fixed_heap.py).\n")
    print(tables(data["benchmarks"]))
    if args.plot:
        plot(data["benchmarks"], args.plot)


if __name__ == "__main__":
    main()
