"""Ordered dispatch of calls to one actor instance.

Calls are started in arrival order. A call occupies one of ``max_concurrency`` slots from its start until its
result is ready: a sync method for the duration of the call, an async method until its coroutine returns. With
one slot (the default) that makes execution strictly sequential per actor; since a connection delivers frames in
the order they were sent, calls from one caller to one actor run in the order sent.

Where a call runs: an async method as a task on the event loop; a sync method on the actor's own thread
(:mod:`.threads`), so that it may block; a sync method marked :func:`~disto.on_loop` inline on the loop, in the
callback that received it (no task, no queue hop, no thread).
"""
from __future__ import annotations

import asyncio
import logging
import time
import types
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ActorDeadError, RemoteError, format_remote_traceback
from .base import AGEN, ASYNC, GEN, GEN_LOOP, LOOP, THREAD, How
from .threads import ANSWERED, ActorThread, Direct

_CoroutineType = types.CoroutineType
# types of results that are not coroutines: asyncio.iscoroutine costs an ABC check per call on them (it remembers
# only the types that are), so the first result of each type is checked and its type remembered here (bounded)
_PLAIN: set[type] = {int, float, str, bytes, bool, type(None), tuple, list, dict}
_PLAIN_MAX = 1024


def _is_coroutine(value: Any) -> bool:
    if asyncio.iscoroutine(value):
        return True
    if len(_PLAIN) < _PLAIN_MAX:  # (a coroutine-ness test depends on the type only: collections.abc.Coroutine)
        _PLAIN.add(type(value))
    return False


_perf_counter = time.perf_counter
inline_actor: str | None = None  # the actor whose method runs inline on the loop right now (its label)
_DONE = object()

if TYPE_CHECKING:
    from ..transport import Channel

log = logging.getLogger("disto.actor")


class CallItem:
    """One call to run: where it came from (a channel, or a local future) and what to run."""

    __slots__ = ("ch", "call_id", "method", "args", "kwargs", "fut", "task", "coro", "abandoned", "t0", "t1",
                 "span")

    def __init__(self, ch: "Channel | None", call_id: int, method: str, args: tuple, kwargs: dict,
                 fut: asyncio.Future | None) -> None:
        self.ch = ch
        self.call_id = call_id
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.fut = fut
        self.task: asyncio.Task | None = None
        self.coro: Any = None  # an async method's coroutine, which its task runs (for the stacks: node/introspection)
        self.abandoned = False  # answered already (cancelled, actor stopped) while its thread still runs it
        self.t0 = _perf_counter()  # when it arrived: its latency and, while it runs, its age
        self.t1 = 0.0  # when its actor's thread answered it itself (threads.ANSWERED), else 0
        self.span: Any = None  # the OpenTelemetry span it runs under, when its caller traces (node/tracing.py)


# (item, value) / (item, exception, traceback text) / (item, cancel it) -> where a stream's items go
ReplyFn = Callable[[CallItem, Any], None]
FailFn = Callable[[CallItem, BaseException, str], None]
AnsweredFn = Callable[[CallItem], None]  # a call its actor's thread answered itself: the bookkeeping left to do
OpenStreamFn = Callable[[CallItem, Callable[[], None]], Any]


class Mailbox:
    def __init__(self, instance: Any, label: str, limit: int, reply: ReplyFn, fail: FailFn,
                 methods: dict[str, How], thread: ActorThread | None = None,
                 open_stream: OpenStreamFn | None = None, stats: Any = None,
                 direct: tuple[Direct, AnsweredFn] | None = None) -> None:
        self._open_stream = open_stream
        # (how the actor's thread answers calls itself, what the loop does then besides the mailbox's own
        # bookkeeping: the metrics), or None: every answer goes back through the loop (see threads)
        self._direct, self._answered = direct if direct is not None else (None, None)
        self.stats = stats  # an ActorStats (node/metrics.py) or None: stream calls are counted here
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {limit!r}")
        self.instance = instance
        self.label = label
        self.limit = limit
        self.queue: deque[CallItem] = deque()
        self.running = 0
        self.running_items: set[CallItem] = set()  # async calls (tasks) and sync calls on the thread
        self.stopped = False
        self._reply = reply
        self._fail = fail
        self._methods = methods  # public method name -> how it runs
        self.thread = thread
        # a run of sync calls on the thread holds one slot while it has calls left; a sync call that arrives
        # then, with nothing queued ahead of it, joins the run at once (no round trip through the loop)
        self._run_open = False
        self._run_left = 0  # calls of the run not done yet (on the thread, or joining it)
        self._joining: list[CallItem] = []  # calls joining the run, handed over together at the end of the tick
        if thread is not None:
            thread.direct = self._direct

    def settle(self) -> None:
        """Take in what the actor's thread finished and has not told the loop yet (calls it answered itself)."""
        thread = self.thread
        if thread is not None:
            thread.settle()

    def post(self, item: CallItem) -> None:
        thread = self.thread
        if thread is not None and thread._outcomes and not thread._flush_scheduled:
            thread.settle()  # calls the thread answered itself, unannounced: their slot is free (threads.py)
        if self.stopped:
            self._fail(item, ActorDeadError(f"actor {self.label} is stopped", actor=self.label), "")
            return
        if self._run_open and not self.queue and self._methods.get(item.method) is THREAD:
            if not self._joining:
                asyncio.get_running_loop().call_soon(self._hand_over)
            self._joining.append(item)
            self._run_left += 1
            return
        if self.running < self.limit and not self.queue:
            self._start(item)  # idle: run now, no queue hop
            return
        self.queue.append(item)
        if thread is not None and thread.lazy:
            thread.lazy = False  # it waits for the slot: the thread must tell the loop when it frees it
            thread.settle()
        if self.running < self.limit:
            self._drain()

    def _drain(self) -> None:
        queue = self.queue
        while queue and self.running < self.limit and not self.stopped:
            self._start(queue.popleft())

    def _start(self, item: CallItem) -> None:
        how = self._methods.get(item.method)
        if how is None:
            err = AttributeError(f"{type(self.instance).__name__} has no public method {item.method!r}")
            self._fail(item, err, "")
            return
        self.running += 1
        if how is THREAD:
            self._to_thread(item)
            return
        if how is not LOOP and how is not ASYNC:  # (identity: hashing an enum member runs Python code)
            self._start_stream(item, how)
            return
        fn = getattr(self.instance, item.method)
        global inline_actor
        inline_actor = self.label  # what it prints is tagged with its actor (node/output.py)
        try:
            result = fn(*item.args, **item.kwargs)
        except BaseException as e:  # noqa: BLE001 - every error goes back to the caller
            inline_actor = None
            self.running -= 1
            self._fail(item, e, format_remote_traceback(e))
            if not isinstance(e, Exception):
                raise
            return
        inline_actor = None
        if type(result) is _CoroutineType or (type(result) not in _PLAIN and _is_coroutine(result)):
            self._as_task(item, result)
            return
        self.running -= 1
        item.args = item.kwargs = None  # type: ignore[assignment] - freed before the reply is written (see threads)
        self._reply(item, result)

    def _to_thread(self, item: CallItem) -> None:
        """Open a run on the actor's thread with this sync call and every sync call queued right behind it:
        they run back to back there, in order, holding one slot (as one call would)."""
        batch = [item]
        queue, methods = self.queue, self._methods
        while queue and methods.get(queue[0].method) is THREAD:
            batch.append(queue.popleft())
        self._run_open = True
        self._run_left += len(batch)
        self._submit(batch)

    def _hand_over(self) -> None:
        batch, self._joining = self._joining, []
        if batch:
            self._submit(batch)

    def _submit(self, batch: list[CallItem]) -> None:
        thread = self.thread
        if thread is None:
            thread = self.thread = ActorThread(f"disto {self.label}", asyncio.get_running_loop())
            thread.direct = self._direct
        thread.lazy = not self.queue  # (see post)
        instance, done, running = self.instance, self._thread_done, self.running_items
        jobs = []
        for it in batch:
            running.add(it)
            jobs.append((getattr(instance, it.method), it.args, it.kwargs, done, it))
            it.args = it.kwargs = None  # type: ignore[assignment] - the thread holds them
        thread.submit(jobs)

    def _start_stream(self, item: CallItem, how: How) -> None:
        try:
            gen = getattr(self.instance, item.method)(*item.args, **item.kwargs)  # runs none of its code yet
        except BaseException as e:  # noqa: BLE001 - bad arguments
            self.running -= 1
            self._fail(item, e, format_remote_traceback(e))
            return
        item.args = item.kwargs = None  # type: ignore[assignment]
        item.task = asyncio.get_running_loop().create_task(self._stream(item, gen, how))
        self.running_items.add(item)

    async def _stream(self, item: CallItem, gen: Any, how: How) -> None:
        """Drive a generator method: each item to the sink as the caller's credit allows, then the end; an
        exception where it happened. The call holds its slot until the generator is done."""
        assert self._open_stream is not None
        sink = self._open_stream(item, lambda: self.cancel(lambda it: it is item))
        thread = self.thread
        if how is GEN and thread is None:
            thread = self.thread = ActorThread(f"disto {self.label}", asyncio.get_running_loop())
            thread.direct = self._direct

        def step() -> Any:
            return next(gen, _DONE)

        outcome = 1  # error, unless it ends otherwise below
        try:
            if how is AGEN:
                anext = gen.__anext__
                while True:
                    try:
                        value = await anext()
                    except StopAsyncIteration:
                        break
                    await sink.send(value)
            else:
                while True:
                    value = step() if how is GEN_LOOP else await thread.run(step)  # type: ignore[union-attr]
                    if value is _DONE:
                        break
                    await sink.send(value)
            sink.end()
            outcome = 0
        except asyncio.CancelledError:
            outcome = 1 if self.stopped else 2
            dead = self.stopped
            sink.fail(ActorDeadError(f"actor {self.label} was stopped", actor=self.label) if dead
                      else asyncio.CancelledError(), "")
        except Exception as e:  # noqa: BLE001
            outcome = 1
            sink.fail(e, format_remote_traceback(e))
        finally:
            if self.stats is not None:
                self.stats.observe(item.method, _perf_counter() - item.t0, outcome)  # ok, error, cancelled
            self.running_items.discard(item)  # answered: a second cancel must not interrupt the closing below
            try:
                if how is AGEN:
                    await gen.aclose()
                elif how is GEN:
                    await thread.run(gen.close)  # type: ignore[union-attr]  # on the thread it ran on
                else:
                    gen.close()
            except BaseException as e:  # noqa: BLE001 - its finally blocks raised: the caller has its answer
                if not isinstance(e, asyncio.CancelledError):
                    log.warning("closing the stream of %s.%s raised: %s", self.label, item.method, e)
            finally:
                self.running -= 1  # the slot is free once the generator is closed
                if self.queue and not self.stopped:
                    self._drain()

    def _as_task(self, item: CallItem, coro: Any) -> None:
        item.args = item.kwargs = None  # type: ignore[assignment] - let big arguments go early
        item.coro = coro
        item.task = asyncio.get_running_loop().create_task(self._run(item, coro))
        self.running_items.add(item)

    def _thread_done(self, item: CallItem, ok: bool, value: Any, tb: str) -> None:
        """On the loop: a sync call came back from the actor's thread (the run's slot is free after its last)."""
        self.running_items.discard(item)
        self._run_left -= 1
        if value is ANSWERED:
            self._answered(item)  # type: ignore[misc]
        elif ok and (type(value) is _CoroutineType or (type(value) not in _PLAIN and _is_coroutine(value))) \
                and not item.abandoned:  # a sync method that returned a coroutine
            self.running += 1  # the task takes a slot of its own; the run's is released below as usual
            self._as_task(item, value)
        elif not item.abandoned:
            if ok:
                self._reply(item, value)
            else:
                self._fail(item, value, tb)
        if self._run_left == 0:
            self._run_open = False
            self.running -= 1
            if self.queue and not self.stopped:
                self._drain()

    async def _run(self, item: CallItem, coro: Any) -> None:
        try:
            result = await coro
        except asyncio.CancelledError as e:
            if self.stopped:
                self._fail(item, ActorDeadError(f"actor {self.label} was stopped", actor=self.label), "")
            else:
                self._fail(item, e, "")
        except Exception as e:  # noqa: BLE001
            self._fail(item, e, format_remote_traceback(e))
        else:
            self._reply(item, result)
        finally:
            self.running -= 1
            self.running_items.discard(item)
            if self.queue and not self.stopped:
                self._drain()

    def _abandon(self, item: CallItem, exc: BaseException) -> None:
        """Answer a call now whose sync code still runs on the thread (it cannot be interrupted); its result,
        when it comes, is dropped. The actor stays busy until then."""
        if not item.abandoned:
            item.abandoned = True
            self._fail(item, exc, "")

    def cancel(self, match: Callable[[CallItem], bool]) -> bool:
        """Cancel a queued or running call; True if one was found."""
        self.settle()
        for item in self._joining:
            if match(item):
                self._abandon(item, asyncio.CancelledError())  # skipped on the thread, still counted
                return True
        for item in self.running_items:
            if match(item):
                if item.task is not None:
                    item.task.cancel()
                else:
                    self._abandon(item, asyncio.CancelledError())
                return True
        for item in self.queue:
            if match(item):
                self.queue.remove(item)
                self._fail(item, asyncio.CancelledError(), "")
                return True
        return False

    def cancel_from(self, ch: "Channel") -> int:
        """Cancel every call that came over ``ch`` (its caller is gone): queued ones are dropped, running async
        ones cancelled, sync ones abandoned. Returns how many."""
        self.settle()
        gone = [item for item in self.queue if item.ch is ch]
        for item in gone:
            self.queue.remove(item)
            self._fail(item, asyncio.CancelledError(), "")
        running = [item for item in [*self.running_items, *self._joining] if item.ch is ch]
        for item in running:
            if item.task is not None:
                item.task.cancel()
            else:
                self._abandon(item, asyncio.CancelledError())
        return len(gone) + len(running)

    def stop(self) -> None:
        """Fail queued calls with ActorDeadError and cancel running ones (whoever owns the actor's thread ends
        it, after ``on_stop``)."""
        self.settle()
        self.stopped = True
        dead = ActorDeadError(f"actor {self.label} was stopped", actor=self.label)
        while self.queue:
            self._fail(self.queue.popleft(), dead, "")
        for item in [*self.running_items, *self._joining]:
            if item.task is not None:
                item.task.cancel()
            else:
                self._abandon(item, dead)


def describe_exception(exc: BaseException) -> str:
    t = type(exc)
    if isinstance(exc, RemoteError):
        return exc.type_name
    return f"{t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else t.__qualname__
