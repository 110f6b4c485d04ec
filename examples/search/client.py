"""A search client that does not import disto: only thriftpy2, numpy and the IDL file.

    python examples/search/serve.py --port 9400 &          # prints the token file to use
    python examples/search/client.py --port 9400 --token-file /tmp/disto-search.token

Any Thrift library works the same way (C++, Java, Go): framed transport, binary protocol, disto/search/search.thrift.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.transport import TFramedTransportFactory

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_IDL = os.path.join(HERE, "..", "..", "disto", "search", "search.thrift")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--idl", default=DEFAULT_IDL)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=int, default=16)
    args = p.parse_args()

    token = open(args.token_file).read().strip()
    svc = thriftpy2.load(args.idl, module_name="search_thrift")
    client = make_client(svc.Search, args.host, args.port, proto_factory=TBinaryProtocolFactory(),
                         trans_factory=TFramedTransportFactory(), timeout=60_000)
    info = client.info(token)
    print(f"index: d={info.d}, {info.ntotal} vectors, {info.shards} shards x {info.replicas} replicas")
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((args.queries, info.d), dtype=np.float32)
    t = time.perf_counter()
    res = client.search(token, queries.astype("<f4").tobytes(), args.k, args.nprobe, False)
    elapsed = time.perf_counter() - t
    labels = np.frombuffer(res.labels, "<i8").reshape(res.n, res.k)
    distances = np.frombuffer(res.distances, "<f4").reshape(res.n, res.k)
    print(f"{res.n} queries in {elapsed * 1e3:.1f} ms ({res.n / elapsed:.0f} queries/s), partial={res.partial}")
    print("first query:", list(zip(labels[0][:5].tolist(), np.round(distances[0][:5], 3).tolist())))
    try:
        client.search("not-the-token-0123456789", queries[:1].tobytes(), 1, 1, False)
    except svc.SearchError as e:
        print("a wrong token is refused:", e.message)
    client.close()


if __name__ == "__main__":
    main()
