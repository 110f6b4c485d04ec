"""The producing end of streams: where the items of our actors' generator methods go. To a remote caller as
STREAM_ITEM frames, at most ``window`` ahead of its STREAM_CREDIT grants; to a caller on this node straight into
its :class:`~disto.streams.Stream`; nowhere for a one-way call."""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from ..actor import CallItem
from ..errors import LocalProtocolError
from ..streams import Stream
from ..transport import Channel
from ..wire import Kind, StreamCredit, T
from .buffers import BufferRouter, plain_payload, too_large
from .config import Here
from .failures import local_exception
from .replies import Replies

log = logging.getLogger("disto.node")


class _Credit:
    def __init__(self, window: int) -> None:
        self.left = window
        self._waiter: asyncio.Future | None = None

    async def take(self) -> None:
        while self.left <= 0:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self.left -= 1

    def give(self, n: int) -> None:
        self.left += n
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class RemoteSink:
    """Items for a caller on another node."""

    def __init__(self, sinks: "StreamSinks", item: CallItem, label: str) -> None:
        self._sinks = sinks
        self._item = item
        self._label = label
        self.credit = _Credit(sinks.window)
        self.sent = 0

    async def send(self, value: Any) -> None:
        await self.credit.take()
        item, ch = self._item, self._item.ch
        assert ch is not None
        if not ch.can_send():
            raise asyncio.CancelledError  # the caller is gone: stop the generator
        try:
            payload = plain_payload(value)  # (scalars, and lists and dicts of them, without a Pickler)
            stream, bufs, oob = payload if payload is not None else self._sinks.buffers.serialize(ch, value, None)
            frames = ch.conn.send_reply(item.call_id, None if oob else stream, bufs, oob, Kind.STREAM_ITEM)
        except LocalProtocolError as e:
            raise too_large(e, self._sinks.max_frame) from None
        ch.write(frames)
        self.sent += 1

    def end(self) -> None:
        ch = self._item.ch
        assert ch is not None
        self._sinks.close(self)
        ch.call_finished()
        if ch.can_send():
            ch.send(Kind.STREAM_END, T.StreamEnd(call_id=self._item.call_id, items=self.sent))

    def fail(self, exc: BaseException, tb: str) -> None:
        self._sinks.close(self)
        self._sinks.replies.fail(self._item, exc, tb, self._label)  # a FAILURE with the call's id


class LocalSink:
    """Items for a caller on this node: straight into its stream, as they are (no copy, as local calls)."""

    def __init__(self, sinks: "StreamSinks", item: CallItem, label: str, cancel: Callable[[], None]) -> None:
        self._sinks = sinks
        self._item = item
        self._label = label
        self.credit = _Credit(sinks.window)
        self.stream = Stream(sinks.window, self.credit.give, cancel)
        self._started = False

    def _start(self) -> None:
        if not self._started:
            self._started = True
            fut = self._item.fut
            if fut is None or fut.done():
                raise asyncio.CancelledError  # the caller gave up before the first item
            fut.set_result(self.stream)

    async def send(self, value: Any) -> None:
        self._start()
        await self.credit.take()
        self.stream.push(value)

    def end(self) -> None:
        self._start()
        self.stream.end()

    def fail(self, exc: BaseException, tb: str) -> None:
        if not self._started:
            self._sinks.replies.fail(self._item, exc, tb, self._label)  # the call's future gets it
        elif not isinstance(exc, asyncio.CancelledError):
            self.stream.fail(local_exception(exc, tb, self._label, self._item.method, self._sinks.here.address))


class DiscardSink:
    """A one-way call to a generator method: it runs to its end, its items go nowhere."""

    def __init__(self, sinks: "StreamSinks", item: CallItem, label: str) -> None:
        self._sinks, self._item, self._label = sinks, item, label

    async def send(self, value: Any) -> None:
        pass

    def end(self) -> None:
        if self._item.ch is not None:
            self._item.ch.call_finished()

    def fail(self, exc: BaseException, tb: str) -> None:
        self._sinks.replies.fail(self._item, exc, tb, self._label)


Sink = RemoteSink | LocalSink | DiscardSink


class StreamSinks:
    def __init__(self, here: Here, buffers: BufferRouter, replies: Replies, window: int, max_frame: int) -> None:
        self.here = here
        self.buffers = buffers
        self.replies = replies
        self.window = window
        self.max_frame = max_frame
        self._remote: dict[tuple[Channel, int], RemoteSink] = {}

    def open(self, item: CallItem, label: str, cancel: Callable[[], None]) -> Sink:
        if item.ch is None:
            return LocalSink(self, item, label, cancel) if item.fut is not None else DiscardSink(self, item, label)
        if item.call_id == 0:
            return DiscardSink(self, item, label)
        sink = RemoteSink(self, item, label)
        self._remote[(item.ch, item.call_id)] = sink
        return sink

    def close(self, sink: RemoteSink) -> None:
        self._remote.pop((sink._item.ch, sink._item.call_id), None)  # type: ignore[arg-type]

    def on_credit(self, ch: Channel, ev: StreamCredit) -> None:
        sink = self._remote.get((ch, ev.body.call_id))
        if sink is not None and ev.body.credit > 0:
            sink.credit.give(ev.body.credit)

    def forget(self, ch: Channel) -> None:
        for key in [k for k in self._remote if k[0] is ch]:
            del self._remote[key]
