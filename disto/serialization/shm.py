"""Same-host CPU buffers through shared memory.

Sender side, :class:`ShmExporter`: a pool of segments in /dev/shm named ``disto-<pid>-<node>-<n>``. A buffer sent
by value is copied once into a free segment (the only copy on the whole path); the segment is leased to the
receiver until it sends RELEASE, then reused, so its pages stay mapped and are not faulted in again. Memory that
is already shared (a :func:`shared_tensor`) is sent by reference: both sides then see the same memory.

Receiver side, :class:`ShmImporter`: maps segments once and keeps the mappings; each received buffer is a
:class:`_Lease` whose finalizer fires when the last array or tensor built on it is gone, which sends RELEASE.

Lifecycle: an exporter unlinks its segments when it closes; :func:`janitor` removes segments whose creating
process is dead (run when a node starts and stops), so kill -9 of either side leaks nothing for long.
"""
from __future__ import annotations

import bisect
import ctypes
import mmap
import os
import threading
import weakref
from typing import Any, Callable

import numpy as np

from .._errors import SerializationError

SHM_DIR = "/dev/shm"
PREFIX = "disto-"
_MIN_SEGMENT = 1 << 20


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def janitor(directory: str = SHM_DIR) -> list[str]:
    """Unlink disto segments whose creating process no longer exists; return their names."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(PREFIX):
            continue
        try:
            pid = int(name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def _address(buf: Any) -> int:
    return np.frombuffer(buf, dtype=np.uint8).ctypes.data if memoryview(buf).nbytes else 0


def _find(ranges: list[tuple[int, int, str]], view: memoryview) -> tuple[str, int, int] | None:
    """(name, offset, size) of the range (sorted by start address) that holds all of ``view``, if any."""
    if not ranges:
        return None
    addr = _address(view)
    i = bisect.bisect_right(ranges, addr, key=lambda r: r[0]) - 1
    if i >= 0:
        start, end, name = ranges[i]
        if start <= addr and addr + view.nbytes <= end:
            return name, addr - start, view.nbytes
    return None


class _Segment:
    __slots__ = ("name", "size", "mm", "addr", "leases", "shared")

    def __init__(self, name: str, size: int, mm: mmap.mmap, shared: bool) -> None:
        self.name = name
        self.size = size
        self.mm = mm
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        self.leases = 0
        self.shared = shared


class ShmExporter:
    """The sending side's segment pool."""

    def __init__(self, node_id: str, max_free_bytes: int = 2 << 30, directory: str = SHM_DIR) -> None:
        self.directory = directory
        self.max_free_bytes = max_free_bytes
        self._tag = f"{PREFIX}{os.getpid()}-{node_id}"
        self._n = 0
        self._segments: dict[str, _Segment] = {}
        self._free: list[_Segment] = []
        self._ranges: list[tuple[int, int, str]] = []  # shared segments by address, for by-reference
        self._lock = threading.Lock()
        self.copies = 0  # buffers exported by value (for tests and stats)
        self.closed = False

    def _create(self, size: int, shared: bool) -> _Segment:
        self._n += 1
        name = f"{self._tag}-{self._n}"
        path = os.path.join(self.directory, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        seg = _Segment(name, size, mm, shared)
        self._segments[name] = seg
        return seg

    def _take(self, n: int) -> _Segment:
        best = None
        for seg in self._free:
            if n <= seg.size and (best is None or seg.size < best.size):
                best = seg
        if best is not None:
            self._free.remove(best)
            return best
        size = max(_MIN_SEGMENT, 1 << (max(n, 1) - 1).bit_length())  # sparse: untouched pages cost nothing
        return self._create(size, shared=False)

    def export_copy(self, view: memoryview) -> tuple[str, int, int]:
        """Copy ``view`` into a pooled segment leased to one receiver: (segment, offset, size)."""
        n = view.nbytes
        with self._lock:
            seg = self._take(n)
            seg.leases += 1
        np.frombuffer(seg.mm, dtype=np.uint8, count=n)[:] = np.frombuffer(view, dtype=np.uint8)
        self.copies += 1
        return seg.name, 0, n

    def release(self, name: str) -> None:
        with self._lock:
            seg = self._segments.get(name)
            if seg is None or seg.shared or seg.leases <= 0:
                return
            seg.leases -= 1
            if seg.leases == 0:
                self._free.append(seg)
                self._trim()

    def _trim(self) -> None:
        total = sum(s.size for s in self._free)
        while total > self.max_free_bytes and self._free:
            seg = self._free.pop(0)
            total -= seg.size
            self._unlink(seg)

    def _unlink(self, seg: _Segment) -> None:
        self._segments.pop(seg.name, None)
        try:
            os.unlink(os.path.join(self.directory, seg.name))
        except OSError:
            pass
        try:
            seg.mm.close()
        except BufferError:
            pass  # something still uses the mapping; the memory goes when it does

    # --------------------------------------------------------------- memory that is shared by reference
    def allocate_shared(self, nbytes: int) -> tuple[np.ndarray, str]:
        """A fresh shared segment for :func:`shared_tensor`; its memory is sent by reference."""
        with self._lock:
            seg = self._create(max(nbytes, 1), shared=True)
            bisect.insort(self._ranges, (seg.addr, seg.addr + seg.size, seg.name), key=lambda r: r[0])
        arr = np.frombuffer(seg.mm, dtype=np.uint8, count=nbytes)
        return arr, seg.name

    def find_shared(self, view: memoryview) -> tuple[str, int, int] | None:
        """(segment, offset, size) if ``view`` lies inside a shared segment of ours."""
        return _find(self._ranges, view)

    def stats(self) -> dict[str, int]:
        return {"segments": len(self._segments), "free": len(self._free), "copies": self.copies,
                "leased": sum(s.leases for s in self._segments.values())}

    def close(self) -> None:
        self.closed = True
        with self._lock:
            for seg in list(self._segments.values()):
                self._unlink(seg)
            self._free.clear()
            self._ranges.clear()


class _Lease:
    """Exposes one received block to numpy; its finalizer tells the sender the block is free again."""

    __slots__ = ("__array_interface__", "_mapping", "__weakref__")

    def __init__(self, mapping: "_Mapping", offset: int, size: int) -> None:
        self._mapping = mapping
        self.__array_interface__ = {"data": (mapping.addr + offset, False), "shape": (size,), "typestr": "|u1",
                                    "version": 3}


class _Mapping:
    __slots__ = ("mm", "addr", "size")

    def __init__(self, mm: mmap.mmap) -> None:
        self.mm = mm
        self.size = len(mm)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))


class ShmImporter:
    """The receiving side: maps segments (once each) and turns descriptors into writable memory."""

    def __init__(self, directory: str = SHM_DIR, max_mappings: int = 256) -> None:
        self.directory = directory
        self.max_mappings = max_mappings
        self._maps: dict[str, _Mapping] = {}
        self._shared: list[tuple[int, int, str]] = []  # mappings received by reference: forwarded by reference

    def _map(self, name: str) -> _Mapping:
        m = self._maps.get(name)
        if m is not None:
            return m
        if "/" in name:
            if not name.startswith("/proc/"):
                raise SerializationError(f"refusing to map {name!r}")
            path = name
        else:
            if not name.startswith(PREFIX):
                raise SerializationError(f"not a disto segment: {name!r}")
            path = os.path.join(self.directory, name)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise SerializationError(f"cannot open shared memory {name}: {e}") from None
        try:
            mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        m = _Mapping(mm)
        if len(self._maps) >= self.max_mappings:
            self._maps.pop(next(iter(self._maps)))  # still mapped while leases use it; just not cached
        self._maps[name] = m
        return m

    def import_(self, name: str, offset: int, size: int, on_release: Callable[[], None] | None,
                shared: bool = False) -> memoryview:
        """Writable memory for a descriptor. ``on_release`` runs (from any thread) once it is no longer used.
        ``shared``: memory passed by reference (it may then be passed on by reference too)."""
        known = name in self._maps
        m = self._map(name)
        if offset < 0 or size < 0 or offset + size > m.size:
            raise SerializationError(f"descriptor out of bounds for segment {name}")
        if shared and not known:
            bisect.insort(self._shared, (m.addr, m.addr + m.size, name), key=lambda r: r[0])
        lease = _Lease(m, offset, size)
        arr = np.asarray(lease)
        if on_release is not None:
            weakref.finalize(lease, on_release)
        return memoryview(arr)

    def find_shared(self, view: memoryview) -> tuple[str, int, int] | None:
        """(segment, offset, size) if ``view`` lies in memory we received by reference."""
        return _find(self._shared, view)

    def forget(self, name: str) -> None:
        self._maps.pop(name, None)

    def close(self) -> None:
        self._maps.clear()
        self._shared.clear()
