"""Level 4: real clusters of node processes on 127.0.0.1, including kill -9 and the command line."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import disto
from actors import Concurrent, Worker
from helpers import HERE, eventually, named_elsewhere
from helpers import NODE_ENV as ENV


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.loops("uvloop")
async def test_issue_contract_on_a_local_cluster() -> None:
    class Counter(disto.Actor):
        def __init__(self, start: int = 0):
            self.n = start

        async def add(self, k: int) -> int:
            self.n += k
            return self.n

        def get(self) -> int:
            return self.n

    async with disto.LocalCluster(nodes=2, env=ENV) as cluster:
        assert len(cluster.nodes) == 2
        c = await cluster.nodes[1].spawn(Counter, 10, name="counter")
        assert isinstance(c, disto.ActorRef)
        assert await c.add(5) == 15
        c.add.tell(1)
        same = await cluster.lookup("counter")
        assert same == c
        values = await disto.collect([c.add(1) for _ in range(100)])
        assert values == list(range(17, 117))
        first = await disto.collect_any([c.get(), c.get()])
        assert first == 116
        assert await c.get().then(lambda v: v * 2) == 232
        assert await disto.within(c.get(), 1.0) == 116
        with pytest.raises(disto.ActorNotFoundError):
            await cluster.lookup("nobody")
        assert await cluster.stop(c)
        with pytest.raises(disto.ActorDeadError):
            await c.get()
        pids = [p.pid for p in cluster_procs(cluster)]
    assert not any(alive(p) for p in pids), "node processes left behind"


def cluster_procs(cluster: disto.Cluster) -> list:
    return [h for h in cluster.nodes]


@pytest.mark.loops("uvloop")
async def test_refs_cross_processes_and_errors_keep_their_type() -> None:
    async with disto.LocalCluster(nodes=2, env=ENV) as cluster:
        a = await cluster.spawn(Worker)
        b = await cluster.spawn(Worker)
        assert {await a.pid(), await b.pid()} == {h.pid for h in cluster.nodes}
        assert await a.relay(b, 5) == 5  # a (node 0) calls b (node 1) with a ref it received
        with pytest.raises(KeyError) as info:
            await b.fail()
        assert isinstance(info.value, disto.RemoteError) and "missing-key" in str(info.value)
        assert "raise KeyError" in info.value.remote_traceback


@pytest.mark.loops("uvloop")
async def test_kill_9_fails_every_pending_call_fast() -> None:
    async with disto.LocalCluster(nodes=2, env=ENV) as cluster:
        w = await cluster.nodes[1].spawn(Concurrent)
        pending = [w.wait(i) for i in range(100)]
        assert await w.pid() == cluster.nodes[1].pid  # all 100 were sent before this reply came
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        os.kill(cluster.nodes[1].pid, signal.SIGKILL)
        results = await disto.within(disto.collect_all(pending), 3.0)
        elapsed = loop.time() - t0
        assert all(isinstance(r, disto.NodeLostError) for r in results), results[:3]
        with pytest.raises(disto.NodeLostError):
            await w.pid()
        # the rest of the cluster keeps working
        other = await cluster.nodes[0].spawn(Worker)
        assert await other.add(2) == 2
        print(f"kill -9: 100 pending calls failed in {elapsed * 1000:.1f} ms")


@pytest.mark.loops("uvloop")
async def test_a_return_value_over_max_body_travels_and_other_calls_are_unharmed() -> None:
    async with disto.LocalCluster(nodes=1, env=ENV) as cluster:
        w = await cluster.spawn(Worker)
        c = await cluster.spawn(Concurrent)
        pending = [c.wait(i) for i in range(20)]  # another actor's calls, in flight on the same connection
        assert await w.pid() == cluster.nodes[0].pid
        for _ in range(2):
            assert len(await w.text(24 << 20)) == 24 << 20  # 24 MB: over max_body (16 MB)
        await c.release()
        assert await disto.collect(pending) == list(range(20))


@pytest.mark.loops("uvloop")
async def test_actor_that_kills_its_process_fails_the_call() -> None:
    async with disto.LocalCluster(nodes=1, env=ENV) as cluster:
        w = await cluster.spawn(Worker)
        with pytest.raises(disto.NodeLostError):
            await w.crash()


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(150)
async def test_256mb_array_and_tensor_copies() -> None:
    """Peak memory while 256 MB travel to another process. Over TCP there is no Python-level copy on either
    side; through shared memory the sender makes exactly one copy (into the segment) and the receiver none."""
    script = textwrap.dedent("""
        import resource, sys, numpy as np, torch, disto
        sys.path.insert(0, %r)
        from actors import Worker
        MB = 1 << 20
        def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        async def main():
            async with disto.LocalCluster(nodes=1, env=%r) as cluster:
                w = await cluster.spawn(Worker)
                await w.import_torch()
                for mode in ("tcp", "shm"):
                    for kind in ("numpy", "torch"):
                        x = np.ones(256 * MB // 8) if kind == "numpy" else torch.ones(256 * MB // 4)
                        before_send, before_recv = rss(), await w.maxrss_mb()
                        with disto.transfer(mode):
                            total, after_recv = await w.total(x)
                        assert total == (x.size if kind == "numpy" else x.numel())
                        print(mode, kind, rss() - before_send, after_recv - before_recv, flush=True)
                        del x
        disto.run(main())
    """) % (HERE, ENV)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=140)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4, out.stdout
    for line in lines:
        mode, kind, sender_growth, receiver_growth = line.split()
        # ru_maxrss is a high-water mark: the first run of a mode pays for the memory it needs
        if mode == "tcp":
            assert float(sender_growth) < 64, line          # the socket reads the array's own memory
            assert float(receiver_growth) < 256 * 1.25, line  # one receive block, reused
        else:
            assert float(sender_growth) < 256 * 1.25, line  # one copy into the segment
            assert float(receiver_growth) < 256 * 1.25, line  # the segment's pages, mapped, not copied


def _run_cli(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "disto", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(90)
async def test_cli_node_start_connect_status_stop(tmp_path) -> None:
    token_file = tmp_path / "token"
    assert _run_cli("token", "new", "--file", str(token_file)).returncode == 0
    assert (token_file.stat().st_mode & 0o777) == 0o600
    token = token_file.read_text().strip()
    env = dict(os.environ, DISTO_TOKEN_FILE=str(token_file), **ENV)
    env.pop("DISTO_TOKEN", None)
    seed = subprocess.Popen([sys.executable, "-m", "disto", "node", "start", "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    procs = [seed]
    try:
        line = await asyncio.get_running_loop().run_in_executor(None, seed.stdout.readline)
        address = line.split("listening on ")[1].split(",")[0].split()[0]
        other = subprocess.Popen([sys.executable, "-m", "disto", "node", "start", "--listen", "127.0.0.1:0",
                                  "--seed", address], stdout=subprocess.PIPE, text=True, env=env)
        procs.append(other)
        await asyncio.get_running_loop().run_in_executor(None, other.stdout.readline)

        async with disto.connect(address, token=token) as cluster:
            assert len(cluster.nodes) == 2
            w = await cluster.nodes[1].spawn(Worker, name="w")
            assert await w.add(3) == 3
        status = await asyncio.get_running_loop().run_in_executor(
            None, lambda: _run_cli("status", address, env={"DISTO_TOKEN_FILE": str(token_file)}))
        assert status.returncode == 0, status.stderr
        assert "Worker" in status.stdout and "names: w" in status.stdout
        bad = await asyncio.get_running_loop().run_in_executor(
            None, lambda: _run_cli("status", address, env={"DISTO_TOKEN": "wrong-token-0123456789"}))
        assert bad.returncode == 1 and "token mismatch" in bad.stderr and "DISTO_TOKEN" in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr  # said once, no traceback
        for p in procs[::-1]:
            stop = await asyncio.get_running_loop().run_in_executor(
                None, lambda: _run_cli("node", "stop", address if p is seed else _addr_of(p, cluster),
                                       env={"DISTO_TOKEN": token}))
            assert stop.returncode == 0, stop.stderr
            assert await asyncio.get_running_loop().run_in_executor(None, p.wait, 10) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _addr_of(proc: subprocess.Popen, cluster: disto.Cluster) -> str:
    return next(h.address for h in cluster.nodes if h.pid == proc.pid)


def test_token_file_must_be_private(tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    os.chmod(path, 0o644)
    out = _run_cli("status", "127.0.0.1:1", env={"DISTO_TOKEN_FILE": str(path), "DISTO_TOKEN": ""})
    assert out.returncode == 1 and "readable by others" in out.stderr
    out = _run_cli("status", "127.0.0.1:1", env={"DISTO_TOKEN_FILE": "", "DISTO_TOKEN": ""})
    assert out.returncode == 1 and "no cluster token" in out.stderr


def disto_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("disto-")}


@pytest.mark.loops("uvloop")
async def test_kill_9_of_a_receiver_frees_its_shared_memory_leases() -> None:
    import torch

    from actors import Holder

    before = disto_segments()
    async with disto.LocalCluster(nodes=2, env=ENV) as cluster:
        h = await cluster.nodes[1].spawn(Holder)
        for _ in range(3):
            await h.keep(torch.ones(1 << 20))
        exporter = cluster.node.buffers.exporter
        assert exporter.stats()["leased"] == 3
        os.kill(cluster.nodes[1].pid, signal.SIGKILL)
        with pytest.raises(disto.NodeLostError):
            await h.keep(1)
        assert exporter.stats()["leased"] == 0  # the dead peer's leases went back to the pool
    assert disto_segments() - before == set()


@pytest.mark.loops("uvloop")
async def test_kill_9_of_a_sender_leaves_its_values_readable_and_no_segments() -> None:
    from actors import Holder

    before = disto_segments()
    async with disto.LocalCluster(nodes=2, env=ENV) as cluster:
        h = await cluster.nodes[1].spawn(Holder)
        t = await h.make(1 << 20)  # came through node 1's segment pool
        os.kill(cluster.nodes[1].pid, signal.SIGKILL)
        with pytest.raises(disto.NodeLostError):
            await h.pid()
        assert float(t.sum()) == 7.0 * (1 << 20)  # our mapping outlives the sender
        del t
    # the janitor of the nodes that stopped removed the dead sender's segments
    assert disto_segments() - before == set()


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(60)
async def test_sigstop_fails_pending_calls_within_the_bound_and_the_node_rejoins() -> None:
    async with disto.LocalCluster(nodes=3, env=ENV) as cluster:
        frozen = cluster.nodes[1]
        w = await frozen.spawn(Concurrent)
        other = await cluster.nodes[2].spawn(Worker)
        pending = [w.wait(i) for i in range(100)]
        assert await w.pid() == frozen.pid  # all 100 are on the wire
        loop = asyncio.get_running_loop()
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            t0 = loop.time()
            results = await disto.within(disto.collect_all(pending), 3.0)  # the bound: 3 s by default
            elapsed = loop.time() - t0
            assert all(isinstance(r, disto.NodeLostError) for r in results), results[:3]
            t1 = loop.time()
            with pytest.raises(disto.ActorDeadError):
                await w.pid()  # new calls fail at once, no new 3 s wait
            assert loop.time() - t1 < 0.5
            assert await other.add(1) == 1  # the rest of the cluster is unaffected
            print(f"SIGSTOP: 100 pending calls failed {elapsed:.2f} s after the freeze")
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        # the node comes back: it finds its connections gone, joins the seed again, and is reachable again
        async def reachable() -> bool:
            try:
                return await w.pid() == frozen.pid
            except (disto.ActorDeadError, disto.NodeLostError):
                return False

        await eventually(reachable, timeout=10, interval=0.1, what="the resumed node to be reachable again")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_torchrun_forms_one_cluster() -> None:
    port = _free_port()
    env = dict(os.environ, DISTO_TOKEN="torchrun-test-token-0123456789", DISTO_PORT=str(_free_port()),
               PYTHONPATH=os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = os.path.join(os.path.dirname(HERE), "examples", "launch", "hello.py")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                          f"--master-port={port}", "-m", "disto.launch", script],
                         capture_output=True, text=True, timeout=170, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ranks ['0', '1']" in out.stdout, out.stdout + out.stderr


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(60)
async def test_supervised_actor_is_restarted_elsewhere_and_keeps_its_name() -> None:
    async with disto.LocalCluster(nodes=3, env=ENV) as cluster:
        first = await cluster.nodes[1].spawn(Worker, name="svc", max_restarts=1)
        assert await first.add(5) == 5
        os.kill(cluster.nodes[1].pid, signal.SIGKILL)
        with pytest.raises(disto.NodeLostError):
            await first.add(1)  # in flight or sent after the crash: fails, never silently retried

        second = await eventually(lambda: named_elsewhere(cluster, "svc", first), timeout=10,
                                  what="the restarted actor's name")
        assert await second.add(1) == 1  # constructor rerun: state starts afresh
        assert await second.pid() in (cluster.nodes[0].pid, cluster.nodes[2].pid)

        # its restart budget is spent: losing its node again leaves the name unresolved
        victim = next(h for h in cluster.nodes if h.address == second.node_address)
        os.kill(victim.pid, signal.SIGKILL)
        with pytest.raises(disto.NodeLostError):
            await second.add(1)

        async def unresolved() -> bool:
            try:
                await cluster.lookup("svc")
            except disto.ActorNotFoundError:
                return True
            return False

        await eventually(unresolved, what="a spent supervised actor to lose its name")


@pytest.mark.loops("uvloop")
async def test_stopped_supervised_actor_is_not_restarted() -> None:
    async with disto.LocalCluster(nodes=2, env=ENV) as cluster:
        ref = await cluster.nodes[1].spawn(Worker, name="once", max_restarts=3)
        assert await cluster.stop(ref)
        os.kill(cluster.nodes[1].pid, signal.SIGKILL)
        lost = cluster.nodes[1].node_id

        async def dropped() -> bool:  # the registry has seen the loss (and would have restarted it by now)
            return all(m["node_id"] != lost for m in await cluster.node.registry.members())

        await eventually(dropped, what="the registry to drop the killed node")
        assert await cluster.node.registry.restart_log() == []
        with pytest.raises(disto.ActorNotFoundError):
            await cluster.lookup("once")


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(60)
async def test_a_busy_node_is_not_declared_lost() -> None:
    """A method that holds its node's event loop for longer than the failure timeout: the node's heartbeat
    thread keeps it alive for its peers, and the node does not blame its peers for its own stall."""
    from actors import Blocker

    async with disto.LocalCluster(nodes=2, env=ENV) as cluster:
        busy = await cluster.nodes[1].spawn(Blocker)
        other = await cluster.nodes[0].spawn(Worker)
        assert await busy.block(4.0) == "done"  # 4 s > the 2.5 s failure timeout
        assert await busy.ping() == "pong" and await other.add(1) == 1
        assert not cluster.node.stats()["lost"]


def test_udp_heartbeats_reject_forgeries_and_replays() -> None:
    from disto.transport import UdpHeartbeat

    hb = UdpHeartbeat(b"k" * 32, "me", "127.0.0.1", 0)
    other = UdpHeartbeat(b"k" * 32, "peer-a", "127.0.0.1", 0)
    wrong = UdpHeartbeat(b"x" * 32, "peer-b", "127.0.0.1", 0)
    try:
        good = other._packet()
        hb._receive(good)
        assert hb.heard["peer-a"] > 0
        hb.heard["peer-a"] = 0.0
        hb._receive(good)  # a replay (same sequence number): not a sign of life
        assert hb.heard["peer-a"] == 0.0
        hb._receive(other._packet())  # the next one is
        assert hb.heard["peer-a"] > 0
        hb._receive(wrong._packet())  # wrong token
        hb._receive(b"garbage")
        assert set(hb.heard) == {"peer-a"}
    finally:
        for h in (hb, other, wrong):
            h._sock.close()


def _user_project(tmp_path) -> tuple[str, dict]:
    """tests/programs copied to tmp_path/proj, as a researcher's own project: nothing on the nodes' path."""
    import shutil

    proj = tmp_path / "proj"
    proj.mkdir()
    for name in ("myactors.py", "myutils.py"):
        shutil.copy(os.path.join(HERE, "programs", name), proj / name)
    shutil.copy(os.path.join(HERE, "programs", "shop_driver.py"), proj / "driver.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DISTO_TOKEN", "DISTO_TOKEN_FILE")}
    return str(tmp_path), env


EXPECTED_SHOP = ["counter 15", "order myutils widget 2 True",
                 "caught OutOfStock widget 5 ('only 3 of widget left, 5 wanted',)", "notes 2 True True",
                 "unloadable True True True"]


@pytest.mark.timeout(120)
def test_a_driver_with_its_own_modules_runs_from_another_directory(tmp_path) -> None:
    cwd, env = _user_project(tmp_path)
    out = subprocess.run([sys.executable, "proj/driver.py"], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=110)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == EXPECTED_SHOP, out.stdout + out.stderr


@pytest.mark.timeout(120)
def test_a_driver_with_its_own_modules_joins_a_running_cluster(tmp_path) -> None:
    cwd, env = _user_project(tmp_path)
    env["DISTO_TOKEN"] = disto.new_token()
    nodes = []
    address = ""
    try:
        for seed in (False, True):
            args = [sys.executable, "-m", "disto", "node", "start", "--listen", "127.0.0.1:0"]
            if seed:
                args += ["--seed", address]
            # the nodes run elsewhere: neither proj/ nor tests/ is on their path
            nodes.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd="/"))
            line = nodes[-1].stdout.readline()
            if not seed:
                address = line.split("listening on ")[1].split(",")[0].split()[0]
        out = subprocess.run([sys.executable, "proj/driver.py", address], cwd=cwd, env=env, capture_output=True,
                             text=True, timeout=100)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.splitlines() == EXPECTED_SHOP, out.stdout + out.stderr
    finally:
        for p in nodes:
            p.terminate()
            p.wait(10)


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(60)
async def test_an_actor_in_a_process_of_its_own_and_the_libraries_preloaded_at_spawn() -> None:
    import torch  # noqa: F401 - the driver has it: the nodes import it before the first call needs it
    from actors import GilHog

    async with disto.LocalCluster(nodes=1, env=ENV) as cluster:
        node = cluster.nodes[0]
        hog = await node.spawn(GilHog, process=True)
        hog_pid = await hog.pid()
        assert hog_pid != node.pid and hog.node_address != node.address
        await cluster.refresh()
        assert [h.address for h in cluster.nodes] == [node.address]  # a dedicated process takes no other actors
        w = await node.spawn(Worker)
        assert await w.imported("torch")  # spawn waited for the preload: the first tensor pays no import
        spinning = hog.spin(1.5)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(20):
            await w.add(1)
        assert loop.time() - t0 < 1.0 and not spinning.done()  # the GIL it holds is not its node's
        assert await spinning > 0
        assert await cluster.stop(hog)  # its process ends with it
        await eventually(lambda: not alive(hog_pid), what="the dedicated process to exit")
        again = await node.spawn(GilHog, process=True)
        again_pid = await again.pid()
        os.kill(node.pid, signal.SIGKILL)  # and it dies with the node that started it
        await eventually(lambda: not alive(again_pid), what="the dedicated process to die with its node")


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(60)
async def test_after_a_freeze_the_callee_drops_the_calls_its_callers_gave_up_on() -> None:
    async with disto.LocalCluster(nodes=2, env=ENV) as cluster:
        frozen = cluster.nodes[1]
        w = await frozen.spawn(Worker)  # one call at a time: a call still running would block it for good
        stuck = w.wait(0)  # waits for a release that never comes
        assert not stuck.done()
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            with pytest.raises(disto.NodeLostError):
                await disto.within(stuck, 5.0)
        finally:
            os.kill(frozen.pid, signal.SIGCONT)

        async def serves() -> bool:  # it wakes, sees its connections gone, cancels what came over them
            try:
                return await disto.within(w.pid(), 2.0) == frozen.pid
            except (disto.ActorDeadError, disto.NodeLostError, disto.TimeoutError):
                return False

        await eventually(serves, timeout=20, interval=0.1, what="the actor to serve new calls after the freeze")


@pytest.mark.async_timeout(60)
async def test_a_local_cluster_ends_its_processes_even_when_a_node_is_frozen() -> None:
    # a node that cannot answer shutdown (SIGSTOP: frozen) must not leave the others, or itself, running: the
    # shutdown times out (5 s), and every process is then ended together (killed after 10 s if need be)
    cluster = disto.LocalCluster(nodes=2)
    await cluster.__aenter__()
    pids = [h.pid for h in cluster.cluster.nodes]
    os.kill(pids[1], signal.SIGSTOP)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await cluster.__aexit__(None, None, None)
    elapsed = loop.time() - t0
    assert not any(alive(p) for p in pids), "node processes left behind"
    assert elapsed < 5.0 + 10.0 + 5.0, elapsed  # the shutdown's bound, then one grace period (not one per node)


@pytest.mark.timeout(90)
def test_ctrl_c_ends_a_driver_with_keyboard_interrupt_and_a_clean_stop() -> None:
    script = os.path.join(HERE, "programs", "ctrl_c.py")
    # its own process group, as a shell gives a foreground job: Ctrl-C is SIGINT to the whole group
    # (SIGINT at its default: a test run started in the background of a non-interactive shell ignores SIGINT,
    # and a child inherits that; Python then rightly leaves Ctrl-C ignored)
    proc = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready"), line + proc.stderr.read()
        pids = [int(p) for p in line.split()[1:]]
        os.killpg(proc.pid, signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # say where it hangs: every thread's stack, and who is still alive
            driver_alive, left = proc.poll() is None, [p for p in pids if alive(p)]
            if driver_alive:
                proc.send_signal(signal.SIGUSR1)
            try:
                _, err = proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:  # (node processes hold its pipes too)
                proc.kill()
                for p in left:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                _, err = proc.communicate(timeout=10)
            pytest.fail(f"no clean stop 30 s after Ctrl-C (driver alive: {driver_alive}, node processes alive: "
                        f"{left}); its stderr:\n{err}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and err.rstrip().endswith("KeyboardInterrupt"), err
    assert "NodeLostError" not in err and "Error" not in err.replace("KeyboardInterrupt", ""), err
    assert not any(alive(p) for p in pids), "node processes left behind"


async def test_awaiting_a_method_without_calling_it_says_so() -> None:
    ref = disto.ActorRef("n", "127.0.0.1:1", 16, "Worker")
    with pytest.raises(TypeError, match=r"write `await ref.pid\(...\)`"):
        await ref.pid


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(60)
async def test_names_survive_a_restart_of_the_seed() -> None:
    token = disto.new_token()
    env = dict(os.environ, DISTO_TOKEN=token, **ENV)
    env.pop("DISTO_TOKEN_FILE", None)
    port = _free_port()
    seed_addr = f"127.0.0.1:{port}"

    def start(*extra: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "disto", "node", "start", *extra], stdout=subprocess.PIPE,
                             text=True, env=env)
        p.stdout.readline()  # listening
        return p

    procs = [start("--listen", seed_addr)]
    try:
        procs.append(start("--listen", "127.0.0.1:0", "--seed", seed_addr, "--resources", "gpu=1,ssd=1"))
        async with disto.connect(seed_addr, token=token) as cluster:
            worker = next(h for h in cluster.nodes if h.address != seed_addr)
            svc = await cluster.spawn(Worker, name="svc", max_restarts=1, resources={"gpu": 1})
            assert svc.node_address == worker.address  # the only node that offers a GPU
            group = await cluster.spawn_group(Worker, 2, resources={"ssd": 0.5})  # both on the worker
            assert await svc.add(2) == 2
            procs[0].kill()  # the seed goes, with its member list and names
            procs[0].wait()
            procs[0] = start("--listen", seed_addr)  # and comes back, knowing nothing

            async def found() -> disto.ActorRef | None:
                try:
                    return await cluster.lookup("svc")
                except (disto.ActorNotFoundError, disto.NodeLostError):
                    return None

            again = await eventually(found, timeout=20, interval=0.1, what="the name to be known to the new seed")
            assert again == svc and await again.add(1) == 3  # the same actor, state and all

            async def both_back() -> bool:  # each member rejoins on its own schedule
                members = {m["address"] for m in await cluster.node.registry.members()}
                return worker.address in members and cluster.node.address in members
            await eventually(both_back, timeout=20, interval=0.1, what="the worker and the driver to rejoin")

            async def held_again() -> bool:  # the new seed learnt what the actor holds, with its name
                return any(r["address"] == worker.address and r["total"].get("ssd") == 1 and r["free"]["gpu"] == 0
                           for r in await cluster.resources())
            await eventually(held_again, timeout=20, interval=0.1, what="the new seed to learn the held GPU")
            with pytest.raises(disto.PlacementError):
                await cluster.spawn(Worker, resources={"gpu": 1})
            members = list(group)

            async def group_known() -> bool:  # the new seed learns the group again from the members' node
                try:
                    return await cluster.node.registry.group_members(group.group_id) == members
                except disto.ActorNotFoundError:
                    return False
            await eventually(group_known, timeout=20, interval=0.1, what="the new seed to learn the group")
            assert list(await group.refresh()) == members
            assert await group.add(1) == [1, 1]
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def test_nodes_thread_share_rule(monkeypatch) -> None:
    from disto.cluster.local import node_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert node_threads(3, None, {}) == 4  # 16 CPUs for 3 nodes and the driver
    assert node_threads(1, None, {}) == 8
    assert node_threads(40, None, {}) == 1  # at least one each
    assert node_threads(3, 6, {}) == 6  # asked for
    assert node_threads(3, None, {"OMP_NUM_THREADS": "2"}) is None  # the user's env= wins
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert node_threads(3, None, {}) is None  # and so does this process's environment, inherited
    assert node_threads(3, 2, {}) == 2  # unless asked for explicitly
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="threads_per_node"):
            node_threads(3, bad, {})
    with pytest.raises(ValueError, match="give one"):
        node_threads(3, 2, {"MKL_NUM_THREADS": "4"})


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(60)
async def test_local_cluster_nodes_size_their_thread_pools(monkeypatch) -> None:
    import torch  # noqa: F401 - preloaded by the nodes: its pool is sized from their environment

    class Threads(disto.Actor):
        def threads(self) -> tuple[int, str | None, str | None]:
            import torch

            return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS"), os.environ.get("MKL_NUM_THREADS")

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    async with disto.LocalCluster(nodes=1, env=ENV, threads_per_node=3) as cluster:
        t = await cluster.nodes[0].spawn(Threads)
        cores = len(os.sched_getaffinity(0))
        assert await t.threads() == (min(3, cores), "3", "3")  # (torch takes at most one per core)
    share = str(max(1, cores // 3))
    async with disto.LocalCluster(nodes=2, env=ENV) as cluster:
        for node in cluster.nodes:
            t = await node.spawn(Threads)
            assert await t.threads() == (int(share), share, share)
    async with disto.LocalCluster(nodes=1, env={**ENV, "OMP_NUM_THREADS": "2"}) as cluster:
        t = await cluster.nodes[0].spawn(Threads)
        assert (await t.threads())[1:] == ("2", None)  # the user's setting is left alone
    async with disto.LocalCluster(nodes=2, env={**ENV, "MKL_NUM_THREADS": "7"}) as cluster:
        t = await cluster.nodes[0].spawn(Threads)
        assert (await t.threads())[1:] == (share, "7")  # OpenMP's share set, the user's MKL setting kept


class _Limits(disto.Actor):
    def nofile(self) -> tuple[int, int]:
        import resource

        return resource.getrlimit(resource.RLIMIT_NOFILE)


async def test_a_node_process_raises_its_soft_open_file_limit() -> None:
    # a node holds a socket per peer and two eventfds per actor with sync code: it starts with the soft limit
    # raised towards 65536 (at most the hard limit), whatever low default it inherited
    import resource

    from disto.node.process import FD_LIMIT_GOAL

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256 if hard == resource.RLIM_INFINITY else min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # what the node inherits
    try:
        async with disto.LocalCluster(nodes=1) as cluster:
            got_soft, got_hard = await (await cluster.nodes[0].spawn(_Limits)).nofile()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    want = FD_LIMIT_GOAL if hard == resource.RLIM_INFINITY else min(FD_LIMIT_GOAL, hard)
    assert (got_soft, got_hard) == (max(want, low), hard)


class _Adds(disto.Actor):
    def add(self, x: int) -> int:
        return x + 1  # a sync method: the actor's thread, woken through its two eventfds


class _FdCount(disto.Actor):
    @disto.on_loop
    def fds(self) -> int:
        return len(os.listdir("/proc/self/fd"))


async def test_actors_with_sync_code_give_back_their_threads_eventfds_when_stopped() -> None:
    import time

    async with disto.LocalCluster(nodes=1) as cluster:
        node = cluster.nodes[0]
        probe = await node.spawn(_FdCount)
        before = await probe.fds()
        refs = [await node.spawn(_Adds) for _ in range(40)]
        assert await asyncio.gather(*[r.add(i) for i, r in enumerate(refs)]) == list(range(1, 41))
        assert await probe.fds() >= before + 80  # two eventfds per actor thread
        for r in refs:
            await cluster.stop(r)
        deadline = time.monotonic() + 10  # (closed on the node's loop once each thread has ended)
        while (now := await probe.fds()) != before and time.monotonic() < deadline:
            pass
        assert now == before
