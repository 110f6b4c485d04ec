"""The update rules, shared by the real trainer and the virtual-time simulation. Plain torch, no disto.

Zhang, Choromanska, LeCun, "Deep learning with Elastic Averaging SGD" (NIPS 2015): worker i keeps x_i, the
center c lives on parameter servers. Every tau local steps: d = alpha (x_i - c); x_i -= d; c += d (additive, so
concurrent workers never overwrite each other). alpha = beta / p with beta = 0.9 by default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

ALGORITHMS = ("eamsgd", "easgd", "msgd", "downpour", "sync_easgd", "local_sgd", "allreduce")
SYNCHRONOUS = ("sync_easgd", "local_sgd", "allreduce")


@dataclass
class EASGDConfig:
    """How to train. ``algorithm``:
      "eamsgd"     asynchronous elastic averaging, Nesterov momentum locally (the one that scales);
      "easgd"      asynchronous elastic averaging, plain SGD locally;
      "msgd"       one worker, momentum SGD: the baseline;
      "downpour"   workers push gradients every step, the center applies them, workers pull every ``tau`` steps;
      "sync_easgd" every ``tau`` steps all workers meet: x_i -= alpha (x_i - c); c = (1 - beta) c + beta mean(x_i);
      "local_sgd"  every ``tau`` steps all workers meet and take the average (model averaging);
      "allreduce"  synchronous data-parallel SGD: gradients averaged every step with torch.distributed (gloo)."""

    algorithm: str = "eamsgd"
    workers: int = 2
    tau: int = 10             # local steps between exchanges with the center
    prefetch: int | None = None  # fetch the center this many steps before the exchange (0: at the exchange;
    #                               default: 5, or tau // 2 when tau <= 5)
    beta: float = 0.9         # alpha = beta / workers
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 32
    shards: int = 2           # parameter-server shards the center is split over
    seed: int = 0
    eval_interval: float = 1.0  # seconds between snapshots of the center (its parameters and the workers' counts)
    eval_stride: int = 1      # evaluate every n-th snapshot while training; with a target, the run stops at the
    #                           first evaluated snapshot at or above it and every skipped snapshot is evaluated
    #                           then, so time_to(target) is the first snapshot at or above it (as with stride 1)
    #                           with 1/n of the evaluation's CPU taken from the workers; the skipped snapshots are
    #                           kept until then (one copy of the center each). Without a target they are dropped
    eval_keep_bytes: int = 1 << 30  # at most this much of skipped snapshots is kept: beyond it the oldest is
    #                           evaluated at once, while training (time_to stays exact; less CPU is saved)
    group_size: int = 1       # processes per worker: a group does data-parallel SGD (gradients all-reduced every
    #                           step with torch.distributed) and exchanges with the center as one worker
    # where the trainer places its actors (spawn_group resources): e.g. {"gpu": 1} per worker, {"ps": 1} per
    # center shard for CPU-only parameter servers; strategies "spread" (default) or "pack"
    worker_resources: dict[str, float] | None = None
    shard_resources: dict[str, float] | None = None
    worker_strategy: str = "spread"
    shard_strategy: str = "spread"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, not {self.algorithm!r}")
        if self.workers < 1 or self.tau < 1 or self.shards < 1 or self.batch_size < 1:
            raise ValueError("workers, tau, shards and batch_size must be >= 1")
        if self.prefetch is None:
            self.prefetch = min(5, self.tau // 2)
        if not 0 <= self.prefetch < self.tau:
            raise ValueError(f"prefetch must be in [0, tau), got {self.prefetch} with tau={self.tau}")
        if self.algorithm == "msgd" and self.workers != 1:
            raise ValueError("msgd is the single-worker baseline: workers must be 1")
        if self.algorithm in SYNCHRONOUS:
            self.prefetch = 0  # the synchronous algorithms meet at a barrier: nothing to fetch ahead
        if self.group_size < 1:
            raise ValueError("group_size must be >= 1")
        if self.eval_interval <= 0 or self.eval_stride < 1 or self.eval_keep_bytes < 0:
            raise ValueError("eval_interval must be > 0, eval_stride >= 1 and eval_keep_bytes >= 0")
        for strategy in (self.worker_strategy, self.shard_strategy):
            if strategy not in ("spread", "pack"):
                raise ValueError(f"placement strategies are 'spread' or 'pack', not {strategy!r}")
        if self.worker_strategy == "pack" and (self.algorithm == "allreduce" or self.group_size > 1):
            raise ValueError("torch.distributed needs one worker process per node: worker_strategy must be 'spread'")
        if self.group_size > 1 and self.algorithm not in ("eamsgd", "easgd"):
            raise ValueError("data-parallel worker groups are for eamsgd and easgd")

    @property
    def alpha(self) -> float:
        return self.beta / self.workers

    @property
    def momentum_used(self) -> float:
        return 0.0 if self.algorithm in ("easgd", "downpour") else self.momentum

    @property
    def synchronous(self) -> bool:
        return self.algorithm in SYNCHRONOUS

    @property
    def processes(self) -> int:
        """Worker actors (processes) in all: one per worker, or ``group_size`` per worker."""
        return self.workers * self.group_size


def sync_center_(c: torch.Tensor, xs: list[torch.Tensor], mode: str, beta: float) -> torch.Tensor:
    """The center's half of a synchronous round; returns what the workers apply. sync_easgd: c_old is returned
    (workers do x -= alpha (x - c_old)) and c = (1 - beta) c + beta mean(x); local_sgd: c = mean(x), returned."""
    mean = torch.stack(xs).mean(dim=0)
    if mode == "sync_easgd":
        old = c.clone()
        c.mul_(1 - beta).add_(mean, alpha=beta)
        return old
    c.copy_(mean)
    return c.clone()


def flatten_(model: torch.nn.Module) -> torch.Tensor:
    """Move the model's parameters into one flat tensor (returned) and make them views of it: the optimizer's
    updates land in the flat vector, and exchanges work on it without copying."""
    params = [p for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in params]).contiguous()
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset:offset + n].view_as(p)
        offset += n
    return flat


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous slices of a flat vector of ``n`` values, as even as possible."""
    shards = max(1, min(shards, n))
    step, extra = divmod(n, shards)
    out, start = [], 0
    for i in range(shards):
        end = start + step + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


def elastic_step_(x: torch.Tensor, c: torch.Tensor, alpha: float) -> torch.Tensor:
    """The worker's half of an exchange: d = alpha (x - c); x -= d. Returns d, which the center adds."""
    d = (x - c).mul_(alpha)
    x.sub_(d)
    return d


def center_step_(c: torch.Tensor, d: torch.Tensor) -> None:
    """The center's half: c += d."""
    c.add_(d)


class LocalLearner:
    """One worker's model, optimizer and data sampler: ``step()`` is one minibatch update of the flat vector."""

    def __init__(self, model_fn: Callable[[], torch.nn.Module], x: torch.Tensor, y: torch.Tensor,
                 loss_fn: Callable[..., torch.Tensor], cfg: EASGDConfig, seed: int) -> None:
        torch.manual_seed(cfg.seed)  # same initial weights on every worker (and the center)
        self.model = model_fn()
        self.flat = flatten_(self.model)
        self.x, self.y = x, y
        self.loss_fn = loss_fn
        self.batch = cfg.batch_size
        self.gen = torch.Generator().manual_seed(seed)
        m = cfg.momentum_used
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=m, nesterov=m > 0)
        self.steps = 0

    def gradient(self) -> float:
        idx = torch.randint(0, self.x.shape[0], (self.batch,), generator=self.gen)
        self.opt.zero_grad(set_to_none=False)
        loss = self.loss_fn(self.model(self.x[idx]), self.y[idx])
        loss.backward()
        return loss.item()

    def step(self) -> float:
        loss = self.gradient()
        self.opt.step()
        self.steps += 1
        return loss

    def flat_grad(self) -> torch.Tensor:
        return torch.cat([p.grad.reshape(-1) for p in self.model.parameters()])

    def apply_flat_grad(self, grad: torch.Tensor) -> None:
        """Take one optimizer step with ``grad`` (a flat vector, e.g. averaged over processes) as the gradient."""
        offset = 0
        for p in self.model.parameters():
            n = p.numel()
            p.grad.copy_(grad[offset:offset + n].view_as(p))
            offset += n
        self.opt.step()
        self.steps += 1


@torch.no_grad()
def accuracy(model_fn: Callable[[], torch.nn.Module], flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             model: torch.nn.Module | None = None) -> float:
    """Test accuracy of the parameters ``flat`` (a fresh model from ``model_fn`` unless one is given)."""
    if model is None:
        model = model_fn()
    torch.nn.utils.vector_to_parameters(flat, model.parameters())
    model.eval()
    correct = (model(x).argmax(dim=1) == y).sum().item()
    return correct / len(y)
