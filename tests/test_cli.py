"""The ``disto`` command as a new user meets it: one-line answers to common mistakes, token files that are not
overwritten by accident, status/actors/logs/stacks pointed at any node, lifecycle lines from the nodes."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest

import disto

from actors import Talker
from helpers import NODE_ENV, any_call_running, eventually


def cli(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "disto", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def one_line_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 1, out
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for n in needles:
        assert n in out.stderr, out.stderr


TOKEN_ENV = {"DISTO_TOKEN": "cli-test-token-0123456789abcdef"}


def test_version_and_common_mistakes_get_one_line(tmp_path) -> None:
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"disto {disto.__version__}"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        one_line_error(cli("node", "start", "--listen", f"127.0.0.1:{port}", env=TOKEN_ENV), "port is in use",
                       "--listen")
    one_line_error(cli("node", "start", "--listen", "192.0.2.1:7000", env=TOKEN_ENV), "not one of this machine's")
    one_line_error(cli("node", "start", "--listen", "no-such-host.invalid:7000", env=TOKEN_ENV), "cannot resolve")
    one_line_error(cli("token", "new", "--file", str(tmp_path / "missing" / "token")), "mkdir -p")
    one_line_error(cli("status", "127.0.0.1:1", env=TOKEN_ENV), "cannot reach 127.0.0.1:1")
    bad = cli("node", "start", "--resources", "gpu=two", env=TOKEN_ENV)
    assert bad.returncode == 2 and "bad amount in 'gpu=two'" in bad.stderr, bad.stderr
    bad = cli("node", "start", "--gpus", "first", env=TOKEN_ENV)
    assert bad.returncode == 2 and "CUDA device ids" in bad.stderr, bad.stderr


def test_token_new_does_not_overwrite_without_force(tmp_path) -> None:
    path = tmp_path / "token"
    assert cli("token", "new", "--file", str(path)).returncode == 0
    first = path.read_text()
    one_line_error(cli("token", "new", "--file", str(path)), "--force")
    assert path.read_text() == first
    assert cli("token", "new", "--file", str(path), "--force").returncode == 0
    assert path.read_text() != first and (path.stat().st_mode & 0o777) == 0o600


class _NodeProc:
    """``disto node start`` in the background, its stderr (the node's log) kept in a file."""

    def __init__(self, tmp_path, name: str, *extra: str, env: dict) -> None:
        self.log = tmp_path / f"{name}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "disto", "node", "start", "--listen", "127.0.0.1:0",
                                      *extra], stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True,
                                     env=env)

    async def ready(self) -> str:
        line = await asyncio.get_running_loop().run_in_executor(None, self.proc.stdout.readline)  # type: ignore
        return line.split("listening on ")[1].split(",")[0].split()[0]

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(120)
async def test_status_logs_stacks_from_a_non_seed_and_the_nodes_log_their_lifecycle(tmp_path) -> None:
    token_file = tmp_path / "token"
    disto.write_token_file(str(token_file))
    env = dict(os.environ, **NODE_ENV)
    env.pop("DISTO_TOKEN", None)
    env["DISTO_TOKEN_FILE"] = str(token_file)
    seed = _NodeProc(tmp_path, "seed", "--dashboard", "127.0.0.1:0", env=env)
    procs = [seed]
    loop = asyncio.get_running_loop()
    try:
        seed_address = await seed.ready()
        other = _NodeProc(tmp_path, "other", "--seed", seed_address, "--resources", "gpu=2,ssd=1", "--gpus", "0,1",
                          env=env)
        procs.append(other)
        address = await other.ready()
        assert "started on" in seed.text() and "the seed" in seed.text()
        async with disto.connect(seed_address, token_file=str(token_file)) as cluster:
            assert cluster.dashboard_url and cluster.dashboard_url.startswith("http://127.0.0.1:")
            handle = next(h for h in cluster.nodes if h.address == address)
            t = await handle.spawn(Talker, name="tk", resources={"gpu": 1})
            await t.say("said-for-the-cli")

            def run(*args: str) -> subprocess.CompletedProcess:
                return cli(*args, env={"DISTO_TOKEN_FILE": str(token_file), "DISTO_TOKEN": ""})

            status = await loop.run_in_executor(None, run, "status", address)  # not the seed
            assert status.returncode == 0, status.stderr
            assert f"{address} is not the seed; asking the seed {seed_address}" in status.stderr
            assert "Talker" in status.stdout and "names: tk" in status.stdout and "dashboard: http" in status.stdout
            assert "resources cpu=" in status.stdout and "gpu=2" in status.stdout and "ssd=1" in status.stdout
            assert "free gpu=1" in status.stdout, status.stdout
            logs = await loop.run_in_executor(None, run, "logs", "tk", "--address", address)
            assert logs.returncode == 0 and "said-for-the-cli" in logs.stdout, logs
            actors = await loop.run_in_executor(None, run, "actors", seed_address)
            assert actors.returncode == 0 and f"Talker#{t.actor_id}" in actors.stdout and "tk" in actors.stdout
            hang = asyncio.ensure_future(t.hold(30))
            try:
                await eventually(lambda: any_call_running(cluster), what="the call to be running")
                stacks = await loop.run_in_executor(None, run, "stacks", address)
                assert stacks.returncode == 0, stacks.stderr
                assert stacks.stdout.count("== node ") == 3 and "tk.hold running" in stacks.stdout
            finally:
                hang.cancel()
                await asyncio.gather(hang, return_exceptions=True)
            await eventually(lambda: "driver" in seed.text() and "joined" in seed.text(), what="the join logged")
            other.proc.kill()
            other.proc.wait()
            await eventually(lambda: "was lost" in seed.text(), timeout=15, what="the loss logged by the seed")
        seed.stop()
        assert "stopping: signal" in seed.text()
    finally:
        for p in procs:
            p.stop()



def test_a_dedicated_child_node_logs_at_its_parents_level() -> None:
    import logging

    from disto.node.dedicated import _log_level
    logger = logging.getLogger("disto")
    old = logger.level
    try:
        for level, name in ((logging.WARNING, "warning"), (logging.INFO, "info"), (logging.DEBUG, "debug"),
                            (logging.ERROR, "error"), (logging.CRITICAL, "error")):
            logger.setLevel(level)
            assert _log_level() == name
    finally:
        logger.setLevel(old)
