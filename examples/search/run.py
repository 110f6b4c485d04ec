"""Distributed IVF-PQ search on a local disto cluster, next to single-process Faiss measured in the same run.

    python examples/search/run.py                 # 200k x 128, a minute or two
    python examples/search/run.py --nb 1000000    # the 1M x 128 set of docs/search.md

Generates a seeded clustered data set, caches its exact ground truth, trains one IVF-PQ index, builds it in one
process (Faiss) and sharded over 1, 2, ... shard processes (disto), and prints 1-R@1, R@10, queries/s and
latency p50/p99 for batch sizes 1, 32 and 1000, bytes/vector and build time, the time breakdown of a sharded
batch, and the fraction of result rows identical to the single index. Saves a recall-vs-QPS plot.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

import disto
from disto.search import DistributedIndex, dataset, ground_truth, one_recall_at
from disto.search._faiss import faiss
from floor import Floor

BATCHES = (1, 32, 1000)


def default_ntrain(args: argparse.Namespace) -> int:
    """Enough training vectors for the coarse quantizer (Faiss warns below 39 per centroid), at least nb/10."""
    m = re.search(r"IVF(\d+)", args.factory)
    nlist = int(m.group(1)) if m else 0
    return min(args.nb, max(20_000, 40 * nlist, args.nb // 10))


def add_with_progress(index: Any, xb: np.ndarray, what: str, chunk: int = 20_000) -> None:
    """``index.add(xb)`` in chunks, with a progress bar when tqdm is installed (the same index either way)."""
    try:
        from tqdm import tqdm
        bar = tqdm(total=len(xb), desc=what, unit=" vectors", unit_scale=True, leave=False)
    except ImportError:
        bar = None
    for start in range(0, len(xb), chunk):
        index.add(xb[start:start + chunk])
        if bar is not None:
            bar.update(min(chunk, len(xb) - start))
    if bar is not None:
        bar.close()


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def sample(batch: int, args: argparse.Namespace) -> int:
    """Queries timed at this batch size: all of them in big batches, 1000 one by one or 32 at a time."""
    return args.nq if batch >= 1000 else min(args.nq, 1000)


def reps(batch: int, args: argparse.Namespace) -> int:
    """Passes over the timed queries: enough for 20 batches of 1000 (a steady state, not a start-up)."""
    return max(1, -(-20_000 // args.nq)) if batch >= 1000 else 1


def file_bytes(index: Any) -> int:
    return int(faiss.serialize_index(index).nbytes)


def same_rows(a: np.ndarray, b: np.ndarray, da: np.ndarray, db: np.ndarray) -> float:
    """Rows whose ids are identical, counting a row also when only tied distances are ordered differently."""
    same = (a == b).all(axis=1)
    tie = ~same & np.isclose(da, db, rtol=1e-5, atol=1e-6).all(axis=1)
    return float((same | tie).mean())


def faiss_latency(index: Any, xq: np.ndarray, k: int, batch: int, reps: int) -> tuple[list[float], float]:
    batch = min(batch, len(xq))  # fewer queries than a batch: one batch of all of them
    lat: list[float] = []
    t0 = time.perf_counter()
    n = 0
    for r in range(reps):
        for s in range(0, len(xq) - batch + 1, batch):
            t = time.perf_counter()
            index.search(xq[s:s + batch], k)
            lat.append(time.perf_counter() - t)
            n += batch
    return lat, n / (time.perf_counter() - t0)


async def disto_latency(ix: DistributedIndex, xq: np.ndarray, k: int, nprobe: int, batch: int, reps: int,
                        inflight: int = 1, floor: Floor | None = None
                        ) -> tuple[list[float], float, list[dict[str, float]]]:
    """Latency of each batch, and queries/s with ``inflight`` batches on the wire at once. With ``floor`` (and
    one batch in flight), each batch is followed by the same pattern played over plain sockets: its ``timing``
    gets ``floor_send`` and ``floor_return``."""
    batch = min(batch, len(xq))
    lat: list[float] = []
    timings: list[dict[str, float]] = []
    starts = [s for _ in range(reps) for s in range(0, len(xq) - batch + 1, batch)]
    sem = asyncio.Semaphore(inflight)

    async def one(s: int) -> None:
        async with sem:
            t = time.perf_counter()
            r = await ix.search(xq[s:s + batch], k, nprobe)
            lat.append(time.perf_counter() - t)
            if floor is not None:
                fs, fr, fo = floor.round(r.timing["coarse"], r.timing["shard"], len(ix.shards))
                r.timing.update(floor_send=fs, floor_return=fr, floor=fo, over_floor=r.timing["overhead"] - fo)
            timings.append(r.timing)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(s) for s in starts))
    return lat, len(starts) * batch / (time.perf_counter() - t0), timings


async def main(args: argparse.Namespace) -> dict[str, Any]:
    # forked first, while this process is small and has no threads: the plain-socket floor of each batch
    floor = Floor(max(args.shards))
    try:
        return await _main(args, floor)
    finally:
        floor.close()


async def _main(args: argparse.Namespace, floor: Floor) -> dict[str, Any]:
    faiss.omp_set_num_threads(1)  # Faiss single-process baseline at one core, as each shard
    t0 = time.perf_counter()
    print(f"generating {args.nb:,} x {args.d} vectors...", flush=True)
    xb, xq, xt = dataset(args.nb, args.nq, args.d, seed=args.seed, clusters=args.clusters,
                         ntrain=args.ntrain if args.ntrain is not None else default_ntrain(args))
    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))  # exact ground truth (cached) on every core
    print("exact ground truth (cached after the first run)...", flush=True)
    gt = ground_truth(xb, xq, 10, cache_dir=args.cache)
    faiss.omp_set_num_threads(1)
    print(f"data: {args.nb} x {args.d} database, {args.nq} queries, {len(xt)} training vectors "
          f"({time.perf_counter() - t0:.1f} s with ground truth)", flush=True)
    t = time.perf_counter()
    print(f"training {args.factory} on {len(xt):,} vectors...", flush=True)
    trained = DistributedIndex.train(args.factory, xt)
    train_s = time.perf_counter() - t
    print(f"trained {args.factory} in {train_s:.1f} s", flush=True)
    k, nprobe = args.k, args.nprobe
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[tuple[float, float]]] = {}

    # ---- single-process Faiss (1 thread)
    single = faiss.deserialize_index(faiss.serialize_index(trained))
    t = time.perf_counter()
    add_with_progress(single, xb, "faiss 1 process: adding")
    build = time.perf_counter() - t
    single.nprobe = nprobe
    D0, I0 = single.search(xq, k)
    row: dict[str, Any] = {"system": "faiss 1 process", "build_s": build,
                           "bytes_per_vector": file_bytes(single) / args.nb,
                           "1-R@1": one_recall_at(I0, gt, 1), "R@10": one_recall_at(I0, gt, 10), "identical": 1.0}
    for b in BATCHES:
        lat, qps = faiss_latency(single, xq[:sample(b, args)], k, b, reps(b, args))
        row[f"qps@{b}"], row[f"p50@{b}"], row[f"p99@{b}"] = qps, pct(lat, 50), pct(lat, 99)
    rows.append(row)
    curves["faiss 1 process"] = []
    for p in args.curve:
        single.nprobe = p
        _, I = single.search(xq, k)
        _, qps = faiss_latency(single, xq, k, 1000 if args.nq >= 1000 else args.nq, 1)
        curves["faiss 1 process"].append((one_recall_at(I, gt, 1), qps, one_recall_at(I, gt, 10), p))
    single.nprobe = nprobe
    print(f"faiss: built in {build:.1f} s, 1-R@1 {row['1-R@1']:.3f}", flush=True)

    # ---- disto: a local cluster of max(shards) node processes, one shard actor per process
    breakdown: dict[int, dict[str, float]] = {}
    indexes: dict[str, DistributedIndex] = {}
    async with disto.LocalCluster(max(args.shards), dashboard=args.dashboard) as cluster:
        if cluster.dashboard_link:
            print(f"dashboard: {cluster.dashboard_link}", flush=True)
        for nshards in args.shards:
            name = f"disto {nshards} shard{'s' if nshards > 1 else ''}"
            ix = await DistributedIndex.from_trained(cluster, trained, shards=nshards, nprobe=nprobe,
                                                     nodes=cluster.nodes[:nshards], factory=args.factory)
            t = time.perf_counter()
            await ix.add(xb)
            build = time.perf_counter() - t
            r = await ix.search(xq, k, nprobe)
            row = {"system": name, "build_s": build, "bytes_per_vector": float("nan"),
                   "1-R@1": one_recall_at(r.labels, gt, 1), "R@10": one_recall_at(r.labels, gt, 10),
                   "identical": same_rows(r.labels, I0, r.distances, D0)}
            for b in BATCHES:
                q = xq[:sample(b, args)]
                lat, _, timings = await disto_latency(ix, q, k, nprobe, b, reps(b, args),
                                                      floor=floor if b == max(BATCHES) else None)
                # throughput with two batches in flight, so every shard has the next one queued
                _, qps, _ = await disto_latency(ix, q, k, nprobe, b, reps(b, args), inflight=2)
                row[f"qps@{b}"], row[f"p50@{b}"], row[f"p99@{b}"] = qps, pct(lat, 50), pct(lat, 99)
                if b == max(BATCHES):
                    breakdown[nshards] = {key: statistics.median(tm[key] for tm in timings) for key in timings[0]}
            if args.save and nshards == max(args.shards):
                with tempfile.TemporaryDirectory() as d:
                    await ix.save(d)
                    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if "shard" in f)
                    row["bytes_per_vector"] = size / args.nb
            rows.append(row)
            curves[name] = []
            for p in args.curve:
                rr = await ix.search(xq, k, p)
                _, qps, _ = await disto_latency(ix, xq, k, p, 1000 if args.nq >= 1000 else args.nq, 1, 2)
                curves[name].append((one_recall_at(rr.labels, gt, 1), qps, one_recall_at(rr.labels, gt, 10), p))
            print(f"{name}: built in {build:.1f} s, identical rows {row['identical']:.4f}", flush=True)
            indexes[name] = ix
        rounds = await interleaved_qps(single, indexes, xq, k, nprobe, args.rounds)
        for row in rows:
            row["qps@1000"] = statistics.median(rounds[row["system"]])
            row["qps@1000 rounds"] = rounds[row["system"]]
        for ix in indexes.values():
            await ix.close()
    return {"rows": rows, "curves": curves, "breakdown": breakdown, "train_s": train_s}


async def interleaved_qps(single: Any, indexes: dict[str, DistributedIndex], xq: np.ndarray, k: int,
                          nprobe: int, rounds: int) -> dict[str, list[float]]:
    """Queries/s at batch 1000 of every system, measured in turns (Faiss, disto 1 shard, disto 2 shards,
    Faiss, ...), so that each ratio compares measurements a few seconds apart on this shared, noisy host."""
    batch = min(1000, len(xq))
    out: dict[str, list[float]] = {"faiss 1 process": [], **{name: [] for name in indexes}}
    for _ in range(rounds):
        _, qps = faiss_latency(single, xq, k, batch, 1)
        out["faiss 1 process"].append(qps)
        for name, ix in indexes.items():
            _, qps, _ = await disto_latency(ix, xq, k, nprobe, batch, 1, inflight=2)
            out[name].append(qps)
    return out


def report(res: dict[str, Any], args: argparse.Namespace) -> None:
    rows = res["rows"]
    print(f"\n{args.factory}, nprobe={args.nprobe}, k={args.k}, {args.nb} x {args.d}, {args.nq} queries; "
          f"training {res['train_s']:.1f} s; {len(os.sched_getaffinity(0))} cores")
    head = f"{'system':<18} {'1-R@1':>6} {'R@10':>6} {'same':>7} {'B/vec':>6} {'build s':>7}"
    for b in BATCHES:
        head += f" {'qps@' + str(b):>9} {'p50 ms':>7} {'p99 ms':>7}"
    print(head)
    for r in rows:
        line = (f"{r['system']:<18} {r['1-R@1']:>6.3f} {r['R@10']:>6.3f} {r['identical']:>7.4f} "
                f"{r['bytes_per_vector']:>6.1f} {r['build_s']:>7.1f}")
        for b in BATCHES:
            line += f" {r[f'qps@{b}']:>9.0f} {r[f'p50@{b}'] * 1e3:>7.2f} {r[f'p99@{b}'] * 1e3:>7.2f}"
        print(line)
    base = rows[0]["qps@1000 rounds"]
    one = next((r["qps@1000 rounds"] for r in rows if r["system"] == "disto 1 shard"), None)
    print(f"queries/s at batch 1000: median of {len(base)} rounds taken in turns; ratios are medians of the "
          "per-round ratios")
    for r in rows[1:]:
        mine = r["qps@1000 rounds"]
        vs_faiss = statistics.median(a / b for a, b in zip(mine, base))
        extra = f", {statistics.median(a / b for a, b in zip(mine, one)):.2f}x disto 1 shard" if one else ""
        spread = f" (rounds {min(a / b for a, b in zip(mine, base)):.2f}-{max(a / b for a, b in zip(mine, base)):.2f})"
        print(f"  {r['system']}: {vs_faiss:.2f}x faiss 1 process{spread}{extra}")
    print("\nbatch of 1000, median per batch: coarse | fan-out wait | slowest shard's Faiss | merge (ms); "
          "overhead = fan-out - shard (us), with send and return; the same pattern over plain sockets right after each "
          "batch (floor, us); overhead - floor, per batch (us)")
    for n, bd in res["breakdown"].items():
        print(f"  {n} shard(s): {bd['coarse'] * 1e3:.2f} | {bd['fanout'] * 1e3:.2f} | {bd['shard'] * 1e3:.2f} | "
              f"{bd['merge'] * 1e3:.2f}; overhead {bd['overhead'] * 1e6:.0f} (send {bd['send'] * 1e6:.0f}, "
              f"return {bd['return'] * 1e6:.0f}); floor {bd['floor'] * 1e6:.0f} (send "
              f"{bd['floor_send'] * 1e6:.0f}, return {bd['floor_return'] * 1e6:.0f}); "
              f"disto over the floor {bd['over_floor'] * 1e6:.0f}")


def plot(res: dict[str, Any], args: argparse.Namespace, path: str) -> None:
    try:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, col, label in ((axes[0], 2, "R@10 (true nearest in the top 10)"), (axes[1], 0, "1-R@1")):
        for name, pts in res["curves"].items():
            ax.plot([p[1] for p in pts], [p[col] for p in pts], marker="o", label=name)
            if name.startswith("faiss"):
                for p in pts:
                    ax.annotate(f"nprobe {p[3]}", (p[1], p[col]), fontsize=7, textcoords="offset points",
                                xytext=(4, -10))
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("queries/s at batch 1000 (log)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{args.factory}, {args.nb:,} x {args.d}: recall vs throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nb", type=int, default=200_000, help="database vectors (1000000 for the full set)")
    p.add_argument("--nq", type=int, default=5000, help="queries")
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--ntrain", type=int, default=None, help="training sample (default max(20k, 40 per IVF list, nb/10))")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--factory", default="IVF1024,PQ16")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--shards", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    p.add_argument("--curve", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64],
                   help="nprobe values of the recall-vs-QPS plot")
    p.add_argument("--rounds", type=int, default=7, help="turns of the interleaved queries/s measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/disto/search"), help="ground-truth cache")
    p.add_argument("--out", default="search-results", help="folder for the JSON and the plot")
    p.add_argument("--dashboard", metavar="HOST:PORT", help="serve the live dashboard there (e.g. 127.0.0.1:8265): "
                   "the shards show as actors")
    p.add_argument("--no-save", dest="save", action="store_false", help="skip the save (bytes/vector of shards)")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse()
    res = disto.run(main(args))
    report(res, args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "search.json"), "w") as fh:
        json.dump({"args": vars(args), **{k: v for k, v in res.items()}}, fh, indent=1, default=str)
    plot(res, args, os.path.join(args.out, "recall-qps.png"))
    sys.exit(0)
