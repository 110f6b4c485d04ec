"""Soak: a million calls with 1,000 in flight and a 64 MB tensor every so often; resident memory must stay flat
after warm-up, and no descriptors, shared-memory segments or tasks may leak.

    python bench/soak.py                  # 1,000,000 calls (a few minutes)
    python bench/soak.py --calls 20000    # the CI smoke run

Prints RSS samples of the driver and the node, the RSS slope after warm-up (least squares, % of the warm RSS per
million calls), and the leak counters before and after; writes bench/results/soak-<date>.json. Exits 1 if a
leak counter grew, or (runs of 200,000 calls or more) the slope is 1% per million calls or more.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import sys
from typing import Any

import numpy as np

import disto

HERE = os.path.dirname(os.path.abspath(__file__))
SHM_PREFIX = "disto-"


class Sink(disto.Actor):
    def echo(self, x: int) -> int:
        return x

    def total(self, t: Any) -> float:
        return float(t.sum())


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def local_stats() -> dict[str, int]:
    return {"rss_bytes": rss_bytes(), "open_fds": len(os.listdir("/proc/self/fd")), "tasks": len(asyncio.all_tasks())}


def shm_segments() -> int:
    try:
        return sum(1 for n in os.listdir("/dev/shm") if n.startswith(SHM_PREFIX))
    except FileNotFoundError:
        return 0


def slope_pct_per_million(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of RSS against calls, as % of the mean RSS per million calls."""
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    if len(x) < 3 or np.ptp(x) == 0:
        return float("nan")
    b = np.polyfit(x, y, 1)[0]
    return float(b * 1e6 / y.mean() * 100)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    tensor = torch.ones(args.tensor_mb << 18)  # float32: 4 bytes an element
    async with disto.LocalCluster(nodes=1, env={"PYTHONPATH": HERE}) as cluster:
        node = cluster.nodes[0]
        ref = await node.spawn(Sink)
        samples: list[dict[str, Any]] = []

        async def sample(done: int) -> None:
            gc.collect()
            remote = (await node.stats())["process"]
            samples.append({"calls": done, "driver_rss": rss_bytes(), "node_rss": remote["rss_bytes"],
                            "node_fds": remote["open_fds"], "node_tasks": remote["tasks"],
                            "shm": shm_segments()})
            if args.verbose:
                print(f"{done:>9} calls: driver {samples[-1]['driver_rss'] / 2**20:7.1f} MB, node "
                      f"{samples[-1]['node_rss'] / 2**20:7.1f} MB, shm segments {samples[-1]['shm']}", flush=True)

        # warm-up: pools, caches and the first big transfer settle before the first counted sample
        await disto.window([lambda i=i: ref.echo(i) for i in range(min(args.calls // 10, 50_000))], args.inflight)
        assert await ref.total(tensor) == tensor.numel()
        gc.collect()
        before = {"driver": local_stats(), "node": (await node.stats())["process"], "shm": shm_segments()}
        done = 0
        step = max(args.calls // args.samples, 1)
        await sample(0)
        while done < args.calls:
            n = min(step, args.calls - done)
            got = await disto.window([lambda i=i: ref.echo(i) for i in range(n)], args.inflight)
            assert got[-1] == n - 1
            done += n
            if (done // step) % args.tensor_every == 0:
                assert await ref.total(tensor) == tensor.numel()
            await sample(done)
        gc.collect()
        after = {"driver": local_stats(), "node": (await node.stats())["process"], "shm": shm_segments()}
    left = shm_segments()
    warm = [s for s in samples if s["calls"] >= args.calls * args.warmup]
    return {
        "calls": args.calls, "inflight": args.inflight, "tensor_mb": args.tensor_mb, "samples": samples,
        "before": before, "after": after, "shm_after_shutdown": left,
        "slope_driver_pct_per_million": slope_pct_per_million([(s["calls"], s["driver_rss"]) for s in warm]),
        "slope_node_pct_per_million": slope_pct_per_million([(s["calls"], s["node_rss"]) for s in warm]),
    }


def report(res: dict[str, Any]) -> int:
    b, a = res["before"], res["after"]
    print(f"\nsoak: {res['calls']:,} calls, {res['inflight']} in flight, a {res['tensor_mb']} MB tensor every "
          f"few samples; {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'':<26}{'before':>12}{'after':>12}")
    rows = [("driver RSS MB", b["driver"]["rss_bytes"] / 2**20, a["driver"]["rss_bytes"] / 2**20),
            ("node RSS MB", b["node"]["rss_bytes"] / 2**20, a["node"]["rss_bytes"] / 2**20),
            ("driver open fds", b["driver"]["open_fds"], a["driver"]["open_fds"]),
            ("node open fds", b["node"]["open_fds"], a["node"]["open_fds"]),
            ("driver asyncio tasks", b["driver"]["tasks"], a["driver"]["tasks"]),
            ("node asyncio tasks", b["node"]["tasks"], a["node"]["tasks"]),
            ("shm segments", b["shm"], a["shm"])]
    for name, x, y in rows:
        print(f"{name:<26}{x:>12.1f}{y:>12.1f}")
    print(f"shm segments after shutdown: {res['shm_after_shutdown']}")
    print(f"RSS slope after warm-up: driver {res['slope_driver_pct_per_million']:+.3f} %/M calls, "
          f"node {res['slope_node_pct_per_million']:+.3f} %/M calls")
    leaks = [name for name, x, y in rows[2:] if y > x] + (["shm after shutdown"] if res["shm_after_shutdown"] else [])
    worst = max(res["slope_driver_pct_per_million"], res["slope_node_pct_per_million"])
    if leaks:
        print("LEAK:", ", ".join(leaks))
    # a short run's slope is mostly noise extrapolated to a million calls: judge it only on long runs
    judged = res["calls"] >= 200_000
    if judged and not worst < 1.0:
        print(f"RSS grows {worst:.2f}% per million calls (bar: < 1%)")
    return 1 if leaks or (judged and not worst < 1.0) else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1_000_000)
    p.add_argument("--inflight", type=int, default=1000)
    p.add_argument("--tensor-mb", type=int, default=64)
    p.add_argument("--samples", type=int, default=40, help="RSS samples over the run")
    p.add_argument("--tensor-every", type=int, default=2, help="a tensor every this many samples")
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of the calls left out of the slope")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    res = disto.run(main(args))
    code = report(res)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"soak-{datetime.date.today()}.json")
    with open(path, "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"results: {path}")
    sys.exit(code)
