"""The parameter-server shard and the worker, as disto actors."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import torch

from disto import Actor, ActorRef, collect
from .algorithms import EASGDConfig, LocalLearner, center_step_, elastic_step_


class CenterShard(Actor):
    """One contiguous slice of the center vector. Pushes are applied in arrival order, one at a time."""

    def __init__(self, init: torch.Tensor, lr: float = 0.0) -> None:
        torch.set_num_threads(1)
        self.c = init.detach().clone()
        self.lr = lr
        self.version = 0

    def fetch(self) -> torch.Tensor:
        # a copy: the reply may still be on its way out when the next push lands
        return self.c.clone()

    def push(self, d: torch.Tensor) -> int:
        """EASGD: c += d (additive: concurrent workers never overwrite each other)."""
        center_step_(self.c, d)
        self.version += 1
        return self.version

    def push_gradient(self, g: torch.Tensor) -> int:
        """DOWNPOUR: c -= lr * g."""
        self.c.sub_(g, alpha=self.lr)
        self.version += 1
        return self.version

    def assign(self, x: torch.Tensor) -> int:
        self.c.copy_(x)
        self.version += 1
        return self.version

    def get_version(self) -> int:
        return self.version


class Worker(Actor):
    """Trains its own copy of the model and exchanges with the center every ``tau`` steps (see algorithms.py).
    ``run`` holds one slot; ``stats`` and ``stop`` answer while it runs."""

    max_concurrency = 4

    def __init__(self, rank: int, cfg: EASGDConfig, model_fn: Callable[[], torch.nn.Module],
                 data_fn: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                 loss_fn: Callable[..., torch.Tensor], shards: list[ActorRef], bounds: list[tuple[int, int]],
                 start: torch.Tensor | None = None) -> None:
        torch.set_num_threads(1)
        self.rank = rank
        self.cfg = cfg
        x, y = data_fn(rank)
        self.learner = LocalLearner(model_fn, torch.as_tensor(x), torch.as_tensor(y), loss_fn, cfg,
                                    seed=cfg.seed * 1000 + rank)
        if start is not None:  # a respawned worker starts from the center
            self.learner.flat.copy_(start)
        self.shards = shards
        self.bounds = bounds
        self._stop = False
        self.steps = 0
        self.exchanges = 0
        self.fetches = 0
        self.pushes = 0
        self.blocked = 0.0   # seconds spent waiting for the center
        self.busy = 0.0      # seconds of finished run()s
        self._started: float | None = None
        self.waits = 0       # exchanges that had to wait for the center (the prefetch had not arrived)
        self.last_loss = float("nan")
        self.distance = 0.0  # |x - c| at the last exchange
        self._inflight: list[asyncio.Future] = []

    def stop(self) -> None:
        self._stop = True

    def stats(self) -> dict[str, Any]:
        busy = self.busy + (time.perf_counter() - self._started if self._started is not None else 0.0)
        return {"rank": self.rank, "steps": self.steps, "samples": self.steps * self.cfg.batch_size,
                "exchanges": self.exchanges, "fetches": self.fetches, "pushes": self.pushes, "waits": self.waits,
                "blocked_s": self.blocked, "busy_s": busy, "loss": self.last_loss, "distance": self.distance,
                "comm_fraction": self.blocked / busy if busy else 0.0}

    def _fetch(self) -> asyncio.Future:
        self.fetches += 1
        return collect([s.fetch() for s in self.shards])

    def _push(self, method: str, v: torch.Tensor) -> None:
        self.pushes += 1
        # sent now, not awaited: communication overlaps the next steps; errors surface at the next exchange
        self._inflight.extend(s[method](v[a:b]) for s, (a, b) in zip(self.shards, self.bounds))

    def _check_pushes(self) -> None:
        still = []
        for f in self._inflight:
            if f.done():
                f.result()  # raises if a push failed (a shard was lost)
            else:
                still.append(f)
        self._inflight = still

    async def _center(self, pending: asyncio.Future | None) -> torch.Tensor:
        fut = pending if pending is not None else self._fetch()
        if not fut.done():
            self.waits += 1
            t0 = time.perf_counter()
            await fut
            self.blocked += time.perf_counter() - t0
        return torch.cat(fut.result())

    async def run(self, max_steps: int | None = None) -> dict[str, Any]:
        cfg, learner = self.cfg, self.learner
        tau, prefetch, algo = cfg.tau, cfg.prefetch, cfg.algorithm
        fetch_at = tau - prefetch if prefetch else None
        pending: asyncio.Future | None = None
        start = self._started = time.perf_counter()
        t = 0
        try:
            while not self._stop and (max_steps is None or t < max_steps):
                phase = t % tau
                if (algo != "msgd" and fetch_at is not None and phase == fetch_at
                        and (max_steps is None or t + prefetch < max_steps)):
                    pending = self._fetch()  # prefetch: the reply arrives while we compute
                if t > 0 and phase == 0:
                    self._check_pushes()
                    self.exchanges += 1
                    if algo == "msgd":
                        self._push("assign", learner.flat.clone())
                    elif algo == "downpour":
                        learner.flat.copy_(await self._center(pending))
                    else:
                        c = await self._center(pending)
                        self.distance = float((learner.flat - c).norm())
                        self._push("push", elastic_step_(learner.flat, c, cfg.alpha))
                    pending = None
                if algo == "downpour":
                    self.last_loss = learner.gradient()
                    self._push("push_gradient", learner.flat_grad())
                    learner.opt.step()
                    learner.steps += 1
                else:
                    self.last_loss = learner.step()
                t += 1
                self.steps += 1
                await asyncio.sleep(0)  # let replies (prefetch) and stats()/stop() in
            if self._inflight:
                await collect(self._inflight)
                self._inflight = []
        finally:
            self.busy += time.perf_counter() - start
            self._started = None
        return self.stats()
