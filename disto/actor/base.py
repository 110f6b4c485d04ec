"""The base class of actors, which of their methods are callable remotely, and how each one runs."""
from __future__ import annotations

import enum
import inspect
import weakref
from typing import TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

if TYPE_CHECKING:
    from .group import ActorGroup
    from .ref import ActorRef

# called by the node at start and stop, never by a caller
LIFECYCLE_HOOKS = frozenset({"on_start", "on_stop"})

class How(enum.Enum):
    """How a method runs (an enum: compared by identity on the hot path)."""

    ASYNC = "async"        # a coroutine function: a task on the node's event loop
    THREAD = "thread"      # a plain function: on the actor's own thread
    LOOP = "loop"          # a plain function marked @on_loop (or sync_on_loop = True): inline on the event loop
    AGEN = "agen"          # an async generator function: a stream, driven by a task on the loop
    GEN = "gen"            # a generator function: a stream, each next() on the actor's thread
    GEN_LOOP = "gen_loop"  # a generator function marked @on_loop: a stream, each next() on the loop


ASYNC, THREAD, LOOP, AGEN, GEN, GEN_LOOP = How.ASYNC, How.THREAD, How.LOOP, How.AGEN, How.GEN, How.GEN_LOOP
_ON_LOOP = "_disto_on_loop"
F = TypeVar("F", bound=Callable[..., Any])


def on_loop(fn: F) -> F:
    """Run this synchronous method on the node's event loop instead of the actor's thread: for a method that is
    quick and must touch the loop's objects (set an ``asyncio.Event``, create a task), or whose few microseconds
    of latency matter. It must never block: while it runs, nothing else on the node does."""
    setattr(fn, _ON_LOOP, True)
    return fn


def runs_on_loop(cls: type, fn: Any) -> bool:
    """Whether synchronous code ``fn`` of actor class ``cls`` runs inline on the loop (not on its thread)."""
    return bool(getattr(cls, "sync_on_loop", False) or getattr(fn, _ON_LOOP, False))


class Actor:
    """Base class of actors.

    Every method whose name does not start with ``_`` (sync or async) is callable remotely, except the lifecycle
    hooks. Async methods run on the node's event loop; synchronous code (methods, ``__init__``, sync hooks)
    runs on a thread of the actor's own, so that it may block without stalling the node. Class attributes:
      ``max_concurrency`` (default 1): how many calls may run at once. With 1, calls run one after another in
      arrival order, an async method holding the actor until it returns. With N > 1, up to N async methods
      interleave at their ``await`` points (they still start in arrival order); sync methods still run one at
      a time on the actor's thread, but then alongside its async ones.
      ``sync_on_loop`` (default False): run all synchronous code on the event loop (see :func:`on_loop`).

    Optional hooks: ``async def on_start(self)`` runs after ``__init__`` before the first call;
    ``async def on_stop(self)`` runs when the actor is stopped. ``self.ref`` is this actor's own ActorRef;
    ``self.rank`` and ``self.group`` its place in a group (``cluster.spawn_group``), None outside one.
    """

    max_concurrency: ClassVar[int] = 1
    sync_on_loop: ClassVar[bool] = False
    _disto_ref: "ActorRef"

    @property
    def ref(self) -> "ActorRef":
        return self._disto_ref

    @property
    def rank(self) -> int | None:
        """This actor's index in its group (``cluster.spawn_group``), set before ``__init__``; None outside one."""
        return self.__dict__.get("_disto_rank")

    @rank.setter
    def rank(self, value: int | None) -> None:  # an actor may keep a rank of its own in the attribute
        self.__dict__["_disto_rank"] = value

    @property
    def group(self) -> "ActorGroup | None":
        """The :class:`disto.ActorGroup` this actor is a member of (set before ``__init__``); None outside one.
        Its other members may still be starting while this one's ``__init__`` and ``on_start`` run."""
        return self.__dict__.get("_disto_group")

    @group.setter
    def group(self, value: "ActorGroup | None") -> None:
        self.__dict__["_disto_group"] = value


_RESERVED = frozenset(dir(Actor)) | LIFECYCLE_HOOKS


# per class, outside the class itself: a class pickled by value must not carry it along
_METHODS: "weakref.WeakKeyDictionary[type, dict[str, How]]" = weakref.WeakKeyDictionary()


def public_methods(cls: type) -> dict[str, How]:
    """Public method name -> how it runs (ASYNC, THREAD, LOOP, or a stream: AGEN, GEN, GEN_LOOP), for actor
    class ``cls`` (computed once)."""
    table = _METHODS.get(cls)
    if table is None:
        table = {}
        for attr in dir(cls):
            if attr.startswith("_") or attr in _RESERVED:
                continue
            fn = getattr(cls, attr, None)
            if callable(fn):
                if inspect.iscoroutinefunction(fn):
                    table[attr] = ASYNC
                elif inspect.isasyncgenfunction(fn):
                    table[attr] = AGEN
                elif inspect.isgeneratorfunction(fn):
                    table[attr] = GEN_LOOP if runs_on_loop(cls, fn) else GEN
                else:
                    table[attr] = LOOP if runs_on_loop(cls, fn) else THREAD
        _METHODS[cls] = table
    return table


def check_actor_class(cls: object) -> type:
    """``cls`` if it is a subclass of :class:`Actor`; TypeError (saying what it got) otherwise."""
    if isinstance(cls, type) and issubclass(cls, Actor):
        return cls
    what = f"the class {cls.__qualname__}" if isinstance(cls, type) else f"{type(cls).__name__} {cls!r}"
    raise TypeError(f"spawn needs a subclass of disto.Actor, got {what}"
                    + (" (add disto.Actor to its bases)" if isinstance(cls, type) else ""))
