"""The search link's protocol, sans-IO: bytes in, events out; requests in, bytes out. No sockets, threads or
asyncio, so both ends are tested and fuzzed from bytes alone (``fuzz/fuzz_wire.py`` target 5).

On the wire, after the router has sent the shard's 32-byte secret and the shard has answered ``\\x01``: frames
of ``u32 length | Thrift binary struct``, ``ShardSearch`` from router to shard and ``ShardSearchDone`` back
(``search.thrift``), answered in the order sent. Nothing on the link is ever unpickled.

Speed on a VM whose cores sleep between batches, where the first Python run after a wake-up is ~10x slower than
hot: the steady state touches as little code as it can. A request's bytes after its ``seq`` are cached per batch
shape, so the router sends the same bytes and the shard recognises them (:class:`ShardRequest` with
``struct=None``: same as the previous one); the common answer (no error) has fixed bytes around its three fields
and is packed and parsed with one ``struct`` call each (these are Thrift binary protocol bytes too: any other
encoder's output goes through the full bounded decoder).
"""
from __future__ import annotations

import collections
import hmac
import struct
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from disto import AuthenticationError, DistoError, RemoteProtocolError
from disto.wire.messages import decode_struct, encode

from ._idl import S

SECRET_BYTES = 32
GREETING = b"\x01"          # the shard's answer to a right secret
MAX_FRAME = 4096            # a ShardSearch is ~150 bytes; an answer with an error message is bounded by this too
_len = struct.Struct("!I")
_SEQ_HEAD = b"\x0a\x00\x01"  # field 1, i64: every ShardSearch and ShardSearchDone starts with its seq
_SEQ = struct.Struct("!q")
_CUT = len(_SEQ_HEAD) + _SEQ.size
# a framed ShardSearchDone without error, in Thrift binary protocol: {1: i64 seq, 2: double, 3: double} STOP
_DONE = struct.Struct("!I" + "bhq" + "bhd" + "bhd" + "b")
_DONE_HEAD = (10, 1, 4, 2, 4, 3, 0)
_DONE_FIELDS = struct.Struct("!7xq3xd3xdx")  # its seq, started, ended, when its fixed bytes are _DONE_BYTES's
_DONE_BYTES = _DONE.pack(_DONE.size - 4, 10, 1, 0, 4, 2, 0.0, 4, 3, 0.0, 0)


class ShardSearchError(DistoError):
    """A shard's Faiss search failed on the fast path (the message is the shard's: its exception type and text)."""


def done_bytes(seq: int, started: float, ended: float) -> bytes:
    """The framed answer of a search that went well: when the shard's Faiss call started and ended."""
    return _DONE.pack(_DONE.size - 4, 10, 1, seq, 4, 2, started, 4, 3, ended, 0)


def error_bytes(seq: int, message: str) -> bytes:
    out = encode(S.ShardSearchDone(seq=seq, started=0.0, ended=0.0, error=message[:1000]))
    return _len.pack(len(out)) + out


def _plain_done(data: bytes | bytearray) -> bool:
    """``data`` is exactly one framed answer without error (the fixed bytes around its fields match)."""
    return (len(data) == _DONE.size and data[:7] == _DONE_BYTES[:7] and data[15:18] == _DONE_BYTES[15:18]
            and data[26:29] == _DONE_BYTES[26:29] and data[37:] == _DONE_BYTES[37:])


# ------------------------------------------------------------------------------------------------ router end
class RouterEnd:
    """The router's end of one shard's link. :meth:`request` frames a search and remembers its ``tag``;
    :meth:`receive` turns the shard's bytes into ``(tag, result)`` pairs, result being ``(started, ended)`` or a
    :class:`ShardSearchError`. Bytes that break the protocol raise RemoteProtocolError (the link is then dead:
    the caller fails every tag in :meth:`take_pending`)."""

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.greeted = False  # the shard accepted our secret
        self._buf = bytearray()
        self._seq = 0
        self._pending: collections.deque[tuple[int, Any]] = collections.deque()  # (seq, tag), oldest first
        self._bodies: dict[Hashable, bytes] = {}  # a request's bytes after its seq, per batch shape

    @staticmethod
    def hello(secret: bytes) -> bytes:
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"a link secret is {SECRET_BYTES} bytes")
        return bytes(secret)

    def request(self, tag: Any, key: Hashable, build: Callable[[], Any]) -> bytes:
        """Frame the next search. ``key`` names the batch shape; ``build()`` makes its ShardSearch (any seq)
        the first time that shape is seen."""
        rest = self._bodies.get(key)
        if rest is None:
            if len(self._bodies) > 64:
                self._bodies.clear()
            rest = self._bodies[key] = encode(build())[_CUT:]
        self._seq += 1
        self._pending.append((self._seq, tag))
        return b"".join((_len.pack(_CUT + len(rest)), _SEQ_HEAD, _SEQ.pack(self._seq), rest))

    def receive(self, data: bytes) -> list[tuple[Any, Any]]:
        if self.greeted and not self._buf and _plain_done(data):
            seq, started, ended = _DONE_FIELDS.unpack(data)  # the steady state: one plain answer per read
            return [self._answer(seq, (started, ended))]
        self._buf += data
        if not self.greeted:
            if not self._buf:
                return []
            if self._buf[:1] != GREETING:
                raise RemoteProtocolError(f"shard {self.shard} link: bad greeting")
            del self._buf[:1]
            self.greeted = True
        out = []
        buf = self._buf
        while len(buf) >= 4:
            if len(buf) >= _DONE.size:
                f = _DONE.unpack_from(buf)
                if f[0] == _DONE.size - 4 and f[1:3] + f[4:6] + f[7:9] + f[10:] == _DONE_HEAD:
                    del buf[:_DONE.size]
                    out.append(self._answer(f[3], (f[6], f[9])))
                    continue
            (size,) = _len.unpack_from(buf)
            if size > MAX_FRAME:
                raise RemoteProtocolError(f"shard {self.shard} link: answer frame of {size} bytes")
            if len(buf) < 4 + size:
                break
            body = bytes(buf[4:4 + size])
            del buf[:4 + size]
            try:
                done = decode_struct(S.ShardSearchDone, body)
            except RemoteProtocolError as e:
                raise RemoteProtocolError(f"shard {self.shard} link: {e}") from None
            result = (ShardSearchError(f"shard {self.shard}: {done.error}") if done.error is not None
                      else (done.started, done.ended))
            out.append(self._answer(done.seq, result))
        return out

    def _answer(self, seq: int, result: Any) -> tuple[Any, Any]:
        if not self._pending or self._pending[0][0] != seq:
            raise RemoteProtocolError(f"shard {self.shard} link: answer to request {seq}, not the oldest pending")
        return self._pending.popleft()[1], result

    def take_pending(self) -> list[Any]:
        """The tags of every request still unanswered (forgotten here)."""
        tags = [tag for _, tag in self._pending]
        self._pending.clear()
        return tags


# ------------------------------------------------------------------------------------------------ shard end
@dataclass(frozen=True)
class ShardRequest:
    """A search to run: its ``seq`` and its ShardSearch, or ``struct=None`` when it is the previous request
    again but for its seq (the same batch shape: checked views can be reused)."""

    seq: int
    struct: Any


class ShardEnd:
    """The shard's end of one router's link: :meth:`receive` takes the router's bytes and returns what to send
    back now (the greeting) and the requests to answer, in order. A wrong secret raises AuthenticationError;
    bytes that break the protocol raise RemoteProtocolError (drop the connection either way)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self.authenticated = False
        self._buf = b""
        self._last: bytes | None = None  # the previous request's bytes after its seq

    def receive(self, data: bytes) -> tuple[bytes, list[ShardRequest]]:
        pending = self._buf + data if self._buf else data
        send = b""
        if not self.authenticated:
            if len(pending) < SECRET_BYTES:
                self._buf = pending
                return b"", []
            if not hmac.compare_digest(pending[:SECRET_BYTES], self._secret):
                raise AuthenticationError("wrong link secret")
            self.authenticated = True
            send = GREETING
            pending = pending[SECRET_BYTES:]
        out = []
        while len(pending) >= 4:
            (size,) = _len.unpack_from(pending)
            if size > MAX_FRAME:
                raise RemoteProtocolError(f"request frame of {size} bytes")
            if len(pending) < 4 + size:
                break
            body, pending = pending[4:4 + size], pending[4 + size:]
            out.append(self._request(body))
        self._buf = pending
        return send, out

    def _request(self, body: bytes) -> ShardRequest:
        head = body[:_CUT]
        if self._last is not None and head[:3] == _SEQ_HEAD and len(head) == _CUT and body[_CUT:] == self._last:
            return ShardRequest(_SEQ.unpack_from(body, 3)[0], None)
        req = decode_struct(S.ShardSearch, body)
        self._last = body[_CUT:] if head[:3] == _SEQ_HEAD else None
        return ShardRequest(req.seq, req)

    def forget_last(self) -> None:
        """The previous request was refused (bad views): decode the next one in full even if it is the same."""
        self._last = None
