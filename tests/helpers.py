"""Shared test helpers: actors and in-process nodes."""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import disto

TOKEN = "test-token-0123456789abcdef"


class Counter(disto.Actor):
    def __init__(self, start: int = 0) -> None:
        self.n = start
        self.log: list[int] = []

    async def add(self, k: int) -> int:
        self.n += k
        self.log.append(k)
        return self.n

    def add_sync(self, k: int) -> int:
        self.n += k
        self.log.append(k)
        return self.n

    def get(self) -> int:
        return self.n

    def history(self) -> list[int]:
        return self.log

    async def slow_add(self, k: int, delay: float) -> int:
        await asyncio.sleep(delay)
        self.n += k
        self.log.append(k)
        return self.n

    def fail(self, msg: str) -> None:
        raise ValueError(msg)

    def echo(self, x: object) -> object:
        return x

    def _private(self) -> str:
        return "no"


@contextlib.asynccontextmanager
async def nodes(n: int, **kw) -> AsyncIterator[list[disto.Node]]:
    """n in-process nodes on 127.0.0.1; the first is the seed."""
    first = disto.Node(TOKEN, **kw)
    await first.start()
    out = [first]
    try:
        for _ in range(n - 1):
            node = disto.Node(TOKEN, seed=first.address, **kw)
            await node.start()
            out.append(node)
        yield out
    finally:
        for node in reversed(out):
            await node.stop()


async def spawn(via: disto.Node, on: disto.Node, cls: type, *args, name: str | None = None, **kwargs) -> disto.ActorRef:
    """Spawn on node ``on`` through ``via``'s connection, so that calls on the returned ref cross the wire."""
    handle = disto.NodeHandle({"node_id": on.node_id, "address": on.address}, via)
    return await handle.spawn(cls, *args, name=name, **kwargs)
