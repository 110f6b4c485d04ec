"""disto.run: asyncio.run on uvloop."""
from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None, use_uvloop: bool = True) -> T:
    """Run ``main`` to completion on a fresh uvloop event loop (plain asyncio with ``use_uvloop=False``)."""
    if use_uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop, debug=debug) as runner:
            return runner.run(main)
    return asyncio.run(main, debug=debug)
