"""The trainer: spawns center shards and workers on a cluster, evaluates and checkpoints the center, survives
lost workers, and returns the history."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from disto import (ActorDeadError, ActorGroup, ActorRef, Cluster, DistoError, NodeLostError, collect,
                   collect_all)
from .actors import CenterShard, Worker
from .algorithms import EASGDConfig, accuracy, flatten_, shard_bounds
from .respawn import respawn

log = logging.getLogger("disto.easgd")


@dataclass
class History:
    config: dict[str, Any]
    evals: list[dict[str, Any]] = field(default_factory=list)   # time, samples, steps, accuracy
    workers: list[dict[str, Any]] = field(default_factory=list)  # final stats per worker
    events: list[dict[str, Any]] = field(default_factory=list)   # lost and respawned workers
    seconds: float = 0.0

    def time_to(self, target: float) -> float | None:
        return next((e["time"] for e in self.evals if e["accuracy"] >= target), None)

    def samples_to(self, target: float) -> int | None:
        return next((e["samples"] for e in self.evals if e["accuracy"] >= target), None)

    @property
    def best(self) -> float:
        return max((e["accuracy"] for e in self.evals), default=0.0)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=1)


class Trainer:
    """EA-SGD (and baselines) on a disto cluster, with your own model and data.

    ``model_fn()`` builds the model (same initial weights everywhere: it is built after ``torch.manual_seed``);
    ``data_fn(rank)`` returns the (x, y) training tensors of worker ``rank`` (it runs on the worker's node);
    ``test`` is the (x, y) the center is evaluated on, here. ``checkpoint``: a path the center is saved to at
    every evaluation.
    """

    def __init__(self, cluster: Cluster, cfg: EASGDConfig, model_fn: Callable[[], torch.nn.Module],
                 data_fn: Callable[[int], tuple[Any, Any]], test: tuple[torch.Tensor, torch.Tensor],
                 loss_fn: Callable[..., torch.Tensor] = torch.nn.functional.cross_entropy,
                 checkpoint: str | None = None, respawn: bool = True) -> None:
        if not cluster.nodes:
            raise DistoError("the cluster has no worker nodes")
        self.cluster = cluster
        self.cfg = cfg
        self.model_fn = model_fn
        self.data_fn = data_fn
        self.loss_fn = loss_fn
        self.test = test
        self.checkpoint = checkpoint
        self.respawn = respawn
        torch.manual_seed(cfg.seed)
        self._eval_model = model_fn()
        self.center0 = flatten_(model_fn_seeded(model_fn, cfg.seed)).clone()
        self.bounds = shard_bounds(self.center0.numel(), cfg.shards)
        self.shards: list[ActorRef] = []
        self.workers: dict[int, ActorRef] = {}  # by rank: the group's members, or their replacements
        self.worker_group: ActorGroup | None = None
        self.runs: dict[int, asyncio.Future] = {}

    async def _respawn_worker(self, rank: int, start: torch.Tensor) -> None:
        """A new worker ``rank`` from the center, placed by the same request as the group's."""
        cfg = self.cfg
        ref = await respawn(self.cluster, Worker, rank, cfg, self.model_fn, self.data_fn, self.loss_fn,
                            self.shards, self.bounds, start, rank=rank, resources=cfg.worker_resources,
                            strategy=cfg.worker_strategy)
        self.workers[rank] = ref
        self.runs[rank] = ref.run()

    async def center(self) -> torch.Tensor:
        try:
            return torch.cat(await collect([s.fetch() for s in self.shards]))
        except (NodeLostError, ActorDeadError) as e:
            raise DistoError(f"a parameter shard was lost ({e}); the center was last saved to "
                             f"{self.checkpoint or '(no checkpoint configured)'}") from e

    async def run(self, seconds: float = 60.0, target: float | None = None, max_steps: int | None = None,
                  on_eval: Callable[[dict[str, Any]], None] | None = None) -> History:
        """Train for at most ``seconds`` (or until the center reaches accuracy ``target``, or each worker did
        ``max_steps``); return the history."""
        cfg = self.cfg
        collective = cfg.algorithm == "allreduce" or cfg.group_size > 1
        if collective:
            if "dist_init" not in cfg.extra:
                import tempfile
                cfg.extra["dist_init"] = "file://" + tempfile.mktemp(prefix="disto-gloo-")  # one host
        history = History(config=asdict(cfg))
        lr = cfg.lr if cfg.algorithm == "downpour" else 0.0
        # the center's shards and the workers, each a group placed by what it needs (cfg.*_resources)
        shard_group = await self.cluster.spawn_group(CenterShard, cfg.shards, self.center0, lr, bounds=self.bounds,
                                                     resources=cfg.shard_resources, strategy=cfg.shard_strategy)
        self.shards = list(shard_group)
        try:
            self.worker_group = await self.cluster.spawn_group(
                Worker, cfg.processes, None, cfg, self.model_fn, self.data_fn, self.loss_fn, self.shards,
                self.bounds, resources=cfg.worker_resources, strategy=cfg.worker_strategy,
                process=collective)  # torch.distributed has one default group per process: a process per rank
        except BaseException:
            await shard_group.stop()
            raise
        self.workers = dict(enumerate(self.worker_group))
        for rank, ref in self.workers.items():  # start together, once every node is done building its worker
            self.runs[rank] = ref.run(max_steps)
        t0 = time.perf_counter()
        pending: list[tuple[dict[str, Any], torch.Tensor]] = []  # snapshots not evaluated yet (with a target)
        index = 0  # snapshots taken
        kept = 0  # bytes of the snapshots in pending
        try:
            while True:
                await asyncio.sleep(cfg.eval_interval)
                await self._watch_workers(history, t0, max_steps)
                center = await self.center()
                stats = await collect_all(w.stats() for w in self.workers.values())
                done = [s for s in stats if isinstance(s, dict)]
                entry = {"time": round(time.perf_counter() - t0, 3),
                         "samples": sum(s["samples"] for s in done), "steps": sum(s["steps"] for s in done),
                         "comm_fraction": max((s["comm_fraction"] for s in done), default=0.0),
                         "loadavg": os.getloadavg()[0]}
                finished = all(f.done() for f in self.runs.values())
                last = entry["time"] >= seconds or finished
                index += 1
                if not last and index % cfg.eval_stride:
                    if target is None:
                        continue  # nothing to find later: not kept
                    pending.append((entry, center))  # it may be the first to cross, even if a later one falls back
                    kept += center.nbytes
                    if kept <= cfg.eval_keep_bytes:
                        continue
                    # too much kept: the oldest is evaluated now, on the training's clock (so every snapshot still
                    # is, and time_to(target) stays exact; only the CPU saving shrinks)
                    entry, center = pending.pop(0)
                    kept -= center.nbytes
                acc = accuracy(self.model_fn, center, *self.test, model=self._eval_model)
                reached = target is not None and acc >= target
                if not (reached or last):
                    self._record(history, center, entry, acc, on_eval)
                    continue
                # the training stops here: the snapshots skipped so far are evaluated now, off its clock, so
                # time_to(target) is the first snapshot at or above it, as with eval_stride 1; recorded in time
                # order (the checkpoint left is the newest)
                final = [(e, c, accuracy(self.model_fn, c, *self.test, model=self._eval_model)) for e, c in pending]
                final.append((entry, center, acc))
                final.sort(key=lambda r: r[0]["time"])
                for e, c, a in final:
                    self._record(history, c, e, a, on_eval)
                history.evals.sort(key=lambda e: e["time"])
                break
        finally:
            for w in self.workers.values():
                w.stop.tell()
            if cfg.synchronous:  # nobody may be left waiting for a worker that has stopped
                await collect_all(s.abort_rounds() for s in self.shards)
            results = await collect_all(self.runs.values())
            history.workers = [r for r in results if isinstance(r, dict)]
            history.seconds = time.perf_counter() - t0
            await collect_all(self.cluster.stop(r) for r in [*self.workers.values(), *self.shards])
            for group in (self.worker_group, shard_group):  # their members are stopped: forget the groups
                if group is not None and self.cluster.node.registry is not None:
                    self.cluster.node.registry.forget_group.tell(group.group_id)
            init = cfg.extra.get("dist_init", "")
            if init.startswith("file://"):
                try:
                    os.unlink(init[len("file://"):])
                except OSError:
                    pass
        return history

    def _record(self, history: History, center: torch.Tensor, entry: dict[str, Any], acc: float,
                on_eval: Callable[[dict[str, Any]], None] | None) -> None:
        entry = {"time": entry["time"], "accuracy": acc, **{k: v for k, v in entry.items() if k != "time"}}
        history.evals.append(entry)
        if self.checkpoint:
            torch.save({"center": center, "config": asdict(self.cfg), "eval": entry}, self.checkpoint)
        if on_eval is not None:
            on_eval(entry)

    async def _watch_workers(self, history: History, t0: float, max_steps: int | None) -> None:
        """A worker whose node was lost: report it; with ``respawn`` start a new one from the center."""
        for rank, fut in list(self.runs.items()):
            if not fut.done() or fut.cancelled() or fut.exception() is None:
                continue
            err = fut.exception()
            event = {"time": round(time.perf_counter() - t0, 3), "worker": rank,
                     "error": f"{type(err).__name__}: {err}"}
            log.warning("worker %d failed: %s", rank, event["error"])
            del self.runs[rank]
            if self.cfg.synchronous or self.cfg.group_size > 1:
                history.events.append(event)
                await collect_all(s.abort_rounds() for s in self.shards)
                raise DistoError(f"synchronous training lost worker {rank} ({event['error']}): the others "
                                 "cannot go on without it (a data-parallel group neither)")
            if self.respawn and isinstance(err, (NodeLostError, ActorDeadError)):
                await self._respawn_worker(rank, await self.center())
                event["respawned"] = True
            history.events.append(event)


def model_fn_seeded(model_fn: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """The initial model every worker starts from (workers seed the same way in LocalLearner)."""
    torch.manual_seed(seed)
    return model_fn()
