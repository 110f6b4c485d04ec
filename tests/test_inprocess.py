"""Level 3: several nodes in one process and one event loop: calls, ordering, errors, cancellation, stop."""
from __future__ import annotations

import asyncio
import collections.abc
import pickle

import numpy as np
import pytest

import disto
from disto.node import NodeConfig
from helpers import TOKEN, Counter, calls_to, channel_to, channels, eventually, instance, nodes, spawn


class Gate(disto.Actor):
    """Holds calls until released, to observe what is running and what is queued."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.event = asyncio.Event()
        self.cancelled: list[int] = []

    async def wait(self, i: int) -> int:
        self.started.append(i)
        try:
            await self.event.wait()
        except asyncio.CancelledError:
            self.cancelled.append(i)
            raise
        return i

    @disto.on_loop  # sets an asyncio.Event: the loop's object
    def release(self) -> None:
        self.event.set()

    def seen(self) -> tuple[list[int], list[int]]:
        return self.started, self.cancelled


class Concurrent(Gate):
    max_concurrency = 8


async def test_remote_calls_and_tell() -> None:
    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Counter, 10)
        assert await ref.add(5) == 15
        assert await ref.add_sync(1) == 16
        sent = ref.add.tell(4)
        await sent
        assert await ref.get() == 20
        assert await ref.echo({"k": [1, 2, (3,)]}) == {"k": [1, 2, (3,)]}


async def test_refs_are_picklable_and_callable_from_other_actors() -> None:
    class Caller(disto.Actor):
        async def poke(self, target: disto.ActorRef, k: int) -> int:
            return await target.add(k)

    async with nodes(3) as (a, b, c):
        counter = await spawn(a, b, Counter, 0)
        caller = await spawn(a, c, Caller)
        assert await caller.poke(counter, 3) == 3
        assert pickle.loads(pickle.dumps(counter)) == counter


async def test_local_call_skips_the_wire_and_passes_objects_as_is() -> None:
    async with nodes(1) as (a,):
        ref = await a.spawn_local(Counter)
        obj = {"big": np.zeros(10)}
        assert await ref.echo(obj) is obj
        assert a.stats()["peers"] == []


async def test_stats_report_what_a_leak_would_grow() -> None:
    async with nodes(1) as (a,):
        proc = a.stats()["process"]
        assert proc["rss_bytes"] > 1 << 20 and proc["open_fds"] > 2
        assert proc["tasks"] == len(asyncio.all_tasks())


async def test_order_of_calls_from_one_caller() -> None:
    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Counter)
        futs = []
        for i in range(300):
            # mix sync, async, and async methods that await: all run in the order sent
            if i % 3 == 2:
                futs.append(ref.slow_add(i, 0.0))
            else:
                futs.append((ref.add, ref.add_sync)[i % 3](i))
        await disto.collect(futs)
        assert await ref.history() == list(range(300))


async def test_default_actor_runs_one_call_at_a_time_and_opt_in_concurrency() -> None:
    async with nodes(2) as (a, b):
        serial = await spawn(a, b, Gate)
        futs = [serial.wait(i) for i in range(3)]
        g = instance(b, serial)
        await eventually(lambda: g.started == [0], what="the first call to start")
        barrier = await spawn(a, b, Counter)
        await barrier.get()  # sent after the three on the same connection: b has received all of them
        assert g.started == [0]  # the others wait for the first to return
        g.event.set()
        assert await disto.collect(futs) == [0, 1, 2] and g.started == [0, 1, 2]

        conc = await spawn(a, b, Concurrent)
        cfuts = [conc.wait(i) for i in range(3)]
        c = instance(b, conc)
        await eventually(lambda: len(c.started) == 3, what="all three calls to start")
        assert c.started == [0, 1, 2]  # all three running at once, started in arrival order
        c.event.set()
        assert await disto.collect(cfuts) == [0, 1, 2]


async def test_remote_error_fields_and_catch_as_original_class() -> None:
    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Counter)
        with pytest.raises(ValueError) as info:
            await ref.fail("bad input")
        err = info.value
        assert isinstance(err, disto.RemoteError) and isinstance(err, disto.DistoError)
        assert err.type_name == "ValueError" and err.message == "bad input"
        assert err.method == "fail" and err.node == b.address and "Counter#" in err.actor
        assert "raise ValueError(msg)" in err.remote_traceback
        assert isinstance(err.cause, ValueError)
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is type(err) and again.__dict__.keys() == err.__dict__.keys()
        assert isinstance(again, ValueError) and again.remote_traceback == err.remote_traceback


async def test_local_calls_raise_the_same_remote_error() -> None:
    async with nodes(1) as (a,):
        ref = await a.spawn_local(Counter)
        with pytest.raises(ValueError) as info:
            await ref.fail("x")
        assert isinstance(info.value, disto.RemoteError)


async def test_unpicklable_exception_still_arrives() -> None:
    import threading

    class Weird(Exception):
        def __init__(self, msg: str) -> None:
            super().__init__(msg)
            self.lock = threading.Lock()  # cannot be pickled

    class Thrower(disto.Actor):
        def go(self) -> None:
            raise Weird("odd")

    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Thrower)
        with pytest.raises(disto.RemoteError) as info:
            await ref.go()
        e = info.value
        assert "Weird" in e.type_name and e.message == "odd" and str(e) == "odd" and e.cause is None
        assert e.stand_in and type(e) is disto.RemoteError  # (a class local to a function cannot be looked up)
        notes = "\n".join(e.__notes__)
        assert "a stand-in for the remote" in notes and "could not be sent" in notes and 'raise Weird("odd")' in notes


class OutOfStock(Exception):
    def __init__(self, item: str, wanted: int) -> None:
        super().__init__(f"only 3 of {item} left, {wanted} wanted")
        self.item = item
        self.wanted = wanted


class Store(disto.Actor):
    def take(self, item: str, wanted: int) -> None:
        raise OutOfStock(item, wanted)


class Shop(disto.Actor):
    async def buy(self, store: disto.ActorRef, item: str, wanted: int) -> None:
        await store.take(item, wanted)


async def test_a_custom_exception_arrives_as_itself_through_two_hops() -> None:
    async with nodes(3) as (a, b, c):
        store = await spawn(a, c, Store)
        shop = await spawn(a, b, Shop)
        with pytest.raises(OutOfStock) as info:
            await shop.buy(store, "widget", 5)  # a -> b -> c raises
        e = info.value
        assert e.args == ("only 3 of widget left, 5 wanted",) and str(e) == "only 3 of widget left, 5 wanted"
        assert (e.item, e.wanted) == ("widget", 5) and isinstance(e, disto.RemoteError)
        assert e.node == b.address and e.method == "buy" and type(e.cause) is OutOfStock
        hop_c, hop_b = e.__notes__
        assert f"on {c.address}" in hop_c and "raise OutOfStock(item, wanted)" in hop_c and "test_inprocess.py" in hop_c
        assert f"on {b.address}" in hop_b and "await store.take(item, wanted)" in hop_b
        assert "disto/node" not in hop_b + hop_c and "mailbox.py" not in hop_b + hop_c  # disto's frames trimmed
        local = await a.spawn_local(Store)
        with pytest.raises(OutOfStock) as info:
            await local.take("gadget", 1)  # a local call: the same shape
        assert info.value.item == "gadget" and "raise OutOfStock" in info.value.__notes__[0]


async def test_unknown_method_private_method_unknown_actor() -> None:
    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Counter)
        with pytest.raises(AttributeError):
            await ref.nope()
        with pytest.raises(AttributeError):
            await ref["_private"]()
        ghost = disto.ActorRef(b.node_id, b.address, 9999, "Counter")
        with pytest.raises(disto.ActorNotFoundError):
            await ghost.get()


async def test_stop_drains_callers_with_actor_dead() -> None:
    async with nodes(2) as (a, b):
        gate = await spawn(a, b, Gate)
        futs = [gate.wait(i) for i in range(5)]
        await eventually(lambda: instance(b, gate).started == [0], what="the first call to start")
        assert await b.stop_actor(gate.actor_id)
        results = await disto.collect_all(futs)
        assert all(isinstance(r, disto.ActorDeadError) for r in results), results
        with pytest.raises(disto.ActorDeadError):
            await gate.wait(9)


async def test_cancel_reaches_the_remote_task() -> None:
    async with nodes(2) as (a, b):
        gate = await spawn(a, b, Concurrent)
        fut = gate.wait(1)
        await eventually(lambda: instance(b, gate).started == [1], what="the call to start")
        fut.cancel()
        await eventually(lambda: instance(b, gate).cancelled == [1], what="the remote task to be cancelled")
        with pytest.raises(asyncio.CancelledError):
            await fut


async def test_asyncio_timeout_and_within_cancel_remotely() -> None:
    async with nodes(2) as (a, b):
        gate = await spawn(a, b, Concurrent)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await gate.wait(1)
        with pytest.raises(disto.TimeoutError):
            await disto.within(gate.wait(2), 0.1)
        with pytest.raises(disto.TimeoutError):
            await gate.wait(3).within(0.1)
        await eventually(lambda: sorted(instance(b, gate).cancelled) == [1, 2, 3],
                         what="all three remote tasks to be cancelled")


async def test_gather_wait_and_combinators_on_remote_futures() -> None:
    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Counter)
        assert await asyncio.gather(ref.add(1), ref.add(1)) == [1, 2]
        done, _ = await asyncio.wait([ref.get(), ref.get()])
        assert {f.result() for f in done} == {2}
        assert await ref.get().then(lambda v: v * 2) == 4
        assert await ref.get().map(str) == "2"
        assert await ref.fail("x").recover(lambda e: "recovered", ValueError) == "recovered"
        assert await disto.collect_any([ref.get(), ref.get()]) == 2
        assert await disto.window([lambda i=i: ref.add(i) for i in range(10)], 3) == \
            [2 + sum(range(i + 1)) for i in range(10)]
        f = ref.get()
        assert isinstance(f, disto.Future) and isinstance(f, asyncio.Future)
        assert await f == 2 + sum(range(10))


async def test_named_actors_and_lookup() -> None:
    async with nodes(3) as (a, b, c):
        ref = await spawn(a, b, Counter, 5, name="counter")
        found = await c.registry.lookup("counter")
        assert found == ref and await found.get() == 5
        with pytest.raises(disto.NameTakenError):
            await spawn(a, c, Counter, name="counter")
        await b.stop_actor(ref.actor_id)
        with pytest.raises(disto.ActorNotFoundError):
            await a.registry.lookup("counter")


async def test_pending_calls_fail_at_once_when_the_node_goes_away() -> None:
    a = disto.Node(TOKEN)
    await a.start()
    b = disto.Node(TOKEN, seed=a.address)
    await b.start()
    try:
        gate = await spawn(a, b, Gate)
        futs = [gate.wait(i) for i in range(50)]
        await eventually(lambda: instance(b, gate).started == [0], what="the first call to start")
        await b.stop()
        results = await disto.collect_all(futs)
        assert all(isinstance(r, (disto.NodeLostError, disto.ActorDeadError)) for r in results), results
        with pytest.raises((disto.NodeLostError, disto.ActorDeadError)):
            await gate.wait(99)
    finally:
        await b.stop()
        await a.stop()


async def test_unreachable_node_fails_fast() -> None:
    async with nodes(1) as (a,):
        ghost = disto.ActorRef("x", "127.0.0.1:1", 16, "Counter")
        with pytest.raises(disto.NodeLostError, match="cannot reach"):
            await ghost.get()


async def test_wrong_token_cannot_join() -> None:
    async with nodes(1) as (a,):
        intruder = disto.Node("another-token-0123456789", seed=a.address, config=NodeConfig(connect_timeout=2))
        with pytest.raises((disto.NodeLostError, disto.AuthenticationError)):
            await intruder.start()


def test_node_config_refuses_counts_that_are_not_positive_ints() -> None:
    # (the compiled channel keeps them as C integers: a float would otherwise fail inside a connection)
    for name, bad in (("max_inflight", 0), ("max_queued", 1.5), ("max_body", True), ("max_frame", -1),
                      ("stream_window", None)):
        with pytest.raises(ValueError, match=f"NodeConfig.{name} must be an int >= 1, got {bad!r}"):
            NodeConfig(**{name: bad})
    assert NodeConfig(max_inflight=1, max_queued=1).max_queued == 1


async def test_window_bounds_calls_in_flight_and_memory() -> None:
    cfg = NodeConfig(max_inflight=4)
    async with nodes(2, config=cfg) as (a, b):
        gate = await spawn(a, b, Concurrent)
        futs = [gate.wait(i) for i in range(20)]
        await eventually(lambda: len(instance(b, gate).started) == 4, what="the window's four calls to start")
        calls = calls_to(a, b.address)
        assert len(calls.pending) == 4 and len(calls.waiting) == 16
        assert instance(b, gate).started == [0, 1, 2, 3]
        await b.spawn_local(Counter)  # the node itself is not blocked
        gate2 = disto.ActorRef(gate.node_id, gate.node_address, gate.actor_id, "Concurrent", None, b)
        await gate2.release()  # released via b's local path, since a's window is full
        assert await disto.collect(futs) == list(range(20))


async def test_receiver_stops_reading_when_flooded() -> None:
    cfg = NodeConfig(max_queued=8, max_inflight=100_000)
    async with nodes(2, config=cfg) as (a, b):
        gate = await spawn(a, b, Gate)  # one at a time: everything else queues on b
        futs = [gate.wait(i) for i in range(2000)]
        await eventually(lambda: sum(ch.queued for ch in channels(b)) >= 8, what="b to fill its bound")
        barrier = await b.spawn_local(Counter)
        for _ in range(3):
            await barrier.get()  # let b's loop run: it must not read past its bound meanwhile
        queued = sum(ch.queued for ch in channels(b))
        assert queued <= 8 + 1, queued  # b read no more than its bound; the rest waits in sockets and on a
        instance(b, gate).event.set()  # (a release() call would queue behind the waiters)
        assert await disto.collect(futs) == list(range(2000))


async def test_tensors_and_arrays_travel_out_of_band() -> None:
    import torch

    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Counter)
        t = torch.randn(256, 1024)
        back = await ref.echo({"t": t, "a": t.numpy()[::2], "p": torch.nn.Parameter(t[:3])})
        assert torch.equal(back["t"], t) and np.array_equal(back["a"], t.numpy()[::2])
        assert isinstance(back["p"], torch.nn.Parameter) and back["p"].requires_grad


async def test_unpicklable_argument_fails_the_future_not_the_node() -> None:
    import threading

    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Counter)
        with pytest.raises(disto.SerializationError):
            await ref.echo(threading.Lock())
        assert await ref.get() == 0  # the connection and the actor are fine


async def test_unpicklable_result_fails_with_serialization_error() -> None:
    class Leaky(disto.Actor):
        def lock(self) -> object:
            import threading
            return threading.Lock()

    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Leaky)
        with pytest.raises(disto.SerializationError):
            await ref.lock()


class Hooked(disto.Actor):
    def __init__(self) -> None:
        self.starts = 0

    async def on_start(self) -> None:
        self.starts += 1

    async def on_stop(self) -> None:
        pass

    def starts_seen(self) -> int:
        return self.starts


async def test_lifecycle_hooks_are_not_remotely_callable() -> None:
    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Hooked)
        for hook in ("on_start", "on_stop"):
            with pytest.raises(AttributeError, match="no public method"):
                await ref[hook]()
        assert await ref.starts_seen() == 1  # ran once, by the node, and never again by a caller


async def test_a_class_that_is_not_an_actor_is_refused_before_a_round_trip() -> None:
    class Plain:
        pass

    async with nodes(2) as (a, b):
        handle = disto.NodeHandle({"node_id": b.node_id, "address": b.address}, a)
        for bad, what in ((Plain, "add disto.Actor to its bases"), (Counter(), "Counter"), (len, "builtin")):
            with pytest.raises(TypeError, match=what):
                handle.spawn(bad)  # raised by the call itself: nothing was sent
        with pytest.raises(ValueError, match="name"):
            handle.spawn(Counter, name="")
        with pytest.raises(ValueError, match="max_restarts"):
            handle.spawn(Counter, max_restarts=-1)
        assert await handle.spawn(Counter, 1)  # a real actor class still goes through


class Big(disto.Actor):
    def text(self, n: int) -> str:
        return "x" * n

    def size(self, s: str) -> int:
        return len(s)


async def test_values_of_any_size_travel_and_only_an_oversized_call_fails() -> None:
    n = 20 << 20  # a 20 MB str: over max_body, so it goes out of band
    async with nodes(2, config=disto.NodeConfig(max_frame=64 << 20)) as (a, b):
        big = await spawn(a, b, Big)
        other = await spawn(a, b, Concurrent)
        waiting = [other.wait(i) for i in range(10)]  # calls to another actor on that node, in flight meanwhile
        assert await big.size("y" * n) == n            # as an argument
        assert await big.text(n) == "x" * n            # as a return value
        with disto.transfer("tcp"):
            assert await big.size("z" * n) == n        # and over the socket, not shared memory
        # beyond the frame limit: that one call fails, naming the limit and the setting; nothing else does
        with disto.transfer("tcp"):
            with pytest.raises(disto.SerializationError, match="max_frame"):
                await big.size("w" * (80 << 20))
            with pytest.raises(disto.SerializationError, match="max_frame"):
                await big.text(80 << 20)
        assert not any(f.done() for f in waiting)
        await spawn(a, b, Counter)
        instance(b, other).event.set()
        assert await disto.collect(waiting) == list(range(10))  # the connection carried on throughout
        assert await big.size("ok") == 2


class Sleeper(disto.Actor):
    def __init__(self, build_seconds: float = 0.0) -> None:
        import threading
        import time

        time.sleep(build_seconds)  # a slow constructor (loading a model): on the actor's thread too
        self.built_on = threading.current_thread().name
        self.log: list[str] = []
        self.napping = False

    def nap(self, seconds: float, tag: str) -> str:
        import threading
        import time

        self.napping = True
        time.sleep(seconds)  # blocks: its own thread, not the node's loop
        self.log.append(tag)
        return threading.current_thread().name

    async def note(self, tag: str) -> list[str]:
        self.log.append(tag)
        return list(self.log)

    @disto.on_loop
    def where(self) -> str:
        import threading
        return threading.current_thread().name

    def poke(self, other: disto.ActorRef) -> int:
        # sync code on the actor's thread calls another actor and blocks on the answer: the loop is free
        other.add.tell(1)
        return other.get().result(timeout=5)


async def test_a_blocking_sync_method_stalls_neither_the_node_nor_other_actors() -> None:
    import threading

    async with nodes(2) as (a, b):
        sleeper = await spawn(a, b, Sleeper)
        other = await spawn(a, b, Counter)
        loop = asyncio.get_running_loop()
        nap = sleeper.nap(2.0, "nap")
        await eventually(lambda: instance(b, sleeper).napping, what="the nap to start")
        t0 = loop.time()
        for _ in range(3):
            assert await other.add(1) >= 1
        assert loop.time() - t0 < 1.0  # answered while the nap holds its own actor's thread
        assert not nap.done()
        # the same actor's next call waits its turn (one call at a time, in order), sync or async
        assert await sleeper.note("after") == ["nap", "after"]
        assert (await nap).startswith("disto Sleeper#")
        assert await sleeper.where() == threading.current_thread().name  # @on_loop: inline on the loop
        assert await sleeper.poke(other) == 4  # a sync method may call other actors, and wait for them


async def test_a_slow_constructor_does_not_stall_the_node_and_a_cancelled_sync_call_is_answered_at_once() -> None:
    async with nodes(2) as (a, b):
        other = await spawn(a, b, Counter)
        building = asyncio.ensure_future(spawn(a, b, Sleeper, 1.5))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await other.add(2) == 2 and loop.time() - t0 < 1.0
        sleeper = await building
        assert instance(b, sleeper).built_on.startswith("disto Sleeper#")
        nap = sleeper.nap(1.0, "nap")
        await eventually(lambda: instance(b, sleeper).napping, what="the nap to start")
        nap.cancel()
        with pytest.raises(asyncio.CancelledError):
            await nap  # the caller is answered now; the thread finishes its nap, and its result is dropped
        assert await sleeper.note("next") == ["nap", "next"]  # the next call ran after the nap, in order


async def test_sync_calls_queued_behind_a_blocking_one_run_in_order_and_cancelled_ones_are_skipped() -> None:
    async with nodes(2) as (a, b):
        sleeper = await spawn(a, b, Sleeper)
        first = sleeper.nap(0.5, "first")
        await eventually(lambda: instance(b, sleeper).napping, what="the first nap to start")
        queued = [sleeper.nap(0.0, f"q{i}") for i in range(20)]  # they queue behind it, then run as one batch
        queued[5].cancel()
        await first
        done = await disto.collect_all(queued)
        assert isinstance(done[5], asyncio.CancelledError) and all(isinstance(d, str) for i, d in enumerate(done)
                                                                    if i != 5)
        assert instance(b, sleeper).log == ["first"] + [f"q{i}" for i in range(20) if i != 5]
        assert await sleeper.note("last") == instance(b, sleeper).log  # the slot was released after the batch


async def test_calls_whose_caller_is_gone_stop_running_on_the_callee() -> None:
    async with nodes(2) as (a, b):
        gate = await spawn(a, b, Gate)  # one call at a time: an abandoned call would hold it
        sleeper = await spawn(a, b, Sleeper)
        waiting = [gate.wait(i) for i in range(3)]
        napping = sleeper.nap(0.5, "abandoned")
        await eventually(lambda: instance(b, gate).started == [0] and instance(b, sleeper).napping)
        channel_to(a, b.address).abort()  # the connection goes (a lost node, a cut link)
        assert all(isinstance(r, disto.NodeLostError) for r in await disto.collect_all(waiting + [napping]))
        await eventually(lambda: instance(b, gate).cancelled == [0], what="the running call to be cancelled")
        g = instance(b, gate)
        assert g.started == [0] and not instance(b, gate).event.is_set()  # the queued ones never started
        assert await disto.within(gate.seen(), 5) == ([0], [0])  # the actor is free for new calls at once
        assert await sleeper.note("next") == ["abandoned", "next"]  # a sync call runs to its end, then the next


async def test_an_on_loop_method_stays_on_the_loop_for_every_actor_of_a_class_sent_by_value() -> None:
    import threading

    class Here(disto.Actor):  # local to this function: pickled by value, at every spawn
        @disto.on_loop
        def where(self) -> str:
            return threading.current_thread().name

        def elsewhere(self) -> str:
            return threading.current_thread().name

    async with nodes(2) as (a, b):
        for _ in range(3):
            ref = await spawn(a, b, Here)
            assert await ref.where() == threading.current_thread().name  # the loop's thread (one process here)
            assert (await ref.elsewhere()).endswith("<locals>.Here#" + str(ref.actor_id))  # its own thread


class _Later(collections.abc.Coroutine):
    """An awaitable that is a Coroutine by the ABC, not a native coroutine: what asyncio.iscoroutine checks."""

    def __init__(self, value: int) -> None:
        self.value = value

    def send(self, _: object) -> None:
        raise StopIteration(self.value)

    def throw(self, *args: object) -> None:
        raise StopIteration(self.value)

    def close(self) -> None:
        pass

    def __await__(self):  # type: ignore[no-untyped-def]
        return (yield from ()) or self.value


async def test_a_method_returning_a_coroutine_is_awaited_whatever_was_returned_before() -> None:
    # the mailbox remembers result types that are not coroutines (skipping asyncio's ABC check for them); a
    # coroutine of another type returned after plain values is still awaited, from a loop or a sync method
    class Returns(disto.Actor):
        @disto.on_loop
        def on_loop(self, coro: bool, v: int) -> object:
            return _Later(v) if coro else np.int64(v)

        def on_thread(self, coro: bool, v: int) -> object:
            return _Later(v) if coro else np.float32(v)

    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Returns)
        for method in (ref.on_loop, ref.on_thread):
            assert await method(False, 1) == 1 and await method(False, 2) == 2
            assert await method(True, 3) == 3
            assert await method(False, 4) == 4 and await method(True, 5) == 5


async def test_an_actor_thread_delivers_every_outcome_even_when_a_callback_raises() -> None:
    import threading

    from disto.actor import ActorThread

    class Item:
        def __init__(self, name: str, abandoned: bool = False) -> None:
            self.name, self.abandoned = name, abandoned

    loop = asyncio.get_running_loop()
    errors: list[BaseException] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))
    got: list[tuple[str, bool, object]] = []
    finished = asyncio.Event()
    all_ran = threading.Event()

    def done(item: Item, ok: bool, value: object, tb: str) -> None:
        got.append((item.name, ok, value))
        if item.name == "a":
            raise RuntimeError("a callback failed")
        if item.name == "c":
            finished.set()

    def last() -> int:
        all_ran.set()
        return 3

    thread = ActorThread("test", loop)
    try:
        thread.submit([(lambda: 1, (), {}, done, Item("a")), (lambda: 2, (), {}, done, Item("b", abandoned=True)),
                       (last, (), {}, done, Item("c"))])
        assert all_ran.wait(10)  # (the loop is held here: the three outcomes wait for one flush together)
        await asyncio.wait_for(finished.wait(), 10)
    finally:
        thread.stop()
        loop.set_exception_handler(None)
    assert got == [("a", True, 1), ("b", False, None), ("c", True, 3)]  # b was not run: abandoned
    assert len(errors) == 1 and str(errors[0]) == "a callback failed"


async def test_an_actor_thread_runs_jobs_submitted_while_it_works_in_order_and_closes_its_eventfds() -> None:
    # the loop writes the thread's eventfd only when it may be asleep: jobs submitted while it runs one are picked
    # up without a write of their own, in order; once stopped, the thread's two eventfds are closed on the loop
    import os
    import threading

    from disto.actor import ActorThread

    class Item:
        abandoned = False

        def __init__(self, n: int) -> None:
            self.n = n

    loop = asyncio.get_running_loop()
    release = threading.Event()
    got: list[int] = []
    all_done = asyncio.Event()

    def done(item: Item, ok: bool, value: object, tb: str) -> None:
        assert ok, tb
        got.append(value)  # type: ignore[arg-type]
        if len(got) == 50:
            all_done.set()

    thread = ActorThread("test", loop)
    thread.submit([(lambda: (release.wait(10), 0)[1], (), {}, done, Item(0))])  # holds the thread
    fds = (thread._wake, thread._done)
    assert all(fd >= 0 for fd in fds)
    for n in range(1, 50):
        thread.submit([(lambda n=n: n, (), {}, done, Item(n))])
    release.set()
    await asyncio.wait_for(all_done.wait(), 10)
    assert got == list(range(50))
    thread.stop()
    worker = thread._thread
    await loop.run_in_executor(None, worker.join, 10)
    assert not worker.is_alive()
    # (the thread scheduled the close before it ended, so before the join's result was delivered here)
    assert thread._wake == -1 and thread._done == -1
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError:
            continue
        assert os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:[eventfd]", "an eventfd of the thread is still open"


def test_an_actor_thread_flush_hands_over_only_the_outcomes_there_when_it_starts() -> None:
    # no event loop and no thread: the loop's wake-ups are counted on the eventfd the thread writes. An outcome
    # posted while a flush runs (as the thread does between two callbacks) waits for a wake-up of its own, so a
    # thread that keeps producing cannot hold the loop
    import os

    from disto.actor import ActorThread

    class FakeLoop:
        def is_closed(self) -> bool:
            return False

    thread = ActorThread("test", FakeLoop())  # type: ignore[arg-type]
    thread._done = os.eventfd(0, os.EFD_NONBLOCK)
    got: list[str] = []

    def wakeups() -> int:
        try:
            return os.eventfd_read(thread._done)
        except BlockingIOError:
            return 0

    def done(item: str, ok: bool, value: object, tb: str) -> None:
        got.append(item)
        if item == "a":
            thread._post(done, "late", True, None, "")  # posted during the flush

    try:
        thread._post(done, "a", True, None, "")
        thread._post(done, "b", True, None, "")
        assert wakeups() == 1  # one wake-up for both
        thread._flush()
        assert got == ["a", "b"] and wakeups() == 1  # "late" has a wake-up of its own
        thread._flush()
        assert got == ["a", "b", "late"] and wakeups() == 0
    finally:
        os.close(thread._done)


def test_an_actor_thread_that_cannot_start_leaves_no_eventfd_open() -> None:
    import os

    from disto.actor import ActorThread

    loop = asyncio.new_event_loop()
    loop.close()  # add_reader refuses: the thread does not start
    thread = ActorThread("test", loop)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError):
        thread.submit([(lambda: 1, (), {}, lambda *a: None, None)])
    assert set(os.listdir("/proc/self/fd")) == before and thread._wake == -1 and thread._done == -1
