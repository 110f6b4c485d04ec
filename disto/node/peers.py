"""The peer table of a node: the listener, one channel per peer (dialled lazily, accepted from anyone who then
passes the handshake), TLS on both, and the orderly goodbye when the node stops."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from typing import Any

from ..errors import AuthenticationError, NodeLostError
from ..ids import format_address, host_id, parse_address
from ..memory import BufferPool
from ..transport import Channel, ChannelOwner, TlsFiles
from ..wire import Connection, Goodbye, Identity
from .config import Here, NodeConfig

log = logging.getLogger("disto.node")
GOODBYE_FLUSH_TIMEOUT = 1.0  # how long a stopping node lets its connections write what they hold


def _nodelay(sock: Any) -> None:
    # (fileno -1: the connection closed already; uvloop keeps the socket object it handed out, emptied)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) and sock.fileno() >= 0:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Peers:
    def __init__(self, here: Here, token: bytes, config: NodeConfig, owner: ChannelOwner) -> None:
        self._here = here
        self._token = token
        self._config = config
        self._owner = owner
        tls = TlsFiles.from_parts(config.tls_cert, config.tls_key, config.tls_ca, config.tls_check_hostname)
        self._tls_server = tls.server_context() if tls else None
        self._tls_client = tls.client_context() if tls else None
        self._pool = BufferPool(max_free_bytes=config.pool_bytes)
        self.server: asyncio.AbstractServer | None = None
        self.identity = Identity(here.node_id)
        self.by_address: dict[str, Channel] = {}  # peer listen address -> its channel
        self.all: set[Channel] = set()
        self._all_gone: asyncio.Event | None = None
        self._dials: set[asyncio.Task] = set()

    @property
    def pool(self) -> BufferPool:
        return self._pool

    async def listen(self, address: str | None) -> tuple[str, int] | None:
        """Bind the listener (None: a node that only dials); this node's identity follows. Returns the bound
        (host, port)."""
        bound = None
        if address is not None:
            host, port = parse_address(address)
            tls = {"ssl": self._tls_server, "ssl_handshake_timeout": self._config.handshake_timeout} \
                if self._tls_server else {}
            loop = asyncio.get_running_loop()
            self.server = await loop.create_server(self._accept, host, port, reuse_address=True, **tls)
            bound = (host, self.server.sockets[0].getsockname()[1])
            self._here.address = format_address(*bound)
            for s in self.server.sockets:
                _nodelay(s)
        else:
            self._here.address = f"client:{self._here.node_id}"  # not dialable; its actors work only locally
        self.identity = Identity(self._here.node_id, self._here.address if self.server else "", host_id(),
                                 os.getpid())
        return bound

    # ------------------------------------------------------------------ channels
    def _new_channel(self, dialer: bool, address: str) -> Channel:
        cfg = self._config
        conn = Connection(dialer=dialer, token=self._token, identity=self.identity, max_body=cfg.max_body,
                          max_frame=cfg.max_frame, alloc=self._pool.alloc)
        ch = Channel(self._owner, conn, address=address, max_queued=cfg.max_queued)
        self.all.add(ch)
        return ch

    def _accept(self) -> Channel:
        ch = self._new_channel(dialer=False, address="")
        ch.start_handshake_timer(self._config.handshake_timeout)
        return ch

    def channel_to(self, address: str) -> Channel:
        """The channel to the node listening at ``address``, dialled now if there is none."""
        ch = self.by_address.get(address)
        if ch is not None and not ch.closed:
            return ch
        ch = self._new_channel(dialer=True, address=address)
        self.by_address[address] = ch
        task = asyncio.get_running_loop().create_task(self._dial(ch, address))
        self._dials.add(task)
        task.add_done_callback(self._dials.discard)
        return ch

    async def _dial(self, ch: Channel, address: str) -> None:
        try:
            host, port = parse_address(address)
            tls: dict[str, Any] = {}
            if self._tls_client is not None:
                tls = {"ssl": self._tls_client, "server_hostname": host,
                       "ssl_handshake_timeout": self._config.handshake_timeout}
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.create_connection(lambda: ch, host, port, **tls),
                                   self._config.connect_timeout)
        except (OSError, ValueError, asyncio.TimeoutError) as e:
            ch.closed = True
            if isinstance(e, ssl.SSLError) or (isinstance(e, ConnectionResetError) and self._tls_client is not None):
                # a refused certificate either way shows up here (the listener may just hang up on us)
                ch.lost_reason = AuthenticationError(f"TLS handshake with {address} failed: {e}")
            else:
                ch.lost_reason = NodeLostError(f"cannot reach {address}: {type(e).__name__}: {e}", node=address)
            self._owner.on_lost(ch, ch.lost_reason)
            return
        _nodelay(ch.transport.get_extra_info("socket") if ch.transport else None)
        ch.start_handshake_timer(self._config.handshake_timeout)

    async def wait_ready(self, address: str) -> Channel:
        """Connect to ``address`` (if not yet) and wait until the handshake is done."""
        ch = self.channel_to(address)
        if not ch.ready:
            w = asyncio.get_running_loop().create_future()
            ch.ready_waiters.append(w)
            await w
        return ch

    def on_ready(self, ch: Channel) -> None:
        """The handshake is done: note whether the peer shares our host, and learn its listen address."""
        peer = ch.conn.peer
        assert peer is not None
        ch.same_host = bool(peer.host_id) and peer.host_id == self.identity.host_id
        if not ch.address and peer.listen:
            ch.address = peer.listen
            existing = self.by_address.get(peer.listen)
            if existing is None or existing.closed:
                self.by_address[peer.listen] = ch

    def on_goodbye(self, ch: Channel, ev: Goodbye) -> None:
        ch.said_goodbye = True
        ch.lost_reason = NodeLostError(f"node {ch.peer_name()} left: {ev.body.reason or 'goodbye'}",
                                       node=ch.address)
        ch.close()

    def forget(self, ch: Channel) -> None:
        self.all.discard(ch)
        if self.by_address.get(ch.address) is ch:
            del self.by_address[ch.address]
        if self._all_gone is not None and not self.all:
            self._all_gone.set()

    def ready(self) -> list[Channel]:
        return [ch for ch in self.all if ch.ready]

    # ------------------------------------------------------------------ stopping
    async def close(self, reason: str) -> None:
        """Stop listening, say goodbye to every peer, let the transports flush (bounded), then abort the rest."""
        if self.server is not None:
            self.server.close()
        self._all_gone = asyncio.Event()
        for ch in list(self.all):
            ch.goodbye(reason)
        if self.all:
            try:
                await asyncio.wait_for(self._all_gone.wait(), GOODBYE_FLUSH_TIMEOUT)
            except asyncio.TimeoutError:
                pass
        for ch in list(self.all):
            ch.abort()
        for task in list(self._dials):
            task.cancel()
