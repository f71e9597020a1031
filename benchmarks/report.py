"""Turn a pytest-benchmark JSON file into the README tables and a plot.

    python -m pytest benchmarks --benchmark-only --benchmark-json=bench.json
    python benchmarks/report.py bench.json --plot benchmarks/lpig.png > benchmarks/RESULTS.md

Times are medians of the rounds, divided by the faults one round handles
(``extra_info["faults"]``); "x twin" is the pure-Python twin's time over the
row's, in the same group of the same run.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict


def per_fault_ns(bench: dict) -> float:
    return bench["stats"]["median"] / bench["extra_info"].get("faults", 1) * 1e9


def strategy_of(bench: dict) -> str:
    params = bench.get("params") or {}
    return str(params.get("strategy") or params.get("name") or bench["name"])


def tables(benchmarks: list[dict]) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in benchmarks:
        groups[b["group"] or b["name"]].append(b)
    out = []
    for group in sorted(groups, key=_natural):
        rows = groups[group]
        base = next((per_fault_ns(b) for b in rows if strategy_of(b) in ("python", "PCIE", "bare")), None)
        memory = any("bytes_per_fault" in b["extra_info"] for b in rows)
        head = "| strategy | ns per fault | x baseline |" + (" bytes per held fault |" if memory else "")
        out += [f"**{group}**", "", head, "|---|---:|---:|" + ("---:|" if memory else "")]
        for b in sorted(rows, key=per_fault_ns):
            ns = per_fault_ns(b)
            ratio = f"{base / ns:.1f}" if base else ""
            line = f"| {strategy_of(b)} | {ns:,.1f} | {ratio} |"
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
    axes[0].set_ylabel("ns per fault (median)")
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
          f"Python {info.get('python_version', '?')}, {info.get('cpu', {}).get('count', '?')} cores.\n")
    print(tables(data["benchmarks"]))
    if args.plot:
        plot(data["benchmarks"], args.plot)


if __name__ == "__main__":
    main()
