"""What a node process's garbage collector costs its calls: Python's defaults against disto's tuning
(``disto node start --gc tuned``, the default: young threshold 10,000 instead of 700, and what start-up and the
preloads built frozen so that full collections skip it).

One node of a LocalCluster with torch imported (the driver imports it, so the node preloads it: about 175,000
objects there, the usual case for ML work), one actor, and the two settings switched back and forth *in that
node* between interleaved rounds (``gc.unfreeze`` and Python's thresholds, then the tuning again), so both are
measured on the same process and heap. Each round: W2 (``--calls`` pipelined calls, 1,000 in flight) to a sync
method and to an ``@disto.on_loop`` one, with the longest gap between two consecutive replies (a full
collection stops every call in flight for its whole length) and the node's collections counted with
``gc.callbacks``, then W1 (sequential round trips, p50 and p99).
Every thread of the node and the caller are pinned to core 0 ("same core": what each side's CPU costs) or the
caller to core 1 ("cross core"), with ``os.sched_setaffinity``. Medians over ``--rounds``. The benchmark's own
process (torch imported there too) freezes its heap once the cluster is up, so that its own full collections
do not land in the figures of either setting.

    python bench/node_gc.py                 # about two minutes
    python bench/node_gc.py --quick         # smoke test (CI)
    python bench/node_gc.py --json out.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

import torch  # noqa: F401 - imported here so that the node preloads it (what makes its full collections long)

import disto
from core import pin, pipelined, unpin

PYTHON_DEFAULT = (700, 10, 10)
_collections = [0, 0, 0]  # in the node: collections by generation since the last count_collections()


def _count(phase: str, info: dict) -> None:
    if phase == "stop":
        _collections[info["generation"]] += 1


class Target(disto.Actor):
    def ping(self, x: int) -> int:
        return x

    @disto.on_loop
    def ping_on_loop(self, x: int) -> int:
        return x

    @disto.on_loop
    def pid(self) -> int:
        return os.getpid()

    @disto.on_loop
    def set_gc(self, tuned: bool) -> dict:
        """Switch this node process's collector: as `disto node start --gc tuned` leaves it, or Python's."""
        if tuned:
            from disto.node.process import tune_gc

            tune_gc()
        else:
            gc.unfreeze()
            gc.set_threshold(*PYTHON_DEFAULT)
        if _count not in gc.callbacks:
            gc.callbacks.append(_count)
        return {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(), "objects": len(gc.get_objects()),
                "torch": "torch" in sys.modules}

    @disto.on_loop
    def count_collections(self) -> list[int]:
        """The node's collections by generation since the last call."""
        out = list(_collections)
        _collections[:] = [0, 0, 0]
        return out


class _OnLoop:
    """The target's ``@disto.on_loop`` method under the name ``ping`` (what core.pipelined calls)."""

    def __init__(self, ref: disto.ActorRef) -> None:
        self.ping = ref.ping_on_loop


async def main(args: argparse.Namespace) -> dict:
    placements = [("same core", 0), ("cross core", 1)] if len(os.sched_getaffinity(0)) >= 2 else [("unpinned", -1)]
    res: dict[str, list[float]] = {}
    states = {}
    async with disto.LocalCluster(nodes=1) as cluster:
        t = await cluster.nodes[0].spawn(Target)
        on_loop = _OnLoop(t)
        node_pid = await t.pid()
        for target in (t, on_loop):
            await pipelined(target, 2000, args.inflight)
        # this process's own full collections (torch is imported here too) would land in the figures of both
        # settings alike: what is alive now is frozen, so that the gaps measured are the node's
        gc.collect()
        gc.freeze()
        for _ in range(args.rounds):
            for setting in ("python", "tuned"):
                states[setting] = await t.set_gc(setting == "tuned")
                for label, core in placements:
                    undo = pin(node_pid, {0}) | pin(os.getpid(), {core}) if core >= 0 else {}
                    try:
                        for kind, target in (("sync", t), ("on_loop", on_loop)):
                            gap: list[float] = []
                            await t.count_collections()
                            el = await pipelined(target, args.calls, args.inflight, gap)
                            young, middle, full = await t.count_collections()
                            res.setdefault(f"{label}|{kind}|W2 calls/s|{setting}", []).append(args.calls / el)
                            res.setdefault(f"{label}|{kind}|W2 longest gap (ms)|{setting}", []).append(gap[0] * 1e3)
                            res.setdefault(f"{label}|{kind}|W2 node full GCs|{setting}", []).append(full)
                            res.setdefault(f"{label}|{kind}|W2 node young GCs|{setting}", []).append(young)
                            lat = []
                            for i in range(args.w1):
                                t0 = time.perf_counter_ns()
                                await target.ping(i)
                                lat.append(time.perf_counter_ns() - t0)
                            lat.sort()
                            res.setdefault(f"{label}|{kind}|W1 p50 (µs)|{setting}", []).append(
                                lat[len(lat) // 2] / 1e3)
                            res.setdefault(f"{label}|{kind}|W1 p99 (µs)|{setting}", []).append(
                                lat[int(len(lat) * 0.99)] / 1e3)
                    finally:
                        unpin(undo)
        await t.set_gc(True)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"\nnode GC benchmark  {time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} cores  python "
          f"{platform.python_version()}  rounds={args.rounds} (medians)  node: {states['python']['objects']:,} "
          f"objects, torch {'imported' if states['python']['torch'] else 'not imported'}; tuned: "
          f"{states['tuned']['frozen']:,} frozen, thresholds {states['tuned']['threshold']}")
    print(f"{'placement':11} {'method':8} {'figure':22} {'python gc':>12} {'tuned':>12} {'tuned/python':>13}")
    rows = []
    for key in dict.fromkeys(k.rsplit("|", 1)[0] for k in med):
        label, kind, fig = key.split("|")
        a, b = med[f"{key}|python"], med[f"{key}|tuned"]
        rows.append({"placement": label, "method": kind, "figure": fig, "python": a, "tuned": b})
        ratio = f"{b / a:12.2f}x" if a else f"{'-':>13}"
        print(f"{label:11} {kind:8} {fig:22} {a:12,.1f} {b:12,.1f} {ratio}")
    return {"when": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.rounds, "calls": args.calls,
            "states": states, "rows": rows, "raw": res}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round (smoke test)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=50_000, help="W2 calls per measurement")
    ap.add_argument("--w1", type=int, default=3_000, help="W1 round trips per measurement")
    ap.add_argument("--inflight", type=int, default=1_000)
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.calls, a.w1 = 1, 2_000, 200
    out = disto.run(main(a))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
