"""The modules of this process's own code that its peers need: each peer is sent a module's source once, in a
MODULES frame ahead of the first message that refers to it; what peers send is served by the process's finder of
shipped modules (:mod:`disto.serialization.modules`)."""
from __future__ import annotations

import logging

from ..serialization.modules import FINDER, ModuleSource, closure, install_finder
from ..transport import Channel
from ..wire import Kind, Modules, T

log = logging.getLogger("disto.node")


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
