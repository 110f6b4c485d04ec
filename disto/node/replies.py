"""What our actors' calls produced, back to their callers: a REPLY or a FAILURE on the caller's channel, or the
local caller's future. The mailboxes call :meth:`Replies.reply` and :meth:`Replies.fail`; an actor's thread
writes a plain answer itself through :meth:`Replies.prepare` and :meth:`Replies.send` (the ``Direct`` hook of
:mod:`disto.actor.threads`)."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from ..actor import CallItem
from ..errors import LocalProtocolError, SerializationError
from ..transport import Channel, threadwrites
from ..wire import FailureKind, Kind, State
from . import tracing
from .buffers import BufferRouter, plain_payload, too_large
from .config import Here
from .failures import failure_body, failure_kind, local_exception

log = logging.getLogger("disto.node")

_READY = State.READY
_perf_counter = time.perf_counter
_send_from_thread = threadwrites.send
_TW_SENT = threadwrites.SENT


class Replies:
    def __init__(self, here: Here, buffers: BufferRouter, max_frame: int,
                 ship: Callable[[Channel, set[str]], None]) -> None:
        self._ship = ship
        self._here = here
        self._buffers = buffers
        self._max_frame = max_frame
        self.thread_answers = 0  # replies actors' threads wrote themselves (prepare; node stats: thread_replies)

    def reply(self, item: CallItem, value: Any) -> None:
        if item.span is not None:
            tracing.finish(item.span)
        ch = item.ch
        if ch is None:
            fut = item.fut
            if fut is not None and not fut.done():
                fut.set_result(value)
            return
        ch.queued -= 1  # (ch.call_finished(), inlined)
        if ch.reading_paused:
            ch.drained()
        item.args = item.kwargs = None  # type: ignore[assignment] - what they held in shared memory goes back now
        if item.call_id == 0 or ch.closed or ch.conn.state is not _READY:  # (Channel.can_send, inlined)
            return
        try:
            payload = plain_payload(value)  # (scalars, and lists and dicts of them, without a Pickler)
            stream, bufs, oob = payload if payload is not None else self._buffers.serialize(ch, value, None)
            frames = ch.conn.send_reply(item.call_id, None if oob else stream, bufs, oob)
        except (SerializationError, LocalProtocolError) as e:
            err = e if isinstance(e, SerializationError) else too_large(e, self._max_frame)
            self.send_failure(ch, item.call_id, FailureKind.SERIALIZATION, err, "", None, item.method)
            return
        if self._buffers.releases:  # (checked here: a call less per reply when there is nothing to release)
            frames = self._buffers.take_releases(ch) + frames  # one write: the peer wakes once for both
        ch.write(frames)

    # ----------------------------------------------------------------- answers written by actors' threads
    # (the Direct hook of actor/threads.py; compiled only: see thread_replies in node/node.py)
    def prepare(self, item: CallItem, value: Any) -> list | None:
        """On an actor's thread, for a remote call its sync method answered with ``value``: the REPLY's frames,
        the call claimed, where the thread may write them itself (a plain value, no span, nothing to release
        first, a channel the thread may write on); else None (``item`` untouched: the loop answers it). The claim
        and the count below are C field operations with no Python code between them: the GIL makes them atomic
        with respect to the loop."""
        ch = item.ch
        if ch is None or ch.wfd < 0 or item.call_id == 0 or item.span is not None or self._buffers.releases:
            return None
        if ch._batch is not None:
            # the loop is handling a batch of frames from this caller (more calls may be in it): its write at the
            # end of the batch takes this reply too, where a write of our own would split the caller's stream into
            # more, smaller reads (pipelined calls lose 10-20% of their rate so)
            return None
        payload = plain_payload(value)
        if payload is None or payload[2]:  # (the general path's, or out of band: the loop's)
            return None
        try:
            frames = ch.conn.send_reply(item.call_id, payload[0], (), False)
        except LocalProtocolError:  # (the connection is no longer ready: the loop's path knows what to do)
            return None
        if item.abandoned:  # answered on the loop meanwhile (cancelled, actor stopped)
            return None
        item.abandoned = True  # claimed: the loop does not answer it now (Mailbox._abandon checks this flag)
        self.thread_answers += 1
        item.t1 = _perf_counter()
        ch.queued -= 1  # (ch.call_finished(); drained() is the loop's: see send)
        return frames

    def send(self, item: CallItem, frames: list) -> bool:
        """On the thread: write the frames prepare() gave; False if the loop must run after_send (the socket
        did not take them all, the channel is closing, or it stopped reading and may read again now)."""
        ch = item.ch
        return _send_from_thread(ch, frames, _READY) == _TW_SENT and not ch.reading_paused

    def after_send(self, item: CallItem, ok: bool, value: Any, tb: str) -> None:
        """On the loop, after a send() that said False."""
        ch = item.ch
        if ch.reading_paused:
            ch.drained()
        ch.flush_tail()

    def fail(self, item: CallItem, exc: BaseException, tb: str, label: str) -> None:
        if item.span is not None:
            tracing.finish(item.span, exc)
        ch = item.ch
        cancelled = isinstance(exc, asyncio.CancelledError)
        if ch is None:
            fut = item.fut
            if fut is None:
                if not cancelled:
                    log.warning("one-way call %s.%s failed: %s", label, item.method, exc, exc_info=bool(tb))
            elif not fut.done():
                if cancelled:
                    fut.cancel()
                else:
                    fut.set_exception(local_exception(exc, tb, label, item.method, self._here.address))
            return
        ch.call_finished()
        if item.call_id == 0:
            if not cancelled:
                log.warning("one-way call %s.%s from %s failed: %s\n%s", label, item.method, ch.peer_name(), exc,
                            tb)
            return
        self.send_failure(ch, item.call_id, failure_kind(exc, tb), exc, tb, label, item.method)

    def send_failure(self, ch: Channel, call_id: int, kind: int, exc: BaseException, tb: str,
                     actor: str | None, method: str | None) -> None:
        modules: set[str] = set()
        body = failure_body(call_id, kind, exc, tb, actor, method, self._here.address, modules)
        if modules:
            self._ship(ch, modules)
        ch.send(Kind.FAILURE, body)
