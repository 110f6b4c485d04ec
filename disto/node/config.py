"""A node's settings, its identity as its parts see it, and the ``disto.transfer`` context."""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import AuthenticationError
from ..serialization.placement import MODES

MIN_TOKEN_BYTES = 16


@dataclass
class NodeConfig:
    """Tunables. The defaults suit a research cluster on a LAN or one host."""

    max_inflight: int = 1024        # calls awaiting a reply per connection; more wait on the caller's side
    max_queued: int = 4096          # calls received per connection and not finished before we stop reading
    max_body: int = 16 << 20        # largest Thrift message body
    max_frame: int = 16 << 30       # largest out-of-band payload of one frame
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    pool_bytes: int = 1 << 30       # free receive blocks kept for reuse
    transfer: str = "auto"          # "auto", "tcp" (always bytes on the socket) or "shm" (see disto.transfer)
    shm_min: int = 1 << 16          # CPU buffers this big go through shared memory to peers on this host
    shm_pool_bytes: int = 2 << 30   # free shared-memory segments kept for reuse
    heartbeat_interval: float = 0.5  # each side of a connection sends a heartbeat this often
    failure_timeout: float = 2.5    # a peer silent this long is declared lost (frozen, cut off, or overloaded)
    stream_window: int = 32         # items a generator method may send ahead of what its caller has consumed
    # count calls per actor and method (outcome, latency) for /metrics; DISTO_METRICS=0 turns it off
    metrics: bool = field(default_factory=lambda: os.environ.get("DISTO_METRICS", "1") != "0")
    # what this node offers to placement (spawn(..., resources=)): name -> amount, on top of the defaults it
    # detects (cpu: its affinity mask, gpu: the CUDA devices it sees, memory: bytes); custom names are labels
    resources: dict[str, float] | None = None
    # mutual TLS on every TCP connection: this node's certificate and key, and the cluster CA that signs every
    # node's (all three, or none). With tls_check_hostname a node's certificate must name its listen address.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_check_hostname: bool = True

    def __post_init__(self) -> None:
        # counts and sizes: the compiled channel and connection keep these as C integers, so a float or a bool
        # would fail deep inside a connection; refuse it here, by name, the same with or without the build
        for name in ("max_inflight", "max_queued", "max_body", "max_frame", "stream_window"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"NodeConfig.{name} must be an int >= 1, got {value!r}")


@dataclass
class Here:
    """This node as its parts see it: its id, its listen address once bound, and whether it is stopping."""

    node_id: str
    role: str
    address: str = ""
    closing: bool = False


transfer_mode: contextvars.ContextVar[str | None] = contextvars.ContextVar("disto_transfer", default=None)


@contextlib.contextmanager
def transfer(mode: str) -> Iterator[None]:
    """Force how buffers of the calls made inside the block travel: "tcp" (bytes on the socket), "shm" (shared
    memory to peers on this host, whatever the size) or "auto" (the placement policy)."""
    if mode not in MODES:
        raise ValueError(f"transfer mode must be 'auto', 'tcp' or 'shm', not {mode!r}")
    token = transfer_mode.set(mode)
    try:
        yield
    finally:
        transfer_mode.reset(token)


def normalize_token(token: Any) -> bytes:
    if token is None:
        raise AuthenticationError("a cluster token is required (argument, DISTO_TOKEN or a token file)")
    raw = token.encode() if isinstance(token, str) else bytes(token)
    if len(raw) < MIN_TOKEN_BYTES:
        raise AuthenticationError(f"the cluster token must be at least {MIN_TOKEN_BYTES} bytes")
    return raw
