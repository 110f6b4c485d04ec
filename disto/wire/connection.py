"""The sans-IO protocol state machine: bytes in, events out; events in, bytes out. No asyncio, sockets or torch.

Receiving follows asyncio's BufferedProtocol: :meth:`Connection.get_buffer` says where the next bytes should land
and :meth:`Connection.buffer_updated` says how many did. Small frames land in one reused receive buffer; a large
out-of-band buffer is read straight into memory from ``alloc`` (a pooled, reused block), so it is never copied in
Python. :meth:`Connection.receive_data` wraps the two for tests and for transports that hand over bytes.

State table::

    HANDSHAKE --(peer proved the token)--> READY --(goodbye / error / close)--> CLOSED

In HANDSHAKE only HELLO, WELCOME and AUTH are accepted (bodies <= 4 KiB, no out-of-band bytes), so nothing an
unauthenticated peer sends can reach a pickle decoder. Any malformed input raises RemoteProtocolError, moves the
connection to CLOSED and makes every later call a no-op that returns nothing.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

from .._errors import AuthenticationError, LocalProtocolError, RemoteProtocolError
from .fastcodec import decode_call, decode_reply, encode_call, encode_reply
from .messages import STRUCT_OF_KIND, WIRE_VERSION, BufferKind, Kind, T, decode, encode

HEADER = struct.Struct("!IBBHQ")  # body_len, version, kind, flags, oob_len
HEADER_SIZE = HEADER.size
_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack
HANDSHAKE_MAX_BODY = 4096
NONCE_SIZE = 32
DEFAULT_MAX_BODY = 16 << 20
DEFAULT_MAX_FRAME = 16 << 30
DEFAULT_LARGE = 64 << 10  # out-of-band buffers at least this big are read straight into their own memory
_RX_INITIAL = 256 << 10
_RX_MIN_FREE = 64 << 10

Buffer = Union[bytes, bytearray, memoryview]
Alloc = Callable[[int], memoryview]


class State(enum.Enum):
    HANDSHAKE = "handshake"
    READY = "ready"
    CLOSED = "closed"


_READY = State.READY


@dataclass(frozen=True)
class Identity:
    """Who a node is, as exchanged in the handshake."""

    node_id: str
    listen: str = ""
    host_id: str = ""
    pid: int = 0


class Message:
    """One application frame: its kind, decoded Thrift body, and out-of-band buffers (writable memory)."""

    __slots__ = ("kind", "body", "buffers")

    def __init__(self, kind: int, body: Any, buffers: list[Any]) -> None:
        self.kind = kind
        self.body = body
        self.buffers = buffers

    def __repr__(self) -> str:
        return f"Message({Kind._VALUES_TO_NAMES.get(self.kind, self.kind)}, {self.body!r}, {len(self.buffers)} buffers)"


@dataclass(frozen=True)
class Ready:
    """The handshake completed: the peer proved it holds the token."""

    peer: Identity


Event = Union[Message, Ready]


def _default_alloc(n: int) -> memoryview:
    return memoryview(bytearray(n))


def _mac(token: bytes, label: bytes, *parts: bytes) -> bytes:
    h = hmac.new(token, label, hashlib.sha256)
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.digest()


def _identity_bytes(ident: Identity) -> bytes:
    return f"{ident.node_id}\0{ident.listen}\0{ident.host_id}\0{ident.pid}".encode()


# what may arrive next during the handshake, per role
_EXPECT = {True: Kind.WELCOME, False: Kind.HELLO}
_CALL = Kind.CALL
_REPLY = Kind.REPLY
_APP_KINDS = frozenset({Kind.CALL, Kind.REPLY, Kind.FAILURE, Kind.CANCEL, Kind.HEARTBEAT, Kind.GOODBYE,
                        Kind.RELEASE})
_EXTERNAL_KINDS = frozenset({BufferKind.SHM, BufferKind.SHM_SHARED, BufferKind.CUDA_IPC})
_KINDS_WITH_BUFFERS = frozenset({Kind.CALL, Kind.REPLY})


class Connection:
    """One end of a disto connection. ``dialer`` is the side that opened it and speaks first."""

    def __init__(
        self,
        *,
        dialer: bool,
        token: bytes,
        identity: Identity,
        max_body: int = DEFAULT_MAX_BODY,
        max_frame: int = DEFAULT_MAX_FRAME,
        large: int = DEFAULT_LARGE,
        alloc: Alloc | None = None,
    ) -> None:
        if not token:
            raise AuthenticationError("an empty token is not allowed")
        self.dialer = dialer
        self.identity = identity
        self.peer: Identity | None = None
        self.state = State.HANDSHAKE
        self._token = token
        self._max_body = max_body
        self._max_frame = max_frame
        self._large = large
        self._alloc = alloc or _default_alloc
        self._nonce = os.urandom(NONCE_SIZE)
        self._hello_body = b""
        self._expect = _EXPECT[dialer]
        self._outbox: list[Buffer] = []
        # receive state
        self._rx = bytearray(_RX_INITIAL)
        self._rstart = 0
        self._rend = 0
        self._hdr: tuple[int, int, int, int, int] | None = None
        self._msg: Message | None = None
        self._pending_sizes: list[int] = []  # inline buffer sizes still to read for self._msg
        self._direct: memoryview | None = None  # destination of a large buffer being read
        self._direct_filled = 0
        if dialer:
            hello = T.Hello(version=WIRE_VERSION, nonce=self._nonce, node_id=identity.node_id,
                            listen=identity.listen, host_id=identity.host_id, pid=identity.pid)
            self._hello_body = encode(hello)
            self._outbox.append(self._frame_bytes(Kind.HELLO, self._hello_body))

    # ------------------------------------------------------------------ sending
    def data_to_send(self) -> list[Buffer]:
        """Bytes the protocol itself wants sent (handshake replies). Call after every receive."""
        out, self._outbox = self._outbox, []
        return out

    @staticmethod
    def _frame_bytes(kind: int, body: bytes, oob_len: int = 0) -> bytes:
        return HEADER.pack(len(body), WIRE_VERSION, kind, 0, oob_len) + body

    def send(self, kind: int, body: Any, buffers: Sequence[Buffer] = ()) -> list[Buffer]:
        """Frame one application message. ``buffers`` go out-of-band, after the body, without being copied."""
        if self.state is not State.READY:
            raise LocalProtocolError(f"cannot send {Kind._VALUES_TO_NAMES.get(kind, kind)} in state {self.state.value}")
        if kind not in _APP_KINDS:
            raise LocalProtocolError(f"not an application message kind: {kind}")
        if buffers:
            if kind not in _KINDS_WITH_BUFFERS:
                raise LocalProtocolError("only CALL and REPLY carry buffers")
            views, sizes, total, descs = self._views(buffers)
            body.buffers = descs if descs is not None else [T.BufferDesc(size=n) for n in sizes]
            return [self._checked_frame(kind, encode(body), total), *views]
        return [self._checked_frame(kind, encode(body), 0)]

    def send_call(self, call_id: int, actor_id: int, method: str, payload: Buffer | None,
                  buffers: Sequence[Buffer] = (), payload_oob: bool = False, node_id: str | None = None
                  ) -> list[Buffer]:
        """Frame a CALL (the hot path: no thriftpy2 object is built). ``call_id`` 0 means one-way."""
        if self.state is not State.READY:
            raise LocalProtocolError(f"cannot send CALL in state {self.state.value}")
        if not buffers:
            body = encode_call(call_id, actor_id, method, payload, (), payload_oob, node_id)
            if len(body) <= self._max_body:
                return [_pack_header(len(body), WIRE_VERSION, _CALL, 0, 0) + body]
            return [self._checked_frame(Kind.CALL, body, 0)]
        views, sizes, total, descs = self._views(buffers)
        if descs is None:
            body = encode_call(call_id, actor_id, method, payload, sizes, payload_oob, node_id)
        else:
            body = encode(T.Call(call_id=call_id, actor_id=actor_id, method=method, payload=payload,
                                 buffers=descs, payload_oob=payload_oob, node_id=node_id))
        return [self._checked_frame(Kind.CALL, body, total), *views]

    def send_reply(self, call_id: int, payload: Buffer | None, buffers: Sequence[Buffer] = (),
                   payload_oob: bool = False) -> list[Buffer]:
        """Frame a REPLY (the hot path)."""
        if self.state is not State.READY:
            raise LocalProtocolError(f"cannot send REPLY in state {self.state.value}")
        if not buffers:
            body = encode_reply(call_id, payload, (), payload_oob)
            if len(body) <= self._max_body:
                return [_pack_header(len(body), WIRE_VERSION, _REPLY, 0, 0) + body]
            return [self._checked_frame(Kind.REPLY, body, 0)]
        views, sizes, total, descs = self._views(buffers)
        if descs is None:
            body = encode_reply(call_id, payload, sizes, payload_oob)
        else:
            body = encode(T.Reply(call_id=call_id, payload=payload, buffers=descs, payload_oob=payload_oob))
        return [self._checked_frame(Kind.REPLY, body, total), *views]

    @staticmethod
    def _views(buffers: Sequence[Any]) -> tuple[list[memoryview], list[int], int, list[Any] | None]:
        """Views to write after the body, their sizes, their total, and (only if some buffers are external
        descriptors that live elsewhere: shared memory, CUDA IPC) the full descriptor list."""
        views = []
        sizes = []
        descs: list[Any] | None = None
        for i, b in enumerate(buffers):
            if isinstance(b, T.BufferDesc):
                if b.kind not in _EXTERNAL_KINDS:
                    raise LocalProtocolError(f"an external buffer descriptor needs an external kind, not {b.kind}")
                if descs is None:
                    descs = [T.BufferDesc(size=n) for n in sizes]
                descs.append(b)
                continue
            v = b if isinstance(b, memoryview) else memoryview(b)
            if v.format != "B" or v.ndim != 1:
                v = v.cast("B")
            views.append(v)
            sizes.append(v.nbytes)
            if descs is not None:
                descs.append(T.BufferDesc(size=v.nbytes))
        return views, sizes, sum(sizes), descs

    def _checked_frame(self, kind: int, body: bytes, oob_len: int) -> bytes:
        if len(body) > self._max_body:
            raise LocalProtocolError(f"message body of {len(body)} bytes exceeds max_body {self._max_body}")
        if oob_len > self._max_frame:
            raise LocalProtocolError(f"frame of {oob_len} bytes exceeds max_frame {self._max_frame}")
        return HEADER.pack(len(body), WIRE_VERSION, kind, 0, oob_len) + body

    def close(self) -> None:
        self.state = State.CLOSED
        self._direct = None
        self._msg = None

    # ------------------------------------------------------------------ receiving
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next received bytes should be written (never empty)."""
        if self._direct is not None:
            return self._direct[self._direct_filled:]
        if len(self._rx) - self._rend < _RX_MIN_FREE:
            self._make_room(_RX_MIN_FREE)
        return memoryview(self._rx)[self._rend:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct is not None:
            self._direct_filled += nbytes
        else:
            self._rend += nbytes

    def receive_data(self, data: Buffer) -> None:
        """Feed received bytes (copies them; transports that can should use get_buffer/buffer_updated)."""
        view = memoryview(data).cast("B")
        while view.nbytes:
            if self.state is State.CLOSED:
                return
            buf = self.get_buffer()
            n = min(buf.nbytes, view.nbytes)
            buf[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]
            if self._direct is not None and self._direct_filled == self._direct.nbytes:
                # let the parser move on from a finished direct buffer before we write more
                self._finish_direct()

    def _make_room(self, need: int) -> None:
        used = self._rend - self._rstart
        if self._rstart and len(self._rx) - used >= need:
            self._rx[:used] = self._rx[self._rstart:self._rend]
        else:
            new = bytearray(max(len(self._rx) * 2, used + need))
            new[:used] = self._rx[self._rstart:self._rend]
            self._rx = new
        self._rstart, self._rend = 0, used

    def _finish_direct(self) -> None:
        assert self._direct is not None and self._msg is not None
        self._msg.buffers.append(self._direct)
        self._direct = None
        self._direct_filled = 0

    def next_event(self) -> Event | None:
        """The next complete event, or None when more bytes are needed (or the connection is closed)."""
        try:
            # Fast path for the common case: a whole CALL or REPLY without out-of-band buffers is waiting.
            if self.state is _READY and self._msg is None and self._direct is None and self._hdr is None:
                start = self._rstart
                if self._rend - start < HEADER_SIZE:
                    return None
                rx = self._rx
                body_len, version, kind, flags, oob_len = _unpack_header(rx, start)
                begin = start + HEADER_SIZE
                end = begin + body_len
                if (not oob_len and end <= self._rend and version == WIRE_VERSION and not flags
                        and body_len <= self._max_body):
                    if kind == _CALL:
                        got = decode_call(rx, begin, end)
                    elif kind == _REPLY:
                        got = decode_reply(rx, begin, end)
                    else:
                        got = None
                    if got is not None and not got[1]:
                        if end == self._rend:
                            self._rstart = self._rend = 0
                        else:
                            self._rstart = end
                        return Message(kind, got[0], [])
            return self._next_event()
        except (RemoteProtocolError, AuthenticationError):
            self.close()
            raise

    def _next_event(self) -> Event | None:
        while self.state is not State.CLOSED:
            if self._direct is not None:
                if self._direct_filled < self._direct.nbytes:
                    return None
                self._finish_direct()
            if self._msg is not None:
                if not self._read_buffers():
                    return None
                msg, self._msg = self._msg, None
                return msg
            rx = self._rx
            start = self._rstart
            avail = self._rend - start
            hdr = self._hdr
            if hdr is None:
                if avail < HEADER_SIZE:
                    return None
                hdr = self._hdr = self._check_header(HEADER.unpack_from(rx, start))
                start = self._rstart = start + HEADER_SIZE
                avail -= HEADER_SIZE
            body_len, _version, kind, _flags, oob_len = hdr
            if avail < body_len:
                if len(rx) - start < body_len:
                    self._make_room(body_len - avail)
                return None
            end = start + body_len
            self._hdr = None
            if self.state is State.HANDSHAKE:
                body_bytes = bytes(rx[start:end])
                self._consume(end)
                ev = self._handshake(kind, body_bytes)
                if ev is not None:
                    return ev
                continue
            sizes: list[int] | None = None
            if kind == Kind.CALL or kind == Kind.REPLY:
                got = (decode_call if kind == Kind.CALL else decode_reply)(rx, start, end)
                if got is not None:
                    body, sizes = got
            if sizes is None:
                body = decode(kind, bytes(rx[start:end]))
                sizes = self._inline_sizes(body) if kind in _KINDS_WITH_BUFFERS else []
            self._consume(end)
            msg = Message(kind, body, [])
            if sizes:
                inline = sum(n for n in sizes if type(n) is int)
                if inline != oob_len:
                    raise RemoteProtocolError(f"buffer sizes add up to {inline}, frame says {oob_len}")
                self._pending_sizes = sizes[::-1]
                self._msg = msg
                continue
            if oob_len:
                raise RemoteProtocolError("out-of-band bytes on a message that carries no buffers")
            if kind == Kind.GOODBYE:
                self.state = State.CLOSED
            return msg
        return None

    def _consume(self, end: int) -> None:
        if end == self._rend:
            self._rstart = self._rend = 0
        else:
            self._rstart = end

    @staticmethod
    def _inline_sizes(body: Any) -> list[Any]:
        """Per buffer: its size if it follows in this frame, or its descriptor if it lives elsewhere."""
        items: list[Any] = []
        for d in body.buffers or ():
            if d.size is None or d.size < 0:
                raise RemoteProtocolError("buffer with a negative size")
            if d.kind in (None, BufferKind.INLINE):
                items.append(d.size)
            elif d.kind in _EXTERNAL_KINDS:
                items.append(d)
            else:
                raise RemoteProtocolError(f"unknown buffer kind {d.kind}")
        return items

    def _read_buffers(self) -> bool:
        """Move pending inline buffers into self._msg; False if more bytes are needed."""
        sizes = self._pending_sizes
        msg = self._msg
        assert msg is not None
        while sizes:
            n = sizes[-1]
            if type(n) is not int:  # an external descriptor: nothing to read here
                msg.buffers.append(sizes.pop())
                continue
            avail = self._rend - self._rstart
            if n >= self._large:
                sizes.pop()
                dest = self._alloc(n)
                if dest.nbytes != n or dest.readonly:
                    raise LocalProtocolError("alloc returned a buffer of the wrong size or a read-only one")
                take = min(avail, n)
                dest[:take] = memoryview(self._rx)[self._rstart:self._rstart + take]
                self._rstart += take
                if self._rstart == self._rend:
                    self._rstart = self._rend = 0
                if take < n:
                    self._direct = dest
                    self._direct_filled = take
                    return False
                msg.buffers.append(dest)
                continue
            if avail < n:
                if len(self._rx) - self._rstart < n:
                    self._make_room(n - avail)
                return False
            sizes.pop()
            msg.buffers.append(memoryview(bytearray(self._rx[self._rstart:self._rstart + n])))
            self._rstart += n
            if self._rstart == self._rend:
                self._rstart = self._rend = 0
        return True

    def _check_header(self, hdr: tuple[int, int, int, int, int]) -> tuple[int, int, int, int, int]:
        body_len, version, kind, flags, oob_len = hdr
        if version != WIRE_VERSION:
            raise RemoteProtocolError(f"unsupported wire version {version} (this side speaks {WIRE_VERSION})")
        if kind not in STRUCT_OF_KIND:
            raise RemoteProtocolError(f"unknown message kind {kind}")
        if flags:
            raise RemoteProtocolError(f"unknown frame flags {flags:#x}")
        if self.state is State.HANDSHAKE:
            if kind != self._expect:
                raise AuthenticationError(
                    f"expected {Kind._VALUES_TO_NAMES[self._expect]} during the handshake, got "
                    f"{Kind._VALUES_TO_NAMES[kind]}")
            if body_len > HANDSHAKE_MAX_BODY or oob_len:
                raise RemoteProtocolError("oversized handshake frame")
        else:
            if kind not in _APP_KINDS:
                raise RemoteProtocolError(f"handshake message {Kind._VALUES_TO_NAMES[kind]} after the handshake")
            if body_len > self._max_body:
                raise RemoteProtocolError(f"message body of {body_len} bytes exceeds max_body {self._max_body}")
            if oob_len > self._max_frame:
                raise RemoteProtocolError(f"frame of {oob_len} bytes exceeds max_frame {self._max_frame}")
        return hdr

    # ------------------------------------------------------------------ handshake
    def _handshake(self, kind: int, body_bytes: bytes) -> Ready | None:
        body = decode(kind, body_bytes)
        if kind == Kind.HELLO:  # we are the listener
            self._check_version(body.version)
            self._check_nonce(body.nonce)
            self._hello_body = body_bytes
            self.peer = Identity(body.node_id, body.listen or "", body.host_id or "", body.pid or 0)
            me = self.identity
            proof = _mac(self._token, b"disto1/listener", body_bytes, self._nonce, _identity_bytes(me))
            welcome = T.Welcome(version=WIRE_VERSION, nonce=self._nonce, node_id=me.node_id, listen=me.listen,
                                host_id=me.host_id, pid=me.pid, proof=proof)
            self._outbox.append(self._frame_bytes(Kind.WELCOME, encode(welcome)))
            self._peer_nonce = body.nonce
            self._expect = Kind.AUTH
            return None
        if kind == Kind.WELCOME:  # we are the dialer
            self._check_version(body.version)
            self._check_nonce(body.nonce)
            peer = Identity(body.node_id, body.listen or "", body.host_id or "", body.pid or 0)
            want = _mac(self._token, b"disto1/listener", self._hello_body, body.nonce, _identity_bytes(peer))
            if not body.proof or not hmac.compare_digest(want, body.proof):
                raise AuthenticationError("the listener does not hold the cluster token")
            mine = _mac(self._token, b"disto1/dialer", self._hello_body, body.nonce, _identity_bytes(peer))
            self._outbox.append(self._frame_bytes(Kind.AUTH, encode(T.Auth(proof=mine))))
            return self._become_ready(peer)
        # AUTH: we are the listener
        assert self.peer is not None
        want = _mac(self._token, b"disto1/dialer", self._hello_body, self._nonce, _identity_bytes(self.identity))
        if not hmac.compare_digest(want, body.proof):
            raise AuthenticationError("the dialer does not hold the cluster token")
        return self._become_ready(self.peer)

    def _become_ready(self, peer: Identity) -> Ready:
        self.peer = peer
        self.state = State.READY
        self._token = b""  # not needed any more
        return Ready(peer)

    @staticmethod
    def _check_version(version: int) -> None:
        if version != WIRE_VERSION:
            raise RemoteProtocolError(f"peer speaks wire version {version}, this side {WIRE_VERSION}")

    def _check_nonce(self, nonce: bytes) -> None:
        if len(nonce) != NONCE_SIZE:
            raise RemoteProtocolError("bad nonce length")
        if hmac.compare_digest(nonce, self._nonce):
            raise AuthenticationError("the peer echoed our nonce (reflection)")
