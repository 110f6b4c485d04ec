"""disto: a distributed runtime for ML research. Actors and futures over an authenticated Thrift wire.

Everything public is re-exported here; the submodules are implementation detail. The layers, bottom up (imports
only point down; tests/test_layers.py checks it):

    errors, ids                       leaves: the exception hierarchy, node ids and addresses
    wire/  liveness/  memory/         sans-IO protocol; pure failure detection; shared-memory segments;
    placement/                        where actors go: node resources, the pure placement decision, the ledger
    serialization/                    payloads: pickling, out-of-band buffers, placement, shm export/import
    transport/                        asyncio channel, UDP heartbeat thread, TLS
    streams, futures, loop            Stream (a generator method's items); Future and combinators; disto.run
    actor/                            Actor, refs, mailbox, the current-node context
    node/                             the Node (a composition root) and its parts, the system actors
    cluster/                          connect(), LocalCluster, tokens, looking inside (actors, stacks, logs)
    dashboard/                        the live dashboard and /metrics (aiohttp, prometheus_client)
    cli, launch                       the `disto` command; `python -m disto.launch`
"""
from . import native

native.install()  # before the rest: which modules load compiled (DISTO_PURE_PYTHON, a stale build)

from .actor import Actor, ActorGroup, ActorRef, MethodRef, current_node, on_loop
from .cluster import Cluster, LocalCluster, NodeHandle, connect, format_stacks, new_token, write_token_file
from .errors import (ActorDeadError, ActorError, ActorNotFoundError, AuthenticationError, ClosedError, DistoError,
                     LocalProtocolError, NameTakenError, NodeLostError, PlacementError, ProtocolError, RemoteError,
                     RemoteProtocolError, SerializationError, TimeoutError)
from .futures import Future, collect, collect_all, collect_any, window, within
from .streams import Stream
from .loop import run
from .node import Node, NodeConfig, shared_array, shared_tensor, transfer
from .serialization import DEVICE_MAP
from .version import __version__


__all__ = [
    "Actor", "ActorGroup", "ActorRef", "MethodRef", "current_node", "on_loop",
    "Cluster", "LocalCluster", "NodeHandle", "connect", "Node", "NodeConfig", "transfer",
    "shared_array", "shared_tensor", "DEVICE_MAP",
    "Future", "Stream", "collect", "collect_all", "collect_any", "window", "within",
    "run", "new_token", "write_token_file", "format_stacks", "__version__",
    "DistoError", "ProtocolError", "LocalProtocolError", "RemoteProtocolError", "AuthenticationError",
    "SerializationError", "ClosedError", "NodeLostError", "ActorError", "ActorNotFoundError", "ActorDeadError",
    "NameTakenError", "PlacementError", "RemoteError", "TimeoutError",
]
