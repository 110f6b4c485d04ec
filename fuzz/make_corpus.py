"""Write seed inputs for fuzz_wire.py: a real handshake, real frames, real bodies (the fuzzer mutates from there)."""
from __future__ import annotations

import os

from disto.wire import CLOSED, NEED_DATA, Connection, Identity, Kind, T
from disto.wire.fastcodec import encode_call, encode_reply
from disto.wire.messages import encode

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = b"fuzzing-token-0123456789abcdef"


def main() -> None:
    out = os.path.join(HERE, "corpus")
    os.makedirs(out, exist_ok=True)
    a = Connection(dialer=True, token=TOKEN, identity=Identity("A", "127.0.0.1:1", "h", 1))
    hello = b"".join(bytes(x) for x in a.data_to_send())
    seeds = {
        "hello": b"\x00" + hello,
        "frames": b"\x01" + b"".join(bytes(x) for x in _frames()),
        "call_body": b"\x02" + encode_call(1, 16, "add", b"\x80\x05K\x01.", [], False, None),
        "reply_body": b"\x03" + encode_reply(7, None, [4096, 10], True),
        "failure_body": b"\x02" + encode(T.Failure(call_id=1, kind=1, type_name="E", message="m")),
        "release_body": b"\x03" + encode(T.Release(buffers=[T.BufferDesc(size=0, kind=T.BufferKind.SHM,
                                                                         segment="disto-1-buf-2")])),
    }
    try:
        from disto.search.service import S, _message
        body = encode(S.Search.search_args(token="t" * 20, queries=b"\0" * 16, k=5, nprobe=2, allow_partial=False))
        seeds["search"] = b"\x04" + _message("search", 1, 1, body)[4:]
        from disto.search.link import _DONE, Layout, _len

        class _Named:
            name = "disto-1-search-1"

        req = encode(Layout(n=3, d=4, k=2, nprobe=2, shards=2).request(1, _Named(), 1))  # type: ignore[arg-type]
        seeds["link"] = b"\x05" + _len.pack(len(req)) + req + _DONE.pack(_DONE.size - 4, 10, 1, 1, 4, 2, 0.5, 4, 3,
                                                                           1.5, 0)
    except ImportError:
        pass
    try:  # a direct-encoded payload with its tensor in band (no buffers: the count byte is 0)
        import torch

        from disto.serialization import dumps
        stream, _ = dumps(((torch.arange(4.0), 1, -2.5, "s", None), {"k": True}))
        seeds["direct"] = b"\x06\x00" + stream[2:]
    except ImportError:
        pass
    import pickle
    seeds["scalars"] = b"\x07" + pickle.dumps(((5, "ping", 2.5, None, True, -70000, 2**40), {}), 5)
    seeds["scalars_containers"] = b"\x07" + pickle.dumps(((1, [2, 3.5, None]), {"k": {"x": "y", "z": [True]}}), 5)
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as fh:
            fh.write(data)
    print(f"{len(seeds)} seeds in {out}")


def _frames() -> list:
    a = Connection(dialer=True, token=TOKEN, identity=Identity("A", "", "h", 1))
    b = Connection(dialer=False, token=TOKEN, identity=Identity("B", "", "h", 2))
    for src, dst in ((a, b), (b, a), (a, b)):
        for d in src.data_to_send():
            dst.receive_data(d)
        while dst.next_event() not in (NEED_DATA, CLOSED):
            pass
    frames = a.send(Kind.CALL, T.Call(call_id=1, actor_id=16, method="m", payload=b"x"), [b"y" * 2000])
    frames += a.send(Kind.HEARTBEAT, T.Heartbeat(seq=1, sent_at=1.0))
    return frames


if __name__ == "__main__":
    main()
