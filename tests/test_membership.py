"""Level 2: the failure detector with a fake clock. No sleeps, no loop."""
from __future__ import annotations

import pytest

from disto.liveness import FailureDetector


def test_quiet_peer_is_declared_lost_once_after_the_timeout() -> None:
    fd = FailureDetector(timeout=3.0, interval=0.5)
    fd.add("a", now=0.0)
    fd.add("b", now=0.0)
    for t in (0.5, 1.0, 1.5, 2.0, 2.5):
        fd.heard("b", now=t)
        assert fd.tick(now=t) == []
    fd.heard("b", now=2.9)
    assert fd.tick(now=2.99) == []
    assert fd.tick(now=3.0) == ["a"]
    assert fd.tick(now=3.5) == []  # reported once
    assert fd.tick(now=5.9) == ["b"]  # last heard at 2.9


def test_traffic_of_any_kind_keeps_a_peer_alive() -> None:
    fd = FailureDetector(timeout=1.0, interval=0.25)
    fd.add("p", now=0.0)
    t = 0.0
    while t < 100.0:
        t += 0.9
        fd.heard("p", now=t)
        assert fd.tick(now=t) == []


def test_heartbeats_fall_due_every_interval_per_peer() -> None:
    fd = FailureDetector(timeout=3.0, interval=0.5)
    fd.add("a", now=0.0)
    assert fd.due(now=0.4) == []
    assert fd.due(now=0.5) == ["a"]
    assert fd.due(now=0.6) == []
    fd.sent("a", now=0.9)  # a call went out: no heartbeat needed yet
    assert fd.due(now=1.2) == []
    assert fd.due(now=1.45) == ["a"]


def test_lost_peers_get_no_heartbeats_and_removed_peers_are_forgotten() -> None:
    fd = FailureDetector(timeout=1.0, interval=0.5)
    fd.add("a", now=0.0)
    assert fd.tick(now=1.0) == ["a"]
    assert fd.due(now=2.0) == []
    fd.remove("a")
    assert "a" not in fd and fd.tick(now=10.0) == [] and fd.silence("a", 10.0) is None


def test_clock_going_backwards_does_not_revive_or_kill() -> None:
    fd = FailureDetector(timeout=1.0, interval=0.5)
    fd.add("a", now=10.0)
    fd.heard("a", now=9.0)  # an out-of-order timestamp is ignored
    assert fd.silence("a", 10.5) == 0.5


@pytest.mark.parametrize("interval,timeout", [(0, 1), (1, 1), (2, 1), (-1, 1)])
def test_bad_settings(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError):
        FailureDetector(timeout=timeout, interval=interval)
