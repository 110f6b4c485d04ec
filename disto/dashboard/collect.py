"""Gather the state of the whole cluster through one node: the member list and timeline from the seed's
registry, and each node's own report (its actors, peers, process), asked of all nodes at once. A node that does
not answer within ``timeout`` is reported as unreachable; it never holds up the others."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from ..cluster.inspect import each_node
from ..node import Node

NODE_TIMEOUT = 2.0


async def cluster_snapshot(via: Node, timeout: float = NODE_TIMEOUT) -> dict[str, Any]:
    """Every node's report (or its error), the seed's timeline of joins, losses, restarts and placements, and
    every worker's resources (total and free)."""
    assert via.registry is not None
    answers, timeline, resources = await asyncio.gather(
        each_node(via, "info", timeout),
        asyncio.wait_for(asyncio.ensure_future(via.registry.timeline()), timeout),
        asyncio.wait_for(asyncio.ensure_future(via.registry.resources()), timeout), return_exceptions=True)
    if isinstance(answers, BaseException):
        raise answers
    out = []
    for m, info in answers:
        if isinstance(info, BaseException):
            out.append({"node_id": m["node_id"], "address": m["address"], "role": m.get("role"),
                        "pid": m.get("pid"), "error": f"{type(info).__name__}: {info}", "actors": []})
        else:
            out.append(info)
    return {"time": time.time(), "seed": via.seed or via.address, "members": [m for m, _ in answers], "nodes": out,
            "timeline": [] if isinstance(timeline, BaseException) else timeline,
            "resources": [] if isinstance(resources, BaseException) else resources}
