"""Starting a lost worker again by the same placement request, shared by the EA-SGD and low-communication
trainers. Right after a loss the lost node may still be in the member list (the failure detector has not dropped
it yet), or its room not released: those failures are retried with a growing pause."""
from __future__ import annotations

import asyncio
from typing import Any

from disto import ActorDeadError, ActorRef, Cluster, DistoError, NodeLostError, PlacementError

RESPAWN_TRIES = 10


async def respawn(cluster: Cluster, cls: type, *args: Any, rank: int, resources: dict[str, float] | None,
                  strategy: str, tries: int = RESPAWN_TRIES) -> ActorRef:
    """``cluster.spawn(cls, *args, resources=, strategy=)``, retried while nodes are being lost; a DistoError
    naming worker ``rank`` and the last failure when no node took it after ``tries`` attempts."""
    last: Exception | None = None
    for attempt in range(tries):
        try:
            return await cluster.spawn(cls, *args, resources=resources or {}, strategy=strategy)
        except (NodeLostError, ActorDeadError, PlacementError) as e:
            last = e
            await asyncio.sleep(0.1 * (attempt + 1))
    raise DistoError(f"no node could take worker {rank} again: {last}")
