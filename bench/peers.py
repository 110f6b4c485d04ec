"""disto against its peers (Ray, torch.distributed.rpc, Dask) on six workloads, in one run, with the raw-socket floor.

    python bench/peers.py                                   # disto and the raw floor
    python bench/peers.py --peers-python /opt/peers/bin/python   # + Ray, torch rpc and Dask where installed
    python bench/peers.py --quick                           # smoke test (CI)

W1 sequential round trip to an actor in another process (p50); W2 50,000 calls with 1,000 in flight; W4 a 256 MB
float32 numpy array / torch tensor sent to an actor that returns its sum; W5 create and first-call 100 actors;
W6 a remote exception's round trip, and SIGKILL of the actor's process during a call (time until the caller's
error). Each system runs in its own process (``--child NAME``), one after the other, so they do not share cores.
The peers are never installed by disto: install them yourself (a separate venv is best). Every server binds
127.0.0.1: Ray with usage stats off and a token, torch rpc with a file init method.
Prints one table with ratios to disto and writes JSON (bench/results/peers-<date>.json).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEMS = ("raw", "disto", "ray", "torchrpc", "dask")
MB = 1 << 20


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"w1": 200, "w2": 2_000, "inflight": 200, "w4_mb": 16, "w4_reps": 2, "w5": 4}
    return {"w1": 2_000, "w2": 50_000, "inflight": 1_000, "w4_mb": 256, "w4_reps": 5, "w5": 100}


def p50_us(lat_s: list[float]) -> float:
    return statistics.median(lat_s) * 1e6


def gbps(nbytes: int, secs: list[float]) -> float:
    return nbytes / statistics.median(secs) / 1e9


class _Echo:
    """The actor of every workload, as a plain class: each system wraps it its own way."""

    def ping(self, x: int) -> int:
        return x

    def total(self, x: Any) -> float:
        return float(x.sum())

    def fail(self) -> None:
        raise ValueError("boom")

    def pid(self) -> int:
        return os.getpid()

    def hang(self) -> None:
        time.sleep(3600)


def timed(fn: Callable[[int], Any], n: int) -> list[float]:
    """Seconds of each of n sequential calls fn(0), fn(1), ..."""
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


async def atimed(fn: Callable[[int], Any], n: int) -> list[float]:
    """Seconds of each of n sequential awaited calls fn(0), fn(1), ... (the async twin of :func:`timed`)."""
    out = []
    for i in range(n):
        t = time.perf_counter()
        await fn(i)
        out.append(time.perf_counter() - t)
    return out


def arrays(n: int) -> list[tuple[str, Any]]:
    import torch

    return [("w4_numpy_gbps", np.ones(n // 4, np.float32)), ("w4_torch_gbps", torch.ones(n // 4))]


def blocking_workloads(out: dict[str, Any], sz: dict[str, int], ping: Callable[[int], Any],
                       total: Callable[[Any], Any], fail: Callable[[], Any]) -> None:
    """W1, W4 and W6's exception round trip, for a peer whose calls block until they return."""
    timed(ping, 200)  # warm up
    out["w1_us"] = p50_us(timed(ping, sz["w1"]))
    out["listeners"] = listeners_not_on_loopback()
    n = sz["w4_mb"] * MB
    for key, x in arrays(n):
        total(x)
        out[key] = gbps(n, timed(lambda _i: total(x), sz["w4_reps"]))
    lat = []
    for _ in range(20):
        t = time.perf_counter()
        try:
            fail()
        except Exception:
            lat.append(time.perf_counter() - t)
    out["w6_exception_us"] = p50_us(lat)


def windowed_calls_per_s(call: Callable[[int], Any], wait: Callable[[Any], Any], n: int, inflight: int) -> float:
    """W2 for a peer with blocking waits on its futures: ``n`` calls, at most ``inflight`` outstanding."""
    t = time.perf_counter()
    futs: list[Any] = []
    for i in range(n):
        futs.append(call(i))
        if len(futs) >= inflight:
            wait(futs.pop(0))
    for f in futs:
        wait(f)
    return n / (time.perf_counter() - t)


def kill_during_call(out: dict[str, Any], pid: int, wait: Callable[[], Any]) -> None:
    """W6: SIGKILL the process running a call; time until the caller's wait() raises."""
    time.sleep(0.2)
    t = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    try:
        wait()
    except Exception as e:
        out["w6_kill_ms"] = (time.perf_counter() - t) * 1e3
        out["w6_kill_error"] = type(e).__name__


# ============================================================================ adapters (each runs in a child)
def child_raw(sz: dict[str, int]) -> dict[str, Any]:
    server = subprocess.Popen([sys.executable, os.path.join(HERE, "_raw_echo.py"), "server"], stdout=subprocess.PIPE,
                              text=True)
    bulk = subprocess.Popen([sys.executable, os.path.join(HERE, "_raw_bulk.py"), "server"], stdout=subprocess.PIPE,
                            text=True)
    try:
        port, bport = server.stdout.readline().strip(), bulk.stdout.readline().strip()

        def run(script: str, *args: Any) -> Any:
            out = subprocess.run([sys.executable, os.path.join(HERE, script), *map(str, args)], capture_output=True,
                                 text=True, check=True)
            return json.loads(out.stdout)

        lat = run("_raw_echo.py", "w1", port, sz["w1"])
        el = run("_raw_echo.py", "w2", port, sz["w2"], sz["inflight"])
        n = sz["w4_mb"] * MB
        bulk_s = run("_raw_bulk.py", "client", bport, n, sz["w4_reps"])
        return {"w1_us": statistics.median(lat) / 1e3, "w2_cps": sz["w2"] / el,
                "w4_numpy_gbps": gbps(n, bulk_s), "w4_torch_gbps": gbps(n, bulk_s)}
    finally:
        server.kill()
        bulk.kill()


def child_disto(sz: dict[str, int]) -> dict[str, Any]:
    import disto

    class Echo(_Echo, disto.Actor):
        async def hang(self) -> None:  # an async actor must not block its node's loop
            await asyncio.sleep(3600)

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with disto.LocalCluster(nodes=2) as cluster:
            a = await cluster.nodes[0].spawn(Echo)
            await atimed(a.ping, 200)  # warm up
            out["w1_us"] = p50_us(await atimed(a.ping, sz["w1"]))
            out["listeners"] = listeners_not_on_loopback()
            t = time.perf_counter()
            await disto.window([lambda i=i: a.ping(i) for i in range(sz["w2"])], sz["inflight"])
            out["w2_cps"] = sz["w2"] / (time.perf_counter() - t)
            n = sz["w4_mb"] * MB
            for key, x in arrays(n):
                await a.total(x)
                out[key] = gbps(n, await atimed(lambda _i, x=x: a.total(x), sz["w4_reps"]))
            t = time.perf_counter()
            refs = await disto.collect(cluster.nodes[1].spawn(Echo) for _ in range(sz["w5"]))
            await disto.collect(r.ping(1) for r in refs)
            out["w5_ms_per_actor"] = (time.perf_counter() - t) / sz["w5"] * 1e3
            lat = []
            for _ in range(20):
                t = time.perf_counter()
                try:
                    await a.fail()
                except ValueError:
                    lat.append(time.perf_counter() - t)
            out["w6_exception_us"] = p50_us(lat)
            victim = cluster.nodes[1]
            b = await victim.spawn(Echo)
            pending = b.hang()
            await asyncio.sleep(0.2)
            t = time.perf_counter()
            os.kill(victim.pid, signal.SIGKILL)
            try:
                await asyncio.wait_for(pending, 120)
            except disto.DistoError as e:
                out["w6_kill_ms"] = (time.perf_counter() - t) * 1e3
                out["w6_kill_error"] = type(e).__name__
            cluster.nodes = cluster.nodes[:1]  # the killed node cannot be asked to shut down
        return out

    return disto.run(main())


def child_ray(sz: dict[str, int]) -> dict[str, Any]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)

    Echo = ray.remote(_Echo)
    out: dict[str, Any] = {}
    try:
        a = Echo.remote()
        blocking_workloads(out, sz, lambda i: ray.get(a.ping.remote(i)), lambda x: ray.get(a.total.remote(x)),
                           lambda: ray.get(a.fail.remote()))
        t = time.perf_counter()
        pending: list[Any] = []
        issued = 0
        while issued < sz["w2"] or pending:
            while issued < sz["w2"] and len(pending) < sz["inflight"]:
                pending.append(a.ping.remote(issued))
                issued += 1
            _, pending = ray.wait(pending, num_returns=min(len(pending), 100))
        out["w2_cps"] = sz["w2"] / (time.perf_counter() - t)
        t = time.perf_counter()
        actors = [Echo.remote() for _ in range(sz["w5"])]
        ray.get([x.ping.remote(1) for x in actors])
        out["w5_ms_per_actor"] = (time.perf_counter() - t) / sz["w5"] * 1e3
        for x in actors:
            ray.kill(x)
        b = Echo.remote()
        pid = ray.get(b.pid.remote())  # before the hanging call: an actor runs one call at a time
        ref = b.hang.remote()
        kill_during_call(out, pid, lambda: ray.get(ref, timeout=120))
    finally:
        ray.shutdown()
    return out


def _torch_callee(init: str) -> None:
    import torch.distributed.rpc as rpc

    rpc.init_rpc("callee", rank=1, world_size=2, rpc_backend_options=rpc.TensorPipeRpcBackendOptions(
        init_method=init, rpc_timeout=120))
    rpc.shutdown(graceful=True)


def child_torchrpc(sz: dict[str, int]) -> dict[str, Any]:
    import multiprocessing as mp

    import torch.distributed.rpc as rpc

    tmp = tempfile.mkdtemp()
    init = f"file://{tmp}/rendezvous"  # a tcp:// init method listens on every interface
    ctx = mp.get_context("spawn")
    callee = ctx.Process(target=_torch_callee, args=(init,))
    callee.start()
    rpc.init_rpc("caller", rank=0, world_size=2, rpc_backend_options=rpc.TensorPipeRpcBackendOptions(
        init_method=init, rpc_timeout=120))
    out: dict[str, Any] = {}
    try:
        a = rpc.remote("callee", _Echo)
        blocking_workloads(out, sz, lambda i: a.rpc_sync().ping(i), lambda x: a.rpc_sync().total(x),
                           lambda: a.rpc_sync().fail())
        out["w2_cps"] = windowed_calls_per_s(lambda i: a.rpc_async().ping(i), lambda f: f.wait(), sz["w2"],
                                             sz["inflight"])
        t = time.perf_counter()
        objs = [rpc.remote("callee", _Echo) for _ in range(sz["w5"])]
        for o in objs:
            o.rpc_sync().ping(1)
        out["w5_ms_per_actor"] = (time.perf_counter() - t) / sz["w5"] * 1e3
        pid = a.rpc_sync().pid()
        fut = a.rpc_async().hang()
        kill_during_call(out, pid, fut.wait)
    finally:
        try:
            rpc.shutdown(graceful=False)
        except Exception:
            pass
        callee.kill()
    return out


def child_dask(sz: dict[str, int]) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    Echo = _Echo
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    client = Client(cluster)
    workers = list(client.scheduler_info()["workers"])
    out: dict[str, Any] = {}
    try:
        a = client.submit(Echo, actor=True, workers=workers[:1]).result()
        blocking_workloads(out, sz, lambda i: a.ping(i).result(), lambda x: a.total(x).result(),
                           lambda: a.fail().result())
        out["w2_cps"] = windowed_calls_per_s(a.ping, lambda f: f.result(), sz["w2"], sz["inflight"])
        t = time.perf_counter()
        actors = [client.submit(Echo, actor=True, workers=workers[1:], pure=False).result()
                  for _ in range(sz["w5"])]
        for x in actors:
            x.ping(1).result()
        out["w5_ms_per_actor"] = (time.perf_counter() - t) / sz["w5"] * 1e3
        b = actors[0]
        pid = b.pid().result()
        fut = b.hang()
        kill_during_call(out, pid, lambda: fut.result(timeout=120))
    finally:
        client.close()
        cluster.close()
    return out


CHILDREN: dict[str, Callable[[dict[str, int]], dict[str, Any]]] = {
    "raw": child_raw, "disto": child_disto, "ray": child_ray, "torchrpc": child_torchrpc, "dask": child_dask}
NEEDS = {"ray": "ray", "torchrpc": "torch.distributed.rpc", "dask": "distributed"}


# ============================================================================ the parent
def listeners_not_on_loopback() -> list[str]:
    """TCP listeners on anything but 127.0.0.1 / ::1 (`ss -ltn`), to check every system bound loopback only."""
    try:
        out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    bad = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and not parts[3].startswith(("127.", "[::1]", "::1", "[::ffff:127.")):
            bad.append(parts[3])
    return bad


def run_child(name: str, python: str, quick: bool, timeout: float) -> dict[str, Any]:
    mod = NEEDS.get(name)
    if mod:
        probe = subprocess.run([python, "-c", f"import {mod}"], capture_output=True, text=True)
        if probe.returncode != 0:
            return {"skipped": f"{mod} is not installed for {python}"}
    cmd = [python, os.path.abspath(__file__), "--child", name] + (["--quick"] if quick else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.path.dirname(HERE),
                                                                     os.environ.get("PYTHONPATH")) if p))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or f"exit {proc.returncode}"}


ROWS = [("W1 round trip p50 (µs)", "w1_us", False), ("W2 pipelined calls/s", "w2_cps", True),
        ("W4 256 MB numpy (GB/s)", "w4_numpy_gbps", True), ("W4 256 MB torch (GB/s)", "w4_torch_gbps", True),
        ("W5 create + first call (ms/actor)", "w5_ms_per_actor", False),
        ("W6 remote exception (µs)", "w6_exception_us", False), ("W6 kill -9 -> error (ms)", "w6_kill_ms", False)]


def table(results: dict[str, dict[str, Any]], quick: bool) -> str:
    names = [n for n in SYSTEMS if n in results]
    head = f"{'workload':<36}" + "".join(f"{n:>16}" for n in names)
    lines = [head]
    for label, key, higher in ROWS:
        if quick:
            label = label.replace("256 MB", "16 MB")
        ours = results.get("disto", {}).get(key)
        cells = []
        for n in names:
            v = results[n].get(key)
            if not isinstance(v, (int, float)):
                cells.append(f"{'-':>16}")
                continue
            txt = f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"
            if n != "disto" and isinstance(ours, (int, float)) and v and ours:
                ratio = (ours / v) if higher else (v / ours)
                txt += f" ({ratio:.1f}x)"
            cells.append(f"{txt:>16}")
        lines.append(f"{label:<36}" + "".join(cells))
    notes = [f"  {n}: {r.get('skipped') or r.get('error')}" for n, r in results.items()
             if r.get("skipped") or r.get("error")]
    notes += [f"  {n} listened beyond loopback on: {', '.join(r['exposed'])}" for n, r in results.items()
              if r.get("exposed")]
    kills = [f"{n}: {r['w6_kill_error']}" for n, r in results.items() if r.get("w6_kill_error")]
    lines.append("(x): how many times better disto is (>1: disto ahead). Errors on kill -9: " + ", ".join(kills))
    return "\n".join(lines + notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--peers-python", default=sys.executable,
                    help="interpreter that has ray / torch / distributed installed (disto runs on this one)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](sizes(args.quick))), flush=True)
        return
    results: dict[str, dict[str, Any]] = {}
    baseline = set(listeners_not_on_loopback())
    for name in args.systems.split(","):
        python = sys.executable if name in ("raw", "disto") else args.peers_python
        print(f"running {name} ...", flush=True)
        results[name] = run_child(name, python, args.quick, args.timeout)
        # listeners the system opened on anything but loopback, seen while it ran
        results[name]["exposed"] = sorted(set(results[name].pop("listeners", [])) - baseline)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    head = (f"disto vs peers  {stamp}  {platform.node()}  {os.cpu_count()} cores  "
            f"Python {platform.python_version()}" + ("  (quick)" if args.quick else ""))
    text = table(results, args.quick)
    print("\n" + head + "\n" + text)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"peers-{datetime.date.today()}{'-quick' if args.quick else ''}.json")
    with open(path, "w") as fh:
        json.dump({"date": stamp, "machine": platform.node(), "cores": os.cpu_count(), "quick": args.quick,
                   "results": results, "table": text}, fh, indent=1)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
