"""The base class of actors, and which of their methods are callable remotely."""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from .ref import ActorRef

# called by the node at start and stop, never by a caller
LIFECYCLE_HOOKS = frozenset({"on_start", "on_stop"})


class Actor:
    """Base class of actors.

    Every method whose name does not start with ``_`` (sync or async) is callable remotely, except the lifecycle
    hooks. Class attributes:
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


_RESERVED = frozenset(dir(Actor)) | LIFECYCLE_HOOKS


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


def check_actor_class(cls: object) -> type:
    """``cls`` if it is a subclass of :class:`Actor`; TypeError (saying what it got) otherwise."""
    if isinstance(cls, type) and issubclass(cls, Actor):
        return cls
    what = f"the class {cls.__qualname__}" if isinstance(cls, type) else f"{type(cls).__name__} {cls!r}"
    raise TypeError(f"spawn needs a subclass of disto.Actor, got {what}"
                    + (" (add disto.Actor to its bases)" if isinstance(cls, type) else ""))
