"""The trainer: spawns the outer server and the workers, evaluates the outer parameters after every round,
checkpoints the outer state, respawns lost workers from the current outer parameters, and returns the history
with the bytes each worker sent and received per round."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from disto import (ActorDeadError, ActorGroup, ActorRef, Cluster, DistoError, NodeLostError,
                   collect_all)
from disto.easgd.algorithms import flatten_
from disto.easgd.respawn import respawn
from .config import Config
from .server import OuterServer
from .worker import InnerWorker

log = logging.getLogger("disto.lowcomm")


@dataclass
class History:
    config: dict[str, Any]
    evals: list[dict[str, Any]] = field(default_factory=list)      # time, version, loss, bytes so far
    rounds: list[dict[str, Any]] = field(default_factory=list)     # per closed round: who came, who was missing
    exchanges: list[dict[str, Any]] = field(default_factory=list)  # per worker exchange: bytes up and down
    workers: list[dict[str, Any]] = field(default_factory=list)    # final stats per worker run
    events: list[dict[str, Any]] = field(default_factory=list)     # lost and respawned workers
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        return self.evals[-1]["loss"] if self.evals else float("nan")

    @property
    def best_loss(self) -> float:
        return min((e["loss"] for e in self.evals), default=float("nan"))

    @property
    def bytes_total(self) -> int:
        """Bytes every worker sent and received for training, all workers together."""
        return sum(w["bytes_up"] + w["bytes_down"] for w in self.workers)

    @property
    def peak_exchange_bytes(self) -> int:
        """The most bytes one worker moved in one exchange (up + down)."""
        return max((w["peak_exchange_bytes"] for w in self.workers), default=0)

    def bytes_by_worker(self) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        for w in self.workers:
            d = out.setdefault(w["rank"], {"up": 0, "down": 0})
            d["up"] += w["bytes_up"]
            d["down"] += w["bytes_down"]
        return out

    def bytes_by_round(self) -> list[dict[str, Any]]:
        """(fragment, round) -> bytes up and down of that round's exchanges, and by worker."""
        rows: dict[tuple[int, int], dict[str, Any]] = {}
        for e in self.exchanges:
            r = rows.setdefault((e["fragment"], e["round"]), {"fragment": e["fragment"], "round": e["round"],
                                                               "up": 0, "down": 0, "by_worker": {}})
            r["up"] += e["up"]
            r["down"] += e["down"]
            w = r["by_worker"].setdefault(e["worker"], 0)
            r["by_worker"][e["worker"]] = w + e["up"] + e["down"]
        return [rows[k] for k in sorted(rows)]

    def to_dict(self) -> dict[str, Any]:
        """Everything, plus the bytes by round and a summary (JSON-ready)."""
        return {**asdict(self), "bytes_by_round": self.bytes_by_round(), "bytes_by_worker": self.bytes_by_worker(),
                "summary": {"final_loss": self.final_loss, "best_loss": self.best_loss,
                            "bytes_total": self.bytes_total, "peak_exchange_bytes": self.peak_exchange_bytes,
                            "seconds": self.seconds}}

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)


class Trainer:
    """The local-SGD family on a disto cluster, with your own model and data.

    ``model_fn()`` builds the model (after ``torch.manual_seed(cfg.seed)``, so every replica starts equal);
    ``data_fn(rank)`` runs on each worker's node and returns a sampler ``(generator, batch) -> (x, y)`` or (x, y)
    tensors; ``eval_fn(model) -> float`` scores the outer parameters here, in a thread of this process so that
    the driver's loop keeps serving meanwhile (lower is better, e.g. validation loss). ``eval_every``: evaluate
    after every that many rounds, and at the end (an evaluation that takes longer goes on to the latest
    parameters). ``checkpoint``: saved after every evaluation (outer parameters, momentum, rounds); ``resume``: a
    checkpoint to go on from.
    """

    def __init__(self, cluster: Cluster, cfg: Config, model_fn: Callable[[], torch.nn.Module],
                 data_fn: Callable[[int], Any], eval_fn: Callable[[torch.nn.Module], float],
                 loss_fn: Callable[..., torch.Tensor] = torch.nn.functional.cross_entropy,
                 checkpoint: str | None = None, resume: str | None = None, respawn: bool = True,
                 eval_every: int = 1) -> None:
        if not cluster.nodes:
            raise DistoError("the cluster has no worker nodes")
        if not isinstance(eval_every, int) or eval_every < 1:
            raise ValueError(f"eval_every is a number of rounds >= 1, not {eval_every!r}")
        self.eval_every = eval_every
        self.cluster, self.cfg = cluster, cfg
        self.model_fn, self.data_fn, self.eval_fn, self.loss_fn = model_fn, data_fn, eval_fn, loss_fn
        self.checkpoint, self.respawn = checkpoint, respawn
        self.resume: dict[str, Any] | None = None
        if resume is not None:
            self.resume = torch.load(resume, weights_only=False)
            if self.resume.get("algorithm") != cfg.algorithm:
                raise DistoError(f"{resume} is a checkpoint of {self.resume.get('algorithm')!r}, "
                                 f"not {cfg.algorithm!r}")
        torch.manual_seed(cfg.seed)
        self._model = model_fn()
        self.init = flatten_(self._model).detach().clone()
        self.server: ActorRef | None = None
        self.workers: dict[int, ActorRef] = {}
        self.runs: dict[int, asyncio.Future] = {}
        self.incarnations: dict[int, int] = {}
        self._results: list[dict[str, Any]] = []

    def evaluate(self, params: torch.Tensor) -> float:
        torch.nn.utils.vector_to_parameters(params, self._model.parameters())
        self._model.eval()
        with torch.no_grad():
            return float(self.eval_fn(self._model))

    async def run(self, on_eval: Callable[[dict[str, Any]], None] | None = None) -> History:
        """Train ``cfg.rounds`` rounds (R * H inner steps per worker); evaluate after every round."""
        cfg = self.cfg
        history = History(config=asdict(cfg))
        if cfg.algorithm == "ddp":
            cfg.extra.setdefault("dist_init", "file://" + tempfile.mktemp(prefix="disto-gloo-"))
        resume = self.resume["server"] if self.resume else None
        self.server = await self.cluster.spawn(OuterServer, cfg, self.init, resume)
        group: ActorGroup | None = None
        try:
            group = await self.cluster.spawn_group(InnerWorker, cfg.workers, None, cfg, self.model_fn,
                                                   self.data_fn, self.loss_fn, self.server,
                                                   resources=cfg.worker_resources, strategy=cfg.worker_strategy,
                                                   process=cfg.algorithm == "ddp")  # a process group per process
        except BaseException:
            await self.cluster.stop(self.server)
            raise
        self.workers = dict(enumerate(group))
        t0 = time.perf_counter()
        for rank, ref in self.workers.items():
            self.runs[rank] = ref.run()
        version = resume["version"] if resume else 0  # the outer version evaluated last
        # versions per round: a fragment's round each (streaming), an arrival each (asynchronous), else one
        every = ((cfg.fragments or 1) if not cfg.asynchronous else cfg.workers) * self.eval_every
        if self.resume:
            history.evals.extend(self.resume.get("evals", []))
        try:
            while True:
                # wake at least every second to watch for lost workers; evaluate only on a whole eval period
                info = await self.server.updated(version + every - 1, timeout=1.0)
                await self._watch(history, t0)
                if not self.runs:  # all done: the last rounds closed before the runs returned
                    info = await self.server.updated(version, timeout=0.0)
                if info["version"] >= version + every or (not self.runs and info["version"] > version):
                    version = info["version"]
                    await self._evaluate(info, history, t0, on_eval)
                if not self.runs:
                    break
        finally:
            for rank, w in self.workers.items():
                if rank in self.runs and not self.runs[rank].done():  # a finished one may be stopped already
                    w.stop.tell()
            await self.server.stop_rounds()
            results = await collect_all(self.runs.values())
            self._results.extend(r for r in results if isinstance(r, dict))
            history.workers = self._results
            report = await self.server.report()
            history.rounds, history.exchanges = report["rounds"], report["exchanges"]
            history.seconds = time.perf_counter() - t0
            await collect_all(self.cluster.stop(r) for r in [*self.workers.values(), self.server])
            if group is not None and self.cluster.node.registry is not None:
                self.cluster.node.registry.forget_group.tell(group.group_id)
            init = cfg.extra.get("dist_init", "")
            if init.startswith("file://") and os.path.exists(init[7:]):
                os.unlink(init[7:])
        return history

    async def _evaluate(self, info: dict[str, Any], history: History, t0: float,
                        on_eval: Callable[[dict[str, Any]], None] | None) -> None:
        cfg = self.cfg
        if cfg.algorithm == "ddp":  # ring all-reduce volume of the steps rank 0 had done when it published
            n = self.init.numel()
            sent = int(2 * (cfg.workers - 1) / cfg.workers * n * 4) * 2 * cfg.workers
            moved = sent * info["published"].get("step", 0)
        else:
            moved = info["up"] + info["down"]
        # In a thread: a long evaluation must not stall this node's loop (its heartbeats, the rounds, the watch).
        loss = await asyncio.get_running_loop().run_in_executor(None, self.evaluate, info["params"])
        entry = {"time": round(time.perf_counter() - t0, 3), "version": info["version"], "rounds": info["rounds"],
                 "progress": round(self._progress(info), 4), "loss": loss, "bytes": moved}
        history.evals.append(entry)
        if self.checkpoint:
            self._save(await self.server.state_dict(), history)
        if on_eval is not None:
            on_eval(entry)

    def _progress(self, info: dict[str, Any]) -> float:
        """The fraction of the run behind these outer parameters: inner steps (ddp), rounds closed (the
        slowest fragment's), or arrivals (asynchronous: workers x rounds in all)."""
        cfg = self.cfg
        if cfg.algorithm == "ddp":
            return info["published"].get("step", 0) / cfg.total_steps
        if cfg.asynchronous:
            return min(1.0, info["version"] / (cfg.workers * cfg.rounds))
        sched = cfg.schedule
        return min(closed / sched.rounds(p) for p, closed in enumerate(info["rounds"]))

    def _save(self, state: dict[str, Any], history: History) -> None:
        tmp = f"{self.checkpoint}.tmp"
        torch.save({"algorithm": self.cfg.algorithm, "server": state, "evals": history.evals}, tmp)
        os.replace(tmp, self.checkpoint)

    async def _watch(self, history: History, t0: float) -> None:
        """Finished workers are collected; a lost one is reported, left out of the rounds, and (with
        ``respawn``) started again from the current outer parameters."""
        for rank, fut in list(self.runs.items()):
            if not fut.done():
                continue
            del self.runs[rank]
            err = None if fut.cancelled() else fut.exception()
            if err is None:
                self._results.append(fut.result())
                continue
            event = {"time": round(time.perf_counter() - t0, 3), "worker": rank,
                     "error": f"{type(err).__name__}: {err}"}
            log.warning("worker %d failed: %s", rank, event["error"])
            assert self.server is not None
            await self.server.leave(rank)
            if self.cfg.algorithm == "ddp":
                history.events.append(event)
                raise DistoError(f"ddp lost worker {rank} ({event['error']}): an all-reduce cannot go on "
                                 "without it")
            history.events.append(event)
            if not isinstance(err, (NodeLostError, ActorDeadError)):
                raise err  # the worker's own error (the model, the data, the loss): training cannot go on
            if self.respawn:
                await self._respawn(rank)
                event["respawned"] = True

    async def _respawn(self, rank: int) -> None:
        cfg = self.cfg
        self.incarnations[rank] = self.incarnations.get(rank, 0) + 1
        ref = await respawn(self.cluster, InnerWorker, rank, cfg, self.model_fn, self.data_fn, self.loss_fn,
                            self.server, self.incarnations[rank], rank=rank, resources=cfg.worker_resources,
                            strategy=cfg.worker_strategy)
        self.workers[rank] = ref
        self.runs[rank] = ref.run()
