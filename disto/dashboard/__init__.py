"""The live dashboard and the cluster's /metrics: a small aiohttp server in one node of the cluster that gathers
every node's state on request and serves it as a web page, JSON and the Prometheus text format."""
from .collect import cluster_snapshot
from .prom import render_metrics
from .server import Dashboard

__all__ = ["Dashboard", "cluster_snapshot", "render_metrics"]
