"""The parameter-server shard and the worker, as disto actors."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import torch

from disto import Actor, ActorRef, collect
from .algorithms import EASGDConfig, LocalLearner, center_step_, elastic_step_, sync_center_
from .collective import close_group, open_group


class CenterShard(Actor):
    """One contiguous slice of the center vector. Pushes are applied in arrival order, one at a time (they do
    not await, so they never interleave); ``sync_round`` waits for every worker of a synchronous round."""

    max_concurrency = 256  # workers waiting at a synchronous round must not block the others

    # fetch/push are short tensor ops on the critical path of every exchange, and abort_rounds sets the rounds'
    # asyncio events: all on the node's loop, without a hop to a thread
    sync_on_loop = True

    def __init__(self, init: torch.Tensor, lr: float = 0.0, bounds: list[tuple[int, int]] | None = None) -> None:
        """``init``: this shard's slice of the center; or, with ``bounds``, the whole center, of which a group
        member keeps slice ``bounds[self.rank]``."""
        torch.set_num_threads(1)
        if bounds is not None:
            if self.rank is None:
                raise ValueError("bounds= is for a group of shards (spawn_group): a lone shard gets its slice")
            a, b = bounds[self.rank]
            init = init[a:b]
        self.c = init.detach().clone()
        self.lr = lr
        self.version = 0
        self._rounds: dict[int, dict[str, Any]] = {}
        self._aborted = False

    async def sync_round(self, rnd: int, x: torch.Tensor, mode: str, workers: int, beta: float
                         ) -> torch.Tensor | None:
        """A synchronous round: returns, to each of the ``workers`` callers, what to apply once all have come;
        None if the rounds were aborted (a worker was lost, or training stops)."""
        if self._aborted:
            return None
        st = self._rounds.setdefault(rnd, {"xs": [], "event": asyncio.Event(), "result": None, "left": workers})
        st["xs"].append(x)
        if len(st["xs"]) == workers:
            st["result"] = sync_center_(self.c, st["xs"], mode, beta)
            st["xs"] = []
            self.version += 1
            st["event"].set()
        else:
            await st["event"].wait()
        result = st["result"]
        st["left"] -= 1
        if st["left"] <= 0:
            self._rounds.pop(rnd, None)
        return result

    def abort_rounds(self) -> None:
        """Release every worker waiting at a synchronous round (they get None and stop)."""
        self._aborted = True
        for st in self._rounds.values():
            st["event"].set()

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

    def __init__(self, rank: int | None, cfg: EASGDConfig, model_fn: Callable[[], torch.nn.Module],
                 data_fn: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                 loss_fn: Callable[..., torch.Tensor], shards: list[ActorRef], bounds: list[tuple[int, int]],
                 start: torch.Tensor | None = None) -> None:
        """``rank``: which worker this is (None: its rank in the group spawn_group made it in)."""
        torch.set_num_threads(1)
        if rank is None:
            if self.rank is None:
                raise ValueError("a Worker needs a rank: pass one, or spawn it in a group")
            rank = self.rank
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
        self.is_leader = True
        self._dist: Any = None  # torch.distributed, once a process group is set up

    def stop(self) -> None:
        self._stop = True

    def stats(self) -> dict[str, Any]:
        busy = self.busy + (time.perf_counter() - self._started if self._started is not None else 0.0)
        return {"rank": self.rank, "checksum": float(self.learner.flat.double().sum()), "steps": self.steps, "samples": self.steps * self.cfg.batch_size,
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

    async def _sync_round(self, rnd: int) -> bool:
        """Meet the other workers at the shards; apply the result. False if the rounds were aborted."""
        cfg, flat = self.cfg, self.learner.flat
        t0 = time.perf_counter()
        parts = await collect(s.sync_round(rnd, flat[a:b].clone(), cfg.algorithm, cfg.workers, cfg.beta)
                              for s, (a, b) in zip(self.shards, self.bounds))
        self.blocked += time.perf_counter() - t0
        if any(p is None for p in parts):
            return False
        target = torch.cat(parts)
        if cfg.algorithm == "sync_easgd":
            elastic_step_(flat, target, cfg.alpha)
        else:
            flat.copy_(target)
        return True

    def _init_allreduce(self) -> Any:
        return open_group("gloo", self.cfg.extra["dist_init"], self.rank, self.cfg.processes)

    def _init_group(self) -> None:
        """Data-parallel worker groups: ranks [g*k, (g+1)*k) form group g; its first rank exchanges with the
        center for the whole group and broadcasts the result."""
        dist = self._init_allreduce()
        k = self.cfg.group_size
        groups = [dist.new_group(list(range(g * k, (g + 1) * k))) for g in range(self.cfg.workers)]
        self._dist = dist
        self._group = groups[self.rank // k]
        self._leader = (self.rank // k) * k
        self.is_leader = self.rank == self._leader

    def _averaged_step(self, group: Any, size: int) -> bool:
        """One data-parallel step: gradients averaged over ``group`` (None: every worker) with torch.distributed,
        then the same update everywhere. Returns True when any member was asked to stop: the flag rides in the
        same all-reduce, so all stop after the same step (one that left alone would leave the others blocked in
        the collective, holding their nodes' event loops)."""
        learner = self.learner
        self.last_loss = learner.gradient()
        grad = torch.cat([learner.flat_grad(), torch.tensor([1.0 if self._stop else 0.0])])
        t0 = time.perf_counter()
        self._dist.all_reduce(grad, group=group)
        self.blocked += time.perf_counter() - t0
        learner.apply_flat_grad(grad[:-1].div_(size))
        return bool(grad[-1] > 0)

    async def _finish_pushes(self) -> None:
        if self._inflight:
            await collect(self._inflight)
            self._inflight = []

    async def run(self, max_steps: int | None = None) -> dict[str, Any]:
        if self.cfg.synchronous:
            return await self._run_sync(max_steps)
        cfg, learner = self.cfg, self.learner
        tau, prefetch, algo = cfg.tau, cfg.prefetch, cfg.algorithm
        grouped = cfg.group_size > 1
        if grouped:
            self._init_group()
        leads = not grouped or self.is_leader  # only a group's first rank talks to the center
        fetch_at = tau - prefetch if prefetch and leads else None
        pending: asyncio.Future | None = None
        start = self._started = time.perf_counter()
        t = 0
        try:
            while (grouped or not self._stop) and (max_steps is None or t < max_steps):
                phase = t % tau
                if (algo != "msgd" and fetch_at is not None and phase == fetch_at
                        and (max_steps is None or t + prefetch < max_steps)):
                    pending = self._fetch()  # prefetch: the reply arrives while we compute
                if t > 0 and phase == 0 and not leads:
                    self._dist.broadcast(learner.flat, src=self._leader, group=self._group)  # the new x
                    self.exchanges += 1
                elif t > 0 and phase == 0:
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
                        if grouped:
                            self._dist.broadcast(learner.flat, src=self._leader, group=self._group)
                    pending = None
                if grouped:
                    if self._averaged_step(self._group, cfg.group_size):
                        t += 1
                        self.steps += 1
                        break
                elif algo == "downpour":
                    self.last_loss = learner.gradient()
                    self._push("push_gradient", learner.flat_grad())
                    learner.opt.step()
                    learner.steps += 1
                else:
                    self.last_loss = learner.step()
                t += 1
                self.steps += 1
                await asyncio.sleep(0)  # let replies (prefetch) and stats()/stop() in
            await self._finish_pushes()
        finally:
            self.busy += time.perf_counter() - start
            self._started = None
            if grouped:
                close_group()
        return self.stats()

    async def _run_sync(self, max_steps: int | None) -> dict[str, Any]:
        cfg, learner = self.cfg, self.learner
        allreduce = cfg.algorithm == "allreduce"
        if allreduce:
            self._dist = self._init_allreduce()
        start = self._started = time.perf_counter()
        t = 0
        try:
            # all-reduce workers agree on stopping inside the collective (see _averaged_step)
            while (allreduce or not self._stop) and (max_steps is None or t < max_steps):
                if t > 0 and t % cfg.tau == 0:
                    self.exchanges += 1
                    if not allreduce:
                        if not await self._sync_round(t // cfg.tau):
                            break
                    elif self.rank == 0:  # all replicas are equal: publish one for evaluation
                        self._check_pushes()
                        self._push("assign", learner.flat.clone())
                t += 1
                self.steps += 1
                if allreduce:
                    if self._averaged_step(None, cfg.workers):
                        break
                else:
                    self.last_loss = learner.step()
                await asyncio.sleep(0)
            await self._finish_pushes()
        finally:
            self.busy += time.perf_counter() - start
            self._started = None
            if allreduce:
                close_group()
        return self.stats()
