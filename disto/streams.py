"""Streams: what a call to a generator method returns. ``async for item in ref.produce(n)`` iterates it.

A :class:`Stream` is the consumer's end: items arrive into a bounded buffer; as the consumer takes them, credit
for as many goes back to the producer (``grant``), which never has more than ``window`` items in flight, so a
slow consumer never fills memory. Ending early (``break``, ``aclose()``, the consuming task cancelled, the
stream garbage-collected) tells the producer to stop (``cancel``). An exception the generator raised is raised
at the item where it happened, after the items before it.

Nothing here knows about the wire: the node feeds a stream from STREAM_ITEM messages, or, for an actor on the
same node, straight from the generator.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any, AsyncIterator, Callable

_END = object()


class Stream(AsyncIterator[Any]):
    """The items of one call to a generator method, in order; iterate it once with ``async for``."""

    def __init__(self, window: int, grant: Callable[[int], None], cancel: Callable[[], None],
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        if window < 1:
            raise ValueError(f"a stream window is at least 1, got {window}")
        self.window = window
        self._grant = grant
        self._cancel = cancel
        self._loop = loop or asyncio.get_running_loop()
        self._items: collections.deque[Any] = collections.deque()
        self._error: BaseException | None = None
        self._ended = False      # the producer is done (end, error) or was told to stop
        self._closed = False     # the consumer is done
        self._consumed = 0       # taken since the last grant
        self._waiter: asyncio.Future | None = None
        self.received = 0

    # ------------------------------------------------------------------ the producer's side
    def push(self, item: Any) -> None:
        if self._ended:
            return
        self._items.append(item)
        self.received += 1
        self._wake()

    def end(self) -> None:
        self._ended = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self._ended:
            self._error = exc
            self._ended = True
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # ------------------------------------------------------------------ the consumer's side
    def __aiter__(self) -> "Stream":
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._items:
                item = self._items.popleft()
                self._consumed += 1
                if self._consumed * 2 >= self.window and not self._ended:
                    self._grant(self._consumed)
                    self._consumed = 0
                return item
            if self._closed:
                raise StopAsyncIteration
            if self._ended:
                self._closed = True
                if self._error is not None:
                    err, self._error = self._error, None
                    raise err
                raise StopAsyncIteration
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                self._stop()  # the consuming task was cancelled: the producer stops too
                raise
            finally:
                self._waiter = None

    async def aclose(self) -> None:
        """Stop consuming: the producer is told to stop; items not yet taken are dropped."""
        self._stop()

    def _stop(self) -> None:
        self._closed = True
        self._items.clear()
        if not self._ended:
            self._ended = True
            self._cancel()

    @property
    def done(self) -> bool:
        return self._closed or (self._ended and not self._items)

    def __del__(self) -> None:
        # dropped before its end (``break`` out of ``async for``): tell the producer, from whatever thread this is
        if not self._ended:
            self._ended = True
            try:
                self._loop.call_soon_threadsafe(self._cancel)
            except RuntimeError:
                pass  # the loop is closed

    def __repr__(self) -> str:
        state = "ended" if self._ended else "open"
        return f"<disto.Stream {state}, {len(self._items)} buffered, {self.received} received>"


class FutureStream(AsyncIterator[Any]):
    """``async for`` over a call's future: waits for the call to start streaming, then iterates its stream."""

    __slots__ = ("_future", "_stream")

    def __init__(self, future: asyncio.Future) -> None:
        self._future = future
        self._stream: Stream | None = None

    def __aiter__(self) -> "FutureStream":
        return self

    async def __anext__(self) -> Any:
        stream = self._stream
        if stream is None:
            value = await self._future
            if not isinstance(value, Stream):
                raise TypeError(f"async for over a call that returned {type(value).__name__}, not a stream: "
                                f"only generator methods stream (await the call instead)")
            stream = self._stream = value
        return await stream.__anext__()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
        elif not self._future.done():
            self._future.cancel()
