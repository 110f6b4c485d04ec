"""The thread an actor's synchronous code runs on, so that a method that blocks (``time.sleep``, a CPU loop, a
long torch op) does not stall the node's event loop or its other actors.

One thread per actor, started on its first synchronous call and ended when the actor stops. It runs what it is
given one call after another, in order, each in the context (``contextvars``) of the dispatch that started it.
A run of several calls is handed over at once (the mailbox gives it every sync call queued back to back), and
outcomes go back to the loop through one queue with one wake-up for as many as are ready: a thread hop costs a
wake-up per batch, not per call.
"""
from __future__ import annotations

import asyncio
import collections
import contextvars
import queue
import threading
from typing import Any, Callable

from ..errors import format_remote_traceback

Done = Callable[[bool, Any, str], None]  # (ok, value or exception, traceback text), called on the loop
Job = tuple[Callable[..., Any], tuple, dict, Done]
Deferred = list[tuple[Callable[..., Any], tuple]]

# while an actor thread drops a call's arguments: .deferred, what they asked of .loop, its loop
_posting = threading.local()


def defer_to_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> bool:
    """From a finalizer: if this thread is an actor thread of ``loop`` dropping a finished call's arguments, run
    ``fn(*args)`` on the loop just before that call's outcome is delivered (one wake-up of the loop for both, and
    the reply written after it) and return True; else False (the caller wakes the loop itself)."""
    deferred = getattr(_posting, "deferred", None)
    if deferred is None or _posting.loop is not loop:
        return False
    deferred.append((fn, args))
    return True


class ActorThread:
    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self._loop = loop
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._outcomes: collections.deque[tuple[Done, bool, Any, str, Deferred | None]] = collections.deque()
        self._flush_scheduled = False
        self._lock = threading.Lock()

    def submit(self, jobs: list[Job], skip: Callable[[int], bool] | None = None) -> None:
        """Run each ``(fn, args, kwargs, done)`` of ``jobs`` on the thread, in order, after what was submitted
        before; ``done(ok, value, tb)`` gets each outcome on the loop. ``skip(i)``, asked just before job ``i``
        runs, drops it (its caller was answered already): its ``done`` gets (False, None, "")."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        self._jobs.put((contextvars.copy_context(), jobs, skip))

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """A future of ``fn(*args)`` run on the thread (for constructors and lifecycle hooks)."""
        fut = self._loop.create_future()

        def done(ok: bool, value: Any, tb: str) -> None:
            if not fut.done():
                (fut.set_result if ok else fut.set_exception)(value)

        self.submit([(fn, args, {}, done)])
        return fut

    def stop(self) -> None:
        """End the thread once what it runs (if anything) returns."""
        if self._thread is not None:
            self._jobs.put(None)

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            batch = jobs.get()
            if batch is None:
                return
            ctx, todo, skip = batch
            del batch
            _posting.loop = self._loop
            for i in range(len(todo)):  # (not enumerate: its reused result tuple would keep the job alive)
                fn, args, kwargs, done = todo[i]
                if skip is not None and skip(i):
                    value, ok, tb = None, False, ""  # not run; done() still hears of it (the batch's end)
                    if not self._post(done, ok, value, tb):
                        return
                    continue
                try:
                    value, ok, tb = ctx.run(fn, *args, **kwargs), True, ""
                except BaseException as e:  # noqa: BLE001 - every error goes back to the caller
                    value, ok, tb = e, False, format_remote_traceback(e)
                # the arguments go before the outcome is posted: what they held in shared memory is given back
                # (a RELEASE) with the outcome, so in the same write as the reply, not in one of its own after it
                todo[i] = None  # type: ignore[call-overload]
                _posting.deferred = deferred = []
                try:
                    del fn, args, kwargs
                finally:
                    _posting.deferred = None
                if not self._post(done, ok, value, tb, deferred or None):
                    return
                del done, value, deferred

    def _post(self, done: Done, ok: bool, value: Any, tb: str, deferred: Deferred | None = None) -> bool:
        """Hand an outcome to the loop (after what ``deferred`` asks of it); one wake-up for however many pile up
        before it runs."""
        with self._lock:
            self._outcomes.append((done, ok, value, tb, deferred))
            if self._flush_scheduled:
                return True
            self._flush_scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._flush)
        except RuntimeError:
            return False  # the loop is closed: nobody is waiting
        return True

    def _flush(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            outcomes, self._outcomes = self._outcomes, collections.deque()
        for done, ok, value, tb, deferred in outcomes:
            if deferred is not None:
                for fn, args in deferred:
                    fn(*args)
            done(ok, value, tb)
