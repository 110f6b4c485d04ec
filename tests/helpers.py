"""Shared test helpers: constants, actors, in-process nodes, and one way to wait for a condition.

The few tests that look inside a node do it through the functions here, so the node's private layout is named
in one place."""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from typing import Any, AsyncIterator, Callable

import disto

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOKEN = "test-token-0123456789abcdef"
TOKEN_BYTES = b"a-test-token-of-enough-length!!"
MB = 1 << 20
# node processes import the tests' actor modules (tests/actors.py) from here
NODE_ENV = {"PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}


async def eventually(pred: Callable[[], Any], timeout: float = 5.0, what: str = "the condition",
                     interval: float = 0.01) -> Any:
    """Wait until ``pred()`` (sync, or async) returns something truthy, and return it; fail after ``timeout``
    seconds saying ``what`` was awaited. For state that changes without an event the test can await."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(interval)


async def named_elsewhere(cluster: disto.Cluster, name: str, old: disto.ActorRef) -> disto.ActorRef | None:
    """The actor ``name`` resolves to, once that is no longer ``old``'s node (a supervised actor restarted)."""
    try:
        ref = await cluster.lookup(name)
    except disto.ActorNotFoundError:
        return None
    return ref if ref.node_address != old.node_address else None


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
async def nodes(n: int, **kw: Any) -> AsyncIterator[list[disto.Node]]:
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


async def spawn(via: disto.Node, on: disto.Node, cls: type, *args: Any, name: str | None = None,
                **kwargs: Any) -> disto.ActorRef:
    """Spawn on node ``on`` through ``via``'s connection, so that calls on the returned ref cross the wire."""
    handle = disto.NodeHandle({"node_id": on.node_id, "address": on.address}, via)
    return await handle.spawn(cls, *args, name=name, **kwargs)


# ---------------------------------------------------------------------- looking inside a node (in-process tests)
def instance(node: disto.Node, ref: disto.ActorRef) -> Any:
    """The actor object itself."""
    return node._actors.cells[ref.actor_id].instance


def channels(node: disto.Node) -> set:
    """Every connection of the node, ready or not."""
    return node._peers.all


def channel_to(node: disto.Node, address: str) -> Any:
    return node._peers.by_address[address]


def calls_to(node: disto.Node, address: str) -> Any:
    """The node's outbound call table for the peer at ``address``: ``pending`` and ``waiting``."""
    return node._outbound.tables[channel_to(node, address)]


async def any_call_running(cluster: disto.Cluster) -> bool:
    """Some actor of the cluster is running a call now (as ``cluster.actors()`` reports it)."""
    return any(r["state"] == "running" for r in await cluster.actors())
