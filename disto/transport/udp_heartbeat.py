"""Heartbeats over UDP, from a thread: a node whose event loop is busy (a long method, a slow import) still
proves it is alive, while a frozen (SIGSTOP), killed or cut-off node does not.

The UDP socket has the node's TCP address (host and port number). Each datagram is
``b"dh1" | node id (16 bytes) | seq (8) | HMAC-SHA256(token, all that)[:16]``; a receiver keeps a datagram only if
the MAC is right and its sequence number is newer than the last one from that node (no replays). Where UDP does
not get through, nothing breaks: the heartbeat frames on the TCP connections still count.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import struct
import threading
import time

log = logging.getLogger("disto.heartbeat")

_PREFIX = b"dh1"
_HDR = struct.Struct("!3s16sQ")
_MAC_LEN = 16
PACKET_SIZE = _HDR.size + _MAC_LEN


class UdpHeartbeat:
    def __init__(self, token: bytes, node_id: str, host: str, port: int, interval: float = 0.25) -> None:
        self._token = token
        self._id = node_id.encode()[:16].ljust(16, b"\0")
        self.interval = interval
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._sock.settimeout(interval)
        self.peers: dict[str, tuple[str, int]] = {}  # node id -> (host, port); replaced whole by the loop thread
        self.heard: dict[str, float] = {}  # node id -> time.monotonic() of its last valid heartbeat
        self._seq = 0
        self._last_seq: dict[bytes, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="disto-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:  # wake the thread from recvfrom at once
            self._sock.sendto(b"x", self._sock.getsockname())
        except OSError:
            pass
        self._thread.join(timeout=2 * self.interval + 1)
        self._sock.close()

    def set_peers(self, peers: dict[str, tuple[str, int]]) -> None:
        self.peers = dict(peers)  # one assignment: the thread always sees a whole dict

    def _packet(self) -> bytes:
        self._seq += 1
        body = _HDR.pack(_PREFIX, self._id, self._seq)
        return body + hmac.new(self._token, body, hashlib.sha256).digest()[:_MAC_LEN]

    def _loop(self) -> None:
        next_send = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_send:
                next_send = now + self.interval
                packet = self._packet()
                for addr in list(self.peers.values()):
                    try:
                        self._sock.sendto(packet, addr)
                    except OSError:
                        pass  # unreachable now; the TCP side decides
            try:
                self._sock.settimeout(max(0.01, next_send - time.monotonic()))
                data, _ = self._sock.recvfrom(64)
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            self._receive(data)

    def _receive(self, data: bytes) -> None:
        if len(data) != PACKET_SIZE:
            return
        body, mac = data[:_HDR.size], data[_HDR.size:]
        if not hmac.compare_digest(hmac.new(self._token, body, hashlib.sha256).digest()[:_MAC_LEN], mac):
            return
        prefix, node, seq = _HDR.unpack(body)
        if prefix != _PREFIX or seq <= self._last_seq.get(node, 0):
            return
        self._last_seq[node] = seq
        self.heard[node.rstrip(b"\0").decode(errors="replace")] = time.monotonic()
