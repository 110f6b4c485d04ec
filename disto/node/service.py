"""The node service: actor #0 of every node. It spawns and stops actors there, reports the node's state, and
shuts the node down on request. An ordinary actor, reached through the same wire and mailboxes as user actors;
it sees its node only through the narrow :class:`ServiceHost` interface."""
from __future__ import annotations

from typing import Any, Protocol

from ..actor import Actor, ActorRef, check_actor_class


class ServiceHost(Protocol):
    registry: ActorRef | None
    role: str
    metrics: Any

    async def spawn_local(self, cls: type, args: tuple = (), kwargs: dict | None = None,
                          name: str | None = None, restarts: int = 0) -> ActorRef: ...
    async def spawn_process(self, cls: type, args: tuple, kwargs: dict, name: str | None, max_restarts: int,
                            preload: tuple[str, ...]) -> ActorRef: ...
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

    def __init__(self, host: ServiceHost) -> None:
        self._host = host

    async def spawn(self, cls: type, args: tuple = (), kwargs: dict | None = None,
                    name: str | None = None, max_restarts: int = 0, process: bool = False,
                    preload: tuple[str, ...] = (), restarts: int = 0) -> ActorRef:
        """Build an actor here (``process=True``: in a child node process of its own). ``preload``: libraries
        the caller has imported, imported here first (in the background, once) so its calls do not pay for
        them."""
        check_actor_class(cls)
        host = self._host
        if process:
            return await host.spawn_process(cls, args, kwargs or {}, name, max_restarts, tuple(preload))
        await host.preload(tuple(preload))
        ref = await host.spawn_local(cls, args, kwargs or {}, name, restarts)
        if max_restarts:
            # the seed remembers how to build it again if this node is lost
            assert host.registry is not None
            spec = (cls, args, kwargs or {}, max_restarts, host.role == "dedicated", restarts)
            try:
                await host.registry.supervise(ref, *spec)
            except BaseException:
                await host.stop_actor(ref.actor_id)
                raise
            host.supervised(ref.actor_id, spec)
        return ref

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
