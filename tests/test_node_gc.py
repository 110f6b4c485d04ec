"""A node process's garbage collector: a higher young threshold, and what start-up and the preloads built frozen
(``gc.freeze``) so that full collections skip it; never what an actor of the user's holds."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref

import pytest

import disto
from disto.node import node as node_mod
from disto.node.process import GC_YOUNG_THRESHOLD, gc_mode, tune_gc
from helpers import Counter, nodes, spawn


class _Cycle:
    def __init__(self) -> None:
        self.me = self


class _GcReport(disto.Actor):
    def __init__(self) -> None:
        self.kept = _Cycle()  # made after every freeze of the node's: its collector still sees it

    def report(self) -> tuple[tuple[int, int, int], int, bool]:
        return gc.get_threshold(), gc.get_freeze_count(), "torch" in sys.modules

    def drop_cycle_and_collect(self) -> bool:
        """Whether the actor's dropped cycle is collected (it would not be, had a freeze taken it)."""
        ref = weakref.ref(self.kept)
        self.kept = None
        gc.collect()
        return ref() is None


async def test_a_node_process_tunes_its_collector_and_freezes_what_its_preload_built() -> None:
    import torch  # noqa: F401 - the driver has it: its nodes preload it, and freeze what it built

    async with disto.LocalCluster(nodes=1) as cluster:
        probe = await cluster.nodes[0].spawn(_GcReport)
        (young, *_), frozen, has_torch = await probe.report()
        assert young == GC_YOUNG_THRESHOLD
        assert has_torch
        # torch builds about 140,000 objects, disto's own start-up about 35,000: the freeze after the preload took
        # them (the one at start ran while torch was being imported)
        assert frozen > 100_000, frozen
        assert await probe.drop_cycle_and_collect()


async def test_disto_node_gc_python_leaves_the_collector_as_python_sets_it_up() -> None:
    async with disto.LocalCluster(nodes=1, env={"DISTO_NODE_GC": "python"}) as cluster:
        probe = await cluster.nodes[0].spawn(_GcReport)
        threshold, frozen, _ = await probe.report()
        assert threshold == (700, 10, 10) and frozen == 0
        assert await probe.drop_cycle_and_collect()


def test_gc_mode_values_and_a_bad_one_on_the_command_line() -> None:
    assert gc_mode(" Tuned ") == "tuned" and gc_mode("python") == "python"
    with pytest.raises(ValueError):
        gc_mode("off")
    out = subprocess.run([sys.executable, "-m", "disto", "node", "start", "--gc", "off"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "expected 'tuned' or 'python'" in out.stderr
    env = dict(os.environ, DISTO_NODE_GC="bogus")  # the default comes from the environment: checked the same way
    out = subprocess.run([sys.executable, "-m", "disto", "node", "start"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 2 and "got 'bogus'" in out.stderr


def test_tune_gc_raises_the_young_threshold_only_upwards(monkeypatch) -> None:
    frozen: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))  # (this test process stays as it is)
    old = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        assert tune_gc() == (GC_YOUNG_THRESHOLD, 10, 10) and frozen == [True]
        gc.set_threshold(50_000, 5, 5)
        assert tune_gc() == (50_000, 5, 5)  # higher already: kept
        gc.set_threshold(0, 10, 10)
        assert tune_gc() == (0, 10, 10)  # collection disabled by the user: kept
    finally:
        gc.set_threshold(*old)


async def test_the_preloads_end_freezes_only_while_no_actor_of_the_users_is_on_the_node(monkeypatch) -> None:
    frozen: list[bool] = []
    monkeypatch.setattr(node_mod.gc, "freeze", lambda: frozen.append(True))
    async with nodes(1) as (a,):
        a._preloads_settled()
        assert frozen == []  # an in-process node (the driver's): never
        a.freeze_gc_after_preloads = True  # (what `disto node start --gc tuned` sets)
        a._preloads_settled()
        assert frozen == [True]
        await spawn(a, a, Counter)
        a._preloads_settled()
        assert frozen == [True]  # a freeze now would keep the actor's cycles from ever being collected
