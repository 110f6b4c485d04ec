"""What is held where: the seed's book of every node's totals and of the holds placed on them.

A hold is taken when a spawn is placed (:meth:`Ledger.reserve`), bound to the actor once it exists, and given
back when the actor stops, when the node it is counted on is lost, when the actor's own node is lost (an actor
in a process of its own), or when whoever reserved it is lost before binding it. Pure bookkeeping: no clock,
no IO."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .decide import Infeasible, NodeRoom, place

ActorKey = tuple[str, int]  # (node id, actor id)


@dataclass
class Hold:
    hold_id: int
    node_id: str                   # the node whose resources it counts against
    request: dict[str, float]
    owner: str                     # the node that reserved it
    actor: ActorKey | None = None  # once bound


class Ledger:
    def __init__(self) -> None:
        self.nodes: dict[str, tuple[str, dict[str, float]]] = {}  # node id -> (address, totals), in join order
        self.holds: dict[int, Hold] = {}
        self._next = 1

    def add_node(self, node_id: str, address: str, total: Mapping[str, float]) -> None:
        self.nodes[node_id] = (address, dict(total))

    def remove_node(self, node_id: str) -> list[Hold]:
        """The node is gone: what it held, what its actors held, and what it reserved but never bound."""
        self.nodes.pop(node_id, None)
        gone = [h for h in self.holds.values() if h.node_id == node_id
                or (h.actor is not None and h.actor[0] == node_id) or (h.actor is None and h.owner == node_id)]
        for h in gone:
            del self.holds[h.hold_id]
        return gone

    def free(self, node_id: str) -> dict[str, float]:
        free = dict(self.nodes[node_id][1])
        for h in self.holds.values():
            if h.node_id == node_id:
                for k, v in h.request.items():
                    free[k] = free.get(k, 0.0) - v
        return free

    def rooms(self, only: str | None = None) -> list[NodeRoom]:
        load: dict[str, int] = {}
        for h in self.holds.values():
            load[h.node_id] = load.get(h.node_id, 0) + 1
        return [NodeRoom(nid, address, total, self.free(nid), load.get(nid, 0))
                for nid, (address, total) in self.nodes.items() if only is None or nid == only]

    def address(self, node_id: str) -> str:
        return self.nodes[node_id][0]

    def reserve(self, requests: Sequence[Mapping[str, float]], strategy: str, owner: str,
                node_id: str | None = None) -> list[Hold] | Infeasible:
        """Place every request (all or nothing) and hold it; ``node_id``: only on that node."""
        if node_id is not None and node_id not in self.nodes:
            return Infeasible(f"node {node_id} is not a worker of this cluster (or it was lost)", True)
        choice = place(self.rooms(node_id), requests, strategy)
        if isinstance(choice, Infeasible):
            return choice
        holds = []
        for nid, request in zip(choice, requests):
            holds.append(self._add(nid, dict(request), owner, None))
        return holds

    def _add(self, node_id: str, request: dict[str, float], owner: str, actor: ActorKey | None) -> Hold:
        hold = Hold(self._next, node_id, request, owner, actor)
        self._next += 1
        self.holds[hold.hold_id] = hold
        return hold

    def bind(self, hold_id: int, actor: ActorKey) -> bool:
        """The actor now exists; False if the hold was released meanwhile (its node or owner was lost)."""
        hold = self.holds.get(hold_id)
        if hold is None:
            return False
        hold.actor = actor
        return True

    def hold_again(self, node_id: str, request: Mapping[str, float], actor: ActorKey) -> Hold:
        """A restarted seed learns of a hold that already exists (never refused: it is a fact, not a request)."""
        for h in self.holds.values():
            if h.actor == actor:
                return h
        return self._add(node_id, dict(request), node_id, actor)

    def release(self, hold_id: int) -> Hold | None:
        return self.holds.pop(hold_id, None)

    def release_actor(self, actor: ActorKey) -> list[Hold]:
        gone = [h for h in self.holds.values() if h.actor == actor]
        for h in gone:
            del self.holds[h.hold_id]
        return gone

    def report(self) -> list[dict[str, Any]]:
        """Every node: ``node_id``, ``address``, ``total``, ``free`` and ``held`` (how many holds)."""
        return [{"node_id": r.node_id, "address": r.address, "total": dict(r.total), "free": r.free,
                 "held": r.load} for r in self.rooms()]
