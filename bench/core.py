"""Core runtime benchmark: W1 round trip, W2 pipelined calls, W3 two callers -> one actor, local calls, and
streamed items.

Each disto figure is printed next to the raw uvloop TCP echo floor measured in the same run. Every measurement is
repeated ``--repeat`` times, interleaved (floor, disto, floor, disto, ...), and the median is shown.

The target's ``ping`` is a plain sync method, so it runs on its actor's thread (the default: a method may block
without stalling the node); rows marked "@on_loop" and "async" run the same method inline on the node's event
loop and as an async method, which is what the thread costs. "stream" is an async generator method yielding
small ints, taken with ``async for``. "pinned" rows repeat W1 and W2 with every thread of the callee's node and
of the echo server on core 0 and the caller on core 0 ("same core": what each side's software costs, no
parallelism) or core 1 ("cross core": what a user sees on two cores), the floor pinned the same way. On the same
core, W1 of the @on_loop method is also taken with other payloads than an int: a dict of metrics as the reply
("loop, dict reply"), an int and a keyword argument ("loop, kwargs"), a short list there and back ("loop, list
both").

    python bench/core.py                 # full run (about a minute)
    python bench/core.py --quick         # smoke test (CI)
    python bench/core.py --json out.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import disto

HERE = os.path.dirname(os.path.abspath(__file__))
RAW = os.path.join(HERE, "_raw_echo.py")


on_loop = getattr(disto, "on_loop", lambda fn: fn)  # (older disto, for bench/ab.py: everything ran on the loop)


class Echo(disto.Actor):
    def ping(self, x: int) -> int:
        return x


class EchoOnLoop(disto.Actor):
    @on_loop
    def ping(self, x: int) -> int:
        return x

    @on_loop
    def stats(self, x: int) -> dict:  # what a method reporting metrics returns
        return {"loss": 0.5, "step": x, "lr": 1e-3}

    @on_loop
    def kw(self, x: int, y: int = 0) -> int:  # called with a keyword argument
        return x


class EchoAsync(disto.Actor):
    async def ping(self, x: int) -> int:
        return x

    async def count(self, n: int):  # noqa: ANN201 - an async generator method: a stream
        for i in range(n):
            yield i


class Caller(disto.Actor):
    async def flood(self, target: disto.ActorRef, n: int, inflight: int) -> float:
        return await pipelined(target, n, inflight)


async def pipelined(ref: disto.ActorRef, n: int, inflight: int, gap: list[float] | None = None) -> float:
    """n calls to ref.ping with `inflight` outstanding at all times; returns elapsed seconds. ``gap``: a list
    that gets the longest time between two replies (a pause of the callee's, such as a full garbage collection)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    issued = completed = 0
    last = longest = 0.0

    def on_done(f: asyncio.Future) -> None:
        nonlocal completed, last, longest
        if gap is not None:
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now
        completed += 1
        if f.exception() is not None and not done.done():
            done.set_exception(f.exception())
        if issued < n:
            issue()
        elif completed == n and not done.done():
            done.set_result(None)

    def issue() -> None:
        nonlocal issued
        issued += 1
        ref.ping(issued).add_done_callback(on_done)

    t0 = last = time.perf_counter()
    for _ in range(min(inflight, n)):
        issue()
    await done
    if gap is not None:
        gap.append(longest)
    return time.perf_counter() - t0


def codec_in_use() -> str:
    """Which CALL/REPLY codec this process (and the nodes it starts) runs: compiled or python."""
    try:
        from disto.wire import codec
    except ImportError:  # an older disto (bench/ab.py): pure Python only
        return "python"
    return codec.IMPLEMENTATION


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def raw(*args: str, core: int | None = None) -> object:
    pin = ["taskset", "-c", str(core)] if core is not None else []
    out = subprocess.run([*pin, sys.executable, RAW, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def pin(pid: int, cores: set[int]) -> dict[int, set[int]]:
    """Pin every thread of ``pid`` to ``cores`` (threads it starts later inherit it); their old masks."""
    old = {}
    for tid in map(int, os.listdir(f"/proc/{pid}/task")):
        try:
            old[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cores)
        except OSError:
            pass  # a thread that just ended
    return old


def unpin(old: dict[int, set[int]]) -> None:
    for tid, cores in old.items():
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:
            pass


# the same @on_loop round trip with other payloads than an int
SHAPES = {"loop, dict reply": lambda t, i: t.stats(i), "loop, kwargs": lambda t, i: t.kw(i, y=2),
          "loop, list both": lambda t, i: t.ping([i, 2.5, "a"])}


async def pinned_rows(cluster: disto.Cluster, server_pid: int, port: int, n1: int, n2: int, repeat: int,
                      inflight: int) -> list[tuple[str, float, float]]:
    """W1 and W2 with the callee on core 0 and the caller on core 0 (same core: what each side's software
    costs) or core 1 (cross core: what a user sees on two cores), the raw echo pinned the same way, interleaved."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        return []
    loop = asyncio.get_running_loop()
    node_pid = cluster.nodes[0].pid
    target = await cluster.nodes[0].spawn(Echo)
    on_loop_target = await cluster.nodes[0].spawn(EchoOnLoop)
    rows = []
    for label, caller in (("same core", 0), ("cross core", 1)):
        res: dict[str, list[float]] = {k: [] for k in ("raw_w1", "raw_w2", "w1", "w2", "w1_loop", "w2_loop",
                                                        *SHAPES)}
        undo = pin(server_pid, {0}) | pin(node_pid, {0}) | pin(os.getpid(), {caller})
        try:
            for t in (target, on_loop_target):
                await pipelined(t, 2_000, inflight)
            for _ in range(repeat):
                lat = await loop.run_in_executor(None, lambda: raw("w1", str(port), str(n1), core=caller))
                res["raw_w1"].append(pct(lat, 0.5) / 1e3)
                el = await loop.run_in_executor(None, lambda: raw("w2", str(port), str(n2), str(inflight),
                                                                  core=caller))
                res["raw_w2"].append(n2 / el)
                for key, t in (("", target), ("_loop", on_loop_target)):
                    lat = []
                    for i in range(n1):
                        t0 = time.perf_counter_ns()
                        await t.ping(i)
                        lat.append(time.perf_counter_ns() - t0)
                    res["w1" + key].append(pct(lat, 0.5) / 1e3)
                    res["w2" + key].append(n2 / await pipelined(t, n2, inflight))
                if caller == 0:  # what a call's payload shape costs, where each side's software shows
                    for shape, call in SHAPES.items():
                        lat = []
                        for i in range(n1):
                            t0 = time.perf_counter_ns()
                            await call(on_loop_target, i)
                            lat.append(time.perf_counter_ns() - t0)
                        res[shape].append(pct(lat, 0.5) / 1e3)
        finally:
            unpin(undo)
        m = {k: statistics.median(v) for k, v in res.items() if v}
        rows += [(f"{label}: W1 p50 (µs), sync method", m["raw_w1"], m["w1"]),
                 (f"{label}: W2 calls/s, sync method", m["raw_w2"], m["w2"]),
                 (f"{label}: W1 p50 (µs), @on_loop", m["raw_w1"], m["w1_loop"]),
                 (f"{label}: W2 calls/s, @on_loop", m["raw_w2"], m["w2_loop"])]
        if caller == 0:
            rows += [(f"{label}: W1 p50 (µs), {shape}", m["raw_w1"], m[shape]) for shape in SHAPES]
    return rows


async def run_raw_w3(port: int, n: int, inflight: int) -> float:
    t0 = time.perf_counter()
    procs = [await asyncio.create_subprocess_exec(sys.executable, RAW, "w2", str(port), str(n // 2),
                                                  str(inflight // 2), stdout=asyncio.subprocess.PIPE)
             for _ in range(2)]
    await asyncio.gather(*(p.communicate() for p in procs))
    return time.perf_counter() - t0


async def main(args: argparse.Namespace) -> dict:
    n1, n2, repeat = (200, 5_000, 1) if args.quick else (3_000, 50_000, args.repeat)
    inflight = 1_000
    server = subprocess.Popen([sys.executable, RAW, "server"], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    res: dict[str, list[float]] = {k: [] for k in
                                   ("raw_w1_p50", "raw_w1_p99", "w1_p50", "w1_p99", "raw_w2", "w2", "raw_w3", "w3",
                                    "local", "w1_loop", "w2_loop", "w1_async", "w2_async", "stream",
                                    "w1_nometrics", "w2_nometrics", "group_call", "group_gather")}
    streams = hasattr(disto, "Stream")
    try:
        async with disto.LocalCluster(nodes=3) as cluster:
            target = await cluster.nodes[0].spawn(Echo)
            on_loop_target = await cluster.nodes[0].spawn(EchoOnLoop)
            async_target = await cluster.nodes[0].spawn(EchoAsync)
            callers = [await cluster.nodes[i].spawn(Caller) for i in (1, 2)]
            local = await cluster.node.spawn_local(Echo)
            service = cluster.nodes[0]._service
            no_metrics = None
            try:  # the same actor class on the same node, its calls not counted: what the metrics cost
                await service.set_metrics(False)
                no_metrics = await cluster.nodes[0].spawn(Echo)
                await service.set_metrics(True)
            except disto.DistoError:
                pass  # an older disto (bench/ab.py): no metrics to turn off
            group = None
            if hasattr(cluster, "spawn_group"):  # (older disto, for bench/ab.py: no groups)
                group = await cluster.spawn_group(Echo, 8)  # spread over the 3 nodes: 3, 3, 2
            for t in (target, on_loop_target, async_target, no_metrics or target, *(group or ())):
                await pipelined(t, 2_000, inflight)  # warm up connections and code paths
            for _ in range(repeat):
                lat = await asyncio.get_running_loop().run_in_executor(None, raw, "w1", str(port), str(n1))
                res["raw_w1_p50"].append(pct(lat, 0.5) / 1e3)
                res["raw_w1_p99"].append(pct(lat, 0.99) / 1e3)
                lat = []
                for i in range(n1):
                    t0 = time.perf_counter_ns()
                    await target.ping(i)
                    lat.append(time.perf_counter_ns() - t0)
                res["w1_p50"].append(pct(lat, 0.5) / 1e3)
                res["w1_p99"].append(pct(lat, 0.99) / 1e3)

                el = await asyncio.get_running_loop().run_in_executor(None, raw, "w2", str(port), str(n2),
                                                                      str(inflight))
                res["raw_w2"].append(n2 / el)
                res["w2"].append(n2 / await pipelined(target, n2, inflight))

                res["raw_w3"].append(n2 / await run_raw_w3(port, n2, inflight))
                t0 = time.perf_counter()
                await disto.collect([c.flood(target, n2 // 2, inflight // 2) for c in callers])
                res["w3"].append(n2 / (time.perf_counter() - t0))

                t0 = time.perf_counter()
                for i in range(n1):
                    await local.ping(i)
                res["local"].append((time.perf_counter() - t0) / n1 * 1e6)

                for key, t in (("loop", on_loop_target), ("async", async_target), ("nometrics", no_metrics)):
                    if t is None:
                        continue
                    lat = []
                    for i in range(n1):
                        t0 = time.perf_counter_ns()
                        await t.ping(i)
                        lat.append(time.perf_counter_ns() - t0)
                    res[f"w1_{key}"].append(pct(lat, 0.5) / 1e3)
                    res[f"w2_{key}"].append(n2 / await pipelined(t, n2, inflight))
                if group is not None:  # one call to all 8 members against 8 calls gathered, interleaved
                    calls, gathered = [], []
                    for i in range(n1 // 2):
                        t0 = time.perf_counter_ns()
                        await group.ping(i)
                        calls.append(time.perf_counter_ns() - t0)
                        t0 = time.perf_counter_ns()
                        await disto.collect([r.ping(i) for r in group])
                        gathered.append(time.perf_counter_ns() - t0)
                    res["group_call"].append(pct(calls, 0.5) / 1e3)
                    res["group_gather"].append(pct(gathered, 0.5) / 1e3)
                if streams:
                    t0 = time.perf_counter()
                    got = 0
                    async for _ in async_target.count(n2):
                        got += 1
                    res["stream"].append(got / (time.perf_counter() - t0))
            pinned = await pinned_rows(cluster, server.pid, port, n1, n2, repeat, inflight)
    finally:
        server.kill()
        server.wait()
    med = {k: statistics.median(v) if v else float("nan") for k, v in res.items()}
    rows = [
        ("W1 round trip p50 (µs)", med["raw_w1_p50"], med["w1_p50"], med["w1_p50"] / med["raw_w1_p50"]),
        ("W1 round trip p99 (µs)", med["raw_w1_p99"], med["w1_p99"], med["w1_p99"] / med["raw_w1_p99"]),
        ("W2 pipelined calls/s (1000 in flight)", med["raw_w2"], med["w2"], med["w2"] / med["raw_w2"]),
        ("W3 2 callers -> 1 actor, calls/s", med["raw_w3"], med["w3"], med["w3"] / med["raw_w3"]),
        ("local call, same process (µs)", float("nan"), med["local"], float("nan")),
        ("W1 p50, @on_loop method (µs)", med["raw_w1_p50"], med["w1_loop"], med["w1_loop"] / med["raw_w1_p50"]),
        ("W2 calls/s, @on_loop method", med["raw_w2"], med["w2_loop"], med["w2_loop"] / med["raw_w2"]),
        ("W1 p50, async method (µs)", med["raw_w1_p50"], med["w1_async"], med["w1_async"] / med["raw_w1_p50"]),
        ("W2 calls/s, async method", med["raw_w2"], med["w2_async"], med["w2_async"] / med["raw_w2"]),
        ("W1 p50, metrics off (µs)", med["raw_w1_p50"], med["w1_nometrics"],
         med["w1_nometrics"] / med["raw_w1_p50"]),
        ("W2 calls/s, metrics off", med["raw_w2"], med["w2_nometrics"], med["w2_nometrics"] / med["raw_w2"]),
        ("stream items/s (async generator)", med["raw_w2"], med["stream"], med["stream"] / med["raw_w2"]),
    ]
    print(f"\ndisto core benchmark  {time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  "
          f"{os.cpu_count()} cores  python {platform.python_version()}  repeats={repeat} (medians)  "
          f"codec: {codec_in_use()}")
    print(f"{'workload':<40} {'raw uvloop echo':>16} {'disto':>12} {'disto/raw':>10}")
    for name, floor, ours, ratio in rows:
        f = "-" if floor != floor else f"{floor:,.1f}"
        r = "-" if ratio != ratio else f"{ratio:.2f}x"
        print(f"{name:<40} {f:>16} {ours:>12,.1f} {r:>10}")
    if med["w1_nometrics"] == med["w1_nometrics"]:
        print(f"metrics cost (on/off, same actor class and node): W1 {med['w1_p50'] / med['w1_nometrics']:.3f}x, "
              f"W2 {med['w2_nometrics'] / med['w2']:.3f}x (time per call)")
    if pinned:
        print("\npinned (taskset-like affinity on every thread): the callee and the echo server on core 0, the caller "
              "on core 0 or 1")
        for name, floor, ours in pinned:
            print(f"{name:<44} {floor:>12,.1f} {ours:>12,.1f} {ours / floor:>9.2f}x")
    if med["group_call"] == med["group_call"]:
        print(f"group of 8 (spread over 3 nodes), p50 per call to all members: group.ping() "
              f"{med['group_call']:,.1f} µs, 8 calls gathered with collect {med['group_gather']:,.1f} µs "
              f"({med['group_call'] / med['group_gather']:.2f}x)")
    print(f"load average: {os.getloadavg()}")
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.node(), "cores": os.cpu_count(),
            "repeat": repeat, "codec": codec_in_use(), "raw": res, "median": med,
            "pinned": [{"workload": n, "raw": f, "disto": o} for n, f, o in pinned]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write raw and median results here")
    a = ap.parse_args()
    result = disto.run(main(a))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
