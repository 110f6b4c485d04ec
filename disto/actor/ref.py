"""References to actors: :class:`ActorRef` (picklable: node address and actor id) and :class:`MethodRef`.

``ref.method(*args)`` returns a :class:`disto.Future`; ``ref.method.tell(*args)`` sends a one-way call. A ref
talks through the node of the code that uses it (:mod:`disto.actor.context`). Every node runs two system actors
at fixed ids, reached with :func:`system_ref`.
"""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from . import context

if TYPE_CHECKING:
    from ..futures import Future
    from ..node import Node


class SystemActor(enum.IntEnum):
    """The actors every node runs, by their fixed ids (the registry only on the seed)."""

    NODE_SERVICE = 0
    REGISTRY = 1


FIRST_USER_ACTOR_ID = 16
_SYSTEM_CLASS = {SystemActor.NODE_SERVICE: "NodeService", SystemActor.REGISTRY: "Registry"}


def system_ref(which: SystemActor, address: str, *, node_id: str = "", via: "Node | None" = None) -> "ActorRef":
    """The ref of the node service or the registry of the node at ``address`` (``node_id`` pins one incarnation
    of it; "" accepts whichever node listens there now). Calls go through ``via`` (default: the current node)."""
    return ActorRef(node_id, address, int(which), _SYSTEM_CLASS[which], None, via)


class MethodRef:
    """``ref.method``: call it for a Future, or ``.tell(...)`` for a one-way call."""

    __slots__ = ("_ref", "_name")

    def __init__(self, ref: "ActorRef", name: str) -> None:
        self._ref = ref
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> "Future[Any]":
        ref = self._ref
        node = ref._node
        if node is None or node.closed:
            node = ref._resolve_node()
        return node.call(ref, self._name, args, kwargs)

    def tell(self, *args: Any, **kwargs: Any) -> "Future[None]":
        """One-way call: no reply, errors are only logged on the actor's node. The returned future completes
        when the call has been handed to the connection (await it to respect backpressure, or ignore it)."""
        ref = self._ref
        return ref._resolve_node().call(ref, self._name, args, kwargs, oneway=True)

    def __await__(self) -> Any:
        raise TypeError(f"`await ref.{self._name}` awaits the method itself, not a call to it: write "
                        f"`await ref.{self._name}(...)`")

    def __repr__(self) -> str:
        return f"<method {self._name} of {self._ref!r}>"


def _rebuild_ref(node_id: str, address: str, actor_id: int, cls_name: str, name: str | None) -> "ActorRef":
    return ActorRef(node_id, address, actor_id, cls_name, name, context.current.get())


class ActorRef:
    """A serializable reference to an actor: pass it to other actors, who can call it.

    ``ref.some_method(...)`` -> Future; ``ref.some_method.tell(...)`` -> one-way; ``ref["name"]`` reaches a
    method whose name collides with one of the attributes below (``actor_id``, ``actor_name``, ``actor_class``,
    ``node_id``, ``node_address``).
    """

    # __dict__ holds the MethodRefs made so far: ``ref.ping`` then finds one there, where otherwise Python 3.11
    # would build and discard an AttributeError (its message formatted) before calling __getattr__, every call
    __slots__ = ("node_id", "node_address", "actor_id", "actor_class", "actor_name", "_node", "__dict__")

    def __init__(self, node_id: str, node_address: str, actor_id: int, actor_class: str = "",
                 actor_name: str | None = None, node: "Node | None" = None) -> None:
        self.node_id = node_id
        self.node_address = node_address
        self.actor_id = actor_id
        self.actor_class = actor_class
        self.actor_name = actor_name
        self._node = node

    def _resolve_node(self) -> "Node":
        node = self._node
        if node is None or node.closed:
            node = self._node = context.current_node()
        return node

    def __getattr__(self, name: str) -> MethodRef:
        if name.startswith("_"):
            raise AttributeError(name)
        method = self.__dict__[name] = MethodRef(self, name)
        return method

    def __getitem__(self, name: str) -> MethodRef:
        return MethodRef(self, name)

    def __reduce__(self) -> Any:
        return (_rebuild_ref, (self.node_id, self.node_address, self.actor_id, self.actor_class, self.actor_name))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ActorRef) and self.actor_id == other.actor_id
                and self.node_id == other.node_id and self.node_address == other.node_address)

    def __hash__(self) -> int:
        return hash((self.node_id, self.actor_id))

    def __repr__(self) -> str:
        label = self.actor_name or f"{self.actor_class or 'actor'}#{self.actor_id}"
        return f"<ActorRef {label} on {self.node_address or self.node_id}>"

    def _describe(self) -> str:
        return self.actor_name or f"{self.actor_class or 'actor'}#{self.actor_id}"
