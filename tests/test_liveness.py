"""Level 2: liveness with a fake clock, no sleeps and no event loop: the failure detector, the monitor's stall
compensation and probe backoff, and the node's liveness round driven by hand over fake channels."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

import disto
from disto.liveness import FailureDetector, LivenessMonitor
from disto.liveness.monitor import PROBE_MAX, probe_wait
from disto.node.liveness import Liveness


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


# ---------------------------------------------------------------------- the monitor
def ticks(mon: LivenessMonitor, start: float, end: float, heard: dict, step: float = 0.1) -> list:
    out = []
    for i in range(round((end - start) / step) + 1):
        t = round(start + i * step, 6)
        out.append((t, mon.tick(t, list(heard.items()))))
    return out


def test_a_silent_peer_is_lost_at_the_timeout_when_our_loop_keeps_ticking() -> None:
    mon = LivenessMonitor(timeout=2.5, interval=0.5, now=0.0)
    mon.add("a", 0.0)
    lost_at = [t for t, tick in ticks(mon, 0.1, 5.0, {"a": 0.0}) if tick.lost == ["a"]]
    assert lost_at == [2.5]


def test_a_late_tick_blames_our_own_stall_not_the_peers() -> None:
    mon = LivenessMonitor(timeout=2.5, interval=0.5, now=0.0)
    mon.add("a", 0.0)
    assert mon.tick(0.1, [("a", 0.0)]).lost == []
    late = mon.tick(4.0, [("a", 0.0)])  # our loop was blocked for 3.9 s: the peer's bytes are still unread
    assert late.stalled and late.lost == []
    assert mon.detector.silence("a", 4.0) == 0.0  # counted as heard now
    after = ticks(mon, 4.1, 6.4, {"a": 0.0})
    assert all(not tick.stalled and tick.lost == [] for _, tick in after)
    assert mon.tick(6.5, [("a", 0.0)]).lost == ["a"]  # 2.5 s after the stall, with the loop running: lost


def test_heartbeats_are_owed_every_interval() -> None:
    mon = LivenessMonitor(timeout=2.5, interval=0.5, now=0.0)
    mon.add("a", 0.0)
    due = [t for t, tick in ticks(mon, 0.1, 2.0, {"a": 0.0}) if tick.heartbeat == ["a"]]
    assert due == [0.5, 1.0, 1.5, 2.0]


def test_lost_addresses_are_probed_with_backoff_until_they_answer() -> None:
    mon = LivenessMonitor(timeout=2.5, interval=0.5, now=0.0)
    mon.declare_lost("10.0.0.1:7000", 0.0)
    assert mon.is_lost("10.0.0.1:7000") and not mon.is_lost("10.0.0.2:7000")
    probes = [t for t, tick in ticks(mon, 0.1, 60.0, {}) if tick.probe == ["10.0.0.1:7000"]]
    gaps = [b - a for a, b in zip([0.0, *probes], probes)]
    assert probes[0] == pytest.approx(1.4)  # the first tick at least probe_wait(t) = 1 + t/4 after: t >= 4/3
    assert all(b >= a - 0.11 for a, b in zip(gaps, gaps[1:]))  # never more often than before
    assert max(gaps) <= PROBE_MAX + 0.11 and gaps[-1] > 5.0
    for (t, gap) in zip(probes, gaps):
        assert gap >= probe_wait(t - gap) - 0.11
    mon.back("10.0.0.1:7000")
    assert not mon.is_lost("10.0.0.1:7000")
    assert all(tick.probe == [] for _, tick in ticks(mon, 60.1, 90.0, {}))


# ---------------------------------------------------------------------- the node's liveness round
class FakeChannel:
    def __init__(self, address: str, node_id: str) -> None:
        self.address = address
        self.ready = True
        self.closed = False
        self.last_heard = 0.0
        self.lost_reason: BaseException | None = None
        self.conn = SimpleNamespace(peer=SimpleNamespace(node_id=node_id, listen=address))
        self.sent: list = []
        self.aborted = False

    def can_send(self) -> bool:
        return not self.aborted

    def send(self, kind: int, body: object) -> None:
        self.sent.append(kind)

    def abort(self) -> None:
        self.aborted = True

    def peer_name(self) -> str:
        return self.address


class FakePeers:
    def __init__(self, *chans: FakeChannel) -> None:
        self.all = set(chans)
        self.by_address = {ch.address: ch for ch in chans}
        self.dialled: list[str] = []

    def ready(self) -> list:
        return [ch for ch in self.all if ch.ready]

    def channel_to(self, address: str) -> None:
        self.dialled.append(address)


def test_the_node_round_heartbeats_declares_lost_compensates_stalls_and_probes() -> None:
    clock = [0.0]
    quiet, chatty = FakeChannel("127.0.0.1:1", "q"), FakeChannel("127.0.0.1:2", "c")
    peers = FakePeers(quiet, chatty)
    live = Liveness(disto.NodeConfig(heartbeat_interval=0.5, failure_timeout=2.5), peers, clock=lambda: clock[0])
    live.add(quiet)
    live.add(chatty)

    def run_until(t: float) -> None:
        while clock[0] < t - 1e-9:
            clock[0] = round(clock[0] + live.period, 3)
            chatty.last_heard = clock[0]  # its bytes keep arriving
            live.tick()

    run_until(1.0)
    assert quiet.sent and chatty.sent and not quiet.aborted  # heartbeats go out to both
    clock[0] = 5.0  # our loop stalled for 4 s
    live.tick()
    assert not quiet.aborted and not live.is_lost(quiet.address)
    run_until(7.4)
    assert not quiet.aborted
    run_until(7.6)
    assert quiet.aborted and isinstance(quiet.lost_reason, disto.NodeLostError)
    assert "not responding" in str(quiet.lost_reason) and not chatty.aborted
    assert live.is_lost(quiet.address) and not live.is_lost(chatty.address)
    live.remove(quiet)  # its connection is gone (on_lost)
    peers.all.discard(quiet)
    del peers.by_address[quiet.address]
    run_until(8.8)
    assert peers.dialled == []
    run_until(8.9)
    assert peers.dialled == [quiet.address]  # probed 4/3 s after it was declared lost (at 7.5)
