"""The frame: a 16-byte header, the Thrift body, then the out-of-band buffers back to back.

    header   big-endian: u32 body_len | u8 version | u8 kind | u16 flags | u64 oob_len
"""
from __future__ import annotations

import struct
from typing import Any, Sequence

from ..errors import LocalProtocolError, RemoteProtocolError
from .messages import WIRE_VERSION, BufferKind, T

HEADER = struct.Struct("!IBBHQ")  # body_len, version, kind, flags, oob_len
HEADER_SIZE = HEADER.size
HANDSHAKE_MAX_BODY = 4096
DEFAULT_MAX_BODY = 16 << 20
DEFAULT_MAX_FRAME = 16 << 30
# buffers that do not follow the body: they live elsewhere (shared memory, CUDA IPC) and travel as descriptors
EXTERNAL_KINDS = frozenset({BufferKind.SHM, BufferKind.SHM_SHARED, BufferKind.CUDA_IPC})


def frame_bytes(kind: int, body: bytes, oob_len: int = 0) -> bytes:
    return HEADER.pack(len(body), WIRE_VERSION, kind, 0, oob_len) + body


def oob_views(buffers: Sequence[Any]) -> tuple[list[memoryview], list[int], int, list[Any] | None]:
    """Views to write after the body, their sizes, their total, and (only if some buffers are external
    descriptors that live elsewhere: shared memory, CUDA IPC) the full descriptor list."""
    views = []
    sizes = []
    descs: list[Any] | None = None
    for b in buffers:
        if isinstance(b, T.BufferDesc):
            if b.kind not in EXTERNAL_KINDS:
                raise LocalProtocolError(f"an external buffer descriptor needs an external kind, not {b.kind}")
            if descs is None:
                descs = [T.BufferDesc(size=n) for n in sizes]
            descs.append(b)
            continue
        v = b if isinstance(b, memoryview) else memoryview(b)
        if v.format != "B" or v.ndim != 1:
            v = v.cast("B")
        views.append(v)
        sizes.append(v.nbytes)
        if descs is not None:
            descs.append(T.BufferDesc(size=v.nbytes))
    return views, sizes, sum(sizes), descs


def inline_sizes(body: Any) -> list[Any]:
    """Per buffer a received body lists: its size if it follows in this frame, or its descriptor if it lives
    elsewhere. RemoteProtocolError for a negative size or an unknown kind."""
    items: list[Any] = []
    for d in body.buffers or ():
        if d.size is None or d.size < 0:
            raise RemoteProtocolError("buffer with a negative size")
        if d.kind in (None, BufferKind.INLINE):
            items.append(d.size)
        elif d.kind in EXTERNAL_KINDS:
            items.append(d)
        else:
            raise RemoteProtocolError(f"unknown buffer kind {d.kind}")
    return items
