"""Distributed IVF search: sharded results equal a single index, save/load, replicas, lost shards, the Thrift
service. Needs Faiss (in the test extra)."""
from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

import disto  # noqa: E402
from disto.search import DistributedIndex, SearchService, ground_truth, one_recall_at  # noqa: E402
from disto.search._faiss import as_ids, as_matrix  # noqa: E402
from disto.search.index import _placement  # noqa: E402
from disto.search._idl import IDL_PATH  # noqa: E402
from helpers import TOKEN  # noqa: E402

D = 32  # the dimension of the conftest `search_data` set (IVF64,PQ8)


def single_index(trained: object, xb: np.ndarray, nprobe: int, ids: np.ndarray | None = None) -> object:
    ix = faiss.deserialize_index(faiss.serialize_index(trained))
    if ids is None:
        ix.add(xb)
    else:
        ix.add_with_ids(xb, ids)
    ix.nprobe = nprobe
    return ix


# ------------------------------------------------------------------ level 1: no event loop
def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        as_matrix(np.zeros((3, 5), np.float32), 4)
    with pytest.raises(ValueError, match="NaN"):
        as_matrix(np.full((2, 4), np.nan, np.float32), 4)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        as_matrix([[1, 2, 3, 4]], 4)
    assert as_matrix(np.ones(4, np.float64), 4).shape == (1, 4)
    with pytest.raises(ValueError, match=">= 0"):
        as_ids(np.array([1, -1]), 2)
    with pytest.raises(TypeError, match="integers"):
        as_ids(np.array([1.0, 2.0]), 2)
    torch = pytest.importorskip("torch")
    assert as_matrix(torch.ones(3, 4), 4).dtype == np.float32


def test_replicas_of_a_shard_land_on_distinct_nodes() -> None:
    for nodes in (2, 3, 4):
        for shards in (1, 2, 3, 5):
            for replicas in range(1, nodes + 1):
                placed = [_placement(s, r, replicas, nodes) for s in range(shards) for r in range(replicas)]
                for s in range(shards):
                    mine = placed[s * replicas:(s + 1) * replicas]
                    assert len(set(mine)) == replicas


def test_a_shard_refuses_what_it_cannot_search(tmp_path) -> None:
    from disto.search import IndexShard

    with pytest.raises(TypeError, match="plain Faiss IndexIVF"):
        IndexShard(0, faiss.serialize_index(faiss.IndexFlatL2(4)))
    with pytest.raises(FileNotFoundError, match="no index file"):
        IndexShard(0, path=str(tmp_path / "missing.faissindex"))
    with pytest.raises(ValueError, match="not both or neither"):
        IndexShard(0)


def test_only_plain_ivf_indexes_are_accepted(search_data) -> None:
    with pytest.raises(ValueError, match="plain IVF"):
        DistributedIndex.train("PCA16,IVF16,Flat", search_data[2])
    with pytest.raises(ValueError, match="metric"):
        DistributedIndex.train("IVF16,Flat", search_data[2], metric="cosine")


# ------------------------------------------------------------------ level 4: node processes
@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(120)
async def test_sharded_results_equal_the_single_index(search_data, tmp_path) -> None:
    xb, xq, _, trained = search_data
    async with disto.LocalCluster(nodes=2) as cluster:
        ix = await DistributedIndex.from_trained(cluster, trained, shards=3, replicas=2, nprobe=8)
        assert await ix.add(xb[:12_000]) == 12_000
        torch = pytest.importorskip("torch")
        assert await ix.add(torch.from_numpy(xb[12_000:]), ids=np.arange(12_000, len(xb))) == len(xb)
        for nprobe, k in ((8, 10), (1, 5), (64, 20)):
            single = single_index(trained, xb, nprobe)
            D0, I0 = single.search(xq, k)
            # replicas serve in turn: ask twice so that both replicas of every shard answer
            for _ in range(2):
                r = await ix.search(xq, k=k, nprobe=nprobe)
                assert r.labels.shape == (len(xq), k) and not r.partial
                same = (r.labels == I0).all(axis=1) | np.isclose(r.distances, D0, rtol=1e-5).all(axis=1)
                assert same.mean() >= 0.999
        # batch of one, per-call k, and the timing breakdown
        r1 = await ix.search(xq[0], k=3, nprobe=8)
        assert r1.labels.shape == (1, 3) and set(r1.timing) >= {"coarse", "fanout", "shard", "merge"}
        gt = ground_truth(xb, xq, 10)
        assert one_recall_at(r.labels, gt, 10) > 0.5
        with pytest.raises(ValueError, match="nprobe"):
            await ix.search(xq, 10, nprobe=65)
        with pytest.raises(ValueError, match="k must be"):
            await ix.search(xq, 0)
        with pytest.raises(ValueError, match="k must be"):
            await ix.search(xq, True)
        # numpy integers are ints too
        rn = await ix.search(xq[:5], k=np.int64(3), nprobe=np.int32(8))
        assert rn.labels.shape == (5, 3)
        with pytest.raises(ValueError, match="shape"):
            await ix.search(np.zeros((2, D + 1), np.float32))

        # save, stop the shards, load into new actors: same answers without adding again
        before = await ix.search(xq, 10, 8)
        await ix.save(str(tmp_path / "ix"))
        await ix.close()
        loaded = await DistributedIndex.load(cluster, str(tmp_path / "ix"), nprobe=8)
        assert await loaded.ntotal() == len(xb) and len(loaded.shards) == 3
        after = await loaded.search(xq, 10)
        assert (after.labels == before.labels).all()
        assert await loaded.add(xb[:10]) == len(xb) + 10  # ids continue after the saved ones
        await loaded.close()


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(60)
async def test_load_refuses_incomplete_or_mismatched_saves(search_data, tmp_path) -> None:
    xb, _, _, trained = search_data
    async with disto.LocalCluster(nodes=1) as cluster:
        with pytest.raises(FileNotFoundError, match="layout.json"):
            await DistributedIndex.load(cluster, str(tmp_path / "nothing"))
        ix = await DistributedIndex.from_trained(cluster, trained, shards=2)
        await ix.add(xb[:1000])
        await ix.save(str(tmp_path / "a"))
        await ix.add(xb[1000:2000])
        await ix.save(str(tmp_path / "b"))
        await ix.close()
        # a shard file from another save: the layout's counts catch it
        os.replace(tmp_path / "b" / "shard-001.faissindex", tmp_path / "a" / "shard-001.faissindex")
        with pytest.raises(ValueError, match="the layout says"):
            await DistributedIndex.load(cluster, str(tmp_path / "a"))
        # a missing shard file: the shards that did start are stopped again, none is left behind
        os.remove(tmp_path / "a" / "shard-001.faissindex")
        with pytest.raises(FileNotFoundError, match="shard 1"):
            await DistributedIndex.load(cluster, str(tmp_path / "a"))
        assert (await cluster.nodes[0].stats())["actors"] == []


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(90)
async def test_lost_shard_fails_fast_or_gives_a_flagged_partial_result(search_data) -> None:
    xb, xq, _, trained = search_data
    async with disto.LocalCluster(nodes=3) as cluster:
        # shards 0 and 1 on nodes 0 and 1, each with a replica on the next node; shard 2 alone on node 2
        ix = await DistributedIndex.from_trained(cluster, trained, shards=2, replicas=2, nprobe=8,
                                                 nodes=cluster.nodes[:2])
        solo = await DistributedIndex.from_trained(cluster, trained, shards=2, nprobe=8, nodes=cluster.nodes[1:])
        await ix.add(xb)
        await solo.add(xb)
        full = await ix.search(xq, 10)
        block_before = ix._blocks.free[0]
        os.kill(cluster.nodes[1].pid, signal.SIGKILL)
        # replicated: every shard still has a live replica, so answers stay complete and identical
        for _ in range(3):
            r = await asyncio.wait_for(ix.search(xq, 10), 10)
            assert not r.partial and (r.labels == full.labels).all()
        # the batch block of the search that gave up on a replica was not reused (a frozen one could still write)
        assert block_before not in ix._blocks.free and not os.path.exists(block_before.path)
        # unreplicated: shard 0 of `solo` lived on node 1
        with pytest.raises(disto.NodeLostError, match="shard 0"):
            await asyncio.wait_for(solo.search(xq, 10), 10)
        part = await asyncio.wait_for(solo.search(xq, 10, allow_partial=True), 10)
        assert part.partial and part.missing == (0,)
        # the partial answer is exactly the single index's answer over what the surviving shard holds: the
        # vectors of the lists that shard 1 owns
        _, lists = faiss.extract_index_ivf(trained).quantizer.search(xb, 1)
        held = np.flatnonzero(solo._owner[lists[:, 0]] == 1)
        assert 0 < len(held) < len(xb) and (await solo.shards[1][0].info())["ntotal"] == len(held)
        _, expect = single_index(trained, xb[held], 8, ids=held).search(xq, 10)
        assert (part.labels == expect).mean() >= 0.999
        assert np.isin(part.labels[part.labels >= 0], held).all()


# ------------------------------------------------------------------ the Thrift service
def _thrift_client(address: str) -> object:
    import thriftpy2
    from thriftpy2.protocol import TBinaryProtocolFactory
    from thriftpy2.rpc import make_client
    from thriftpy2.transport import TFramedTransportFactory

    svc = thriftpy2.load(IDL_PATH, module_name="search_client_thrift")
    host, port = address.rsplit(":", 1)
    return svc, make_client(svc.Search, host, int(port), proto_factory=TBinaryProtocolFactory(),
                            trans_factory=TFramedTransportFactory(), timeout=20_000)


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(90)
async def test_thrift_service_serves_any_client_and_refuses_strangers(search_data) -> None:
    xb, xq, _, trained = search_data
    async with disto.LocalCluster(nodes=1) as cluster:
        ix = await DistributedIndex.from_trained(cluster, trained, shards=2, nprobe=8)
        await ix.add(xb)
        want = await ix.search(xq[:50], 7, 8)
        async with SearchService(ix, TOKEN) as svc:
            def client_side() -> dict:
                svc_mod, client = _thrift_client(svc.address)
                out: dict = {"info": client.info(TOKEN)}
                res = client.search(TOKEN, xq[:50].astype("<f4").tobytes(), 7, 8, False)
                out["labels"] = np.frombuffer(res.labels, "<i8").reshape(res.n, res.k)
                out["distances"] = np.frombuffer(res.distances, "<f4").reshape(res.n, res.k)
                for bad, match in (("wrong-token-0123456789", "authentication"), (TOKEN, "float32")):
                    with pytest.raises(svc_mod.SearchError, match=match):
                        client.search(bad, b"\x00" * 12, 7, 8, False)
                with pytest.raises(svc_mod.SearchError, match="nprobe"):
                    client.search(TOKEN, xq[:1].tobytes(), 7, 0, False)
                client.close()
                return out

            out = await asyncio.to_thread(client_side)
            assert out["info"].d == D and out["info"].ntotal == len(xb) and out["info"].shards == 2
            assert (out["labels"] == want.labels).all()
            np.testing.assert_allclose(out["distances"], want.distances, rtol=1e-6)

            # hostile bytes: garbage, a frame announcing 2 GiB, half a frame; each closes only its connection
            host, port = svc.address.rsplit(":", 1)
            svc.request_timeout = 0.2  # a half-sent request is dropped once this is up
            for junk in (os.urandom(64), struct.pack("!i", 2 ** 31 - 1) + b"x" * 16, b"\x00\x00\x01\x00abc"):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(junk)
                await writer.drain()
                got = await asyncio.wait_for(reader.read(), 5)
                assert got == b""
                writer.close()
            svc.request_timeout = 30.0
            still = await asyncio.to_thread(lambda: _thrift_client(svc.address)[1].info(TOKEN))
            assert still.ntotal == len(xb)
        await ix.close()


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(90)
async def test_search_client_example_runs_without_disto(search_data, tmp_path) -> None:
    xb, _, _, trained = search_data
    client = os.path.join(os.path.dirname(__file__), "..", "examples", "search", "client.py")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    async with disto.LocalCluster(nodes=1) as cluster:
        ix = await DistributedIndex.from_trained(cluster, trained, shards=1, nprobe=4)
        await ix.add(xb[:2000])
        async with SearchService(ix, TOKEN) as svc:
            port = svc.address.rsplit(":", 1)[1]
            # importing disto in the client process would raise: the example must do without it
            code = ("import sys, runpy; sys.modules['disto'] = None; "
                    f"sys.argv = ['client.py', '--port', '{port}', '--token-file', '{token_file}', '--nprobe', '4']; "
                    f"runpy.run_path({client!r}, run_name='__main__')")
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        await ix.close()
    text = out.decode()
    assert proc.returncode == 0, text
    assert "2000 vectors" in text and "a wrong token is refused: authentication failed" in text
