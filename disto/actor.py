"""Actors and references to them.

An :class:`Actor` is a plain class: its public methods (names not starting with ``_``), sync or async, are
callable remotely through an :class:`ActorRef`. ``ref.method(*args)`` returns a :class:`disto.Future`;
``ref.method.tell(*args)`` sends a one-way call.
"""
from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .futures import Future
    from .node import Node

# The node that runs the current code: set while a node dispatches a message or runs an actor, so that refs
# unpickled or created there talk through that node. Falls back to the process's default node.
_current_node: contextvars.ContextVar["Node | None"] = contextvars.ContextVar("disto_node", default=None)
_default_node: list["Node"] = []


def current_node() -> "Node":
    """The disto node of the running code (inside an actor: its node; in a driver: the node it started)."""
    node = _current_node.get()
    if node is not None and not node.closed:
        return node
    for node in reversed(_default_node):
        if not node.closed:
            return node
    from ._errors import ClosedError
    raise ClosedError("no disto node is running in this process: use disto.LocalCluster(), disto.connect() "
                      "or disto.Node")


class Actor:
    """Base class of actors.

    Class attributes:
      ``max_concurrency`` (default 1): how many calls may run at once. With 1, calls run one after another in
      arrival order, an async method holding the actor until it returns. With N > 1, up to N async methods
      interleave at their ``await`` points (they still start in arrival order).

    Optional hooks: ``async def on_start(self)`` runs after ``__init__`` before the first call;
    ``async def on_stop(self)`` runs when the actor is stopped. ``self.ref`` is this actor's own ActorRef.
    """

    max_concurrency: ClassVar[int] = 1
    _disto_ref: "ActorRef"

    @property
    def ref(self) -> "ActorRef":
        return self._disto_ref


_RESERVED = frozenset(dir(Actor))


def public_methods(cls: type) -> dict[str, str]:
    """Public method name -> attribute name, for actor class ``cls`` (computed once per class)."""
    table = cls.__dict__.get("_disto_methods")
    if table is None:
        table = {}
        for attr in dir(cls):
            if attr.startswith("_") or attr in _RESERVED:
                continue
            fn = getattr(cls, attr, None)
            if callable(fn):
                table[attr] = attr
        cls._disto_methods = table  # type: ignore[attr-defined]
    return table


class MethodRef:
    """``ref.method``: call it for a Future, or ``.tell(...)`` for a one-way call."""

    __slots__ = ("_ref", "_name")

    def __init__(self, ref: "ActorRef", name: str) -> None:
        self._ref = ref
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> "Future[Any]":
        ref = self._ref
        return ref._resolve_node().call(ref, self._name, args, kwargs)

    def tell(self, *args: Any, **kwargs: Any) -> "Future[None]":
        """One-way call: no reply, errors are only logged on the actor's node. The returned future completes
        when the call has been handed to the connection (await it to respect backpressure, or ignore it)."""
        ref = self._ref
        return ref._resolve_node().call(ref, self._name, args, kwargs, oneway=True)

    def __repr__(self) -> str:
        return f"<method {self._name} of {self._ref!r}>"


def _rebuild_ref(node_id: str, address: str, actor_id: int, cls_name: str, name: str | None) -> "ActorRef":
    return ActorRef(node_id, address, actor_id, cls_name, name, _current_node.get())


class ActorRef:
    """A serializable reference to an actor: pass it to other actors, who can call it.

    ``ref.some_method(...)`` -> Future; ``ref.some_method.tell(...)`` -> one-way; ``ref["name"]`` reaches a
    method whose name collides with one of the attributes below (``actor_id``, ``actor_name``, ``actor_class``,
    ``node_id``, ``node_address``).
    """

    __slots__ = ("node_id", "node_address", "actor_id", "actor_class", "actor_name", "_node")

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
            node = self._node = current_node()
        return node

    def __getattr__(self, name: str) -> MethodRef:
        if name.startswith("_"):
            raise AttributeError(name)
        return MethodRef(self, name)

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
