"""Frames written on a connection by a thread other than its event loop's: an actor's thread answering a call
itself, which saves the hop back to the loop (a wake-up of the loop and a context switch per answer).

``send(ch, frames, ready)`` writes at once if nothing waits to be written before the frames, else leaves them in
``ch.tail``, which the loop writes before anything else. It returns ``SENT``, ``QUEUED`` (wake the loop) or
``DROPPED`` (the channel is closed or closing). It relies on the GIL for its exclusion from the loop's own writes
(see ``_fromthread.pyx``), so it exists only compiled: :data:`AVAILABLE` is false in pure Python (the compiled
module missing, or ``DISTO_PURE_PYTHON=1``) and where ``DISTO_THREAD_WRITES=0`` turns it off; the answers then
take the loop, as before. Only uvloop's plain TCP and Unix transports qualify (:func:`eligible`): their writes hold
the GIL; TLS and asyncio's own transports do not.
"""
from __future__ import annotations

import os
from typing import Any

from ..native import PURE_PYTHON_REQUESTED

SENT, QUEUED, DROPPED = 0, 1, 2
_ELIGIBLE = frozenset({("uvloop.loop", "TCPTransport"), ("uvloop.loop", "UnixTransport")})

try:
    if PURE_PYTHON_REQUESTED:
        raise ImportError("DISTO_PURE_PYTHON is set")
    from ._fromthread import send  # type: ignore[import-not-found]
    IMPLEMENTATION = "compiled"
except ImportError:
    send = None  # type: ignore[assignment]
    IMPLEMENTATION = "python"

ENABLED = os.environ.get("DISTO_THREAD_WRITES", "").strip().lower() not in ("0", "false", "no")
AVAILABLE = send is not None and ENABLED


def eligible(transport: Any) -> bool:
    """Whether frames may be written on ``transport``'s socket from another thread (see the module's doc)."""
    t = type(transport)
    return (t.__module__, t.__qualname__) in _ELIGIBLE and transport.get_extra_info("socket") is not None


__all__ = ["AVAILABLE", "DROPPED", "IMPLEMENTATION", "QUEUED", "SENT", "eligible", "send"]
