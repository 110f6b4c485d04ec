"""The modules of this process's own code that its peers need: each peer is sent a module's source once, in a
MODULES frame ahead of the first message that refers to it; what peers send is served by the process's finder of
shipped modules (:mod:`disto.serialization.modules`)."""
from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import threading

from ..serialization.modules import FINDER, ModuleSource, closure, install_finder
from ..transport import Channel
from ..wire import Kind, Modules, T

log = logging.getLogger("disto.node")


# heavy libraries a node imports ahead of need when the caller has them imported (torch: about 0.85 s here)
PRELOAD_CANDIDATES = ("numpy", "torch", "torchvision", "scipy", "pandas", "sklearn", "faiss", "jax",
                      "transformers")


def heavy_imports() -> tuple[str, ...]:
    """The heavy libraries this process has imported: the ones its actors' nodes should import ahead of need."""
    return tuple(m for m in PRELOAD_CANDIDATES if m in sys.modules)


class Preloads:
    """Imports started in the background (``disto node start --preload``, or a spawn whose caller has them
    imported), so the first call that carries a tensor does not pay for ``import torch``; a spawn waits for them,
    so the actor starts with them imported."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future] = {}

    def start(self, names: tuple[str, ...] | list[str]) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        waits = []
        for name in names:
            if name not in PRELOAD_CANDIDATES or (name in sys.modules and name not in self._running):
                continue  # only the known libraries (a peer names them); imported already
            fut = self._running.get(name)
            if fut is None:
                fut = self._running[name] = loop.create_future()
                threading.Thread(target=self._import, args=(name, fut, loop), name=f"disto import {name}",
                                 daemon=True).start()
            waits.append(fut)
        return waits

    @staticmethod
    def _import(name: str, fut: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
        try:
            importlib.import_module(name)
        except Exception as e:  # not installed here: the call that needs it will say so
            log.debug("could not preload %s: %s", name, e)
        try:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))
        except RuntimeError:
            pass

    async def wait(self, names: tuple[str, ...] | list[str]) -> None:
        waits = self.start(names)
        if waits:
            await asyncio.gather(*waits)


class ModuleShipper:
    def __init__(self, max_body: int) -> None:
        self._sent: dict[Channel, set[str]] = {}  # per peer: the modules it has (sent, or not ours to send)
        self._frame_budget = max(1 << 16, max_body // 2)  # source bytes per MODULES frame

    def start(self) -> None:
        install_finder()

    def ship(self, ch: Channel, names: set[str]) -> None:
        """Send the peer the source of the modules ``names`` (and what they need) that it was not sent yet."""
        sent = self._sent.get(ch)
        if sent is None:
            sent = self._sent[ch] = set()
        new = names - sent
        if not new:
            return
        sources = [s for s in closure(new) if s.name not in sent]
        sent.update(new)
        sent.update(s.name for s in sources)
        if not sources or not ch.can_send():
            return
        batch: list = []
        size = 0
        for src in sources:
            if batch and size + len(src.source) > self._frame_budget:
                self._send(ch, batch)
                batch, size = [], 0
            batch.append(T.ModuleSource(name=src.name, source=src.source, filename=src.filename,
                                        is_package=src.is_package, lines_only=src.lines_only))
            size += len(src.source)
        self._send(ch, batch)

    @staticmethod
    def _send(ch: Channel, batch: list) -> None:
        log.debug("shipping %s to %s", ", ".join(m.name for m in batch), ch.peer_name())
        ch.send(Kind.MODULES, T.Modules(modules=batch))

    def on_modules(self, ch: Channel, ev: Modules) -> None:
        FINDER.install(ModuleSource(m.name, m.source, m.filename or f"<shipped {m.name}>", bool(m.is_package),
                                    bool(m.lines_only)) for m in ev.body.modules)

    def forget(self, ch: Channel) -> None:
        self._sent.pop(ch, None)
