"""A pool of large receive buffers, reused once nothing refers to them any more.

First touch of a page costs 2-20 µs here, so a fresh 256 MB receive buffer per message costs more than the copy.
The pool hands out views of numpy uint8 blocks. A value rebuilt over such a view (array, tensor) keeps the block
alive through the buffer protocol; a block is free again when its reference count falls back to the pool's own,
which :meth:`BufferPool.alloc` checks when it looks for a block. No callbacks, no finalizers.
"""
from __future__ import annotations

import sys

import numpy as np

_PAGE = 4096


class BufferPool:
    def __init__(self, max_free_bytes: int = 1 << 30, min_size: int = 1 << 20) -> None:
        self.max_free_bytes = max_free_bytes
        self.min_size = min_size
        self._blocks: list[np.ndarray] = []  # every block the pool owns, oldest first
        self.allocated = 0  # blocks created (for tests and stats)

    def alloc(self, n: int) -> memoryview:
        """A writable view of exactly ``n`` bytes."""
        if n < self.min_size:
            return memoryview(bytearray(n))
        best = None
        blocks = self._blocks
        for i in range(len(blocks)):
            blk = blocks[i]
            # 3 = the list's reference + the local variable + getrefcount's argument
            if n <= blk.nbytes <= 2 * n and sys.getrefcount(blk) <= 3:
                if best is None or blk.nbytes < self._blocks[best].nbytes:
                    best = i
        if best is not None:
            del blk
            blk = self._blocks.pop(best)
            self._blocks.append(blk)  # most recently used last
            return memoryview(blk)[:n]
        blk = np.empty((n + _PAGE - 1) // _PAGE * _PAGE, dtype=np.uint8)
        self.allocated += 1
        self._blocks.append(blk)
        self._trim()
        return memoryview(blk)[:n]

    def _trim(self) -> None:
        free = [b for b in self._blocks if sys.getrefcount(b) <= 3]
        total = sum(b.nbytes for b in free)
        for b in free:  # oldest first
            if total <= self.max_free_bytes:
                break
            self._blocks.remove(b)
            total -= b.nbytes
        del free

    def stats(self) -> dict[str, int]:
        in_use = sum(b.nbytes for b in self._blocks if sys.getrefcount(b) > 3)
        return {"blocks": len(self._blocks), "bytes": sum(b.nbytes for b in self._blocks), "in_use": in_use}
