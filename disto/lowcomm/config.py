"""What to train with: the algorithm, its inner and outer optimizers, the schedule, the quorum."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..placement import visible_gpus
from .codec import check_kind
from .outer import OuterOptimizer, async_diloco, diloco, easgd, local_sgd
from .rounds import Schedule

def gpu_each(workers: int) -> bool:
    """Whether this host has a GPU for each of ``workers`` GPU workers: then place them one per GPU
    (``LocalCluster(gpus_per_node=1)``, ``worker_resources={"gpu": 1}``; ddp over NCCL); else they share the first
    visible GPU and ddp needs ``ddp_backend="gloo"`` (NCCL refuses two ranks on one device)."""
    return len(visible_gpus()) >= workers


ALGORITHMS = ("diloco", "streaming_diloco", "async_diloco", "local_sgd", "sync_easgd", "ddp")
MERGES = ("progress", "mix")


@dataclass
class Config:
    """``algorithm``:
      "diloco"           every ``inner_steps`` H inner AdamW steps, the pseudo-gradients are averaged and an outer
                         SGD step with Nesterov momentum (lr 0.7, momentum 0.9) moves the outer parameters;
      "streaming_diloco" the same over ``fragments`` (4) slices of the model exchanged in turn, each send
                         overlapped with ``overlap`` (5) inner steps and merged by ``merge``: "progress"
                         (default) x = theta + the inner steps made while the exchange was in flight, or "mix"
                         (the paper's) x = ``mix`` x + (1 - mix) theta,
                         pseudo-gradients in ``compression`` ("fp16"; or "int8", "bf16", "fp32");
      "async_diloco"     no barrier: each worker's pseudo-gradient is applied when it arrives, with delayed
                         Nesterov momentum (N = workers); for workers of unequal speed;
      "local_sgd"        model averaging every H steps (outer lr 1, no momentum);
      "sync_easgd"       synchronous EASGD as an outer step: lr beta (0.9), no momentum, workers pulled beta/p of
                         the way to the old center;
      "ddp"              the baseline: gradients all-reduced every step (torch.distributed: gloo, NCCL on GPUs).
    ``device``: "cuda" trains each worker on its node's first visible GPU (place one worker per GPU with
    ``worker_resources={"gpu": 1}``; ddp then all-reduces with NCCL); exchanges go through host memory.
    ``ddp_backend``: torch.distributed's backend for ddp: "nccl" (default on "cuda": one GPU per rank) or "gloo"
    (default on "cpu"; on "cuda" the gradients go through host memory, so several ranks can share one GPU).
    ``rounds`` R: the run is R * H inner steps per worker. ``deadline``: seconds after a round's first
    contribution when it closes with the workers that made it (at least ``min_workers``)."""

    algorithm: str = "diloco"
    workers: int = 4
    inner_steps: int = 50
    rounds: int = 10
    batch_size: int = 16
    inner_lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 0
    grad_clip: float = 1.0
    outer_lr: float | None = None         # default: the algorithm's (0.7 DiLoCo, 1 local SGD, beta EASGD)
    outer_momentum: float | None = None   # default: 0.9 for the DiLoCo family, else 0
    beta: float = 0.9                     # sync_easgd
    fragments: int | None = None          # default: 4 for streaming_diloco, else 1
    overlap: int | None = None            # default: 5 for streaming_diloco, else 0
    merge: str = "progress"               # with overlap: "progress" (theta + steps since the send) or "mix"
    mix: float = 0.5                      # merge "mix": x = mix * x + (1 - mix) * theta
    compression: str | None = None        # default: "fp16" for streaming_diloco, else "fp32"
    delay: int | None = None              # async_diloco: delayed Nesterov's N (default: workers)
    final_average: bool = True            # a short final round: the workers' mean, no momentum (see outer.py)
    deadline: float = 30.0
    min_workers: int = 1
    seed: int = 0
    step_delay: dict[int, float] = field(default_factory=dict)  # rank -> seconds after each step (slow workers)
    device: str = "cpu"                   # where each worker trains: "cpu", "cuda" (its node's first visible GPU)
    ddp_backend: str | None = None        # ddp's all-reduce: "nccl" (default on cuda) or "gloo" (default on cpu)
    worker_resources: dict[str, float] | None = None
    worker_strategy: str = "spread"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, not {self.algorithm!r}")
        for name in ("workers", "inner_steps", "rounds", "batch_size", "min_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        streaming = self.algorithm == "streaming_diloco"
        if self.fragments is None:
            self.fragments = 4 if streaming else 1
        if self.overlap is None:
            self.overlap = min(5, self.inner_steps // (2 * self.fragments)) if streaming else 0
        if self.compression is None:
            self.compression = "fp16" if streaming else "fp32"
        check_kind(self.compression)
        if self.fragments > 1 and not streaming:
            raise ValueError("fragments are for streaming_diloco")
        if not 0 <= self.overlap < self.inner_steps // self.fragments or (self.overlap and not streaming):
            raise ValueError(f"overlap must be in [0, inner_steps / fragments) and only with streaming_diloco, "
                             f"got {self.overlap}")
        if self.merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, not {self.merge!r}")
        if not 0 <= self.mix < 1:
            raise ValueError(f"mix must be in [0, 1), got {self.mix}")
        if self.inner_lr <= 0 or self.deadline <= 0:
            raise ValueError("inner_lr and deadline must be > 0")
        if self.min_workers > self.workers:
            raise ValueError(f"min_workers ({self.min_workers}) cannot exceed workers ({self.workers})")
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device is 'cpu' or 'cuda' (or 'cuda:N'), not {self.device!r}")
        if self.ddp_backend is None:
            self.ddp_backend = "nccl" if self.device.startswith("cuda") else "gloo"
        if self.ddp_backend not in ("gloo", "nccl"):
            raise ValueError(f"ddp_backend is 'gloo' or 'nccl', not {self.ddp_backend!r}")
        if self.ddp_backend == "nccl" and not self.device.startswith("cuda"):
            raise ValueError("ddp_backend 'nccl' needs device 'cuda' (NCCL all-reduces GPU memory)")
        if self.worker_strategy not in ("spread", "pack"):
            raise ValueError(f"worker_strategy is 'spread' or 'pack', not {self.worker_strategy!r}")
        Schedule(self.inner_steps, self.fragments, self.total_steps)  # checks fragments against H
        self.outer()  # checks the outer hyperparameters

    @property
    def total_steps(self) -> int:
        return self.rounds * self.inner_steps

    @property
    def schedule(self) -> Schedule:
        assert self.fragments is not None
        return Schedule(self.inner_steps, self.fragments, self.total_steps)

    @property
    def asynchronous(self) -> bool:
        return self.algorithm == "async_diloco"

    def outer(self) -> OuterOptimizer:
        """The outer optimizer this configuration stands for."""
        a = self.algorithm
        if a == "local_sgd":
            base = local_sgd()
        elif a == "sync_easgd":
            base = easgd(self.workers, self.beta)
        elif a == "async_diloco":
            base = async_diloco(self.workers, delay=self.delay)
        else:  # diloco, streaming_diloco; ddp has no outer step (rank 0 publishes its parameters)
            base = diloco()
        lr = base.lr if self.outer_lr is None else self.outer_lr
        m = base.momentum if self.outer_momentum is None else self.outer_momentum
        return OuterOptimizer(lr=lr, momentum=m, nesterov=base.nesterov and m > 0, pull=base.pull,
                              pull_to=base.pull_to, delay=base.delay, final_average=self.final_average)
