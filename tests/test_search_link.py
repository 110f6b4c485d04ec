"""Sharding by inverted lists and the same-host fast path (disto/search/link.py): the list balancer, the batch
layout, the link's protocol and refusals (no cluster), and on a cluster: identical answers by every path, a
stopped shard process failing the search instead of hanging."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

import disto  # noqa: E402
from disto.search import DistributedIndex  # noqa: E402
from disto.search._idl import S  # noqa: E402
from disto.search.index import balance_lists  # noqa: E402
from disto.memory import Segment  # noqa: E402
from disto.search.link import SECRET_BYTES, BlockPool, Layout, LinkServer  # noqa: E402
from disto.search.link_protocol import (GREETING, RouterEnd, ShardEnd, ShardSearchError, done_bytes,  # noqa: E402
                                        error_bytes)
from disto.wire.messages import decode_struct, encode  # noqa: E402
from test_search import D, single_index  # noqa: E402


# ------------------------------------------------------------------ level 1: no event loop
def test_lists_are_dealt_out_by_expected_work() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.zipf(1.5, 200).clip(1, 5000)
    lists = np.repeat(np.arange(200), sizes)
    for shards in (1, 2, 3, 7):
        owner = balance_lists(lists, 256, shards)  # 56 lists got no sample vector: they are dealt out too
        assert owner.shape == (256,) and set(owner.tolist()) == set(range(shards))
        work = np.bincount(owner, weights=(np.bincount(lists, minlength=256) + 1.0) ** 2, minlength=shards)
        # greedy largest-first: no shard above the fair share by more than the biggest single list
        assert work.max() <= work.sum() / shards + ((sizes.max() + 1.0) ** 2)


def test_a_batch_layout_is_aligned_and_disjoint() -> None:
    lay = Layout(n=37, d=D, k=7, nprobe=5, shards=3)
    regions = [(lay.assign, 37 * 5 * 8), (lay.queries, 37 * D * 4), (lay.coarse, 37 * 5 * 4),
               (lay.distances, 3 * 37 * 7 * 4), (lay.labels, 3 * 37 * 7 * 8)]
    for (a, na), (b, _) in zip(regions, regions[1:]):
        assert a % 64 == 0 and a + na <= b
    assert lay.size >= regions[-1][0] + regions[-1][1]
    pool = BlockPool(keep=1)
    block = pool.take(lay.size)
    try:
        d0, i0 = lay.results(block, 0)
        d2, i2 = lay.results(block, 2)
        d2[:] = 1.5
        i2[:] = 9
        merged = block.array(lay.distances, np.float32, (3, 37, 7))
        assert (merged[2] == 1.5).all() and (merged[0] == 0).all() and d0.shape == (37, 7)
        assert (block.array(lay.labels, np.int64, (3, 37, 7))[2] == 9).all()
    finally:
        block.discard()
    assert not os.path.exists(block.path)


# ------------------------------------------------------------------ level 1: the link protocol from bytes
def _frame(req: object) -> bytes:
    body = encode(req)
    return struct.pack("!I", len(body)) + body


def test_the_shard_end_wants_the_secret_then_parses_requests_and_knows_a_repeat() -> None:
    secret = os.urandom(SECRET_BYTES)
    lay = Layout(n=3, d=4, k=2, nprobe=2, shards=2)
    seg = type("Seg", (), {"name": "disto-1-search-1"})()
    first, again, other = (lay.request(seq, seg, shard) for seq, shard in ((1, 0), (2, 0), (3, 1)))
    end = ShardEnd(secret)
    assert end.receive(secret[:10]) == (b"", [])  # a secret in pieces is fine
    data = secret[10:] + _frame(first) + _frame(again)[:7]
    send, reqs = end.receive(data)
    assert send == GREETING and [(r.seq, r.struct.segment) for r in reqs] == [(1, "disto-1-search-1")]
    send, reqs = end.receive(_frame(again)[7:] + _frame(other))
    assert send == b"" and [(r.seq, r.struct is None) for r in reqs] == [(2, True), (3, False)]
    assert reqs[1].struct.distances == lay.request(3, seg, 1).distances
    end.forget_last()  # (after a refused request) the same bytes are decoded in full again
    _, reqs = end.receive(_frame(lay.request(4, seg, 1)))
    assert reqs[0].seq == 4 and reqs[0].struct is not None
    with pytest.raises(disto.AuthenticationError):
        ShardEnd(secret).receive(b"x" * SECRET_BYTES)
    with pytest.raises(disto.RemoteProtocolError, match="bytes"):
        ShardEnd(secret).receive(secret + struct.pack("!I", 1 << 20))
    with pytest.raises(disto.RemoteProtocolError):
        ShardEnd(secret).receive(secret + struct.pack("!I", 3) + b"\xff\xff\xff")


def test_the_router_end_takes_answers_in_order_and_refuses_the_rest() -> None:
    end = RouterEnd(3)
    lay = Layout(n=3, d=4, k=2, nprobe=2, shards=2)
    seg = type("Seg", (), {"name": "disto-1-search-1"})()
    key = ("disto-1-search-1", 3)
    sent = [end.request(tag, key, lambda: lay.request(0, seg, 0)) for tag in ("a", "b", "c")]
    assert sent[0][4:] != sent[1][4:] and sent[0][15:] == sent[1][15:]  # same bytes but for the seq
    assert end.receive(GREETING) == [] and end.greeted
    plain = done_bytes(1, 0.25, 0.75)
    assert end.receive(plain[:10]) == []  # an answer in two pieces
    assert end.receive(plain[10:]) == [("a", (0.25, 0.75))]
    both = error_bytes(2, "ValueError: no") + done_bytes(3, 1.0, 2.0)  # the full decoder's path, then plain
    (tag_b, err), (tag_c, ok) = end.receive(both)
    assert (tag_b, tag_c, ok) == ("b", "c", (1.0, 2.0))
    assert isinstance(err, ShardSearchError) and isinstance(err, disto.DistoError) and "shard 3: ValueError" in str(err)
    # an answer to nothing that was asked, a frame beyond the bound, a bad greeting: the link is broken
    for bad, greet in ((done_bytes(9, 0, 0), True), (struct.pack("!I", 1 << 20), True), (b"\x02", False)):
        end = RouterEnd(3)
        end.request("x", key, lambda: lay.request(0, seg, 0))
        if greet:
            end.receive(GREETING)
        with pytest.raises(disto.RemoteProtocolError):
            end.receive(bad)
        assert end.take_pending() == ["x"]


# ------------------------------------------------------------------ level 2: the link's protocol, no cluster
class _Server:
    """A LinkServer over a fake search that records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

        def search_into(xq, k, assign, coarse, Dout, Iout):  # noqa: N803
            self.calls.append((xq.copy(), k, assign.copy()))
            Dout[:] = xq[:, :1]
            Iout[:] = assign[:, :1]
            return 1.0, 2.0

        self.server = LinkServer(search_into, d=4, nlist=8, max_k=16)

    def connect(self, secret: bytes | None = None) -> socket.socket:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(10)
        c.connect(self.server.path)
        c.sendall(self.server.secret if secret is None else secret)
        return c


def _ask(c: socket.socket, req: object) -> object:
    body = encode(req)
    c.sendall(struct.pack("!I", len(body)) + body)
    head = c.recv(4, socket.MSG_WAITALL)
    (size,) = struct.unpack("!I", head)
    return decode_struct(S.ShardSearchDone, c.recv(size, socket.MSG_WAITALL))


def test_the_link_searches_in_place_and_refuses_what_is_out_of_bounds() -> None:
    srv = _Server()
    block = Segment.create("search", 1 << 16)
    try:
        assert oct(os.stat(os.path.dirname(srv.server.path)).st_mode & 0o777) == "0o700"
        lay = Layout(n=3, d=4, k=2, nprobe=2, shards=2)
        block.array(lay.queries, np.float32, (3, 4))[:] = np.arange(12, dtype=np.float32).reshape(3, 4)
        block.array(lay.assign, np.int64, (3, 2))[:] = [[1, 2], [3, 4], [5, 6]]
        c = srv.connect()
        assert c.recv(1) == b"\x01"
        for seq in (1, 2):  # the second one takes the cached path: same answer
            done = _ask(c, lay.request(seq, block, 1))
            assert done.seq == seq and done.error is None and (done.started, done.ended) == (1.0, 2.0)
            d1, i1 = lay.results(block, 1)
            assert (d1[:, 0] == [0, 4, 8]).all() and (i1[:, 0] == [1, 3, 5]).all()
            assert (lay.results(block, 0)[1] == 0).all()  # the other shard's slots are untouched
        assert len(srv.calls) == 2
        # refusals come back as errors for that request; the link stays up
        bad = [lay.request(3, block, 1), lay.request(4, block, 1), lay.request(5, block, 1),
               lay.request(6, block, 1), lay.request(7, block, 1)]
        bad[0].segment = "../../etc/passwd"
        bad[1].labels = (1 << 16) - 8  # past the end of the segment
        bad[2].queries = 3             # misaligned
        bad[3].d = 5                   # not this index's dimension
        bad[4].nprobe = 9              # more lists than the index has
        for req in bad:
            done = _ask(c, req)
            assert done.seq == req.seq and done.error, req
        assert len(srv.calls) == 2
        assert _ask(c, lay.request(8, block, 0)).error is None  # still serving
        # a frame beyond the bound closes the connection
        c.sendall(struct.pack("!I", 1 << 20))
        assert c.recv(1) == b""
        c.close()
    finally:
        srv.server.close()
        block.discard()
    assert not os.path.exists(srv.server.path)


def test_the_link_wants_the_secret_first() -> None:
    srv = _Server()
    try:
        c = srv.connect(b"x" * SECRET_BYTES)
        assert c.recv(1) == b""  # closed without a word
        c.close()
        c = srv.connect(b"short")
        c.shutdown(socket.SHUT_WR)
        assert c.recv(1) == b""
        c.close()
        assert srv.calls == []
    finally:
        srv.server.close()


# ------------------------------------------------------------------ level 4: node processes
@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(120)
async def test_every_sharding_and_path_gives_the_single_index_answer(search_data, tmp_path) -> None:
    xb, xq, xt, trained = search_data
    single = single_index(trained, xb, 8)
    D0, I0 = single.search(xq, 10)
    async with disto.LocalCluster(nodes=2) as cluster:
        variants = {
            "lists, link": await DistributedIndex.from_trained(cluster, trained, shards=2, nprobe=8, sample=xt),
            "lists, actors": await DistributedIndex.from_trained(cluster, trained, shards=2, nprobe=8, sample=xt,
                                                                 fast_path=False),
            "vectors, link": await DistributedIndex.from_trained(cluster, trained, shards=2, nprobe=8,
                                                                 sharding="vectors"),
        }
        for name, ix in variants.items():
            assert await ix.add(xb) == len(xb)
            for batch in (xq, xq[:1]):
                r = await ix.search(batch, 10)
                n = len(batch)
                same = (r.labels == I0[:n]).all(axis=1) | np.isclose(r.distances, D0[:n], rtol=1e-5).all(axis=1)
                assert same.mean() >= 0.999, name
        # list sharding: each list lives on one shard only
        ivf = variants["lists, link"]
        owner = ivf._owner
        infos = [await reps[0].info() for reps in ivf.shards]
        assert sum(i["ntotal"] for i in infos) == len(xb) and min(i["ntotal"] for i in infos) > 0
        lists = single.quantizer.search(xb, 1)[1][:, 0]
        assert [int((owner[lists] == s).sum()) for s in range(2)] == [i["ntotal"] for i in infos]
        # the fast path is in use where asked for, and not where not
        assert all(t.result() is not None for t in ivf._links.values()) and len(ivf._links) == 2
        assert variants["lists, actors"]._links == {}
        # saved and loaded: same sharding, same owner map, same answers
        before = await ivf.search(xq, 10)
        await ivf.save(str(tmp_path / "ix"))
        loaded = await DistributedIndex.load(cluster, str(tmp_path / "ix"), nprobe=8)
        assert loaded.sharding == "lists" and (loaded._owner == owner).all()
        assert (await loaded.search(xq, 10)).labels.tolist() == before.labels.tolist()
        await loaded.add(xb[:10])  # routed by the saved owner map
        # a save from before list sharding (layout format 1) loads as sharded by vectors
        vec = variants["vectors, link"]
        await vec.save(str(tmp_path / "v1"))
        path = tmp_path / "v1" / "layout.json"
        layout = json.loads(path.read_text())
        layout["format"] = 1
        del layout["sharding"], layout["owner"]
        path.write_text(json.dumps(layout))
        old = await DistributedIndex.load(cluster, str(tmp_path / "v1"), nprobe=8)
        assert old.sharding == "vectors" and await old.ntotal() == len(xb)
        # a layout whose list-to-shard map does not fit the index: refused, and its shards stopped again
        layout = json.loads((tmp_path / "ix" / "layout.json").read_text())
        layout["owner"] = layout["owner"][:-1]
        (tmp_path / "ix" / "layout.json").write_text(json.dumps(layout))
        with pytest.raises(ValueError, match="owner must give a shard for each of the 64 lists"):
            await DistributedIndex.load(cluster, str(tmp_path / "ix"))
        for ix in (*variants.values(), loaded, old):
            await ix.close()
        # a sample of the wrong shape is refused before any shard is started
        with pytest.raises(ValueError, match=r"sample vectors must have shape \(n, 32\)"):
            await DistributedIndex.from_trained(cluster, trained, sample=np.zeros((5, 3), np.float32))
        assert [(await node.stats())["actors"] for node in cluster.nodes] == [[], []]
        with pytest.raises(ValueError, match="sharding"):
            await DistributedIndex.from_trained(cluster, trained, sharding="rows")
        with pytest.raises(ValueError, match="inverted lists"):
            await DistributedIndex.from_trained(cluster, trained, shards=65)
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"disto-{os.getpid()}-search-")]


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(120)
async def test_a_stopped_shard_process_fails_the_search_instead_of_hanging(search_data) -> None:
    xb, xq, xt, trained = search_data
    async with disto.LocalCluster(nodes=2) as cluster:
        ix = await DistributedIndex.from_trained(cluster, trained, shards=2, nprobe=8, sample=xt,
                                                 nodes=cluster.nodes)
        ix.link_check = 0.2
        await ix.add(xb)
        await ix.search(xq, 10)
        pid = (await ix.shards[1][0].info())["pid"]
        os.kill(pid, signal.SIGSTOP)  # alive, socket open, answers nothing
        try:
            with pytest.raises(disto.NodeLostError):
                await asyncio.wait_for(ix.search(xq, 10), 60)
            part = await asyncio.wait_for(ix.search(xq, 10, allow_partial=True), 60)
            assert part.partial and part.missing == (1,)
        finally:
            os.kill(pid, signal.SIGKILL)


@pytest.mark.async_timeout(30)
async def test_a_shard_adds_into_the_lists_it_is_given_and_refuses_bad_ones(search_data) -> None:
    from disto.search import IndexShard

    xb, _, _, trained = search_data
    shard = IndexShard(0, faiss.serialize_index(trained))
    try:
        x, ids = xb[:10], np.arange(100, 110)
        for bad, why in ((np.zeros(9, np.int64), "10 integers"), (np.zeros(10, np.float32), "10 integers"),
                         (np.full(10, 64), r"\[0, 64\)"), (np.full(10, -1), r"\[0, 64\)")):
            with pytest.raises(ValueError, match=why):
                await shard.add(x, ids, bad)
        assert shard.index.ntotal == 0  # nothing half-added
        lists = np.array([3] * 5 + [7] * 5)  # not where the quantizer would put them: the router decides
        assert await shard.add(x, ids, lists) == 10
        invl = shard.ivf.invlists
        assert invl.list_size(3) == 5 and invl.list_size(7) == 5
        assert sorted(faiss.rev_swig_ptr(invl.get_ids(7), 5)) == list(range(105, 110))
    finally:
        shard.on_stop()
