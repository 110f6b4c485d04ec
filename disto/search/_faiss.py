"""Faiss import (an optional extra) and input normalisation shared by the router and the shards."""
from __future__ import annotations

from typing import Any

import numpy as np

try:
    import faiss  # type: ignore[import-not-found]
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("disto.search needs Faiss: pip install 'disto[search]' (faiss-cpu)") from e

__all__ = ["faiss", "as_matrix", "as_ids"]


def _numpy(x: Any, what: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch"):
        if x.device.type != "cpu":
            x = x.cpu()
        return x.detach().numpy()
    raise TypeError(f"{what} must be a numpy array or a torch tensor, not {type(x).__name__}")


def as_matrix(x: Any, d: int, what: str = "vectors") -> np.ndarray:
    """An (n, d) float32 C-contiguous matrix (one vector of d values is taken as n=1)."""
    a = _numpy(x, what)
    if a.ndim == 1 and a.shape[0] == d:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != d:
        raise ValueError(f"{what} must have shape (n, {d}), got {tuple(a.shape)}")
    if a.dtype != np.float32:
        if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{what} must be numeric, got dtype {a.dtype}")
        a = a.astype(np.float32)
    a = np.ascontiguousarray(a)
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return a


def as_ids(ids: Any, n: int) -> np.ndarray:
    a = _numpy(ids, "ids")
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"ids must have shape ({n},), got {tuple(a.shape)}")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"ids must be integers, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if n and a.min() < 0:
        raise ValueError("ids must be >= 0 (-1 marks 'no result' in Faiss)")
    return a
