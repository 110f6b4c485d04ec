"""The actors of one node: their instances, mailboxes and refs, by id; spawning and stopping them."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from ..actor import (FIRST_USER_ACTOR_ID, ActorRef, ActorThread, Mailbox, check_actor_class, public_methods,
                     runs_on_loop)
from ..actor import context
from ..errors import ActorDeadError, ActorNotFoundError, ClosedError, DistoError
from .config import Here
from .metrics import CANCELLED, ERROR, OK, ActorStats, NodeMetrics
from .replies import Replies
from .streams import StreamSinks

log = logging.getLogger("disto.node")


def _nothing(item: Any) -> None:
    pass


class Cell:
    """One actor: the object, its mailbox and its ref; and how to build it again, if it is supervised."""

    __slots__ = ("instance", "mailbox", "ref", "supervision", "started", "restarts", "hold", "member")

    def __init__(self, instance: Any, mailbox: Mailbox, ref: ActorRef, restarts: int = 0) -> None:
        self.instance = instance
        self.mailbox = mailbox
        self.ref = ref
        self.supervision: tuple | None = None  # (cls, args, kwargs, max_restarts, process, restarts): for a new seed
        self.started = time.time()
        self.restarts = restarts  # how many times it was built again before this one (supervised actors)
        self.hold: tuple[str, dict] | None = None  # (node id, resources) it holds there: for a new seed
        self.member: tuple[Any, int] | None = None  # (its group, its rank): for a new seed


class ActorTable:
    def __init__(self, here: Here, replies: Replies, node: Any, sinks: StreamSinks,
                 metrics: NodeMetrics | None = None, thread_replies: bool = False) -> None:
        self._here = here
        self._thread_replies = thread_replies  # actors' threads write their plain answers (node.thread_replies)
        self.metrics = metrics or NodeMetrics(False)
        self._replies = replies
        self._sinks = sinks
        self._node = node  # what the actors' refs call through, and the context their code runs in
        self.cells: dict[int, Cell] = {}
        self._next_id = FIRST_USER_ACTOR_ID
        self._allocated: set[int] = set()  # ids handed out for group members not built yet

    def thread_replies(self) -> int:
        """How many replies the actors' threads wrote on the caller's socket themselves (actor/threads.py)."""
        return self._replies.thread_answers

    def allocate(self, n: int) -> list[int]:
        """Ids for ``n`` actors to be spawned later (group members: every member's ref exists before any of
        them is built, so each can be given the whole group)."""
        if type(n) is not int or not 0 < n <= 1 << 16:
            raise ValueError(f"can allocate 1 to 65536 actor ids at a time, not {n!r}")
        ids = list(range(self._next_id, self._next_id + n))
        self._next_id += n
        self._allocated.update(ids)
        return ids

    def _mailbox(self, instance: Any, ref: ActorRef, thread: ActorThread | None = None,
                 stats: ActorStats | None = None) -> Mailbox:
        cls = type(instance)
        label = ref._describe()
        fail: Callable[..., None] = self._replies.fail
        reply: Callable[..., None] = self._replies.reply
        open_stream = self._sinks.open
        if stats is None:
            def on_fail(item: Any, exc: BaseException, tb: str) -> None:
                fail(item, exc, tb, label)
            on_reply = reply
        else:  # count each call as it is answered: outcome and latency since it arrived
            observe = stats.observe
            clock = time.perf_counter
            on_reply = stats.counting(reply)

            def on_fail(item: Any, exc: BaseException, tb: str) -> None:
                observe(item.method, clock() - item.t0,
                        CANCELLED if isinstance(exc, asyncio.CancelledError) else ERROR)
                fail(item, exc, tb, label)
        direct = None
        if self._thread_replies:
            if stats is None:
                direct = (self._replies, _nothing)
            else:
                observe = stats.observe

                def answered(item: Any) -> None:  # (its latency up to the thread's answer)
                    observe(item.method, item.t1 - item.t0, OK)
                direct = (self._replies, answered)
        return Mailbox(instance, label, getattr(cls, "max_concurrency", 1), on_reply, on_fail,
                       public_methods(cls), thread, lambda item, cancel: open_stream(item, label, cancel), stats,
                       direct)

    def install_system(self, instance: Any, actor_id: int) -> ActorRef:
        ref = ActorRef(self._here.node_id, self._here.address, actor_id, type(instance).__name__, None, self._node)
        instance._disto_ref = ref
        self.cells[actor_id] = Cell(instance, self._mailbox(instance, ref), ref)
        return ref

    async def spawn(self, cls: type, args: tuple, kwargs: dict, name: str | None, registry: ActorRef | None,
                    restarts: int = 0, placement: dict | None = None) -> ActorRef:
        """Create an actor of class ``cls`` here: its constructor and ``on_start`` run now, in this node's
        context; then its name (if any) is registered. ``placement``: ``actor_id`` (one :meth:`allocate` gave),
        ``rank`` and ``group`` (set on the instance before its constructor), ``resources`` and ``node`` (what
        it holds where)."""
        placement = placement or {}
        check_actor_class(cls)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"an actor name must be a non-empty string, got {name!r}")
        if self._here.closing:
            raise ClosedError("node is stopping")
        actor_id = placement.get("actor_id")
        if actor_id is None:
            actor_id = self._next_id
            self._next_id += 1
        elif actor_id in self._allocated:
            self._allocated.discard(actor_id)
        else:
            raise ValueError(f"actor id {actor_id!r} was not allocated on this node (or is taken)")
        ref = ActorRef(self._here.node_id, self._here.address, actor_id, cls.__qualname__, name, self._node)
        instance = cls.__new__(cls)
        instance._disto_ref = ref
        if "rank" in placement:
            instance.__dict__.update(_disto_rank=placement["rank"], _disto_group=placement.get("group"))
        thread = ActorThread(f"disto {ref._describe()}", asyncio.get_running_loop())
        token = context.current.set(self._node)
        try:
            try:
                await self._sync(cls, thread, instance.__init__, *args, **kwargs)
                on_start = getattr(instance, "on_start", None)
                if on_start is not None:
                    r = await self._sync(cls, thread, on_start)
                    if asyncio.iscoroutine(r):
                        await r
            finally:
                context.current.reset(token)
        except BaseException:
            thread.stop()
            raise
        cell = Cell(instance, self._mailbox(instance, ref, thread, self.metrics.for_actor(actor_id)), ref, restarts)
        if placement.get("resources") is not None and placement.get("node"):
            cell.hold = (placement["node"], placement["resources"])
        if placement.get("group") is not None and "rank" in placement:
            cell.member = (placement["group"], placement["rank"])
        self.cells[actor_id] = cell
        if restarts:
            self.metrics.restarts += 1
        if name is not None:
            assert registry is not None
            try:
                await registry.register(name, ref)
            except BaseException:
                self.cells.pop(actor_id, None)
                cell.mailbox.stop()
                raise
        return ref

    @staticmethod
    async def _sync(cls: type, thread: ActorThread, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an actor's synchronous code where its class says: its thread (default), or the loop."""
        if runs_on_loop(cls, fn) or asyncio.iscoroutinefunction(fn):
            return fn(*args, **kwargs)
        return await thread.run(lambda: fn(*args, **kwargs))

    async def stop(self, actor_id: int, registry: ActorRef | None) -> bool:
        """Stop one actor: queued calls fail with ActorDeadError, running ones are cancelled, then ``on_stop``;
        its name is freed and it is no longer supervised."""
        if actor_id < FIRST_USER_ACTOR_ID:
            raise ValueError("system actors cannot be stopped")
        cell = self.cells.pop(actor_id, None)
        if cell is None:
            return False
        self.metrics.forget(actor_id)
        cell.mailbox.stop()
        on_stop = getattr(cell.instance, "on_stop", None)
        thread = cell.mailbox.thread
        if on_stop is not None:
            try:
                r = await self._sync(type(cell.instance), thread, on_stop) if thread is not None else on_stop()
                if asyncio.iscoroutine(r):
                    await r
            except Exception:
                log.exception("on_stop of %s raised", cell.mailbox.label)
        if thread is not None:
            thread.stop()
        if registry is not None and not self._here.closing:
            try:  # a stopped actor is not restarted, its name is free again, and so is what it held
                if cell.hold is not None:  # awaited: once stop returns, the room is free for the next spawn
                    await registry.unsupervise(self._here.node_id, actor_id)
                else:
                    registry.unsupervise.tell(self._here.node_id, actor_id)
                if cell.ref.actor_name:
                    await registry.unregister(cell.ref.actor_name, cell.ref)
            except DistoError as e:
                log.debug("could not unregister %s: %s", cell.ref.actor_name, e)
        return True

    async def stop_all(self) -> None:
        for actor_id in [a for a in self.cells if a >= FIRST_USER_ACTOR_ID]:
            await self.stop(actor_id, None)
        for cell in list(self.cells.values()):
            cell.mailbox.stop()
            if cell.mailbox.thread is not None:
                cell.mailbox.thread.stop()
        self.cells.clear()

    def cancel_calls_from(self, ch: Any) -> int:
        """The connection a caller used is gone: nobody waits for its calls any more, so stop running them."""
        return sum(cell.mailbox.cancel_from(ch) for cell in list(self.cells.values()))

    async def register_again(self, registry: ActorRef) -> None:
        """The seed was restarted (it knows nothing): tell it our actors' names and supervision again."""
        for actor_id, cell in list(self.cells.items()):
            if actor_id < FIRST_USER_ACTOR_ID:
                continue
            try:
                if cell.ref.actor_name:
                    await registry.register(cell.ref.actor_name, cell.ref)
                if cell.supervision is not None:
                    await registry.supervise(cell.ref, *cell.supervision)
                if cell.hold is not None:
                    await registry.hold_again(cell.hold[0], cell.hold[1], cell.ref)
                if cell.member is not None:
                    group, rank = cell.member
                    await registry.member_again(group.group_id, len(group), rank, cell.ref)
            except DistoError as e:  # e.g. the name was taken on the new seed first
                log.warning("could not register %s with the seed again: %s", cell.ref._describe(), e)

    def refs(self) -> list[ActorRef]:
        """The user actors (not the system ones)."""
        return [c.ref for a, c in self.cells.items() if a >= FIRST_USER_ACTOR_ID]

    def missing(self, actor_id: int, node_id: str | None) -> DistoError:
        """Why a call to ``actor_id`` (on node incarnation ``node_id``) finds no actor here."""
        here = self._here
        if node_id and node_id != here.node_id:
            return ActorDeadError(f"actor #{actor_id} lived on a node that has since restarted",
                                  actor=f"#{actor_id}", node=here.address)
        if actor_id in self._allocated:
            return ActorNotFoundError(f"actor #{actor_id} on {here.address} is not built yet (a group member still "
                                      "starting: call the group once spawn_group has returned)",
                                      actor=f"#{actor_id}", node=here.address)
        if FIRST_USER_ACTOR_ID <= actor_id < self._next_id:
            return ActorDeadError(f"actor #{actor_id} was stopped", actor=f"#{actor_id}", node=here.address)
        return ActorNotFoundError(f"no actor #{actor_id} on {here.address}", actor=f"#{actor_id}", node=here.address)
