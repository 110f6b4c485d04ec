"""The same-host fast path between a router and its shard processes.

A search through an actor call pays, per shard and per batch, the generic path twice: pickling three arrays into
shared-memory descriptors, the node's Thrift frame, the actor dispatch, a hop into the shard's worker thread and
back, and the result arrays copied into a segment of the shard and released later (measured here: 1-2.5 ms a
batch). On one host none of that is needed: the router writes the batch into a shared-memory segment it owns,
sends each shard a small Thrift struct saying where (``ShardSearch`` in ``search.thrift``) over a Unix socket,
and a thread of the shard blocked on that socket runs Faiss straight into the result slots of the same segment
and answers with ``ShardSearchDone``. Nothing on this path is ever unpickled.

Security: the socket lives in a directory only this user can enter, and a connection must first present a
32-byte secret that the router got over disto's authenticated channel. A request names a segment of the form
``disto-<pid>-search-<n>`` in /dev/shm and offsets that are checked against its size before any array is made.

Failure: the shard's process dying closes the socket, which fails the pending searches at once with
NodeLostError (faster than heartbeats).

Speed: on a VM whose cores sleep between batches, the first Python run after a wake-up is ~10x slower than the
same code hot (measured here: a 4 µs Thrift decode takes 140 µs after 10 ms idle). So the steady state touches
as little as it can: a request whose bytes after ``seq`` equal the previous one reuses that one's checked views;
the common reply (no error) is packed and parsed with one ``struct`` call each (the same bytes as Thrift's
binary protocol: other encoders' output goes through the full decoder); one future per batch, not per shard.
"""
from __future__ import annotations

import asyncio
import collections
import hmac
import itertools
import mmap
import os
import re
import shutil
import socket
import struct
import tempfile
import threading
import weakref
from typing import Any, Callable

import numpy as np

from disto import DistoError, NodeLostError, RemoteProtocolError
from disto.wire.messages import decode_struct, encode

from ._idl import S

SHM_DIR = "/dev/shm"
SECRET_BYTES = 32
MAX_FRAME = 4096            # a ShardSearch is ~150 bytes; a reply with an error message is bounded by this too
HELLO_TIMEOUT = 5.0
_ALIGN = 64
_len = struct.Struct("!I")
_SEGMENT = re.compile(r"disto-\d+-search-\d+")
_SEQ_HEAD = b"\x0a\x00\x01"  # field 1, i64: every ShardSearch and ShardSearchDone starts with its seq
_SEQ = struct.Struct("!q")
_block_numbers = itertools.count(1)  # per process: names are never reused
# a framed ShardSearchDone without error, in Thrift binary protocol: {1: i64 seq, 2: double, 3: double} STOP
_DONE = struct.Struct("!I" + "bhq" + "bhd" + "bhd" + "b")
_DONE_HEAD = (10, 1, 4, 2, 4, 3, 0)
_DONE_FIELDS = struct.Struct("!7xq3xd3xdx")  # its seq, started, ended, when its fixed bytes are _DONE_BYTES's
_DONE_BYTES = _DONE.pack(_DONE.size - 4, 10, 1, 0, 4, 2, 0.0, 4, 3, 0.0, 0)


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
class Block:
    """A segment of the router's shared memory: one batch, its assignment and every shard's result slots."""

    __slots__ = ("name", "size", "mm", "path", "_unlink", "__weakref__")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.path = os.path.join(SHM_DIR, name)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self.mm = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(self.path)
            raise
        finally:
            os.close(fd)
        self._unlink = weakref.finalize(self, _unlink_quietly, self.path)  # also at exit

    def view(self, offset: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        return np.frombuffer(self.mm, dtype=dtype, count=count, offset=offset).reshape(shape)

    def discard(self) -> None:
        """Unlink the name (mappings that exist stay valid); the memory goes with the last view of it."""
        self._unlink()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class BlockPool:
    """Reused segments, so a batch's pages are faulted in once, not per batch. Names start with
    ``disto-<pid>-`` so that the node janitor removes them if this process dies."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._free: list[Block] = []

    def take(self, nbytes: int) -> Block:
        fits = [b for b in self._free if b.size >= nbytes]
        if fits:
            best = min(fits, key=lambda b: b.size)
            self._free.remove(best)
            return best
        return Block(f"disto-{os.getpid()}-search-{next(_block_numbers)}",
                     max(1 << 16, 1 << (nbytes - 1).bit_length()))

    def give(self, block: Block) -> None:
        if len(self._free) < self.keep:
            self._free.append(block)
        else:
            block.discard()

    def close(self) -> None:
        for b in self._free:
            b.discard()
        self._free.clear()


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

    def results(self, block: Block, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """Views of one shard's result slots."""
        nk = self.n * self.k
        return (block.view(self.distances + shard * nk * 4, np.float32, (self.n, self.k)),
                block.view(self.labels + shard * nk * 8, np.int64, (self.n, self.k)))

    def request(self, seq: int, block: Block, shard: int) -> Any:
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
    """The router's end of one shard's socket. Searches are answered in the order they were sent."""

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self._pending: collections.deque[tuple[int, Replies, int]] = collections.deque()
        self._buf = bytearray()
        self._hello: asyncio.Future | None = None
        self._transport: asyncio.Transport | None = None
        self._seq = 0
        self._bodies: dict[tuple[Any, ...], bytes] = {}  # a request's bytes after its seq, per batch shape
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
            transport.write(bytes(address["secret"]))
            await asyncio.wait_for(asyncio.shield(link._hello), timeout)
        except (OSError, asyncio.TimeoutError, NodeLostError):
            link.close()
            return None
        return link

    def search(self, block: Block, layout: Layout, replies: Replies, slot: int) -> None:
        """Send one request; ``replies.done(slot, ...)`` gets (started, ended) wall clocks once the shard has
        written its results into the block, or the exception."""
        if self.closed or self._transport is None:
            replies.done(slot, NodeLostError(f"shard {self.shard}: its link is closed"))
            return
        self._seq += 1
        key = (block.name, layout.n, layout.d, layout.k, layout.nprobe, layout.distances)
        rest = self._bodies.get(key)
        if rest is None:
            if len(self._bodies) > 64:
                self._bodies.clear()
            rest = self._bodies[key] = encode(layout.request(0, block, self.shard))[len(_SEQ_HEAD) + 8:]
        self._pending.append((self._seq, replies, slot))
        self._transport.write(b"".join((_len.pack(len(_SEQ_HEAD) + 8 + len(rest)), _SEQ_HEAD,
                                        _SEQ.pack(self._seq), rest)))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._fail(NodeLostError(f"shard {self.shard}: link closed"))

    # ------------------------------------------------------------------ protocol callbacks
    def _data(self, data: bytes) -> None:
        if (len(data) == _DONE.size and not self._buf and data[:7] == _DONE_BYTES[:7]
                and data[15:18] == _DONE_BYTES[15:18] and data[26:29] == _DONE_BYTES[26:29]
                and data[37:] == _DONE_BYTES[37:] and self._hello is not None and self._hello.done()):
            seq, started, ended = _DONE_FIELDS.unpack(data)  # the steady state: one plain answer per read
            self._answer(seq, (started, ended))
            return
        self._buf += data
        if self._hello is not None and not self._hello.done():
            if self._buf[:1] != b"\x01":
                return self._broken("bad hello")
            del self._buf[:1]
            self._hello.set_result(True)
        while len(self._buf) >= 4:
            if len(self._buf) >= _DONE.size:
                f = _DONE.unpack_from(self._buf)
                if f[0] == _DONE.size - 4 and f[1:3] + f[4:6] + f[7:9] + f[10:] == _DONE_HEAD:
                    del self._buf[:_DONE.size]
                    if self._answer(f[3], (f[6], f[9])):
                        continue
                    return
            (size,) = _len.unpack_from(self._buf)
            if size > MAX_FRAME:
                return self._broken(f"reply frame of {size} bytes")
            if len(self._buf) < 4 + size:
                return
            body = bytes(self._buf[4:4 + size])
            del self._buf[:4 + size]
            try:
                done = decode_struct(S.ShardSearchDone, body)
            except RemoteProtocolError as e:
                return self._broken(str(e))
            result = (ShardSearchError(f"shard {self.shard}: {done.error}") if done.error is not None
                      else (done.started, done.ended))
            if not self._answer(done.seq, result):
                return

    def _answer(self, seq: int, result: Any) -> bool:
        if not self._pending or self._pending[0][0] != seq:
            self._broken(f"reply to request {seq}, not the oldest one pending")
            return False
        _, replies, slot = self._pending.popleft()
        replies.done(slot, result)  # a cancelled search's replies are simply not read
        return True

    def _broken(self, why: str) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()
        self._fail(RemoteProtocolError(f"shard {self.shard} link: {why}"))

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(NodeLostError(str(exc)))
            self._hello.exception()  # retrieved: open() handles it
        while self._pending:
            _, replies, slot = self._pending.popleft()
            replies.done(slot, exc)


class ShardSearchError(DistoError):
    """A shard's Faiss search failed on the fast path (the message is the shard's: its exception type and text)."""


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


class LinkServer:
    """The shard's end: a Unix socket in a private directory, one thread per connected router (Faiss drops the
    GIL, so the shard's event loop keeps running). ``search_into(xq, k, assign, coarse, D, I)`` does the work."""

    max_mappings = 8

    def __init__(self, search_into: SearchInto, d: int, nlist: int, max_k: int, *, name: str = "shard",
                 on_thread_start: Callable[[], None] | None = None) -> None:
        self._search = search_into
        self.d, self.nlist, self.max_k = d, nlist, max_k
        self._on_thread_start = on_thread_start
        self.secret = os.urandom(SECRET_BYTES)
        self._dir = tempfile.mkdtemp(prefix="disto-link-")  # mode 0700: only this user can reach the socket
        self.path = os.path.join(self._dir, "sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(16)
        self._maps: collections.OrderedDict[str, mmap.mmap] = collections.OrderedDict()
        self._maps_lock = threading.Lock()
        self._last: dict[socket.socket, tuple[bytes, tuple[Any, ...]]] = {}  # per connection: request -> views
        self._conns: set[socket.socket] = set()
        self.closed = False
        threading.Thread(target=self._accept, name=f"disto-link-{name}", daemon=True).start()

    def address(self) -> dict[str, Any]:
        return {"path": self.path, "secret": self.secret, "boot_id": boot_id()}

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
            self._maps.clear()  # closed by the collector once no view uses them

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="disto-link-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self._conns.add(conn)
        try:
            if self._on_thread_start is not None:
                self._on_thread_start()
            conn.settimeout(HELLO_TIMEOUT)
            got = _recv_exact(conn, SECRET_BYTES)
            if got is None or not hmac.compare_digest(got, self.secret):
                return
            conn.settimeout(None)
            conn.sendall(b"\x01")
            pending = b""
            while not self.closed:
                chunk = conn.recv(1 << 16)  # one request is one recv in the steady state
                if not chunk:
                    return
                pending = pending + chunk if pending else chunk
                while len(pending) >= 4:
                    (size,) = _len.unpack_from(pending)
                    if size > MAX_FRAME:
                        return
                    if len(pending) < 4 + size:
                        break
                    body, pending = pending[4:4 + size], pending[4 + size:]
                    if not self._one(conn, body):
                        return
        except OSError:
            return
        finally:
            self._conns.discard(conn)
            self._last.pop(conn, None)
            conn.close()

    def _one(self, conn: socket.socket, body: bytes) -> bool:
        """Answer one request; False when it is not even a ShardSearch (the connection is then dropped)."""
        last = self._last.get(conn)
        cut = len(_SEQ_HEAD) + 8
        if last is not None and body[:3] == _SEQ_HEAD and body[cut:] == last[0]:
            seq, views = _SEQ.unpack_from(body, 3)[0], last[1]  # the same batch shape again: checked already
        else:
            try:
                req = decode_struct(S.ShardSearch, body)
            except RemoteProtocolError:
                return False
            seq = req.seq
            try:
                views = self._views(req)
            except Exception as e:
                conn.sendall(self._error(seq, e))
                return True
            if body[:3] == _SEQ_HEAD:
                self._last[conn] = (body[cut:], views)
        try:
            started, ended = self._search(*views)
        except Exception as e:  # the router raises it for this batch; the link stays up
            conn.sendall(self._error(seq, e))
            return True
        conn.sendall(_DONE.pack(_DONE.size - 4, 10, 1, seq, 4, 2, started, 4, 3, ended, 0))
        return True

    @staticmethod
    def _error(seq: int, e: Exception) -> bytes:
        out = encode(S.ShardSearchDone(seq=seq, started=0.0, ended=0.0, error=f"{type(e).__name__}: {e}"[:1000]))
        return _len.pack(len(out)) + out

    def _views(self, req: Any) -> tuple[Any, ...]:
        n, d, k, nprobe = req.n, req.d, req.k, req.nprobe
        if not (0 < n <= 1 << 24 and d == self.d and 0 < k <= self.max_k and 0 < nprobe <= self.nlist):
            raise ValueError(f"bad request shape n={n} d={d} k={k} nprobe={nprobe}")
        mm = self._map(req.segment)
        size = len(mm)

        def view(offset: int, dtype: Any, shape: tuple[int, int]) -> np.ndarray:
            dt = np.dtype(dtype)
            nbytes = shape[0] * shape[1] * dt.itemsize
            if offset < 0 or offset % dt.itemsize or offset + nbytes > size:
                raise ValueError(f"offset {offset} (+{nbytes} bytes) outside segment {req.segment}")
            return np.frombuffer(mm, dtype=dt, count=shape[0] * shape[1], offset=offset).reshape(shape)

        return (view(req.queries, np.float32, (n, d)), k, view(req.assign, np.int64, (n, nprobe)),
                view(req.coarse, np.float32, (n, nprobe)), view(req.distances, np.float32, (n, k)),
                view(req.labels, np.int64, (n, k)))

    def _map(self, name: str) -> mmap.mmap:
        if not _SEGMENT.fullmatch(name):
            raise ValueError(f"not a search segment: {name!r}")
        with self._maps_lock:
            mm = self._maps.get(name)
            if mm is not None:
                self._maps.move_to_end(name)
                return mm
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_NOFOLLOW)
        try:
            mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        with self._maps_lock:
            self._maps[name] = mm
            while len(self._maps) > self.max_mappings:
                self._maps.popitem(last=False)  # unmapped once no view of it is left
        return mm
