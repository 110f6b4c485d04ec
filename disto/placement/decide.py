"""Where requests go: a pure function from nodes (what each has free) and requests (what each actor needs) to
one node per request, or the reason none fits.

Strategies, for several requests at once (a group) and for one request among several fitting nodes:
  ``spread`` (default): each request on the fitting node that got the fewest of this batch so far, then the one
  holding the fewest actors, then the one with the most of the requested resources free: a group lands on as
  many nodes as possible (fault isolation, bandwidth).
  ``pack``: onto the nodes this batch already uses first, then the fullest node that still fits (best fit): a
  group lands on as few nodes as possible (locality), leaving whole nodes free for larger requests.
A batch is all or nothing: either every request gets a node, or none does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .resources import format_resources

STRATEGIES = ("spread", "pack")
EPS = 1e-9


@dataclass(frozen=True)
class NodeRoom:
    """One node as placement sees it: its totals, what is free now, and how many placed actors it holds."""

    node_id: str
    address: str
    total: Mapping[str, float]
    free: Mapping[str, float]
    load: int = 0


@dataclass(frozen=True)
class Infeasible:
    """No placement: ``reason`` says what was asked and what each node has free; ``never`` when no node could
    take a request even with nothing held (waiting will not help unless a bigger node joins)."""

    reason: str
    never: bool = False
    free: dict[str, dict[str, float]] = field(default_factory=dict)


def _fits(free: Mapping[str, float], request: Mapping[str, float]) -> bool:
    return all(free.get(k, 0.0) + EPS >= v for k, v in request.items())


def _copies(free: Mapping[str, float], request: Mapping[str, float]) -> float:
    """How many copies of ``request`` fit in ``free``."""
    return min((free.get(k, 0.0) + EPS) // v for k, v in request.items()) if request else float("inf")


def _room_score(node: NodeRoom, free: Mapping[str, float], request: Mapping[str, float]) -> float:
    """How much of what ``request`` names is free on ``node``, as a fraction of its totals (0..len(request))."""
    return sum(free.get(k, 0.0) / node.total[k] for k in request if node.total.get(k, 0.0) > 0)


def _greedy(nodes: Sequence[NodeRoom], requests: Sequence[Mapping[str, float]], order: Sequence[int],
            strategy: str) -> list[str] | None:
    free = {n.node_id: dict(n.free) for n in nodes}
    used = {n.node_id: 0 for n in nodes}
    choice: list[str] = [""] * len(requests)
    for pos, i in enumerate(order):
        request = requests[i]
        fitting = [(j, n) for j, n in enumerate(nodes) if _fits(free[n.node_id], request)]
        if not fitting:
            return None
        if strategy == "spread":
            _, best = min(fitting, key=lambda jn: (used[jn[1].node_id], jn[1].load,
                                                   -_room_score(jn[1], free[jn[1].node_id], request), jn[0]))
        else:  # the nodes already used, then the one that takes most of what is left, then the fullest
            left = len(order) - pos
            _, best = min(fitting, key=lambda jn: (used[jn[1].node_id] == 0,
                                                   -min(_copies(free[jn[1].node_id], request), left),
                                                   _room_score(jn[1], free[jn[1].node_id], request), jn[0]))
        for k, v in request.items():
            free[best.node_id][k] = free[best.node_id].get(k, 0.0) - v
        used[best.node_id] += 1
        choice[i] = best.node_id
    return choice


def _size(request: Mapping[str, float]) -> float:
    return sum(request.values())


def describe_request(requests: Sequence[Mapping[str, float]]) -> str:
    """``3 x gpu=1`` for a uniform batch, else each one."""
    texts = [format_resources(r) for r in requests]
    if len(set(texts)) == 1:
        return f"{len(texts)} x {texts[0]}" if len(texts) > 1 else texts[0]
    return ", ".join(texts)


def check_strategy(strategy: object) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}")
    return strategy  # type: ignore[return-value]


def check_timeout(timeout: object) -> float | None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"placement_timeout must be a number of seconds >= 0, got {timeout!r}")
    return timeout  # type: ignore[return-value]


def place(nodes: Sequence[NodeRoom], requests: Sequence[Mapping[str, float]],
          strategy: str = "spread") -> list[str] | Infeasible:
    """One node id per request (in request order), or :class:`Infeasible`. ``nodes`` in a stable order (ties
    go to the earlier one)."""
    check_strategy(strategy)
    if not requests:
        return []
    free = {n.address: dict(n.free) for n in nodes}
    if not nodes:
        return Infeasible(f"cannot place {describe_request(requests)}: the cluster has no worker nodes", True, {})
    # in request order first (what the caller expects to see), then largest first (first-fit decreasing)
    for order in (range(len(requests)), sorted(range(len(requests)), key=lambda i: -_size(requests[i]))):
        choice = _greedy(nodes, requests, list(order), strategy)
        if choice is not None:
            return choice
    never = _greedy([NodeRoom(n.node_id, n.address, n.total, n.total) for n in nodes], requests,
                    sorted(range(len(requests)), key=lambda i: -_size(requests[i])), strategy) is None
    names = sorted({k for r in requests for k in r})
    missing = [k for k in names if all(n.total.get(k, 0.0) <= 0 for n in nodes)]
    why = (f"no node has {', '.join(map(repr, missing))}" if missing
           else "more than the cluster has in total" if never else "not enough free now")
    rooms = "; ".join(f"{n.address} {format_resources({k: n.free.get(k, 0.0) for k in names})} free "
                      f"(of {format_resources({k: n.total.get(k, 0.0) for k in names})})" for n in nodes)
    return Infeasible(f"cannot place {describe_request(requests)} (strategy {strategy}): {why}. Nodes: {rooms}",
                      never, free)
