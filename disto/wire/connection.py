"""The sans-IO protocol state machine: bytes in, events out; events in, bytes out. No asyncio, sockets or torch.

Receiving follows asyncio's BufferedProtocol: :meth:`Connection.get_buffer` says where the next bytes should land
and :meth:`Connection.buffer_updated` says how many did. Small frames land in one reused receive buffer; a large
out-of-band buffer is read straight into memory from ``alloc`` (a pooled, reused block), so it is never copied in
Python. :meth:`Connection.receive_data` wraps the two for tests and for transports that hand over bytes.
:meth:`Connection.next_event` returns a typed event (:mod:`disto.wire.events`), ``NEED_DATA`` or ``CLOSED``.

States::

    HANDSHAKE --(the peer proved the token: Ready)--> READY --(GOODBYE / error / close())--> CLOSED

The handshake's own steps are the transition table in :mod:`disto.wire.handshake`. In HANDSHAKE only HELLO,
WELCOME and AUTH are accepted (bodies <= 4 KiB, no out-of-band bytes), so nothing an unauthenticated peer sends
can reach a pickle decoder. Any malformed input raises RemoteProtocolError (or AuthenticationError), moves the
connection to CLOSED and makes every later call a no-op.
"""
from __future__ import annotations

import enum
from typing import Any, Callable, Sequence, Union

from ..errors import AuthenticationError, LocalProtocolError, RemoteProtocolError
from .events import CLOSED, EVENT_OF_KIND, NEED_DATA, Event, Identity, Message, Ready
from .codec import (call_frame, decode_call, decode_frame, decode_release, decode_reply, encode_call, encode_reply,
                    reply_frame)
from .fastcodec import encode_release
from .framing import (DEFAULT_MAX_BODY, DEFAULT_MAX_FRAME, EXTERNAL_KINDS, HANDSHAKE_MAX_BODY, HEADER,
                      HEADER_SIZE, inline_sizes, oob_views)
from .handshake import Handshake
from .messages import STRUCT_OF_KIND, WIRE_VERSION, Kind, T, decode, encode

DEFAULT_LARGE = 64 << 10  # out-of-band buffers at least this big are read straight into their own memory
_RX_INITIAL = 256 << 10
_RX_MIN_FREE = 64 << 10

Buffer = Union[bytes, bytearray, memoryview]
Alloc = Callable[[int], memoryview]


class State(enum.Enum):
    HANDSHAKE = "handshake"
    READY = "ready"
    CLOSED = "closed"


# (module constants: an Enum member read through its class costs ~70 ns, the metaclass's __getattr__ hook)
_HANDSHAKE, _READY, _CLOSED = State.HANDSHAKE, State.READY, State.CLOSED


def _default_alloc(n: int) -> memoryview:
    return memoryview(bytearray(n))


_CALL = Kind.CALL
_REPLY = Kind.REPLY
_ITEM = Kind.STREAM_ITEM  # framed like a REPLY (the same fields)
_RELEASE = Kind.RELEASE
_APP_KINDS = frozenset({Kind.CALL, Kind.REPLY, Kind.FAILURE, Kind.CANCEL, Kind.HEARTBEAT, Kind.GOODBYE,
                        Kind.RELEASE, Kind.MODULES, Kind.STREAM_ITEM, Kind.STREAM_END, Kind.STREAM_CREDIT})
_KINDS_WITH_BUFFERS = frozenset({Kind.CALL, Kind.REPLY, Kind.STREAM_ITEM})
_DESC = T.BufferDesc


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
        self.dialer = dialer
        self.identity = identity
        self.peer: Identity | None = None
        self.state = _HANDSHAKE
        self._handshake: Handshake | None = Handshake(dialer=dialer, token=token, identity=identity)
        self._max_body = max_body
        self._max_frame = max_frame
        self._large = large
        self._alloc = alloc or _default_alloc
        # receive state (the channel's per-read fast path reads _rstart, _rend and _direct, and adds to _rend as
        # buffer_updated would: see transport/channel.py)
        self._rx = bytearray(_RX_INITIAL)
        self._rx_view = memoryview(self._rx)  # kept: get_buffer slices it for every read (the size never changes)
        self._rstart = 0
        self._rend = 0
        self._hdr: tuple[int, int, int, int, int] | None = None
        self._msg: Message | None = None
        self._pending_sizes: list[int] = []  # inline buffer sizes still to read for self._msg
        self._direct: memoryview | None = None  # destination of a large buffer being read
        self._direct_filled = 0

    # ------------------------------------------------------------------ sending
    def data_to_send(self) -> list[Buffer]:
        """Bytes the protocol itself wants sent (handshake frames). Call after every receive."""
        hs = self._handshake
        if hs is None:
            return []
        out, hs.outbox = hs.outbox, []
        if self.state is not _HANDSHAKE:
            self._handshake = None  # done, and its last frame is out
        return out

    def send(self, kind: int, body: Any, buffers: Sequence[Buffer] = ()) -> list[Buffer]:
        """Frame one application message. ``buffers`` go out-of-band, after the body, without being copied."""
        if self.state is not _READY:
            raise LocalProtocolError(f"cannot send {Kind._VALUES_TO_NAMES.get(kind, kind)} in state {self.state.value}")
        if kind not in _APP_KINDS:
            raise LocalProtocolError(f"not an application message kind: {kind}")
        if buffers:
            if kind not in _KINDS_WITH_BUFFERS:
                raise LocalProtocolError("only CALL and REPLY carry buffers")
            views, sizes, total, descs = oob_views(buffers)
            body.buffers = descs if descs is not None else [T.BufferDesc(size=n) for n in sizes]
            return [self._checked_frame(kind, encode(body), total), *views]
        return [self._checked_frame(kind, encode(body), 0)]

    def send_call(self, call_id: int, actor_id: int, method: str, payload: Buffer | None,
                  buffers: Sequence[Buffer] = (), payload_oob: bool = False, node_id: str | None = None,
                  traceparent: str | None = None) -> list[Buffer]:
        """Frame a CALL (the hot path: no thriftpy2 object is built). ``call_id`` 0 means one-way."""
        if self.state is not _READY:
            raise LocalProtocolError(f"cannot send CALL in state {self.state.value}")
        if not buffers:
            frame = call_frame(call_id, actor_id, method, payload, payload_oob, node_id, traceparent, self._max_body)
            if frame is not None:
                return [frame]  # (header and body in one allocation)
            body = encode_call(call_id, actor_id, method, payload, (), payload_oob, node_id, traceparent)
            return [self._checked_frame(Kind.CALL, body, 0)]  # over max_body: says so
        if _external_only(buffers):  # shared memory / CUDA IPC descriptors only: one frame, as above
            frame = call_frame(call_id, actor_id, method, payload, payload_oob, node_id, traceparent,
                               self._max_body, buffers)
            if frame is not None:
                return [frame]
        views, sizes, total, descs = oob_views(buffers)
        body = encode_call(call_id, actor_id, method, payload, sizes if descs is None else descs, payload_oob,
                           node_id, traceparent)
        return [self._checked_frame(Kind.CALL, body, total), *views]

    def send_reply(self, call_id: int, payload: Buffer | None, buffers: Sequence[Buffer] = (),
                   payload_oob: bool = False, kind: int = _REPLY) -> list[Buffer]:
        """Frame a REPLY (the hot path), or a STREAM_ITEM (``kind``), which has the same fields."""
        if self.state is not _READY:
            raise LocalProtocolError(f"cannot send REPLY in state {self.state.value}")
        if not buffers:
            frame = reply_frame(call_id, payload, payload_oob, kind, self._max_body)
            if frame is not None:
                return [frame]
            return [self._checked_frame(kind, encode_reply(call_id, payload, (), payload_oob), 0)]
        if _external_only(buffers):
            frame = reply_frame(call_id, payload, payload_oob, kind, self._max_body, buffers)
            if frame is not None:
                return [frame]
        views, sizes, total, descs = oob_views(buffers)
        body = encode_reply(call_id, payload, sizes if descs is None else descs, payload_oob)
        return [self._checked_frame(kind, body, total), *views]

    def send_release(self, names: Sequence[str]) -> list[Buffer]:
        """Frame a RELEASE of these shared-memory segments (no thriftpy2 object is built)."""
        if self.state is not _READY:
            raise LocalProtocolError(f"cannot send RELEASE in state {self.state.value}")
        return [self._checked_frame(_RELEASE, encode_release(names), 0)]

    def _checked_frame(self, kind: int, body: bytes, oob_len: int) -> bytes:
        if len(body) > self._max_body:
            raise LocalProtocolError(f"message body of {len(body)} bytes exceeds max_body {self._max_body}")
        if oob_len > self._max_frame:
            raise LocalProtocolError(f"frame of {oob_len} bytes exceeds max_frame {self._max_frame}")
        return HEADER.pack(len(body), WIRE_VERSION, kind, 0, oob_len) + body

    def close(self) -> None:
        self.state = _CLOSED
        self._direct = None
        self._msg = None

    # ------------------------------------------------------------------ receiving
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next received bytes should be written (never empty)."""
        if self._direct is not None:
            return self._direct[self._direct_filled:]
        if len(self._rx) - self._rend < _RX_MIN_FREE:
            self._make_room(_RX_MIN_FREE)
        return self._rx_view[self._rend:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct is not None:
            self._direct_filled += nbytes
        else:
            self._rend += nbytes

    def receive_data(self, data: Buffer) -> None:
        """Feed received bytes (copies them; transports that can should use get_buffer/buffer_updated)."""
        view = memoryview(data).cast("B")
        while view.nbytes:
            if self.state is _CLOSED:
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
            self._rx_view = memoryview(new)
        self._rstart, self._rend = 0, used

    def _finish_direct(self) -> None:
        assert self._direct is not None and self._msg is not None
        self._msg.buffers.append(self._direct)
        self._direct = None
        self._direct_filled = 0

    def next_event(self) -> Event | Any:
        """The next complete event; ``NEED_DATA`` when more bytes are needed; ``CLOSED`` once closed."""
        try:
            # Fast path for the common case: a whole CALL or REPLY without out-of-band buffers is waiting.
            if self.state is _READY and self._msg is None and self._direct is None and self._hdr is None:
                start = self._rstart
                if self._rend - start < HEADER_SIZE:
                    return NEED_DATA
                got = decode_frame(self._rx, start, self._rend, self._max_body)
                if got is not None:
                    ev, end = got
                    if end == self._rend:
                        self._rstart = self._rend = 0
                    else:
                        self._rstart = end
                    return ev
            return self._next_event()
        except (RemoteProtocolError, AuthenticationError):
            self.close()
            raise

    def _next_event(self) -> Event | Any:
        while self.state is not _CLOSED:
            if self._direct is not None:
                if self._direct_filled < self._direct.nbytes:
                    return NEED_DATA
                self._finish_direct()
            if self._msg is not None:
                if not self._read_buffers():
                    return NEED_DATA
                msg, self._msg = self._msg, None
                return msg
            rx = self._rx
            start = self._rstart
            avail = self._rend - start
            hdr = self._hdr
            if hdr is None:
                if avail < HEADER_SIZE:
                    return NEED_DATA
                hdr = self._hdr = check_header(HEADER.unpack_from(rx, start),
                                               self._handshake if self.state is _HANDSHAKE else None,
                                               self._max_body, self._max_frame)
                start = self._rstart = start + HEADER_SIZE
                avail -= HEADER_SIZE
            body_len, _version, kind, _flags, oob_len = hdr
            if avail < body_len:
                if len(rx) - start < body_len:
                    self._make_room(body_len - avail)
                return NEED_DATA
            end = start + body_len
            self._hdr = None
            if self.state is _HANDSHAKE:
                body_bytes = bytes(rx[start:end])
                self._consume(end)
                assert self._handshake is not None
                peer = self._handshake.receive(kind, body_bytes)
                if peer is not None:
                    self.peer = peer
                    self.state = _READY
                    return Ready(peer)
                continue
            sizes: list[int] | None = None
            if kind == _CALL or kind == _REPLY or kind == _ITEM:
                got = (decode_call if kind == _CALL else decode_reply)(rx, start, end)
                if got is not None:
                    body, sizes = got
            elif kind == _RELEASE:  # one per reply that gave shared memory back: not through thriftpy2
                body = decode_release(rx, start, end)
                if body is not None:
                    sizes = []
            if sizes is None:
                body = decode(kind, bytes(rx[start:end]))
                sizes = inline_sizes(body) if kind in _KINDS_WITH_BUFFERS else []
            self._consume(end)
            msg = EVENT_OF_KIND[kind](body, [])
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
                self.state = _CLOSED
            return msg
        return CLOSED

    def _consume(self, end: int) -> None:
        if end == self._rend:
            self._rstart = self._rend = 0
        else:
            self._rstart = end

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


def _external_only(buffers: Sequence[Buffer]) -> bool:
    """True if every buffer is a descriptor of memory that lives elsewhere (nothing follows the body)."""
    for b in buffers:
        if type(b) is not _DESC or b.kind not in EXTERNAL_KINDS:
            return False
    return True


def check_header(hdr: tuple[int, int, int, int, int], handshake: Handshake | None, max_body: int,
                 max_frame: int) -> tuple[int, int, int, int, int]:
    """The header of the next frame, checked before its body is read: during the handshake (``handshake`` is not
    None) only the step's message kind, small and without out-of-band bytes; after it, application kinds within
    the size bounds."""
    body_len, version, kind, flags, oob_len = hdr
    if version != WIRE_VERSION:
        raise RemoteProtocolError(f"unsupported wire version {version} (this side speaks {WIRE_VERSION})")
    if kind not in STRUCT_OF_KIND:
        raise RemoteProtocolError(f"unknown message kind {kind}")
    if flags:
        raise RemoteProtocolError(f"unknown frame flags {flags:#x}")
    if handshake is not None:
        handshake.check_kind(kind)
        if body_len > HANDSHAKE_MAX_BODY or oob_len:
            raise RemoteProtocolError("oversized handshake frame")
    else:
        if kind not in _APP_KINDS:
            raise RemoteProtocolError(f"handshake message {Kind._VALUES_TO_NAMES[kind]} after the handshake")
        if body_len > max_body:
            raise RemoteProtocolError(f"message body of {body_len} bytes exceeds max_body {max_body}")
        if oob_len > max_frame:
            raise RemoteProtocolError(f"frame of {oob_len} bytes exceeds max_frame {max_frame}")
    return hdr
