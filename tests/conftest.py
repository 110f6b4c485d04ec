"""Test harness: every ``async def`` test runs once on asyncio's loop and once on uvloop, under a timeout, and
fails if the loop reported any unhandled error (an exception in a callback, a future whose exception nobody
retrieved). A small plugin instead of pytest-asyncio so that all three are enforced in one place."""
from __future__ import annotations

import asyncio
import gc
import inspect
import os
import sys

import pytest
import uvloop

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
DEFAULT_ASYNC_TIMEOUT = 60.0

sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "async_timeout(seconds): time limit of an async test")
    config.addinivalue_line("markers", "loops(*names): run an async test only on these loops")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if inspect.iscoroutinefunction(metafunc.function):
        marker = metafunc.definition.get_closest_marker("loops")
        kinds = list(marker.args) if marker else list(LOOPS)
        metafunc.fixturenames.append("loop_kind")
        metafunc.parametrize("loop_kind", kinds)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    kind = pyfuncitem.callspec.params["loop_kind"]
    marker = pyfuncitem.get_closest_marker("async_timeout")
    timeout = marker.args[0] if marker else DEFAULT_ASYNC_TIMEOUT
    kwargs = {n: pyfuncitem.funcargs[n] for n in pyfuncitem._fixtureinfo.argnames}
    errors: list[dict] = []

    def handler(loop: asyncio.AbstractEventLoop, ctx: dict) -> None:
        errors.append(ctx)
        loop.default_exception_handler(ctx)

    with asyncio.Runner(loop_factory=LOOPS[kind]) as runner:
        runner.get_loop().set_exception_handler(handler)

        async def main() -> None:
            async with asyncio.timeout(timeout):
                await fn(**kwargs)
            gc.collect()  # surface "exception was never retrieved" while the loop still runs
            await asyncio.sleep(0)

        runner.run(main())
    if errors:
        msgs = "; ".join(f"{c.get('message')}: {c.get('exception')!r}" for c in errors)
        pytest.fail(f"unhandled event-loop errors: {msgs}")
    return True


def _disto_node_processes() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if "-m disto node start" in cmd and state != "Z":
            out.append(f"{pid}: {cmd.strip()}")
    return out


@pytest.fixture(scope="session", autouse=True)
def no_node_processes_left_behind():
    """Fail the run if any test left a node process running."""
    before = set(_disto_node_processes())
    yield
    deadline = __import__("time").monotonic() + 10
    while True:
        left = [p for p in _disto_node_processes() if p not in before]
        if not left or __import__("time").monotonic() > deadline:
            break
        __import__("time").sleep(0.1)
    assert not left, f"node processes left behind: {left}"


@pytest.fixture(scope="session")
def search_data():
    """The search tests' data: a small clustered set (d=32) and an IVF64,PQ8 index trained on it (needs Faiss)."""
    faiss = pytest.importorskip("faiss")
    from disto.search import DistributedIndex, dataset

    xb, xq, xt = dataset(20_000, 300, 32, seed=3, clusters=100, ntrain=5000)
    faiss.omp_set_num_threads(1)
    return xb, xq, xt, DistributedIndex.train("IVF64,PQ8", xt)
