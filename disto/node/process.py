"""Node processes started from Python: the nodes of a :class:`~disto.LocalCluster`, and the dedicated process of
an actor spawned with ``process=True``.

A child node gets the token in its environment (never on its command line, which ``ps`` shows), the parent's TLS
files if it has some, its own session (a Ctrl-C in the terminal reaches the driver only, which then stops its
nodes in order), and dies with its parent (PR_SET_PDEATHSIG), so a killed driver or node leaves none behind.
"""
from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from typing import Any

from ..errors import DistoError
from ..transport.tls import ENV as TLS_ENV
from .config import NodeConfig


FD_LIMIT_GOAL = 65536  # what a node raises its soft open-file limit to (at most the hard limit)


def raise_fd_limit(goal: int = FD_LIMIT_GOAL) -> int:
    """Raise this process's soft limit on open files towards ``goal`` (never above the hard limit, never down);
    return the soft limit now. A node holds a socket per peer and two eventfds per actor that runs sync code, so
    the usual default of 1024 runs out at a few hundred actors."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = goal if hard == resource.RLIM_INFINITY else min(goal, hard)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return want
        return soft
    except (ImportError, ValueError, OSError):
        return -1  # no resource module, or not allowed: keep what there is


GC_YOUNG_THRESHOLD = 10_000  # a node process's first-generation threshold (Python's default: 700)
GC_ENV = "DISTO_NODE_GC"  # "python" leaves a node process's collector as Python sets it up


def tune_gc(young: int = GC_YOUNG_THRESHOLD) -> tuple[int, int, int]:
    """A node process's collector, set for serving calls; return the thresholds now.

    Every call allocates a few container objects (its item, tuples, futures), so with Python's threshold of 700 a
    busy node collects its young generation every hundred calls or so; the calls in flight survive those
    collections and are promoted, and once enough have been, a *full* collection runs, which walks every object
    in the process: about 70-90 ms with torch imported (175,000 objects) during which no call moves. Here the
    young threshold is raised (the count is allocations minus deallocations, so a steady stream of calls rarely
    reaches 10,000) and what is alive now is frozen (``gc.freeze``): full collections skip it. Called when the
    process has started; the node freezes again when its preloads are imported (``Node._preloads_settled``)."""
    g0, g1, g2 = gc.get_threshold()
    if 0 < g0 < young:
        gc.set_threshold(young, g1, g2)
    gc.freeze()
    return gc.get_threshold()


def gc_mode(text: str) -> str:
    """``disto node start --gc`` (default ``$DISTO_NODE_GC``): "tuned" (:func:`tune_gc`) or "python" (as Python
    sets it up)."""
    value = text.strip().lower()
    if value not in ("tuned", "python"):
        raise ValueError(f"expected 'tuned' or 'python', got {text!r}")
    return value


def _child_setup() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the parent
    except Exception:
        pass


def _read_line(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


async def start_node_process(*, listen: str, seed: str | None, token: str, config: NodeConfig | None = None,
                             env: dict[str, str] | None = None, python: str | None = None,
                             extra: tuple[str, ...] = (), startup_timeout: float = 30.0
                             ) -> tuple[asyncio.subprocess.Process, str, list[str]]:
    """Start ``python -m disto node start`` and wait until it listens: (process, its address, the rest of its
    ready line: its node id, then its dashboard URL if it serves one)."""
    rfd, wfd = os.pipe()
    args = [python or sys.executable, "-m", "disto", "node", "start", "--listen", listen, "--ready-fd", str(wfd),
            *extra]
    if seed:
        args += ["--seed", seed]
    child_env = dict(os.environ, **(env or {}), DISTO_TOKEN=token)
    child_env.pop("DISTO_TOKEN_FILE", None)
    for var in TLS_ENV.values():
        child_env.pop(var, None)  # the parent's TLS settings, not whatever this shell had
    if config is not None and config.tls_cert:  # one host, one identity: the same files
        child_env.update({TLS_ENV["cert"]: config.tls_cert, TLS_ENV["key"]: config.tls_key or "",
                          TLS_ENV["ca"]: config.tls_ca or ""})
        if not config.tls_check_hostname:
            args.append("--tls-no-check-hostname")
    try:
        proc = await asyncio.create_subprocess_exec(*args, env=child_env, pass_fds=(wfd,),
                                                    stdin=asyncio.subprocess.DEVNULL, preexec_fn=_child_setup,
                                                    start_new_session=True)
    finally:
        os.close(wfd)
    loop = asyncio.get_running_loop()
    try:
        line = await asyncio.wait_for(loop.run_in_executor(None, _read_line, rfd), startup_timeout)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    finally:
        os.close(rfd)
    if not line:
        code = await proc.wait()
        raise DistoError(f"node process exited with code {code} before it was ready (see its stderr above)")
    fields = line.split()
    return proc, fields[0], fields[1:]


async def end_process(proc: asyncio.subprocess.Process, timeout: float = 5.0, log: Any = None) -> None:
    """Wait for a node process asked to stop; kill it if it does not within ``timeout``."""
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        if log is not None:
            log.warning("node process %d did not exit; killing it", proc.pid)
        proc.kill()
        await proc.wait()
    except ProcessLookupError:
        pass
