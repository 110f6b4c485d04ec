"""The outer optimizer: one abstraction over pseudo-gradients for the whole local-SGD family. Plain torch.

Every worker starts a round from the outer parameters theta, takes its inner steps and ends at x_i. The
pseudo-gradient is ``g = theta - mean_i(x_i)``; the outer optimizer is SGD on it, with optional (Nesterov)
momentum; then each worker is pulled back: ``x_i -= pull * (x_i - ref)`` where ``ref`` is the new theta
(DiLoCo, local SGD: pull 1, every worker restarts from theta) or the old one (EASGD, pull alpha):

    local SGD        lr 1,    no momentum                 theta = mean(x_i)
    synchronous EASGD lr beta, no momentum, pull beta/p to the old theta   (Zhang et al. 2015)
    DiLoCo           lr 0.7,  Nesterov momentum 0.9       (Douillard et al. 2023)

Asynchronous DiLoCo applies each worker's pseudo-gradient as it arrives, with *delayed Nesterov* momentum
(Liu et al. 2024): each arrival is applied at once scaled by 1/N without momentum, and every N arrivals the mean
of the last N is folded into the momentum buffer, whose term is then applied. Over N arrivals that is one Nesterov
step on their mean, so workers of unequal speed need no barrier and momentum does not amplify stale updates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

PULL_TO = ("new", "old")


@dataclass(frozen=True)
class OuterOptimizer:
    """SGD on pseudo-gradients. ``delay``: N of delayed Nesterov (asynchronous use; 1 = plain momentum).
    ``final_average``: a fragment's last round when it is shorter than H (Streaming DiLoCo's staggered fragments
    end between two sync points) moves the outer parameters to the workers' mean (lr 1, no momentum) instead of
    a momentum step: the momentum term is a full round's trend and overshoots on a short final round."""

    lr: float = 0.7
    momentum: float = 0.9
    nesterov: bool = True
    pull: float = 1.0
    pull_to: str = "new"
    delay: int = 1
    final_average: bool = True

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"outer lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"outer momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.pull <= 1:
            raise ValueError(f"pull must be in (0, 1], got {self.pull}")
        if self.pull_to not in PULL_TO:
            raise ValueError(f"pull_to must be one of {PULL_TO}, not {self.pull_to!r}")
        if self.delay < 1:
            raise ValueError(f"delay must be >= 1, got {self.delay}")

    def state(self, params: torch.Tensor) -> "OuterState":
        return OuterState(params.detach().to(torch.float32).clone())

    def step_(self, st: "OuterState", g: torch.Tensor, short_final: bool = False) -> None:
        """One synchronous outer step on the mean pseudo-gradient ``g`` (theta changes in place).
        ``short_final``: this is the fragment's last round and it is shorter than H (see ``final_average``)."""
        st.steps += 1
        if short_final and self.final_average and self.momentum != 0 and self.pull_to == "new":
            st.params.sub_(g)  # theta = mean(x_i); the momentum buffer is left as it was
            return
        if self.momentum == 0:
            st.params.sub_(g, alpha=self.lr)
            return
        buf = st.momentum_buffer()
        buf.mul_(self.momentum).add_(g)
        d = g.add(buf, alpha=self.momentum) if self.nesterov else buf
        st.params.sub_(d, alpha=self.lr)

    def arrive_(self, st: "OuterState", g: torch.Tensor) -> None:
        """Asynchronous: one worker's pseudo-gradient, applied now (delayed Nesterov with N = ``delay``)."""
        n = self.delay
        st.steps += 1
        if self.momentum == 0:
            st.params.sub_(g, alpha=self.lr / n)
            return
        st.params.sub_(g, alpha=self.lr / n)  # the gradient term, at once
        acc = st.accumulator()
        acc.add_(g)
        st.pending += 1
        if st.pending == n:  # fold the mean of the last N into the momentum, apply its term
            buf = st.momentum_buffer()
            buf.mul_(self.momentum).add_(acc, alpha=1.0 / n)
            if self.nesterov:
                st.params.sub_(buf, alpha=self.lr * self.momentum)
            else:  # heavy ball: the gradient term was already applied; the rest of buf is momentum
                st.params.sub_(buf.sub(acc, alpha=1.0 / n), alpha=self.lr)
            acc.zero_()
            st.pending = 0

    def pull_(self, x: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> None:
        """The worker's half: x -= pull * (x - ref), ref the new (or old) outer parameters."""
        ref = new if self.pull_to == "new" else old
        if self.pull == 1.0:
            x.copy_(ref)
        else:
            x.sub_(x - ref, alpha=self.pull)


def overlap_merge_(x: torch.Tensor, new: torch.Tensor, sent: torch.Tensor | None, mix: float) -> None:
    """A replica that kept stepping while its exchange was in flight (Streaming DiLoCo's overlap) takes the new
    outer parameters. ``sent`` given (merge "progress"): ``x = new + (x - sent)``, theta plus exactly the inner steps
    made since the send, which the next pseudo-gradient then counts once; else (merge "mix", the paper's)
    ``x = mix x + (1 - mix) new``, which keeps part of the replica's whole divergence from theta as well."""
    if sent is not None:
        x.add_(new).sub_(sent)
    else:
        x.mul_(mix).add_(new, alpha=1 - mix)


@dataclass
class OuterState:
    """theta, the momentum buffer and delayed Nesterov's accumulator (made when first needed)."""

    params: torch.Tensor
    buf: torch.Tensor | None = None
    acc: torch.Tensor | None = None
    pending: int = 0
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def momentum_buffer(self) -> torch.Tensor:
        if self.buf is None:
            self.buf = torch.zeros_like(self.params)
        return self.buf

    def accumulator(self) -> torch.Tensor:
        if self.acc is None:
            self.acc = torch.zeros_like(self.params)
        return self.acc

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params.clone(), "buf": None if self.buf is None else self.buf.clone(),
                "acc": None if self.acc is None else self.acc.clone(), "pending": self.pending, "steps": self.steps}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OuterState":
        return cls(d["params"].clone(), None if d["buf"] is None else d["buf"].clone(),
                   None if d["acc"] is None else d["acc"].clone(), int(d["pending"]), int(d["steps"]))


def local_sgd() -> OuterOptimizer:
    """Model averaging every round."""
    return OuterOptimizer(lr=1.0, momentum=0.0, nesterov=False)


def easgd(workers: int, beta: float = 0.9) -> OuterOptimizer:
    """Synchronous EASGD: the center moves beta of the way to the mean, each worker alpha = beta/p to the old
    center."""
    return OuterOptimizer(lr=beta, momentum=0.0, nesterov=False, pull=beta / workers, pull_to="old")


def diloco(lr: float = 0.7, momentum: float = 0.9) -> OuterOptimizer:
    return OuterOptimizer(lr=lr, momentum=momentum, nesterov=True)


def async_diloco(workers: int, lr: float = 0.7, momentum: float = 0.9, delay: int | None = None
                 ) -> OuterOptimizer:
    """Delayed Nesterov with N = the number of workers by default (one momentum step per 'round' of arrivals)."""
    return OuterOptimizer(lr=lr, momentum=momentum, nesterov=True, delay=delay or workers)
