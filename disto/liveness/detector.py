"""The failure detector, pure: timestamps in, events out. No asyncio, sockets or clocks of its own.

Every byte received from a peer counts as a sign of life (``heard``); when a peer has been quiet for
``interval`` we owe it a heartbeat (``due``), and when it has been quiet for ``timeout`` it is declared lost
(``tick``), once. A kill -9 is seen at once through EOF; this is what catches a frozen process (SIGSTOP) or a cut
link, where the kernel keeps the connection open and nothing ever arrives.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable


@dataclass
class _Peer:
    last_heard: float
    last_sent: float
    lost: bool = False


class FailureDetector:
    def __init__(self, timeout: float = 2.5, interval: float = 0.5) -> None:
        if not 0 < interval < timeout:
            raise ValueError(f"need 0 < interval < timeout, got interval={interval}, timeout={timeout}")
        self.timeout = timeout
        self.interval = interval
        self._peers: dict[Hashable, _Peer] = {}

    def add(self, peer: Hashable, now: float) -> None:
        self._peers[peer] = _Peer(now, now)

    def remove(self, peer: Hashable) -> None:
        self._peers.pop(peer, None)

    def heard(self, peer: Hashable, now: float) -> None:
        p = self._peers.get(peer)
        if p is not None and now > p.last_heard:
            p.last_heard = now

    def sent(self, peer: Hashable, now: float) -> None:
        p = self._peers.get(peer)
        if p is not None:
            p.last_sent = now

    def due(self, now: float) -> list[Hashable]:
        """Peers to send a heartbeat to now (nothing sent to them for ``interval``); marks them as sent."""
        out = []
        for peer, p in self._peers.items():
            if not p.lost and now - p.last_sent >= self.interval:
                p.last_sent = now
                out.append(peer)
        return out

    def tick(self, now: float) -> list[Hashable]:
        """Peers newly declared lost: quiet for ``timeout`` or more. Each is reported once."""
        out = []
        for peer, p in self._peers.items():
            if not p.lost and now - p.last_heard >= self.timeout:
                p.lost = True
                out.append(peer)
        return out

    def silence(self, peer: Hashable, now: float) -> float | None:
        p = self._peers.get(peer)
        return None if p is None else now - p.last_heard

    def __contains__(self, peer: Hashable) -> bool:
        return peer in self._peers
