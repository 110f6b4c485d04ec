"""The thread an actor's synchronous code runs on, so that a method that blocks (``time.sleep``, a CPU loop, a
long torch op) does not stall the node's event loop or its other actors.

One thread per actor, started on its first synchronous call and ended when the actor stops. It runs what it is
given one call after another, in order, each in the context (``contextvars``) of the dispatch that started it.
A run of several calls is handed over at once (the mailbox gives it every sync call queued back to back), and
outcomes go back to the loop through one queue with one wake-up for as many as are ready: a thread hop costs a
wake-up per batch, not per call.

Each way, the wake-up is a write to an eventfd (two per thread), which Python makes with the GIL released. A
queue or a lock would wake the other thread while the waker still holds the GIL: the woken thread then blocks
on the GIL at once and has to be woken a second time when it is free, and a call paid three or four context
switches per side instead of one or two (same core, W1 of bench/core.py: 89 µs a call before, 76 µs after).

A remote call's answer need not go back through the loop at all. Given a :class:`Direct` hook (the node's
replies), the thread writes the reply of the last call it has in hand on the caller's socket itself, when the
hook takes it (a plain value; the loop not busy with that caller's frames), and posts the rest of the call's
bookkeeping (the mailbox's slot, the metrics) without waking the loop: the loop settles those whenever it next
looks at the actor (a new call: ``Mailbox.post``; a cancel, a stop, the actor listing: ``Mailbox.settle``). That
saves a wake-up of the loop and a context switch per call. The thread wakes the loop only when a write left
something for it (the socket was busy, the connection is closing, or the channel stopped reading) or when a call
waits for the actor's slot (``lazy``). No timer: arming one costs more than it saves where timers are expensive
(a VM). The replies of a run of calls still go back through the loop, in one write.
"""
from __future__ import annotations

import asyncio
import collections
import contextvars
import os
import threading
from typing import Any, Callable, Protocol

from ..errors import format_remote_traceback

Done = Callable[[Any, bool, Any, str], None]  # (the job's item, ok, value or exception, traceback), on the loop
# (fn, args, kwargs, done, item): done(item, ...) gets the outcome; the job is skipped if item.abandoned is true
# just before it would run (its caller was answered already): done then gets (item, False, None, "")
Job = tuple[Callable[..., Any], tuple, dict, Done, Any]
Deferred = list[tuple[Callable[..., Any], tuple]]
ANSWERED = object()  # the value done() gets for a call the thread answered itself (bookkeeping only)


class Direct(Protocol):
    """How an actor's thread answers calls itself (the node's replies implement it; None: it never does)."""

    def prepare(self, item: Any, value: Any) -> list[bytes] | None:
        """On the thread: the reply frames of the call ``item`` answered ``value``, the call claimed (the loop
        will not answer it now); or None, and the loop answers it as usual."""

    def send(self, item: Any, frames: list[bytes]) -> bool:
        """On the thread: write ``item``'s reply frames; False if the loop must then run ``after_send``."""

    def after_send(self, item: Any, ok: bool, value: Any, tb: str) -> None:
        """On the loop, after a send that said False (what the write left to the loop; a ``Done`` callback)."""

# on an actor thread, .state = [its loop, what a call's arguments asked of the loop while the thread dropped them
# (None the rest of the time)]: one list per thread, set up once, so that a job pays two item stores for it
# rather than two attribute stores on the thread-local (about 1,800 instructions a job)
_posting = threading.local()


def defer_to_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> bool:
    """From a finalizer: if this thread is an actor thread of ``loop`` dropping a finished call's arguments, run
    ``fn(*args)`` on the loop just before that call's outcome is delivered (one wake-up of the loop for both, and
    the reply written after it) and return True; else False (the caller wakes the loop itself)."""
    state = getattr(_posting, "state", None)
    if state is None or state[1] is None or state[0] is not loop:
        return False
    state[1].append((fn, args))
    return True


class ActorThread:
    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self._loop = loop
        self._thread: threading.Thread | None = None
        # jobs for the thread: the loop appends, the thread pops; the loop writes _wake only when the thread may be
        # asleep (_wake_pending is false), so a run of submits costs one system call (no lock: see _work)
        self._jobs: collections.deque[Any] = collections.deque()
        self._wake = -1  # eventfds, made with the thread: the loop wakes the thread (it blocks reading this one)
        self._done = -1  # and the thread wakes the loop (a reader of the loop's)
        self._wake_pending = False
        # outcomes for the loop: the thread appends, the loop pops (deque operations are atomic), with one wake-up
        # scheduled for as many as pile up (no lock: see _post and _flush)
        self._outcomes: collections.deque[tuple[Done, Any, bool, Any, str, Deferred | None]] = collections.deque()
        self._flush_scheduled = False
        self.direct: Direct | None = None  # answers calls on the thread (the module's doc); set before submit
        # whether the loop may hear of such calls late: false while work waits for the actor's slot (the owner
        # clears it, then settles; the thread appends, then reads it, so an outcome is settled or wakes the loop)
        self.lazy = True
        self._flushing = False

    def submit(self, jobs: list[Job]) -> None:
        """Run each ``(fn, args, kwargs, done, item)`` of ``jobs`` on the thread, in order, after what was submitted
        before; ``done(item, ok, value, tb)`` gets each outcome on the loop. A job whose ``item.abandoned`` is true
        when its turn comes is not run (its caller was answered already): ``done`` gets (item, False, None, "")."""
        if self._thread is None:
            self._start()
        self._jobs.append((contextvars.copy_context(), jobs))
        if not self._wake_pending:
            self._wake_pending = True
            os.eventfd_write(self._wake, 1)  # (the GIL is released while it wakes the thread)

    def _start(self) -> None:
        self._wake = os.eventfd(0, os.EFD_CLOEXEC)
        self._done = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            self._loop.add_reader(self._done, self._on_done)
            thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            thread.start()
        except BaseException:  # (a closed loop, no thread to be had): nothing is left open
            if not self._loop.is_closed():
                self._loop.remove_reader(self._done)
            self._close_fds()
            raise
        self._thread = thread

    def run(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """A future of ``fn(*args)`` run on the thread (for constructors and lifecycle hooks)."""
        fut = self._loop.create_future()
        self.submit([(fn, args, {}, _settle, _Pending(fut))])
        return fut

    def stop(self) -> None:
        """End the thread once what it runs (if anything) returns."""
        if self._thread is not None and self._wake >= 0:
            self._jobs.append(None)
            self._wake_pending = True
            os.eventfd_write(self._wake, 1)

    def _work(self) -> None:
        try:
            self._run_jobs()
        finally:
            self._exited()

    def _run_jobs(self) -> None:
        jobs = self._jobs
        wake = self._wake
        outcomes = self._outcomes
        _posting.state = state = [self._loop, None]
        while True:
            if not jobs:
                # asleep only with nothing to do; _wake_pending is cleared after the read and before the deque is
                # looked at again, so a job appended meanwhile is either seen here or comes with a write of its own
                os.eventfd_read(wake)
                self._wake_pending = False
                continue
            batch = jobs.popleft()
            if batch is None:
                return
            ctx, todo = batch
            del batch
            last = len(todo) - 1
            for i in range(len(todo)):  # (not enumerate: its reused result tuple would keep the job alive)
                fn, args, kwargs, done, item = todo[i]
                if item.abandoned:
                    todo[i] = None  # type: ignore[call-overload]
                    del fn, args, kwargs
                    if not self._post(done, item, False, None, ""):  # not run; done() still hears of it
                        return
                    del item
                    continue
                try:
                    value, ok, tb = ctx.run(fn, *args, **kwargs), True, ""
                except BaseException as e:  # noqa: BLE001 - every error goes back to the caller
                    value, ok, tb = e, False, format_remote_traceback(e)
                # the arguments go before the outcome is posted: what they held in shared memory is given back
                # (a RELEASE) with the outcome, so in the same write as the reply, not in one of its own after it
                todo[i] = None  # type: ignore[call-overload]
                state[1] = deferred = []
                try:
                    del fn, args, kwargs
                finally:
                    state[1] = None
                direct = self.direct
                # only the last call in hand: the loop writes the replies of a run of calls together, in one
                # system call (pipelined calls); the thread's own write saves a wake-up where one call waits
                if ok and direct is not None and i == last and not jobs and not deferred \
                        and type(item) is not _Pending:
                    frames = direct.prepare(item, value)
                    if frames is not None:
                        del value
                        # posted before the write (no wake-up: see above), so that a loop that runs as soon as the
                        # caller has its answer (the next call) finds this one settled
                        outcomes.append((done, item, True, ANSWERED, "", None))
                        if not direct.send(item, frames):
                            if not self._post(direct.after_send, item, True, None, ""):
                                return
                        elif not self.lazy and not self._flush_scheduled and not self._wake_loop():
                            return  # (read after the append: see lazy)
                        del done, item, deferred, frames
                        continue
                if not self._post(done, item, ok, value, tb, deferred or None):
                    return
                del done, item, value, deferred

    def _post(self, done: Done, item: Any, ok: bool, value: Any, tb: str, deferred: Deferred | None = None
              ) -> bool:
        """Hand an outcome to the loop (after what ``deferred`` asks of it); one wake-up for however many pile up
        before it runs. Without a lock: the outcome is appended before the flag is read, and _flush clears the
        flag before it pops, so an outcome is either popped by a flush under way or schedules one of its own."""
        self._outcomes.append((done, item, ok, value, tb, deferred))
        if self._flush_scheduled:
            return True
        return self._wake_loop()

    def _wake_loop(self) -> bool:
        """Have the loop take the outcomes (False if it is closed: nobody is waiting)."""
        self._flush_scheduled = True
        if self._loop.is_closed():
            return False
        os.eventfd_write(self._done, 1)  # (the GIL is released while it wakes the loop)
        return True

    def settle(self) -> None:
        """On the loop: take the outcomes the thread posted without waking it (calls it answered itself), so that
        what the loop knows of the actor is up to date."""
        if self._outcomes and not self._flushing:  # (a callback of the flush under way may post a call)
            self._flush()

    def _on_done(self) -> None:
        try:
            os.eventfd_read(self._done)
        except BlockingIOError:
            pass  # (read already by an earlier wake-up of this batch)
        self._flush()

    def _exited(self) -> None:
        """On the thread, last: the eventfds go once the loop has taken every outcome (on the loop, which reads
        one of them); if the loop is closed, here."""
        try:
            self._loop.call_soon_threadsafe(self._close)
        except RuntimeError:
            self._close_fds()

    def _close(self) -> None:
        if self._done >= 0:
            self._loop.remove_reader(self._done)
        if self._outcomes:
            self._flush()
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._wake, self._done):
            if fd >= 0:
                os.close(fd)
        self._wake = self._done = -1

    def _flush(self) -> None:
        self._flush_scheduled = False
        outcomes = self._outcomes
        popleft = outcomes.popleft
        self._flushing = True
        try:
            for _ in range(len(outcomes)):  # those here now (later ones scheduled a flush of their own): bounded
                done, item, ok, value, tb, deferred = popleft()
                if deferred is not None:
                    for fn, args in deferred:
                        fn(*args)
                done(item, ok, value, tb)
        finally:
            self._flushing = False
            if outcomes and not self._flush_scheduled:  # a callback raised: the rest go next time round
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)


class _Pending:
    """The item of a :meth:`ActorThread.run` job: the future its outcome settles."""

    __slots__ = ("fut",)
    abandoned = False

    def __init__(self, fut: asyncio.Future) -> None:
        self.fut = fut


def _settle(item: _Pending, ok: bool, value: Any, tb: str) -> None:
    fut = item.fut
    if not fut.done():
        (fut.set_result if ok else fut.set_exception)(value)
