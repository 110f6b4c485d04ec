"""A Node: one process's disto runtime, as a composition root. It wires the parts, each of which owns one
concern and its state, and routes what its channels report to them:

    peers       listener, dialling, TLS, one channel per peer            (node/peers.py)
    outbound    calls we make: window, pending tables, replies back      (node/outbound.py)
    inbound     calls for our actors, from peers or from this process    (node/inbound.py)
    actors      the actor table: spawn, stop, lookup                     (node/actors.py)
    replies     our actors' results and errors back to their callers     (node/replies.py)
    liveness    heartbeats, failure detection, probing lost nodes        (node/liveness.py)
    membership  joining the seed and following the member list           (node/membership.py)
    buffers     shared-memory transfers to same-host peers               (node/buffers.py)

Events from a channel are handled by a table keyed by event type.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from typing import Any, Callable, Coroutine

from ..actor import ActorRef, SystemActor, context, system_ref
from ..errors import AuthenticationError, ClosedError, DistoError
from ..futures import Future
from ..ids import new_node_id
from ..memory import janitor
from ..placement import detect_resources
from ..actor import mailbox as _mailbox_module, threads as _threads_module
from ..transport import Channel, channel as _channel_module
from ..wire import (Call, Cancel, Failure, Goodbye, Heartbeat, Message, Modules, Release, Reply, StreamCredit,
                    StreamEnd, StreamItem)
from .actors import ActorTable
from .buffers import BufferRouter
from .config import Here, NodeConfig, normalize_token
from . import inbound as _inbound_module, replies as _replies_module
from .inbound import InboundCalls
from .introspection import node_stats, stacks
from .metrics import NodeMetrics
from .preloads import Preloads
from .liveness import Liveness
from .membership import Membership
from .dedicated import DedicatedProcesses
from .modules import ModuleShipper
from .outbound import OutboundCalls
from .output import ActorOutput, capture, owner_in, write_lines
from .peers import Peers
from .registry import Registry
from .replies import Replies
from .service import NodeService
from .streams import StreamSinks

log = logging.getLogger("disto.node")


def _ignore(ch: Channel, ev: Message) -> None:
    pass  # a heartbeat: its bytes already counted as a sign of life (Channel.last_heard)


def thread_replies() -> bool:
    """Whether actors' threads write their plain answers themselves (disto/actor/threads.py): the channel's writes
    from threads are available (transport/threadwrites.py) and every module taking part runs compiled, as their
    exclusion from the loop rests on the GIL (a call's claim, the channel's count of calls it holds)."""
    return _channel_module.THREAD_WRITES and not any(
        (m.__file__ or "").endswith(".py")
        for m in (_threads_module, _mailbox_module, _replies_module, _inbound_module))


class Node:
    """One disto node. ``async with Node(token) as node`` starts it; ``listen=None`` makes a node that only dials.

    ``seed`` is the address of the node that keeps the member list and the name registry; a node without a seed
    keeps its own (it is a seed). ``role`` is "worker" (gets actors from ``cluster.spawn``), "driver" (a program
    that joined to use the cluster), "dedicated" (the process of one ``process=True`` actor) or "client" (does
    not join at all: command-line tools).
    """

    def __init__(self, token: str | bytes | None, *, listen: str | None = "127.0.0.1:0", seed: str | None = None,
                 role: str = "worker", config: NodeConfig | None = None) -> None:
        self._token = normalize_token(token)
        self.config = cfg = config or NodeConfig()
        self.node_id = new_node_id()
        self.role = role
        self.seed = seed
        self._listen = listen
        self._here = here = Here(self.node_id, role)
        self.closed = False
        self._started = False
        self._stopped = asyncio.Event()
        self._bg: set[asyncio.Task] = set()
        self._peer_lost_callbacks: list[Callable[[str, str, bool], None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.registry: ActorRef | None = None
        self._peers = Peers(here, self._token, cfg, self)
        self._modules = ModuleShipper(cfg.max_body)
        self.buffers = BufferRouter(transfer=cfg.transfer, shm_min=cfg.shm_min, shm_pool_bytes=cfg.shm_pool_bytes,
                                    loop=lambda: self.loop, ship=self._modules.ship)
        self._replies = Replies(here, self.buffers, cfg.max_frame, self._modules.ship)
        self._sinks = StreamSinks(here, self.buffers, self._replies, cfg.stream_window, cfg.max_frame)
        self.metrics = NodeMetrics(cfg.metrics)
        self.resources = detect_resources(cfg.resources)  # what this node offers (spawn(..., resources=))
        self.started_at = time.time()
        self.output: ActorOutput | None = None  # what actors print, once capture_output() was called
        self.wants_output = role == "driver"  # a driver prints what the cluster's actors print
        self.dashboard_url: str | None = None
        self.token_source = "the token given"  # where the token came from, for "token mismatch" messages
        self._actors = ActorTable(here, self._replies, self, self._sinks, self.metrics, thread_replies())
        self._inbound = InboundCalls(here, self._actors, self._replies, self.buffers, self)
        self._liveness = Liveness(cfg, self._peers)
        self._outbound = OutboundCalls(here, self._peers, self.buffers, self._inbound.call_local,
                                       self._liveness.monitor.lost, cfg.max_inflight, cfg.max_frame,
                                       cfg.stream_window)
        self._membership: Membership | None = None
        self._dedicated = DedicatedProcesses(here, self._token, cfg, lambda: self.seed or self.address)
        self.preload_at_start: tuple[str, ...] = ()  # libraries to import in the background once started
        self.call = self._outbound.call  # type: ignore[method-assign]  # the hot path: skip a frame
        # what its channels call for each event they receive, with context.current set to this node (ChannelOwner)
        self.event_context = (context.current, self)
        self.handlers: dict[type, Callable[[Channel, Any], None]] = {
            Call: self._inbound.on_call, Reply: self._outbound.on_reply, Failure: self._outbound.on_failure,
            Cancel: self._inbound.on_cancel, Release: self.buffers.on_release, Heartbeat: _ignore,
            Goodbye: self._peers.on_goodbye, Modules: self._modules.on_modules,
            StreamItem: self._outbound.on_stream_item, StreamEnd: self._outbound.on_stream_end,
            StreamCredit: self._sinks.on_credit}
        # while it imports, it holds some of the handlers (and so, the events that would unpickle)
        self._preloads = Preloads(self.handlers, self.event_context, lambda: self._actors.cells,
                                  self._preloads_settled)
        # a node process with its collector tuned (disto node start --gc tuned) freezes what its preloads made
        self.freeze_gc_after_preloads = False

    def _preloads_settled(self) -> None:
        """Every import running has ended: freeze what they built (torch: about 140,000 objects) so that full
        collections skip it, as :func:`~disto.node.process.tune_gc` did at start; not once an actor of the user's
        is here, whose objects a freeze would keep from ever being collected (a cycle dropped later)."""
        if self.freeze_gc_after_preloads and self._preloads.only_system_actors():
            gc.freeze()

    def token_text(self) -> str:
        """The cluster token as text (for the dashboard's link)."""
        return self._token.decode(errors="replace")

    @property
    def closing(self) -> bool:
        return self._here.closing

    @property
    def address(self) -> str:
        return self._here.address

    @property
    def members(self) -> list[dict[str, Any]]:
        return self._membership.members if self._membership is not None else []

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> "Node":
        if self._started:
            raise DistoError("node already started")
        self._started = True
        self.loop = self._outbound.loop = asyncio.get_running_loop()
        self._outbound.loop_thread = threading.get_ident()
        self.buffers.set_loop_thread(self._outbound.loop_thread)
        bound = await self._peers.listen(self._listen)
        if self.output is not None:
            self.output.loop = self.loop
        if bound is not None:
            self._liveness.start_udp(self._token, self.node_id, *bound)
        janitor()
        self._modules.start()
        self._preloads.start(self.preload_at_start, any_name=True)
        self.spawn_bg(self._liveness.run(also=self.buffers.tick))
        context.node_started(self)
        self._actors.install_system(NodeService(self), SystemActor.NODE_SERVICE)
        if self.seed is None:
            self._actors.install_system(Registry(self), SystemActor.REGISTRY)
        self.registry = system_ref(SystemActor.REGISTRY, self.seed or self.address, via=self)
        self._membership = Membership(self._here, self.seed, self.registry, self._peers.identity.host_id,
                                      self._liveness.monitor.back, self.spawn_bg,
                                      lambda: self._actors.register_again(self.registry))
        self._membership.extra = {"output": self.wants_output}
        if self.role == "worker":  # what placement may hold here
            self._membership.extra["resources"] = self.resources
        if self.role == "client":
            return self  # a command-line client talks to the cluster without becoming a member
        try:
            await self._membership.join()
        except BaseException:
            await self.stop()
            raise
        log.info("node %s (%s) started on %s, %s", self.node_id, self.role, self.address,
                 f"joined {self.seed}" if self.seed else "the seed")
        return self

    async def announce_dashboard(self, url: str) -> None:
        """Tell the member list that this node serves the dashboard at ``url`` (drivers find it there)."""
        assert self._membership is not None and self.registry is not None
        self.dashboard_url = url
        self._membership.extra["dashboard"] = url
        await self.registry.update(self.node_id, {"dashboard": url})

    def capture_output(self) -> None:
        """Tag what this process's actors print or log, keep it per actor and send it to the drivers (node
        processes do this; see node/output.py)."""
        if self.output is None:
            self.output = ActorOutput(owner_in(lambda: self._actors.cells, self._here.address or "?"),
                                      self._forward_output)
            self.output.loop = self.loop
            self._undo_capture = capture(self.output)

    def _forward_output(self, batch: list[tuple[int, str]]) -> bool:
        drivers = [] if self._here.closing else [m for m in self.members if m.get("role") == "driver" and m.get("output")]
        for m in drivers:
            system_ref(SystemActor.NODE_SERVICE, m["address"], node_id=m["node_id"], via=self).show_output.tell(batch)
        return bool(drivers)

    def show_output(self, batch: list[tuple[int, str]]) -> None:  # lines another node's actors wrote: print them
        write_lines([(int(s), str(line)) for s, line in batch])

    def info_for_registry(self) -> dict[str, Any]:
        assert self._membership is not None
        return self._membership.info()

    async def __aenter__(self) -> "Node":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self, reason: str = "node stopping") -> None:
        """Stop every actor (their callers get ActorDeadError), say goodbye to peers, close the listener."""
        if self._here.closing:
            await self._stopped.wait()
            return
        self._here.closing = True
        if self.role != "client":
            log.info("node %s stopping: %s", self.address, reason)
        await self._dedicated.stop_all()
        await self._actors.stop_all()
        await self._peers.close(reason)
        for t in list(self._bg):
            t.cancel()
        self.buffers.close()
        self._liveness.stop()
        janitor()
        self.closed = True
        if self.output is not None:
            self._undo_capture()
        context.node_stopped(self)
        self._stopped.set()

    def stop_soon(self, reason: str) -> None:
        """Stop once the current callback is done (a reply being written goes out first)."""
        asyncio.get_running_loop().call_soon(lambda: self.spawn_bg(self.stop(reason)))

    def spawn_bg(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    # ---------------------------------------------------------------- what channels report (ChannelOwner)
    def on_ready(self, ch: Channel) -> None:
        self._peers.on_ready(ch)
        self._liveness.add(ch)
        self._outbound.drain(ch)

    def on_writable(self, ch: Channel) -> None:
        self._outbound.drain(ch)

    def on_lost(self, ch: Channel, exc: BaseException | None) -> None:
        self._peers.forget(ch)
        self._liveness.remove(ch)
        if self._membership is not None:
            self._membership.on_channel_lost(ch)
        self.buffers.peer_lost(ch)
        self._modules.forget(ch)
        self._sinks.forget(ch)
        if isinstance(exc, AuthenticationError) and ch.conn.dialer and str(exc).startswith("token mismatch"):
            exc = AuthenticationError(f"token mismatch: the node at {ch.address} holds another cluster token than "
                                      f"this one, which came from {self.token_source}")
        self._outbound.fail_all(ch, exc)
        cancelled = self._actors.cancel_calls_from(ch)  # their callers are gone: stop running their calls
        if cancelled:
            log.info("cancelled %d calls from %s: its connection is gone", cancelled, ch.peer_name())
        peer = ch.conn.peer
        if peer is not None and ch.ready and not self._here.closing and not ch.said_goodbye:
            log.info("lost connection to %s (%s)%s", ch.address or ch.peer_name(), peer.node_id,
                     f": {exc}" if exc else "")
        if peer is not None and ch.ready:
            for cb in list(self._peer_lost_callbacks):
                try:
                    cb(peer.node_id, ch.address, ch.said_goodbye)
                except Exception:
                    log.exception("peer-lost callback failed")

    def add_peer_lost_callback(self, cb: Callable[[str, str, bool], None]) -> None:
        """``cb(node_id, address, goodbye)`` whenever a connection to a peer that had completed its handshake is
        lost (``goodbye``: the peer said it was leaving)."""
        self._peer_lost_callbacks.append(cb)

    def on_members(self, members: list[dict[str, Any]]) -> None:
        if self._membership is not None:
            self._membership.on_members(members)

    # ---------------------------------------------------------------- actors and calls
    def call(self, ref: ActorRef, method: str, args: tuple, kwargs: dict, oneway: bool = False) -> Future:
        """Call ``method`` of the actor ``ref`` (what ``ref.method(...)`` does). (Replaced per instance by the
        outbound part's own method.)"""
        return self._outbound.call(ref, method, args, kwargs, oneway)

    async def spawn_local(self, cls: type, args: tuple = (), kwargs: dict | None = None,
                          name: str | None = None, restarts: int = 0, placement: dict | None = None) -> ActorRef:
        """Create an actor of class ``cls`` on this node. Its constructor and ``on_start`` run here."""
        return await self._actors.spawn(cls, args, kwargs or {}, name, self.registry, restarts, placement)

    def allocate_ids(self, n: int) -> list[int]:
        return self._actors.allocate(n)

    async def stop_actor(self, actor_id: int) -> bool:
        """Stop one actor: queued calls fail with ActorDeadError, running ones are cancelled, then ``on_stop``."""
        stopped = await self._actors.stop(actor_id, self.registry if not self.closed else None)
        if stopped and self.role == "dedicated" and not self._actors.refs():
            self.stop_soon("its actor was stopped")  # a dedicated process lives for its actor
        return stopped

    async def spawn_process(self, cls: type, args: tuple, kwargs: dict, name: str | None, max_restarts: int,
                            preload: tuple[str, ...], placement: dict | None = None) -> ActorRef:
        """Create an actor of class ``cls`` in a child node process of its own (see node/dedicated.py)."""
        if self._here.closing:
            raise ClosedError("node is stopping")
        return await self._dedicated.spawn(self, cls, args, kwargs, name, max_restarts, preload, placement)

    async def open_process(self, preload: tuple[str, ...]) -> tuple[str, str]:
        if self._here.closing:
            raise ClosedError("node is stopping")
        return await self._dedicated.start(preload)

    def supervised(self, actor_id: int, spec: tuple) -> None:
        """Remember how actor ``actor_id`` is supervised, to tell a restarted seed again."""
        cell = self._actors.cells.get(actor_id)
        if cell is not None:
            cell.supervision = spec

    async def preload(self, modules: tuple[str, ...]) -> None:
        """Import these libraries here, if not yet (in the background, once; this waits for them)."""
        await self._preloads.wait(modules)

    def actors(self) -> list[ActorRef]:
        return self._actors.refs()

    async def wait_ready(self, address: str) -> Channel:
        """Connect to ``address`` (if not yet) and wait until the handshake is done."""
        return await self._peers.wait_ready(address)

    def stats(self) -> dict[str, Any]:
        return node_stats(self, self._actors, self._peers, self._liveness, self._outbound)

    def stacks(self) -> dict[str, Any]:
        """Every thread and asyncio task of this process, and the actor call each one runs."""
        return dict(stacks(self._actors), node_id=self.node_id, address=self.address, role=self.role,
                    pid=os.getpid())

    def actor_logs(self, label: str, n: int | None = None) -> list[str]:
        """The recent lines the actor ``label`` (its name, or Class#id) printed or logged here, also after it
        stopped; empty if this node does not capture output."""
        return self.output.lines(label, n) if self.output is not None else []
