"""What a node's liveness loop does on each tick, as a pure function of time and of what was heard.

On every tick the loop tells the monitor when each peer was last heard from (any bytes on its connection, or a
UDP heartbeat); the monitor answers with a :class:`Tick`: the peers owed a heartbeat, the peers to declare lost,
and the lost addresses to probe again. Two rules beyond the plain failure detector live here:

- **Stall compensation.** If the tick itself comes late (our own event loop was blocked: a long synchronous
  method, a slow import), what the peers sent is still unread in our sockets, so their silence is ours: every
  peer counts as heard now instead of being declared lost.
- **Probing with backoff.** An address declared lost is dialled again, less and less often: the wait between
  probes is 1 s plus a quarter of the time it has been lost (so the first probe comes 4/3 s after), at most 10 s.
  Once it answers the handshake, or is a member again (:meth:`LivenessMonitor.back`), it is no longer lost,
  whatever order the membership news arrives in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Iterable

from .detector import FailureDetector

PROBE_FIRST = 1.0    # seconds after being declared lost before the first probe
PROBE_SLOWDOWN = 4.0  # the wait grows by 1 s for every PROBE_SLOWDOWN seconds the address has been lost
PROBE_MAX = 10.0


@dataclass
class Tick:
    """What to do now: send a heartbeat to ``heartbeat``, declare ``lost`` lost, dial ``probe`` again."""

    heartbeat: list[Hashable] = field(default_factory=list)
    lost: list[Hashable] = field(default_factory=list)
    probe: list[str] = field(default_factory=list)
    stalled: bool = False


def probe_wait(lost_for: float) -> float:
    """Seconds between probes of an address that has been lost for ``lost_for`` seconds."""
    return min(PROBE_MAX, PROBE_FIRST + lost_for / PROBE_SLOWDOWN)


class LivenessMonitor:
    """Peers are any hashable handles (the node uses its channels); addresses are the peers' listen addresses."""

    def __init__(self, timeout: float, interval: float, now: float) -> None:
        self.detector = FailureDetector(timeout, interval)
        self.timeout = timeout
        self.stall = max(1.0, timeout / 2)  # a tick this late means our own loop was blocked
        self._last_tick = now
        self.lost: dict[str, float] = {}     # address -> when it was declared lost
        self._probed: dict[str, float] = {}  # address -> when it was last probed

    # ------------------------------------------------------------------ peers
    def add(self, peer: Hashable, now: float) -> None:
        self.detector.add(peer, now)

    def remove(self, peer: Hashable) -> None:
        self.detector.remove(peer)

    def __contains__(self, peer: Hashable) -> bool:
        return peer in self.detector

    # ------------------------------------------------------------------ lost addresses
    def declare_lost(self, address: str, now: float) -> None:
        if address:
            self.lost[address] = now
            self._probed[address] = now

    def back(self, address: str) -> None:
        """A node at ``address`` answered again (a handshake, or it is in the member list again)."""
        self.lost.pop(address, None)
        self._probed.pop(address, None)

    def is_lost(self, address: str) -> bool:
        return address in self.lost

    # ------------------------------------------------------------------ the tick
    def tick(self, now: float, heard: Iterable[tuple[Hashable, float]]) -> Tick:
        """``heard``: (peer, when it was last heard) for every peer being watched."""
        out = Tick(stalled=now - self._last_tick > self.stall)
        self._last_tick = now
        fd = self.detector
        for peer, when in heard:
            fd.heard(peer, now if out.stalled else when)
        out.heartbeat = fd.due(now)
        out.lost = fd.tick(now)
        for address, when in self.lost.items():
            if now - self._probed.get(address, when) >= probe_wait(now - when):
                self._probed[address] = now
                out.probe.append(address)
        return out
