"""A Node: one process's disto runtime. It owns the listener, one connection per peer, the actor table and the
futures of calls in flight.

Call path (caller side): pickle the arguments, frame a CALL on the peer's channel if the window has room (else
queue it), keep the future in ``channel.pending`` until a REPLY or FAILURE with its call id arrives. A call to an
actor on this node skips the wire: the arguments are passed as they are.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import pickle
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from ._errors import (ActorDeadError, ActorNotFoundError, AuthenticationError, ClosedError, DistoError,
                      NodeLostError, SerializationError, make_remote_error, original_class)
from ._ids import format_address, host_id, new_node_id, parse_address
from ._mailbox import CallItem, Mailbox, describe_exception
from .actor import Actor, ActorRef, _current_node, _default_node, public_methods
from .futures import Future
from ._heartbeat import UdpHeartbeat
from ._tls import TlsFiles
from .membership import FailureDetector
from ._buffers import INLINE_PAYLOAD_MAX, BufferRouter
from .serialization import BufferPool, dumps, janitor, loads
from .transport import Channel
from .wire import Connection, FailureKind, Identity, Kind, Message, T

log = logging.getLogger("disto.node")

NODE_SERVICE_ID = 0
REGISTRY_ID = 1
FIRST_USER_ACTOR_ID = 16
MIN_TOKEN_BYTES = 16
_pickle_dumps = pickle.dumps
_SCALAR_TYPES = frozenset({int, float, str, bool, type(None)})


def _failed(fut: Future, exc: BaseException, oneway: bool) -> Future:
    fut.set_exception(exc)
    if oneway:
        fut.exception()  # a one-way call's future is usually ignored: don't warn that nobody read it
    return fut


def _scalars(args: tuple) -> bool:
    for a in args:
        if type(a) not in _SCALAR_TYPES:
            return False
    return True


@dataclass
class NodeConfig:
    """Tunables. The defaults suit a research cluster on a LAN or one host."""

    max_inflight: int = 1024        # calls awaiting a reply per connection; more wait on the caller's side
    max_queued: int = 4096          # calls received per connection and not finished before we stop reading
    max_body: int = 16 << 20        # largest Thrift message body
    max_frame: int = 16 << 30       # largest out-of-band payload of one frame
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    pool_bytes: int = 1 << 30       # free receive blocks kept for reuse
    transfer: str = "auto"          # "auto", "tcp" (always bytes on the socket) or "shm" (see disto.transfer)
    shm_min: int = 1 << 16          # CPU buffers this big go through shared memory to peers on this host
    shm_pool_bytes: int = 2 << 30   # free shared-memory segments kept for reuse
    heartbeat_interval: float = 0.5  # each side of a connection sends a heartbeat this often
    failure_timeout: float = 2.5    # a peer silent this long is declared lost (frozen, cut off, or overloaded)
    # mutual TLS on every TCP connection: this node's certificate and key, and the cluster CA that signs every
    # node's (all three, or none). With tls_check_hostname a node's certificate must name its listen address.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_check_hostname: bool = True


_transfer_mode: contextvars.ContextVar[str | None] = contextvars.ContextVar("disto_transfer", default=None)


@contextlib.contextmanager
def transfer(mode: str) -> Any:
    """Force how buffers of the calls made inside the block travel: "tcp" (bytes on the socket), "shm" (shared
    memory to peers on this host, whatever the size) or "auto" (the placement policy)."""
    if mode not in ("auto", "tcp", "shm"):
        raise ValueError(f"transfer mode must be 'auto', 'tcp' or 'shm', not {mode!r}")
    token = _transfer_mode.set(mode)
    try:
        yield
    finally:
        _transfer_mode.reset(token)


def normalize_token(token: str | bytes | None) -> bytes:
    if token is None:
        raise AuthenticationError("a cluster token is required (argument, DISTO_TOKEN or a token file)")
    raw = token.encode() if isinstance(token, str) else bytes(token)
    if len(raw) < MIN_TOKEN_BYTES:
        raise AuthenticationError(f"the cluster token must be at least {MIN_TOKEN_BYTES} bytes")
    return raw


class _Cell:
    __slots__ = ("instance", "mailbox", "ref")

    def __init__(self, instance: Any, mailbox: Mailbox, ref: ActorRef) -> None:
        self.instance = instance
        self.mailbox = mailbox
        self.ref = ref


def _process_stats() -> dict[str, int]:
    """Resident memory, open descriptors and asyncio tasks of this process (what a leak would grow)."""
    out = {"tasks": len(asyncio.all_tasks()) if _running_loop() else 0}
    try:
        with open("/proc/self/statm") as fh:
            out["rss_bytes"] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        out["open_fds"] = len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux
        pass
    return out


def _running_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _lookup_class(type_name: str | None) -> type[BaseException] | None:
    """Find an exception class by its printed name among already-imported modules (never imports)."""
    if not type_name:
        return None
    mod, _, qual = type_name.rpartition(".")
    module = sys.modules.get(mod or "builtins")
    obj: Any = module
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None


class Node:
    """One disto node. ``async with Node(token) as node`` starts it; ``listen=None`` makes a node that only dials.

    ``seed`` is the address of the node that keeps the member list and the name registry; a node without a seed
    keeps its own (it is a seed). ``role`` is "worker" (gets actors from ``cluster.spawn``), "driver" (a program
    that joined to use the cluster) or "client" (does not join at all: command-line tools).
    """

    def __init__(self, token: str | bytes | None, *, listen: str | None = "127.0.0.1:0", seed: str | None = None,
                 role: str = "worker", config: NodeConfig | None = None) -> None:
        self._token = normalize_token(token)
        self.config = config or NodeConfig()
        cfg = self.config
        tls = TlsFiles.from_parts(cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.tls_check_hostname)
        self._tls_server = tls.server_context() if tls else None
        self._tls_client = tls.client_context() if tls else None
        self.node_id = new_node_id()
        self.role = role
        self._listen = listen
        self.seed = seed
        self.address = ""
        self.closed = False
        self._closing = False
        self._started = False
        self._server: asyncio.AbstractServer | None = None
        self._channels: dict[str, Channel] = {}  # peer listen address -> channel
        self._all_channels: set[Channel] = set()
        self._actors: dict[int, _Cell] = {}
        self._next_actor_id = FIRST_USER_ACTOR_ID
        self._pool = BufferPool(max_free_bytes=self.config.pool_bytes)
        self._bg: set[asyncio.Task] = set()
        self._peer_lost_callbacks: list[Callable[[str, str], None]] = []
        self._stopped = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.registry: ActorRef | None = None
        self.buffers: BufferRouter | None = None  # shared memory to same-host peers, once started
        self._fd = FailureDetector(self.config.failure_timeout, self.config.heartbeat_interval)
        self._lost: dict[str, float] = {}  # address -> when a node there was declared lost by the detector
        self._udp: UdpHeartbeat | None = None
        self._probed: dict[str, float] = {}  # lost address -> when we last tried to reach it
        self.members: list[dict[str, Any]] = []
        self._rejoining = False

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> "Node":
        from ._system import NodeService, Registry

        if self._started:
            raise DistoError("node already started")
        self._started = True
        self.loop = asyncio.get_running_loop()
        if self._listen is not None:
            host, port = parse_address(self._listen)
            tls = {"ssl": self._tls_server, "ssl_handshake_timeout": self.config.handshake_timeout} \
                if self._tls_server else {}
            self._server = await self.loop.create_server(self._accept, host, port, reuse_address=True, **tls)
            sock = self._server.sockets[0]
            bound = sock.getsockname()
            self.address = format_address(host, bound[1])
            for s in self._server.sockets:
                if s.family in (socket.AF_INET, socket.AF_INET6):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            self.address = f"client:{self.node_id}"  # not dialable; refs to its actors work only locally
        self.identity = Identity(self.node_id, self.address if self._server else "", host_id(), os.getpid())
        if self._server is not None:
            self._start_udp(host, bound[1])
        janitor()
        cfg = self.config
        self.buffers = BufferRouter(self.node_id, transfer=cfg.transfer, shm_min=cfg.shm_min,
                                    shm_pool_bytes=cfg.shm_pool_bytes, loop=lambda: self.loop)
        self._spawn_bg(self._housekeeping())
        _default_node.append(self)
        self._install_system_actor(NodeService(self), NODE_SERVICE_ID)
        if self.seed is None:
            self._install_system_actor(Registry(self), REGISTRY_ID)
            self.registry = ActorRef("", self.address, REGISTRY_ID, "Registry", None, self)
        else:
            self.registry = ActorRef("", self.seed, REGISTRY_ID, "Registry", None, self)
        if self.role == "client":
            return self  # a command-line client talks to the cluster without becoming a member
        try:
            self._on_members(await self.registry.join(self.info_for_registry()))
        except BaseException:
            await self.stop()
            raise
        return self

    def info_for_registry(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "address": self.address, "role": self.role, "pid": os.getpid(),
                "host_id": self.identity.host_id}

    async def __aenter__(self) -> "Node":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self, reason: str = "node stopping") -> None:
        """Stop every actor (their callers get ActorDeadError), say goodbye to peers, close the listener."""
        if self._closing:
            await self._stopped.wait()
            return
        self._closing = True
        for actor_id in [a for a in self._actors if a >= FIRST_USER_ACTOR_ID]:
            await self.stop_actor(actor_id)
        for cell in list(self._actors.values()):
            cell.mailbox.stop()
        self._actors.clear()
        if self._server is not None:
            self._server.close()
        for ch in list(self._all_channels):
            ch.goodbye(reason)
        # transports flush what they hold before closing; wait (bounded) for them to finish
        for _ in range(100):
            if not self._all_channels:
                break
            await asyncio.sleep(0.01)
        for ch in list(self._all_channels):
            ch.abort()
        for t in list(self._bg):
            t.cancel()
        if self.buffers is not None:
            self.buffers.close()
        if self._udp is not None:
            self._udp.stop()
        janitor()
        self.closed = True
        if self in _default_node:
            _default_node.remove(self)
        self._stopped.set()

    async def _housekeeping(self) -> None:
        """Periodic chores: heartbeats and failure detection; let torch free CUDA memory whose IPC consumers are
        done with it."""
        from .serialization import pickler

        period = min(0.1, self.config.heartbeat_interval / 2)  # detection lags the timeout by at most this
        last_collect = last_tick = time.monotonic()
        stall = max(1.0, self.config.failure_timeout / 2)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            fd = self._fd
            stalled = now - last_tick > stall
            last_tick = now
            udp = self._udp.heard if self._udp is not None else {}
            for ch in list(self._all_channels):
                if ch.ready and ch in fd:
                    peer = ch.conn.peer
                    heard = max(ch.last_heard, udp.get(peer.node_id, 0.0) if peer is not None else 0.0)
                    # our own loop was blocked: what the peers sent is still unread, so the silence is ours
                    fd.heard(ch, now if stalled else heard)
            for ch in fd.due(now):
                if ch.can_send():
                    ch.send(Kind.HEARTBEAT, T.Heartbeat(seq=0, sent_at=time.time()))
            for ch in fd.tick(now):
                self._declare_lost(ch, now)
            if self._lost:
                self._probe_lost(now)
            if pickler.CUDA_IPC_USED and now - last_collect >= 1.0:
                last_collect = now
                torch = sys.modules.get("torch")
                if torch is not None:
                    torch.cuda.ipc_collect()

    def _declare_lost(self, ch: Channel, now: float) -> None:
        """The failure detector heard nothing from this peer for too long: fail everything pending on it now,
        and fail new calls to its actors at once until it joins again."""
        silence = self.config.failure_timeout
        name = ch.peer_name()
        log.warning("declaring %s lost: silent for %.1f s", name, silence)
        ch.lost_reason = NodeLostError(f"node {name} is not responding (silent for {silence:.1f} s: frozen, "
                                       f"partitioned or overloaded)", node=ch.address)
        if ch.address:
            self._lost[ch.address] = now
            self._probed[ch.address] = now
        ch.abort()

    def _probe_lost(self, now: float) -> None:
        """Try to reach nodes declared lost again (with backoff): once one answers the handshake, on_ready
        clears it, whatever order the membership news came in."""
        for address, when in list(self._lost.items()):
            wait = min(10.0, 1.0 + (now - when) / 4)
            if now - self._probed.get(address, when) < wait:
                continue
            self._probed[address] = now
            ch = self._channels.get(address)
            if ch is None or ch.closed:
                self._channel_to(address)  # no calls ride on it; a failure just closes it

    def _start_udp(self, host: str, port: int) -> None:
        try:
            self._udp = UdpHeartbeat(self._token, self.node_id, host, port,
                                     interval=self.config.heartbeat_interval / 2)
            self._udp.start()
        except OSError as e:
            log.info("no UDP heartbeats on %s:%d (%s); TCP heartbeats only", host, port, e)
            self._udp = None

    def _update_udp_peers(self) -> None:
        if self._udp is None:
            return
        peers = {}
        for ch in self._all_channels:
            peer = ch.conn.peer
            if ch.ready and peer is not None and peer.listen:
                try:
                    peers[peer.node_id] = parse_address(peer.listen)
                except ValueError:
                    pass
        self._udp.set_peers(peers)

    def _on_members(self, members: list[dict[str, Any]]) -> None:
        """The registry's member list changed: nodes that joined again are reachable again."""
        self.members = members
        for m in members:
            self._lost.pop(m.get("address", ""), None)

    def _spawn_bg(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    # ---------------------------------------------------------------- actors
    def _install_system_actor(self, instance: Actor, actor_id: int) -> None:
        ref = ActorRef(self.node_id, self.address, actor_id, type(instance).__name__, None, self)
        instance._disto_ref = ref
        self._actors[actor_id] = _Cell(instance, self._mailbox(instance, ref), ref)

    def _mailbox(self, instance: Any, ref: ActorRef) -> Mailbox:
        cls = type(instance)
        label = ref._describe()
        return Mailbox(instance, label, getattr(cls, "max_concurrency", 1), self._reply,
                       lambda item, exc, tb: self._fail(item, exc, tb, label), public_methods(cls))

    async def spawn_local(self, cls: type, args: tuple = (), kwargs: dict | None = None,
                          name: str | None = None) -> ActorRef:
        """Create an actor of class ``cls`` on this node. Its constructor and ``on_start`` run here."""
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            raise TypeError(f"spawn needs a subclass of disto.Actor, got {cls!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"an actor name must be a non-empty string, got {name!r}")
        if self._closing:
            raise ClosedError("node is stopping")
        actor_id = self._next_actor_id
        self._next_actor_id += 1
        ref = ActorRef(self.node_id, self.address, actor_id, cls.__qualname__, name, self)
        instance = cls.__new__(cls)
        instance._disto_ref = ref
        token = _current_node.set(self)
        try:
            instance.__init__(*args, **(kwargs or {}))
            on_start = getattr(instance, "on_start", None)
            if on_start is not None:
                r = on_start()
                if asyncio.iscoroutine(r):
                    await r
        finally:
            _current_node.reset(token)
        cell = _Cell(instance, self._mailbox(instance, ref), ref)
        self._actors[actor_id] = cell
        if name is not None:
            assert self.registry is not None
            try:
                await self.registry.register(name, ref)
            except BaseException:
                self._actors.pop(actor_id, None)
                cell.mailbox.stop()
                raise
        return ref

    async def stop_actor(self, actor_id: int) -> bool:
        """Stop one actor: queued calls fail with ActorDeadError, running ones are cancelled, then ``on_stop``."""
        if actor_id < FIRST_USER_ACTOR_ID:
            raise ValueError("system actors cannot be stopped")
        cell = self._actors.pop(actor_id, None)
        if cell is None:
            return False
        cell.mailbox.stop()
        on_stop = getattr(cell.instance, "on_stop", None)
        if on_stop is not None:
            try:
                r = on_stop()
                if asyncio.iscoroutine(r):
                    await r
            except Exception:
                log.exception("on_stop of %s raised", cell.mailbox.label)
        if self.registry is not None and not self.closed and not self._closing:
            try:  # a stopped actor is not restarted, and its name is free again
                self.registry.unsupervise.tell(self.node_id, actor_id)
                if cell.ref.actor_name:
                    await self.registry.unregister(cell.ref.actor_name, cell.ref)
            except DistoError as e:
                log.debug("could not unregister %s: %s", cell.ref.actor_name, e)
        return True

    def actors(self) -> list[ActorRef]:
        return [c.ref for a, c in self._actors.items() if a >= FIRST_USER_ACTOR_ID]

    def _missing(self, actor_id: int, node_id: str | None) -> DistoError:
        if node_id and node_id != self.node_id:
            return ActorDeadError(f"actor #{actor_id} lived on a node that has since restarted",
                                  actor=f"#{actor_id}", node=self.address)
        if FIRST_USER_ACTOR_ID <= actor_id < self._next_actor_id:
            return ActorDeadError(f"actor #{actor_id} was stopped", actor=f"#{actor_id}", node=self.address)
        return ActorNotFoundError(f"no actor #{actor_id} on {self.address}", actor=f"#{actor_id}",
                                  node=self.address)

    # ---------------------------------------------------------------- calling
    def call(self, ref: ActorRef, method: str, args: tuple, kwargs: dict, oneway: bool = False) -> Future:
        fut: Future = Future(loop=self.loop)
        if ref.node_address == self.address:
            self._call_local(ref, method, args, kwargs, fut, oneway)
            return fut
        if self._closing:
            return _failed(fut, ClosedError("this node is stopped"), oneway)
        if self._lost and ref.node_address in self._lost and ref.actor_id >= FIRST_USER_ACTOR_ID:
            return _failed(fut, ActorDeadError(
                f"the node of {ref._describe()} ({ref.node_address}) was declared lost and has not joined again",
                actor=ref._describe(), node=ref.node_address), oneway)
        ch = self._channel_to(ref.node_address)
        call = (ref, method, args, kwargs, _transfer_mode.get())
        if not ch.waiting and ch.call_capacity():
            self._send_call(ch, call, fut, oneway)
        else:
            ch.waiting.append((call, fut, oneway))
        return fut

    def _send_call(self, ch: Channel, call: tuple, fut: Future, oneway: bool) -> None:
        ref, method, args, kwargs, mode = call
        if not kwargs and _scalars(args):
            stream, bufs, oob = _pickle_dumps((args, kwargs), 5), (), False
        else:
            try:
                stream, bufs, oob = self.buffers.serialize(ch, (args, kwargs), mode)
            except SerializationError as e:
                _failed(fut, e, oneway)
                return
        if oob:
            stream = None
        node_id = ref.node_id or None
        if oneway:
            if ch.can_send():
                ch.write(ch.conn.send_call(0, ref.actor_id, method, stream, bufs, oob, node_id))
            fut.set_result(None)
            return
        cid = ch.next_call_id
        ch.next_call_id = cid + 1
        ch.pending[cid] = fut
        fut._on_cancel = ch.send_cancel
        fut._cancel_arg = cid
        if ch.can_send():
            ch.write(ch.conn.send_call(cid, ref.actor_id, method, stream, bufs, oob, node_id))

    def drain_waiting(self, ch: Channel) -> None:
        waiting = ch.waiting
        while waiting and ch.call_capacity():
            call, fut, oneway = waiting.popleft()
            if not fut.done():  # skip calls cancelled while they waited
                self._send_call(ch, call, fut, oneway)

    def _call_local(self, ref: ActorRef, method: str, args: tuple, kwargs: dict, fut: Future, oneway: bool) -> None:
        cell = self._actors.get(ref.actor_id)
        if cell is None or (ref.node_id and ref.node_id != self.node_id):
            _failed(fut, self._missing(ref.actor_id, ref.node_id), oneway)
            return
        item = CallItem(None, 0, method, args, kwargs, None if oneway else fut)
        if oneway:
            fut.set_result(None)
        else:
            mailbox = cell.mailbox
            fut._on_cancel = lambda: mailbox.cancel(lambda it: it is item)
        token = _current_node.set(self)
        try:
            cell.mailbox.post(item)
        finally:
            _current_node.reset(token)

    # ---------------------------------------------------------------- replies from our actors
    def _reply(self, item: CallItem, value: Any) -> None:
        ch = item.ch
        if ch is None:
            fut = item.fut
            if fut is not None and not fut.done():
                fut.set_result(value)
            return
        ch.call_finished()
        if item.call_id == 0 or not ch.can_send():
            return
        if type(value) in _SCALAR_TYPES:
            ch.write(ch.conn.send_reply(item.call_id, _pickle_dumps(value, 5)))
            return
        try:
            stream, bufs, oob = self.buffers.serialize(ch, value, None)
        except SerializationError as e:
            self._send_failure(ch, item.call_id, FailureKind.SERIALIZATION, e, "", None, item.method)
            return
        ch.write(ch.conn.send_reply(item.call_id, None if oob else stream, bufs, oob))

    def _fail(self, item: CallItem, exc: BaseException, tb: str, label: str) -> None:
        runtime = not tb and isinstance(exc, (DistoError, asyncio.CancelledError))
        ch = item.ch
        if ch is None:
            fut = item.fut
            if fut is None:
                if not isinstance(exc, asyncio.CancelledError):
                    log.warning("one-way call %s.%s failed: %s", label, item.method, exc, exc_info=bool(tb))
                return
            if fut.done():
                return
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()
            elif runtime:
                fut.set_exception(exc)
            else:
                fut.set_exception(make_remote_error(original_class(exc), describe_exception(exc), str(exc), tb,
                                                    label, item.method, self.address, exc))
            return
        ch.call_finished()
        if item.call_id == 0:
            if not isinstance(exc, asyncio.CancelledError):
                log.warning("one-way call %s.%s from %s failed: %s\n%s", label, item.method, ch.peer_name(),
                            exc, tb)
            return
        if isinstance(exc, asyncio.CancelledError):
            kind = FailureKind.CANCELLED
        elif runtime and isinstance(exc, ActorDeadError):
            kind = FailureKind.ACTOR_DEAD
        elif runtime and isinstance(exc, ActorNotFoundError):
            kind = FailureKind.ACTOR_NOT_FOUND
        else:
            kind = FailureKind.REMOTE
        self._send_failure(ch, item.call_id, kind, exc, tb, label, item.method)

    def _send_failure(self, ch: Channel, call_id: int, kind: int, exc: BaseException, tb: str,
                      actor: str | None, method: str | None) -> None:
        pickled = None
        if kind == FailureKind.REMOTE:
            try:
                stream, bufs = dumps(exc)
                if not bufs and len(stream) <= INLINE_PAYLOAD_MAX:
                    pickled = stream
            except SerializationError:
                pass
        msg = str(exc) if not isinstance(exc, ActorNotFoundError) else exc.args[0] if exc.args else ""
        ch.send(Kind.FAILURE, T.Failure(call_id=call_id, kind=kind, type_name=describe_exception(exc),
                                        message=msg, traceback=tb, actor=actor, method=method,
                                        node=self.address, error=pickled))

    # ---------------------------------------------------------------- channel owner
    def _accept(self) -> Channel:
        ch = self._new_channel(dialer=False, address="")
        ch.start_handshake_timer(self.config.handshake_timeout)
        return ch

    def _new_channel(self, dialer: bool, address: str) -> Channel:
        cfg = self.config
        conn = Connection(dialer=dialer, token=self._token, identity=self.identity, max_body=cfg.max_body,
                          max_frame=cfg.max_frame, alloc=self._pool.alloc)
        ch = Channel(self, conn, address=address, max_inflight=cfg.max_inflight, max_queued=cfg.max_queued)
        self._all_channels.add(ch)
        return ch

    def _channel_to(self, address: str) -> Channel:
        ch = self._channels.get(address)
        if ch is not None and not ch.closed:
            return ch
        ch = self._new_channel(dialer=True, address=address)
        self._channels[address] = ch
        self._spawn_bg(self._dial(ch, address))
        return ch

    async def _dial(self, ch: Channel, address: str) -> None:
        assert self.loop is not None
        try:
            host, port = parse_address(address)
            tls: dict[str, Any] = {}
            if self._tls_client is not None:
                tls = {"ssl": self._tls_client, "server_hostname": host,
                       "ssl_handshake_timeout": self.config.handshake_timeout}
            await asyncio.wait_for(self.loop.create_connection(lambda: ch, host, port, **tls),
                                   self.config.connect_timeout)
        except (OSError, ValueError, asyncio.TimeoutError) as e:
            ch.closed = True
            if isinstance(e, ssl.SSLError) or (isinstance(e, ConnectionResetError) and self._tls_client is not None):
                # a refused certificate either way shows up here (the listener may just hang up on us)
                ch.lost_reason = AuthenticationError(f"TLS handshake with {address} failed: {e}")
            else:
                ch.lost_reason = NodeLostError(f"cannot reach {address}: {type(e).__name__}: {e}", node=address)
            self.on_lost(ch, ch.lost_reason)
            return
        sock = ch.transport.get_extra_info("socket") if ch.transport else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ch.start_handshake_timer(self.config.handshake_timeout)

    async def wait_ready(self, address: str) -> Channel:
        """Connect to ``address`` (if not yet) and wait until the handshake is done."""
        ch = self._channel_to(address)
        if not ch.ready:
            w = asyncio.get_running_loop().create_future()
            ch.ready_waiters.append(w)
            await w
        return ch

    def on_ready(self, ch: Channel) -> None:
        peer = ch.conn.peer
        assert peer is not None
        ch.same_host = bool(peer.host_id) and peer.host_id == self.identity.host_id
        self._fd.add(ch, time.monotonic())
        self._update_udp_peers()
        if peer.listen:
            self._lost.pop(peer.listen, None)  # it is back
            self._probed.pop(peer.listen, None)
        if not ch.address and peer.listen:
            ch.address = peer.listen
            existing = self._channels.get(peer.listen)
            if existing is None or existing.closed:
                self._channels[peer.listen] = ch
        if ch.waiting:
            self.drain_waiting(ch)

    def on_message(self, ch: Channel, msg: Message) -> None:
        token = _current_node.set(self)
        try:
            kind = msg.kind
            if kind == Kind.REPLY:
                self._on_reply(ch, msg)
            elif kind == Kind.CALL:
                self._on_call(ch, msg)
            elif kind == Kind.FAILURE:
                self._on_failure(ch, msg.body)
            elif kind == Kind.CANCEL:
                cid = msg.body.call_id
                for cell in list(self._actors.values()):
                    if cell.mailbox.cancel(lambda it: it.ch is ch and it.call_id == cid):
                        break
            elif kind == Kind.RELEASE:
                self.buffers.on_release(ch, msg.body)
            elif kind == Kind.HEARTBEAT:
                pass  # any bytes count as a sign of life (Channel.last_heard); nothing to answer
            elif kind == Kind.GOODBYE:
                ch.lost_reason = NodeLostError(f"node {ch.peer_name()} left: {msg.body.reason or 'goodbye'}",
                                               node=ch.address)
                ch.close()
        finally:
            _current_node.reset(token)

    @staticmethod
    def _payload(body: Any, buffers: list) -> tuple[Any, list]:
        if body.payload_oob:
            if not buffers:
                raise SerializationError("payload marked out-of-band but no buffer came")
            return buffers[0], buffers[1:]
        return body.payload or b"", buffers

    def _on_call(self, ch: Channel, msg: Message) -> None:
        body = msg.body
        cell = self._actors.get(body.actor_id)
        if cell is None or (body.node_id and body.node_id != self.node_id) or self._closing:
            if body.call_id:
                err = self._missing(body.actor_id, body.node_id) if not self._closing else \
                    ActorDeadError("node is stopping", node=self.address)
                kind = FailureKind.ACTOR_NOT_FOUND if isinstance(err, ActorNotFoundError) else FailureKind.ACTOR_DEAD
                self._send_failure(ch, body.call_id, kind, err, "", err.actor, body.method)
            return
        try:
            stream, bufs = self._payload(body, msg.buffers)
            if body.buffers is not None:  # descriptors were decoded: some buffers may live in shared memory
                bufs = self.buffers.import_(ch, bufs)
            args, kwargs = loads(stream, bufs)
            if type(args) is not tuple or type(kwargs) is not dict:
                raise SerializationError("call arguments must be (tuple, dict)")
        except (SerializationError, ValueError, TypeError) as e:
            if body.call_id:
                self._send_failure(ch, body.call_id, FailureKind.SERIALIZATION, e, "", cell.mailbox.label,
                                   body.method)
            else:
                log.warning("dropping one-way call with bad arguments from %s: %s", ch.peer_name(), e)
            return
        ch.call_received()
        cell.mailbox.post(CallItem(ch, body.call_id, body.method, args, kwargs, None))

    def _on_reply(self, ch: Channel, msg: Message) -> None:
        body = msg.body
        fut = ch.pending.pop(body.call_id, None)
        if ch.waiting:
            self.drain_waiting(ch)
        if fut is None or fut.done():
            return  # cancelled, or a stale id
        try:
            stream, bufs = self._payload(body, msg.buffers)
            if body.buffers is not None:
                bufs = self.buffers.import_(ch, bufs)
            fut.set_result(loads(stream, bufs))
        except SerializationError as e:
            fut.set_exception(e)

    def _on_failure(self, ch: Channel, body: Any) -> None:
        fut = ch.pending.pop(body.call_id, None)
        if ch.waiting:
            self.drain_waiting(ch)
        if fut is None or fut.done():
            return
        fut.set_exception(self._exception_from(body, ch))

    def _exception_from(self, body: Any, ch: Channel) -> BaseException:
        kind = body.kind
        message = body.message or ""
        node = body.node or ch.address
        if kind == FailureKind.REMOTE:
            cause: Any = None
            if body.error:
                try:
                    cause = loads(body.error)
                except SerializationError:
                    cause = None
            original = original_class(cause) if isinstance(cause, BaseException) else _lookup_class(body.type_name)
            return make_remote_error(original, body.type_name or "Exception", message, body.traceback or "",
                                     body.actor, body.method, node,
                                     cause if isinstance(cause, BaseException) else None)
        if kind == FailureKind.ACTOR_NOT_FOUND:
            return ActorNotFoundError(message, actor=body.actor, node=node)
        if kind == FailureKind.ACTOR_DEAD:
            return ActorDeadError(message, actor=body.actor, node=node)
        if kind == FailureKind.CANCELLED:
            return asyncio.CancelledError(message or "cancelled on the remote side")
        if kind == FailureKind.SERIALIZATION:
            return SerializationError(message)
        return NodeLostError(message, node=node)

    def on_lost(self, ch: Channel, exc: BaseException | None) -> None:
        self._all_channels.discard(ch)
        self._fd.remove(ch)
        self._update_udp_peers()
        if (self.seed is not None and ch.address == self.seed and ch.ready and not self._closing
                and self.role != "client" and not self._rejoining):
            self._rejoining = True
            self._spawn_bg(self._rejoin())
        if ch.leases and self.buffers is not None:
            self.buffers.peer_lost(ch)
        if self._channels.get(ch.address) is ch:
            del self._channels[ch.address]
        if ch.pending or ch.waiting:
            if self._closing:
                err: DistoError = ClosedError("this node was stopped")
            elif isinstance(exc, (NodeLostError, AuthenticationError)):
                err = exc
            else:
                why = f"{type(exc).__name__}: {exc}" if exc else "connection closed"
                err = NodeLostError(f"connection to {ch.peer_name()} lost ({why})", node=ch.address)
            pending, ch.pending = ch.pending, {}
            for fut in pending.values():
                if not fut.done():
                    fut.set_exception(err)
            while ch.waiting:
                _, fut, oneway = ch.waiting.popleft()
                if not fut.done():
                    fut.set_exception(err)
                    if oneway:
                        fut.exception()  # a one-way call's future is usually ignored: don't warn about it
        peer = ch.conn.peer
        if peer is not None and ch.ready:
            for cb in list(self._peer_lost_callbacks):
                try:
                    cb(peer.node_id, ch.address)
                except Exception:
                    log.exception("peer-lost callback failed")

    async def _rejoin(self) -> None:
        """The connection to the seed was lost: join again (the seed dropped us), retrying until it works."""
        assert self.registry is not None
        try:
            delay = 0.2
            while not self._closing:
                await asyncio.sleep(delay)
                try:
                    self._on_members(await self.registry.join(self.info_for_registry()))
                    log.info("joined the seed %s again", self.seed)
                    return
                except DistoError as e:
                    log.debug("rejoin failed: %s", e)
                    delay = min(delay * 2, 2.0)
        finally:
            self._rejoining = False

    def add_peer_lost_callback(self, cb: Callable[[str, str], None]) -> None:
        self._peer_lost_callbacks.append(cb)

    def stats(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id, "address": self.address, "role": self.role, "pid": os.getpid(),
            "actors": [{"id": r.actor_id, "class": r.actor_class, "name": r.actor_name} for r in self.actors()],
            "peers": sorted(ch.address or ch.peer_name() for ch in self._all_channels if ch.ready),
            "last_heard": {ch.address or ch.peer_name(): round(time.monotonic() - ch.last_heard, 3)
                           for ch in self._all_channels if ch.ready},
            "pending_calls": sum(len(ch.pending) + len(ch.waiting) for ch in self._all_channels),
            "buffer_pool": self._pool.stats(),
            "process": _process_stats(),
            "shm": self.buffers.exporter.stats() if self.buffers is not None else {},
        }
