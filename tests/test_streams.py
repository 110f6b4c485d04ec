"""Streams: generator methods called as ``async for item in ref.produce(n)``. The consumer's end alone (credit,
errors at their item, stopping), then in-process nodes (remote and local callers), then a node killed mid-stream."""
from __future__ import annotations

import asyncio
import gc
import os
import signal

import pytest

import disto
from disto.streams import Stream
from helpers import NODE_ENV, eventually, instance, nodes, spawn


# ---------------------------------------------------------------------- the consumer's end, fed by hand
async def test_a_stream_grants_credit_as_items_are_taken_and_raises_errors_at_their_item() -> None:
    grants: list[int] = []
    cancels: list[bool] = []
    s = Stream(4, grants.append, lambda: cancels.append(True))
    for i in range(4):
        s.push(i)
    assert [await s.__anext__() for _ in range(2)] == [0, 1] and grants == [2]  # half the window: more credit
    s.push(4)
    s.fail(ValueError("at item 5"))
    assert [await s.__anext__() for _ in range(3)] == [2, 3, 4]  # the items before the error come first
    with pytest.raises(ValueError, match="at item 5"):
        await s.__anext__()
    with pytest.raises(StopAsyncIteration):
        await s.__anext__()
    assert cancels == []  # it ended on the producer's side: nothing to stop


async def test_stopping_a_stream_early_tells_the_producer_once() -> None:
    cancels: list[str] = []
    s = Stream(8, lambda n: None, lambda: cancels.append("closed"))
    s.push(1)
    await s.aclose()
    assert cancels == ["closed"] and [x async for x in s] == []
    s2 = Stream(8, lambda n: None, lambda: cancels.append("dropped"))
    del s2  # a consumer that broke out of its loop: the stream is collected
    gc.collect()
    await asyncio.sleep(0)
    assert cancels == ["closed", "dropped"]
    s3 = Stream(8, lambda n: None, lambda: cancels.append("task cancelled"))
    waiter = asyncio.ensure_future(s3.__anext__())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert cancels[-1] == "task cancelled"


# ---------------------------------------------------------------------- actors with generator methods
class Producer(disto.Actor):
    def __init__(self) -> None:
        self.produced = 0
        self.closed: list[str] = []

    async def count(self, n: int, fail_at: int = -1):  # noqa: ANN201 - an async generator method
        try:
            for i in range(n):
                if i == fail_at:
                    raise KeyError(f"no item {i}")
                self.produced += 1
                yield i
                await asyncio.sleep(0)
        finally:
            self.closed.append("count")

    def squares(self, n: int):  # noqa: ANN201 - a sync generator method: each next() on the actor's thread
        import threading
        try:
            for i in range(n):
                self.produced += 1
                yield (i * i, threading.current_thread().name)
        finally:
            self.closed.append("squares")

    def forever(self):  # noqa: ANN201
        try:
            i = 0
            while True:
                self.produced += 1
                yield i
                i += 1
        finally:
            self.closed.append("forever")

    def plain(self) -> int:
        return 7


async def test_generator_methods_stream_their_items_in_order() -> None:
    async with nodes(2) as (a, b):
        p = await spawn(a, b, Producer)
        assert [x async for x in p.count(100)] == list(range(100))
        got = [x async for x in p.squares(50)]
        assert [v for v, _ in got] == [i * i for i in range(50)] and got[0][1].startswith("disto Producer#")
        stream = await p.count(3)  # awaiting the call gives the stream itself
        assert isinstance(stream, disto.Stream) and [x async for x in stream] == [0, 1, 2]
        assert [x async for x in p.count(0)] == []
        with pytest.raises(TypeError, match="not a stream"):
            async for _ in p.plain():
                pass
        local = await a.spawn_local(Producer)  # a caller on the actor's own node: the same behaviour
        assert [x async for x in local.count(10)] == list(range(10))
        assert await p.plain() == 7  # the actor's slot was released after each stream


async def test_an_exception_in_the_generator_is_raised_at_its_item() -> None:
    async with nodes(2) as (a, b):
        p = await spawn(a, b, Producer)
        for ref in (p, await a.spawn_local(Producer)):
            got = []
            with pytest.raises(KeyError, match="no item 5") as info:
                async for x in ref.count(10, fail_at=5):
                    got.append(x)
            assert got == [0, 1, 2, 3, 4] and isinstance(info.value, disto.RemoteError)
            assert "raise KeyError" in info.value.__notes__[-1]


async def test_a_slow_consumer_bounds_what_is_in_flight() -> None:
    window = 8
    async with nodes(2, config=disto.NodeConfig(stream_window=window)) as (a, b):
        p = await spawn(a, b, Producer)
        it = p.forever().__aiter__()
        assert await it.__anext__() == 0
        prod = instance(b, p)
        await eventually(lambda: prod.produced >= window, what="the producer to fill the window")
        for _ in range(3):  # the consumer stops taking items: the producer stops making them
            barrier = await spawn(a, b, disto.Actor)
            assert barrier is not None
        assert prod.produced <= window + 1  # the window, and the one it waits to send
        for i in range(1, 200):
            assert await it.__anext__() == i
        assert prod.produced <= 200 + window + 1
        await it.aclose()
        await eventually(lambda: prod.closed == ["forever"], what="the generator to be closed")


@pytest.mark.parametrize("how", ["break", "cancel"])
async def test_ending_the_loop_early_stops_the_remote_generator(how: str) -> None:
    async with nodes(2) as (a, b):
        p = await spawn(a, b, Producer)
        prod = instance(b, p)

        async def consume() -> None:
            async for x in p.forever():
                if x == 10:
                    if how == "break":
                        break
                    await asyncio.Event().wait()  # stuck in the loop: cancelled from outside

        task = asyncio.ensure_future(consume())
        if how == "cancel":
            await eventually(lambda: prod.produced > 10)
            task.cancel()
        with pytest.raises(asyncio.CancelledError) if how == "cancel" else contextlib_null():
            await task
        await eventually(lambda: prod.closed == ["forever"], what="the remote generator to be closed")
        assert await p.plain() == 7  # and the actor serves calls again


def contextlib_null():  # noqa: ANN201
    import contextlib
    return contextlib.nullcontext()


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(60)
async def test_a_lost_node_ends_its_streams_with_node_lost() -> None:
    from actors import Streamer

    async with disto.LocalCluster(nodes=2, env=NODE_ENV) as cluster:
        s = await cluster.nodes[1].spawn(Streamer)
        got = []
        with pytest.raises(disto.NodeLostError):
            async for x in s.ticks():
                got.append(x)
                if len(got) == 5:
                    os.kill(cluster.nodes[1].pid, signal.SIGKILL)
        assert got[:5] == [0, 1, 2, 3, 4]
