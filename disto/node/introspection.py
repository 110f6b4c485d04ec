"""What a node tells about itself when asked: its actors (state, calls in flight and their age, per-method
figures), every thread's and asyncio task's stack with the call each one runs, and a snapshot of its counters
for the metrics. Plain dicts and lists, so they cross the wire as they are."""
from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from ..actor import FIRST_USER_ACTOR_ID
from .stats import process_stats

if TYPE_CHECKING:
    from ..actor import CallItem
    from .actors import ActorTable, Cell
    from .liveness import Liveness
    from .outbound import OutboundCalls
    from .peers import Peers

STACK_LIMIT = 30  # frames per stack


def _call(item: "CallItem", now: float) -> dict[str, Any]:
    return {"method": item.method, "age": round(now - item.t0, 6), "remote": item.ch is not None}


def actor_row(cell: "Cell", now: float) -> dict[str, Any]:
    """One actor as the listing, the dashboard and ``disto status`` show it."""
    mb = cell.mailbox
    mb.settle()  # (calls its thread answered itself: counted, and no longer running)
    state = "stopped" if mb.stopped else ("running" if mb.running_items or mb.running else "idle")
    ref = cell.ref
    stats = mb.stats
    return {
        "id": ref.actor_id, "class": ref.actor_class, "name": ref.actor_name, "state": state,
        "started": cell.started, "uptime": round(time.time() - cell.started, 3), "restarts": cell.restarts,
        "queued": len(mb.queue), "running": [_call(it, now) for it in list(mb.running_items)],
        "methods": stats.to_dict() if stats is not None else {},
    }


def actor_rows(table: "ActorTable") -> list[dict[str, Any]]:
    now = time.perf_counter()
    return [actor_row(c, now) for a, c in list(table.cells.items()) if a >= FIRST_USER_ACTOR_ID]


def _frames(frames: list[Any]) -> list[str]:
    return [f"{f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}" for f in frames]


def _await_chain(coro: Any) -> list[str]:
    """Where a task is: its coroutine and every coroutine it awaits, outermost first (Task.get_stack gives only
    the outermost frame of a suspended task)."""
    out: list[str] = []
    while coro is not None and len(out) < STACK_LIMIT:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return out


def _thread_stack(frame: Any) -> list[str]:
    return [f"{fs.filename}:{fs.lineno} in {fs.name}" for fs in traceback.extract_stack(frame, STACK_LIMIT)]


def stacks(table: "ActorTable") -> dict[str, Any]:
    """Every thread and asyncio task of this process, where each one is, and which actor call it runs."""
    now = time.perf_counter()
    frames = sys._current_frames()
    by_thread_name: dict[str, list[dict[str, Any]]] = {}  # an actor's thread -> the calls it runs
    by_task: dict[int, tuple[str, dict[str, Any], Any]] = {}  # a task -> its actor, call, the method's coroutine
    for actor_id, cell in list(table.cells.items()):
        if actor_id < FIRST_USER_ACTOR_ID:
            continue
        mb = cell.mailbox
        mb.settle()
        for item in list(mb.running_items):
            call = dict(_call(item, now), actor=mb.label)
            if item.task is not None:
                by_task[id(item.task)] = (mb.label, call, item.coro)
            elif mb.thread is not None:
                by_thread_name.setdefault(mb.thread.name, []).append(call)
    threads = []
    for t in threading.enumerate():
        frame = frames.get(t.ident or -1)
        actor = t.name[len("disto "):] if t.name.startswith("disto ") else None
        threads.append({"name": t.name, "ident": t.ident, "daemon": t.daemon, "actor": actor,
                        "calls": by_thread_name.get(t.name, []),
                        "stack": _thread_stack(frame) if frame is not None else []})
    tasks = []
    try:
        all_tasks = asyncio.all_tasks()
    except RuntimeError:
        all_tasks = set()
    for task in all_tasks:
        coro = task.get_coro()
        actor, call, method = by_task.get(id(task), (None, None, None))
        # an actor's call: from its method's coroutine (the mailbox's compiled coroutine that awaits it cannot be
        # followed: Cython awaits a coroutine through its __await__ wrapper, which exposes nothing)
        tasks.append({"name": task.get_name(), "coro": getattr(coro, "__qualname__", repr(coro)),
                      "actor": actor, "call": call,
                      "stack": _await_chain(method if method is not None else coro) or _frames(task.get_stack())})
    tasks.sort(key=lambda t: (t["actor"] is None, t["name"]))
    return {"threads": threads, "tasks": tasks}


def peer_rows(channels: list[Any], now: float, leased: Any) -> list[dict[str, Any]]:
    return [{"address": ch.address or ch.peer_name(), "heartbeat_age": round(now - ch.last_heard, 3),
             "bytes": {"tcp_in": ch.bytes_in, "tcp_out": ch.bytes_out, "shm_out": ch.shm_bytes_out,
                       "cuda_out": ch.cuda_bytes_out},
             "same_host": ch.same_host, "shm_leased": leased(ch)} for ch in channels]


def node_stats(node: Any, actors: "ActorTable", peers: "Peers", liveness: "Liveness",
               outbound: "OutboundCalls") -> dict[str, Any]:
    """What ``NodeHandle.stats()`` and ``disto status`` show of one node."""
    ready = peers.ready()
    now = liveness.clock()
    return {
        "node_id": node.node_id, "address": node.address, "role": node.role, "pid": os.getpid(),
        "seed": node.seed or node.address, "started": node.started_at,
        "uptime": round(time.time() - node.started_at, 3),
        "resources": node.resources,
        "actors": actor_rows(actors),
        "peers": sorted(ch.address or ch.peer_name() for ch in ready),
        "last_heard": {ch.address or ch.peer_name(): round(now - ch.last_heard, 3) for ch in ready},
        "lost": sorted(liveness.monitor.lost),  # addresses declared lost that have not answered since
        "pending_calls": outbound.in_flight(),
        "buffer_pool": peers.pool.stats(),
        "process": process_stats(),
        "shm": node.buffers.exporter.stats(),
        "peer_stats": peer_rows(ready, now, node.buffers.leased_to),
        "restarts": node.metrics.restarts,
        "thread_replies": actors.thread_replies(),
    }
