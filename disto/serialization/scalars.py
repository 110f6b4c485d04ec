"""The pickle streams of the commonest payloads: a call's arguments when they are None, bools, ints, floats or
strs, or tuples, lists and dicts of them (keyword arguments too), and such a value as a reply or a stream item.

- ``dumps(obj)`` and ``loads(data)`` give what ``pickle.dumps(obj, 5)`` and ``pickle.loads(data)`` give (values
  and errors);
- ``dumps_plain(obj)`` is a pickle stream of ``obj`` when it is such a value, else None (the caller's general
  path, which knows tensors and ships modules, then takes it).

When disto is built (``pip install``), :mod:`._scalars` writes and reads these shapes itself, without creating a
Pickler or an Unpickler for each message, and passes anything else to pickle. The streams are plain pickle either
way: a node running the pure-Python modules reads them. ``DISTO_PURE_PYTHON=1`` selects pickle's own functions,
and ``dumps_plain`` then always says None (the general path is as quick there)."""
from __future__ import annotations

import functools
import pickle

from ..native import PURE_PYTHON_REQUESTED

try:
    if PURE_PYTHON_REQUESTED:
        raise ImportError("DISTO_PURE_PYTHON is set")
    from ._scalars import dumps, dumps_plain, loads  # type: ignore[import-not-found]
    IMPLEMENTATION = "compiled"
except ImportError:
    dumps = functools.partial(pickle.dumps, protocol=5)
    loads = pickle.loads
    IMPLEMENTATION = "python"

    def dumps_plain(obj: object) -> bytes | None:
        return None

__all__ = ["IMPLEMENTATION", "dumps", "dumps_plain", "loads"]
