"""Groups of actors: :class:`ActorGroup`, made by ``cluster.spawn_group`` (n actors of one class, ranks 0..n-1).

``await group.method(*args)`` calls every member at once (the calls are all handed to their connections before
any reply is awaited) and gives the values in rank order; ``group.method.choose(*args)`` calls one member, the
least loaded; ``group.method.tell(*args)`` is one-way to all. A group pickles like a ref: pass it to actors.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import threading
from typing import Any, Iterator, Sequence, overload

from ..futures import Future, collect, collect_all
from .ref import ActorRef, SystemActor, system_ref


def _gather_threadsafe(futs: list[concurrent.futures.Future], return_exceptions: bool
                       ) -> concurrent.futures.Future:
    """``collect`` for synchronous actor code (calls made from a thread give concurrent futures)."""
    out: concurrent.futures.Future = concurrent.futures.Future()
    results: list[Any] = [None] * len(futs)
    left = [len(futs)]
    lock = threading.Lock()

    def done(i: int, f: concurrent.futures.Future) -> None:
        exc = f.exception() if not f.cancelled() else concurrent.futures.CancelledError()
        with lock:
            if out.done():
                return
            if exc is not None and not return_exceptions:
                out.set_exception(exc)
                return
            results[i] = exc if exc is not None else f.result()
            left[0] -= 1
            finished = left[0] == 0
        if finished:
            out.set_result(results)

    if not futs:
        out.set_result([])
    for i, f in enumerate(futs):
        f.add_done_callback(functools.partial(done, i))
    return out


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


class GroupMethod:
    """``group.method``: call it for every member's value (rank order), ``.choose`` one member, ``.tell`` all."""

    __slots__ = ("_group", "_name")

    def __init__(self, group: "ActorGroup", name: str) -> None:
        self._group = group
        self._name = name

    def _calls(self, args: tuple, kwargs: dict, oneway: bool = False) -> list[Any]:
        name = self._name
        return [ref._resolve_node().call(ref, name, args, kwargs, oneway) for ref in self._group.refs]

    def __call__(self, *args: Any, return_exceptions: bool = False, **kwargs: Any) -> "Future[list[Any]]":
        """Every member's value, in rank order. Fails with the first error to happen (the other calls still run);
        with ``return_exceptions=True`` it never fails: each failed member's slot holds its exception."""
        calls = self._calls(args, kwargs)
        if not _on_loop():
            return _gather_threadsafe(calls, return_exceptions)  # type: ignore[return-value]
        return collect_all(calls) if return_exceptions else collect(calls)

    def choose(self, *args: Any, **kwargs: Any) -> "Future[Any]":
        """Call one member: the one with the fewest calls from this group object still running (ties: in turn)."""
        group = self._group
        busy = group._inflight
        if len(busy) != len(group.refs):
            busy[:] = [0] * len(group.refs)
        start = next(group._turn) % len(busy)
        i = min(range(len(busy)), key=lambda j: (busy[j], (j - start) % len(busy)))
        ref = group.refs[i]
        busy[i] += 1
        fut = ref._resolve_node().call(ref, self._name, args, kwargs)

        def done(_: Any) -> None:
            if i < len(busy):
                busy[i] -= 1
        fut.add_done_callback(done)
        return fut

    def tell(self, *args: Any, **kwargs: Any) -> "Future[list[None]]":
        """One-way call to every member; the future completes once all are handed to their connections."""
        calls = self._calls(args, kwargs, oneway=True)
        return _gather_threadsafe(calls, False) if not _on_loop() else collect(calls)  # type: ignore[return-value]

    def __await__(self) -> Any:
        raise TypeError(f"`await group.{self._name}` awaits the method itself: write `await group.{self._name}(...)`")

    def __repr__(self) -> str:
        return f"<group method {self._name} of {self._group!r}>"


def _rebuild_group(refs: list[ActorRef], group_id: str, actor_class: str) -> "ActorGroup":
    return ActorGroup(refs, group_id, actor_class)


class ActorGroup:
    """n actors of one class, made together by ``cluster.spawn_group``: ``len(group)``, ``group[i]`` (the ref of
    rank i), ``for ref in group``; ``await group.method(*args)``, ``group.method.choose(...)``,
    ``group.method.tell(...)``; ``group["name"]`` reaches a method whose name is one of the group's own
    (``stop``, ``refresh``, ``refs``, ``group_id``, ``actor_class``); ``await group.stop()``."""

    __slots__ = ("refs", "group_id", "actor_class", "_inflight", "_turn")

    def __init__(self, refs: Sequence[ActorRef], group_id: str = "", actor_class: str = "") -> None:
        self.refs: list[ActorRef] = list(refs)
        self.group_id = group_id
        self.actor_class = actor_class or (self.refs[0].actor_class if self.refs else "")
        self._inflight: list[int] = [0] * len(self.refs)  # calls made by choose() and not answered, per rank
        self._turn = itertools.count()

    def __len__(self) -> int:
        return len(self.refs)

    @overload
    def __getitem__(self, key: int) -> ActorRef: ...
    @overload
    def __getitem__(self, key: str) -> GroupMethod: ...

    def __getitem__(self, key: int | str) -> ActorRef | GroupMethod:
        if isinstance(key, str):
            return GroupMethod(self, key)
        return self.refs[key]

    def __iter__(self) -> Iterator[ActorRef]:
        return iter(self.refs)

    def __getattr__(self, name: str) -> GroupMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return GroupMethod(self, name)

    async def stop(self) -> list[bool]:
        """Stop every member (at once); for each, False if it was not running. Their resources are given back."""
        outcomes = await collect_all(
            system_ref(SystemActor.NODE_SERVICE, r.node_address, node_id=r.node_id, via=r._resolve_node())
            .stop_actor(r.actor_id) for r in self.refs)
        if self.refs and self.group_id:
            registry = self.refs[0]._resolve_node().registry
            if registry is not None:
                registry.forget_group.tell(self.group_id)
        return [o is True for o in outcomes]

    async def refresh(self) -> "ActorGroup":
        """Re-read the members from the seed: after a member was restarted elsewhere (``max_restarts``), its
        rank holds the new actor. (A seed that restarted learns the members again as their nodes rejoin it;
        ranks it does not know yet keep their ref.)"""
        registry = self.refs[0]._resolve_node().registry if self.refs else None
        if registry is not None and self.group_id:
            known = await registry.group_members(self.group_id)
            if len(known) == len(self.refs):
                self.refs = [new if new is not None else old for new, old in zip(known, self.refs)]
                self._inflight = [0] * len(self.refs)
        return self

    def __reduce__(self) -> Any:
        return (_rebuild_group, (self.refs, self.group_id, self.actor_class))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorGroup) and self.group_id == other.group_id and self.refs == other.refs

    def __hash__(self) -> int:
        return hash((self.group_id, len(self.refs)))

    def __repr__(self) -> str:
        nodes = len({r.node_address for r in self.refs})
        return f"<ActorGroup {self.actor_class} x{len(self.refs)} on {nodes} node{'s' * (nodes != 1)}>"
