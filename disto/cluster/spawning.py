"""Spawning by resources, from the driver's side: hold room on the seed, build the actor where it was held, and
give the room back if building fails. Groups: every member placed at once (all or nothing), every member's ref
made before any member is built, so each gets the whole group before its constructor runs."""
from __future__ import annotations

import uuid
from typing import Mapping

from ..actor import ActorGroup, ActorRef, SystemActor, system_ref
from ..errors import PlacementError
from ..futures import collect, collect_all
from ..node import Node
from ..node.preloads import heavy_imports
from ..placement import check_request, check_strategy, check_timeout


def check_placement(resources: object, strategy: object, timeout: object) -> dict[str, float]:
    """The request, checked here before any round trip: ValueError saying what is wrong."""
    check_strategy(strategy)
    check_timeout(timeout)
    return check_request(resources if resources is not None else {})


def _service(via: Node, node_id: str, address: str) -> ActorRef:
    return system_ref(SystemActor.NODE_SERVICE, address, node_id=node_id, via=via)


async def reserve(via: Node, requests: list[dict[str, float]], strategy: str, node_id: str | None,
                  timeout: float | None, what: str) -> list[tuple[int, str, str]]:
    assert via.registry is not None
    try:
        return await via.registry.reserve(requests, strategy, via.node_id, node_id, timeout, what)
    except PlacementError as e:  # raised on the seed: a plain one here, with the same fields
        raise PlacementError(str(e), list(e.requested), e.strategy, dict(e.free)) from None


async def spawn_placed(via: Node, cls: type, args: tuple, kwargs: dict, *, name: str | None, max_restarts: int,
                       process: bool, request: dict[str, float], strategy: str, timeout: float | None,
                       node_id: str | None = None) -> ActorRef:
    [(hold, nid, address)] = await reserve(via, [request], strategy, node_id, timeout, cls.__qualname__)
    try:
        return await _service(via, nid, address).spawn(cls, args, kwargs, name, max_restarts, process,
                                                       heavy_imports(), 0,
                                                       {"hold": hold, "resources": request, "node": nid})
    except BaseException:
        via.registry.release.tell([hold])  # type: ignore[union-attr]
        raise


async def spawn_group(via: Node, cls: type, n: int, args: tuple, kwargs: dict, *, request: Mapping[str, float],
                      strategy: str, max_restarts: int, process: bool, timeout: float | None) -> ActorGroup:
    assert via.registry is not None
    registry = via.registry
    grants = await reserve(via, [dict(request)] * n, strategy, None, timeout, f"{cls.__qualname__} group")
    holds = [g[0] for g in grants]
    preload = heavy_imports()
    group_id = uuid.uuid4().hex[:12]
    children: list[tuple[str, str]] = []
    built: list[ActorRef] = []
    try:
        # where each member is built: its node, or (process=True) a child process of that node
        targets = [(nid, address) for _, nid, address in grants]
        if process:
            targets = children = [tuple(t) for t in await collect(
                _service(via, nid, address).open_process(preload) for nid, address in targets)]  # type: ignore[misc]
        ranks_at: dict[tuple[str, str], list[int]] = {}
        for rank, target in enumerate(targets):
            ranks_at.setdefault(target, []).append(rank)
        ids = await collect(_service(via, *t).allocate_ids(len(r)) for t, r in ranks_at.items())
        refs: list[ActorRef] = [None] * n  # type: ignore[list-item]
        for (target, ranks), got in zip(ranks_at.items(), ids):
            for rank, actor_id in zip(ranks, got):
                refs[rank] = ActorRef(target[0], target[1], actor_id, cls.__qualname__, None, via)
        group = ActorGroup(refs, group_id, cls.__qualname__)
        await registry.register_group(group_id, refs)
        outcomes = await collect_all(
            _service(via, *targets[rank]).spawn(
                cls, args, kwargs, None, max_restarts, False, preload, 0,
                {"hold": holds[rank], "resources": dict(request), "node": grants[rank][1], "rank": rank,
                 "group": group, "actor_id": refs[rank].actor_id})
            for rank in range(n))
        built = [r for r in outcomes if isinstance(r, ActorRef)]
        failed = [(rank, o) for rank, o in enumerate(outcomes) if isinstance(o, BaseException)]
        if failed:
            rank, exc = failed[0]
            exc.add_note(f"member {rank} of a group of {n} {cls.__qualname__} failed to start "
                         f"({len(failed)} did); the group was not made")
            raise exc
        return group
    except BaseException:
        await collect_all(_service(via, r.node_id, r.node_address).stop_actor(r.actor_id) for r in built)
        for nid, address in children:  # a child whose member never started has nothing to stop it
            _service(via, nid, address).shutdown.tell("its group failed to start")
        registry.release.tell(holds)
        registry.forget_group.tell(group_id)
        raise
