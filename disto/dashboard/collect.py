"""Gather the state of the whole cluster through one node: the member list and timeline from the seed's
registry, and each node's own report (its actors, peers, process), asked of all nodes at once. A node that does
not answer within ``timeout`` is reported as unreachable; it never holds up the others."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from ..actor import SystemActor, system_ref
from ..node import Node

NODE_TIMEOUT = 2.0


async def _ask(fut: Any, timeout: float) -> Any:
    try:
        return await asyncio.wait_for(asyncio.ensure_future(fut), timeout)
    except Exception as e:  # noqa: BLE001 - one node's trouble is reported, not raised
        return e


async def cluster_snapshot(via: Node, timeout: float = NODE_TIMEOUT) -> dict[str, Any]:
    """Members, every node's report (or its error), and the timeline of joins, losses and restarts."""
    assert via.registry is not None
    members, timeline = await asyncio.gather(_ask(via.registry.members(), timeout),
                                             _ask(via.registry.timeline(), timeout))
    if isinstance(members, BaseException):
        raise members
    nodes = [m for m in members if m.get("role") != "client"]
    infos = await asyncio.gather(*(
        _ask(system_ref(SystemActor.NODE_SERVICE, m["address"], node_id=m["node_id"], via=via).info(), timeout)
        for m in nodes))
    out = []
    for m, info in zip(nodes, infos):
        if isinstance(info, BaseException):
            out.append({"node_id": m["node_id"], "address": m["address"], "role": m.get("role"),
                        "pid": m.get("pid"), "error": f"{type(info).__name__}: {info}", "actors": []})
        else:
            out.append(info)
    return {"time": time.time(), "seed": via.seed or via.address, "members": members, "nodes": out,
            "timeline": [] if isinstance(timeline, BaseException) else timeline}
