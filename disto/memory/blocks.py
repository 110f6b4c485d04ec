"""Writable bytes at a raw address inside memory that an owner keeps alive (a mapped segment, a tensor), with an
optional callback once nothing uses them: how a received shared-memory block is leased (the callback tells the
sender the block is free) and how a tensor's bytes are handed to the pickler.

The compiled :class:`disto.memory._block.Block` (built by ``pip install``) makes one in ~0.1 us; the pure-Python
fallback, used without a C compiler or with ``DISTO_PURE_PYTHON=1``, builds a numpy array over an
``__array_interface__`` and a ``weakref.finalize`` (~10 us). Both give the same bytes and the same callback."""
from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np

from ..native import PURE_PYTHON_REQUESTED

try:
    if PURE_PYTHON_REQUESTED:
        raise ImportError("DISTO_PURE_PYTHON is set")
    from ._block import Block  # type: ignore[import-not-found]
except ImportError:
    Block = None

COMPILED = Block is not None


class _Lease:
    """Exposes ``size`` bytes at ``address`` to numpy and keeps ``owner`` alive (the pure-Python block)."""

    __slots__ = ("__array_interface__", "owner", "__weakref__")

    def __init__(self, owner: Any, address: int, size: int) -> None:
        self.owner = owner
        self.__array_interface__ = {"data": (address, False), "shape": (size,), "typestr": "|u1", "version": 3}


def _py_block(owner: Any, address: int, size: int, on_release: Callable[[], None] | None = None) -> Any:
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    lease = _Lease(owner, address, size)
    arr = np.asarray(lease)  # (the array's base is the lease: the lease lives as long as any view of it)
    if on_release is not None:
        weakref.finalize(lease, on_release)
    return arr


# block(owner, address, size, on_release=None): a writable 1-D buffer of bytes (supports the buffer protocol)
block: Callable[..., Any] = Block if Block is not None else _py_block

__all__ = ["COMPILED", "block"]
