"""disto.run: asyncio.run on uvloop."""
from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None, use_uvloop: bool = True) -> T:
    """Run ``main`` to completion on a fresh uvloop event loop (plain asyncio with ``use_uvloop=False``).

    Ctrl-C cancels ``main`` (so ``async with disto.LocalCluster(...)`` stops its nodes in order) and then raises
    KeyboardInterrupt, without the cancelled task's traceback in front of it."""
    try:
        if use_uvloop:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop, debug=debug) as runner:
                return runner.run(main)
        return asyncio.run(main, debug=debug)
    except KeyboardInterrupt:
        raise KeyboardInterrupt from None  # the cancelled main task is how asyncio stops on Ctrl-C: not news
