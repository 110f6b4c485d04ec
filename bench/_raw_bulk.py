"""Raw-socket floor for bulk transfers: a uvloop BufferedProtocol server that reads each message straight into
one reused buffer and answers one byte; the client writes the payload as a memoryview.

    python bench/_raw_bulk.py server            -> prints its port
    python bench/_raw_bulk.py client PORT SIZE N -> N sends of SIZE bytes; prints seconds per send (JSON list)
"""
from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import time

import numpy as np
import uvloop


class Sink(asyncio.BufferedProtocol):
    def connection_made(self, t: asyncio.BaseTransport) -> None:
        self.t = t
        t.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.hdr = bytearray(8)
        self.buf = None
        self.need = 0
        self.got = 0
        self.in_header = True

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.in_header:
            return memoryview(self.hdr)[self.got:]
        return memoryview(self.buf)[self.got:self.need]

    def buffer_updated(self, n: int) -> None:
        self.got += n
        if self.in_header and self.got == 8:
            (self.need,) = struct.unpack("!Q", self.hdr)
            if self.buf is None or len(self.buf) < self.need:
                self.buf = bytearray(self.need)  # allocated once per size, then reused
            self.in_header, self.got = False, 0
        elif not self.in_header and self.got == self.need:
            self.in_header, self.got = True, 0
            self.t.write(b"k")


class Source(asyncio.Protocol):
    def connection_made(self, t: asyncio.BaseTransport) -> None:
        self.t = t
        t.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.waiter: asyncio.Future | None = None

    def data_received(self, data: bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


async def server() -> None:
    srv = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", 0)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


async def client(port: int, size: int, n: int) -> list[float]:
    loop = asyncio.get_running_loop()
    _, c = await loop.create_connection(Source, "127.0.0.1", port)
    payload = np.ones(size, dtype=np.uint8)
    out = []
    for _ in range(n):
        c.waiter = loop.create_future()
        t0 = time.perf_counter()
        c.t.writelines([struct.pack("!Q", size), memoryview(payload)])
        await c.waiter
        out.append(time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    if sys.argv[1] == "server":
        uvloop.run(server())
    else:
        print(json.dumps(uvloop.run(client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))))
