"""Replies an actor's thread writes on the caller's socket itself (disto/actor/threads.py, transport/threadwrites.py):
the write primitive against a real uvloop socket (idle, busy, partial, closed), and on in-process nodes the calls
and everything that depends on the loop hearing of them: ordering with queued calls, metrics, the actor listing,
cancels, flow control, large and non-plain replies, partial writes under load. Where the compiled modules are
not built (or DISTO_PURE_PYTHON=1, DISTO_THREAD_WRITES=0) the answers go through the loop and the same calls must
still give the same results."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import subprocess
import sys
import threading
from typing import Any, AsyncIterator

import pytest
import torch

import disto
from disto.actor import CallItem
from disto.node import NodeConfig
from disto.node.node import thread_replies
from disto.transport import threadwrites
from helpers import ROOT, calls_to, channel_to, eventually, instance, nodes, spawn

COMPILED = thread_replies()


def needs_thread_replies(fn: Any) -> Any:
    """Runs only where nodes answer on their actors' threads: compiled, on uvloop."""
    fn = pytest.mark.loops("uvloop")(fn)
    return pytest.mark.skipif(not COMPILED, reason="thread replies need the compiled modules")(fn)
READY = object()


def on_threads() -> bool:
    """Whether this test's nodes answer on their actors' threads: compiled, and on uvloop (asyncio's transports
    write with the GIL released: not eligible)."""
    return COMPILED and type(asyncio.get_running_loop()).__module__.startswith("uvloop")


class Echo(disto.Actor):
    def __init__(self) -> None:
        self.gate = threading.Event()

    def ping(self, x: Any) -> Any:
        return x

    def blob(self, n: int) -> str:
        return "x" * n

    def tensor(self, n: int) -> torch.Tensor:
        return torch.arange(n)

    def boom(self) -> None:
        raise KeyError("boom")

    def blocked(self) -> int:
        self.gate.wait(10)
        return 1

    @disto.on_loop
    def open_gate(self) -> None:
        self.gate.set()

    async def later(self, x: int) -> int:
        await asyncio.sleep(0)
        return x


# ---------------------------------------------------------------------- the write primitive, on a real socket
class FakeConn:
    state = READY


class FakeChannel:
    """What threadwrites.send reads and writes of a channel."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.wfd = os.dup(transport.get_extra_info("socket").fileno())
        self.closed = False
        self.conn = FakeConn()
        self.tail: list[bytes] | None = None
        self.bytes_out = 0

    def close(self) -> None:
        os.close(self.wfd)


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data


@contextlib.asynccontextmanager
async def _connected() -> AsyncIterator[tuple[asyncio.Transport, Sink, FakeChannel]]:
    """A uvloop TCP connection on 127.0.0.1: our transport, the peer's sink, and a channel for threadwrites."""
    loop = asyncio.get_running_loop()
    sink = Sink()
    server = await loop.create_server(lambda: sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    ch = FakeChannel(transport)
    try:
        await eventually(lambda: sink.transport is not None, what="the server side")
        yield transport, sink, ch
    finally:
        ch.close()
        transport.close()
        server.close()


def _on_thread(fn: Any, *args: Any) -> Any:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    t.join(10)
    return out[0]


def needs_primitive(fn: Any) -> Any:
    fn = pytest.mark.loops("uvloop")(fn)  # (the only transports it writes on)
    return pytest.mark.skipif(threadwrites.send is None, reason="the compiled write primitive is not built")(fn)


@needs_primitive
async def test_an_idle_socket_takes_the_frames_at_once_from_another_thread() -> None:
    async with _connected() as (transport, sink, ch):
        assert threadwrites.eligible(transport)
        assert _on_thread(threadwrites.send, ch, [b"abc", b"defg"], READY) == threadwrites.SENT
        assert ch.bytes_out == 7 and ch.tail is None and gc.isenabled()
        await eventually(lambda: bytes(sink.data) == b"abcdefg", what="the bytes at the peer")


@needs_primitive
async def test_frames_wait_behind_what_the_loop_has_buffered_and_a_partial_write_leaves_the_rest() -> None:
    async with _connected() as (transport, sink, ch):
        sink.transport.pause_reading()  # type: ignore[union-attr]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes while the peer does not read
        assert threadwrites.send(ch, [big], READY) == threadwrites.QUEUED
        assert 0 < ch.bytes_out < len(big) and ch.tail is not None
        assert ch.bytes_out + sum(map(len, ch.tail)) == len(big)
        written = ch.bytes_out
        # the loop's own writes now wait in its buffer: later frames from a thread go behind them, not before
        transport.write(ch.tail[0])
        ch.tail = None
        assert transport.get_write_buffer_size() > 0
        assert threadwrites.send(ch, [b"after"], READY) == threadwrites.QUEUED
        assert ch.tail == [b"after"] and ch.bytes_out == written
        assert threadwrites.send(ch, [b"more"], READY) == threadwrites.QUEUED and ch.tail == [b"after", b"more"]
        sink.transport.resume_reading()  # type: ignore[union-attr]
        await eventually(lambda: transport.get_write_buffer_size() == 0, what="the loop's buffer to drain")
        transport.write(b"".join(ch.tail))  # (what the channel's loop does with its tail)
        await eventually(lambda: len(sink.data) == len(big) + 9, what="every byte at the peer")
        assert bytes(sink.data) == big + b"aftermore"


@needs_primitive
async def test_nothing_is_written_on_a_closed_or_not_ready_channel_or_for_frames_that_are_not_bytes() -> None:
    async with _connected() as (transport, sink, ch):
        ch.conn.state = object()
        assert threadwrites.send(ch, [b"x"], READY) == threadwrites.DROPPED
        ch.conn.state = READY
        ch.closed = True
        assert threadwrites.send(ch, [b"x"], READY) == threadwrites.DROPPED
        ch.closed = False
        with pytest.raises(TypeError, match="must be bytes"):
            threadwrites.send(ch, [b"x", bytearray(b"y")], READY)
        assert gc.isenabled() and ch.bytes_out == 0 and ch.tail is None
        transport.close()
        assert threadwrites.send(ch, [b"x"], READY) == threadwrites.DROPPED
        assert sink.data == b""


def test_the_switch_and_the_pure_python_modules_turn_thread_writes_off() -> None:
    code = ("from disto.transport import threadwrites; from disto.node.node import thread_replies; "
            "print(threadwrites.AVAILABLE, thread_replies())")
    for env in ({"DISTO_THREAD_WRITES": "0"}, {"DISTO_PURE_PYTHON": "1"}):
        out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
        assert out == ["False", "False"], (env, out)


# ---------------------------------------------------------------------- on nodes
async def test_sync_calls_are_answered_by_the_actors_thread_and_counted_at_once() -> None:
    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Echo)
        for i in range(50):
            assert await ref.ping(i) == i
        assert await ref.ping({"k": [1, 2.5, "s"]}) == {"k": [1, 2.5, "s"]}
        assert b.stats()["thread_replies"] == (51 if on_threads() else 0)
        # what the loop had not heard of yet is settled when the actor is looked at
        row = _row(b, ref)
        assert row["methods"]["ping"]["counts"]["ok"] == 51
        assert row["state"] == "idle" and row["running"] == []


async def test_a_call_queued_behind_a_thread_answer_runs() -> None:
    # the async call waits for the slot the sync one holds: the thread must wake the loop when it answers
    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Echo)
        for i in range(3):
            first, queued = ref.blocked(), ref.later(i)
            await eventually(lambda: _row(b, ref)["queued"] == 1, what="the async call to wait for the slot")
            instance(b, ref).gate.set()
            assert await asyncio.wait_for(disto.collect([first, queued]), 10) == [1, i]
            instance(b, ref).gate.clear()
        futs = [ref.ping(i) if i % 2 else ref.later(i) for i in range(200)]  # (and mixed, pipelined)
        assert await asyncio.wait_for(disto.collect(futs), 20) == list(range(200))


def _row(node: disto.Node, ref: disto.ActorRef) -> dict[str, Any]:
    return next(r for r in node.stats()["actors"] if r["id"] == ref.actor_id)


async def test_what_a_thread_does_not_answer_goes_through_the_loop() -> None:
    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Echo)
        base = b.stats()["thread_replies"]
        assert await ref.blob(2_000_000) == "x" * 2_000_000  # over the inline payload bound
        assert torch.equal(await ref.tensor(10), torch.arange(10))  # buffers: the general path
        with pytest.raises(KeyError, match="boom"):
            await ref.boom()
        assert await ref.blob(300_000) == "x" * 300_000  # a pickled str, inline: the thread's
        assert b.stats()["thread_replies"] - base == (1 if on_threads() else 0)


async def test_a_cancelled_call_is_answered_once_and_the_connection_stays_usable() -> None:
    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Echo)
        fut = ref.blocked()
        await eventually(lambda: len(_row(b, ref)["running"]) == 1, what="the call to start")
        fut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fut
        await ref.open_gate()
        assert await ref.ping(7) == 7  # after the blocked call returned (its answer dropped: claimed by the loop)
        assert calls_to(a, b.address).pending == {}
        assert b.stats()["thread_replies"] <= 1  # (never the cancelled call's: see the next test)


@contextlib.asynccontextmanager
async def _callee() -> AsyncIterator[tuple[disto.Node, disto.Node, disto.ActorRef, Any]]:
    """Two nodes, an Echo on the second called from the first, and the second's channel to the first."""
    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Echo)
        assert await ref.ping(0) == 0
        yield a, b, ref, channel_to(b, a.address)


@needs_thread_replies
async def test_the_thread_claims_a_call_before_it_answers_and_leaves_one_the_loop_answered() -> None:
    async with _callee() as (a, b, ref, ch):
        replies = b._replies
        before, queued = replies.thread_answers, ch.queued
        gone = CallItem(ch, 7, "ping", (), {}, None)
        gone.abandoned = True  # the loop answered it (a cancel)
        assert replies.prepare(gone, 1) is None and replies.thread_answers == before and ch.queued == queued
        for value in (torch.zeros(1), object(), "x" * (2 << 20)):  # not plain, or too large: the loop's
            assert replies.prepare(CallItem(ch, 8, "ping", (), {}, None), value) is None
        item = CallItem(ch, 9, "ping", (), {}, None)
        frames = replies.prepare(item, {"ok": 1})
        assert frames and all(type(f) is bytes for f in frames)
        assert item.abandoned and item.t1 > 0 and replies.thread_answers == before + 1
        assert ch.queued == queued - 1  # (the call is no longer the channel's to count)
        ch.queued += 1  # (this test made the call up: nothing to send)


async def test_pipelined_calls_with_a_small_read_bound_all_come_back() -> None:
    # the channel stops reading at 8 queued calls; answers written by the thread must let it read again
    async with nodes(2, config=NodeConfig(max_queued=8)) as (a, b):
        ref = await spawn(a, b, Echo)
        for _ in range(3):
            futs = [ref.ping(i) for i in range(300)]
            assert await asyncio.wait_for(disto.collect(futs), 30) == list(range(300))


@needs_thread_replies
async def test_replies_larger_than_the_socket_takes_arrive_whole_next_to_small_ones() -> None:
    # a small send buffer on the callee's socket: the thread's writes are partial, the loop writes the rest
    async with _callee() as (a, b, ref, ch):
        sock = socket.socket(fileno=os.dup(ch.wfd))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.close()
        other = await spawn(a, b, Echo)
        for round_ in range(5):
            size = 200_000 + round_
            futs = [ref.blob(size), other.ping(round_), ref.ping({"r": round_}), other.blob(size + 1)]
            got = await asyncio.wait_for(disto.collect(futs), 30)
            assert got == ["x" * size, round_, {"r": round_}, "x" * (size + 1)]
        assert ch.tail is None and b.stats()["thread_replies"] >= 10
