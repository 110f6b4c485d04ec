"""Heavy libraries a node imports in the background (``disto node start --preload``, or the ones a spawn's caller
has imported), and the events it holds back meanwhile.

Why hold them: Python's import locks do not make two threads importing one package safe. While the preload
thread is inside ``torch/__init__.py``, ``torch`` is already in ``sys.modules``; a second thread that imports
``torch.nn.modules.linear`` (unpickling a call's arguments does) does not wait for the parent package and runs
the submodule against the half-built ``torch`` ("cannot import name 'nn' from partially initialized module
'torch'"). So while a preload runs, the events that unpickle (calls, replies, failures, stream items) and those
that must stay in order with them (cancels, stream ends, goodbyes) are queued in arrival order, with the
channel's queue bound applied to the calls, and handled once every preload has ended. Heartbeats, shipped
modules, releases and stream credit go on as they come, and so does what joining the cluster needs, so that a
cluster comes up while its nodes import: the membership calls to the registry (their arguments are disto's own
dicts), and replies on a node with no actors of the user's yet (only the node's own calls wait for them: a
spawn, which the preload holds, must come first).
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import threading
import time
from typing import Any, Callable, Iterable, MutableMapping

from ..actor import FIRST_USER_ACTOR_ID, SystemActor
from ..transport import Channel
from ..wire import Call, Cancel, Failure, Goodbye, Reply, StreamEnd, StreamItem

log = logging.getLogger("disto.node")

# heavy libraries a node imports ahead of need when the caller has them imported (torch: about 0.85 s here)
PRELOAD_CANDIDATES = ("numpy", "torch", "torchvision", "scipy", "pandas", "sklearn", "faiss", "jax",
                      "transformers")

# the events held while a preload runs (see the module's docstring)
HELD = (Call, Reply, Failure, Cancel, StreamItem, StreamEnd, Goodbye)
# the registry's methods that joining and following the cluster calls (no value of the user's in them)
MEMBERSHIP = frozenset({"join", "update", "leave", "members"})

Handler = Callable[[Channel, Any], None]


def heavy_imports() -> tuple[str, ...]:
    """The heavy libraries this process has imported: the ones its actors' nodes should import ahead of need."""
    return tuple(m for m in PRELOAD_CANDIDATES if m in sys.modules)


class Preloads:
    """Imports started in the background, so that the first call that carries a tensor does not pay for
    ``import torch``; a spawn waits for them, so that the actor starts with them imported. ``handlers`` is the
    node's table of event handlers (what its channels call), and ``context`` the (variable, value) its channels
    set around a handler: while an import runs, the ``HELD`` entries of the table queue their events."""

    WARN_AFTER = 30.0  # seconds of holding after which the log says so (an import that hangs holds calls forever)

    def __init__(self, handlers: MutableMapping[type, Handler], context: tuple[Any, Any],
                 actor_ids: Callable[[], Iterable[int]] = tuple,
                 settled: Callable[[], None] | None = None) -> None:
        self._handlers = handlers
        self._settled = settled  # called when the last import running has ended, before held events go on
        self._context = context
        self._actor_ids = actor_ids  # the ids of the actors here now
        self._running: dict[str, asyncio.Future] = {}
        self._saved: dict[type, Handler] = {}
        self._held: list[tuple[Channel, Any]] = []
        self._since = 0.0
        self._warning: asyncio.TimerHandle | None = None

    @property
    def running(self) -> tuple[str, ...]:
        """The libraries being imported now."""
        return tuple(name for name, fut in self._running.items() if not fut.done())

    @property
    def held(self) -> int:
        """Events waiting for the imports to end."""
        return len(self._held)

    def start(self, names: tuple[str, ...] | list[str], any_name: bool = False) -> list[asyncio.Future]:
        """Import ``names`` in the background (each once); the futures of the imports still running.
        A peer may only name ``PRELOAD_CANDIDATES``; ``any_name``: names from this node's own command line."""
        loop = asyncio.get_running_loop()
        for name in names:
            if not any_name and name not in PRELOAD_CANDIDATES:
                continue
            if name in self._running or name in sys.modules:
                continue  # started already; imported already
            fut = self._running[name] = loop.create_future()
            if not self._saved:
                self._hold()
            threading.Thread(target=self._import, args=(name, fut, loop, any_name), name=f"disto import {name}",
                             daemon=True).start()
        return [fut for fut in self._running.values() if not fut.done()]

    async def wait(self, names: tuple[str, ...] | list[str]) -> None:
        """Start ``names`` if they are not imported, then wait for every import running here (a library the
        node's command line named too: the actor's code could import it at the same time)."""
        waits = self.start(names)
        if waits:
            await asyncio.gather(*waits)

    def _import(self, name: str, fut: asyncio.Future, loop: asyncio.AbstractEventLoop, asked: bool) -> None:
        t0 = time.perf_counter()
        try:
            importlib.import_module(name)
            log.debug("preloaded %s in %.2f s", name, time.perf_counter() - t0)
        except BaseException as e:  # not installed here: the call that needs it will say so
            # (a library the driver has but this node lacks is normal; one the command line named is a mistake)
            log.log(logging.WARNING if asked or not isinstance(e, ImportError) else logging.DEBUG,
                    "could not preload %s: %s: %s", name, type(e).__name__, e)
        try:
            loop.call_soon_threadsafe(self._done, fut)
        except RuntimeError:
            pass  # the loop is closed: the node is gone

    def _done(self, fut: asyncio.Future) -> None:
        if not fut.done():
            fut.set_result(None)
        if not self.running:
            if self._settled is not None:
                self._settled()
            if self._saved:
                self._release()

    # ------------------------------------------------------------------ holding events
    def _hold(self) -> None:
        self._since = time.monotonic()
        self._warning = asyncio.get_running_loop().call_later(self.WARN_AFTER, self._still_importing)
        for kind in HELD:
            self._saved[kind] = self._handlers[kind]
            self._handlers[kind] = self._keep

    def _keep(self, ch: Channel, ev: Any) -> None:
        kind = type(ev)
        if self._passes(kind, ev):
            self._saved[kind](ch, ev)
            return
        if not self._held:
            log.info("holding calls from %s until %s is imported (preload)", ch.peer_name(),
                     ", ".join(self.running))
        self._held.append((ch, ev))
        if kind is Call:  # the channel's bound on queued calls applies to held ones: TCP backpressure
            ch.call_received()

    def _passes(self, kind: type, ev: Any) -> bool:
        if kind is Call:
            return ev.body.actor_id == SystemActor.REGISTRY and ev.body.method in MEMBERSHIP
        return kind is Reply and self.only_system_actors()

    def only_system_actors(self) -> bool:
        """Whether no actor of the user's is on this node yet (only the node service and the registry)."""
        return all(a < FIRST_USER_ACTOR_ID for a in self._actor_ids())

    def _still_importing(self) -> None:
        log.warning("still importing %s after %.0f s (preload): %d call(s) and other events wait for it",
                    ", ".join(self.running), time.monotonic() - self._since, len(self._held))

    def _release(self) -> None:
        if self._warning is not None:
            self._warning.cancel()
            self._warning = None
        self._handlers.update(self._saved)
        self._saved.clear()
        held, self._held = self._held, []
        if held:
            log.info("handling %d event(s) held for %.2f s while a library was imported", len(held),
                     time.monotonic() - self._since)
        var, value = self._context
        token = var.set(value)
        try:
            for ch, ev in held:
                if type(ev) is Call:
                    ch.uncount_call()  # on_call counts it again
                if ch.closed:
                    continue  # its loss has been handled: its callers were failed, its calls are moot
                try:
                    self._handlers[type(ev)](ch, ev)
                except Exception:  # one event's fault must not drop the rest
                    log.exception("handling an event held during a preload, from %s", ch.peer_name())
            for ch in {ch for ch, _ in held}:
                ch.drained()  # resume reading a channel the held calls paused, once its queue allows
        finally:
            var.reset(token)
