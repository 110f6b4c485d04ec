"""A cluster of node processes on this host, started and torn down by the driver: :class:`LocalCluster`."""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from ..errors import DistoError
from ..node import Node, NodeConfig
from ..node.preloads import heavy_imports
from ..node.process import end_process, start_node_process
from ..placement import check_resources, visible_gpus
from .cluster import Cluster
from .token import new_token

log = logging.getLogger("disto.cluster")


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def node_threads(nodes: int, threads: int | None, env: dict[str, str]) -> int | None:
    """The intra-op threads a LocalCluster gives each node process, or None to leave its environment alone (the
    user set ``OMP_NUM_THREADS``). ``threads``: what the user asked for, checked here."""
    if threads is not None:
        if type(threads) is not int or threads < 1:
            raise ValueError(f"threads_per_node must be an int >= 1, got {threads!r}")
        given = [v for v in THREAD_VARS if v in env]
        if given:
            raise ValueError(f"threads_per_node={threads} and env={{{given[0]!r}: ...}} both set the nodes' threads: "
                             "give one")
        return threads
    if "OMP_NUM_THREADS" in env or "OMP_NUM_THREADS" in os.environ:
        return None
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // (nodes + 1))  # the nodes and this driver share the host


class LocalCluster:
    """``async with disto.LocalCluster(nodes=2) as cluster``: start ``nodes`` node processes on this host with a
    fresh random token (node 0 is the seed), join them from this process, and tear them all down on exit.

    ``dashboard="127.0.0.1:0"``: the seed serves the live dashboard and ``/metrics`` there (port 0: any free
    one); ``cluster.dashboard_url`` is its address and ``cluster.dashboard_link`` a link that carries the token.
    What the actors print reaches this process's stdout, tagged with the actor (``log_to_driver=False``: it
    stays in the nodes, for ``cluster.logs``).

    ``resources``: what the nodes offer to placement (``spawn(..., resources=)``), one dict for every node or a
    list with one per node (``[{"gpu": 2}, {"ps": 1}]``), on top of what each detects (cpu, gpu, memory).
    ``gpus_per_node=k``: one node per ``k`` of the GPUs this process sees, each seeing exactly its own
    (``CUDA_VISIBLE_DEVICES``) and advertising them; ``nodes`` then defaults to as many as there are.

    ``threads_per_node``: the intra-op threads of each node process (OpenMP and MKL: torch, numpy, Faiss), set
    through ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` in its environment. By default, unless this process's
    environment or ``env`` sets ``OMP_NUM_THREADS`` already, the CPUs this process may use are split between the
    nodes and this driver (at least one each): every process on one host sizing its thread pool to all the cores
    oversubscribes them, and OpenMP threads that spin-wait then stall the others (torchrun sets 1 for the same
    reason). An actor can still call ``torch.set_num_threads``."""

    def __init__(self, nodes: int | None = None, *, host: str = "127.0.0.1", token: str | None = None,
                 startup_timeout: float = 30.0, config: NodeConfig | None = None,
                 env: dict[str, str] | None = None, python: str | None = None, dashboard: str | None = None,
                 log_to_driver: bool = True, resources: dict[str, float] | list[dict[str, float]] | None = None,
                 gpus_per_node: int | None = None, threads_per_node: int | None = None) -> None:
        self.gpu_sets = self._gpu_sets(nodes, gpus_per_node)
        if nodes is None:
            nodes = len(self.gpu_sets) if self.gpu_sets else 2
        if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
            raise ValueError(f"nodes must be an int >= 1, got {nodes!r}")
        if isinstance(resources, list):
            if len(resources) != nodes:
                raise ValueError(f"resources has {len(resources)} entries for {nodes} nodes: give one per node, or "
                                 "one dict for all")
            self.resources = [check_resources(r) for r in resources]
        else:
            self.resources = [check_resources(resources or {})] * nodes
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
        self.threads_per_node = node_threads(nodes, threads_per_node, self.env)
        # asked for: both variables; by default only those the user has not set (an MKL_NUM_THREADS of theirs stays)
        self._thread_vars = THREAD_VARS if threads_per_node is not None else tuple(
            v for v in THREAD_VARS if v not in self.env and v not in os.environ)
        self.python = python or sys.executable
        self.procs: list[asyncio.subprocess.Process] = []
        self.cluster: Cluster | None = None

    @staticmethod
    def _gpu_sets(nodes: int | None, per_node: int | None) -> list[list[str]]:
        if per_node is None:
            return []
        if type(per_node) is not int or per_node < 1:
            raise ValueError(f"gpus_per_node must be an int >= 1, got {per_node!r}")
        gpus = visible_gpus()
        if len(gpus) < per_node:
            raise DistoError(f"gpus_per_node={per_node} needs at least {per_node} GPUs; this process sees "
                             f"{len(gpus)} (CUDA_VISIBLE_DEVICES, or the NVIDIA driver's list)")
        n = len(gpus) // per_node if nodes is None else nodes
        if isinstance(n, int) and n * per_node > len(gpus):
            raise DistoError(f"{n} nodes x {per_node} GPUs need {n * per_node}; this process sees {len(gpus)}")
        return [gpus[i * per_node:(i + 1) * per_node] for i in range(n if isinstance(n, int) else 0)]

    async def _start_node(self, index: int, seed: str | None) -> tuple[asyncio.subprocess.Process, str]:
        preload = heavy_imports()  # what the driver imported: the nodes import it while the cluster comes up
        extra = ["--log-level", "warning"]  # the driver's terminal: no lifecycle lines from every node
        if self.resources[index]:
            extra += ["--resources", ",".join(f"{k}={v!r}" for k, v in self.resources[index].items())]
        env = dict(self.env)
        if self.threads_per_node is not None:
            env.update(dict.fromkeys(self._thread_vars, str(self.threads_per_node)))
        if self.gpu_sets:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpu_sets[index])
        if preload:
            extra += ["--preload", ",".join(preload)]
        if seed is None and self.dashboard:
            extra += ["--dashboard", self.dashboard]
        proc, address, rest = await start_node_process(listen=f"{self.host}:0", seed=seed, token=self.token,
                                                       config=self.config, env=env, python=self.python,
                                                       startup_timeout=self.startup_timeout, extra=tuple(extra))
        self.procs[index] = proc
        if seed is None and self.dashboard and len(rest) > 1:
            self.dashboard_url = rest[1]
        return proc, address

    async def __aenter__(self) -> Cluster:
        try:
            self.procs = [None] * self.n  # type: ignore[list-item]  # by index: node i is cluster.nodes[i]
            _, seed = await self._start_node(0, None)
            if self.n > 1:
                await asyncio.gather(*(self._start_node(i, seed) for i in range(1, self.n)))
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
        try:
            if self.cluster is not None:
                # each node answers, then stops; errors here only mean it is already gone
                try:
                    await asyncio.wait_for(
                        asyncio.gather(*(h.shutdown() for h in self.cluster.nodes), return_exceptions=True), 5.0)
                except asyncio.TimeoutError:
                    log.warning("nodes did not answer shutdown within 5 s (frozen or overloaded): ending them")
                await self.cluster.close()
        finally:
            # whatever happened above (a frozen node, a second Ctrl-C), no node process is left behind: all at
            # once (a node first waits up to 5 s for its own process=True children: wait longer), so the
            # teardown is bounded by one node's time, not the sum over nodes
            await asyncio.gather(*(end_process(p, 10.0, log) for p in self.procs if p is not None))
            self.procs.clear()
