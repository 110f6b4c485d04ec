"""CUDA checks for disto, to run on a machine with a GPU (scripts/gpu_check.sh). Prints a report; exits non-zero
if a check fails. Without CUDA it says so and exits 0.

Checks: CUDA tensors of 1 MB / 64 MB / 1 GB both ways between two processes on one host over CUDA IPC (contents,
and event ordering: the producer writes on a side stream and sends without synchronizing), time per call against
the same tensors forced through host memory over TCP, memory returned to the producer after the consumer lets go,
re-sharing a received CUDA tensor refused, a consumer killed with SIGKILL leaving the producer running,
placement on the real GPUs (one node per GPU, a group holding them all, one more refused), and low-communication
training on them (the LM example's DiLoCo steps on the GPU, the ddp baseline as a group over NCCL; then the
benchmark's protocol with four workers sharing the first GPU, ddp over gloo, and its rate).
"""
from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import time

import torch

import disto

MB = 1 << 20
SIZES = [1 * MB, 64 * MB, 1024 * MB]
failures: list[str] = []


def check(cond: bool, what: str) -> None:
    print(("  ok   " if cond else "  FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


class GpuPeer(disto.Actor):
    def __init__(self) -> None:
        self.kept: list = []

    def pid(self) -> int:
        return os.getpid()

    def inspect(self, t: torch.Tensor, expect: float) -> tuple[str, bool]:
        # reads on this process's current stream: correct only if the producer's event was waited on
        return str(t.device), bool((t == expect).all().item())

    def keep(self, t: torch.Tensor) -> int:
        self.kept.append(t)
        return len(self.kept)

    def drop(self) -> None:
        self.kept.clear()
        torch.cuda.synchronize()

    def make(self, nbytes: int, value: float) -> torch.Tensor:
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            t = torch.empty(nbytes // 4, device="cuda")
            torch.cuda._sleep(50_000_000)  # keep the side stream busy: a consumer that did not wait sees garbage
            t.fill_(value)
        # the reply is pickled after we return, on the current stream: order it after the side stream's work
        # (the documented contract, as for any cross-stream use in torch); no host synchronization
        torch.cuda.current_stream().wait_stream(side)
        self.kept.append(t)
        return t

    def send_back(self) -> torch.Tensor:
        return self.kept[-1]  # a received CUDA tensor: must be refused

    def gpus(self) -> tuple[str | None, int, float]:
        """What this node's process sees: CUDA_VISIBLE_DEVICES, the device count, and a sum computed on cuda:0."""
        return (os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count(),
                float(torch.ones(1000, device="cuda:0").sum().item()))


async def check_placement() -> None:
    """One node per real GPU (LocalCluster(gpus_per_node=1)): each advertises gpu=1 and sees only its own device;
    a group with resources={"gpu": 1} takes them all, and one more actor does not fit."""
    env = {"PYTHONPATH": os.pathsep.join(sys.path)}
    async with disto.LocalCluster(gpus_per_node=1, env=env) as cluster:
        n = len(cluster.nodes)
        totals = [r["total"]["gpu"] for r in await cluster.resources()]
        check(n == torch.cuda.device_count() and totals == [1.0] * n,
              f"gpus_per_node=1: {n} node(s) for {torch.cuda.device_count()} GPU(s), each offering gpu=1")
        group = await cluster.spawn_group(GpuPeer, n, resources={"gpu": 1})
        seen = await group.gpus()
        check(all(count == 1 and total == 1000.0 for _, count, total in seen)
              and len({vis for vis, _, _ in seen}) == n,
              f"each member sees exactly its own GPU: {[vis for vis, _, _ in seen]}")
        try:
            await cluster.spawn(GpuPeer, resources={"gpu": 1})
            check(False, "one more gpu=1 actor than GPUs is refused")
        except disto.PlacementError as e:
            check("not enough free now" in str(e), f"one more gpu=1 actor is refused: {str(e)[:80]}...")
        await group.stop()
        check(all(r["free"]["gpu"] == 1.0 for r in await cluster.resources()), "stopped: every GPU is free again")


async def check_lowcomm() -> None:
    """The LM example's inner steps on the GPU (DiLoCo, one worker per GPU), and the ddp baseline as a
    data-parallel group over NCCL (one rank per GPU: NCCL refuses two ranks on one device)."""
    from disto.lowcomm import Config, LMTask, Trainer, lm_loss

    task = LMTask.sized("tiny")
    n = torch.cuda.device_count()
    async with disto.LocalCluster(gpus_per_node=1) as cluster:
        for algorithm in ("diloco", "ddp"):
            cfg = Config(algorithm=algorithm, workers=n, inner_steps=20, rounds=3, batch_size=32, inner_lr=3e-3,
                         device="cuda", worker_resources={"gpu": 1})
            t0 = time.perf_counter()
            h = await Trainer(cluster, cfg, task.model, task.data, task.evaluate, loss_fn=lm_loss).run()
            dt = time.perf_counter() - t0
            steps = sum(w["steps"] for w in h.workers)
            check(steps == n * cfg.total_steps and h.final_loss < 4.0,
                  f"{algorithm} on {n} GPU worker(s){' over NCCL' if algorithm == 'ddp' else ''}: {steps} inner "
                  f"steps, val loss {h.final_loss:.3f} (ln 256 = 5.55 at the start), {steps / dt:.0f} steps/s "
                  f"with start-up")
    # The benchmark's protocol (4 workers, H 50, batch 16) with every worker on the first GPU, as
    # bench/lowcomm.py --device cuda runs it on a one-GPU machine: ddp then all-reduces over gloo through host
    # memory. The rate says how long scripts/lowcomm_gpu.sh's runs at length take.
    async with disto.LocalCluster(nodes=4) as cluster:
        for algorithm in ("diloco", "ddp"):
            cfg = Config(algorithm=algorithm, workers=4, inner_steps=50, rounds=4, batch_size=16, inner_lr=3e-3,
                         warmup_steps=20, outer_lr=1.0, outer_momentum=0.5, device="cuda", ddp_backend="gloo")
            t0 = time.perf_counter()
            h = await Trainer(cluster, cfg, task.model, task.data, task.evaluate, loss_fn=lm_loss).run()
            busy = max(w["busy_s"] for w in h.workers)
            steps = sum(w["steps"] for w in h.workers)
            check(steps == 4 * cfg.total_steps and h.final_loss < 4.0,
                  f"{algorithm}, 4 workers sharing GPU 0{' (ddp over gloo)' if algorithm == 'ddp' else ''}: "
                  f"val loss {h.final_loss:.3f}, {cfg.total_steps / busy:.0f} steps/s per worker "
                  f"({time.perf_counter() - t0:.1f} s with start-up): 600 rounds would take "
                  f"{600 * cfg.inner_steps * busy / cfg.total_steps / 60:.1f} min")


async def timed(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check")
        return 0
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, disto {disto.__version__}")
    async with disto.LocalCluster(nodes=1, env={"PYTHONPATH": os.pathsep.join(sys.path)}) as cluster:
        peer = await cluster.nodes[0].spawn(GpuPeer)
        rows = []
        for size in SIZES:
            n = size // 4
            # producer (this process) writes on a side stream, then sends without synchronizing
            side = torch.cuda.Stream()
            with torch.cuda.stream(side):
                t = torch.empty(n, device="cuda")
                torch.cuda._sleep(50_000_000)
                t.fill_(3.0)
                device, ok = await peer.inspect(t, 3.0)
            check(ok and device.startswith("cuda"), f"{size // MB} MB driver -> peer over IPC: contents after the "
                                                   f"producer's side-stream write")
            back = await peer.make(size, 5.0)
            check(back.is_cuda and bool((back == 5.0).all().item()),
                  f"{size // MB} MB peer -> driver over IPC: contents after the peer's side-stream write")
            del back
            ipc = await timed(lambda: peer.inspect(t, 3.0), 5)
            with disto.transfer("tcp"):
                device, ok = await peer.inspect(t, 3.0)
                check(ok and device.startswith("cuda"), f"{size // MB} MB forced over TCP: rebuilt on the GPU")
                tcp = await timed(lambda: peer.inspect(t, 3.0), 3 if size < 1024 * MB else 1)
            rows.append((size, ipc, tcp))
            del t
            await peer.drop()
        print(f"\n{'size':>8} {'CUDA IPC per call':>18} {'via host + TCP':>16}")
        for size, ipc, tcp in rows:
            print(f"{size // MB:>6}MB {ipc * 1e3:>15.2f} ms {tcp * 1e3:>13.1f} ms")
        check(rows[-1][1] < 20 * rows[0][1] + 0.005, "IPC time per call does not grow with the size "
                                                     f"({rows[0][1] * 1e3:.2f} ms at 1 MB, {rows[-1][1] * 1e3:.2f} "
                                                     f"ms at 1 GB)")

        # memory goes back to the producer once the consumer lets go
        torch.cuda.synchronize()
        torch.cuda.ipc_collect()
        base = torch.cuda.memory_allocated()
        big = torch.ones(256 * MB, device="cuda")
        await peer.keep(big)
        del big
        torch.cuda.ipc_collect()
        held = torch.cuda.memory_allocated() - base
        check(held >= 1024 * MB, f"while the consumer holds it the producer keeps the storage ({held / MB:.0f} MB)")
        await peer.drop()
        for _ in range(50):
            torch.cuda.ipc_collect()
            if torch.cuda.memory_allocated() - base < 16 * MB:
                break
            await asyncio.sleep(0.1)
        check(torch.cuda.memory_allocated() - base < 16 * MB,
              f"after the consumer lets go the memory returns ({(torch.cuda.memory_allocated() - base) / MB:.0f} MB"
              f" left)")

        # re-sharing a received CUDA tensor is refused with a clear error
        await peer.keep(torch.ones(1000, device="cuda"))
        try:
            await peer.send_back()
            check(False, "re-sharing a received CUDA tensor is refused")
        except disto.SerializationError as e:
            check("clone" in str(e), f"re-sharing a received CUDA tensor is refused: {str(e)[:90]}...")

        # a consumer killed with SIGKILL while it holds our memory: the producer keeps running
        await peer.keep(torch.ones(64 * MB, device="cuda"))
        pid = await peer.pid()
        os.kill(pid, signal.SIGKILL)
        try:
            await peer.pid()
            check(False, "calls to the killed consumer fail")
        except disto.NodeLostError:
            check(True, "calls to the killed consumer fail with NodeLostError")
        x = torch.randn(1024, 1024, device="cuda")
        torch.cuda.ipc_collect()
        check(bool(torch.isfinite(x @ x).all().item()), "the producer keeps computing after its consumer died")
    print("\nplacement on real GPUs")
    await check_placement()
    print("\nlow-communication training on the GPUs")
    await check_lowcomm()
    print("\ngpu_check:", "all checks passed" if not failures else f"{len(failures)} FAILED: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(disto.run(main()))
