"""asyncio glue for one connection: the only place where bytes meet futures.

A :class:`Channel` is an ``asyncio.BufferedProtocol`` around a sans-IO :class:`~disto.wire.Connection`. It reads
straight into the memory the connection asks for (large tensors land in pooled blocks), hands complete events to
its owner (the node's peer table), and writes frames with coalescing: the first frame of a loop tick is written at
once, later ones in the same tick are gathered and written with one ``writelines``; replies produced while a batch
of received frames is processed go out in one write at the end of the batch.

A channel owns bytes and flow control only: the state of calls made over it lives with the node's outbound calls,
and shared-memory leases with its buffer router, keyed by channel.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

from ..errors import AuthenticationError, LocalProtocolError, ProtocolError, RemoteProtocolError
from ..wire import CLOSED, NEED_DATA, Connection, Kind, Ready, State, T
from . import threadwrites

log = logging.getLogger("disto.transport")

FLUSH_EVERY = 32
_HANDSHAKE, _READY = State.HANDSHAKE, State.READY  # (an Enum member through its class: ~70 ns)
_monotonic = time.monotonic  # frames written while a received batch is still being processed
# actors' threads may write their answers on our sockets themselves (threadwrites): only when this module runs
# compiled too, as the exclusion from the loop's writes rests on the GIL (no Python code between check and write)
THREAD_WRITES = threadwrites.AVAILABLE and not __file__.endswith(".py")


class AuthFailureLog:
    """Failed authentications at a listener, logged at most once per ``every`` seconds with a count, so that a
    scanner or a misconfigured peer retrying in a loop cannot flood the log."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._last = -float("inf")
        self.suppressed = 0
        self.total = 0

    def note(self, peer: str, why: str) -> bool:
        """Count one failure; True if it was logged."""
        self.total += 1
        now = self._clock()
        if now - self._last < self.every:
            self.suppressed += 1
            return False
        more = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
        log.warning("refused a connection from %s: %s%s", peer, why, more)
        self._last, self.suppressed = now, 0
        return True


auth_failures = AuthFailureLog()


class ChannelOwner(Protocol):
    # the handler of each event type, and a context variable set to a value while they run (set once per batch
    # of received frames, not per event: this is the per-message path)
    handlers: Mapping[type, Callable[["Channel", Any], None]]
    event_context: tuple[contextvars.ContextVar[Any], Any]

    def on_ready(self, ch: "Channel") -> None: ...
    def on_lost(self, ch: "Channel", exc: BaseException | None) -> None: ...
    def on_writable(self, ch: "Channel") -> None: ...


class ChannelCore:
    """A channel's state and code, as a base class: built, it is a C type with typed fields (channel.pxd; see
    :mod:`disto.native`), which a compiled class cannot be while it derives from asyncio's Python classes."""

    def __init__(self, owner: ChannelOwner, conn: Connection, *, address: str = "", max_queued: int = 1024) -> None:
        self.owner = owner
        self.conn = conn
        self.get_buffer = conn.get_buffer  # asyncio calls it for every read: skip one Python frame
        self.address = address  # the peer's listen address, once known
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.ready = False
        self.closed = False
        self.lost_reason: BaseException | None = None
        self.ready_waiters: list[asyncio.Future] = []
        # callee side: calls received and not finished; past max_queued we stop reading (TCP backpressure)
        self.queued = 0
        self.max_queued = max_queued
        self.reading_paused = False
        self._processing = False
        # writing
        self._batch: list[Any] | None = None
        self._wq: list[Any] = []
        self._flush_scheduled = False
        self.writing_paused = False
        # writes from actors' threads (threadwrites): our own duplicate of the socket's descriptor (so that it
        # stays valid whatever the loop closes while a thread holds it), and what such a write left for the loop
        # to write before anything else (frames, or None)
        self.wfd = -1
        self.tail: list[bytes] | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self.last_heard = time.monotonic()  # any bytes from the peer are a sign of life
        self.same_host = False  # the peer shares our kernel and pid namespace (set once ready)
        # bytes by route, for the metrics: on the socket each way; lent through shared memory or CUDA IPC
        self.said_goodbye = False  # the peer said it was leaving before the connection closed
        self.bytes_in = 0
        self.bytes_out = 0
        self.shm_bytes_out = 0
        self.cuda_bytes_out = 0

    # ----------------------------------------------------------------- asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:  # given up on already (a TLS handshake that outlasted the handshake timer)
            transport.abort()  # type: ignore[attr-defined]
            return
        self.transport = transport  # type: ignore[assignment]
        if THREAD_WRITES and threadwrites.eligible(transport):
            fd = transport.get_extra_info("socket").fileno()
            if fd >= 0:  # (-1: closed already, the peer gone while we connected)
                self.wfd = os.dup(fd)
        self._write_now(self.conn.data_to_send())


    def buffer_updated(self, nbytes: int) -> None:
        self.last_heard = _monotonic()
        self.bytes_in += nbytes
        conn = self.conn
        if conn._direct is None:
            conn._rend += nbytes  # (Connection.buffer_updated, inlined: this runs for every read)
        else:
            conn.buffer_updated(nbytes)
        self._process()

    def _process(self) -> None:
        """Handle every complete event that has arrived, unless the callee side asked to stop reading."""
        if self._processing:
            return  # re-entered from a reply sent inline; the outer loop carries on
        conn = self.conn
        handlers = self.owner.handlers
        var, value = self.owner.event_context
        self._processing = True
        self._batch = batch = []
        token = var.set(value)
        try:
            while not self.reading_paused and not self.closed:
                ev = conn.next_event()
                if ev is NEED_DATA or ev is CLOSED:
                    break
                if type(ev) is Ready:
                    batch.extend(conn.data_to_send())
                    self._on_ready()
                    continue
                handlers[type(ev)](self, ev)
                if conn._rend == conn._rstart:
                    break  # nothing left to parse (what next_event would say, without the call)
                if len(batch) >= FLUSH_EVERY:
                    # hand the peer the first replies while we work on the rest: both sides then work in
                    # parallel instead of in turns
                    self._write_now(batch)
                    batch.clear()
            if conn.state is _HANDSHAKE:
                batch.extend(conn.data_to_send())
        except (ProtocolError, AuthenticationError) as e:
            if isinstance(e, AuthenticationError):
                if not self.conn.dialer:  # a dialer's caller gets the error itself
                    auth_failures.note(self.peer_name(), str(e))
            else:
                log.warning("closing connection from %s: %s: %s", self.peer_name(), type(e).__name__, e)
            self.lost_reason = e
            self._batch = None
            if batch and not isinstance(e, (RemoteProtocolError, AuthenticationError)):
                self._write_now(batch)
            self.close()
            return
        finally:
            self._processing = False
            var.reset(token)
        self._batch = None
        if batch:
            self._write_now(batch)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready and not self.conn.dialer and self.lost_reason is None and self.conn.state is _HANDSHAKE:
            # the dialer hung up mid-handshake: what a peer does that finds our proof wrong (another token)
            auth_failures.note(self.peer_name(), "the dialer closed the connection during the handshake "
                               "(a peer with another cluster token?)")
        self.closed = True
        self.conn.close()
        if self.wfd >= 0:  # (no thread writes after this: they check ``closed`` first, holding the GIL)
            os.close(self.wfd)
            self.wfd = -1
        self.tail = None
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        for w in self.ready_waiters:
            if not w.done():
                w.set_exception(ConnectionError(f"connection to {self.peer_name()} closed during the handshake"))
        self.ready_waiters.clear()
        self.owner.on_lost(self, self.lost_reason or exc)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.owner.on_writable(self)

    # ----------------------------------------------------------------- state
    def _on_ready(self) -> None:
        self.ready = True
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.owner.on_ready(self)
        for w in self.ready_waiters:
            if not w.done():
                w.set_result(None)
        self.ready_waiters.clear()

    def start_handshake_timer(self, timeout: float) -> None:
        def expire() -> None:
            if not self.ready and not self.closed:
                self.lost_reason = AuthenticationError(f"handshake not completed within {timeout} s")
                if not self.conn.dialer:
                    auth_failures.note(self.peer_name(), "handshake timed out")
                if self.transport is None:
                    # never connected: a TLS handshake that failed or stalled (asyncio then tells the protocol
                    # nothing), so forget the channel here
                    self.connection_lost(self.lost_reason)
                else:
                    self.abort()
        self._handshake_timer = self.loop.call_later(timeout, expire)

    def peer_name(self) -> str:
        if self.conn.peer is not None:
            return self.address or self.conn.peer.node_id
        if self.transport is not None:
            peer = self.transport.get_extra_info("peername")
            if peer:
                return f"{peer[0]}:{peer[1]}"
        return self.address or "?"

    # ----------------------------------------------------------------- writing
    def send(self, kind: int, body: Any, buffers: Sequence[Any] = ()) -> None:
        if self.closed or self.conn.state is not _READY:
            return  # the peer is gone or said goodbye; on_lost fails whatever was waiting for it
        self.write(self.conn.send(kind, body, buffers))

    def send_cancel(self, call_id: int) -> None:
        """Ask the peer to cancel a call (a future's cancel hook)."""
        if self.ready and self.can_send():
            self.send(Kind.CANCEL, T.Cancel(call_id=call_id))

    def can_send(self) -> bool:
        return not self.closed and self.conn.state is _READY

    def write(self, frames: list[Any]) -> None:
        """Write framed bytes: coalesced with others of this loop tick, or at once if first."""
        batch = self._batch
        if batch is not None:
            batch.extend(frames)
        elif self._flush_scheduled:
            self._wq.extend(frames)
        else:
            transport = self.transport
            if len(frames) == 1 and transport is not None and type(frames[0]) is bytes and self.tail is None \
                    and not transport.is_closing():
                self.bytes_out += len(frames[0])  # (_write_now, inlined for the common case: one small frame)
                transport.write(frames[0])
            else:
                self._write_now(frames)
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def flush_tail(self) -> None:
        """Write what an actor's thread left in ``tail`` (threadwrites), unless something else writes it first."""
        if self.tail is not None and self._batch is None:  # (mid-batch, the batch's write takes it first)
            self._write_now([])

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._wq or self.tail is not None:
            wq, self._wq = self._wq, []
            self._write_now(wq)

    def _write_now(self, frames: list[Any]) -> None:
        if self.tail is not None:  # what an actor's thread could not write goes first
            frames = [*self.tail, *frames]
            self.tail = None
        if not frames or self.transport is None or self.transport.is_closing():
            return
        if len(frames) == 1:
            f = frames[0]
            self.bytes_out += len(f) if type(f) is bytes else memoryview(f).nbytes
            self.transport.write(f)
        else:
            self.bytes_out += sum(len(f) if type(f) is bytes else memoryview(f).nbytes for f in frames)
            self.transport.writelines(frames)

    # ----------------------------------------------------------------- callee-side flow control
    # (the node's hot path inlines the counting: ``queued += 1``, then full() at the bound; ``queued -= 1``, then
    # drained() while reading is paused)
    def call_received(self) -> None:
        self.queued += 1
        if self.queued >= self.max_queued:
            self.full()

    def full(self) -> None:
        """As many calls are queued as we take: stop reading (TCP backpressure on the caller)."""
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def uncount_call(self) -> None:
        """A received call handed back to be received again (held during a preload): no longer counted. (Not
        ``queued -= 1`` in the caller's Python: an actor's thread counts down too, atomically only in C.)"""
        self.queued -= 1

    def call_finished(self) -> None:
        self.queued -= 1
        if self.reading_paused:
            self.drained()

    def drained(self) -> None:
        """A queued call finished while reading is paused: read again once half the bound is free."""
        if self.reading_paused and self.queued <= self.max_queued // 2 and not self.closed:
            self.reading_paused = False
            # frames already received come first; then the socket (unless they filled the bound again)
            self.loop.call_soon(self._resume)

    def _resume(self) -> None:
        if self.closed or self.reading_paused:
            return
        self._process()
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # ----------------------------------------------------------------- closing
    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def goodbye(self, reason: str) -> None:
        """Tell the peer we are leaving, then close once written."""
        if self.ready and not self.closed:
            try:
                self.send(Kind.GOODBYE, T.Goodbye(reason=reason))
            except LocalProtocolError:
                pass
        self.close()


class Channel(ChannelCore, asyncio.BufferedProtocol):
    """One peer connection: its bytes, its write coalescing, and flow control in both directions."""


ChannelFactory = Callable[[], Channel]
