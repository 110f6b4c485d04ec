"""The ``disto`` command: ``disto node start|stop``, ``disto status``, ``disto actors``, ``disto logs``,
``disto stacks``, ``disto token new``. Mistakes get one line that says what to do, never a traceback."""
from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

from .actor import ActorRef, SystemActor, system_ref
from .cluster import resolve_token, token_source, write_token_file
from .cluster.inspect import actor_logs, cluster_actors, cluster_stacks, each_node, format_stacks
from .errors import DistoError
from .loop import run
from .node import Node, NodeConfig
from .node.config import normalize_token
from .node.process import GC_ENV, gc_mode, raise_fd_limit, tune_gc
from .placement import format_resources, parse_resources
from .transport.tls import from_env
from .version import __version__

DEFAULT_ADDRESS = "127.0.0.1:7000"


def _add_token_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token", help="cluster token (prefer --token-file or DISTO_TOKEN: argv is visible to ps); "
                   "--token and --token-file win over DISTO_TOKEN")
    p.add_argument("--token-file", help="file holding the token, mode 0600 (default: $DISTO_TOKEN_FILE)")
    env = from_env()
    p.add_argument("--tls-cert", default=env["cert"], help="this node's TLS certificate, PEM (default: "
                   "$DISTO_TLS_CERT); with --tls-key and --tls-ca every connection is mutual TLS")
    p.add_argument("--tls-key", default=env["key"], help="its private key, PEM (default: $DISTO_TLS_KEY)")
    p.add_argument("--tls-ca", default=env["ca"], help="the cluster CA certificate, PEM (default: $DISTO_TLS_CA)")
    p.add_argument("--tls-no-check-hostname", action="store_true",
                   help="accept any certificate of the CA, whatever address it names")


def _config(args: argparse.Namespace) -> NodeConfig:
    return NodeConfig(tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
                      tls_check_hostname=not args.tls_no_check_hostname,
                      resources=getattr(args, "resources", None) or None)


def _resources_arg(text: str) -> dict[str, float]:
    try:
        return parse_resources(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _gc_arg(text: str) -> str:
    try:
        return gc_mode(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _gpus_arg(text: str) -> str:
    ids = [d.strip() for d in text.split(",") if d.strip()]
    if not ids or not all(d.isdigit() or d.startswith(("GPU-", "MIG-")) for d in ids):
        raise argparse.ArgumentTypeError(f"expected CUDA device ids such as 0,1 (or GPU-/MIG- UUIDs), got {text!r}")
    return ",".join(ids)


def _address_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("address", nargs="?", default=os.environ.get("DISTO_ADDRESS", DEFAULT_ADDRESS),
                   help=f"HOST:PORT of {what} (any node of the cluster; default $DISTO_ADDRESS or "
                        f"{DEFAULT_ADDRESS})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="disto", description="disto: actors and futures for distributed ML")
    parser.add_argument("--version", action="version", version=f"disto {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="cmd", required=True)

    node = sub.add_parser("node", help="run or stop a node").add_subparsers(dest="node_cmd", required=True)
    start = node.add_parser("start", help="run a node in the foreground until stopped")
    start.add_argument("--listen", default=DEFAULT_ADDRESS,
                       help=f"HOST:PORT to listen on (default {DEFAULT_ADDRESS}; port 0 picks a free one)")
    start.add_argument("--seed", help="HOST:PORT of the seed node to join (omit to be the seed)")
    start.add_argument("--dashboard", metavar="HOST:PORT",
                       help="serve the live dashboard and the cluster's /metrics here (e.g. 127.0.0.1:8265; "
                            "they ask for the cluster token)")
    start.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="what the node logs (default info: start, stop, joins and losses)")
    start.add_argument("--resources", type=_resources_arg, metavar="NAME=N,...",
                       default=os.environ.get("DISTO_RESOURCES") or None,
                       help="what this node offers to placement, e.g. gpu=2,ssd=1,memory=64G (replaces the "
                            "detected cpu, gpu, memory; other names are custom labels; default $DISTO_RESOURCES)")
    start.add_argument("--gpus", type=_gpus_arg, metavar="IDS",
                       help="the CUDA devices this node uses and advertises, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES)")
    start.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    start.add_argument("--dedicated", action="store_true", help=argparse.SUPPRESS)  # one actor's own process
    start.add_argument("--preload", default="", help="libraries to import in the background at start, comma "
                       "separated (e.g. torch): the first call that needs them does not pay for the import (calls that "
                       "arrive meanwhile wait for it)")
    start.add_argument("--gc", type=_gc_arg, default=os.environ.get(GC_ENV, "tuned"),
                       help="the collector of this node process: 'tuned' (fewer young collections, and what is "
                            "alive once started and preloaded is frozen, so full collections skip it) or 'python' "
                            "(Python's defaults); default $DISTO_NODE_GC or tuned")
    _add_token_args(start)
    stop = node.add_parser("stop", help="ask a running node to stop")
    stop.add_argument("address", help="HOST:PORT of the node")
    _add_token_args(stop)

    status = sub.add_parser("status", help="nodes, their actors and pending calls")
    _address_arg(status, "the seed or any node")
    status.add_argument("--json", action="store_true", help="print JSON")
    _add_token_args(status)

    actors = sub.add_parser("actors", help="every actor of the cluster: node, class, name, state, restarts")
    _address_arg(actors, "the seed or any node")
    actors.add_argument("--json", action="store_true", help="print JSON")
    _add_token_args(actors)

    logs = sub.add_parser("logs", help="what an actor printed or logged (kept by its node)")
    logs.add_argument("actor", help="the actor's name, or Class#id as `disto actors` shows it")
    logs.add_argument("--address", default=os.environ.get("DISTO_ADDRESS", DEFAULT_ADDRESS),
                      help=f"HOST:PORT of any node (default $DISTO_ADDRESS or {DEFAULT_ADDRESS})")
    logs.add_argument("-n", "--lines", type=int, default=None, help="only the last N lines")
    _add_token_args(logs)

    stacks = sub.add_parser("stacks", help="every node's threads and asyncio tasks, and the calls they run")
    _address_arg(stacks, "the seed or any node")
    stacks.add_argument("--json", action="store_true", help="print JSON")
    _add_token_args(stacks)

    token = sub.add_parser("token", help="token helpers").add_subparsers(dest="token_cmd", required=True)
    new = token.add_parser("new", help="write a fresh random token to a file with mode 0600")
    new.add_argument("--file", required=True)
    new.add_argument("--force", action="store_true", help="replace the file if it exists")
    return parser


def _token(args: argparse.Namespace) -> str | bytes:
    return resolve_token(args.token, args.token_file)


async def _node_start(args: argparse.Namespace) -> int:
    raise_fd_limit()
    token = _token(args)
    if isinstance(args.resources, str):  # from $DISTO_RESOURCES (argparse converts only what is typed)
        args.resources = _resources_arg(args.resources)
    if args.gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpus  # before anything here initializes CUDA
    node = Node(token, listen=args.listen, seed=args.seed, config=_config(args),
                role="dedicated" if args.dedicated else "worker")
    node.token_source = token_source(args.token, args.token_file)
    node.preload_at_start = tuple(m for m in args.preload.split(",") if m)
    node.freeze_gc_after_preloads = args.gc == "tuned"  # (the preloads' end freezes again)
    await node.start()
    if args.gc == "tuned":
        tune_gc()
    node.capture_output()  # what actors print: tagged, kept per actor, sent to the drivers
    dashboard: Any = None
    if args.dashboard:
        from .dashboard import Dashboard  # aiohttp: imported only by the node that serves it (start-up time)
        dashboard = Dashboard(node, normalize_token(token))
        try:
            url = await dashboard.start(args.dashboard)
        except BaseException:
            await node.stop("the dashboard could not start")
            raise
        await node.announce_dashboard(url)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: node.stop_soon("signal"))
    line = f"{node.address} {node.node_id}" + (f" {dashboard.url}" if dashboard else "") + "\n"
    if args.ready_fd is not None:
        os.write(args.ready_fd, line.encode())
        os.close(args.ready_fd)
    else:
        print(f"disto node {node.node_id} listening on {node.address}" +
              (f", joined {args.seed}" if args.seed else " (seed)"), flush=True)
        if dashboard:
            print(f"dashboard: {dashboard.url}/?token=... (the cluster token; or "
                  f"Authorization: Bearer <token>)", flush=True)
    await node.wait_stopped()
    if dashboard is not None:
        await dashboard.stop()
    return 0


class _Client:
    """A command-line client of the cluster that ``address`` (the seed or any member) belongs to."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.node: Node | None = None

    async def __aenter__(self) -> Node:
        args = self.args
        token, source = _token(args), token_source(args.token, args.token_file)
        probe = Node(token, listen=None, seed=args.address, role="client", config=_config(args))
        probe.token_source = source
        async with probe:  # ask the node named which node is its seed (it may be the seed itself)
            info = await system_ref(SystemActor.NODE_SERVICE, args.address, via=probe).info()
        seed = info.get("seed") or args.address
        if seed != args.address:
            print(f"({args.address} is not the seed; asking the seed {seed})", file=sys.stderr)
        self.node = Node(token, listen=None, seed=seed, role="client", config=_config(args))
        self.node.token_source = source
        return await self.node.start()

    async def __aexit__(self, *exc: Any) -> None:
        if self.node is not None:
            await self.node.stop()


async def _node_stop(args: argparse.Namespace) -> int:
    me = Node(_token(args), listen=None, seed=args.address, role="client", config=_config(args))
    me.token_source = token_source(args.token, args.token_file)
    async with me:
        ok = await system_ref(SystemActor.NODE_SERVICE, args.address, via=me).shutdown("disto node stop")
    print(f"stopping {args.address}" if ok else f"{args.address} refused")
    return 0


async def _status(args: argparse.Namespace) -> int:
    async with _Client(args) as me:
        assert me.registry is not None
        names = await me.registry.names()
        answers = await each_node(me, "info", 5.0)
        free = {r["node_id"]: r for r in await me.registry.resources()}
    members = [m for m, _ in answers]
    infos = [info for _, info in answers]
    if args.json:
        print(json.dumps({"members": members, "nodes": [i if isinstance(i, dict) else {"error": str(i)}
                                                         for i in infos], "resources": list(free.values()),
                          "names": {k: repr(v) for k, v in names.items()}}, indent=2, default=str))
        return 0
    print(f"{'node':<18} {'address':<22} {'role':<9} {'pid':>7} {'actors':>6} {'pending':>7}  peers (last heard)")
    for info in infos:
        if isinstance(info, BaseException):
            print(f"  unreachable: {info}")
            continue
        heard = ", ".join(f"{peer} {age:.1f}s ago" for peer, age in sorted(info.get("last_heard", {}).items()))
        print(f"{info['node_id']:<18} {info['address']:<22} {info['role']:<9} {info['pid']:>7} "
              f"{len(info['actors']):>6} {info['pending_calls']:>7}  {heard}")
        room = free.get(info["node_id"])
        if room is not None:
            held = {k: v for k, v in room["free"].items() if v != room["total"].get(k)}
            print(f"    resources {format_resources(room['total'])}"
                  + (f"; free {format_resources(held)}" if held else ""))
        for a in info["actors"]:
            print(f"    #{a['id']:<5} {a['class']:<24} {a['name'] or '':<16} {a['state']}")
    dashboards = [m["dashboard"] for m in members if m.get("dashboard")]
    if dashboards:
        print("dashboard:", ", ".join(dashboards))
    if names:
        print("names:", ", ".join(sorted(names)))
    return 0


async def _actors(args: argparse.Namespace) -> int:
    async with _Client(args) as me:
        rows = await cluster_actors(me)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "ref"} for r in rows], indent=2, default=str))
        return 0
    print(f"{'node':<22} {'actor':<28} {'name':<16} {'state':<12} {'restarts':>8} {'uptime':>9}")
    for r in rows:
        label = f"{r['class']}#{r['id']}" if r["class"] else "-"
        uptime = f"{r['uptime']:.0f}s" if r.get("uptime") is not None else ""
        print(f"{r['node']:<22} {label:<28} {r['name'] or '':<16} {r['state']:<12} {r['restarts']:>8} {uptime:>9}")
    return 0


async def _logs(args: argparse.Namespace) -> int:
    async with _Client(args) as me:
        ref = await _find_actor(me, args.actor)
        lines = await actor_logs(me, ref, args.lines)
    for line in lines:
        print(line)
    return 0


async def _find_actor(me: Node, what: str) -> ActorRef:
    """An actor by name (the registry), or by Class#id / #id as ``disto actors`` shows it."""
    assert me.registry is not None
    names = await me.registry.names()
    if what in names:
        return names[what]
    rows = [r for r in await cluster_actors(me) if r["class"]]
    found = [r for r in rows if what in (f"{r['class']}#{r['id']}", f"#{r['id']}", r["name"])]
    if len(found) == 1:
        return found[0]["ref"]
    if found:
        raise DistoError(f"{len(found)} actors match {what!r} (on {', '.join(r['node'] for r in found)}): "
                         f"use its name")
    raise DistoError(f"no actor {what!r} in the cluster (`disto actors` lists them)")


async def _stacks(args: argparse.Namespace) -> int:
    async with _Client(args) as me:
        nodes = await cluster_stacks(me)
    print(json.dumps(nodes, indent=2, default=str) if args.json else format_stacks(nodes))
    return 0


def _token_new(args: argparse.Namespace) -> int:
    if os.path.exists(args.file) and not args.force:
        raise DistoError(f"{args.file} exists; not replacing a token nodes may be using (--force replaces it)")
    folder = os.path.dirname(os.path.abspath(args.file))
    if not os.path.isdir(folder):
        raise DistoError(f"no folder {folder} for the token file: create it first (mkdir -p {folder})")
    write_token_file(args.file)
    print(f"wrote a new token to {args.file} (mode 0600)")
    return 0


def explain(e: BaseException, args: argparse.Namespace) -> str:
    """One line for a mistake the command line commonly meets."""
    listen = getattr(args, "listen", None)
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host in {listen or getattr(args, 'address', '')!r}: {e.strerror or e}"
    if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
        return (f"cannot listen on {listen}: the port is in use (another node?): pick another with "
                f"--listen HOST:PORT, or port 0 for any free one")
    if isinstance(e, OSError) and e.errno == errno.EADDRNOTAVAIL:
        return (f"cannot listen on {listen}: that address is not one of this machine's (use 127.0.0.1, "
                f"0.0.0.0 for every interface, or an address `ip addr` shows)")
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
        return f"cannot listen on {listen}: {e.strerror} (ports below 1024 need root: pick a higher one)"
    if isinstance(e, OSError):
        return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    return f"{type(e).__name__}: {e}" if isinstance(e, (ValueError,)) else str(e)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING
    if args.cmd == "node" and args.node_cmd == "start" and not args.verbose:
        level = getattr(logging, args.log_level.upper())
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("disto").setLevel(level)
    if level == logging.DEBUG:
        logging.getLogger().setLevel(logging.DEBUG)
    commands = {"status": _status, "actors": _actors, "logs": _logs, "stacks": _stacks}
    try:
        if args.cmd == "node" and args.node_cmd == "start":
            return run(_node_start(args))
        if args.cmd == "node" and args.node_cmd == "stop":
            return run(_node_stop(args))
        if args.cmd in commands:
            return run(commands[args.cmd](args))
        if args.cmd == "token":
            return _token_new(args)
    except (DistoError, ValueError, OSError) as e:
        print(f"disto: {explain(e, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2
