"""Several hosts on one machine: network namespaces joined by a bridge, one disto node in each, and a link cut
with `ip link set ... down`. Needs root and iproute2; skipped with the reason otherwise."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time

import pytest

import disto
from actors import Worker
from helpers import HERE, TOKEN, eventually

NET = "10.213.0"  # only inside the namespaces this test creates
BRIDGE = "brdisto"
HOSTS = 4


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (the ip command)"
    probe = sh("ip", "netns", "add", "disto-probe", check=False)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    sh("ip", "netns", "del", "disto-probe", check=False)
    return None


def teardown_net() -> None:
    for i in range(1, HOSTS + 1):
        sh("ip", "netns", "del", f"dh{i}", check=False)
        sh("ip", "link", "del", f"vd{i}", check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


def setup_net() -> None:
    teardown_net()
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{NET}.254/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    for i in range(1, HOSTS + 1):
        ns, outer, inner = f"dh{i}", f"vd{i}", f"vd{i}n"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        sh("ip", "link", "set", inner, "netns", ns)
        sh("ip", "link", "set", outer, "master", BRIDGE)
        sh("ip", "link", "set", outer, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{NET}.{i}/24", "dev", inner)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")


def _probe_tcp() -> str | None:
    """Can dh2 open a TCP connection to dh1 through the bridge? (There may be no ping binary.)"""
    server = subprocess.Popen(["ip", "netns", "exec", "dh1", sys.executable, "-c",
                               "import socket; s = socket.create_server(('%s.1', 7999)); print('up', flush=True); "
                               "s.settimeout(5); s.accept()" % NET], stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()
        client = sh("ip", "netns", "exec", "dh2", sys.executable, "-c",
                    "import socket; socket.create_connection(('%s.1', 7999), timeout=3)" % NET, check=False)
        return None if client.returncode == 0 else client.stderr.strip()[-200:]
    finally:
        server.kill()
        server.wait()


def start_nodes() -> list[subprocess.Popen]:
    env = dict(os.environ, DISTO_TOKEN=TOKEN, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = []
    for i in range(1, HOSTS + 1):
        cmd = ["ip", "netns", "exec", f"dh{i}", sys.executable, "-m", "disto", "node", "start",
               "--listen", f"{NET}.{i}:7000"]
        if i > 1:
            cmd += ["--seed", f"{NET}.1:7000"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
        procs[-1].stdout.readline()  # "listening on ..." once it has joined
    return procs


async def pipelined(src: disto.ActorRef, dst: disto.ActorRef, n: int) -> float:
    t0 = time.perf_counter()
    await src.flood(dst, n)
    return n / (time.perf_counter() - t0)


@pytest.fixture(scope="module")
def hosts():
    why = _can_make_namespaces()
    if why:
        pytest.skip(why)
    setup_net()
    try:
        why = _probe_tcp()
        if why:
            pytest.skip(f"the bridge between namespaces does not forward here: {why}")
        procs = start_nodes()
        try:
            yield procs
        finally:
            for p in procs:
                p.kill()
                p.wait()
    finally:
        teardown_net()


class Flooder(Worker):
    max_concurrency = 4

    async def flood(self, target: disto.ActorRef, n: int) -> int:
        done = 0
        for start in range(0, n, 200):
            done += len(await disto.collect([target.add(1) for _ in range(min(200, n - start))]))
        return done


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(90)
async def test_partitioned_node_is_lost_within_the_bound_and_the_rest_keeps_working(hosts) -> None:
    import cloudpickle

    import actors
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    async with disto.connect(f"{NET}.1:7000", token=TOKEN, listen=f"{NET}.254:0") as cluster:
        by_addr = {h.address: h for h in cluster.nodes}
        assert sorted(by_addr) == [f"{NET}.{i}:7000" for i in range(1, HOSTS + 1)]
        flooders = [await by_addr[f"{NET}.{i}:7000"].spawn(Flooder) for i in (1, 2, 4)]
        sinks = [await by_addr[f"{NET}.{i}:7000"].spawn(Worker) for i in (2, 4, 1)]
        cut = await by_addr[f"{NET}.3:7000"].spawn(actors.Concurrent)

        before = await pipelined(flooders[0], sinks[0], 2000)
        pending = [cut.wait(i) for i in range(100)]
        await cut.pid()  # all sent
        loop = asyncio.get_running_loop()
        sh("ip", "link", "set", "vd3", "down")
        try:
            t0 = loop.time()
            during_task = asyncio.ensure_future(
                disto.collect([pipelined(f, s, 2000) for f, s in zip(flooders, sinks)]))
            results = await disto.within(disto.collect_all(pending), 3.0)
            lost_after = loop.time() - t0
            assert all(isinstance(r, disto.NodeLostError) for r in results), results[:3]
            during = await during_task
            with pytest.raises(disto.ActorDeadError):
                await cut.pid()
        finally:
            sh("ip", "link", "set", "vd3", "up")
        print(f"\npartition: node 3's 100 pending calls failed after {lost_after:.2f} s; among the other three "
              f"nodes, one flow alone before: {before:,.0f} calls/s; three flows during: {sum(during):,.0f} calls/s")
        # healed: node 3 joins the seed again and its actors answer again
        async def answers() -> bool:
            try:
                await cut.pid()
                return True
            except (disto.ActorDeadError, disto.NodeLostError):
                return False

        await eventually(answers, timeout=15, interval=0.1, what="node 3 to come back after the link came up")
