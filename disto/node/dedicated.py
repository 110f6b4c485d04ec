"""Actors in a process of their own (``spawn(..., process=True)``): for an actor whose Python code holds the GIL
(a tight pure-Python loop, a library that never releases it), which would slow every other actor of a shared
node even on its own thread.

The node starts a child node process on its host (``disto node start --dedicated``, joined to the same seed),
spawns the actor there, and returns its ref. The child is a member with role "dedicated": ``cluster.spawn``
never places other actors on it, it stops when its actor is stopped, and it dies with the node that started it.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from ..actor import ActorRef, SystemActor, system_ref
from ..errors import DistoError
from ..ids import parse_address
from .config import Here, NodeConfig
from .preloads import PRELOAD_CANDIDATES
from .process import end_process, start_node_process

log = logging.getLogger("disto.node")


def _log_level() -> str:
    """This node's own log level, for its children (a LocalCluster's nodes log warnings only: so do theirs)."""
    level = logging.getLogger("disto").getEffectiveLevel()
    return next((name for name, n in (("debug", logging.DEBUG), ("info", logging.INFO),
                                      ("warning", logging.WARNING)) if level <= n), "error")


class DedicatedProcesses:
    def __init__(self, here: Here, token: bytes, config: NodeConfig, seed: Callable[[], str]) -> None:
        self._here = here
        self._token = token
        self._config = config
        self._seed = seed
        self.children: dict[str, asyncio.subprocess.Process] = {}  # address -> process

    async def spawn(self, via: Any, cls: type, args: tuple, kwargs: dict, name: str | None, max_restarts: int,
                    preload: tuple[str, ...], placement: dict | None = None) -> ActorRef:
        node_id, address = await self.start(preload)
        service = system_ref(SystemActor.NODE_SERVICE, address, node_id=node_id, via=via)
        try:
            return await service.spawn(cls, args, kwargs, name, max_restarts, False, preload, 0, placement)
        except BaseException:
            proc = self.children.get(address)
            if proc is not None and proc.returncode is None:
                proc.kill()
            raise

    async def start(self, preload: tuple[str, ...]) -> tuple[str, str]:
        """Start a child node process for one actor: its (node id, address), once it has joined the seed."""
        host = parse_address(self._here.address)[0]
        try:
            token = self._token.decode()
        except UnicodeDecodeError:
            raise DistoError("process=True needs a cluster token that is text (UTF-8)") from None
        preload = tuple(m for m in preload if m in PRELOAD_CANDIDATES)  # a peer names them: the known ones only
        extra = ("--dedicated", "--log-level", _log_level()) + (("--preload", ",".join(preload)) if preload else ())
        proc, address, rest = await start_node_process(listen=f"{host}:0", seed=self._seed(), token=token,
                                                       config=self._config, extra=extra)
        self.children[address] = proc
        asyncio.get_running_loop().create_task(self._reap(address, proc))
        return (rest[0] if rest else ""), address

    async def _reap(self, address: str, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        self.children.pop(address, None)

    async def stop_all(self) -> None:
        """The node is stopping: its dedicated children go with it (SIGTERM: they stop their actor in order)."""
        children = list(self.children.values())
        for proc in children:
            try:
                proc.terminate()
            except ProcessLookupError:
                pass
        await asyncio.gather(*(end_process(p, 5.0, log) for p in children))
