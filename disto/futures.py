"""disto.Future and folly-style combinators on top of asyncio.

A :class:`Future` *is* an ``asyncio.Future`` (a subclass), so ``await``, ``asyncio.gather``, ``asyncio.wait``,
``asyncio.wait_for`` and ``asyncio.timeout`` all work on it unchanged. disto adds what asyncio lacks:
``then``/``map``/``recover``/``ensure``/``within`` on the future, and ``collect``, ``collect_all``,
``collect_any``, ``within`` and ``window`` as functions.

Cancellation travels upstream: cancelling a future returned by a remote call sends a cancel to the remote side;
cancelling a future derived with ``then``/``map``/``within``/``collect`` cancels the futures it came from.
Callbacks run on the event loop; none of these helpers creates a task unless a callback returns an awaitable.
"""
from __future__ import annotations

import asyncio
import inspect
from typing import Any, Awaitable, Callable, Generic, Iterable, TypeVar

from .errors import TimeoutError
from .streams import FutureStream

T = TypeVar("T")
U = TypeVar("U")


class Future(asyncio.Future, Generic[T]):  # type: ignore[type-arg]
    """An asyncio future with combinators. Returned by every remote call."""

    # Slots, not a __dict__: a call creates one Future, and a dict per call is measurable on the hot path.
    # _on_cancel is called (with _cancel_arg, if set) when this future is cancelled: it sends the remote cancel.
    __slots__ = ("_on_cancel", "_cancel_arg")

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        hook = getattr(self, "_on_cancel", None)
        if hook is not None:
            self._on_cancel = None
            arg = getattr(self, "_cancel_arg", None)
            if arg is None:
                hook()
            else:
                hook(arg)
        return True

    def __aiter__(self) -> FutureStream:
        """``async for item in ref.generator_method(...)``: the items the call streams."""
        return FutureStream(self)

    # -- chaining -----------------------------------------------------------------------------------------
    def then(self, fn: Callable[[T], U | Awaitable[U]]) -> Future[U]:
        """A future of ``fn(value)``; if ``fn`` returns an awaitable, of its result. Errors pass through."""
        return _derive(self, fn, None, flatten=True)

    def map(self, fn: Callable[[T], U]) -> Future[U]:
        """A future of ``fn(value)`` (a plain transform: the result is not awaited). Errors pass through."""
        return _derive(self, fn, None, flatten=False)

    def recover(self, fn: Callable[[BaseException], U | Awaitable[U]],
                exc_type: type[BaseException] | tuple[type[BaseException], ...] = Exception) -> Future[T | U]:
        """On an error of ``exc_type``, a future of ``fn(error)``; values and other errors pass through."""
        return _derive(self, None, (exc_type, fn), flatten=True)

    def ensure(self, fn: Callable[[], Any]) -> Future[T]:
        """Run ``fn()`` when this completes, however it completes; the outcome passes through unchanged."""
        out: Future[T] = Future(loop=self.get_loop())

        def done(src: asyncio.Future) -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported through the future
                if not out.done():
                    out.set_exception(e)
                return
            _copy_outcome(src, out)

        self.add_done_callback(done)
        out._on_cancel = self.cancel
        return out

    def within(self, timeout: float) -> Future[T]:
        """This future, failed with disto.TimeoutError (and cancelled) if not done within ``timeout`` seconds."""
        return within(self, timeout)


def _copy_outcome(src: asyncio.Future, dst: asyncio.Future) -> None:
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
        return
    exc = src.exception()
    if exc is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result())


def _settle(out: Future, value: Any, flatten: bool) -> None:
    if flatten and inspect.isawaitable(value):
        inner = asyncio.ensure_future(value, loop=out.get_loop())
        inner.add_done_callback(lambda f: _copy_outcome(f, out))
        out._on_cancel = inner.cancel
    elif not out.done():
        out.set_result(value)


def _derive(src: asyncio.Future, on_value: Callable[[Any], Any] | None,
            on_error: tuple[Any, Callable[[BaseException], Any]] | None, *, flatten: bool) -> Future:
    out: Future = Future(loop=src.get_loop())

    def done(f: asyncio.Future) -> None:
        if out.done():
            return
        if f.cancelled():
            out.cancel()
            return
        exc = f.exception()
        try:
            if exc is not None:
                if on_error is None or not isinstance(exc, on_error[0]):
                    out.set_exception(exc)
                    return
                value = on_error[1](exc)
            elif on_value is None:
                out.set_result(f.result())
                return
            else:
                value = on_value(f.result())
        except BaseException as e:  # noqa: BLE001 - reported through the future
            out.set_exception(e)
            return
        _settle(out, value, flatten)

    src.add_done_callback(done)
    out._on_cancel = src.cancel
    return out


def _as_futures(aws: Iterable[Awaitable[Any]]) -> list[asyncio.Future]:
    loop = asyncio.get_running_loop()
    return [asyncio.ensure_future(a, loop=loop) for a in aws]


def _cancel_all(futs: list[asyncio.Future]) -> Callable[[], None]:
    def cancel() -> None:
        for f in futs:
            f.cancel()
    return cancel


def collect(aws: Iterable[Awaitable[T]]) -> Future[list[T]]:
    """All results, in input order. Fails with the first error to happen (the others keep running)."""
    futs = _as_futures(aws)
    out: Future[list[T]] = Future(loop=asyncio.get_running_loop())
    out._on_cancel = _cancel_all(futs)
    n = len(futs)
    if n == 0:
        out.set_result([])
        return out
    remaining = [n]

    def done(f: asyncio.Future) -> None:
        if out.done():
            if not f.cancelled():
                f.exception()  # mark retrieved: the caller already has the first error
            return
        if f.cancelled():
            out.set_exception(asyncio.CancelledError("an input of collect() was cancelled"))
            return
        exc = f.exception()
        if exc is not None:
            out.set_exception(exc)
            return
        remaining[0] -= 1
        if remaining[0] == 0:
            out.set_result([g.result() for g in futs])

    for f in futs:
        f.add_done_callback(done)
    return out


def collect_all(aws: Iterable[Awaitable[T]]) -> Future[list[T | BaseException]]:
    """Every outcome, in input order: the value, or the exception it raised. Never fails itself."""
    futs = _as_futures(aws)
    out: Future[list[Any]] = Future(loop=asyncio.get_running_loop())
    out._on_cancel = _cancel_all(futs)
    remaining = [len(futs)]
    if not futs:
        out.set_result([])
        return out

    def outcome(f: asyncio.Future) -> Any:
        if f.cancelled():
            return asyncio.CancelledError()
        return f.exception() or f.result()

    def done(_f: asyncio.Future) -> None:
        remaining[0] -= 1
        if remaining[0] == 0 and not out.done():
            out.set_result([outcome(g) for g in futs])

    for f in futs:
        f.add_done_callback(done)
    return out


def collect_any(aws: Iterable[Awaitable[T]], *, cancel_rest: bool = False) -> Future[T]:
    """The outcome of whichever input completes first (its value, or its error).

    With ``cancel_rest=True`` the other inputs are cancelled once one completes (hedged requests)."""
    futs = _as_futures(aws)
    if not futs:
        raise ValueError("collect_any() needs at least one awaitable")
    out: Future[T] = Future(loop=asyncio.get_running_loop())
    out._on_cancel = _cancel_all(futs)

    def done(f: asyncio.Future) -> None:
        if out.done():
            if not f.cancelled():
                f.exception()
            return
        _copy_outcome(f, out)
        if cancel_rest:
            for g in futs:
                if g is not f:
                    g.cancel()

    for f in futs:
        f.add_done_callback(done)
    return out


def within(aw: Awaitable[T], timeout: float) -> Future[T]:
    """``aw``'s outcome, or disto.TimeoutError after ``timeout`` seconds (``aw`` is then cancelled)."""
    if timeout is None or timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
    loop = asyncio.get_running_loop()
    src = asyncio.ensure_future(aw, loop=loop)
    out: Future[T] = Future(loop=loop)

    def expire() -> None:
        if not out.done():
            out.set_exception(TimeoutError(f"not done within {timeout} s"))
            src.cancel()

    handle = loop.call_later(timeout, expire)

    def done(f: asyncio.Future) -> None:
        handle.cancel()
        if out.done():
            if not f.cancelled():
                f.exception()
            return
        _copy_outcome(f, out)

    src.add_done_callback(done)
    out._on_cancel = src.cancel
    return out


async def _window(fns: list[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    results: list[Any] = [None] * len(fns)
    it = iter(enumerate(fns))
    pending: set[asyncio.Future] = set()
    index: dict[asyncio.Future, int] = {}
    try:
        for i, fn in it:
            f = asyncio.ensure_future(fn())
            pending.add(f)
            index[f] = i
            if len(pending) >= limit:
                break
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for f in done:
                results[index.pop(f)] = f.result()  # raises the first error
            for i, fn in it:
                f = asyncio.ensure_future(fn())
                pending.add(f)
                index[f] = i
                if len(pending) >= limit:
                    break
        return results
    finally:
        for f in pending:
            f.cancel()


def window(fns: Iterable[Callable[[], Awaitable[T]]], limit: int) -> Future[list[T]]:
    """Run the thunks with at most ``limit`` in flight; results in input order; fails on the first error
    (cancelling those in flight). Use it to fan out many calls with bounded memory."""
    if limit < 1:
        raise ValueError("limit must be >= 1")
    task = asyncio.ensure_future(_window(list(fns), limit))
    out: Future[list[T]] = Future(loop=task.get_loop())
    task.add_done_callback(lambda f: _copy_outcome(f, out))
    out._on_cancel = task.cancel
    return out


def as_future(aw: Awaitable[T]) -> Future[T]:
    """A coroutine (or any awaitable) run as a task, seen as a :class:`Future` (cancelling it cancels the task):
    what an API that returns futures gives for work that takes several steps."""
    task = asyncio.ensure_future(aw)
    out: Future[T] = Future(loop=task.get_loop())
    task.add_done_callback(lambda f: _copy_outcome(f, out))
    out._on_cancel = task.cancel
    return out
