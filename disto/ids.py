"""Identifiers: node ids, host identity, address parsing."""
from __future__ import annotations

import os
import secrets


def new_node_id() -> str:
    return secrets.token_hex(8)


def host_id() -> str:
    """Same value in two processes iff they share a kernel boot and a pid namespace (so shared memory and CUDA IPC
    between them can work)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "unknown-boot"
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = "unknown-pidns"
    return f"{boot}/{pidns}"


def parse_address(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port). Raises ValueError with the address in the message."""
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(f"address must look like HOST:PORT, got {address!r}")
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"bad port in address {address!r}") from None
    if not 0 <= p <= 65535 or not host:
        raise ValueError(f"bad address {address!r}")
    return host, p


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
