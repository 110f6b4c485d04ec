"""Same-host CPU buffers through shared memory: value semantics with leases, reference semantics for memory that
is shared already. Built on :mod:`disto.memory.segments`.

Sender side, :class:`ShmExporter`: a :class:`~disto.memory.SegmentPool` of ``buf`` segments. A buffer sent by
value is copied once into a free segment (the only copy on the whole path); the segment is leased to the
receiver until it sends RELEASE, then reused, so its pages stay mapped and are not faulted in again. Memory that
is already shared (a ``shared`` segment from :func:`disto.shared_tensor`) is sent by reference: both sides then
see the same memory.

Receiver side, :class:`ShmImporter`: maps segments once and keeps the mappings; each received buffer is a
:mod:`~disto.memory.blocks` block whose callback fires when the last array or tensor built on it is gone, which
sends RELEASE.
"""
from __future__ import annotations

import bisect
import threading
from typing import Any, Callable

import numpy as np

from ..errors import SerializationError
from ..wire.codec import compiled_buffer_address
from ..memory.blocks import block
from ..memory.segments import SHM_DIR, Segment, SegmentPool, is_segment_name

VALUE_PURPOSE = "buf"
SHARED_PURPOSE = "shared"


def _numpy_buffer_address(buf: Any) -> int:
    return np.frombuffer(buf, dtype=np.uint8).ctypes.data if memoryview(buf).nbytes else 0


# the address of a buffer's first byte (0 if empty): compiled (~0.1 us) when the hot path is built, else numpy's
buffer_address: Callable[[Any], int] = compiled_buffer_address or _numpy_buffer_address


_INF = float("inf")


def _find(ranges: list[tuple[int, int, str]], addr: int, size: int) -> tuple[str, int, int] | None:
    """(name, offset, size) of the range (sorted by start address) that holds all of ``size`` bytes at ``addr``."""
    if not ranges:
        return None
    i = bisect.bisect_right(ranges, (addr, _INF)) - 1  # the last range starting at or before addr (no key function)
    if i >= 0:
        start, end, name = ranges[i]
        if start <= addr and addr + size <= end:
            return name, addr - start, size
    return None


class ShmExporter:
    """The sending side: pooled value segments leased to receivers, and shared segments sent by reference."""

    def __init__(self, max_free_bytes: int = 2 << 30, directory: str = SHM_DIR) -> None:
        self.directory = directory
        self._pool = SegmentPool(VALUE_PURPOSE, max_free_bytes=max_free_bytes, directory=directory)
        self._leased: dict[str, tuple[Segment, int]] = {}  # name -> (segment, leases)
        self._shared: dict[str, Segment] = {}
        self._ranges: list[tuple[int, int, str]] = []  # shared segments by address, for by-reference
        self._lock = threading.Lock()  # releases come from finalizers, in any thread
        self.copies = 0  # buffers exported by value (for tests and stats)
        self.closed = False

    def export_copy(self, view: memoryview) -> tuple[str, int, int]:
        """Copy ``view`` into a pooled segment leased to one receiver: (segment, offset, size)."""
        n = view.nbytes
        with self._lock:
            seg = self._pool.take(n)
            self._leased[seg.name] = (seg, 1)
        seg.mm[:n] = view  # (one memcpy; two numpy views around it cost as much as the copy of 64 KB)
        self.copies += 1
        return seg.name, 0, n

    def release(self, name: str) -> None:
        with self._lock:
            entry = self._leased.get(name)
            if entry is None:
                return  # not ours, shared, or already released
            seg, leases = entry
            if leases > 1:
                self._leased[name] = (seg, leases - 1)
                return
            del self._leased[name]
            if self.closed:
                seg.discard()
            else:
                self._pool.give(seg)

    # --------------------------------------------------------------- memory that is shared by reference
    def allocate_shared(self, nbytes: int) -> tuple[np.ndarray, str]:
        """A fresh shared segment for :func:`shared_tensor`; its memory is sent by reference."""
        seg = Segment.create(SHARED_PURPOSE, max(nbytes, 1), self.directory)
        with self._lock:
            self._shared[seg.name] = seg
            bisect.insort(self._ranges, (seg.addr, seg.addr + seg.size, seg.name), key=lambda r: r[0])
        return np.frombuffer(seg.mm, dtype=np.uint8, count=nbytes), seg.name

    def find_shared(self, view: memoryview, addr: int | None = None) -> tuple[str, int, int] | None:
        """(segment, offset, size) if ``view`` lies inside a shared segment of ours (``addr``: its address, if
        the caller has it)."""
        if not self._ranges:
            return None
        return _find(self._ranges, buffer_address(view) if addr is None else addr, view.nbytes)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"segments": len(self._pool.free) + len(self._leased) + len(self._shared),
                    "free": len(self._pool.free), "copies": self.copies,
                    "leased": sum(n for _, n in self._leased.values())}

    def close(self) -> None:
        self.closed = True
        with self._lock:
            self._pool.close()
            for seg, _ in self._leased.values():
                seg.discard()
            for seg in self._shared.values():
                seg.discard()
            self._leased.clear()
            self._shared.clear()
            self._ranges.clear()


class ShmImporter:
    """The receiving side: maps segments (once each) and turns descriptors into writable memory."""

    def __init__(self, directory: str = SHM_DIR, max_mappings: int = 256) -> None:
        self.directory = directory
        self.max_mappings = max_mappings
        self._maps: dict[str, Segment] = {}
        self._shared: list[tuple[int, int, str]] = []  # mappings received by reference: forwarded by reference

    def _map(self, name: str) -> Segment:
        seg = self._maps.get(name)
        if seg is not None:
            return seg
        try:
            if "/" in name:  # a torch shared tensor's file, through the sender's /proc/PID/fd/N
                if not name.startswith("/proc/"):
                    raise SerializationError(f"refusing to map {name!r}")
                seg = Segment.map_path(name)
            elif is_segment_name(name):
                seg = Segment.open(name, self.directory)
            else:
                raise SerializationError(f"not a disto segment: {name!r}")
        except OSError as e:
            raise SerializationError(f"cannot open shared memory {name}: {e}") from None
        if len(self._maps) >= self.max_mappings:
            self._maps.pop(next(iter(self._maps)))  # still mapped while leases use it; just not cached
        self._maps[name] = seg
        return seg

    def import_(self, name: str, offset: int, size: int, on_release: Callable[[], None] | None,
                shared: bool = False) -> memoryview:
        """Writable memory for a descriptor. ``on_release`` runs (from any thread) once it is no longer used.
        ``shared``: memory passed by reference (it may then be passed on by reference too)."""
        known = name in self._maps
        seg = self._map(name)
        if offset < 0 or size < 0 or offset + size > seg.size:
            raise SerializationError(f"descriptor out of bounds for segment {name}")
        if shared and not known:
            bisect.insort(self._shared, (seg.addr, seg.addr + seg.size, name), key=lambda r: r[0])
        return memoryview(block(seg, seg.addr + offset, size, on_release))

    def find_shared(self, view: memoryview, addr: int | None = None) -> tuple[str, int, int] | None:
        """(segment, offset, size) if ``view`` lies in memory we received by reference."""
        if not self._shared:
            return None
        return _find(self._shared, buffer_address(view) if addr is None else addr, view.nbytes)

    def forget(self, name: str) -> None:
        self._maps.pop(name, None)

    def close(self) -> None:
        self._maps.clear()
        self._shared.clear()
