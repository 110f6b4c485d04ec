"""A node's membership: joining the seed's member list, following its changes, and joining again when the
connection to the seed is lost (the seed drops a member whose connection it loses)."""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable, Coroutine

from ..actor import ActorRef
from ..errors import DistoError
from ..transport import Channel
from .config import Here

log = logging.getLogger("disto.node")
REJOIN_FIRST = 0.2  # seconds before the first attempt to join again; doubling up to REJOIN_MAX
REJOIN_MAX = 2.0


class Membership:
    def __init__(self, here: Here, seed: str | None, registry: ActorRef, host_id: str,
                 on_back: Callable[[str], None], spawn: Callable[[Any], asyncio.Task],
                 on_rejoined: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._on_rejoined = on_rejoined  # after joining a seed again: re-register what it may have forgotten
        self._here = here
        self.seed = seed
        self.registry = registry
        self._host_id = host_id
        self._on_back = on_back  # an address that is a member (again): not lost
        self._spawn = spawn
        self.members: list[dict[str, Any]] = []
        self._rejoining = False
        self.extra: dict[str, Any] = {}  # more for the member list: does it want actor output, its dashboard

    def info(self) -> dict[str, Any]:
        """What this node tells the registry about itself."""
        here = self._here
        return {"node_id": here.node_id, "address": here.address, "role": here.role, "pid": os.getpid(),
                "host_id": self._host_id, **self.extra}

    async def join(self) -> None:
        self.on_members(await self.registry.join(self.info()))

    def on_members(self, members: list[dict[str, Any]]) -> None:
        """The registry's member list changed: nodes that joined again are reachable again."""
        self.members = members
        for m in members:
            self._on_back(m.get("address", ""))

    def on_channel_lost(self, ch: Channel) -> None:
        here = self._here
        if (self.seed is not None and ch.address == self.seed and ch.ready and not here.closing
                and here.role != "client" and not self._rejoining):
            self._rejoining = True
            self._spawn(self._rejoin())

    async def _rejoin(self) -> None:
        """Join again, retrying with backoff until it works or the node stops."""
        try:
            delay = REJOIN_FIRST
            while not self._here.closing:
                await asyncio.sleep(delay)
                try:
                    await self.join()
                    log.info("joined the seed %s again", self.seed)
                    await self._on_rejoined()
                    return
                except DistoError as e:
                    log.debug("rejoin failed: %s", e)
                    delay = min(delay * 2, REJOIN_MAX)
        finally:
            self._rejoining = False
