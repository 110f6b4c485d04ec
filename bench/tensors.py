"""W4: tensors to an actor in another process on this host, which returns their sum.

For 1 MB, 64 MB and 256 MB float32 tensors: the shared-memory value path (the default on one host), a tensor
already in shared memory (by reference), the same tensor forced over TCP, next to a raw uvloop socket sending the
same bytes into a reused buffer and a memcpy of the same size, all in one run. Medians of interleaved repeats:
each round takes every figure once, in the same order.

    python bench/tensors.py            # full run
    python bench/tensors.py --quick    # smoke test (CI)
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

import numpy as np
import torch

import disto

HERE = os.path.dirname(os.path.abspath(__file__))
MB = 1 << 20


class Summer(disto.Actor):
    def total(self, t: torch.Tensor) -> float:
        return float(t.sum())

    def count(self, t: torch.Tensor) -> float:
        return float(t.numel())  # receives the tensor without reading it: the cost of the transfer alone

    def ping(self) -> int:
        return 0  # an empty call to the same actor: the fixed cost every call pays

    def compute_time(self, t: torch.Tensor) -> float:
        t0 = time.perf_counter()
        float(t.sum())
        return time.perf_counter() - t0  # the actor's own compute, timed where it runs (its threads, its memory)


def raw_floor(port: int, size: int, n: int) -> list[float]:
    out = subprocess.run([sys.executable, os.path.join(HERE, "_raw_bulk.py"), "client", str(port), str(size),
                          str(n)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


async def main(args: argparse.Namespace) -> dict:
    sizes = [1 * MB, 16 * MB] if args.quick else [1 * MB, 64 * MB, 256 * MB]
    repeat = 2 if args.quick else args.repeat
    server = subprocess.Popen([sys.executable, os.path.join(HERE, "_raw_bulk.py"), "server"], stdout=subprocess.PIPE,
                              text=True)
    port = int(server.stdout.readline())
    rows = []
    try:
        async with disto.LocalCluster(nodes=1) as cluster:
            s = await cluster.nodes[0].spawn(Summer)
            await s.total(torch.ones(4))
            for size in sizes:
                n = size // 4
                t = torch.ones(n)
                shared = disto.shared_tensor(n)
                shared.fill_(1.0)
                dst = np.empty(size, dtype=np.uint8)
                src = t.numpy().view(np.uint8)
                times: dict[str, list[float]] = {k: [] for k in ("memcpy", "raw", "shm", "shared", "shared0", "tcp",
                                                                 "empty", "sum", "ref_extra")}
                # every figure is taken once per round, in the same order, so that a burst of noise on this shared
                # machine lands on all of them alike (a ratio of medians taken in separate blocks swings with it)
                iters = 3 if size >= 256 * MB else 5 if size > 16 * MB else 25
                for _ in range(repeat):
                    for _ in range(iters):
                        t0 = time.perf_counter()
                        np.copyto(dst, src)
                        times["memcpy"].append(time.perf_counter() - t0)
                        times["sum"].append(await s.compute_time(t))
                        t0 = time.perf_counter()
                        await s.ping()
                        times["empty"].append(time.perf_counter() - t0)
                        # (the by-reference call that does not read comes right after a call that copies and sums,
                        # as the empty call does: above 32 MB those leave the caches cold for whatever comes next)
                        for name, value, mode in (("shm", t, "auto"), ("shared0", shared, "auto"),
                                                  ("shared", shared, "auto"), ("tcp", t, "tcp")):
                            method = s.count if name == "shared0" else s.total
                            with disto.transfer(mode):
                                t0 = time.perf_counter()
                                total = await method(value)
                                times[name].append(time.perf_counter() - t0)
                            assert total == n
                    times["raw"] += await asyncio.get_running_loop().run_in_executor(None, raw_floor, port, size,
                                                                                     iters)
                    # the by-reference call's own cost: an empty call and the call with the shared tensor back to
                    # back, the difference of each pair (a difference of two medians is mostly this VM's noise)
                    for _ in range(100 if size <= 16 * MB else iters):
                        t0 = time.perf_counter()
                        await s.ping()
                        t1 = time.perf_counter()
                        await s.count(shared)
                        times["ref_extra"].append((time.perf_counter() - t1) - (t1 - t0))
                med = {k: statistics.median(v) for k, v in times.items()}
                rows.append((size, med))
                del shared
    finally:
        server.kill()
        server.wait()
    from disto.wire import codec
    print(f"\nW4 tensor to an actor in another process, which returns its sum  {time.strftime('%Y-%m-%d %H:%M')}  "
          f"codec: {codec.IMPLEMENTATION}  "
          f"{platform.node()}  {os.cpu_count()} cores  (medians; GB/s = size / time per call)")
    print(f"{'size':>7} | {'memcpy':>19} | {'raw socket':>19} | {'disto shm (value)':>19} | "
          f"{'disto shared (ref)':>19} | {'shared, not read':>19} | {'disto tcp':>19} | tcp/raw")
    for size, med in rows:
        def cell(k: str) -> str:
            return f"{size / med[k] / 1e9:5.2f}GB/s {med[k] * 1e3:7.2f}ms"
        print(f"{size // MB:>5}MB | " + " | ".join(cell(k) for k in ("memcpy", "raw", "shm", "shared", "shared0",
                                                                      "tcp"))
              + f" | {med['raw'] / med['tcp']:.2f}x")
    print("\nagainst the ideal (an empty call + one memcpy + the actor's sum timed in the actor, all measured in the same run):")
    print(f"{'size':>7} | {'empty call':>10} | {'ideal':>9} | {'shm value':>9} | {'value/ideal':>11} | "
          f"{'by ref':>9} | {'ref - empty':>11} | {'paired':>8}")
    for size, med in rows:
        ideal = med["empty"] + med["memcpy"] + med["sum"]
        print(f"{size // MB:>5}MB | {med['empty'] * 1e3:>8.3f}ms | {ideal * 1e3:>7.3f}ms | {med['shm'] * 1e3:>7.3f}ms | "
              f"{med['shm'] / ideal:>10.2f}x | {med['shared0'] * 1e3:>7.3f}ms | "
              f"{(med['shared0'] - med['empty']) * 1e6:>8.0f} µs | {med['ref_extra'] * 1e6:>5.0f} µs")
    print("(paired: the median over pairs of an empty call and a by-reference call made back to back, of their "
          "difference)")
    print(f"load average: {os.getloadavg()}")
    return {"rows": [{"size": s, **m} for s, m in rows]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    result = disto.run(main(a))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
