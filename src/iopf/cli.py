"""The ``iopf`` command line (also ``python -m iopf``).

Subcommands: ``generate`` (write a synthetic trace), ``replay`` (run a trace
through a queue and print a summary; with no trace, a built-in synthetic
workload), ``convert`` (between trace formats) and ``bench`` (the grouping
strategies side by side on one trace).

Bad input gets one line on stderr, ``iopf: error: <file>:<line>: <why>``,
and exit status 2; an interrupt exits with 130.

.. code-block:: sh

    iopf generate t.npy --faults 1e6 --lost-lpig 0.01
    iopf replay t.npy --policy vtd --service-time 20000 --json report.json
    iopf replay --servers 4 --service-time exp:2000 --plot latency.png
    iopf bench --strategies hash,list,python --plot bench.png
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import __version__, policies, trace
from ._replay import ReplayReport, _rate, replay
from .service import Service
from .trace import LoadStats, TraceError
from .trace._io import same_file

__all__ = ["main"]

#: The built-in workload of ``iopf replay`` with no trace: big enough to show
#: the compiled core's speed, small enough to finish in about a second.
DEFAULT_FAULTS = 1_000_000
#: The pure-Python twin runs about a hundred times slower: ``bench`` gives it
#: at most this many faults and compares time per fault.
PYTHON_CAP = 200_000
STRATEGIES = ("hash", "tree", "list", "python")
#: The size of one iommufd ``struct iommu_hwpt_pgfault`` record.
IOMMUFD_RECORD_BYTES = 40
EXIT_USAGE = 2
EXIT_INTERRUPT = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     main(["generate", os.path.join(d, "t.csv"), "--faults", "1000"])  # doctest: +ELLIPSIS
    wrote 1,000 faults to ...t.csv (csv)
    0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return EXIT_INTERRUPT
    except BrokenPipeError:
        # The reader went away (``iopf replay | head``): nothing left to say.
        _silence_stdout()
        return 1
    except (TraceError, ValueError, OSError, ImportError) as e:
        # Trace errors speak the API's words (format=); here the option is --format.
        print(f"iopf: error: {_printable(_flag_words(_one_line(e), '--format'))}",
              file=sys.stderr)
        return EXIT_USAGE


# -- the parser ------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iopf", description="Simulate how an IOMMU driver groups I/O page faults "
        "and answers them.",
        epilog="Trace formats: " + ", ".join(trace.FORMATS) + " (default: from the "
        "extension, else from the content).")
    p.add_argument("--version", action="version", version=f"iopf {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="write a synthetic trace",
                       description="Write a seeded synthetic page-request workload.")
    g.add_argument("out", metavar="OUT", help="file to write (format from the extension)")
    g.add_argument("--faults", type=_count, default=DEFAULT_FAULTS, metavar="N",
                   help=f"number of page requests (default {DEFAULT_FAULTS:,})")
    g.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    g.add_argument("--devices", type=_positive, default=4, metavar="D",
                   help="number of devices (default 4)")
    g.add_argument("--lost-lpig", type=_fraction, default=0.0, metavar="F",
                   help="fraction of groups whose last request never comes (default 0)")
    g.add_argument("--stop-markers", type=_fraction, default=0.0, metavar="F",
                   help="probability that a group is followed by a stop marker (default 0)")
    g.add_argument("--format", choices=trace.FORMATS,
                   help="output format (default: from the extension of OUT)")
    _output_options(g)
    g.set_defaults(run=_generate)

    r = sub.add_parser("replay", help="replay a trace and summarise it",
                       description="Run a trace through a queue in batches and print the "
                       "counters, group sizes, responses and latency. Without TRACE, "
                       f"replays a synthetic workload of {DEFAULT_FAULTS:,} faults.")
    r.add_argument("trace", nargs="*", metavar="TRACE",
                   help="trace file (default: synthetic); several files, a glob or a "
                   "dataset written by iopf.trace.partition replay on a Dask cluster")
    _queue_options(r)
    r.add_argument("--service-time", type=_service_time, default=None, metavar="TIME",
                   help="how long the handler takes per group: NS or const:NS, exp:MEAN, "
                   "lognormal:MEAN,SIGMA (ns); each group is answered SUCCESS when its "
                   "service ends (default: as it completes; latency is reported only with "
                   "this)")
    r.add_argument("--servers", type=_positive, default=None, metavar="N",
                   help="workers that serve groups, FIFO (default: one per group, no "
                   "queueing); needs --service-time")
    r.add_argument("--service-seed", type=int, default=0, metavar="S",
                   help="seed of the service time draws (default 0)")
    r.add_argument("--plot", metavar="FILE.png",
                   help="also draw the latency histogram (needs matplotlib)")
    r.add_argument("--timeout", type=_ns, default=None, metavar="NS",
                   help="set the policy's response_timeout (ns)")
    r.add_argument("--json", metavar="FILE", help="also write the report as JSON ('-': stdout "
                   "only, no table)")
    _input_options(r)
    r.add_argument("--faults", type=_count, default=None, metavar="N",
                   help=f"size of the synthetic trace (default {DEFAULT_FAULTS:,}; no TRACE only)")
    r.add_argument("--seed", type=int, default=None, metavar="S",
                   help="seed of the synthetic trace (default 0; no TRACE only)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = r.add_argument_group("sharded replay on Dask (needs iopf[dask])")
    d.add_argument("--workers", type=_positive, default=None, metavar="N",
                   help="replay the shards on a local cluster of N worker processes")
    d.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="replay the shards on an existing Dask cluster (tcp://host:8786)")
    d.add_argument("--shard-by", choices=("iommu", "device", "host"), default=None,
                   help="shard key (default: iommu for a dataset, host for trace files)")
    r.set_defaults(run=_replay_cmd)

    c = sub.add_parser("convert", help="convert a trace to another format",
                       description="Read a trace in one format and write it in another. "
                       "Some formats cannot hold every field (see iopf.trace).")
    c.add_argument("input", metavar="IN", help="trace to read")
    c.add_argument("output", metavar="OUT", help="file to write")
    c.add_argument("--from", dest="from_format", choices=trace.FORMATS,
                   help="format of IN (default: from the extension, else the content)")
    c.add_argument("--to", dest="to_format", choices=trace.FORMATS,
                   help="format of OUT (default: from the extension)")
    c.add_argument("--skip-bad", action="store_true",
                   help="drop malformed lines or records instead of stopping")
    _output_options(c)
    c.set_defaults(run=_convert)

    b = sub.add_parser("bench", help="compare the grouping strategies on a trace",
                       description="Replay one trace with each strategy and print the time "
                       "per fault. The pure-Python twin replays at most "
                       f"{PYTHON_CAP:,} faults (a prefix of the trace).")
    b.add_argument("trace", nargs="?", metavar="TRACE", help="trace file (default: synthetic)")
    b.add_argument("--faults", type=_count, default=None, metavar="N",
                   help=f"size of the synthetic trace (default {DEFAULT_FAULTS:,}; no TRACE only)")
    b.add_argument("--seed", type=int, default=None, metavar="S",
                   help="seed of the synthetic trace (default 0; no TRACE only)")
    b.add_argument("--strategies", type=_strategies, default=STRATEGIES, metavar="LIST",
                   help="comma-separated, from " + ",".join(STRATEGIES) + " (default: all)")
    b.add_argument("--repeat", type=_positive, default=3, metavar="R",
                   help="runs per strategy; the best counts (default 3)")
    b.add_argument("--policy", choices=list(policies.PRESETS), default="pcie",
                   help="policy preset")
    b.add_argument("--batch-size", type=_positive, default=65536, metavar="N",
                   help="faults per report_batch call")
    b.add_argument("--plot", metavar="FILE.png", help="also draw a bar chart (needs matplotlib)")
    _input_options(b)
    _output_options(b)
    b.set_defaults(run=_bench)
    # Every option's help shows its default (where it has one worth showing).
    p.formatter_class = _HelpFormatter
    for command in sub.choices.values():
        command.formatter_class = _HelpFormatter
    return p


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help unless it says its default
    already or has none to show (None, or off for a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) \
                or not action.option_strings:
            return text
        return super()._get_help_string(action) or text


def _output_options(p: argparse.ArgumentParser) -> None:
    """--json and --no-progress, on every command that does not have them yet."""
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON ('-': "
                   "stdout only, no table)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _queue_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", choices=list(policies.PRESETS), default="pcie",
                   help="policy preset (default pcie)")
    p.add_argument("--strategy", choices=STRATEGIES, default="hash",
                   help="where partial faults wait (default hash)")
    p.add_argument("--batch-size", type=_positive, default=65536, metavar="N",
                   help="faults per report_batch call (default 65536)")


def _input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=trace.FORMATS,
                   help="format of TRACE (default: from the extension, else the content)")
    p.add_argument("--skip-bad", action="store_true",
                   help="drop malformed lines or records instead of stopping")


# -- argument types --------------------------------------------------------------------

def _integer(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        value = float(text)   # 1e6
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(value)


def _count(text: str) -> int:
    n = _integer(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {n}")
    return n


def _positive(text: str) -> int:
    n = _integer(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


_ns = _count


def _service_time(text: str) -> str:
    try:
        Service(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _fraction(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], not {x}")
    return x


def _strategies(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in STRATEGIES]
    if bad or not names:
        what = f"unknown strategy {bad[0]!r}" if bad else "no strategy given"
        raise argparse.ArgumentTypeError(f"{what} (choose from {','.join(STRATEGIES)})")
    return tuple(dict.fromkeys(names))


# -- subcommands -----------------------------------------------------------------------

def _generate(args: argparse.Namespace) -> int:
    # Everything that can fail without doing the work fails first.
    fmt = _output_format(args.out, args.format, "--format")
    _check_json(args)
    with _progress(args, total=2, unit="step", desc="generating") as bar:
        faults = trace.synthetic(args.faults, seed=args.seed, devices=args.devices,
                                 lost_lpig=args.lost_lpig, stop_markers=args.stop_markers)
        bar.update()
        bar.set_description(f"writing {args.out}")
        _save(args.out, faults, fmt)
        bar.update()
    result = {"output": args.out, "format": fmt, "faults": len(faults), "seed": args.seed}
    return _result(args, result, f"wrote {len(faults):,} faults to {args.out} ({fmt})")


def _replay_cmd(args: argparse.Namespace) -> int:
    _check_json(args)   # before any work, on either path
    if args.servers is not None and args.service_time is None:
        raise ValueError("--servers needs --service-time (how long each group is served)")
    if args.plot is not None:
        _check_output(args.plot, "--plot")
    plt = _pyplot() if args.plot is not None else None   # fail before the long part
    if _sharded(args):
        return _replay_distributed(args, plt)
    args.trace = args.trace[0] if args.trace else None
    _synthetic_only(args)
    policy = policies.PRESETS[args.policy]
    if args.timeout is not None:
        policy = policy.replace(response_timeout=args.timeout)
    load = LoadStats()
    if args.trace is None:
        n = DEFAULT_FAULTS if args.faults is None else args.faults
        seed = 0 if args.seed is None else args.seed
        source: Any = trace.synthetic(n, seed=seed)
        total: int | None = n
        name = f"synthetic ({n:,} faults, seed {seed})"
    else:
        # With its metadata: a trace from several IOMMU units replays with
        # one queue per unit.
        source = trace.iter_chunks(args.trace, format=args.format, skip_bad=args.skip_bad,
                                   chunk_size=args.batch_size, stats=load, meta=True)
        total = None if load.compression else _known_length(args.trace, load.format)
        name = args.trace
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        report = replay(source, policy=policy, strategy=args.strategy,
                        service_time=_service(args), batch_size=args.batch_size,
                        progress=progress, total=total, unit_names=load.units)
    except ValueError as e:
        if args.trace is None or isinstance(e, TraceError):
            raise
        raise ValueError(f"{args.trace}: {e}") from e   # "record N: ..." names no file
    report.extra["trace"] = name
    if args.trace is not None:
        report.extra["skipped_records"] = load.skipped
    if load.skipped:
        print(f"iopf: skipped {load.skipped:,} malformed records of {args.trace} "
              f"(first: {_printable(load.errors[0])})", file=sys.stderr)
    if plt is not None:
        _plot_latency(plt, report, args.plot, name)
    if args.json == "-":
        _write_json(sys.stdout, report)
        return 0
    print(report)
    if args.plot is not None:
        print(f"wrote {args.plot}")
    if args.json is not None:
        with open(args.json, "w", encoding="utf-8") as f:
            _write_json(f, report)
    return 0


def _service(args: argparse.Namespace) -> Service | None:
    """The service model of --service-time, --servers and --service-seed (both paths)."""
    return None if args.service_time is None else \
        Service(args.service_time, args.servers, seed=args.service_seed)


def _sharded(args: argparse.Namespace) -> bool:
    """Several traces, a dataset directory or a cluster option: the Dask path."""
    return (len(args.trace) > 1 or args.workers is not None or args.scheduler is not None
            or args.shard_by is not None or any(os.path.isdir(t) for t in args.trace))


def _replay_distributed(args: argparse.Namespace, plt: Any) -> int:
    if not args.trace:
        raise ValueError("a sharded replay needs TRACE files or a dataset directory")
    if args.faults is not None or args.seed is not None or args.skip_bad:
        raise ValueError("--faults, --seed and --skip-bad do not apply to a sharded replay")
    if args.workers is not None and args.scheduler is not None:
        raise ValueError("give --workers (a local cluster) or --scheduler (an existing "
                         "one), not both")
    from . import distributed

    policy = policies.PRESETS[args.policy]
    if args.timeout is not None:
        policy = policy.replace(response_timeout=args.timeout)
    dataset = len(args.trace) == 1 and os.path.isdir(args.trace[0])
    shard_by = args.shard_by or ("iommu" if dataset else "host")
    source = args.trace[0] if dataset else args.trace
    progress = not args.no_progress and sys.stderr.isatty()
    client = None
    if args.scheduler is not None:
        try:
            from distributed import Client
        except ImportError:
            raise ImportError('--scheduler needs dask and distributed: pip install '
                              '"iopf[dask]" (from a clone: pip install ".[dask]")') from None
        client = Client(args.scheduler)
    try:
        report = distributed.replay(source, policy=policy, client=client, shard_by=shard_by,
                                    strategy=args.strategy, service_time=_service(args),
                                    batch_size=args.batch_size, workers=args.workers,
                                    progress=progress, format=args.format)
    finally:
        if client is not None:
            client.close()
    report.extra["trace"] = " ".join(args.trace)
    text = str(report)
    if plt is not None:
        _plot_latency(plt, report, args.plot, report.extra["trace"])
        text += f"\nwrote {args.plot}"
    return _result(args, report, text)


def _convert(args: argparse.Namespace) -> int:
    if same_file(args.input, args.output):
        raise ValueError(f"{args.output}: is the input; write the output elsewhere")
    out_fmt = _output_format(args.output, args.to_format, "--to")   # fail before reading
    _check_json(args)
    load = LoadStats()
    with _progress(args, total=2, unit="step", desc=f"reading {args.input}") as bar:
        try:
            faults, meta = trace.load(args.input, format=args.from_format,
                                      skip_bad=args.skip_bad, stats=load, meta=True)
        except TraceError as e:   # the API says format=, this command --from
            raise TraceError(_flag_words(str(e), "--from")) from None
        bar.update()
        bar.set_description(f"writing {args.output}")
        # Unit names and seq# go along, for prq_report output.
        _save(args.output, faults, out_fmt, meta=meta, units=load.units or None)
        bar.update()
    in_fmt = load.format
    if load.skipped:
        print(f"iopf: skipped {load.skipped:,} malformed records (first: "
              f"{_printable(load.errors[0])})", file=sys.stderr)
    result = {"input": args.input, "input_format": in_fmt, "output": args.output,
              "output_format": out_fmt, "faults": len(faults), "skipped_records": load.skipped}
    return _result(args, result, f"converted {len(faults):,} faults: {args.input} ({in_fmt}) "
                   f"-> {args.output} ({out_fmt})")


def _bench(args: argparse.Namespace) -> int:
    # Fail before the long part: options, output paths, optional packages.
    _synthetic_only(args)
    _check_json(args)
    if args.plot is not None:
        _check_output(args.plot, "--plot")
        plt = _pyplot()
    if args.trace is None:
        n = DEFAULT_FAULTS if args.faults is None else args.faults
        seed = 0 if args.seed is None else args.seed
        faults = trace.synthetic(n, seed=seed)
        name = f"synthetic, seed {seed}"
    else:
        load = LoadStats()
        faults = trace.load(args.trace, format=args.format, skip_bad=args.skip_bad, stats=load)
        name = args.trace
        if load.skipped:
            print(f"iopf: skipped {load.skipped:,} malformed records (first: "
                  f"{_printable(load.errors[0])})", file=sys.stderr)
    if not len(faults):
        raise ValueError(f"{name}: the trace holds no faults")
    rows = []
    with _progress(args, total=len(args.strategies) * args.repeat, unit="run",
                   desc="bench") as bar:
        for strategy in args.strategies:
            subset = faults[:PYTHON_CAP] if strategy == "python" else faults
            best: ReplayReport | None = None
            bar.set_description(f"bench {strategy}")
            for _ in range(args.repeat):
                try:
                    rep = replay(subset, policy=args.policy, strategy=strategy,
                                 batch_size=args.batch_size)
                except ValueError as e:
                    raise ValueError(f"{name}: {e}") from e
                if best is None or rep.engine_seconds < best.engine_seconds:
                    best = rep
                bar.update()
            assert best is not None
            rows.append((strategy, len(subset), 1e9 * best.engine_seconds / len(subset),
                         1e9 * best.wall_seconds / len(subset), best))
    _check_agreement(rows, len(faults))
    text = _bench_table(rows, len(faults), name, args)
    if args.plot is not None:
        _plot(plt, rows, args.plot, name)
        text += f"\nwrote {args.plot}"
    return _result(args, _bench_dict(rows, len(faults), name, args), text)


def _bench_dict(rows: list[tuple[Any, ...]], n: int, name: str,
                args: argparse.Namespace) -> dict[str, Any]:
    return {"trace": name, "faults": n, "policy": args.policy, "batch_size": args.batch_size,
            "repeat": args.repeat,
            "strategies": [{"strategy": s, "faults": k, "ns_per_fault": ns,
                            "faults_per_second": 1e9 / ns, "replay_ns_per_fault": wall_ns,
                            "stats": rep.stats}
                           for s, k, ns, wall_ns, rep in rows],
            "plot": args.plot}


def _check_agreement(rows: list[tuple[Any, ...]], n: int) -> None:
    """Every strategy must count the same on the same faults: say so if not."""
    full = [(s, rep.stats) for s, k, _, _, rep in rows if k == n]
    for s, stats in full[1:]:
        if stats != full[0][1]:
            diff = {k: (full[0][1][k], v) for k, v in stats.items() if full[0][1][k] != v}
            print(f"iopf: warning: strategies {full[0][0]} and {s} disagree: {diff}",
                  file=sys.stderr)


def _bench_table(rows: list[tuple[Any, ...]], n: int, name: str,
                 args: argparse.Namespace) -> str:
    base = next((r for r in rows if r[0] == "python"), None)
    base_label = "vs python" if base is not None else f"vs {rows[0][0]}"
    base = base or rows[0]
    lines = [f"iopf bench: {n:,} faults ({name}), policy {args.policy}, "
             f"batch {args.batch_size:,}, best of {args.repeat}",
             f"{'strategy':<9} {'faults':>11} {'ns/fault':>10} {'faults/s':>10} "
             f"{'replay ns/fault':>16} {base_label:>10}"]
    capped = False
    for strategy, k, ns, wall_ns, _ in rows:
        mark = "*" if k < n else " "
        capped |= k < n
        lines.append(f"{strategy:<9} {k:>10,}{mark} {ns:>10.1f} {_rate(1e9 / ns):>10} "
                     f"{wall_ns:>16.1f} {base[2] / ns:>9.1f}x")
    lines.append("ns/fault: time in the queue's calls; replay ns/fault: the whole replay.")
    if capped:
        lines.append(f"* only the first {PYTHON_CAP:,} faults (the python twin is slow); "
                     "compare the per-fault times.")
    return "\n".join(lines)


def _plot(plt: Any, rows: list[tuple[Any, ...]], path: str, name: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r[0] for r in rows]
    ax.bar(names, [r[2] for r in rows], color="tab:blue")
    ax.set_yscale("log")
    ax.margins(y=0.2)   # room for the labels above the bars
    ax.set_ylabel("ns per fault (log)")
    ax.set_title(f"iopf grouping strategies ({name})")
    for i, r in enumerate(rows):
        ax.annotate(f"{r[2]:.0f}", (i, r[2]), ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_latency(plt: Any, report: ReplayReport, path: str, name: str) -> None:
    """The latency histogram: groups per latency bucket, on log axes."""
    lower, count = report.latency_histogram()
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    if len(count):
        lo = lower.astype(np.float64)
        n = count.astype(np.float64)
        # Buckets are one ns wide below 4096 ns and wider above: regroup them in
        # bins of equal width on a log axis, so that the bars compare.
        edges = np.unique(np.geomspace(max(lo[0], 1.0), max(lo[-1], 1.0) * 1.0001 + 1, 60))
        counts, _ = np.histogram(np.maximum(lo, 1.0), bins=edges, weights=n)
        ax.stairs(counts, edges, fill=True, color="tab:blue")
        ax.set_xscale("log")
        lat = report.latency_ns or {}
        for k, style in (("p50", "--"), ("p99", ":")):
            if k in lat:
                ax.axvline(max(float(lat[k]), 1.0), color="black", linestyle=style, linewidth=1,
                           label=f"{k} {lat[k]:,.0f} ns")
        ax.legend(loc="upper right")
    else:
        ax.text(0.5, 0.5, "no latency: give --service-time", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("latency, last request to response (ns)")
    ax.set_ylabel("groups")
    ax.set_title(f"iopf replay: {name}\n{report.model}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError('--plot needs matplotlib: pip install "iopf[plot]" '
                          '(from a clone: pip install ".[plot]")') from None
    matplotlib.use("Agg")   # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


# -- helpers ---------------------------------------------------------------------------

def _known_length(path: str, fmt: str | None) -> int | None:
    """How many faults a trace holds, when that is cheap to know (for the bar).
    Only for regular files: a pipe or FIFO must not be read a second time."""
    if path == "-" or not os.path.isfile(path):
        return None
    try:
        if fmt == "npy":
            return len(np.load(path, mmap_mode="r", allow_pickle=False))
        if fmt == "iommufd":
            return os.path.getsize(path) // IOMMUFD_RECORD_BYTES
    except (OSError, ValueError, TypeError):
        pass
    return None


def _write_json(f: Any, report: ReplayReport | dict[str, Any]) -> None:
    json.dump(report.to_dict() if isinstance(report, ReplayReport) else report, f, indent=2)
    f.write("\n")


def _result(args: argparse.Namespace, result: ReplayReport | dict[str, Any], text: str) -> int:
    """Print a command's result: the text, or with ``--json -`` the JSON alone;
    ``--json FILE`` writes the JSON there too."""
    if args.json == "-":
        _write_json(sys.stdout, result)
        return 0
    print(text)
    if args.json is not None:
        with open(args.json, "w", encoding="utf-8") as f:
            _write_json(f, result)
    return 0


# -- checks made before any work -------------------------------------------------------

def _synthetic_only(args: argparse.Namespace) -> None:
    """One rule for options that do not apply: --faults and --seed describe the
    synthetic trace, so with TRACE they are an error, never silently ignored."""
    given = [flag for flag, value in (("--faults", args.faults), ("--seed", args.seed))
             if value is not None]
    if args.trace is not None and given:
        raise ValueError(f"{' and '.join(given)} describe{'s' if len(given) == 1 else ''} the "
                         "synthetic trace; do not give them with TRACE")


def _check_json(args: argparse.Namespace) -> None:
    if args.json is not None and args.json != "-":
        _check_output(args.json, "--json")


def _check_output(path: str, flag: str | None = None) -> None:
    """Fail now, naming the option (if any), when ``path`` cannot be written."""
    where = f"{flag} {path}" if flag else f"cannot write {path}"
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{where}: is a directory")
    if not os.path.isdir(directory):
        raise ValueError(f"{where}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK) or (os.path.exists(path)
                                             and not os.access(path, os.W_OK)):
        raise ValueError(f"{where}: permission denied")


def _output_format(path: str, given: str | None, flag: str) -> str:
    """The format an output will be written in, and its optional package, checked
    with its directory before any work."""
    _check_output(path)
    try:
        fmt = trace._format_for_save(path, given)
    except TraceError as e:
        raise TraceError(_flag_words(str(e), flag)) from None
    if fmt == "parquet":
        trace.parquet.pyarrow()   # OptionalDependencyError with the install hint
    return fmt


def _flag_words(message: str, flag: str) -> str:
    return message.replace("pass format=", f"give {flag}")


def _save(path: str, faults: np.ndarray, fmt: str, **options: Any) -> None:
    """trace.save, with errors naming the file the user gave (not the temporary
    file the save writes first)."""
    try:
        trace.save(path, faults, format=fmt, **options)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress(args: argparse.Namespace, *, total: int | None, unit: str, desc: str) -> Any:
    """A tqdm bar on stderr, only when stderr is a terminal and --no-progress is
    not given (so pipes, files and tests see no bar)."""
    if args.no_progress or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, leave=False,
                unit_scale=unit == "fault", dynamic_ncols=True)


def _printable(text: str, limit: int = 300) -> str:
    """Text safe for a terminal: control and other unprintable characters (binary
    junk from a file) shown escaped, and at most ``limit`` characters."""
    if not text.isprintable() or "\ufffd" in text:   # U+FFFD: bytes that were not text
        text = "".join(c if c.isprintable() and c != "\ufffd"
                       else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        msg = f"{e.filename}: {e.strerror}"
    else:
        msg = str(e) or type(e).__name__
    return " ".join(msg.split())


def _silence_stdout() -> None:
    # Python flushes stdout at exit and would report the broken pipe again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
