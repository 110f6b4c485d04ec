"""Sans-IO bookkeeping of synchronous rounds: when each fragment of the model is exchanged (the schedule), and
who has contributed to an open round, who is still expected, and when the round closes (the quorum). No event
loop and no clock of its own: callers pass ``now``, so tests drive it with a fake clock.

Rounds are numbered per fragment from 1. A worker that has done ``t`` inner steps exchanges fragment ``p`` when
``(t + shift_p) % H == 0`` (``shift_p = p * H // P``: the fragments are staggered, Streaming DiLoCo) and once more
for every fragment at the last step ``T``. Every worker runs the same schedule, so round numbers agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Schedule:
    """``inner_steps`` H between exchanges of one fragment, ``fragments`` P, ``total`` T inner steps."""

    inner_steps: int
    fragments: int
    total: int

    def __post_init__(self) -> None:
        if self.inner_steps < 1 or self.fragments < 1 or self.total < 1:
            raise ValueError("inner_steps, fragments and total steps must be >= 1")
        if self.fragments > self.inner_steps:
            raise ValueError(f"{self.fragments} fragments cannot be staggered over {self.inner_steps} inner steps")

    def shift(self, p: int) -> int:
        return p * self.inner_steps // self.fragments

    def due(self, t: int) -> list[int]:
        """The fragments exchanged after inner step ``t`` (1-based count of steps done)."""
        if t >= self.total:
            return list(range(self.fragments)) if t == self.total else []
        return [p for p in range(self.fragments) if t > 0 and (t + self.shift(p)) % self.inner_steps == 0]

    def round_at(self, t: int, p: int) -> int:
        """The round number of fragment ``p``'s exchange at step ``t`` (one of its sync points)."""
        h = self.inner_steps
        if t >= self.total:
            return (self.total - 1 + self.shift(p)) // h + 1
        return (t + self.shift(p)) // h

    def rounds(self, p: int) -> int:
        """How many rounds fragment ``p`` has in the whole run."""
        return self.round_at(self.total, p)

    def step_of(self, p: int, rnd: int) -> int:
        """The inner step at which round ``rnd`` of fragment ``p`` is exchanged."""
        h = self.inner_steps
        t = rnd * h - self.shift(p)
        return min(t, self.total)

    def length(self, p: int, rnd: int) -> int:
        """How many inner steps round ``rnd`` of fragment ``p`` covers: H, except a staggered fragment's first
        round (H - shift) and its last when the run ends between two of its sync points."""
        return self.step_of(p, rnd) - max(0, self.step_of(p, rnd - 1))

    def short_final(self, p: int, rnd: int) -> bool:
        """Whether round ``rnd`` is fragment ``p``'s last and covers fewer than H inner steps."""
        return rnd == self.rounds(p) and self.length(p, rnd) < self.inner_steps


@dataclass
class OpenRound:
    number: int
    opened: float                                   # first arrival
    values: dict[int, Any] = field(default_factory=dict)


class RoundBook:
    """The rounds of one fragment. ``members``: worker -> the first round it is expected in. A round closes when
    every expected member has contributed, or ``deadline`` seconds after its first contribution if at least
    ``min_workers`` have (the quorum: a lost or frozen worker does not stall the others)."""

    def __init__(self, members: list[int], deadline: float, min_workers: int = 1, first_round: int = 1) -> None:
        if deadline <= 0:
            raise ValueError(f"the round deadline must be > 0 seconds, got {deadline}")
        if min_workers < 1:
            raise ValueError("min_workers must be >= 1")
        self.deadline = deadline
        self.min_workers = min_workers
        self.members: dict[int, int] = {w: first_round for w in members}
        self.current = first_round      # the oldest round not closed yet
        self.open: dict[int, OpenRound] = {}
        self.closed = first_round - 1

    def expected(self, rnd: int) -> set[int]:
        return {w for w, first in self.members.items() if first <= rnd}

    def join(self, worker: int, rnd: int) -> None:
        """``worker`` contributes from round ``rnd`` on (a new or restarted worker)."""
        self.members[worker] = max(rnd, self.current)

    def leave(self, worker: int) -> None:
        self.members.pop(worker, None)

    def arrive(self, worker: int, rnd: int, value: Any, now: float) -> str:
        """A contribution. "late": round ``rnd`` is closed (the value is dropped); otherwise "open"."""
        if rnd < self.current:
            return "late"
        r = self.open.get(rnd)
        if r is None:
            r = self.open[rnd] = OpenRound(rnd, now)
        r.values[worker] = value
        if worker not in self.members:  # a worker we had given up on is back: expect it again from here
            self.members[worker] = rnd
        return "open"

    def ready(self, now: float) -> bool:
        """Whether the current round can close now."""
        r = self.open.get(self.current)
        if r is None:
            return False
        if self.expected(r.number) <= set(r.values):
            return True
        return now >= r.opened + self.deadline and len(r.values) >= self.min_workers

    def closes_at(self) -> float | None:
        """When the current round's deadline falls (None: nobody has contributed yet)."""
        r = self.open.get(self.current)
        return None if r is None else r.opened + self.deadline

    def close(self) -> tuple[int, dict[int, Any], set[int]]:
        """Close the current round: (number, contributions by worker, expected workers missing)."""
        r = self.open.pop(self.current, None) or OpenRound(self.current, 0.0)
        missing = self.expected(r.number) - set(r.values)
        self.closed = r.number
        self.current += 1
        return r.number, r.values, missing
