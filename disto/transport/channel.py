"""asyncio glue for one connection: the only place where bytes meet futures.

A :class:`Channel` is an ``asyncio.BufferedProtocol`` around a sans-IO :class:`~disto.wire.Connection`. It reads
straight into the memory the connection asks for (large tensors land in pooled blocks), hands complete events to
its owner (the Node), and writes frames with coalescing: the first frame of a loop tick is written at once, later
ones in the same tick are gathered and written with one ``writelines``; replies produced while a batch of received
frames is processed go out in one write at the end of the batch.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from .._errors import AuthenticationError, LocalProtocolError, ProtocolError, RemoteProtocolError
from ..wire import Connection, Kind, Message, Ready, State

if TYPE_CHECKING:
    from ..futures import Future

log = logging.getLogger("disto.transport")

FLUSH_EVERY = 32
_monotonic = time.monotonic  # frames written while a received batch is still being processed


class ChannelOwner(Protocol):
    def on_ready(self, ch: "Channel") -> None: ...
    def on_message(self, ch: "Channel", msg: Message) -> None: ...
    def on_lost(self, ch: "Channel", exc: BaseException | None) -> None: ...


class Channel(asyncio.BufferedProtocol):
    """One peer connection. Holds the caller-side state of calls sent on it (pending futures, window)."""

    def __init__(self, owner: ChannelOwner, conn: Connection, *, address: str = "", max_inflight: int = 1024,
                 max_queued: int = 1024) -> None:
        self.owner = owner
        self.conn = conn
        self.get_buffer = conn.get_buffer  # asyncio calls it for every read: skip one Python frame
        self.address = address  # the peer's listen address, once known
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.ready = False
        self.closed = False
        self.lost_reason: BaseException | None = None
        # caller side
        self.pending: dict[int, Future] = {}
        self.waiting: deque[Any] = deque()  # calls not yet sent: window full, not ready, or writing paused
        self.max_inflight = max_inflight
        self.next_call_id = 1
        self.ready_waiters: list[asyncio.Future] = []
        # callee side: calls received and not finished; past max_queued we stop reading (TCP backpressure)
        self.queued = 0
        self.max_queued = max_queued
        self._reading_paused = False
        self._processing = False
        # writing
        self._batch: list[Any] | None = None
        self._wq: list[Any] = []
        self._flush_scheduled = False
        self.writing_paused = False
        self._handshake_timer: asyncio.TimerHandle | None = None
        self.last_heard = time.monotonic()  # any bytes from the peer are a sign of life
        # shared memory
        self.same_host = False
        self.leases: dict[str, int] = {}   # SHM blocks we lent the peer: segment -> count
        self.releases: list[str] = []      # SHM blocks of the peer's that we no longer use, to tell it

    # ----------------------------------------------------------------- asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:  # given up on already (a TLS handshake that outlasted the handshake timer)
            transport.abort()  # type: ignore[attr-defined]
            return
        self.transport = transport  # type: ignore[assignment]
        self._write_now(self.conn.data_to_send())


    def buffer_updated(self, nbytes: int) -> None:
        self.last_heard = _monotonic()
        self.conn.buffer_updated(nbytes)
        self._process()

    def _process(self) -> None:
        """Handle every complete event that has arrived, unless the callee side asked to stop reading."""
        if self._processing:
            return  # re-entered from a reply sent inline; the outer loop carries on
        conn = self.conn
        self._processing = True
        self._batch = batch = []
        try:
            while not self._reading_paused and not self.closed:
                ev = conn.next_event()
                if ev is None:
                    break
                if type(ev) is Message:
                    self.owner.on_message(self, ev)
                    if len(batch) >= FLUSH_EVERY:
                        # hand the peer the first replies while we work on the rest: both sides then work
                        # in parallel instead of in turns
                        self._write_now(batch)
                        batch.clear()
                elif type(ev) is Ready:
                    batch.extend(conn.data_to_send())
                    self._on_ready()
            if conn.state is State.HANDSHAKE:
                batch.extend(conn.data_to_send())
        except (ProtocolError, AuthenticationError) as e:
            log.warning("closing connection from %s: %s: %s", self.peer_name(), type(e).__name__, e)
            self.lost_reason = e
            self._batch = None
            if batch and not isinstance(e, (RemoteProtocolError, AuthenticationError)):
                self._write_now(batch)
            self.close()
            return
        finally:
            self._processing = False
        self._batch = None
        if batch:
            self._write_now(batch)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.conn.close()
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
        drain = getattr(self.owner, "drain_waiting", None)
        if drain is not None:
            drain(self)

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
                log.warning("closing connection from %s: handshake timed out", self.peer_name())
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

    def call_capacity(self) -> bool:
        return self.ready and not self.writing_paused and len(self.pending) < self.max_inflight

    # ----------------------------------------------------------------- writing
    def send(self, kind: int, body: Any, buffers: Sequence[Any] = ()) -> None:
        if self.closed or self.conn.state is not State.READY:
            return  # the peer is gone or said goodbye; on_lost fails whatever was waiting for it
        self.write(self.conn.send(kind, body, buffers))

    def send_cancel(self, call_id: int) -> None:
        """Ask the peer to cancel a call. Its pending entry stays until the peer answers, so the window still
        counts it."""
        if self.ready and self.can_send():
            from ..wire import T
            self.send(Kind.CANCEL, T.Cancel(call_id=call_id))

    def can_send(self) -> bool:
        return not self.closed and self.conn.state is State.READY

    def write(self, frames: list[Any]) -> None:
        """Write framed bytes: coalesced with others of this loop tick, or at once if first."""
        batch = self._batch
        if batch is not None:
            batch.extend(frames)
        elif self._flush_scheduled:
            self._wq.extend(frames)
        else:
            self._write_now(frames)
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._wq:
            wq, self._wq = self._wq, []
            self._write_now(wq)

    def _write_now(self, frames: list[Any]) -> None:
        if not frames or self.transport is None or self.transport.is_closing():
            return
        if len(frames) == 1:
            self.transport.write(frames[0])
        else:
            self.transport.writelines(frames)

    # ----------------------------------------------------------------- callee-side flow control
    def call_received(self) -> None:
        self.queued += 1
        if self.queued >= self.max_queued and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def call_finished(self) -> None:
        self.queued -= 1
        if self._reading_paused and self.queued <= self.max_queued // 2 and not self.closed:
            self._reading_paused = False
            # frames already received come first; then the socket (unless they filled the bound again)
            self.loop.call_soon(self._resume)

    def _resume(self) -> None:
        if self.closed or self._reading_paused:
            return
        self._process()
        if not self._reading_paused and self.transport is not None and not self.closed:
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
            from ..wire import T
            try:
                self.send(Kind.GOODBYE, T.Goodbye(reason=reason))
            except LocalProtocolError:
                pass
        self.close()


ChannelFactory = Callable[[], Channel]
