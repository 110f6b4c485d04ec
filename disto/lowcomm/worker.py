"""The inner worker: a replica of the model with its own AdamW and data, exchanging fragments with the outer
server on the schedule (rounds.py). ``run`` holds one slot; ``stats`` and ``stop`` answer while it runs."""
from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any, Callable

import torch

from disto import Actor, ActorRef
from disto.easgd.algorithms import flatten_
from disto.easgd.collective import close_group, open_group
from .codec import decode, encode
from .config import Config
from .outer import overlap_merge_

Sampler = Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor]]


def sampler(data: Any) -> Sampler:
    """``data_fn(rank)`` gives either a sampler ``(generator, batch_size) -> (x, y)`` or (x, y) tensors whose
    rows are sampled uniformly."""
    if callable(data):
        return data
    x, y = (torch.as_tensor(v) for v in data)

    def rows(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, x.shape[0], (n,), generator=gen)
        return x[idx], y[idx]
    return rows


def inner_lr(cfg: Config, t: int) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to a tenth over the run (the same for every
    algorithm, so runs compare by the exchange only)."""
    if t < cfg.warmup_steps:
        return cfg.inner_lr * (t + 1) / cfg.warmup_steps
    span = max(1, cfg.total_steps - cfg.warmup_steps)
    frac = min(1.0, (t - cfg.warmup_steps) / span)
    return cfg.inner_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


class InnerWorker(Actor):
    max_concurrency = 4

    def __init__(self, rank: int | None, cfg: Config, model_fn: Callable[[], torch.nn.Module],
                 data_fn: Callable[[int], Any], loss_fn: Callable[..., torch.Tensor], server: ActorRef,
                 incarnation: int = 0) -> None:
        """``rank``: which worker (None: its rank in the group); ``incarnation``: how many times this rank was
        started before (a respawn samples fresh batches)."""
        torch.set_num_threads(1)
        if rank is None:
            if self.rank is None:
                raise ValueError("an InnerWorker needs a rank: pass one, or spawn it in a group")
            rank = self.rank
        self.rank = rank
        self.cfg = cfg
        self.sample = sampler(data_fn(rank))
        self.loss_fn = loss_fn
        self.server = server
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"Config.device is {cfg.device!r} but worker {rank}'s node sees no CUDA device "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        torch.manual_seed(cfg.seed)  # the same initial weights everywhere
        self.model = model_fn().to(self.device)
        self.flat = flatten_(self.model)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.inner_lr, weight_decay=cfg.weight_decay,
                                     betas=(0.9, 0.95))
        self.gen = torch.Generator().manual_seed(cfg.seed * 100_003 + rank * 1009 + incarnation)
        self._stop = False
        self.steps = 0
        self.start_step = 0
        self.loss = float("nan")
        self.up = self.down = 0
        self.peak = 0          # largest up + down of one exchange
        self.exchanges = 0
        self.resyncs = 0       # replies that carried the whole fragment (late, or rejoining)
        self.blocked = 0.0     # seconds waiting for replies
        self.busy = 0.0
        self._started: float | None = None

    def stop(self) -> None:
        self._stop = True

    def stats(self) -> dict[str, Any]:
        busy = self.busy + (time.perf_counter() - self._started if self._started is not None else 0.0)
        return {"rank": self.rank, "steps": self.steps, "start_step": self.start_step, "loss": self.loss,
                "bytes_up": self.up, "bytes_down": self.down, "peak_exchange_bytes": self.peak,
                "exchanges": self.exchanges, "resyncs": self.resyncs, "blocked_s": round(self.blocked, 4),
                "busy_s": round(busy, 4), "samples": self.steps * self.cfg.batch_size}

    def _step(self, t: int, reduce: Callable[[], bool] | None = None) -> bool:
        """One inner step at step index ``t``; ``reduce`` (ddp) all-reduces the gradients and says whether to
        stop."""
        for group in self.opt.param_groups:
            group["lr"] = inner_lr(self.cfg, t)
        x, y = self.sample(self.gen, self.cfg.batch_size)
        if self.device.type != "cpu":
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.opt.zero_grad(set_to_none=False)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        stop = reduce() if reduce is not None else False
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        value = loss.item()
        self.loss = value if math.isnan(self.loss) else 0.9 * self.loss + 0.1 * value
        self.steps += 1
        return stop

    async def run(self) -> dict[str, Any]:
        self._started = time.perf_counter()
        try:
            if self.cfg.algorithm == "ddp":
                return await self._run_ddp()
            return await self._run_rounds()
        finally:
            self.busy += time.perf_counter() - self._started
            self._started = None

    async def _run_rounds(self) -> dict[str, Any]:
        cfg, sched, opt = self.cfg, self.cfg.schedule, self.cfg.outer()
        joined = await self.server.join(self.rank)
        bounds = joined["bounds"]
        self.flat.copy_(joined["params"])
        views = [self.flat[a:b].clone() for a, b in bounds]  # what the server believes we hold, on our device
        t = self.start_step = joined["step"]
        pending: list[tuple[int, int, asyncio.Future, int, torch.Tensor | None]] = []
        # (apply at step, fragment, reply, bytes sent, the fragment as sent: what the overlap merge keeps apart)
        delay = cfg.step_delay.get(self.rank, 0.0)
        stopped = joined["stopped"]
        while t < sched.total and not self._stop and not stopped:
            self._step(t)
            t += 1
            for p in sched.due(t):
                a, b = bounds[p]
                delta = encode((views[p] - self.flat[a:b]).cpu(), cfg.compression or "fp32")
                self.up += delta.nbytes
                fut = self.server.exchange(self.rank, p, sched.round_at(t, p), delta)
                overlapped = bool(cfg.overlap) and t < sched.total
                sent = self.flat[a:b].clone() if overlapped and cfg.merge == "progress" else None
                pending.append((t + cfg.overlap if overlapped else t, p, fut, delta.nbytes, sent))
            while pending and pending[0][0] <= t:
                _, p, fut, up, sent = pending.pop(0)
                stopped = await self._apply(p, fut, up, views, bounds, opt, sent) or stopped
            if delay:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let stats() and stop() in
        for _, p, fut, up, sent in pending:
            await self._apply(p, fut, up, views, bounds, opt, sent)
        return self.stats()

    async def _apply(self, p: int, fut: asyncio.Future, up: int, views: list[torch.Tensor],
                     bounds: list[tuple[int, int]], opt: Any, sent: torch.Tensor | None = None) -> bool:
        """The reply to an exchange of fragment ``p``: the new outer parameters, merged into the replica.
        ``sent``: the fragment as it was sent, when inner steps overlapped the exchange (merge "progress")."""
        t0 = time.perf_counter()
        reply = await fut
        self.blocked += time.perf_counter() - t0
        a, b = bounds[p]
        x, old = self.flat[a:b], views[p]
        self.exchanges += 1
        if reply["kind"] == "full":
            new = reply["params"].to(self.device)
            down = new.numel() * 4
            self.resyncs += 1
            x.copy_(new)  # late or rejoining: the local progress did not count; start from theta
        else:
            diff = decode(reply["packed"]).to(self.device)
            down = reply["packed"].nbytes
            new = old + diff
            if sent is not None or (self.cfg.overlap and self.cfg.merge == "mix"):  # the replica moved on meanwhile
                overlap_merge_(x, new, sent, self.cfg.mix)
            else:
                opt.pull_(x, old, new)
        views[p] = new.clone()
        self.down += down
        self.peak = max(self.peak, up + down)
        return bool(reply.get("stopped"))

    async def _run_ddp(self) -> dict[str, Any]:
        """The baseline: gradients averaged every step over all workers with torch.distributed
        (``Config.ddp_backend``), counted as a ring all-reduce moves them: 2 (p - 1) / p of the gradient's bytes
        out and as many in per step."""
        cfg = self.cfg
        assert cfg.ddp_backend is not None
        dist = open_group(cfg.ddp_backend, cfg.extra["dist_init"], self.rank, cfg.workers)
        params = list(self.model.parameters())
        n = self.flat.numel()
        grad = torch.zeros(n + 1, device=self.device)
        # gloo with GPU workers: reduce a host copy (what lets several ranks share one GPU, which NCCL refuses)
        host = torch.zeros(n + 1, pin_memory=True) if cfg.ddp_backend == "gloo" and grad.is_cuda else None
        volume = int(2 * (cfg.workers - 1) / cfg.workers * n * 4)

        def reduce() -> bool:
            torch.cat([p.grad.reshape(-1) for p in params], out=grad[:n])
            grad[n] = 1.0 if self._stop else 0.0
            t0 = time.perf_counter()
            if host is None:
                dist.all_reduce(grad)
            else:
                host.copy_(grad)
                dist.all_reduce(host)
                grad.copy_(host)
            self.blocked += time.perf_counter() - t0
            grad[:n].div_(cfg.workers)
            offset = 0
            for p in params:
                k = p.numel()
                p.grad.copy_(grad[offset:offset + k].view_as(p))
                offset += k
            self.up += volume
            self.down += volume
            self.peak = max(self.peak, 2 * volume)
            return bool(grad[n] > 0)

        delay = cfg.step_delay.get(self.rank, 0.0)
        try:
            for t in range(cfg.total_steps):
                if self._step(t, reduce):  # all stop after the same step: the flag rides in the all-reduce
                    break
                if self.rank == 0 and ((t + 1) % cfg.inner_steps == 0 or t + 1 == cfg.total_steps):
                    await self.server.publish(self.flat.detach().to("cpu", copy=True), t + 1)
                await asyncio.sleep(delay)
        finally:
            close_group()
        return self.stats()
