"""Calls this node makes to actors on other nodes: the per-peer window and pending table, and the replies and
failures that come back for them.

Call path: pickle the arguments, frame a CALL on the peer's channel if the window has room (else queue it), and
keep the future in the peer's pending table until a REPLY or FAILURE with its call id arrives; when the channel
is lost, every pending and queued call fails at once.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import weakref
from collections import deque
from typing import Callable, Container

from ..actor import FIRST_USER_ACTOR_ID, ActorRef
from ..errors import (ActorDeadError, AuthenticationError, ClosedError, DistoError, LocalProtocolError, NodeLostError,
                      SerializationError)
from ..futures import Future
from ..serialization.direct import MAGIC as _DIRECT  # (a payload encoded without pickle starts with it)
from ..serialization import scalars
from ..streams import Stream
from ..transport import Channel
from ..wire import Failure, Kind, Reply, State, StreamEnd, StreamItem, T
from . import tracing
from .buffers import INLINE_PAYLOAD_MAX, SCALAR_TYPES as _SCALAR_TYPES, BufferRouter, scalar_payload, too_large
from .config import Here, transfer_mode
from .failures import exception_from
from .inbound import failed
from .peers import Peers

_scalar_dumps = scalars.dumps  # (pickle's streams, without a Pickler per call when compiled)
_scalar_loads = scalars.loads
_plain_dumps = scalars.dumps_plain
_NO_BUFFERS: tuple = ()
_READY = State.READY
_get_ident = threading.get_ident

LocalCall = Callable[[ActorRef, str, tuple, dict, Future, bool], None]


def _settle(src: asyncio.Future, dst: concurrent.futures.Future) -> None:
    if src.cancelled():
        dst.cancel()  # (already running: set the exception instead, so waiters wake)
        if not dst.done():
            dst.set_exception(concurrent.futures.CancelledError())
    elif src.exception() is not None:
        dst.set_exception(src.exception())
    else:
        dst.set_result(src.result())


class CallTable:
    """The calls to one peer: awaiting a reply (``pending``, at most the window) or not yet sent (``waiting``:
    the window is full, the channel not ready, or its writes paused)."""

    __slots__ = ("pending", "waiting", "next_id", "streams")

    def __init__(self) -> None:
        self.pending: dict[int, Future] = {}
        self.waiting: deque[tuple[tuple, Future, bool]] = deque()
        self.next_id = 1
        # calls that turned into streams (out of the window): call id -> the consumer's stream, held weakly so
        # that a stream dropped before its end (a ``break``) is collected, which stops the producer
        self.streams: dict[int, weakref.ref[Stream]] = {}


class OutboundCalls:
    def __init__(self, here: Here, peers: Peers, buffers: BufferRouter, local: LocalCall,
                 lost: Container[str], max_inflight: int, max_frame: int, stream_window: int) -> None:
        self.stream_window = stream_window
        self._here = here
        self._peers = peers
        self._buffers = buffers
        self._local = local
        self._lost = lost  # addresses of nodes declared lost (the liveness monitor's, kept current there)
        self.max_inflight = max_inflight
        self.max_frame = max_frame
        self.tables: dict[Channel, CallTable] = {}
        self.loop: asyncio.AbstractEventLoop | None = None  # the node's, once started
        self.loop_thread = 0  # its thread's ident

    def call(self, ref: ActorRef, method: str, args: tuple, kwargs: dict, oneway: bool = False) -> Future:
        if _get_ident() != self.loop_thread:
            return self._from_thread(ref, method, args, kwargs, oneway)  # type: ignore[return-value]
        here = self._here
        fut: Future = Future(loop=self.loop)
        if ref.node_address == here.address:
            self._local(ref, method, args, kwargs, fut, oneway)
            return fut
        if here.closing:
            return failed(fut, ClosedError("this node is stopped"), oneway)
        if ref.actor_id >= FIRST_USER_ACTOR_ID and self._lost and ref.node_address in self._lost:
            return failed(fut, ActorDeadError(
                f"the node of {ref._describe()} ({ref.node_address}) was declared lost and has not joined again",
                actor=ref._describe(), node=ref.node_address), oneway)
        ch = self._peers.by_address.get(ref.node_address)
        if ch is None or ch.closed:
            ch = self._peers.channel_to(ref.node_address)
        table = self.tables.get(ch)
        if table is None:
            table = self.tables[ch] = CallTable()
        call = (ref, method, args, kwargs, transfer_mode.get(),
                tracing.outgoing(ref, method, fut) if tracing.ENABLED and not oneway and tracing.get_current()
                else None)
        if not table.waiting and ch.ready and not ch.writing_paused and len(table.pending) < self.max_inflight:
            self._send(ch, table, call, fut, oneway)
        else:
            table.waiting.append((call, fut, oneway))
        return fut

    def _from_thread(self, ref: ActorRef, method: str, args: tuple, kwargs: dict, oneway: bool
                     ) -> concurrent.futures.Future:
        """A call made by synchronous code on another thread (an actor's own): made on the loop, in the caller's
        context; the caller gets a ``concurrent.futures.Future`` it may block on (``.result(timeout)``)."""
        out: concurrent.futures.Future = concurrent.futures.Future()
        loop = self.loop
        if loop is None or loop.is_closed():
            out.set_exception(ClosedError("this node is not running"))
            return out

        def start() -> None:
            if not out.set_running_or_notify_cancel():
                return
            fut = self.call(ref, method, args, kwargs, oneway)
            fut.add_done_callback(lambda f: _settle(f, out))

        loop.call_soon_threadsafe(start, context=contextvars.copy_context())
        return out

    def _send(self, ch: Channel, table: CallTable, call: tuple, fut: Future, oneway: bool) -> None:
        ref, method, args, kwargs, mode, traceparent = call
        stream = None
        try:
            for a in args:  # (_scalars, inlined)
                if type(a) not in _SCALAR_TYPES:
                    break
            else:
                if not kwargs:
                    stream = _scalar_dumps((args, kwargs))
                    stream, bufs, oob = (stream, _NO_BUFFERS, False) if len(stream) <= INLINE_PAYLOAD_MAX \
                        else scalar_payload(stream)
            if stream is None:
                # lists, dicts and keyword arguments of such values: written directly when compiled (else None)
                stream = _plain_dumps((args, kwargs))
                if stream is not None:
                    bufs, oob = _NO_BUFFERS, False  # (at most 1 KiB)
                else:
                    stream, bufs, oob = self._buffers.serialize(ch, (args, kwargs), mode)
        except SerializationError as e:
            failed(fut, e, oneway)
            return
        cid = 0 if oneway else table.next_id
        try:
            frames = ch.conn.send_call(cid, ref.actor_id, method, None if oob else stream, bufs, oob,
                                       ref.node_id or None, traceparent) \
                if not ch.closed and ch.conn.state is _READY else None  # (ch.can_send(), inlined)
        except LocalProtocolError as e:  # larger than a frame may be: this call fails, the connection is fine
            failed(fut, too_large(e, self.max_frame), oneway)
            return
        if oneway:
            if frames is not None:
                ch.write(frames)
            fut.set_result(None)
            return
        table.next_id = cid + 1
        table.pending[cid] = fut
        fut._on_cancel = ch.send_cancel  # its pending entry stays until the peer answers: the window counts it
        fut._cancel_arg = cid
        if frames is not None:
            if self._buffers.releases:  # what we dropped of this peer's memory: in the same write
                frames = self._buffers.take_releases(ch) + frames
            ch.write(frames)

    def drain(self, ch: Channel) -> None:
        """Send queued calls while the window has room."""
        table = self.tables.get(ch)
        if table is None:
            return
        waiting = table.waiting
        limit = self.max_inflight
        while waiting and ch.ready and not ch.writing_paused and len(table.pending) < limit:
            call, fut, oneway = waiting.popleft()
            if not fut.done():  # skip calls cancelled while they waited
                self._send(ch, table, call, fut, oneway)

    # ------------------------------------------------------------------ answers
    def _answered(self, ch: Channel, call_id: int) -> Future | None:
        """The future waiting for ``call_id`` (None if it was cancelled, or the id is stale); the window moves."""
        table = self.tables.get(ch)
        if table is None:
            return None
        fut = table.pending.pop(call_id, None)
        if table.waiting:
            self.drain(ch)
        return None if fut is None or fut.done() else fut

    def on_reply(self, ch: Channel, ev: Reply) -> None:
        body = ev.body
        table = self.tables.get(ch)  # _answered, inlined: this is the hot path
        if table is None:
            return
        fut = table.pending.pop(body.call_id, None)
        if table.waiting:
            self.drain(ch)
        if fut is None or fut.done():
            return
        try:
            payload = body.payload
            if body.payload_oob or body.buffers is not None or ev.buffers or (payload and payload[0] == _DIRECT):
                value = self._buffers.value_of(ch, body, ev.buffers)
            else:  # the common case, pickled inline without buffers: no value_of frames (it words errors)
                try:
                    value = _scalar_loads(payload or b"")
                except Exception:
                    value = self._buffers.value_of(ch, body, ev.buffers)
            fut.set_result(value)
        except SerializationError as e:
            fut.set_exception(SerializationError(f"{e} (unpickling a reply from {ch.peer_name()} on node "
                                                 f"{self._here.address})"))

    def on_failure(self, ch: Channel, ev: Failure) -> None:
        table = self.tables.get(ch)
        ref = table.streams.pop(ev.body.call_id, None) if table is not None else None
        if ref is not None:  # a stream's generator raised (or was stopped): after the items before it
            stream = ref()
            if stream is not None:
                stream.fail(exception_from(ev.body, ch.address))
            return
        fut = self._answered(ch, ev.body.call_id)
        if fut is not None:
            fut.set_exception(exception_from(ev.body, ch.address))

    # ------------------------------------------------------------------ streams
    def _stream(self, ch: Channel, call_id: int) -> Stream | None:
        """The consumer's stream of ``call_id``: made when its first item (or its end) arrives, which answers
        the call's future with it; None when nobody consumes it any more (the producer is then told to stop)."""
        table = self.tables.get(ch)
        if table is None:
            return None
        ref = table.streams.get(call_id)
        if ref is not None:
            stream = ref()
            if stream is None:
                del table.streams[call_id]
                ch.send_cancel(call_id)
            return stream
        fut = self._answered(ch, call_id)
        if fut is None:  # cancelled before it started streaming, or a stale id
            ch.send_cancel(call_id)
            return None
        window = self.stream_window

        def grant(n: int) -> None:
            if ch.can_send():
                ch.send(Kind.STREAM_CREDIT, T.StreamCredit(call_id=call_id, credit=n))

        stream = Stream(window, grant, lambda: ch.send_cancel(call_id), self.loop)
        table.streams[call_id] = weakref.ref(stream)
        fut.set_result(stream)
        return stream

    def on_stream_item(self, ch: Channel, ev: StreamItem) -> None:
        body = ev.body
        stream = self._stream(ch, body.call_id)
        if stream is None:
            return
        try:
            stream.push(self._buffers.value_of(ch, body, ev.buffers))
        except SerializationError as e:
            stream.fail(SerializationError(f"{e} (unpickling a stream item from {ch.peer_name()})"))

    def on_stream_end(self, ch: Channel, ev: StreamEnd) -> None:
        stream = self._stream(ch, ev.body.call_id)
        table = self.tables.get(ch)
        if table is not None:
            table.streams.pop(ev.body.call_id, None)
        if stream is not None:
            stream.end()

    def fail_all(self, ch: Channel, exc: BaseException | None) -> None:
        """The channel is gone: every call pending or queued on it fails now."""
        table = self.tables.pop(ch, None)
        if table is None or not (table.pending or table.waiting or table.streams):
            return
        if self._here.closing:
            err: DistoError = ClosedError("this node was stopped")
        elif isinstance(exc, (NodeLostError, AuthenticationError)):
            err = exc
        else:
            why = f"{type(exc).__name__}: {exc}" if exc else "connection closed"
            err = NodeLostError(f"connection to {ch.peer_name()} lost ({why})", node=ch.address)
        for fut in table.pending.values():
            if not fut.done():
                fut.set_exception(err)
        for ref in table.streams.values():
            stream = ref()
            if stream is not None:
                stream.fail(err)
        for _, fut, oneway in table.waiting:
            if not fut.done():
                failed(fut, err, oneway)

    def in_flight(self) -> int:
        return sum(len(t.pending) + len(t.waiting) for t in self.tables.values())
