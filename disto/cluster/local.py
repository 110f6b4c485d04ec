"""A cluster of node processes on this host, started and torn down by the driver: :class:`LocalCluster`."""
from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from ..errors import DistoError
from ..node import Node, NodeConfig
from ..node.modules import heavy_imports
from ..node.process import end_process, start_node_process
from .cluster import Cluster
from .token import new_token

log = logging.getLogger("disto.cluster")


class LocalCluster:
    """``async with disto.LocalCluster(nodes=2) as cluster``: start ``nodes`` node processes on this host with a
    fresh random token (node 0 is the seed), join them from this process, and tear them all down on exit.

    ``dashboard="127.0.0.1:0"``: the seed serves the live dashboard and ``/metrics`` there (port 0: any free
    one); ``cluster.dashboard_url`` is its address and ``cluster.dashboard_link`` a link that carries the token.
    What the actors print reaches this process's stdout, tagged with the actor (``log_to_driver=False``: it
    stays in the nodes, for ``cluster.logs``)."""

    def __init__(self, nodes: int = 2, *, host: str = "127.0.0.1", token: str | None = None,
                 startup_timeout: float = 30.0, config: NodeConfig | None = None,
                 env: dict[str, str] | None = None, python: str | None = None, dashboard: str | None = None,
                 log_to_driver: bool = True) -> None:
        if not isinstance(nodes, int) or nodes < 1:
            raise ValueError(f"nodes must be an int >= 1, got {nodes!r}")
        if dashboard is not None and (not isinstance(dashboard, str) or ":" not in dashboard):
            raise ValueError(f"dashboard must be 'HOST:PORT' (e.g. '127.0.0.1:0'), got {dashboard!r}")
        self.dashboard = dashboard
        self.log_to_driver = log_to_driver
        self.dashboard_url: str | None = None
        self.n = nodes
        self.host = host
        self.token = token or new_token()
        self.startup_timeout = startup_timeout
        self.config = config
        self.env = env or {}
        self.python = python or sys.executable
        self.procs: list[asyncio.subprocess.Process] = []
        self.cluster: Cluster | None = None

    async def _start_node(self, seed: str | None) -> tuple[asyncio.subprocess.Process, str]:
        preload = heavy_imports()  # what the driver imported: the nodes import it while the cluster comes up
        extra = ["--log-level", "warning"]  # the driver's terminal: no lifecycle lines from every node
        if preload:
            extra += ["--preload", ",".join(preload)]
        if seed is None and self.dashboard:
            extra += ["--dashboard", self.dashboard]
        proc, address, rest = await start_node_process(listen=f"{self.host}:0", seed=seed, token=self.token,
                                                       config=self.config, env=self.env, python=self.python,
                                                       startup_timeout=self.startup_timeout, extra=tuple(extra))
        self.procs.append(proc)
        if seed is None and self.dashboard and len(rest) > 1:
            self.dashboard_url = rest[1]
        return proc, address

    async def __aenter__(self) -> Cluster:
        try:
            _, seed = await self._start_node(None)
            if self.n > 1:
                await asyncio.gather(*(self._start_node(seed) for _ in range(self.n - 1)))
            node = Node(self.token, listen=f"{self.host}:0", seed=seed, role="driver", config=self.config)
            node.wants_output = self.log_to_driver
            await node.start()
            self.cluster = Cluster(node)
            self.cluster.dashboard_url = self.dashboard_url
            await self.cluster.refresh()
            if len(self.cluster.nodes) != self.n:
                raise DistoError(f"expected {self.n} nodes, the seed knows {len(self.cluster.nodes)}")
            # node order follows process order
            by_pid = {h.pid: h for h in self.cluster.nodes}
            self.cluster.nodes = [by_pid[p.pid] for p in self.procs]
            return self.cluster
        except BaseException:
            await self._teardown()
            raise

    async def __aexit__(self, *exc: Any) -> None:
        await self._teardown()

    async def _teardown(self) -> None:
        if self.cluster is not None:
            # each node answers, then stops; errors here only mean it is already gone
            await asyncio.wait_for(
                asyncio.gather(*(h.shutdown() for h in self.cluster.nodes), return_exceptions=True), 5.0)
            await self.cluster.close()
        for p in self.procs:
            await end_process(p, 5.0, log)
        self.procs.clear()
