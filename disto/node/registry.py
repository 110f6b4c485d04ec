"""The registry: actor #1 of the seed node. It keeps the member list and the actor names, and restarts
supervised actors whose node was lost. It sees its node only through the narrow :class:`RegistryHost`
interface."""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Callable, Coroutine, Protocol

from ..actor import Actor, ActorRef, SystemActor, system_ref
from ..errors import ActorNotFoundError, DistoError, NameTakenError
from ..placement import Infeasible
from .placements import Grant, Placements

log = logging.getLogger("disto.node")
TIMELINE = 1000  # events kept

class RegistryHost(Protocol):
    node_id: str
    closing: bool

    def on_members(self, members: list[dict[str, Any]]) -> None: ...
    def spawn_bg(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task: ...
    def add_peer_lost_callback(self, cb: Callable[[str, str, bool], None]) -> None: ...


class _Spec:
    __slots__ = ("cls", "args", "kwargs", "name", "restarts_left", "process", "restarts", "placement")

    def __init__(self, cls: type, args: tuple, kwargs: dict, name: str | None, restarts_left: int,
                 process: bool = False, restarts: int = 0, placement: dict | None = None) -> None:
        self.placement = placement or {}  # resources asked for, group and rank: a replacement gets the same
        self.restarts = restarts  # times it was built again so far
        self.process = process  # it lived in a process of its own: so does its replacement
        self.cls = cls
        self.args = args
        self.kwargs = kwargs
        self.name = name
        self.restarts_left = restarts_left


class Registry(Actor):
    """Member list and actor names, kept by the seed node. A member whose connection to the seed is lost is
    dropped with its names."""

    sync_on_loop = True  # bookkeeping on the node's own objects: never blocks
    max_concurrency = 1 << 16  # reservations wait for room without holding up the rest

    def __init__(self, host: RegistryHost) -> None:
        self._host = host
        self._members: dict[str, dict[str, Any]] = {}
        self._names: dict[str, ActorRef] = {}
        self._supervised: dict[tuple[str, int], _Spec] = {}  # (node id, actor id) -> how to restart it
        self.restarts: list[dict[str, Any]] = []  # what was restarted where (for status and tests)
        # joins, departures, losses and restarts, oldest first (the dashboard's timeline)
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=TIMELINE)
        self.placements = Placements(self._event, lambda node_id: node_id in self._members)
        host.add_peer_lost_callback(self._peer_lost)

    def join(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        info = dict(info, joined_at=time.time())
        again = info["node_id"] in self._members
        self._members[info["node_id"]] = info
        self.placements.node_joined(info)
        if info.get("role") != "client":
            self._event("join", info["address"], f"{info.get('role')} {info['node_id']}"
                        + (" (again)" if again else ""))
            log.info("%s %s joined (%s)", info.get("role"), info["address"], info["node_id"])
        self._broadcast(skip=info["node_id"])
        return self.members()

    def update(self, node_id: str, fields: dict[str, Any]) -> None:
        """More about a member (the dashboard it serves); everyone hears of it."""
        member = self._members.get(node_id)
        if member is None:
            raise DistoError(f"{node_id} is not a member")
        member.update({k: v for k, v in fields.items() if k not in ("node_id", "address", "role", "joined_at")})
        self._broadcast()

    def leave(self, node_id: str) -> None:
        self._drop(node_id, "leave")

    def _event(self, kind: str, node: str, detail: str = "") -> None:
        self.events.append({"time": time.time(), "kind": kind, "node": node, "detail": detail})

    def timeline(self) -> list[dict[str, Any]]:
        return list(self.events)

    def _broadcast(self, skip: str | None = None) -> None:
        """Tell every member the new member list (one-way: a member that is gone must not hold us up)."""
        members = self.members()
        for m in members:
            if m["node_id"] == skip or m["node_id"] == self._host.node_id or m["address"].startswith("client:"):
                continue
            self._service(m).members_changed.tell(members)
        if skip != self._host.node_id:
            self._host.on_members(members)

    def _service(self, member: dict[str, Any]) -> ActorRef:
        return system_ref(SystemActor.NODE_SERVICE, member["address"], node_id=member["node_id"], via=self._host)

    def members(self) -> list[dict[str, Any]]:
        return sorted(self._members.values(), key=lambda m: m["joined_at"])

    def register(self, name: str, ref: ActorRef) -> None:
        old = self._names.get(name)
        if old is not None and old != ref:
            raise NameTakenError(f"the name {name!r} is taken by {old!r}", actor=name)
        self._names[name] = ref

    def unregister(self, name: str, ref: ActorRef) -> bool:
        if self._names.get(name) == ref:
            del self._names[name]
            return True
        return False

    def lookup(self, name: str) -> ActorRef:
        ref = self._names.get(name)
        if ref is None:
            raise ActorNotFoundError(f"no actor is named {name!r}", actor=name)
        return ref

    def names(self) -> dict[str, ActorRef]:
        return dict(self._names)

    def supervise(self, ref: ActorRef, cls: type, args: tuple, kwargs: dict, max_restarts: int,
                  process: bool = False, restarts: int = 0, placement: dict | None = None) -> None:
        if not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
        self._supervised[(ref.node_id, ref.actor_id)] = _Spec(cls, args, kwargs, ref.actor_name, max_restarts,
                                                              bool(process), int(restarts), placement)

    def unsupervise(self, node_id: str, actor_id: int) -> None:
        """The actor was stopped: it is not restarted, and what it held is free again."""
        self._supervised.pop((node_id, actor_id), None)
        self.placements.actor_stopped(node_id, actor_id)

    # ------------------------------------------------------------------ placement (see node/placements.py)
    async def reserve(self, requests: list[dict[str, float]], strategy: str = "spread", owner: str = "",
                      node_id: str | None = None, timeout: float | None = None, what: str = "") -> list[Grant]:
        """Hold room for each request (all or nothing): [(hold id, node id, address)]; PlacementError if none,
        at once or after ``timeout`` seconds of waiting for room."""
        return await self.placements.reserve(requests, strategy, owner, node_id, timeout, what)

    def bind(self, hold_id: int, ref: ActorRef) -> bool:
        return self.placements.bind(hold_id, ref)

    def release(self, hold_ids: list[int]) -> int:
        return self.placements.release(hold_ids)

    def hold_again(self, node_id: str, request: dict[str, float], ref: ActorRef) -> None:
        self.placements.hold_again(node_id, request, ref)

    def resources(self) -> list[dict[str, Any]]:
        return self.placements.report()

    def waiting(self) -> list[dict[str, Any]]:
        """Spawns waiting for room (``placement_timeout``): what, the requests, since when, and why."""
        return list(self.placements.waiting.values())

    def register_group(self, group_id: str, refs: list[ActorRef]) -> None:
        self.placements.groups[group_id] = list(refs)

    def member_again(self, group_id: str, size: int, rank: int, ref: ActorRef) -> None:
        """A restarted seed learns a group's members again, one by one, from their nodes."""
        members = self.placements.groups.setdefault(group_id, [None] * int(size))  # type: ignore[list-item]
        if 0 <= rank < len(members):
            members[rank] = ref

    def group_members(self, group_id: str) -> list[ActorRef | None]:
        members = self.placements.groups.get(group_id)
        if members is None:
            raise ActorNotFoundError(f"no group {group_id!r} (it was stopped, or the seed restarted)")
        return list(members)

    def forget_group(self, group_id: str) -> None:
        self.placements.groups.pop(group_id, None)

    def restart_log(self) -> list[dict[str, Any]]:
        return list(self.restarts)

    def _drop(self, node_id: str, why: str = "lost") -> None:
        member = self._members.pop(node_id, None)
        if member is None:
            return
        if member.get("role") != "client" and not self._host.closing:
            self._event(why, member["address"], f"{member.get('role')} {node_id}")
            log.log(logging.WARNING if why == "lost" and member.get("role") == "worker" else logging.INFO,
                    "%s %s %s (%s)", member.get("role"), member["address"],
                    "was lost" if why == "lost" else "left", node_id)
        for name in [n for n, r in self._names.items() if r.node_id == node_id]:
            del self._names[name]
        self.placements.node_gone(node_id)
        self._broadcast()
        orphans = [(key, spec) for key, spec in self._supervised.items() if key[0] == node_id]
        for key, spec in orphans:
            del self._supervised[key]
            self._host.spawn_bg(self._restart(spec, lost_node=node_id))

    def _restart_target(self, spec: "_Spec", lost_node: str) -> tuple[dict[str, Any], int | None] | str:
        """Where a lost supervised actor is built again, and the hold placed for it: by the same resource
        request if it made one, else the live worker with the fewest supervised actors. A reason if none."""
        candidates = [m for m in self.members() if m["role"] == "worker" and m["node_id"] != lost_node]
        if not candidates:
            return "no live worker node"
        if "resources" in spec.placement:
            got = self.placements.ledger.reserve([spec.placement["resources"]], "spread", self._host.node_id)
            if isinstance(got, Infeasible):
                return got.reason
            hold = got[0]
            return next(m for m in candidates if m["node_id"] == hold.node_id), hold.hold_id
        load = {m["node_id"]: 0 for m in candidates}
        for (nid, _), _s in self._supervised.items():
            if nid in load:
                load[nid] += 1
        # ties go to nodes other than the seed, which already carries the registry
        return min(candidates, key=lambda m: (load[m["node_id"]], m["node_id"] == self._host.node_id)), None

    async def _restart(self, spec: "_Spec", lost_node: str) -> None:
        """Build a supervised actor again (constructor rerun, state lost) on a live worker node."""
        what = spec.name or spec.cls.__qualname__
        chosen = self._restart_target(spec, lost_node)
        if isinstance(chosen, str):
            self.restarts.append({"name": spec.name, "error": chosen})
            self._event("restart_failed", "", f"{what}: {chosen}")
            return
        target, hold = chosen
        placement = dict(spec.placement, hold=hold, node=target["node_id"])
        try:
            ref = await self._service(target).spawn(spec.cls, spec.args, spec.kwargs, spec.name,
                                                    spec.restarts_left - 1, spec.process, (), spec.restarts + 1,
                                                    placement)
            group = spec.placement.get("group")
            self.placements.restarted(getattr(group, "group_id", None), spec.placement.get("rank"), ref)
            self.restarts.append({"name": spec.name, "node": target["address"], "actor_id": ref.actor_id,
                                  "restarts_left": spec.restarts_left - 1})
            self._event("restart", target["address"], f"{what} as #{ref.actor_id} (lost with {lost_node})")
        except DistoError as e:
            if hold is not None:
                self.placements.release([hold])
            self.restarts.append({"name": spec.name, "error": f"{type(e).__name__}: {e}"})
            self._event("restart_failed", target["address"], f"{what}: {type(e).__name__}: {e}")

    def _peer_lost(self, node_id: str, _address: str, goodbye: bool = False) -> None:
        self._drop(node_id, "leave" if goodbye else "lost")
