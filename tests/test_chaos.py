"""Chaos: a workload of 10,000 calls across 4 nodes while nodes are killed (kill -9) and restarted at random.
Every future resolves, with a value or a disto error, and none takes longer than the failure bound."""
from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys

import pytest

import disto
from actors import Worker
from helpers import HERE, TOKEN



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, port: int, seed: str | None) -> None:
        self.address = f"127.0.0.1:{port}"
        self.seed = seed
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, DISTO_TOKEN=TOKEN, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, "-m", "disto", "node", "start", "--listen", self.address]
        if self.seed:
            cmd += ["--seed", self.seed]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        self.proc.stdout.readline()  # up and joined

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(120)
async def test_every_call_resolves_while_nodes_die_and_come_back() -> None:
    rng = random.Random(1234)
    seed = Node(free_port(), None)  # the seed (member list and names) stays up
    seed.start()
    others = [Node(free_port(), seed.address) for _ in range(3)]
    for n in others:
        n.start()
    loop = asyncio.get_running_loop()
    try:
        async with disto.connect(seed.address, token=TOKEN) as cluster:
            workers: dict[str, disto.ActorRef] = {}

            async def respawn(address: str) -> None:
                handle = next(h for h in await cluster.refresh() if h.address == address)
                workers[address] = await handle.spawn(Worker)

            for n in [seed, *others]:
                await respawn(n.address)

            stop = asyncio.Event()
            kills = 0

            async def chaos() -> None:
                nonlocal kills
                while not stop.is_set():
                    await asyncio.sleep(rng.uniform(0.2, 0.5))
                    victim = rng.choice(others)
                    victim.kill()
                    kills += 1
                    await asyncio.sleep(rng.uniform(0.05, 0.3))
                    await loop.run_in_executor(None, victim.start)  # same address, a new node
                    try:
                        await respawn(victim.address)
                    except disto.DistoError:
                        pass  # it may already be dead again; the next round respawns

            chaos_task = asyncio.ensure_future(chaos())
            ok = failed = 0
            slowest = 0.0
            batches = 0
            while batches < 100 or kills < 3:  # at least 3 kills, however fast this machine runs the batches
                batches += 1
                refs = list(workers.values())
                t0 = loop.time()
                # every call must resolve within the failure bound (2.5 s) plus slack for this busy machine
                results = await disto.within(disto.collect_all(rng.choice(refs).add(1) for _ in range(100)), 6.0)
                slowest = max(slowest, loop.time() - t0)
                await asyncio.sleep(0.04)  # spread the workload over several kills
                for r in results:
                    if isinstance(r, BaseException):
                        assert isinstance(r, disto.DistoError), repr(r)
                        failed += 1
                    else:
                        ok += 1
            stop.set()
            await chaos_task
            assert ok + failed == 100 * batches
            assert kills >= 3 and ok > 0
            print(f"\nchaos: {100 * batches} calls, {ok} answered, {failed} failed with disto errors, {kills} nodes killed, "
                  f"slowest batch of 100: {slowest:.2f} s")
    finally:
        for n in [seed, *others]:
            n.kill()
