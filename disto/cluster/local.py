"""A cluster of node processes on this host, started and torn down by the driver: :class:`LocalCluster`."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

from ..errors import DistoError
from ..node import Node, NodeConfig
from ..transport.tls import ENV
from .cluster import Cluster
from .token import new_token

log = logging.getLogger("disto.cluster")


def _child_setup() -> None:
    # die with the parent (a killed test runner must not leave nodes behind)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class LocalCluster:
    """``async with disto.LocalCluster(nodes=2) as cluster``: start ``nodes`` node processes on this host with a
    fresh random token (node 0 is the seed), join them from this process, and tear them all down on exit."""

    def __init__(self, nodes: int = 2, *, host: str = "127.0.0.1", token: str | None = None,
                 startup_timeout: float = 30.0, config: NodeConfig | None = None,
                 env: dict[str, str] | None = None, python: str | None = None) -> None:
        if not isinstance(nodes, int) or nodes < 1:
            raise ValueError(f"nodes must be an int >= 1, got {nodes!r}")
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
        rfd, wfd = os.pipe()
        args = [self.python, "-m", "disto", "node", "start", "--listen", f"{self.host}:0", "--ready-fd", str(wfd)]
        if seed:
            args += ["--seed", seed]
        env = dict(os.environ, **self.env, DISTO_TOKEN=self.token)
        env.pop("DISTO_TOKEN_FILE", None)
        cfg = self.config
        for var in ENV.values():
            env.pop(var, None)  # the nodes use the driver's TLS settings, not whatever this shell had
        if cfg is not None and cfg.tls_cert:  # the nodes use the driver's TLS files (one host, one identity)
            env.update({ENV["cert"]: cfg.tls_cert, ENV["key"]: cfg.tls_key or "", ENV["ca"]: cfg.tls_ca or ""})
            if not cfg.tls_check_hostname:
                args.append("--tls-no-check-hostname")
        try:
            proc = await asyncio.create_subprocess_exec(*args, env=env, pass_fds=(wfd,), stdin=asyncio.subprocess.DEVNULL,
                                                        preexec_fn=_child_setup)
        finally:
            os.close(wfd)
        self.procs.append(proc)
        loop = asyncio.get_running_loop()
        try:
            line = await asyncio.wait_for(loop.run_in_executor(None, _read_line, rfd), self.startup_timeout)
        finally:
            os.close(rfd)
        if not line:
            code = await proc.wait()
            raise DistoError(f"node process exited with code {code} before it was ready (see its stderr above)")
        return proc, line.split()[0]

    async def __aenter__(self) -> Cluster:
        try:
            _, seed = await self._start_node(None)
            if self.n > 1:
                await asyncio.gather(*(self._start_node(seed) for _ in range(self.n - 1)))
            node = Node(self.token, listen=f"{self.host}:0", seed=seed, role="driver", config=self.config)
            await node.start()
            self.cluster = Cluster(node)
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
            try:
                await asyncio.wait_for(p.wait(), 5.0)
            except asyncio.TimeoutError:
                log.warning("node process %d did not exit; killing it", p.pid)
                p.kill()
                await p.wait()
            except ProcessLookupError:
                pass
        self.procs.clear()


def _read_line(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()
