"""The node: one process's runtime (:class:`Node`, a composition root) and its parts, each owning one concern:
peers, outbound and inbound calls, the actor table, replies, liveness, membership, shared-memory buffers, and
the two system actors (the node service and, on the seed, the registry)."""
from .config import NodeConfig, transfer
from .node import Node
from .shared import shared_array, shared_tensor

__all__ = ["Node", "NodeConfig", "transfer", "shared_array", "shared_tensor"]
