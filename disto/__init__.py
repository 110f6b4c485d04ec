"""disto: a distributed runtime for ML research. Actors and futures over an authenticated Thrift wire.

Everything public is re-exported here; submodules are implementation detail.
"""
from ._errors import (ActorDeadError, ActorError, ActorNotFoundError, AuthenticationError, ClosedError, DistoError,
                      LocalProtocolError, NameTakenError, NodeLostError, ProtocolError, RemoteError,
                      RemoteProtocolError, SerializationError, TimeoutError)
from ._runner import run
from ._token import new_token, write_token_file
from .actor import Actor, ActorRef, MethodRef, current_node
from .cluster import Cluster, LocalCluster, NodeHandle, connect
from .futures import Future, collect, collect_all, collect_any, window, within
from .node import Node, NodeConfig, transfer
from .serialization import DEVICE_MAP
from .shared import shared_array, shared_tensor

__version__ = "0.1.0"

__all__ = [
    "Actor", "ActorRef", "MethodRef", "current_node",
    "Cluster", "LocalCluster", "NodeHandle", "connect", "Node", "NodeConfig", "transfer",
    "shared_array", "shared_tensor", "DEVICE_MAP",
    "Future", "collect", "collect_all", "collect_any", "window", "within",
    "run", "new_token", "write_token_file",
    "DistoError", "ProtocolError", "LocalProtocolError", "RemoteProtocolError", "AuthenticationError",
    "SerializationError", "ClosedError", "NodeLostError", "ActorError", "ActorNotFoundError", "ActorDeadError",
    "NameTakenError", "RemoteError", "TimeoutError",
]
