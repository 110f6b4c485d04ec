"""Hostile peers against a live node: nothing an unauthenticated peer sends is ever unpickled, and the node keeps
serving its real peers throughout."""
from __future__ import annotations

import asyncio
import os
import pickle
import resource

import pytest

import disto
from disto.wire import CLOSED, NEED_DATA, Connection, Identity, Kind, T
from disto.wire.framing import HEADER
from disto.wire.messages import encode
from helpers import TOKEN, Counter, channels, nodes, spawn


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling this creates the file


def evil_call_frame(path: str) -> bytes:
    payload = pickle.dumps(((_Evil(path),), {}), protocol=5)
    body = encode(T.Call(call_id=1, actor_id=16, method="echo", payload=payload))
    return HEADER.pack(len(body), 1, Kind.CALL, 0, 0) + body


async def raw_connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True


async def still_serving(a: disto.Node, b: disto.Node) -> None:
    ref = await spawn(a, b, Counter, 1)
    assert await ref.add(1) == 2


async def test_pickle_before_handshake_is_never_unpickled(tmp_path) -> None:
    target = str(tmp_path / "pwned")
    async with nodes(2) as (a, b):
        await spawn(a, b, Counter)
        reader, writer = await raw_connect(b.address)
        writer.write(evil_call_frame(target))
        await writer.drain()
        assert await closed_by_peer(reader)
        writer.close()
        assert not os.path.exists(target)
        await still_serving(a, b)


async def test_wrong_token_peer_cannot_get_a_pickle_decoded(tmp_path) -> None:
    target = str(tmp_path / "pwned")
    async with nodes(2) as (a, b):
        reader, writer = await raw_connect(b.address)
        fake = Connection(dialer=True, token=b"not-the-cluster-token!!", identity=Identity("evil"))
        for d in fake.data_to_send():
            writer.write(d)
        await writer.drain()
        # skip the listener's WELCOME, then send a forged AUTH followed by a pickle
        forged = encode(T.Auth(proof=os.urandom(32)))
        writer.write(HEADER.pack(len(forged), 1, Kind.AUTH, 0, 0) + forged + evil_call_frame(target))
        await writer.drain()
        assert await closed_by_peer(reader)
        writer.close()
        assert not os.path.exists(target)
        await still_serving(a, b)


@pytest.mark.parametrize("junk", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    os.urandom(4096),
    HEADER.pack(0xFFFFFFFF, 1, Kind.HELLO, 0, 0),
    HEADER.pack(100, 1, Kind.HELLO, 0, 1 << 62),
])
async def test_garbage_closes_only_that_connection(junk: bytes) -> None:
    async with nodes(2) as (a, b):
        reader, writer = await raw_connect(b.address)
        writer.write(junk)
        await writer.drain()
        assert await closed_by_peer(reader)
        writer.close()
        await still_serving(a, b)


async def test_stalled_handshake_times_out_while_others_are_served() -> None:
    async with nodes(2, config=disto.NodeConfig(handshake_timeout=0.3)) as (a, b):
        conns = [await raw_connect(b.address) for _ in range(20)]
        half = Connection(dialer=True, token=TOKEN.encode(), identity=Identity("slow")).data_to_send()[0]
        for _, w in conns:
            w.write(bytes(half)[:7])  # half a frame, then nothing
        await still_serving(a, b)
        for r, w in conns:
            assert await closed_by_peer(r, timeout=5)
            w.close()


async def test_replayed_handshake_gets_nothing_decoded(tmp_path) -> None:
    """Record a real peer's handshake bytes, then replay them on a new connection followed by a pickle: the
    listener's fresh nonce makes the recorded proof worthless."""
    target = str(tmp_path / "pwned")
    async with nodes(2) as (a, b):
        reader, writer = await raw_connect(b.address)
        honest = Connection(dialer=True, token=TOKEN.encode(), identity=Identity("honest"))
        recorded = b"".join(bytes(d) for d in honest.data_to_send())
        writer.write(recorded)
        await writer.drain()
        welcome = await reader.read(65536)
        honest.receive_data(welcome)
        while honest.next_event() not in (NEED_DATA, CLOSED):
            pass
        auth = b"".join(bytes(d) for d in honest.data_to_send())
        recorded += auth
        writer.write(auth)
        await writer.drain()
        writer.close()
        # the replay: same HELLO, same AUTH, then a frame that would create a file if unpickled
        reader, writer = await raw_connect(b.address)
        writer.write(recorded + evil_call_frame(target))
        await writer.drain()
        assert await closed_by_peer(reader)
        writer.close()
        assert not os.path.exists(target)
        await still_serving(a, b)


@pytest.mark.async_timeout(60)
async def test_thousands_of_idle_connections_do_not_stop_the_node() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    n = min(2000, (want - 200) // 2)  # each connection is two descriptors here: ours and the node's
    try:
        async with nodes(2, config=disto.NodeConfig(handshake_timeout=2.0)) as (a, b):
            host, port = b.address.rsplit(":", 1)
            conns = []
            for _ in range(n):
                conns.append(await asyncio.open_connection(host, int(port)))
            await still_serving(a, b)  # the real peer is served while they sit there
            # every idle connection is closed by the node once its handshake time is up
            results = await asyncio.gather(*(closed_by_peer(r, timeout=20) for r, _ in conns))
            assert all(results)
            for _, w in conns:
                w.close()
            await still_serving(a, b)
            unready = [ch for ch in channels(b) if not ch.ready]
            assert not unready
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
