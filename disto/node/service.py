"""The node service: actor #0 of every node. It spawns and stops actors there, reports the node's state, and
shuts the node down on request. An ordinary actor, reached through the same wire and mailboxes as user actors;
it sees its node only through the narrow :class:`ServiceHost` interface."""
from __future__ import annotations

from typing import Any, Protocol

from ..actor import Actor, ActorRef, check_actor_class
from ..errors import PlacementError


class ServiceHost(Protocol):
    registry: ActorRef | None
    role: str
    metrics: Any

    async def spawn_local(self, cls: type, args: tuple = (), kwargs: dict | None = None,
                          name: str | None = None, restarts: int = 0, placement: dict | None = None
                          ) -> ActorRef: ...
    async def spawn_process(self, cls: type, args: tuple, kwargs: dict, name: str | None, max_restarts: int,
                            preload: tuple[str, ...], placement: dict | None = None) -> ActorRef: ...
    async def open_process(self, preload: tuple[str, ...]) -> tuple[str, str]: ...
    def allocate_ids(self, n: int) -> list[int]: ...
    def actors(self) -> list[ActorRef]: ...
    async def preload(self, modules: tuple[str, ...]) -> None: ...
    def supervised(self, actor_id: int, spec: tuple) -> None: ...
    async def stop_actor(self, actor_id: int) -> bool: ...
    def stats(self) -> dict[str, Any]: ...
    def stacks(self) -> dict[str, Any]: ...
    def actor_logs(self, label: str, n: int | None = None) -> list[str]: ...
    def show_output(self, batch: list[tuple[int, str]]) -> None: ...
    def on_members(self, members: list[dict[str, Any]]) -> None: ...
    def stop_soon(self, reason: str) -> None: ...


class NodeService(Actor):
    """Spawns and stops actors on its node; reports its state; shuts the node down on request."""

    sync_on_loop = True  # bookkeeping on the node's own objects: never blocks
    max_concurrency = 64  # spawns wait for constructors (on the actors' threads): the rest need not wait

    def __init__(self, host: ServiceHost) -> None:
        self._host = host

    async def spawn(self, cls: type, args: tuple = (), kwargs: dict | None = None,
                    name: str | None = None, max_restarts: int = 0, process: bool = False,
                    preload: tuple[str, ...] = (), restarts: int = 0, placement: dict | None = None) -> ActorRef:
        """Build an actor here (``process=True``: in a child node process of its own). ``preload``: libraries
        the caller has imported, imported here first (in the background, once) so its calls do not pay for
        them. ``placement``: the seed's ``hold`` for it (bound to the actor once built), the ``resources`` it
        asked for and the ``node`` they count on, its ``rank`` and ``group``, a pre-allocated ``actor_id``."""
        check_actor_class(cls)
        host = self._host
        placement = placement or {}
        if process:
            return await host.spawn_process(cls, args, kwargs or {}, name, max_restarts, tuple(preload), placement)
        await host.preload(tuple(preload))
        try:
            ref = await host.spawn_local(cls, args, kwargs or {}, name, restarts, placement)
        except BaseException:
            if host.role == "dedicated" and not host.actors():
                host.stop_soon("its actor could not be built")  # a dedicated process lives for its actor
            raise
        try:
            if placement.get("hold") is not None:
                assert host.registry is not None
                if not await host.registry.bind(placement["hold"], ref):
                    raise PlacementError("the room held for this actor was given back before it was built (the "
                                         "node it was placed on, or the caller, was lost)",
                                         [placement.get("resources") or {}])
            if max_restarts:
                # the seed remembers how to build it again if this node is lost: by the same request
                assert host.registry is not None
                again = {k: placement[k] for k in ("resources", "rank", "group") if k in placement}
                spec = (cls, args, kwargs or {}, max_restarts, host.role == "dedicated", restarts, again)
                await host.registry.supervise(ref, *spec)
                host.supervised(ref.actor_id, spec)
        except BaseException:
            await host.stop_actor(ref.actor_id)
            raise
        return ref

    def allocate_ids(self, n: int) -> list[int]:
        """Ids for ``n`` actors spawned here later with ``placement={"actor_id": ...}`` (group members)."""
        return self._host.allocate_ids(n)

    async def open_process(self, preload: tuple[str, ...] = ()) -> tuple[str, str]:
        """Start a child node process for one actor (``process=True``) and return its (node id, address); the
        actor is then spawned on that child's service."""
        return await self._host.open_process(tuple(preload))

    async def stop_actor(self, actor_id: int) -> bool:
        return await self._host.stop_actor(actor_id)

    def info(self) -> dict[str, Any]:
        return self._host.stats()

    def stacks(self) -> dict[str, Any]:
        return self._host.stacks()

    def logs(self, label: str, n: int | None = None) -> list[str]:
        return self._host.actor_logs(label, n)

    def show_output(self, batch: list[tuple[int, str]]) -> None:
        self._host.show_output(batch)

    def set_metrics(self, enabled: bool) -> bool:
        """Count the calls of actors spawned from now on (or not); returns what it was."""
        metrics = self._host.metrics
        was, metrics.enabled = metrics.enabled, bool(enabled)
        return was

    def ping(self) -> str:
        return "pong"

    def members_changed(self, members: list[dict[str, Any]]) -> None:
        self._host.on_members(members)

    def shutdown(self, reason: str = "shutdown requested") -> bool:
        self._host.stop_soon(reason)  # after this reply has been written
        return True
