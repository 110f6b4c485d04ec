"""disto quickstart: start a 2-node cluster on this machine, spawn an actor, call it every way there is.

    python examples/quickstart.py
"""
from __future__ import annotations

import asyncio
import time

import numpy as np

import disto


class Counter(disto.Actor):
    """Public methods, sync or async, are callable remotely. Calls run one at a time, in the order sent. Async
    methods run on the node's event loop; sync ones on the actor's own thread (they may block), unless marked
    @disto.on_loop (quick ones that must not pay for the hop)."""

    def __init__(self, start: int = 0) -> None:
        self.n = start

    async def add(self, k: int) -> int:
        self.n += k
        return self.n

    @disto.on_loop
    def get(self) -> int:
        return self.n

    def crunch(self, seconds: float) -> str:
        time.sleep(seconds)  # blocks its own thread only: the node keeps serving the other actors
        return "crunched"

    async def countdown(self, n: int):  # noqa: ANN201 - a generator method streams its items
        for i in range(n, 0, -1):
            yield i

    def norm(self, x: np.ndarray) -> float:
        return float(np.linalg.norm(x))  # arrays travel out of band, without copies

    def divide(self, k: int) -> float:
        return self.n / k

    async def slow(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "finished"


class Relay(disto.Actor):
    """Actors can call actors: refs pickle and can be passed around."""

    async def forward(self, target: disto.ActorRef, k: int) -> int:
        return await target.add(k)


async def main() -> None:
    t0 = time.perf_counter()
    async with disto.LocalCluster(nodes=2) as cluster:
        print(f"cluster of {len(cluster.nodes)} node processes up in {time.perf_counter() - t0:.2f} s:",
              ", ".join(f"{h.address} (pid {h.pid})" for h in cluster.nodes))

        c = await cluster.nodes[1].spawn(Counter, 10, name="counter")
        print("spawned", c)
        print("c.add(5)                      ->", await c.add(5))
        await c.add.tell(1)  # one-way; awaiting it only waits until it is sent
        same = await cluster.lookup("counter")
        print("lookup('counter') == c        ->", same == c)
        values = await disto.collect([c.add(1) for _ in range(100)])
        print("collect of 100 calls          ->", values[0], "...", values[-1])
        print("collect_any                   ->", await disto.collect_any([c.get(), c.get()]))
        print("get().then(x2)                ->", await c.get().then(lambda v: v * 2))
        print("within(get(), 1.0)            ->", await disto.within(c.get(), 1.0))
        print("norm of a 1M-float array      ->", round(await c.norm(np.ones(1_000_000)), 1))

        relay = await cluster.nodes[0].spawn(Relay)
        print("relay.forward(c, 3)           ->", await relay.forward(c, 3))
        print("async for in c.countdown(5)   ->", [i async for i in c.countdown(5)])
        other = await cluster.nodes[1].spawn(Counter)
        busy = c.crunch(0.5)
        t = time.perf_counter()
        await other.get()
        print(f"a call during a blocking one  -> answered in {(time.perf_counter() - t) * 1000:.1f} ms "
              f"(then: {await busy})")

        try:
            await c.divide(0)
        except ZeroDivisionError as e:  # a RemoteError that is also the original exception class
            assert isinstance(e, disto.RemoteError)
            print(f"remote error                  -> {e.type_name} from {e.actor}.{e.method} on {e.node}")
        try:
            await c.slow(5).within(0.2)  # the remote task is cancelled too
        except disto.TimeoutError:
            print("slow(5).within(0.2)           -> disto.TimeoutError")

        t = time.perf_counter()
        n = 2000
        for i in range(n):
            await c.get()
        print(f"sequential round trip         -> {(time.perf_counter() - t) / n * 1e6:.0f} µs per call")
        t = time.perf_counter()
        await disto.collect([c.get() for _ in range(20_000)])
        print(f"20,000 calls in flight        -> {20_000 / (time.perf_counter() - t):,.0f} calls/s")
    print("cluster stopped; done")


if __name__ == "__main__":
    disto.run(main())
