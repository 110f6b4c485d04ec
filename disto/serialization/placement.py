"""Where a buffer travels, decided per buffer and per destination. Pure: facts in, a route out.

    same process                     -> OBJECT       the object itself (local calls never pickle)
    forced "tcp"                     -> INLINE       bytes on the socket (CUDA: via host memory)
    same host, CUDA tensor           -> CUDA_IPC     an IPC handle; the receiver maps the producer's memory
    same host, already shared memory -> SHM_SHARED   by reference: both sides see the same memory
    same host, at least shm_min      -> SHM          one copy into a pooled shared-memory block (a value)
    otherwise                        -> INLINE       (CUDA: CUDA_VIA_HOST, rebuilt on the receiver's device)
"""
from __future__ import annotations

import enum


class Route(enum.Enum):
    OBJECT = "object"
    INLINE = "inline"
    SHM = "shm"
    SHM_SHARED = "shm_shared"
    CUDA_IPC = "cuda_ipc"
    CUDA_VIA_HOST = "cuda_via_host"


MODES = ("auto", "tcp", "shm")
# (module constants: an Enum member read through its class goes through the metaclass's __getattr__ hook)
_INLINE, _SHM, _SHM_SHARED = Route.INLINE, Route.SHM, Route.SHM_SHARED


def route(*, same_process: bool, same_host: bool, is_cuda: bool, already_shared: bool, size: int,
          mode: str = "auto", shm_min: int = 1 << 16) -> Route:
    """The route of one buffer. ``mode``: "auto" (the table above), "tcp" (always bytes on the socket) or "shm"
    (shared memory for every CPU buffer on the same host, whatever its size)."""
    if mode not in MODES:
        raise ValueError(f"transfer mode must be one of {MODES}, not {mode!r}")
    if same_process:
        return Route.OBJECT
    if mode == "tcp" or not same_host:
        return Route.CUDA_VIA_HOST if is_cuda else Route.INLINE
    if is_cuda:
        return Route.CUDA_IPC
    return route_on_host(already_shared, size, mode, shm_min)


def route_on_host(already_shared: bool, size: int, mode: str, shm_min: int) -> Route:
    """:func:`route` for a CPU buffer going to another process on this host, ``mode`` already checked (the
    per-buffer hot path: positional arguments, no check)."""
    if mode == "tcp":
        return _INLINE
    if already_shared:
        return _SHM_SHARED
    if mode == "shm" or size >= shm_min:
        return _SHM
    return _INLINE
