"""Form a disto cluster from the processes an existing launcher started: torchrun or SLURM's srun.

    DISTO_TOKEN=... torchrun --nproc-per-node=2 -m disto.launch script.py [args]
    DISTO_TOKEN=... srun -N 2 -n 4 python -m disto.launch script.py [args]

Rank 0 starts the seed node (a child process), waits until every rank's node has joined, then runs ``script.py``
as ``__main__``; inside it, ``async with disto.launch.connect() as cluster`` joins the cluster, whose ``nodes``
are one node per rank. The other ranks run a node until the script ends, then all exit.

Environment read: torchrun's RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, or SLURM's SLURM_PROCID, SLURM_NTASKS
and the first host of SLURM_JOB_NODELIST. The seed listens on MASTER_ADDR at DISTO_PORT (default MASTER_PORT + 1,
or 29511 under SLURM). Each node listens on DISTO_HOST (default: 127.0.0.1 when the master is on this machine,
else this host's address). The token comes from DISTO_TOKEN or DISTO_TOKEN_FILE: the launcher has no secret
channel of its own.
"""
from __future__ import annotations

import asyncio
import os
import re
import runpy
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from .cluster import NodeHandle, resolve_token
from .cluster import connect as _connect
from .errors import DistoError
from .loop import run
from .node import Node
from .placement import visible_gpus

_LOOPBACK = {"localhost", "127.0.0.1", "::1", ""}


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world: int
    seed_host: str
    seed_port: int
    host: str  # where this rank's node listens


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[03-05,07],cpu1' -> 'gpu03'."""
    nodelist = nodelist.strip()
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if not m:
        raise DistoError(f"cannot parse SLURM_JOB_NODELIST {nodelist!r}")
    prefix, _, ranges = m.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def read_env(env: dict[str, str] | None = None) -> LaunchEnv:
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        seed_host = env.get("MASTER_ADDR", "127.0.0.1")
        seed_port = int(env.get("DISTO_PORT") or int(env.get("MASTER_PORT", "29500")) + 1)
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        seed_host = first_slurm_host(env.get("SLURM_JOB_NODELIST", "localhost"))
        seed_port = int(env.get("DISTO_PORT", "29511"))
    else:
        raise DistoError("no launcher environment: expected torchrun's RANK/WORLD_SIZE or SLURM's "
                         "SLURM_PROCID/SLURM_NTASKS")
    if not 0 <= rank < world:
        raise DistoError(f"rank {rank} out of range for world size {world}")
    host = env.get("DISTO_HOST") or ("127.0.0.1" if seed_host in _LOOPBACK else _my_address(seed_host))
    if seed_host in ("localhost", ""):
        seed_host = "127.0.0.1"
    return LaunchEnv(rank, world, seed_host, seed_port, host)


def _my_address(towards: str) -> str:
    """The local address used to reach ``towards`` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((towards, 9))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def rank_gpu_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Under torchrun on a GPU host: the environment that gives this rank's node its local GPU only
    (``CUDA_VISIBLE_DEVICES`` = the LOCAL_RANK-th visible device), so it advertises ``gpu=1`` and actors placed
    there use that device as ``cuda:0``. Empty without LOCAL_RANK, without GPUs, with fewer GPUs than local
    ranks, or with DISTO_GPU_PER_RANK=0."""
    env = dict(os.environ if env is None else env)
    if env.get("DISTO_GPU_PER_RANK", "1") == "0" or "LOCAL_RANK" not in env:
        return {}
    gpus = visible_gpus(env)
    local = int(env["LOCAL_RANK"])
    nproc = int(env.get("LOCAL_WORLD_SIZE") or len(gpus))
    if not gpus or not 0 <= local < len(gpus) or nproc > len(gpus):
        return {}
    return {"CUDA_VISIBLE_DEVICES": gpus[local]}


def seed_address() -> str:
    le = read_env()
    return f"{le.seed_host}:{le.seed_port}"


def connect(**kwargs: Any) -> _connect:
    """Inside a script started by ``python -m disto.launch``: join the cluster the launcher formed."""
    return _connect(os.environ.get("DISTO_SEED") or seed_address(), **kwargs)


async def _workers(me: Node) -> list[dict[str, Any]]:
    assert me.registry is not None
    return [m for m in await me.registry.members() if m["role"] == "worker"]


async def _wait_for_members(seed: str, world: int, timeout: float) -> None:
    async with Node(os.environ["DISTO_TOKEN"], listen=None, seed=seed, role="client") as me:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(joined := await _workers(me)) < world:
            if loop.time() > deadline:
                raise DistoError(f"only {len(joined)} of {world} ranks joined within {timeout} s")
            await asyncio.sleep(0.1)


async def _shutdown_all(seed: str) -> None:
    async with Node(os.environ["DISTO_TOKEN"], listen=None, seed=seed, role="client") as me:
        await asyncio.gather(*(NodeHandle(m, me).shutdown() for m in await _workers(me)), return_exceptions=True)


def _wait_for_port(host: str, port: int, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise DistoError(f"the seed {host}:{port} did not come up within {timeout} s") from None
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    le = read_env()
    token = resolve_token()
    os.environ["DISTO_TOKEN"] = token if isinstance(token, str) else token.decode()
    seed = f"{le.seed_host}:{le.seed_port}"
    node_cmd = [sys.executable, "-m", "disto", "node", "start", "--listen"]
    node_env = dict(os.environ, **rank_gpu_env())  # this rank's node: its local GPU only
    if le.rank != 0:
        # every other rank is a node of the cluster until the script on rank 0 ends
        _wait_for_port(le.seed_host, le.seed_port, timeout=float(os.environ.get("DISTO_LAUNCH_TIMEOUT", "60")))
        return subprocess.run(node_cmd + [f"{le.host}:0", "--seed", seed], env=node_env).returncode
    seed_proc = subprocess.Popen(node_cmd + [f"{le.host}:{le.seed_port}"], env=node_env)
    try:
        _wait_for_port(le.seed_host, le.seed_port, timeout=float(os.environ.get("DISTO_LAUNCH_TIMEOUT", "60")))
        run(_wait_for_members(seed, le.world, timeout=float(os.environ.get("DISTO_LAUNCH_TIMEOUT", "60"))))
        os.environ["DISTO_SEED"] = seed
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")
        return 0
    finally:
        try:
            run(_shutdown_all(seed))
        except DistoError:
            pass
        try:
            seed_proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            seed_proc.kill()


if __name__ == "__main__":
    sys.exit(main())
