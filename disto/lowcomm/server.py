"""The outer server: one actor holding the outer parameters and the outer optimizer's state, fragment by
fragment. Workers send compressed pseudo-gradients; synchronous rounds wait for their quorum (rounds.py);
replies carry the new parameters as a compressed difference from what that worker holds.

Why differences from each worker's view: the server keeps, per worker, the exact floats it decoded last time
(``views``). A reply encodes ``theta - view`` and both ends add the same decoded floats, so compression errors
are corrected by the next reply instead of piling up, and the server rebuilds each worker's point as
``view - pseudo_gradient`` exactly (up to the upstream compression).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import torch

from disto import Actor
from disto.easgd.algorithms import shard_bounds
from .codec import Packed, decode, encode
from .config import Config
from .outer import OuterState
from .rounds import RoundBook


class OuterServer(Actor):
    sync_on_loop = True      # short tensor ops: on the node's loop, no thread hop
    max_concurrency = 1024   # every worker may be waiting at a round

    def __init__(self, cfg: Config, init: torch.Tensor, resume: dict[str, Any] | None = None) -> None:
        torch.set_num_threads(1)
        self.cfg = cfg
        self.opt = cfg.outer()
        self.sched = cfg.schedule
        flat = init.detach().to(torch.float32).reshape(-1)
        self.bounds = shard_bounds(flat.numel(), self.sched.fragments)
        self.states = [self.opt.state(flat[a:b]) for a, b in self.bounds]
        first = 1
        self.version = 0            # outer updates applied so far (fragment rounds, arrivals or publications)
        if resume is not None:
            self.states = [OuterState.from_dict(d) for d in resume["states"]]
            first = int(resume["rounds"][0]) + 1 if resume["rounds"] else 1
            self.version = int(resume["version"])
        members = list(range(cfg.workers))
        self.books = [RoundBook(members, cfg.deadline, cfg.min_workers, first_round=first) for _ in self.bounds]
        if resume is not None:
            for book, closed in zip(self.books, resume["rounds"]):
                book.current, book.closed = int(closed) + 1, int(closed)
        self.views: dict[int, list[torch.Tensor]] = {}
        self._events: dict[tuple[int, int], asyncio.Event] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._changed = asyncio.Event()
        self.t0 = time.time()
        self.exchanges: list[dict[str, Any]] = []   # one row per worker exchange
        self.rounds: list[dict[str, Any]] = []      # one row per closed round
        self.published: dict[str, Any] = {}
        self._stopped = False

    # -- joining -------------------------------------------------------------------------------------------

    async def join(self, worker: int) -> dict[str, Any]:
        """A worker (first start, respawn, or resumed run) starts here: the full parameters in fp32 and the inner
        step to start from. If a round of fragment 0 is under way, wait for it, so the start is current."""
        book0 = self.books[0]
        while book0.open.get(book0.current) and not self._stopped:
            await self._event(0, book0.current).wait()
        start = self.sched.step_of(0, book0.closed) if book0.closed > 0 else 0
        for p, book in enumerate(self.books):
            nxt = next((t for t in range(start + 1, self.sched.total + 1) if p in self.sched.due(t)), None)
            if nxt is not None:
                book.join(worker, self.sched.round_at(nxt, p))
        self.views[worker] = [s.params.clone() for s in self.states]
        return {"params": torch.cat(self.views[worker]), "step": start, "bounds": self.bounds,
                "stopped": self._stopped}

    def leave(self, worker: int) -> None:
        """Stop waiting for ``worker`` (lost): open rounds it held up close now if everyone else is in."""
        for p, book in enumerate(self.books):
            book.leave(worker)
            self._maybe_close(p)
        self.views.pop(worker, None)

    # -- exchanges -----------------------------------------------------------------------------------------

    async def exchange(self, worker: int, p: int, rnd: int, delta: Packed) -> dict[str, Any]:
        """Worker ``worker``'s pseudo-gradient for fragment ``p`` (its view minus its point). Returns the new
        parameters of the fragment: {"kind": "diff", "packed": theta - view} or {"kind": "full", "params"}."""
        up = delta.nbytes
        g_local = decode(delta)
        view = self.views.get(worker)
        if view is None or self._stopped:  # unknown (e.g. it was given up on and came back): start it afresh
            return self._reply_full(worker, p, rnd, up, "rejoin" if not self._stopped else "stopped")
        state = self.states[p]
        g = g_local.add_(state.params - view[p])   # theta - x_i, with x_i = view - delta
        if self.cfg.asynchronous:
            self.opt.arrive_(state, g)
            self.version += 1
            self._record_round(p, rnd, [worker], set())
            self._changed.set()
            return self._reply_diff(worker, p, rnd, up)
        book = self.books[p]
        if book.arrive(worker, rnd, g, time.monotonic()) == "late":
            return self._reply_full(worker, p, rnd, up, "late")
        event = self._event(p, rnd)
        self._maybe_close(p)
        if not event.is_set():
            await event.wait()
        if self._stopped and self.books[p].closed < rnd:
            return self._reply_full(worker, p, rnd, up, "stopped")
        return self._reply_diff(worker, p, rnd, up)

    def _event(self, p: int, rnd: int) -> asyncio.Event:
        return self._events.setdefault((p, rnd), asyncio.Event())

    def _maybe_close(self, p: int) -> None:
        book = self.books[p]
        now = time.monotonic()
        while book.ready(now):
            number, values, missing = book.close()
            g = torch.stack(list(values.values())).mean(dim=0)
            self.opt.step_(self.states[p], g, short_final=self.sched.short_final(p, number))
            self.version += 1
            self._record_round(p, number, sorted(values), missing)
            self._events.pop((p, number), asyncio.Event()).set()
            self._changed.set()
        timer = self._timers.pop(p, None)
        if timer is not None:
            timer.cancel()
        at = book.closes_at()
        if at is not None and at > now:  # the quorum's deadline for the round now open (once passed, the
            #                              round closes at the arrival that makes min_workers)
            self._timers[p] = asyncio.get_running_loop().call_later(max(0.0, at - now) + 1e-3, self._maybe_close, p)

    def _reply_diff(self, worker: int, p: int, rnd: int, up: int) -> dict[str, Any]:
        view = self.views[worker][p]
        packed = encode(self.states[p].params - view, self.cfg.compression or "fp32")
        view.add_(decode(packed))
        self._record_exchange(worker, p, rnd, up, packed.nbytes, "ok")
        return {"kind": "diff", "packed": packed}

    def _reply_full(self, worker: int, p: int, rnd: int, up: int, why: str) -> dict[str, Any]:
        view = self.views.setdefault(worker, [s.params.clone() for s in self.states])
        view[p] = self.states[p].params.clone()
        self._record_exchange(worker, p, rnd, up, view[p].numel() * 4, why)
        return {"kind": "full", "params": view[p].clone(), "why": why, "stopped": self._stopped}

    def _record_exchange(self, worker: int, p: int, rnd: int, up: int, down: int, outcome: str) -> None:
        self.exchanges.append({"time": round(time.time() - self.t0, 4), "worker": worker, "fragment": p,
                               "round": rnd, "up": up, "down": down, "outcome": outcome})

    def _record_round(self, p: int, number: int, workers: list[int], missing: set[int]) -> None:
        self.rounds.append({"time": round(time.time() - self.t0, 4), "fragment": p, "round": number,
                            "workers": workers, "missing": sorted(missing), "version": self.version})

    # -- evaluation, checkpoints, the ddp baseline ----------------------------------------------------------

    def publish(self, params: torch.Tensor, step: int) -> int:
        """The ddp baseline: rank 0's parameters, for evaluation (not an outer step)."""
        flat = params.reshape(-1)
        for st, (a, b) in zip(self.states, self.bounds):
            st.params.copy_(flat[a:b])
        self.version += 1
        self.published = {"step": step, "time": round(time.time() - self.t0, 4)}
        self._changed.set()
        return self.version

    async def updated(self, after: int, timeout: float) -> dict[str, Any]:
        """Wait (at most ``timeout`` s) for ``version > after``; the current parameters and counters."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.version <= after and not self._stopped and loop.time() < end:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, end - loop.time()))
            except asyncio.TimeoutError:
                break
        return {"version": self.version, "params": torch.cat([s.params for s in self.states]),
                "time": round(time.time() - self.t0, 4), "up": sum(e["up"] for e in self.exchanges),
                "down": sum(e["down"] for e in self.exchanges),
                "rounds": [b.closed for b in self.books], "stopped": self._stopped, "published": self.published}

    def state_dict(self) -> dict[str, Any]:
        """The outer state to resume from: parameters, momentum, the rounds closed."""
        return {"states": [s.to_dict() for s in self.states], "rounds": [b.closed for b in self.books],
                "version": self.version, "bounds": self.bounds}

    def report(self) -> dict[str, Any]:
        return {"exchanges": self.exchanges, "rounds": self.rounds}

    def stop_rounds(self) -> None:
        """Training ends: release everyone waiting (they get their fragment in full and stop)."""
        self._stopped = True
        for ev in self._events.values():
            ev.set()
        self._changed.set()
