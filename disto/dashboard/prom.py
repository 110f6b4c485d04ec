"""The cluster's state in the Prometheus text format, with ``prometheus_client``: a collector that turns one
snapshot (collect.py) into metric families, every series labelled with its ``node`` (the node's address).

Nodes count with plain integers on their hot path (node/metrics.py) and the families are built here, at scrape
time: a Counter object per call site would cost more than the calls it counts."""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..node.metrics import BOUNDS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def actor_label(actor: dict[str, Any]) -> str:
    """How an actor is named in the labels: its name, or Class#id for an unnamed one."""
    return actor.get("name") or f"{actor.get('class')}#{actor.get('id')}"


def families(snap: dict[str, Any]) -> list[Metric]:
    calls = CounterMetricFamily("disto_calls", "Calls an actor finished, by outcome (ok, error, cancelled)",
                                labels=["node", "actor", "method", "outcome"])
    latency = HistogramMetricFamily("disto_call_duration_seconds",
                                    "Time from a call's arrival at the actor's node to its answer",
                                    labels=["node", "actor", "method"])
    depth = GaugeMetricFamily("disto_mailbox_depth", "Calls queued for an actor, not started",
                              labels=["node", "actor"])
    running = GaugeMetricFamily("disto_calls_in_flight", "Calls an actor is running now", labels=["node", "actor"])
    oldest = GaugeMetricFamily("disto_call_oldest_in_flight_seconds",
                               "Age of the oldest call an actor is running (0 when idle)", labels=["node", "actor"])
    restarts = GaugeMetricFamily("disto_actor_restarts", "Times an actor was built again after its node was lost",
                                 labels=["node", "actor"])
    up = GaugeMetricFamily("disto_node_up", "1 if the node answered this scrape", labels=["node", "role"])
    rss = GaugeMetricFamily("disto_node_rss_bytes", "Resident memory of the node's process", labels=["node"])
    fds = GaugeMetricFamily("disto_node_open_fds", "Open file descriptors of the node's process", labels=["node"])
    tasks = GaugeMetricFamily("disto_node_asyncio_tasks", "asyncio tasks of the node's process", labels=["node"])
    pending = GaugeMetricFamily("disto_node_pending_calls", "Calls this node made that await their answer",
                                labels=["node"])
    actors = GaugeMetricFamily("disto_node_actors", "Actors on the node", labels=["node"])
    shm = GaugeMetricFamily("disto_shm_segments", "Shared-memory segments of the node's pool, by state "
                            "(segments: all; free: kept for reuse; leased: lent to peers)", labels=["node", "state"])
    pool = GaugeMetricFamily("disto_buffer_pool_bytes", "Receive buffers of the node (bytes: all kept; "
                             "in_use: held by values)", labels=["node", "state"])
    node_restarts = CounterMetricFamily("disto_node_restarted_actors", "Supervised actors rebuilt on this node",
                                        labels=["node"])
    peer_bytes = CounterMetricFamily("disto_peer_bytes", "Bytes exchanged with a peer, by route and direction",
                                     labels=["node", "peer", "route", "direction"])
    heartbeat = GaugeMetricFamily("disto_peer_heartbeat_age_seconds", "Time since anything was heard from a peer",
                                  labels=["node", "peer"])
    events = CounterMetricFamily("disto_cluster_events", "Joins, departures, losses and restarts the seed saw",
                                 labels=["kind"])
    for info in snap["nodes"]:
        node = info["address"]
        up.add_metric([node, str(info.get("role"))], 0 if "error" in info else 1)
        if "error" in info:
            continue
        for a in info["actors"]:
            label = actor_label(a)
            depth.add_metric([node, label], a["queued"])
            running.add_metric([node, label], len(a["running"]))
            oldest.add_metric([node, label], max((c["age"] for c in a["running"]), default=0.0))
            restarts.add_metric([node, label], a.get("restarts", 0))
            for method, m in a.get("methods", {}).items():
                for outcome, n in m["counts"].items():
                    calls.add_metric([node, label, method, outcome], n)
                cumulative, buckets = 0, []
                for bound, n in zip((*BOUNDS, float("inf")), m["buckets"]):
                    cumulative += n
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                latency.add_metric([node, label, method], buckets, m["sum"])
        proc = info.get("process", {})
        for family, key in ((rss, "rss_bytes"), (fds, "open_fds"), (tasks, "tasks")):
            if key in proc:
                family.add_metric([node], proc[key])
        pending.add_metric([node], info.get("pending_calls", 0))
        actors.add_metric([node], len(info["actors"]))
        node_restarts.add_metric([node], info.get("restarts", 0))
        for state in ("segments", "free", "leased"):
            shm.add_metric([node, state], info.get("shm", {}).get(state, 0))
        for state in ("bytes", "in_use"):
            pool.add_metric([node, state], info.get("buffer_pool", {}).get(state, 0))
        for p in info.get("peer_stats", []):
            peer = p["address"]
            heartbeat.add_metric([node, peer], p["heartbeat_age"])
            b = p["bytes"]
            for route, direction, key in (("tcp", "in", "tcp_in"), ("tcp", "out", "tcp_out"),
                                          ("shm", "out", "shm_out"), ("cuda", "out", "cuda_out")):
                peer_bytes.add_metric([node, peer, route, direction], b.get(key, 0))
    total = GaugeMetricFamily("disto_node_resource", "What a worker node offers to placement, by resource "
                              "(cpu, gpu, memory in bytes, custom labels)", labels=["node", "resource"])
    free = GaugeMetricFamily("disto_node_resource_free", "What a worker node has not held for placed actors",
                             labels=["node", "resource"])
    for r in snap.get("resources", []):
        for name, amount in sorted(r["total"].items()):
            total.add_metric([r["address"], name], amount)
            free.add_metric([r["address"], name], r["free"].get(name, 0.0))
    kinds: dict[str, int] = {}
    for e in snap.get("timeline", []):
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    for kind, n in sorted(kinds.items()):
        events.add_metric([kind], n)
    return [calls, latency, depth, running, oldest, restarts, up, rss, fds, tasks, pending, actors, shm, pool,
            node_restarts, peer_bytes, heartbeat, events, total, free]


class _Snapshot:
    def __init__(self, snap: dict[str, Any]) -> None:
        self._snap = snap

    def collect(self) -> Iterator[Metric]:
        yield from families(self._snap)


def render_metrics(snap: dict[str, Any]) -> bytes:
    """The Prometheus text exposition of one cluster snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(snap))
    return generate_latest(registry)
