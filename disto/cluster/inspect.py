"""Looking inside a running cluster from any of its nodes: every actor, every node's stacks, an actor's recent
output. Each node is asked at once; one that does not answer within ``timeout`` is reported, not waited for."""
from __future__ import annotations

import asyncio
from typing import Any

from ..actor import ActorRef, SystemActor, system_ref
from ..node import Node

TIMEOUT = 5.0


def _service(m: dict[str, Any], via: Node) -> ActorRef:
    return system_ref(SystemActor.NODE_SERVICE, m["address"], node_id=m["node_id"], via=via)


async def each_node(via: Node, method: str, timeout: float, *args: Any) -> list[tuple[dict, Any]]:
    """(member, answer or exception) for every node of the cluster but command-line clients."""
    assert via.registry is not None
    members = [m for m in await via.registry.members() if m.get("role") != "client"]

    async def ask(m: dict[str, Any]) -> Any:
        try:
            fut = getattr(_service(m, via), method)(*args)
            return await asyncio.wait_for(asyncio.ensure_future(fut), timeout)
        except Exception as e:  # noqa: BLE001 - reported per node
            return e

    answers = await asyncio.gather(*(ask(m) for m in members))
    return list(zip(members, answers))


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


async def cluster_actors(via: Node, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    """Every actor of the cluster: node, class, name, state, restarts, uptime, calls queued and running, and a
    ref to it. Nodes that did not answer are listed with ``state: "unreachable"`` and no actor."""
    out: list[dict[str, Any]] = []
    for m, info in await each_node(via, "info", timeout):
        if isinstance(info, BaseException):
            out.append({"node": m["address"], "node_id": m["node_id"], "class": None, "name": None, "id": None,
                        "state": "unreachable", "restarts": 0, "error": _error(info)})
            continue
        for a in info["actors"]:
            ref = ActorRef(m["node_id"], m["address"], a["id"], a["class"], a["name"], via)
            out.append({"node": m["address"], "node_id": m["node_id"], "role": m.get("role"), "id": a["id"],
                        "class": a["class"], "name": a["name"], "state": a["state"], "restarts": a["restarts"],
                        "uptime": a["uptime"], "queued": a["queued"], "running": a["running"], "ref": ref})
    return out


async def cluster_stacks(via: Node, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
    """Every node's threads and asyncio tasks, with the actor call each runs and its age."""
    out = []
    for m, st in await each_node(via, "stacks", timeout):
        if isinstance(st, BaseException):
            out.append({"address": m["address"], "node_id": m["node_id"], "role": m.get("role"),
                        "error": _error(st), "threads": [], "tasks": []})
        else:
            out.append(st)
    return out


def format_stacks(nodes: list[dict[str, Any]]) -> str:
    """The stacks as text, the way ``disto stacks`` prints them: actor calls first, then the rest."""
    lines: list[str] = []
    for n in nodes:
        lines.append(f"== node {n['address']} ({n.get('role')}, pid {n.get('pid', '?')})")
        if "error" in n:
            lines.append(f"   unreachable: {n['error']}")
            continue
        for t in sorted(n["threads"], key=lambda t: not t["calls"]):
            calls = "; ".join(f"{c['actor']}.{c['method']} running {c['age']:.3f}s" for c in t["calls"])
            lines.append(f"-- thread {t['name']!r}" + (f"  [{calls}]" if calls else ""))
            lines.extend(f"     {f}" for f in t["stack"])
        for task in n["tasks"]:
            c = task["call"]
            what = f"  [{c['actor']}.{c['method']} running {c['age']:.3f}s]" if c else ""
            lines.append(f"-- task {task['name']} {task['coro']}{what}")
            lines.extend(f"     {f}" for f in task["stack"])
    return "\n".join(lines)


async def actor_logs(via: Node, ref: ActorRef, n: int | None = None, timeout: float = TIMEOUT) -> list[str]:
    """The recent lines ``ref`` printed or logged on its node (kept there, also after it stopped)."""
    service = system_ref(SystemActor.NODE_SERVICE, ref.node_address, via=via)
    return await asyncio.wait_for(asyncio.ensure_future(service.logs(ref._describe(), n)), timeout)
