"""Virtual time: p workers stepped round-robin in one process, with zero communication cost, using the same
update code as the real trainer (LocalLearner, elastic_step_, center_step_). For studying p up to 16 on a
2-core machine: the unit is the round (one step of every worker), not the second."""
from __future__ import annotations

from typing import Any, Callable

import torch

from .algorithms import EASGDConfig, LocalLearner, accuracy, center_step_, elastic_step_, sync_center_


def simulate(cfg: EASGDConfig, model_fn: Callable[[], torch.nn.Module], x: torch.Tensor, y: torch.Tensor,
             x_test: torch.Tensor, y_test: torch.Tensor, rounds: int, eval_every: int = 200,
             target: float | None = None,
             loss_fn: Callable[..., torch.Tensor] = torch.nn.functional.cross_entropy) -> dict[str, Any]:
    """Run up to ``rounds`` rounds; evaluate the center every ``eval_every``; stop early at ``target``.
    Returns {"evals": [(round, accuracy)], "rounds_to_target": int | None}."""
    torch.set_num_threads(1)
    p = cfg.workers
    learners = [LocalLearner(model_fn, x, y, loss_fn, cfg, seed=cfg.seed * 1000 + i) for i in range(p)]
    center = learners[0].flat.clone()
    eval_model = model_fn()
    evals: list[tuple[int, float]] = []
    reached = None
    if cfg.algorithm in ("downpour", "allreduce"):
        raise ValueError(f"simulate() covers the elastic and averaging algorithms, not {cfg.algorithm}")
    for r in range(1, rounds + 1):
        for learner in learners:
            learner.step()
            if r % cfg.tau == 0 and not cfg.synchronous:
                if cfg.algorithm == "msgd":
                    center.copy_(learner.flat)
                else:
                    center_step_(center, elastic_step_(learner.flat, center, cfg.alpha))
        if r % cfg.tau == 0 and cfg.synchronous:  # every worker meets the center at once
            meet = sync_center_(center, [lr.flat.clone() for lr in learners], cfg.algorithm, cfg.beta)
            for learner in learners:
                if cfg.algorithm == "sync_easgd":
                    elastic_step_(learner.flat, meet, cfg.alpha)
                else:
                    learner.flat.copy_(meet)
        if r % eval_every == 0:
            acc = accuracy(model_fn, center, x_test, y_test, model=eval_model)
            evals.append((r, acc))
            if target is not None and acc >= target:
                reached = r
                break
    return {"evals": evals, "rounds_to_target": reached, "workers": p, "algorithm": cfg.algorithm,
            "rounds": r, "center": center}
