"""The raw floor: a uvloop TCP echo server and clients exchanging fixed-size 64-byte messages, one write per
message on both sides (what an RPC layer with no encoding cost at all would do).

    python bench/_raw_echo.py server            -> prints its port, echoes until killed
    python bench/_raw_echo.py w1 PORT N         -> N sequential round trips, prints latencies (ns) as JSON
    python bench/_raw_echo.py w2 PORT N INFLIGHT -> N pipelined messages, prints elapsed seconds
"""
from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

import uvloop

MSG = 64


class Echo(asyncio.Protocol):
    """Answers each 64-byte message with its own write, as an RPC server answers each call."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.buf = b""
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        n = len(buf) // MSG * MSG
        write = self.t.write
        for i in range(0, n, MSG):
            write(buf[i:i + MSG])
        self.buf = buf[n:]


class Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.received = 0
        self.waiter: asyncio.Future | None = None
        self.target = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.on_data is not None:
            self.on_data()
        if self.waiter is not None and self.received >= self.target and not self.waiter.done():
            self.waiter.set_result(None)

    on_data = None


async def server() -> None:
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(Echo, "127.0.0.1", 0)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


async def connect(port: int) -> Client:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Client, "127.0.0.1", port)
    return proto


async def w1(port: int, n: int) -> list[int]:
    c = await connect(port)
    loop = asyncio.get_running_loop()
    msg = b"x" * MSG
    out = []
    for _ in range(n):
        c.waiter = loop.create_future()
        c.target = c.received + MSG
        t0 = time.perf_counter_ns()
        c.t.write(msg)
        await c.waiter
        out.append(time.perf_counter_ns() - t0)
    return out


async def w2(port: int, n: int, inflight: int) -> float:
    c = await connect(port)
    loop = asyncio.get_running_loop()
    msg = b"x" * MSG
    sent = 0
    done = loop.create_future()

    def on_data() -> None:
        nonlocal sent
        got = c.received // MSG
        more = min(n, got + inflight) - sent
        write = c.t.write
        for _ in range(more):  # one write per message, as an RPC client sends each call
            write(msg)
        sent += max(more, 0)
        if got >= n and not done.done():
            done.set_result(None)

    c.on_data = on_data
    t0 = time.perf_counter()
    sent = min(n, inflight)
    for _ in range(sent):
        c.t.write(msg)
    await done
    return time.perf_counter() - t0


def main() -> None:
    mode = sys.argv[1]
    if mode == "server":
        uvloop.run(server())
    elif mode == "w1":
        print(json.dumps(uvloop.run(w1(int(sys.argv[2]), int(sys.argv[3])))))
    elif mode == "w2":
        print(json.dumps(uvloop.run(w2(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))))


if __name__ == "__main__":
    main()
