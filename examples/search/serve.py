"""Serve a distributed index over Thrift: starts a local cluster, builds (or loads) the index, serves until Ctrl-C.

    python examples/search/serve.py --port 9400                      # builds 100k synthetic vectors
    python examples/search/serve.py --port 9400 --load /tmp/myindex  # a directory written by index.save()
    python examples/search/client.py --port 9400 --token-file /tmp/disto-search.token

The token is written to --token-file (mode 0600); clients send it with every call. The service binds 127.0.0.1:
beyond one host, give it a TLS context (see docs/search.md).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets

import disto
from disto.search import DistributedIndex, SearchService, dataset
from disto.search._faiss import faiss


async def main(args: argparse.Namespace) -> None:
    faiss.omp_set_num_threads(1)
    token = secrets.token_urlsafe(24)
    fd = os.open(args.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    async with disto.LocalCluster(args.shards) as cluster:
        if args.load:
            index = await DistributedIndex.load(cluster, args.load, nprobe=16)
        else:
            xb, _, xt = dataset(args.nb, 1, 128, seed=0)
            index = await DistributedIndex.create(cluster, "IVF1024,PQ16", xt, shards=args.shards, nprobe=16)
            await index.add(xb)
        async with SearchService(index, token, host=args.host, port=args.port) as svc:
            print(f"serving {index} on {svc.address}; token in {args.token_file}", flush=True)
            if args.seconds:
                await asyncio.sleep(args.seconds)
            else:
                await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9400)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--nb", type=int, default=100_000)
    p.add_argument("--load", help="a directory written by DistributedIndex.save")
    p.add_argument("--token-file", default="/tmp/disto-search.token")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (default: run until Ctrl-C)")
    try:
        disto.run(main(p.parse_args()))
    except KeyboardInterrupt:
        pass
