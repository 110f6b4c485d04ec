"""Arrays and tensors in shared memory: sent to processes on the same host by reference, not by value.

A receiver on the same host maps the same memory, so writes on either side are visible to the other (as with
``torch.multiprocessing`` and ``share_memory_()``). To other hosts they travel by value, like any array.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..actor import current_node


def _check_shape(shape: Any, fn: str, copy: str) -> None:
    """A shape, not an array: say how to put an existing array or tensor into shared memory."""
    if hasattr(shape, "dtype") and hasattr(shape, "shape"):
        raise TypeError(f"{fn} takes a shape (and a dtype), not an array: to share x, make t = {fn}(x.shape, "
                        f"x.dtype) and copy into it ({copy})")
    dims = (shape,) if isinstance(shape, int) else shape
    if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) and d >= 0 for d in dims):
        raise TypeError(f"{fn} takes a shape: an int or a tuple of ints >= 0, got {shape!r}")


def shared_array(shape: int | tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """A zero-filled numpy array in this node's shared memory."""
    _check_shape(shape, "shared_array", "np.copyto(a, x)")
    dt = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw, _ = current_node().buffers.exporter.allocate_shared(n)
    return raw.view(dt).reshape(shape)


def shared_tensor(shape: int | tuple[int, ...], dtype: Any = None) -> Any:
    """A zero-filled torch CPU tensor in this node's shared memory (default dtype: torch's default)."""
    import torch

    _check_shape(shape, "shared_tensor", "t.copy_(x)")
    dtype = dtype or torch.get_default_dtype()
    itemsize = torch.empty((), dtype=dtype).element_size()
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    raw = shared_array(int(np.prod(shape, dtype=np.int64)) * itemsize, np.uint8)
    return torch.from_numpy(raw).view(dtype).reshape(shape)
