"""Named shared-memory segments: the one primitive under every same-host transfer (serialization's value and
by-reference buffers, the search's batch blocks), with one naming scheme and one janitor.

A segment is a file in /dev/shm named ``disto-<pid>-<purpose>-<n>``: ``pid`` is the creating process (the
janitor unlinks segments whose creator is dead, so kill -9 leaks nothing for long), ``purpose`` a lowercase word
saying who made it (``buf``, ``shared``, ``search``), ``n`` a per-process counter (names are never reused).
The creator makes it with O_EXCL and mode 0600; another process of the same user opens it by name, and a name
that is not of this form is refused before anything is opened.

A :class:`SegmentPool` keeps free segments for reuse: first touch of a page costs 2-20 µs here, so a segment
that is reused keeps its pages mapped and faulted in.
"""
from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import re
import threading
import weakref
from typing import Any

import numpy as np

SHM_DIR = "/dev/shm"
PREFIX = "disto-"
NAME = re.compile(r"disto-(\d+)-([a-z]+)-(\d+)")
_numbers = itertools.count(1)  # per process, shared by every purpose: names are never reused
_numbers_lock = threading.Lock()


def segment_name(purpose: str) -> str:
    if not re.fullmatch(r"[a-z]+", purpose):
        raise ValueError(f"a segment purpose is a lowercase word, not {purpose!r}")
    with _numbers_lock:
        n = next(_numbers)
    return f"{PREFIX}{os.getpid()}-{purpose}-{n}"


def is_segment_name(name: str, purpose: str | None = None) -> bool:
    m = NAME.fullmatch(name) if isinstance(name, str) else None
    return m is not None and (purpose is None or m.group(2) == purpose)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a killed process its parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # not Linux, or it went just now: assume alive (nothing is removed by mistake)


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
        if not pid_alive(pid):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def mapping_address(mm: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(mm))


class Segment:
    """One mapped segment. ``Segment.create`` makes a new one (this process owns it: its name is unlinked when
    :meth:`discard` is called, when the object is collected, or at exit); ``Segment.open`` maps another's."""

    __slots__ = ("name", "path", "size", "mm", "addr", "owned", "_unlink", "__weakref__")

    def __init__(self, name: str, path: str, mm: mmap.mmap, owned: bool) -> None:
        self.name = name
        self.path = path
        self.mm = mm
        self.size = len(mm)
        self.addr = mapping_address(mm)
        self.owned = owned
        self._unlink = weakref.finalize(self, _unlink_quietly, path) if owned else None

    @classmethod
    def create(cls, purpose: str, size: int, directory: str = SHM_DIR) -> "Segment":
        name = segment_name(purpose)
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, max(size, 1))  # sparse: untouched pages cost nothing
            mm = mmap.mmap(fd, max(size, 1))
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        return cls(name, path, mm, owned=True)

    @classmethod
    def open(cls, name: str, directory: str = SHM_DIR, purpose: str | None = None) -> "Segment":
        """Map a segment another process made. ValueError for a name that is not a disto segment's (of that
        purpose); OSError if it cannot be opened."""
        if not is_segment_name(name, purpose):
            what = f"a disto {purpose} segment" if purpose else "a disto segment"
            raise ValueError(f"not {what}: {name!r}")
        return cls.map_path(os.path.join(directory, name), name)

    @classmethod
    def map_path(cls, path: str, name: str | None = None) -> "Segment":
        """Map a file that is not ours (a segment, or /proc/PID/fd/N of a torch shared tensor)."""
        flags = os.O_RDWR if path.startswith("/proc/") else os.O_RDWR | os.O_NOFOLLOW  # /proc fds are links
        fd = os.open(path, flags)
        try:
            mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        return cls(name or path, path, mm, owned=False)

    def array(self, offset: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        """A numpy view of part of the segment; ValueError if it is misaligned or does not fit."""
        dt = np.dtype(dtype)
        count = 1
        for n in shape:
            count *= int(n)
        nbytes = count * dt.itemsize
        if offset < 0 or count < 0 or offset % dt.itemsize or offset + nbytes > self.size:
            raise ValueError(f"offset {offset} (+{nbytes} bytes) outside segment {self.name}")
        return np.frombuffer(self.mm, dtype=dt, count=count, offset=offset).reshape(shape)

    def discard(self) -> None:
        """Unlink the name (if ours) and unmap once no view uses the memory (mappings of others stay valid)."""
        if self._unlink is not None:
            self._unlink()
        try:
            self.mm.close()
        except BufferError:
            pass  # views of it still exist: the mapping goes with the last of them

    def __repr__(self) -> str:
        return f"<Segment {self.name} {self.size} bytes>"


class SegmentPool:
    """Free segments of one purpose, reused best fit. New segments are a power of two (at least ``min_size``);
    free ones beyond ``max_free_bytes`` (or ``max_free`` segments) are discarded, oldest first."""

    def __init__(self, purpose: str, *, min_size: int = 1 << 20, max_free_bytes: int | None = None,
                 max_free: int | None = None, directory: str = SHM_DIR) -> None:
        segment_name(purpose)  # checks the word
        self.purpose = purpose
        self.min_size = min_size
        self.max_free_bytes = max_free_bytes
        self.max_free = max_free
        self.directory = directory
        self.free: list[Segment] = []
        self.free_bytes = 0  # the size of all of ``free``
        self.created = 0

    def take(self, nbytes: int) -> Segment:
        free = self.free
        best = None
        for seg in free:  # (a handful at most: the pool keeps what is in use at once)
            if nbytes <= seg.size and (best is None or seg.size < best.size):
                best = seg
        if best is not None:
            free.remove(best)
            self.free_bytes -= best.size
            return best
        self.created += 1
        size = max(self.min_size, 1 << (max(nbytes, 1) - 1).bit_length())
        return Segment.create(self.purpose, size, self.directory)

    def give(self, seg: Segment) -> None:
        free = self.free
        free.append(seg)
        self.free_bytes += seg.size
        max_free, max_bytes = self.max_free, self.max_free_bytes
        while free and ((max_free is not None and len(free) > max_free)
                        or (max_bytes is not None and self.free_bytes > max_bytes)):
            old = free.pop(0)
            self.free_bytes -= old.size
            old.discard()

    def close(self) -> None:
        for seg in self.free:
            seg.discard()
        self.free.clear()
        self.free_bytes = 0
