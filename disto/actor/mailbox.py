"""Ordered dispatch of calls to one actor instance.

Calls are started in arrival order. A call occupies one of ``max_concurrency`` slots from its start until its
result is ready: a sync method for the duration of the call, an async method until its coroutine returns. With
one slot (the default) that makes execution strictly sequential per actor; since a connection delivers frames in
the order they were sent, calls from one caller to one actor run in the order sent.

An idle actor runs a sync method inline, in the callback that received it: no task, no queue hop.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ActorDeadError, RemoteError, format_remote_traceback

if TYPE_CHECKING:
    from ..transport import Channel

log = logging.getLogger("disto.actor")


class CallItem:
    """One call to run: where it came from (a channel, or a local future) and what to run."""

    __slots__ = ("ch", "call_id", "method", "args", "kwargs", "fut", "task")

    def __init__(self, ch: "Channel | None", call_id: int, method: str, args: tuple, kwargs: dict,
                 fut: asyncio.Future | None) -> None:
        self.ch = ch
        self.call_id = call_id
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.fut = fut
        self.task: asyncio.Task | None = None


# (item, value) / (item, exception, traceback text)
ReplyFn = Callable[[CallItem, Any], None]
FailFn = Callable[[CallItem, BaseException, str], None]


class Mailbox:
    def __init__(self, instance: Any, label: str, limit: int, reply: ReplyFn, fail: FailFn,
                 methods: dict[str, str]) -> None:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {limit!r}")
        self.instance = instance
        self.label = label
        self.limit = limit
        self.queue: deque[CallItem] = deque()
        self.running = 0
        self.running_items: set[CallItem] = set()
        self.stopped = False
        self._reply = reply
        self._fail = fail
        self._methods = methods  # public method name -> attribute name

    def post(self, item: CallItem) -> None:
        if self.stopped:
            self._fail(item, ActorDeadError(f"actor {self.label} is stopped", actor=self.label), "")
            return
        if self.running < self.limit and not self.queue:
            self._start(item)  # idle: run now, no queue hop
            return
        self.queue.append(item)
        if self.running < self.limit:
            self._drain()

    def _drain(self) -> None:
        queue = self.queue
        while queue and self.running < self.limit and not self.stopped:
            self._start(queue.popleft())

    def _start(self, item: CallItem) -> None:
        attr = self._methods.get(item.method)
        if attr is None:
            err = AttributeError(f"{type(self.instance).__name__} has no public method {item.method!r}")
            self._fail(item, err, "")
            return
        self.running += 1
        try:
            result = getattr(self.instance, attr)(*item.args, **item.kwargs)
        except BaseException as e:  # noqa: BLE001 - every error goes back to the caller
            self.running -= 1
            self._fail(item, e, format_remote_traceback(e))
            if not isinstance(e, Exception):
                raise
            return
        if asyncio.iscoroutine(result):
            item.args = item.kwargs = None  # type: ignore[assignment] - let big arguments go early
            task = asyncio.get_running_loop().create_task(self._run(item, result))
            item.task = task
            self.running_items.add(item)
            return
        self.running -= 1
        self._reply(item, result)

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

    def cancel(self, match: Callable[[CallItem], bool]) -> bool:
        """Cancel a queued or running call; True if one was found."""
        for item in self.running_items:
            if match(item) and item.task is not None:
                item.task.cancel()
                return True
        for item in self.queue:
            if match(item):
                self.queue.remove(item)
                self._fail(item, asyncio.CancelledError(), "")
                return True
        return False

    def stop(self) -> None:
        """Fail queued calls with ActorDeadError and cancel running ones."""
        self.stopped = True
        dead = ActorDeadError(f"actor {self.label} was stopped", actor=self.label)
        while self.queue:
            self._fail(self.queue.popleft(), dead, "")
        for item in list(self.running_items):
            if item.task is not None:
                item.task.cancel()


def describe_exception(exc: BaseException) -> str:
    t = type(exc)
    if isinstance(exc, RemoteError):
        return exc.type_name
    return f"{t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else t.__qualname__
