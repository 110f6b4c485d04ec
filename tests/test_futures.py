"""disto.Future and the combinators, on both loops, without any node."""
from __future__ import annotations

import asyncio

import pytest

import disto
from disto import Future


def fut() -> Future:
    return Future(loop=asyncio.get_running_loop())


async def test_then_map_recover_ensure() -> None:
    f = fut()
    g = f.then(lambda v: v + 1).map(lambda v: v * 10)
    f.set_result(1)
    assert await g == 20

    async def later(v):
        await asyncio.sleep(0)
        return v * 3

    f = fut()
    g = f.then(later)
    f.set_result(2)
    assert await g == 6

    f = fut()
    g = f.map(later)  # map does not await what fn returns
    f.set_result(2)
    inner = await g
    assert asyncio.iscoroutine(inner) and await inner == 6

    f = fut()
    g = f.then(lambda v: 1 / 0)
    f.set_result(1)
    with pytest.raises(ZeroDivisionError):
        await g

    f = fut()
    g = f.recover(lambda e: "fallback", KeyError)
    f.set_exception(KeyError("k"))
    assert await g == "fallback"
    f = fut()
    g = f.recover(lambda e: "fallback", KeyError)
    f.set_exception(ValueError("v"))
    with pytest.raises(ValueError):
        await g

    seen = []
    f = fut()
    g = f.ensure(lambda: seen.append("done"))
    f.set_exception(RuntimeError("x"))
    with pytest.raises(RuntimeError):
        await g
    assert seen == ["done"]


async def test_cancel_propagates_upstream_and_calls_the_hook() -> None:
    f = fut()
    hooked = []
    f._on_cancel = lambda: hooked.append(1)
    g = f.then(lambda v: v).map(str)
    g.cancel()
    assert f.cancelled() and hooked == [1]
    assert not f.cancel()  # second cancel is a no-op
    assert hooked == [1]


async def test_collect_order_and_first_error() -> None:
    fs = [fut() for _ in range(3)]
    c = disto.collect(fs)
    fs[2].set_result("c")
    fs[0].set_result("a")
    fs[1].set_result("b")
    assert await c == ["a", "b", "c"]
    fs = [fut() for _ in range(3)]
    c = disto.collect(fs)
    fs[1].set_exception(KeyError("first"))
    fs[0].set_exception(ValueError("second"))  # retrieved quietly: no "never retrieved" warning
    with pytest.raises(KeyError):
        await c
    assert await disto.collect([]) == []
    c = disto.collect([asyncio.sleep(0, "coroutines work too")])
    assert await c == ["coroutines work too"]


async def test_collect_all_and_collect_any() -> None:
    fs = [fut() for _ in range(3)]
    c = disto.collect_all(fs)
    fs[0].set_result(1)
    fs[1].set_exception(ValueError("x"))
    fs[2].cancel()
    out = await c
    assert out[0] == 1 and isinstance(out[1], ValueError) and isinstance(out[2], asyncio.CancelledError)

    fs = [fut() for _ in range(3)]
    c = disto.collect_any(fs)
    fs[2].set_result("third")
    assert await c == "third" and not fs[0].cancelled()
    fs[0].cancel(), fs[1].cancel()
    fs = [fut() for _ in range(3)]
    c = disto.collect_any(fs, cancel_rest=True)
    fs[1].set_exception(KeyError("k"))
    with pytest.raises(KeyError):
        await c
    assert fs[0].cancelled() and fs[2].cancelled()
    with pytest.raises(ValueError):
        disto.collect_any([])


async def test_within() -> None:
    f = fut()
    with pytest.raises(disto.TimeoutError):
        await disto.within(f, 0.01)
    assert f.cancelled()
    f = fut()
    w = f.within(10)
    f.set_result(5)
    assert await w == 5
    with pytest.raises(TimeoutError):  # the builtin catches it too
        await disto.within(asyncio.sleep(1), 0.01)
    with pytest.raises(ValueError):
        disto.within(fut(), -1)


async def test_window_bounds_concurrency() -> None:
    running = 0
    peak = 0

    async def job(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1
        return i

    assert await disto.window([lambda i=i: job(i) for i in range(50)], 5) == list(range(50))
    assert peak == 5

    async def bad() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await disto.window([lambda: job(0), bad, lambda: job(1)], 2)
    with pytest.raises(ValueError):
        disto.window([], 0)


async def test_interop_with_asyncio() -> None:
    f, g = fut(), fut()
    f.set_result(1)
    g.set_result(2)
    assert await asyncio.gather(f, g) == [1, 2]
    h = fut()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await h
    assert h.cancelled()
    k = fut()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(k, 0.01)
    assert k.cancelled()
