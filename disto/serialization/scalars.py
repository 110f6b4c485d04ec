"""The pickle streams of the commonest payloads: a call's arguments when they are all None, bools, ints, floats or
strs, and such a value as a reply or a stream item. ``dumps(obj)`` and ``loads(data)`` give what
``pickle.dumps(obj, 5)`` and ``pickle.loads(data)`` give (values and errors); when disto is built
(``pip install``), :mod:`._scalars` writes and reads the common shapes itself, without creating a Pickler or an
Unpickler for each message, and passes anything else to pickle. The streams are plain pickle either way: a node
running the pure-Python modules reads them. ``DISTO_PURE_PYTHON=1`` selects pickle's own functions."""
from __future__ import annotations

import functools
import pickle

from ..native import PURE_PYTHON_REQUESTED

try:
    if PURE_PYTHON_REQUESTED:
        raise ImportError("DISTO_PURE_PYTHON is set")
    from ._scalars import dumps, loads  # type: ignore[import-not-found]
    IMPLEMENTATION = "compiled"
except ImportError:
    dumps = functools.partial(pickle.dumps, protocol=5)
    loads = pickle.loads
    IMPLEMENTATION = "python"

__all__ = ["IMPLEMENTATION", "dumps", "loads"]
