"""Clusters from the driver's side: join a running one with :func:`connect`, or start one with
:class:`LocalCluster`. Both give a :class:`Cluster` with ``nodes``, ``spawn``, ``lookup`` and ``stop``."""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import sys
from typing import Any

from ._errors import ActorNotFoundError, DistoError, RemoteError
from ._tls import ENV
from ._token import new_token, resolve_token
from .actor import ActorRef
from .futures import Future
from .node import NODE_SERVICE_ID, Node, NodeConfig

log = logging.getLogger("disto.cluster")


class NodeHandle:
    """A node of the cluster, seen from the driver: spawn actors on it, ask for its state, shut it down."""

    def __init__(self, info: dict[str, Any], via: Node) -> None:
        self.info = info
        self.node_id: str = info["node_id"]
        self.address: str = info["address"]
        self.pid: int = info.get("pid", 0)
        self._service = ActorRef(self.node_id, self.address, NODE_SERVICE_ID, "NodeService", None, via)

    def spawn(self, cls: type, *args: Any, name: str | None = None, max_restarts: int = 0,
              **kwargs: Any) -> Future[ActorRef]:
        """Create an actor of ``cls`` on this node; ``args``/``kwargs`` go to its constructor. ``name`` makes it
        findable with ``cluster.lookup(name)`` (the name must be free). With ``max_restarts=N`` the actor is
        built again (constructor rerun, state lost) on another live node if its node is lost, up to N times;
        its name then resolves to the new actor. Calls in flight when it died fail (at most once)."""
        return self._service.spawn(cls, args, kwargs, name, max_restarts)

    def stats(self) -> Future[dict[str, Any]]:
        return self._service.info()

    def shutdown(self) -> Future[bool]:
        return self._service.shutdown()

    def __repr__(self) -> str:
        return f"<NodeHandle {self.address} {self.node_id}>"


class Cluster:
    """A driver's view of a cluster. Made by :func:`connect` or :class:`LocalCluster`."""

    def __init__(self, node: Node) -> None:
        self.node = node  # this process's own node (it runs actors spawned locally, and all our calls)
        self.nodes: list[NodeHandle] = []
        self._rr = itertools.count()

    async def refresh(self) -> list[NodeHandle]:
        """Re-read the member list from the seed."""
        assert self.node.registry is not None
        members = await self.node.registry.members()
        self.nodes = [NodeHandle(m, self.node) for m in members if m.get("role") == "worker"]
        return self.nodes

    def spawn(self, cls: type, *args: Any, name: str | None = None, max_restarts: int = 0,
              **kwargs: Any) -> Future[ActorRef]:
        """Create an actor on some node (round robin over ``nodes``); see :meth:`NodeHandle.spawn`."""
        if not self.nodes:
            raise DistoError("the cluster has no worker nodes")
        node = self.nodes[next(self._rr) % len(self.nodes)]
        return node.spawn(cls, *args, name=name, max_restarts=max_restarts, **kwargs)

    async def lookup(self, name: str) -> ActorRef:
        """The actor registered under ``name``; ActorNotFoundError if there is none."""
        assert self.node.registry is not None
        try:
            return await self.node.registry.lookup(name)
        except RemoteError as e:
            if isinstance(e.cause, ActorNotFoundError):
                raise ActorNotFoundError(f"no actor is named {name!r}", actor=name, node=e.node) from None
            raise

    async def stop(self, ref: ActorRef) -> bool:
        """Stop an actor: its queued calls fail with ActorDeadError. False if it was not running."""
        service = ActorRef(ref.node_id, ref.node_address, NODE_SERVICE_ID, "NodeService", None, self.node)
        return await service.stop_actor(ref.actor_id)

    async def close(self) -> None:
        await self.node.stop("driver leaving")

    async def __aenter__(self) -> "Cluster":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class connect:  # noqa: N801 - used as `async with disto.connect(...)`, like a function
    """Join a running cluster through any of its nodes' seed: ``async with disto.connect("127.0.0.1:7000")``.

    The token comes from ``token``, else ``DISTO_TOKEN``, else ``token_file``/``DISTO_TOKEN_FILE``. The driver
    runs a node of its own listening on ``listen`` (so actors can call back actors it spawns locally)."""

    def __init__(self, seed: str, *, token: str | bytes | None = None, token_file: str | None = None,
                 listen: str | None = "127.0.0.1:0", config: NodeConfig | None = None) -> None:
        self._seed = seed
        self._token = resolve_token(token, token_file)
        self._listen = listen
        self._config = config
        self._cluster: Cluster | None = None

    async def __aenter__(self) -> Cluster:
        node = Node(self._token, listen=self._listen, seed=self._seed, role="driver", config=self._config)
        await node.start()
        self._cluster = Cluster(node)
        await self._cluster.refresh()
        return self._cluster

    async def __aexit__(self, *exc: Any) -> None:
        if self._cluster is not None:
            await self._cluster.close()

    def __await__(self) -> Any:
        return self.__aenter__().__await__()


def _child_setup() -> None:
    # die with the parent (a killed test runner must not leave nodes behind)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class LocalCluster:
    """``async with disto.LocalCluster(nodes=2) as cluster``: start ``nodes`` node processes on this host with a
    fresh random token (node 0 is the seed), join them from this process, and tear them all down on exit."""

    def __init__(self, nodes: int = 2, *, host: str = "127.0.0.1", token: str | None = None,
                 startup_timeout: float = 30.0, config: NodeConfig | None = None,
                 env: dict[str, str] | None = None, python: str | None = None) -> None:
        if not isinstance(nodes, int) or nodes < 1:
            raise ValueError(f"nodes must be an int >= 1, got {nodes!r}")
        self.n = nodes
        self.host = host
        self.token = token or new_token()
        self.startup_timeout = startup_timeout
        self.config = config
        self.env = env or {}
        self.python = python or sys.executable
        self.procs: list[asyncio.subprocess.Process] = []
        self.cluster: Cluster | None = None

    async def _start_node(self, seed: str | None) -> tuple[asyncio.subprocess.Process, str]:
        rfd, wfd = os.pipe()
        args = [self.python, "-m", "disto", "node", "start", "--listen", f"{self.host}:0", "--ready-fd", str(wfd)]
        if seed:
            args += ["--seed", seed]
        env = dict(os.environ, **self.env, DISTO_TOKEN=self.token)
        env.pop("DISTO_TOKEN_FILE", None)
        cfg = self.config
        for var in ENV.values():
            env.pop(var, None)  # the nodes use the driver's TLS settings, not whatever this shell had
        if cfg is not None and cfg.tls_cert:  # the nodes use the driver's TLS files (one host, one identity)
            env.update({ENV["cert"]: cfg.tls_cert, ENV["key"]: cfg.tls_key or "", ENV["ca"]: cfg.tls_ca or ""})
            if not cfg.tls_check_hostname:
                args.append("--tls-no-check-hostname")
        try:
            proc = await asyncio.create_subprocess_exec(*args, env=env, pass_fds=(wfd,), stdin=asyncio.subprocess.DEVNULL,
                                                        preexec_fn=_child_setup)
        finally:
            os.close(wfd)
        self.procs.append(proc)
        loop = asyncio.get_running_loop()
        try:
            line = await asyncio.wait_for(loop.run_in_executor(None, _read_line, rfd), self.startup_timeout)
        finally:
            os.close(rfd)
        if not line:
            code = await proc.wait()
            raise DistoError(f"node process exited with code {code} before it was ready (see its stderr above)")
        return proc, line.split()[0]

    async def __aenter__(self) -> Cluster:
        try:
            _, seed = await self._start_node(None)
            if self.n > 1:
                await asyncio.gather(*(self._start_node(seed) for _ in range(self.n - 1)))
            node = Node(self.token, listen=f"{self.host}:0", seed=seed, role="driver", config=self.config)
            await node.start()
            self.cluster = Cluster(node)
            await self.cluster.refresh()
            if len(self.cluster.nodes) != self.n:
                raise DistoError(f"expected {self.n} nodes, the seed knows {len(self.cluster.nodes)}")
            # node order follows process order
            by_pid = {h.pid: h for h in self.cluster.nodes}
            self.cluster.nodes = [by_pid[p.pid] for p in self.procs]
            return self.cluster
        except BaseException:
            await self._teardown()
            raise

    async def __aexit__(self, *exc: Any) -> None:
        await self._teardown()

    async def _teardown(self) -> None:
        if self.cluster is not None:
            # each node answers, then stops; errors here only mean it is already gone
            await asyncio.wait_for(
                asyncio.gather(*(h.shutdown() for h in self.cluster.nodes), return_exceptions=True), 5.0)
            await self.cluster.close()
        for p in self.procs:
            try:
                await asyncio.wait_for(p.wait(), 5.0)
            except asyncio.TimeoutError:
                log.warning("node process %d did not exit; killing it", p.pid)
                p.kill()
                await p.wait()
            except ProcessLookupError:
                pass
        self.procs.clear()


def _read_line(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()
