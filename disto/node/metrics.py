"""What a node counts about its actors' calls, cheaply enough to stay on: per actor and method, calls by outcome
and a latency histogram, kept as plain integers on the hot path. Nothing here knows Prometheus: the dashboard
turns :meth:`NodeMetrics.snapshot` into metric families when it is scraped (disto/dashboard/prom.py)."""
from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any, Callable

# upper bounds (seconds) of the latency buckets, as Prometheus ``le`` labels; one more bucket for +Inf
BOUNDS: tuple[float, ...] = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                             0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OK, ERROR, CANCELLED = 0, 1, 2
OUTCOMES = ("ok", "error", "cancelled")


class MethodStats:
    __slots__ = ("counts", "buckets", "sum")

    def __init__(self) -> None:
        self.counts = [0, 0, 0]                 # by outcome: ok, error, cancelled
        self.buckets = [0] * (len(BOUNDS) + 1)  # not cumulative; the last one is +Inf
        self.sum = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(zip(OUTCOMES, self.counts)), "buckets": list(self.buckets), "sum": self.sum}


class ActorStats:
    """One actor's figures. ``observe`` is called once per finished call, on the loop."""

    __slots__ = ("methods", "started")

    def __init__(self) -> None:
        self.methods: dict[str, MethodStats] = {}
        self.started = time.time()

    def observe(self, method: str, seconds: float, outcome: int) -> None:
        m = self.methods.get(method)
        if m is None:
            m = self.methods[method] = MethodStats()
        m.counts[outcome] += 1
        m.sum += seconds
        m.buckets[bisect_left(BOUNDS, seconds)] += 1

    def counting(self, reply: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        """``reply`` (called with a call and its value) that first counts the call as ok, with its latency since
        ``call.t0``: :meth:`observe` inlined, as this runs for every call answered."""
        methods = self.methods
        observe = self.observe
        clock = time.perf_counter

        def counted(item: Any, value: Any) -> None:
            seconds = clock() - item.t0
            m = methods.get(item.method)
            if m is None:
                observe(item.method, seconds, OK)
            else:
                m.counts[0] += 1  # OK
                m.sum += seconds
                m.buckets[bisect_left(BOUNDS, seconds)] += 1
            reply(item, value)
        return counted

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: m.to_dict() for name, m in self.methods.items()}


class NodeMetrics:
    """The per-actor figures of one node. ``enabled=False`` (``NodeConfig.metrics``) hands out no stats: the
    calls are then not counted at all (the baseline the benchmark compares against)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.actors: dict[int, ActorStats] = {}
        self.restarts = 0  # actors of this node that were built again after their node was lost

    def for_actor(self, actor_id: int) -> ActorStats | None:
        if not self.enabled:
            return None
        stats = self.actors.get(actor_id)
        if stats is None:
            stats = self.actors[actor_id] = ActorStats()
        return stats

    def forget(self, actor_id: int) -> None:
        self.actors.pop(actor_id, None)
