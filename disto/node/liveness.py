"""A node's liveness loop: feeds the pure :class:`~disto.liveness.LivenessMonitor` with what each channel and the
UDP heartbeat thread heard, then does what it decides: heartbeats, declaring peers lost, probing lost addresses.

The clock is injectable (``clock``), and :meth:`Liveness.tick` is one round with no sleeping of its own, so tests
drive it with a fake clock; the loop task just calls it every ``period`` seconds.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from ..errors import NodeLostError
from ..ids import parse_address
from ..liveness import LivenessMonitor, Tick
from ..transport import Channel, UdpHeartbeat
from ..wire import Kind, T
from .config import NodeConfig
from .peers import Peers

log = logging.getLogger("disto.node")


class Liveness:
    def __init__(self, config: NodeConfig, peers: Peers, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._peers = peers
        self.clock = clock
        self.monitor = LivenessMonitor(config.failure_timeout, config.heartbeat_interval, clock())
        self.period = min(0.1, config.heartbeat_interval / 2)  # detection lags the timeout by at most this
        self.udp: UdpHeartbeat | None = None

    # ------------------------------------------------------------------ the UDP thread
    def start_udp(self, token: bytes, node_id: str, host: str, port: int) -> None:
        try:
            self.udp = UdpHeartbeat(token, node_id, host, port, interval=self._config.heartbeat_interval / 2)
            self.udp.start()
        except OSError as e:
            log.info("no UDP heartbeats on %s:%d (%s); TCP heartbeats only", host, port, e)
            self.udp = None

    def _update_udp_peers(self) -> None:
        if self.udp is None:
            return
        peers = {}
        for ch in self._peers.ready():
            peer = ch.conn.peer
            if peer is not None and peer.listen:
                try:
                    peers[peer.node_id] = parse_address(peer.listen)
                except ValueError:
                    pass
        self.udp.set_peers(peers)

    def stop(self) -> None:
        if self.udp is not None:
            self.udp.stop()

    # ------------------------------------------------------------------ peers
    def add(self, ch: Channel) -> None:
        self.monitor.add(ch, self.clock())
        self._update_udp_peers()
        peer = ch.conn.peer
        if peer is not None and peer.listen:
            self.monitor.back(peer.listen)  # it answered: it is not lost any more

    def remove(self, ch: Channel) -> None:
        self.monitor.remove(ch)
        self._update_udp_peers()

    def is_lost(self, address: str) -> bool:
        return bool(self.monitor.lost) and self.monitor.is_lost(address)

    # ------------------------------------------------------------------ one round
    def tick(self) -> Tick:
        now = self.clock()
        udp = self.udp.heard if self.udp is not None else {}
        heard = []
        for ch in list(self._peers.all):
            if ch.ready and ch in self.monitor:
                peer = ch.conn.peer
                heard.append((ch, max(ch.last_heard, udp.get(peer.node_id, 0.0) if peer is not None else 0.0)))
        out = self.monitor.tick(now, heard)
        for ch in out.heartbeat:
            if ch.can_send():
                ch.send(Kind.HEARTBEAT, T.Heartbeat(seq=0, sent_at=time.time()))
        for ch in out.lost:
            self._declare_lost(ch, now)
        for address in out.probe:
            ch = self._peers.by_address.get(address)
            if ch is None or ch.closed:
                self._peers.channel_to(address)  # no calls ride on it; a failure just closes it
        return out

    def _declare_lost(self, ch: Channel, now: float) -> None:
        """Nothing heard from this peer for too long: fail everything pending on it now, and new calls to its
        actors at once until it answers again."""
        silence = self._config.failure_timeout
        name = ch.peer_name()
        log.warning("declaring %s lost: silent for %.1f s", name, silence)
        ch.lost_reason = NodeLostError(f"node {name} is not responding (silent for {silence:.1f} s: frozen, "
                                       f"partitioned or overloaded)", node=ch.address)
        self.monitor.declare_lost(ch.address, now)
        ch.abort()

    async def run(self, also: Callable[[float], None] | None = None) -> None:
        """Tick every ``period`` seconds until cancelled; ``also(now)`` runs after each tick (other chores)."""
        while True:
            await asyncio.sleep(self.period)
            self.tick()
            if also is not None:
                also(self.clock())
