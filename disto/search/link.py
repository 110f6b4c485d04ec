"""The same-host fast path between a router and its shard processes: the IO around :mod:`.link_protocol`.

A search through an actor call pays, per shard and per batch, the generic path twice: pickling three arrays into
shared-memory descriptors, the node's Thrift frame, the actor dispatch, a hop into the shard's worker thread and
back, and the result arrays copied into a segment of the shard and released later (measured here: 1-2.5 ms a
batch). On one host none of that is needed: the router writes the batch into a shared-memory segment it owns (a
``search`` segment of :mod:`disto.memory.segments`), sends each shard a small Thrift struct saying where over a
Unix socket, and a thread of the shard blocked on that socket runs Faiss straight into the result slots of the
same segment and answers. Nothing on this path is ever unpickled.

Security: the socket lives in a directory only this user can enter, and a connection must first present a
32-byte secret that the router got over disto's authenticated channel. A request names a segment of the form
``disto-<pid>-search-<n>`` in /dev/shm and offsets that are checked against its size before any array is made.

Failure: the shard's process dying closes the socket, which fails the pending searches at once with
NodeLostError (faster than heartbeats).
"""
from __future__ import annotations

import asyncio
import collections
import os
import shutil
import socket
import tempfile
import threading
from typing import Any, Callable

import numpy as np

from disto import AuthenticationError, NodeLostError, RemoteProtocolError
from disto.memory import Segment, SegmentPool

from ._idl import S
from .link_protocol import (SECRET_BYTES, RouterEnd, ShardEnd, ShardRequest, ShardSearchError, done_bytes,
                            error_bytes)

SHM_DIR = "/dev/shm"
PURPOSE = "search"
HELLO_TIMEOUT = 5.0
_ALIGN = 64

__all__ = ["SECRET_BYTES", "BlockPool", "Layout", "LinkServer", "Replies", "ShardLink", "ShardSearchError",
           "boot_id"]


def boot_id() -> str:
    """This kernel's boot id: two processes with the same one (and the same /dev/shm) share memory."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


# ------------------------------------------------------------------------------------------------ router side
class BlockPool(SegmentPool):
    """Reused ``search`` segments (one batch, its assignment and every shard's result slots each), so a batch's
    pages are faulted in once, not per batch; at most ``keep`` free ones are kept."""

    def __init__(self, keep: int = 8) -> None:
        super().__init__(PURPOSE, min_size=1 << 16, max_free=keep)


class Layout:
    """Byte offsets of one batch in a block: the batch, then each shard's result slots (64-byte aligned)."""

    def __init__(self, n: int, d: int, k: int, nprobe: int, shards: int) -> None:
        def take(nbytes: int) -> int:
            nonlocal end
            at = end
            end += -(-nbytes // _ALIGN) * _ALIGN
            return at

        end = 0
        self.n, self.d, self.k, self.nprobe = n, d, k, nprobe
        self.assign = take(n * nprobe * 8)
        self.queries = take(n * d * 4)
        self.coarse = take(n * nprobe * 4)
        self.distances = take(shards * n * k * 4)  # (shards, n, k): merged straight from here
        self.labels = take(shards * n * k * 8)
        self.size = end

    def results(self, block: Segment, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """Views of one shard's result slots."""
        nk = self.n * self.k
        return (block.array(self.distances + shard * nk * 4, np.float32, (self.n, self.k)),
                block.array(self.labels + shard * nk * 8, np.int64, (self.n, self.k)))

    def request(self, seq: int, block: Segment, shard: int) -> Any:
        nk = self.n * self.k
        return S.ShardSearch(seq=seq, segment=block.name, n=self.n, d=self.d, k=self.k, nprobe=self.nprobe,
                             queries=self.queries, assign=self.assign, coarse=self.coarse,
                             distances=self.distances + shard * nk * 4, labels=self.labels + shard * nk * 8)


class Replies:
    """The answers of one batch's shards: ``future`` is done once every shard has answered or failed;
    ``results[slot]`` is (started, ended) or the exception."""

    __slots__ = ("left", "results", "future")

    def __init__(self, slots: int) -> None:
        self.left = slots
        self.results: dict[int, Any] = {}
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()

    def done(self, slot: int, result: Any) -> None:
        if slot in self.results:
            return
        self.results[slot] = result
        self.left -= 1
        if self.left <= 0 and not self.future.done():
            self.future.set_result(None)


class ShardLink:
    """The router's end of one shard's socket (asyncio glue over :class:`RouterEnd`). Searches are answered in
    the order they were sent."""

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.end = RouterEnd(shard)
        self._hello: asyncio.Future | None = None
        self._transport: asyncio.Transport | None = None
        self.closed = False

    @classmethod
    async def open(cls, shard: int, address: dict[str, Any], timeout: float = HELLO_TIMEOUT) -> "ShardLink | None":
        """Connect to a shard's link, or None when it is not reachable from here (another host)."""
        path = address.get("path")
        if not path or address.get("boot_id") != boot_id() or not os.path.exists(path):
            return None
        loop = asyncio.get_running_loop()
        link = cls(shard)
        link._hello = loop.create_future()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_unix_connection(lambda: _LinkProtocol(link), path), timeout)
            link._transport = transport  # type: ignore[assignment]
            transport.write(RouterEnd.hello(bytes(address["secret"])))
            await asyncio.wait_for(asyncio.shield(link._hello), timeout)
        except (OSError, asyncio.TimeoutError, NodeLostError, ValueError):
            link.close()
            return None
        return link

    def search(self, block: Segment, layout: Layout, replies: "Replies", slot: int) -> None:
        """Send one request; ``replies.done(slot, ...)`` gets (started, ended) wall clocks once the shard has
        written its results into the block, or the exception."""
        if self.closed or self._transport is None:
            replies.done(slot, NodeLostError(f"shard {self.shard}: its link is closed"))
            return
        key = (block.name, layout.n, layout.d, layout.k, layout.nprobe, layout.distances)
        self._transport.write(self.end.request((replies, slot), key, lambda: layout.request(0, block, self.shard)))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._fail(NodeLostError(f"shard {self.shard}: link closed"))

    # ------------------------------------------------------------------ protocol callbacks
    def _data(self, data: bytes) -> None:
        try:
            answers = self.end.receive(data)
        except RemoteProtocolError as e:
            self.closed = True
            if self._transport is not None:
                self._transport.close()
            self._fail(e)
            return
        if self._hello is not None and not self._hello.done() and self.end.greeted:
            self._hello.set_result(True)
        for (replies, slot), result in answers:
            replies.done(slot, result)  # a cancelled search's replies are simply not read

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(NodeLostError(str(exc)))
            self._hello.exception()  # retrieved: open() handles it
        for replies, slot in self.end.take_pending():
            replies.done(slot, exc)


class _LinkProtocol(asyncio.Protocol):
    def __init__(self, link: ShardLink) -> None:
        self.link = link

    def data_received(self, data: bytes) -> None:
        self.link._data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._fail(NodeLostError(f"shard {self.link.shard}: its process closed the link"
                                      + (f" ({exc})" if exc else "")))


# ------------------------------------------------------------------------------------------------ shard side
SearchInto = Callable[[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[float, float]]


class LinkSession:
    """One router's connection at the shard: bytes in, bytes to send back out (the greeting, then one answer per
    request). IO-free apart from mapping the segments a request names, so fuzzing drives it from bytes."""

    def __init__(self, server: "LinkServer") -> None:
        self._server = server
        self.end = ShardEnd(server.secret)
        self._views: tuple[Any, ...] | None = None  # the previous request's checked views

    def feed(self, data: bytes) -> list[bytes]:
        """Raises AuthenticationError or RemoteProtocolError when the connection must be dropped."""
        send, requests = self.end.receive(data)
        out = [send] if send else []
        for req in requests:
            out.append(self.answer(req))
        return out

    def answer(self, req: ShardRequest) -> bytes:
        if req.struct is not None:
            try:
                self._views = self._server.views(req.struct)
            except Exception as e:  # a bad request: this batch fails, the link stays up
                self._views = None
                self.end.forget_last()
                return error_bytes(req.seq, f"{type(e).__name__}: {e}")
        views = self._views
        if views is None:
            return error_bytes(req.seq, "ValueError: no previous request to repeat")
        try:
            started, ended = self._server.search_into(*views)
        except Exception as e:  # the router raises it for this batch; the link stays up
            return error_bytes(req.seq, f"{type(e).__name__}: {e}")
        return done_bytes(req.seq, started, ended)


class LinkServer:
    """The shard's end: a Unix socket in a private directory, one thread per connected router (Faiss drops the
    GIL, so the shard's event loop keeps running). ``search_into(xq, k, assign, coarse, D, I)`` does the work."""

    max_mappings = 8

    def __init__(self, search_into: SearchInto, d: int, nlist: int, max_k: int, *, name: str = "shard",
                 on_thread_start: Callable[[], None] | None = None) -> None:
        self.search_into = search_into
        self.d, self.nlist, self.max_k = d, nlist, max_k
        self._on_thread_start = on_thread_start
        self.secret = os.urandom(SECRET_BYTES)
        self._dir = tempfile.mkdtemp(prefix="disto-link-")  # mode 0700: only this user can reach the socket
        self.path = os.path.join(self._dir, "sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(16)
        self._maps: collections.OrderedDict[str, Segment] = collections.OrderedDict()
        self._maps_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self.closed = False
        threading.Thread(target=self._accept, name=f"disto-link-{name}", daemon=True).start()

    def address(self) -> dict[str, Any]:
        return {"path": self.path, "secret": self.secret, "boot_id": boot_id()}

    def session(self) -> LinkSession:
        return LinkSession(self)

    def close(self) -> None:
        self.closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        shutil.rmtree(self._dir, ignore_errors=True)
        with self._maps_lock:
            self._maps.clear()  # unmapped by the collector once no view uses them

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="disto-link-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self._conns.add(conn)
        session = self.session()
        try:
            if self._on_thread_start is not None:
                self._on_thread_start()
            conn.settimeout(HELLO_TIMEOUT)
            secret = _recv_exact(conn, SECRET_BYTES)
            if secret is None:
                return
            for out in session.feed(secret):
                conn.sendall(out)
            conn.settimeout(None)
            while not self.closed:
                chunk = conn.recv(1 << 16)  # one request is one recv in the steady state
                if not chunk:
                    return
                for out in session.feed(chunk):
                    conn.sendall(out)
        except (OSError, AuthenticationError, RemoteProtocolError):
            return
        finally:
            self._conns.discard(conn)
            conn.close()

    def views(self, req: Any) -> tuple[Any, ...]:
        """The arrays a request names, checked: its shape against this shard, its segment's name, and every
        offset against the segment's size and the dtype's alignment (ValueError otherwise)."""
        n, d, k, nprobe = req.n, req.d, req.k, req.nprobe
        if not (0 < n <= 1 << 24 and d == self.d and 0 < k <= self.max_k and 0 < nprobe <= self.nlist):
            raise ValueError(f"bad request shape n={n} d={d} k={k} nprobe={nprobe}")
        seg = self._map(req.segment)
        return (seg.array(req.queries, np.float32, (n, d)), k, seg.array(req.assign, np.int64, (n, nprobe)),
                seg.array(req.coarse, np.float32, (n, nprobe)), seg.array(req.distances, np.float32, (n, k)),
                seg.array(req.labels, np.int64, (n, k)))

    def _map(self, name: str) -> Segment:
        with self._maps_lock:
            seg = self._maps.get(name)
            if seg is not None:
                self._maps.move_to_end(name)
                return seg
        seg = Segment.open(name, SHM_DIR, purpose=PURPOSE)  # refuses any other name before opening anything
        with self._maps_lock:
            self._maps[name] = seg
            while len(self._maps) > self.max_mappings:
                self._maps.popitem(last=False)  # unmapped once no view of it is left
        return seg
