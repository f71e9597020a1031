"""Several PRI devices behind one Intel VT-d IOMMU, simulated with SimPy.

Run it:  python examples/vtd_simpy.py            (needs: pip install "iopf[sim]")
Options: --duration-us, --pause-us, --seed, --out FILE.png, --no-plot  (plot: pip install "iopf[plot]")

The model:

- one page request queue with the ``iopf.policies.VTD`` policy (Linux: groups
  keyed on device and group index, requests without a handler answered
  INVALID, stop markers dropped, a 2048-entry queue that discards partial
  faults on overflow), plus a 2 ms response timeout;
- the kernel's iopf workqueue as a ``Server``: 4 workers, each group takes a
  lognormal handling time plus a cost per page; PASID 4 of the GPU is a
  guest whose faults go to a slower handler with 2 workers (a vIOMMU round
  trip). From 40% of the run the guest is paused for ``--pause-us`` (3 ms):
  its groups time out after 2 ms (INVALID), and meanwhile they hold the
  GPU's PRI credit, so the GPU's other PASIDs stall too;
- four devices with their own PRI allocation, group sizes and request
  rates; one of them loses 2% of its LPIGs and gives up on those groups
  after 500 us.

It prints each device's fault latency percentiles (p50/p90/p99, from the
request to its page response), the throughput, the queue's counters, and
writes a plot of latency over time.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

try:
    import simpy
except ImportError:
    sys.exit('This example needs SimPy: pip install "iopf[sim]"')

import iopf
from iopf.sim import Device, Server, SimQueue

US = 1_000  # ns


def lognormal(mean_ns: float, sigma: float = 0.6):
    """A draw with the given mean (ns): handling times have a long right tail."""
    mu = np.log(mean_ns) - sigma * sigma / 2
    return lambda rng: rng.lognormal(mu, sigma)


def build(env: simpy.Environment, seed: int,
          pause: tuple[int, int]) -> tuple[SimQueue, dict[str, Device], dict[str, Server]]:
    policy = iopf.policies.VTD.replace(response_timeout=2_000 * US)
    sim = SimQueue(env, policy)
    # The iopf workqueue: any group without a dedicated handler.
    wq = Server(sim, service_time=lognormal(1.2 * US), per_fault=150, servers=4, seed=seed)
    wq.attach_default()
    # A guest PASID: its faults go through a slower path (a vIOMMU round trip),
    # and nothing is served while the guest is paused.
    guest_time = lognormal(15 * US, 0.3)

    def guest_service(rng: np.random.Generator) -> float:
        wait = pause[1] - env.now if pause[0] <= env.now < pause[1] else 0
        return wait + guest_time(rng)

    guest = Server(sim, service_time=guest_service, servers=2, seed=seed + 1).attach(0x0300, 4)

    ss = np.random.SeedSequence(seed)
    rngs = [np.random.default_rng(s) for s in ss.spawn(4)]
    devices = {
        # name: a device id (PCI requester id) and how it faults
        "gpu": Device(sim, 0x0300, pasids=(1, 2, 3, 4), outstanding=512,
                      group_size=lambda r: r.geometric(1 / 8), interval=lambda r: r.exponential(3 * US),
                      stop_markers=True, rng=rngs[0]),
        "dsa": Device(sim, 0x6A08, pasids=(1, 2), outstanding=512,
                      group_size=lambda r: r.integers(1, 5), interval=lambda r: r.exponential(1 * US),
                      rng=rngs[1]),
        "nic": Device(sim, 0x1A00, pasids=(7,), outstanding=32, group_size=1,
                      interval=lambda r: r.exponential(2 * US), rng=rngs[2]),
        "flaky": Device(sim, 0x1B00, pasids=(9,), outstanding=64, group_size=4,
                        interval=lambda r: r.exponential(5 * US), lost_lpig=0.02,
                        give_up_after=500 * US, rng=rngs[3]),
    }
    return sim, devices, {"workqueue": wq, "guest": guest}


def pct(lat: np.ndarray, weights: np.ndarray) -> tuple[float, float, float]:
    """p50, p90, p99 of fault latency (us): each group counts once per fault."""
    if not len(lat):
        return (float("nan"),) * 3
    per_fault = np.repeat(lat, weights)
    p50, p90, p99 = np.percentile(per_fault, [50, 90, 99]) / US
    return float(p50), float(p90), float(p99)


def plot(devices: dict[str, Device], pause: tuple[int, int], path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('note: matplotlib is not installed (pip install "iopf[plot]"); no plot written')
        return False
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, dev in devices.items():
        r = dev.results()
        if len(r):
            ax.scatter(r["answered"] / US, np.maximum(r["latency"], 1) / US, s=2, alpha=0.4,
                       label=name, rasterized=True)
    if pause[1] > pause[0]:
        ax.axvspan(pause[0] / US, pause[1] / US, color="grey", alpha=0.15, label="guest paused")
    ax.set_yscale("log")
    ax.set_xlabel("simulated time (us)")
    ax.set_ylabel("fault latency (us)")
    ax.set_title("VT-d page request latency per device")
    ax.legend(markerscale=5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot written to {path}")
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-us", type=int, default=20_000, help="simulated time (default 20000 us)")
    ap.add_argument("--pause-us", type=int, default=3_000,
                    help="guest pause, starting at 40%% of the run (default 3000 us; 0: none)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="vtd_latency.png", help="plot file (PNG)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)

    env = simpy.Environment()
    start = args.duration_us * US * 2 // 5
    pause = (start, start + args.pause_us * US)
    sim, devices, servers = build(env, args.seed, pause)
    t0 = time.perf_counter()
    env.run(until=args.duration_us * US)
    wall = time.perf_counter() - t0
    sim_s = env.now / 1e9

    print(f"{'device':8s} {'groups':>7s} {'faults':>8s} {'p50 us':>8s} {'p90 us':>8s} {'p99 us':>8s} "
          f"{'stalls':>7s} {'retries':>7s} {'invalid':>7s} {'lost':>5s}")
    all_lat, all_n = [], []
    for name, dev in devices.items():
        r = dev.results()
        all_lat.append(r["latency"])
        all_n.append(r["nfaults"])
        p50, p90, p99 = pct(r["latency"], r["nfaults"])
        print(f"{name:8s} {dev.groups_done:7d} {dev.faults_done:8d} {p50:8.2f} {p90:8.2f} {p99:8.2f} "
              f"{dev.credit_stalls:7d} {dev.retries:7d} {dev.invalid:7d} {dev.groups_lost:5d}")
    lat, n = np.concatenate(all_lat), np.concatenate(all_n)
    p50, p90, p99 = pct(lat, n)
    faults = int(n.sum())
    print(f"{'all':8s} {len(lat):7d} {faults:8d} {p50:8.2f} {p90:8.2f} {p99:8.2f}")
    print(f"\nthroughput: {faults / sim_s / 1e6:.2f} M faults/s of simulated time "
          f"({faults / wall / 1e3:.0f} k faults/s of wall time, {wall:.2f} s)")
    for name, srv in servers.items():
        print(f"{name}: {srv.capacity} workers, {srv.utilization():.0%} busy, "
              f"peak backlog {srv.max_backlog} groups, {srv.stale} answers after a timeout")
    stats = sim.queue.stats
    print("queue:", ", ".join(f"{k}={v}" for k, v in stats.as_dict().items() if v))
    print("conservation (no fault or group lost):", "holds" if stats.conserved() else "BROKEN")
    if not args.no_plot:
        plot(devices, pause, args.out)
    return {"faults": faults, "groups": len(lat), "p50_us": p50, "p90_us": p90, "p99_us": p99,
            "conserved": stats.conserved(), "wall_s": wall}


if __name__ == "__main__":
    main()
