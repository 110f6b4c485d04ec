"""Clusters from the driver's side: join a running one with :func:`connect` (or start one with
:class:`~disto.LocalCluster`). Both give a :class:`Cluster` with ``nodes``, ``spawn``, ``lookup`` and ``stop``."""
from __future__ import annotations

import itertools
from typing import Any

from ..actor import ActorGroup, ActorRef, SystemActor, check_actor_class, system_ref
from ..errors import ActorNotFoundError, DistoError, RemoteError
from ..futures import Future, as_future
from ..node import Node, NodeConfig
from ..node.preloads import heavy_imports
from .inspect import actor_logs, cluster_actors, cluster_stacks
from .spawning import check_placement, spawn_group, spawn_placed
from .token import resolve_token


def check_spawn(cls: object, name: object, max_restarts: object, process: object = False) -> None:
    """Refuse a bad spawn here, before a round trip: TypeError or ValueError saying what is wrong."""
    check_actor_class(cls)
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"an actor name must be a non-empty string, got {name!r}")
    if type(max_restarts) is not int or max_restarts < 0:
        raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
    if not isinstance(process, bool):
        raise ValueError(f"process must be True or False, got {process!r}")


class NodeHandle:
    """A node of the cluster, seen from the driver: spawn actors on it, ask for its state, shut it down."""

    def __init__(self, info: dict[str, Any], via: Node) -> None:
        self.info = info
        self.node_id: str = info["node_id"]
        self.address: str = info["address"]
        self.pid: int = info.get("pid", 0)
        self._service = system_ref(SystemActor.NODE_SERVICE, self.address, node_id=self.node_id, via=via)

    def spawn(self, cls: type, *args: Any, name: str | None = None, max_restarts: int = 0, process: bool = False,
              resources: dict[str, float] | None = None, placement_timeout: float | None = None,
              **kwargs: Any) -> Future[ActorRef]:
        """Create an actor of ``cls`` on this node; ``args``/``kwargs`` go to its constructor. ``name`` makes it
        findable with ``cluster.lookup(name)`` (the name must be free). With ``max_restarts=N`` the actor is
        built again (constructor rerun, state lost) on another live node if its node is lost, up to N times;
        its name then resolves to the new actor. Calls in flight when it died fail (at most once).
        ``process=True`` runs it in a process of its own on that node's host (for code that holds the GIL).
        ``resources={"gpu": 1}``: hold that much of this node's resources while the actor lives
        (:class:`disto.PlacementError` if this node has not that much free, at once or after waiting
        ``placement_timeout`` seconds for room).

        A ``cls`` that is not a subclass of :class:`disto.Actor`, or a bad ``name``, ``max_restarts``,
        ``process`` or ``resources``, raises TypeError or ValueError here, before anything is sent."""
        check_spawn(cls, name, max_restarts, process)
        if resources is None and placement_timeout is None:
            return self._service.spawn(cls, args, kwargs, name, max_restarts, process, heavy_imports())
        request = check_placement(resources, "spread", placement_timeout)
        via = self._service._resolve_node()
        return as_future(spawn_placed(via, cls, args, kwargs, name=name, max_restarts=max_restarts,
                                      process=process, request=request, strategy="spread",
                                      timeout=placement_timeout, node_id=self.node_id))

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
        self.dashboard_url: str | None = None  # the dashboard's base URL, when the cluster serves one

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard's URL with the token in it (as Jupyter prints one): open it in a browser."""
        if self.dashboard_url is None:
            return None
        return f"{self.dashboard_url}/?token={self.node.token_text()}"

    async def actors(self) -> list[dict[str, Any]]:
        """Every actor in the cluster: ``node``, ``class``, ``name``, ``id``, ``state`` ("idle", "running";
        "unreachable" for a node that did not answer), ``restarts``, ``uptime``, ``queued``, ``running`` (the
        calls it runs, with their age) and ``ref``."""
        return await cluster_actors(self.node)

    async def stacks(self) -> list[dict[str, Any]]:
        """Every node's threads and asyncio tasks: where each one is, and which actor call it runs for how long
        (the answer to "why does my program hang"). ``disto.format_stacks`` prints them as ``disto stacks``."""
        return await cluster_stacks(self.node)

    async def logs(self, ref: ActorRef, n: int | None = None) -> list[str]:
        """The last ``n`` (default: all kept, up to 1000) lines the actor printed or logged, kept by its node."""
        return await actor_logs(self.node, ref, n)

    async def refresh(self) -> list[NodeHandle]:
        """Re-read the member list from the seed."""
        assert self.node.registry is not None
        members = await self.node.registry.members()
        self.nodes = [NodeHandle(m, self.node) for m in members if m.get("role") == "worker"]
        return self.nodes

    def spawn(self, cls: type, *args: Any, name: str | None = None, max_restarts: int = 0, process: bool = False,
              resources: dict[str, float] | None = None, strategy: str | None = None,
              placement_timeout: float | None = None, **kwargs: Any) -> Future[ActorRef]:
        """Create an actor on some node; see :meth:`NodeHandle.spawn` for the arguments.

        Without ``resources``: round robin over ``nodes``. With ``resources={"gpu": 1, "ssd": 1}``: on a worker
        node with that much free (what each node has: ``disto node start --resources``, ``NodeConfig.resources``
        or ``LocalCluster(resources=)``), held until the actor stops or its node is lost; ``strategy`` "spread"
        (default: the node holding the fewest placed actors) or "pack" (the fullest node that fits). With
        ``max_restarts`` a lost actor is placed again by the same request. When no node can take it the future
        fails with :class:`disto.PlacementError` (what was asked, what each node has free): at once, or after
        waiting ``placement_timeout`` seconds for room."""
        if resources is None and strategy is None and placement_timeout is None:
            if not self.nodes:
                raise DistoError("the cluster has no worker nodes")
            node = self.nodes[next(self._rr) % len(self.nodes)]
            return node.spawn(cls, *args, name=name, max_restarts=max_restarts, process=process, **kwargs)
        check_spawn(cls, name, max_restarts, process)
        request = check_placement(resources, strategy or "spread", placement_timeout)
        return as_future(spawn_placed(self.node, cls, args, kwargs, name=name, max_restarts=max_restarts,
                                      process=process, request=request, strategy=strategy or "spread",
                                      timeout=placement_timeout))

    async def spawn_group(self, cls: type, n: int, *args: Any, resources: dict[str, float] | None = None,
                          strategy: str = "spread", max_restarts: int = 0, process: bool = False,
                          placement_timeout: float | None = None, **kwargs: Any) -> ActorGroup:
        """``n`` actors of ``cls`` (ranks 0..n-1), each built with ``args``/``kwargs`` and holding
        ``resources``, placed all at once (all or nothing) by ``strategy``: "spread" over as many nodes as
        possible, or "pack" onto as few. Inside each, ``self.rank`` and ``self.group`` are set before its
        constructor runs. Returns a :class:`disto.ActorGroup`; if any member fails to start, the others are
        stopped and the first error is raised. PlacementError as for :meth:`spawn`."""
        check_spawn(cls, None, max_restarts, process)
        if type(n) is not int or n < 1:
            raise ValueError(f"a group needs n >= 1 members, got {n!r}")
        request = check_placement(resources, strategy, placement_timeout)
        return await spawn_group(self.node, cls, n, args, kwargs, request=request, strategy=strategy,
                                 max_restarts=max_restarts, process=process, timeout=placement_timeout)

    async def resources(self) -> list[dict[str, Any]]:
        """Every worker node's resources: ``node_id``, ``address``, ``total``, ``free`` (not held by placed
        actors) and ``held`` (how many placed actors hold some)."""
        assert self.node.registry is not None
        return await self.node.registry.resources()

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
        service = system_ref(SystemActor.NODE_SERVICE, ref.node_address, node_id=ref.node_id, via=self.node)
        return await service.stop_actor(ref.actor_id)

    async def close(self) -> None:
        await self.node.stop("driver leaving")

    async def __aenter__(self) -> "Cluster":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class connect:  # noqa: N801 - used as `async with disto.connect(...)`, like a function
    """Join a running cluster through any of its nodes' seed: ``async with disto.connect("127.0.0.1:7000")``.

    The token comes from ``token``, else ``token_file``, else ``DISTO_TOKEN``, else ``DISTO_TOKEN_FILE``. The
    driver runs a node of its own listening on ``listen`` (so actors can call back actors it spawns locally).
    What the cluster's actors print reaches this process's stdout, tagged (``log_to_driver=False``: it does
    not)."""

    def __init__(self, seed: str, *, token: str | bytes | None = None, token_file: str | None = None,
                 listen: str | None = "127.0.0.1:0", config: NodeConfig | None = None,
                 log_to_driver: bool = True) -> None:
        self._seed = seed
        self._token = resolve_token(token, token_file)
        self._log_to_driver = log_to_driver
        self._listen = listen
        self._config = config
        self._cluster: Cluster | None = None

    async def __aenter__(self) -> Cluster:
        node = Node(self._token, listen=self._listen, seed=self._seed, role="driver", config=self._config)
        node.wants_output = self._log_to_driver
        await node.start()
        self._cluster = Cluster(node)
        await self._cluster.refresh()
        self._cluster.dashboard_url = next((m["dashboard"] for m in await node.registry.members()  # type: ignore
                                            if m.get("dashboard")), None)
        return self._cluster

    async def __aexit__(self, *exc: Any) -> None:
        if self._cluster is not None:
            await self._cluster.close()

    def __await__(self) -> Any:
        return self.__aenter__().__await__()
