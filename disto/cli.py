"""The ``disto`` command: ``disto node start|stop``, ``disto status``, ``disto token new``."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from .actor import SystemActor, system_ref
from .cluster import resolve_token, write_token_file
from .errors import DistoError
from .futures import collect_all
from .loop import run
from .node import Node, NodeConfig
from .transport.tls import from_env


def _add_token_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token", help="cluster token (prefer DISTO_TOKEN or --token-file: argv is visible to ps)")
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
                      tls_check_hostname=not args.tls_no_check_hostname)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="disto", description="disto: actors and futures for distributed ML")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="cmd", required=True)

    node = sub.add_parser("node", help="run or stop a node").add_subparsers(dest="node_cmd", required=True)
    start = node.add_parser("start", help="run a node in the foreground until stopped")
    start.add_argument("--listen", default="127.0.0.1:7000",
                       help="HOST:PORT to listen on (default 127.0.0.1:7000; port 0 picks a free one)")
    start.add_argument("--seed", help="HOST:PORT of the seed node to join (omit to be the seed)")
    start.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    start.add_argument("--dedicated", action="store_true", help=argparse.SUPPRESS)  # one actor's own process
    start.add_argument("--preload", default="", help="libraries to import in the background at start, comma "
                       "separated (e.g. torch): the first call that needs them does not pay for the import")
    _add_token_args(start)
    stop = node.add_parser("stop", help="ask a running node to stop")
    stop.add_argument("address", help="HOST:PORT of the node")
    _add_token_args(stop)

    status = sub.add_parser("status", help="nodes, their actors and pending calls")
    status.add_argument("seed", help="HOST:PORT of the seed node")
    status.add_argument("--json", action="store_true", help="print JSON")
    _add_token_args(status)

    token = sub.add_parser("token", help="token helpers").add_subparsers(dest="token_cmd", required=True)
    new = token.add_parser("new", help="write a fresh random token to a file with mode 0600")
    new.add_argument("--file", required=True)
    return parser


async def _node_start(args: argparse.Namespace) -> int:
    node = Node(resolve_token(args.token, args.token_file), listen=args.listen, seed=args.seed, config=_config(args),
                role="dedicated" if args.dedicated else "worker")
    node.preload_at_start = tuple(m for m in args.preload.split(",") if m)
    await node.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: node.stop_soon("signal"))
    line = f"{node.address} {node.node_id}\n"
    if args.ready_fd is not None:
        os.write(args.ready_fd, line.encode())
        os.close(args.ready_fd)
    else:
        print(f"disto node {node.node_id} listening on {node.address}" +
              (f", joined {args.seed}" if args.seed else " (seed)"), flush=True)
    await node.wait_stopped()
    return 0


async def _node_stop(args: argparse.Namespace) -> int:
    async with Node(resolve_token(args.token, args.token_file), listen=None, seed=args.address,
                    role="client", config=_config(args)) as me:
        ok = await system_ref(SystemActor.NODE_SERVICE, args.address, via=me).shutdown("disto node stop")
    print(f"stopping {args.address}" if ok else f"{args.address} refused")
    return 0


async def _status(args: argparse.Namespace) -> int:
    async with Node(resolve_token(args.token, args.token_file), listen=None, seed=args.seed, role="client",
                    config=_config(args)) as me:
        assert me.registry is not None
        members = await me.registry.members()
        names = await me.registry.names()
        infos = await collect_all(
            system_ref(SystemActor.NODE_SERVICE, m["address"], node_id=m["node_id"], via=me).info()
            for m in members if m["role"] != "client")
    if args.json:
        print(json.dumps({"members": members, "nodes": [i if isinstance(i, dict) else {"error": str(i)}
                                                         for i in infos],
                          "names": {k: repr(v) for k, v in names.items()}}, indent=2, default=str))
        return 0
    print(f"{'node':<18} {'address':<22} {'role':<7} {'pid':>7} {'actors':>6} {'pending':>7}  peers (last heard)")
    for info in infos:
        if isinstance(info, BaseException):
            print(f"  unreachable: {info}")
            continue
        heard = ", ".join(f"{peer} {age:.1f}s ago" for peer, age in sorted(info.get("last_heard", {}).items()))
        print(f"{info['node_id']:<18} {info['address']:<22} {info['role']:<7} {info['pid']:>7} "
              f"{len(info['actors']):>6} {info['pending_calls']:>7}  {heard}")
        for a in info["actors"]:
            print(f"    #{a['id']:<5} {a['class']:<24} {a['name'] or ''}")
    if names:
        print("names:", ", ".join(sorted(names)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.cmd == "node" and args.node_cmd == "start":
            return run(_node_start(args))
        if args.cmd == "node" and args.node_cmd == "stop":
            return run(_node_stop(args))
        if args.cmd == "status":
            return run(_status(args))
        if args.cmd == "token":
            write_token_file(args.file)
            print(f"wrote a new token to {args.file} (mode 0600)")
            return 0
    except (DistoError, ValueError) as e:
        print(f"disto: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2
