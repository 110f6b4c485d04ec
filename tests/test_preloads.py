"""Background imports (preloads) and the events a node holds meanwhile.

A half-imported package must never be seen by another thread: while the preload thread is inside a package's
``__init__``, a submodule imported from the loop (unpickling a call does) or from an actor runs against the
half-built package. The node holds such events until the import ends.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from types import SimpleNamespace

import pytest

import disto
from disto.node import preloads as preloads_mod
from disto.node.preloads import HELD, PRELOAD_CANDIDATES, Preloads, heavy_imports
from disto.wire import (Call, Cancel, Failure, Goodbye, Heartbeat, Modules, Release, Reply, StreamCredit,
                        StreamEnd, StreamItem)

TOKEN = "preload-test-token"


class FakeChannel:
    def __init__(self, name: str, max_queued: int = 1024) -> None:
        self.name = name
        self.queued = 0
        self.max_queued = max_queued
        self.closed = False
        self.paused = False
        self.drains = 0

    def peer_name(self) -> str:
        return self.name

    def call_received(self) -> None:  # (what Channel.call_received does)
        self.queued += 1
        if self.queued >= self.max_queued:
            self.full()

    def full(self) -> None:
        self.paused = True

    def uncount_call(self) -> None:  # (what Channel.uncount_call does)
        self.queued -= 1

    def drained(self) -> None:
        self.drains += 1
        if self.queued <= self.max_queued // 2:
            self.paused = False


class GatedImports:
    """Stands in for importlib.import_module in the preload thread: each import waits for its gate."""

    def __init__(self) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.started: list[str] = []

    def __call__(self, name: str) -> None:
        self.started.append(name)
        self.gates.setdefault(name, threading.Event()).wait(30)
        sys.modules.setdefault(name, type(sys)(name))

    def open(self, name: str) -> None:
        self.gates.setdefault(name, threading.Event()).set()


def table(seen: list) -> dict:
    kinds = (Call, Reply, Failure, Cancel, Heartbeat, Goodbye, Release, Modules, StreamItem, StreamEnd,
             StreamCredit)
    return {k: (lambda ch, ev, k=k: seen.append((k.__name__, ch.name, ev.body.n))) for k in kinds}


def call(n: int, actor_id: int = 16, method: str = "f") -> Call:
    return Call(SimpleNamespace(n=n, actor_id=actor_id, method=method), [])


def ev(kind: type, n: int) -> object:
    return kind(SimpleNamespace(n=n), [])


async def until(cond) -> None:
    """Yield to the loop until cond() holds (the import thread's done callback arrives through the loop)."""
    for _ in range(10_000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


@pytest.fixture
def gated(monkeypatch) -> GatedImports:
    imports = GatedImports()
    monkeypatch.setattr(preloads_mod.importlib, "import_module", imports)
    names = ("numpy_fake_a", "numpy_fake_b")
    monkeypatch.setattr(preloads_mod, "PRELOAD_CANDIDATES", PRELOAD_CANDIDATES + names)
    yield imports
    for name in names:
        imports.open(name)
        sys.modules.pop(name, None)


async def test_events_wait_for_the_import_then_run_in_arrival_order(gated) -> None:
    import contextvars
    var = contextvars.ContextVar("node")
    seen: list = []
    handlers = table(seen)
    original = dict(handlers)
    pre = Preloads(handlers, (var, "the node"), lambda: [0, 16])  # a user actor here: replies wait too
    a, b = FakeChannel("a"), FakeChannel("b")
    waits = pre.start(["numpy_fake_a"])
    assert len(waits) == 1 and pre.running == ("numpy_fake_a",)
    # calls, replies and what must stay in order with them wait; the rest goes on
    for ch, e in [(a, call(1)), (b, ev(Reply, 2)), (a, ev(Heartbeat, 3)), (a, ev(Cancel, 4)),
                   (b, ev(Modules, 5)), (b, ev(StreamItem, 6)), (a, ev(Release, 7)), (b, ev(StreamEnd, 8)),
                   (a, ev(Failure, 9)), (b, ev(StreamCredit, 10)), (a, ev(Goodbye, 11)), (b, call(12))]:
        handlers[type(e)](ch, e)
    assert [s[2] for s in seen] == [3, 5, 7, 10]
    assert pre.held == 8 and a.queued == 1 and b.queued == 1  # held calls count against the channel's bound
    gated.open("numpy_fake_a")
    await asyncio.gather(*waits)
    assert [s[2] for s in seen] == [3, 5, 7, 10, 1, 2, 4, 6, 8, 9, 11, 12]
    assert handlers == original and pre.held == 0 and pre.running == ()
    assert a.queued == 0 and b.queued == 0 and a.drains == 1 and b.drains == 1


async def test_every_import_must_end_and_later_ones_hold_again(gated) -> None:
    import contextvars
    seen: list = []
    handlers = table(seen)
    pre = Preloads(handlers, (contextvars.ContextVar("node"), None))
    ch = FakeChannel("a")
    pre.start(["numpy_fake_a", "numpy_fake_b"])
    handlers[Call](ch, call(1))
    gated.open("numpy_fake_a")
    await until(lambda: pre.running == ("numpy_fake_b",))
    assert seen == [] and pre.held == 1  # one import still runs
    gated.open("numpy_fake_b")
    await until(lambda: seen)
    assert [s[2] for s in seen] == [1]
    # imported now: naming them again does nothing
    assert pre.start(["numpy_fake_a"]) == [] and pre.held == 0
    handlers[Call](ch, call(2))
    assert [s[2] for s in seen] == [1, 2]


async def test_settled_is_told_once_when_the_last_import_ends_before_held_events_go_on(gated) -> None:
    # (a node process freezes its collector's view of what the imports built there, before the held calls run)
    import contextvars
    seen: list = []
    handlers = table(seen)
    told: list = []
    pre = Preloads(handlers, (contextvars.ContextVar("node"), None),
                   settled=lambda: told.append((pre.running, pre.held, len(seen))))
    waits = pre.start(["numpy_fake_a", "numpy_fake_b"])
    handlers[Call](FakeChannel("a"), call(1))
    gated.open("numpy_fake_a")
    await until(lambda: pre.running == ("numpy_fake_b",))
    assert told == []  # one import still runs
    gated.open("numpy_fake_b")
    await asyncio.gather(*waits)
    assert told == [((), 1, 0)]  # once; the held call not handled yet
    assert [s[2] for s in seen] == [1]


async def test_held_calls_apply_the_bound_and_closed_channels_are_skipped(gated) -> None:
    import contextvars
    seen: list = []
    handlers = table(seen)
    pre = Preloads(handlers, (contextvars.ContextVar("node"), None), lambda: [16])
    small, gone = FakeChannel("small", max_queued=2), FakeChannel("gone")
    waits = pre.start(["numpy_fake_a"])
    handlers[Call](small, call(1))
    assert not small.paused
    handlers[Call](small, call(2))
    assert small.paused  # reading stops: TCP pushes back on the caller
    handlers[Call](gone, call(3))
    handlers[Reply](gone, ev(Reply, 4))
    gone.closed = True
    gated.open("numpy_fake_a")
    await asyncio.gather(*waits)
    assert [s[2] for s in seen] == [1, 2] and gone.queued == 0
    assert small.queued == 0 and not small.paused


async def test_a_failed_import_releases_and_peers_name_only_known_libraries(gated, monkeypatch, caplog) -> None:
    import contextvars
    import logging
    seen: list = []
    handlers = table(seen)
    pre = Preloads(handlers, (contextvars.ContextVar("node"), None))

    def missing(name: str) -> None:
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(preloads_mod.importlib, "import_module", missing)
    assert pre.start(["os.path.nothing", "not_a_candidate"]) == []  # a peer's names: known libraries only
    caplog.set_level(logging.DEBUG, logger="disto.node")
    waits = pre.start(["no_such_lib_xyz"], any_name=True)  # the node's own command line: any name
    assert len(waits) == 1
    await asyncio.gather(*waits)
    # the command line named it: a warning (a library a peer named and this node lacks: a debug line)
    assert [r.levelname for r in caplog.records if "no_such_lib_xyz" in r.getMessage()] == ["WARNING"]
    await asyncio.gather(*pre.start(["numpy_fake_b"]))
    assert [r.levelname for r in caplog.records if "numpy_fake_b" in r.getMessage()] == ["DEBUG"]
    handlers[Call](FakeChannel("a"), call(1))
    assert [s[2] for s in seen] == [1]


async def test_joining_the_cluster_goes_on_while_the_node_imports(gated) -> None:
    import contextvars
    seen: list = []
    handlers = table(seen)
    ids = [0, 1]  # the node service and the registry only
    pre = Preloads(handlers, (contextvars.ContextVar("node"), None), lambda: ids)
    ch = FakeChannel("a")
    waits = pre.start(["numpy_fake_a"])
    handlers[Call](ch, call(1, actor_id=1, method="join"))  # membership: goes on
    handlers[Call](ch, call(2, actor_id=1, method="supervise"))  # carries the user's class: waits
    handlers[Call](ch, call(3, actor_id=0, method="spawn"))  # waits
    handlers[Reply](ch, ev(Reply, 4))  # no actor of the user's here: only the node's own calls await replies
    handlers[Failure](ch, ev(Failure, 5))  # an exception may be the user's: waits
    assert [s[2] for s in seen] == [1, 4]
    ids.append(16)
    handlers[Reply](ch, ev(Reply, 6))  # a user actor is here now: its replies may be anything
    handlers[Call](ch, call(7, actor_id=1, method="members"))
    assert [s[2] for s in seen] == [1, 4, 7]
    gated.open("numpy_fake_a")
    await asyncio.gather(*waits)
    assert [s[2] for s in seen] == [1, 4, 7, 2, 3, 5, 6]


async def test_a_long_import_is_reported_and_the_warning_cancelled_when_it_ends(gated, monkeypatch, caplog) -> None:
    import contextvars
    import logging
    seen: list = []
    handlers = table(seen)
    pre = Preloads(handlers, (contextvars.ContextVar("node"), None), lambda: [16])
    monkeypatch.setattr(pre, "WARN_AFTER", 0.0)  # (the instance's: due at the loop's next turn)
    caplog.set_level(logging.WARNING, logger="disto.node")
    waits = pre.start(["numpy_fake_a"])
    handlers[Call](FakeChannel("a"), call(1))
    await until(lambda: "still importing numpy_fake_a" in caplog.text)
    assert "1 call(s)" in caplog.text
    gated.open("numpy_fake_a")
    await asyncio.gather(*waits)
    assert pre._warning is None and [s[2] for s in seen] == [1]


async def test_a_dedicated_child_preloads_only_known_libraries_a_peer_named(monkeypatch) -> None:
    """A child node's command line takes any name, so the names a peer sent are filtered before they get there."""
    from disto.node import dedicated
    from disto.node.config import Here, NodeConfig

    seen: list = []

    async def fake_start(**kw):
        seen.append(kw["extra"])
        raise RuntimeError("not started in this test")

    monkeypatch.setattr(dedicated, "start_node_process", fake_start)
    procs = dedicated.DedicatedProcesses(Here("n1", "worker", "127.0.0.1:1"), b"token", NodeConfig(),
                                         lambda: "127.0.0.1:1")
    with pytest.raises(RuntimeError):
        await procs.start(("torch", "os", "some_module_of_theirs", "numpy"))
    extra = seen[0]
    assert extra[extra.index("--preload") + 1] == "torch,numpy"


def test_held_kinds_and_heavy_imports() -> None:
    assert set(HELD) == {Call, Reply, Failure, Cancel, StreamItem, StreamEnd, Goodbye}
    assert "torch" in PRELOAD_CANDIDATES and set(heavy_imports()) <= set(PRELOAD_CANDIDATES)
    assert ("numpy" in heavy_imports()) == ("numpy" in sys.modules)


# ---------------------------------------------------------------------------------------------- real processes
GATED_PACKAGE = {
    # the package's __init__ blocks on a FIFO until the test opens it, half-built, like torch while it imports
    "gatedlib/__init__.py": """
        import os
        with open(os.environ["GATEDLIB_FIFO"]) as f:
            f.read()
        from gatedlib import part
        VALUE = part.half() * 2
    """,
    "gatedlib/part.py": """
        def half():
            return 21
    """,
    "gatedlib/user.py": """
        from gatedlib import VALUE  # needs the whole package: fails on a half-built one
        def value():
            return VALUE
    """,
}


class Probe(disto.Actor):
    def value(self) -> int:
        import gatedlib.user
        return gatedlib.user.value()


async def test_a_node_holds_calls_while_its_command_line_preload_imports(tmp_path) -> None:
    for rel, text in GATED_PACKAGE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    env = dict(os.environ, DISTO_TOKEN=TOKEN, GATEDLIB_FIFO=str(fifo),
               PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    proc = subprocess.Popen([sys.executable, "-m", "disto", "node", "start", "--listen", "127.0.0.1:0",
                             "--preload", "gatedlib", "--log-level", "info"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    loop = asyncio.get_running_loop()
    try:
        line = await loop.run_in_executor(None, proc.stdout.readline)  # type: ignore[union-attr]
        address = line.split("listening on ")[1].split(",")[0].split()[0]

        async def attempt() -> int:
            async with disto.connect(address, token=TOKEN) as cluster:
                probe = await cluster.spawn(Probe)  # its arguments unpickle on the node's loop
                return await probe.value()  # its code imports a submodule of the package

        hold = loop.create_future()

        def read_log() -> None:  # the node's log, to its end (a full pipe would stop the node)
            for text in proc.stderr:  # type: ignore[union-attr]
                if "holding calls from" in text and "gatedlib" in text:
                    loop.call_soon_threadsafe(lambda: hold.done() or hold.set_result(None))
            loop.call_soon_threadsafe(lambda: hold.done() or hold.set_exception(AssertionError("node exited")))

        threading.Thread(target=read_log, daemon=True).start()
        call = asyncio.ensure_future(attempt())
        # (without the hold the call reaches the half-built package and waits for its lock, or worse)
        done, _ = await asyncio.wait({call, hold}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert done, "the node neither held the call nor answered it in 30 s"
        if call in done:
            pytest.fail(f"answered while the preload was half-way through the package: {call.result()!r}")
        assert hold.result() is None and not call.done()
        with open(fifo, "w") as f:  # let the import finish
            f.write("go")
        assert await asyncio.wait_for(call, 60) == 42
    finally:
        try:  # a failed test: let the import end, so that the node can stop
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        proc.terminate()
        await loop.run_in_executor(None, proc.wait)
