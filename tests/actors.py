"""Actors used by the multi-process tests (importable by the node processes: tests/ is on their PYTHONPATH)."""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import time

import disto


class Worker(disto.Actor):
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.value = 0

    def pid(self) -> int:
        return os.getpid()

    async def wait(self, i: int) -> int:
        await self.event.wait()
        return i

    @disto.on_loop  # sets an asyncio.Event: the loop's object
    def release(self) -> None:
        self.event.set()

    def add(self, k: int) -> int:
        self.value += k
        return self.value

    async def relay(self, target: disto.ActorRef, k: int) -> int:
        return await target.add(k)

    def fail(self) -> None:
        raise KeyError("missing-key")

    def maxrss_mb(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def import_torch(self) -> str:
        import torch
        return torch.__version__

    def total(self, x: object) -> tuple[float, float]:
        """Sum of an array or tensor, and this process's peak RSS in MB afterwards."""
        s = float(x.sum())
        return s, self.maxrss_mb()

    def crash(self) -> None:
        os._exit(3)

    def text(self, n: int) -> str:
        return "x" * n

    def imported(self, name: str) -> bool:
        import sys
        return name in sys.modules


class Concurrent(Worker):
    max_concurrency = 1000


class Holder(disto.Actor):
    """Keeps what it is sent; makes big tensors on request."""

    def __init__(self) -> None:
        self.kept: list = []

    def keep(self, x: object) -> int:
        self.kept.append(x)
        return len(self.kept)

    def make(self, n: int) -> object:
        import torch
        return torch.full((n,), 7.0)

    def pid(self) -> int:
        return os.getpid()


class Blocker(disto.Actor):
    @disto.on_loop
    def block(self, seconds: float) -> str:
        import time
        time.sleep(seconds)  # holds the node's event loop (on purpose: the liveness tests need a stalled loop)
        return "done"

    def ping(self) -> str:
        return "pong"


class GilHog(disto.Actor):
    """Pure-Python work that holds the GIL for as long as it runs."""

    def spin(self, seconds: float) -> int:
        import time
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            n += 1
        return n

    def pid(self) -> int:
        return os.getpid()


class Streamer(disto.Actor):
    async def ticks(self):  # noqa: ANN201 - an endless async generator method
        i = 0
        while True:
            yield i
            i += 1
            await asyncio.sleep(0.001)


class Talker(disto.Actor):
    """Prints, logs, blocks on its thread, waits on the loop: what the observability tests look at."""

    def say(self, text: str) -> str:
        print(text)
        logging.getLogger("talker").warning("logged %s", text)
        return text

    def partial(self, a: str, b: str) -> None:
        print(a, end="", flush=True)  # one line written in two pieces
        print(b)

    def fail(self) -> None:
        raise ValueError("talker failed")

    def hold(self, seconds: float) -> str:
        time.sleep(seconds)  # a sync call that hangs: on the actor's thread
        return "held"

    async def wait_async(self, seconds: float) -> str:
        await asyncio.sleep(seconds)  # an async call that hangs: a task on the loop
        return "waited"


class Member(disto.Actor):
    """A group member: what it saw of its group before it started, and methods the group tests call."""

    max_concurrency = 16  # a member calls its own group (itself included)

    def __init__(self, tag: str = "", fail_rank: int | None = None) -> None:
        if fail_rank is not None and self.rank == fail_rank:
            raise ValueError(f"rank {self.rank} refuses to start")
        self.tag = tag
        self.at_init = (self.rank, None if self.group is None else len(self.group))
        self.notes: list[str] = []
        self._gate: asyncio.Event | None = None

    async def on_start(self) -> None:
        self.at_start = (self.rank, None if self.group is None else [r.actor_id for r in self.group])

    def seen(self) -> dict:
        return {"init": self.at_init, "start": self.at_start, "pid": os.getpid(), "tag": self.tag,
                "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "address": self.ref.node_address}

    def echo(self, x: object) -> tuple:
        return (self.rank, x)

    def fail_on(self, rank: int) -> int:
        if self.rank == rank:
            raise KeyError(rank)
        return self.rank  # type: ignore[return-value]

    def note(self, text: str) -> None:
        self.notes.append(text)

    def noted(self) -> list[str]:
        return self.notes

    def stop(self) -> str:  # a method whose name the group itself uses: reached as group["stop"]
        return f"member {self.rank} asked to stop"

    async def hold(self) -> int:
        if self._gate is None:
            self._gate = asyncio.Event()
        await self._gate.wait()
        return self.rank  # type: ignore[return-value]

    @disto.on_loop
    def release(self) -> None:
        if self._gate is None:
            self._gate = asyncio.Event()
        self._gate.set()

    async def call_group(self, group: disto.ActorGroup, x: object) -> list:
        return await group.echo(x)

    async def ask_peers(self, x: object) -> list:
        return await self.group.echo(x)  # type: ignore[union-attr]

    async def where(self, x: object) -> tuple:
        return (self.rank, x)

    def ask_peers_sync(self, x: object) -> list:
        # from the actor's thread, which is busy with this call: only async methods of itself can run meanwhile
        return self.group.where(x).result(10)  # type: ignore[union-attr]
