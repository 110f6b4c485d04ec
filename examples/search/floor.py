"""The operating system's share of a fan-out's overhead, measured without disto, batch by batch next to it.

``Floor(shards)`` forks ``shards`` processes that wait on plain Unix sockets; ``round(pre, work)`` plays one
batch's pattern: this process computes for ``pre`` seconds (the router's coarse step), asks every process, each
computes for ``work`` seconds (the shard's Faiss time) and answers with its wall clocks. The result uses the
stamps of ``SearchResult.timing``: ``send`` is from just before the first request to the last process starting
its work, ``return`` from the slowest one ending to this process having every answer. On a VM whose idle cores
sleep, that is the wake-up of a sleeping process, twice; it varies with the host's load from minute to minute,
so compare it only with searches run in between its rounds.

    python examples/search/floor.py --shards 2 --pre-ms 8 --work-ms 26
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import struct
import time

_WORK = struct.Struct("!d")
_STAMPS = struct.Struct("!dd")


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Floor:
    def __init__(self, shards: int) -> None:
        self.socks: list[socket.socket] = []
        self.pids: list[int] = []
        for _ in range(shards):
            a, b = socket.socketpair()
            pid = os.fork()
            if pid == 0:  # a "shard": wait, compute, answer with its wall clocks
                a.close()
                while True:
                    msg = b.recv(_WORK.size, socket.MSG_WAITALL)
                    if len(msg) < _WORK.size:
                        os._exit(0)
                    t0 = time.time()
                    _busy(_WORK.unpack(msg)[0])
                    b.sendall(_STAMPS.pack(t0, time.time()))
            b.close()
            self.socks.append(a)
            self.pids.append(pid)
        self.sel = selectors.DefaultSelector()
        for s in self.socks:
            self.sel.register(s, selectors.EVENT_READ)

    def round(self, pre: float, work: float, shards: int | None = None) -> tuple[float, float, float]:
        """(send, return, overhead) seconds of one batch played with plain sockets on the first ``shards``
        processes; overhead is the wait minus the longest work, as ``timing["overhead"]``."""
        socks = self.socks[:shards]
        _busy(pre)
        w1 = time.time()
        msg = _WORK.pack(work)
        for s in socks:
            s.send(msg)
        got: dict[object, tuple[float, float]] = {}
        while len(got) < len(socks):
            for key, _ in self.sel.select():
                got[key.fileobj] = _STAMPS.unpack(key.fileobj.recv(_STAMPS.size, socket.MSG_WAITALL))
        w2 = time.time()
        return (max(t0 for t0, _ in got.values()) - w1, w2 - max(t1 for _, t1 in got.values()),
                w2 - w1 - max(t1 - t0 for t0, t1 in got.values()))

    def close(self) -> None:
        for s in self.socks:
            s.close()
        for pid in self.pids:
            os.waitpid(pid, 0)
        self.sel.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--pre-ms", type=float, default=8.0)
    p.add_argument("--work-ms", type=float, default=26.0)
    p.add_argument("--rounds", type=int, default=40)
    a = p.parse_args()
    f = Floor(a.shards)
    try:
        rounds = [f.round(a.pre_ms / 1e3, a.work_ms / 1e3) for _ in range(a.rounds)]
    finally:
        f.close()
    print(json.dumps({"send": statistics.median(r[0] for r in rounds),
                      "return": statistics.median(r[1] for r in rounds),
                      "overhead": statistics.median(r[2] for r in rounds)}))
