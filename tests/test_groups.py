"""Placement on resources and groups of actors, on real clusters of node processes: spawn by resources,
infeasible requests, waiting for room, release on stop and on node loss, re-placement on restart, and groups
(rank order, fail-first or every outcome, choose, tell, stop, pickling, the GPU environment of each node)."""
from __future__ import annotations

import asyncio
import os
import pickle
import signal

import pytest

import disto
from actors import Member, Worker
from helpers import NODE_ENV as ENV
from helpers import eventually, named_elsewhere


async def free_of(cluster: disto.Cluster, name: str) -> dict[str, float]:
    """address -> what is free of ``name`` there."""
    return {r["address"]: r["free"].get(name, 0.0) for r in await cluster.resources()}


@pytest.mark.loops("uvloop")
async def test_spawn_by_resources_holds_them_until_the_actor_stops() -> None:
    async with disto.LocalCluster(nodes=2, env=ENV, resources=[{"gpu": 2}, {"gpu": 1, "ps": 1}]) as cluster:
        a, b = cluster.nodes
        report = {r["address"]: r for r in await cluster.resources()}
        assert report[b.address]["total"]["ps"] == 1 and report[a.address]["total"]["gpu"] == 2
        assert report[a.address]["total"]["cpu"] >= 1  # detected, alongside what was declared

        server = await cluster.spawn(Worker, resources={"ps": 1})
        assert server.node_address == b.address  # the only node with the label
        gpus = [await cluster.spawn(Worker, resources={"gpu": 1}) for _ in range(3)]
        assert sorted(r.node_address for r in gpus) == sorted([a.address, a.address, b.address])
        assert await free_of(cluster, "gpu") == {a.address: 0.0, b.address: 0.0}

        with pytest.raises(disto.PlacementError) as info:
            await cluster.spawn(Worker, resources={"gpu": 1})
        e = info.value
        assert isinstance(e, disto.DistoError) and e.requested == [{"gpu": 1.0}] and e.strategy == "spread"
        assert e.free[a.address]["gpu"] == 0 and "not enough free now" in str(e) and a.address in str(e)
        with pytest.raises(disto.PlacementError, match="no node has 'tpu'"):
            await cluster.spawn(Worker, resources={"tpu": 1})
        with pytest.raises(ValueError, match=">= 0"):
            cluster.spawn(Worker, resources={"gpu": -1})  # refused here, before any round trip
        with pytest.raises(ValueError, match="strategy"):
            cluster.spawn(Worker, resources={"gpu": 1}, strategy="fast")

        assert await cluster.stop(gpus[0])  # stopped: its GPU is free again
        await eventually(lambda: _has(cluster, gpus[0].node_address, "gpu", 1.0), what="the GPU to be released")
        again = await cluster.spawn(Worker, resources={"gpu": 1})
        assert again.node_address == gpus[0].node_address
        assert await again.add(2) == 2

        # on a given node: only if that node has room
        with pytest.raises(disto.PlacementError):
            await b.spawn(Worker, resources={"ps": 1})
        assert (await a.spawn(Worker, resources={"cpu": 1})).node_address == a.address

        kinds = [ev["kind"] for ev in await cluster.node.registry.timeline()]
        assert "placed" in kinds and "unplaceable" in kinds


async def _has(cluster: disto.Cluster, address: str, name: str, amount: float) -> bool:
    return (await free_of(cluster, name)).get(address) == amount


@pytest.mark.loops("uvloop")
async def test_a_placement_timeout_waits_for_room() -> None:
    async with disto.LocalCluster(nodes=1, env=ENV, resources={"gpu": 1}) as cluster:
        first = await cluster.spawn(Worker, resources={"gpu": 1})
        waiting = cluster.spawn(Worker, resources={"gpu": 1}, placement_timeout=30)
        await eventually(lambda: _waiting(cluster), what="the second spawn to wait for room")
        assert not waiting.done()
        await cluster.stop(first)
        second = await waiting  # placed as soon as the room was given back
        assert second.node_address == first.node_address
        with pytest.raises(disto.PlacementError, match="waited 0.2 s"):
            await cluster.spawn(Worker, resources={"gpu": 1}, placement_timeout=0.2)


async def _waiting(cluster: disto.Cluster) -> bool:
    waiting = await cluster.node.registry.waiting()
    return bool(waiting) and waiting[0]["what"] == "Worker" and "not enough free" in waiting[0]["reason"]


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(90)
async def test_a_lost_node_gives_back_what_it_held_and_restarts_are_placed_by_the_same_request() -> None:
    async with disto.LocalCluster(nodes=3, env=ENV, resources=[{}, {"ps": 1}, {"ps": 1}]) as cluster:
        _, b, c = cluster.nodes
        ref = await b.spawn(Worker, name="center", max_restarts=2, resources={"ps": 1})
        other = await c.spawn(Worker, resources={"ps": 1})
        assert await free_of(cluster, "ps") == {cluster.nodes[0].address: 0.0, b.address: 0.0, c.address: 0.0}
        await cluster.stop(other)  # room on c for the restart

        os.kill(b.pid, signal.SIGKILL)

        new = await eventually(lambda: named_elsewhere(cluster, "center", ref), timeout=15,
                               what="the supervised actor to be placed again")
        # and the restart is complete (the seed has its answer): only then is the new actor supervised
        await eventually(lambda: _restarted(cluster), timeout=15, what="the restart to be done")
        assert new.node_address == c.address  # the only other node with ps=1, not node 0
        assert await new.add(1) == 1
        report = {r["address"]: r for r in await cluster.resources()}
        assert b.address not in report  # the lost node and what it held are gone
        assert report[c.address]["free"]["ps"] == 0 and report[c.address]["held"] == 1

        os.kill(c.pid, signal.SIGKILL)  # no node with ps=1 is left: the restart fails, saying why

        async def failed() -> list:
            return [ev for ev in await cluster.node.registry.timeline() if ev["kind"] == "restart_failed"]

        [event] = await eventually(failed, timeout=15, what="the restart to fail for want of room")
        assert "no node has 'ps'" in event["detail"], await cluster.node.registry.timeline()


async def _restarted(cluster: disto.Cluster) -> bool:
    return any("node" in r for r in await cluster.node.registry.restart_log())


@pytest.mark.loops("uvloop")
async def test_a_group_in_rank_order_with_its_rank_and_group_before_it_starts() -> None:
    async with disto.LocalCluster(nodes=2, env=ENV, resources={"gpu": 2}) as cluster:
        group = await cluster.spawn_group(Member, 4, "t", resources={"gpu": 1})
        assert isinstance(group, disto.ActorGroup) and len(group) == 4
        assert all(isinstance(r, disto.ActorRef) for r in group) and group[2] == list(group)[2]
        seen = await group.seen()
        assert [s["init"] for s in seen] == [(i, 4) for i in range(4)]  # rank and group set before __init__
        assert [s["start"] for s in seen] == [(i, [r.actor_id for r in group]) for i in range(4)]
        assert all(s["tag"] == "t" for s in seen)
        nodes = [s["address"] for s in seen]
        assert nodes.count(cluster.nodes[0].address) == 2 and nodes.count(cluster.nodes[1].address) == 2  # spread
        assert await group.echo("x") == [(i, "x") for i in range(4)]
        assert await free_of(cluster, "gpu") == {h.address: 0.0 for h in cluster.nodes}

        # the first error fails the call; with return_exceptions every outcome comes back
        with pytest.raises(KeyError):
            await group.fail_on(2)
        outcomes = await group.fail_on(2, return_exceptions=True)
        assert outcomes[:2] == [0, 1] and isinstance(outcomes[2], KeyError) and outcomes[3] == 3

        # one-way to all, then a call behind it
        await group.note.tell("hi")
        assert await group.noted() == [["hi"]] * 4
        assert await group["stop"]() == [f"member {i} asked to stop" for i in range(4)]  # the member's method

        # a group pickles like a ref: an actor calls it, and a member calls its own group, from the loop and
        # from its thread
        outsider = await cluster.spawn(Member)
        assert await outsider.call_group(group, 7) == [(i, 7) for i in range(4)]
        assert await group[1].ask_peers(8) == [(i, 8) for i in range(4)]
        assert await group[3].ask_peers_sync(9) == [(i, 9) for i in range(4)]
        assert pickle.loads(pickle.dumps(group)) == group

        assert await group.stop() == [True] * 4
        assert await free_of(cluster, "gpu") == {h.address: 2.0 for h in cluster.nodes}
        with pytest.raises(disto.ActorDeadError):
            await group.echo(1)


@pytest.mark.loops("uvloop")
async def test_choose_picks_the_least_loaded_member() -> None:
    async with disto.LocalCluster(nodes=1, env=ENV) as cluster:
        group = await cluster.spawn_group(Member, 2)
        held = group.hold.choose()  # one member is now busy with this call
        picks = [(await group.echo.choose(i))[0] for i in range(4)]
        assert len(set(picks)) == 1  # every other call went to the idle member
        await group.release.tell()
        assert await held != picks[0]


@pytest.mark.loops("uvloop")
async def test_spread_and_pack_and_a_group_that_does_not_fit() -> None:
    async with disto.LocalCluster(nodes=3, env=ENV, resources={"slot": 4}) as cluster:
        addresses = [h.address for h in cluster.nodes]
        spread = await cluster.spawn_group(Member, 3, resources={"slot": 1})
        assert sorted(r.node_address for r in spread) == sorted(addresses)
        packed = await cluster.spawn_group(Member, 3, resources={"slot": 1}, strategy="pack")
        assert len({r.node_address for r in packed}) == 1
        with pytest.raises(disto.PlacementError, match="7 x slot=1") as info:
            await cluster.spawn_group(Member, 7, resources={"slot": 1})  # 6 are free: none is placed
        assert sum(f["slot"] for f in info.value.free.values()) == 6
        assert sum((await free_of(cluster, "slot")).values()) == 6
        with pytest.raises(ValueError, match="n >= 1"):
            await cluster.spawn_group(Member, 0)


@pytest.mark.loops("uvloop")
async def test_a_member_that_fails_to_start_undoes_the_group() -> None:
    async with disto.LocalCluster(nodes=2, env=ENV, resources={"gpu": 2}) as cluster:
        with pytest.raises(ValueError, match="rank 2 refuses to start") as info:
            await cluster.spawn_group(Member, 4, fail_rank=2, resources={"gpu": 1})
        assert any("member 2 of a group of 4" in n for n in getattr(info.value, "__notes__", []))
        await eventually(lambda: _all_free(cluster), what="every GPU to be given back")
        rows = await cluster.actors()
        assert not [r for r in rows if r["class"] == "Member"]


async def _all_free(cluster: disto.Cluster) -> bool:
    return all(v == 2.0 for v in (await free_of(cluster, "gpu")).values())


@pytest.mark.loops("uvloop")
async def test_a_group_of_actors_in_processes_of_their_own() -> None:
    async with disto.LocalCluster(nodes=2, env=ENV, resources={"gpu": 1}) as cluster:
        group = await cluster.spawn_group(Member, 2, resources={"gpu": 1}, process=True)
        seen = await group.seen()
        pids = {s["pid"] for s in seen}
        assert len(pids) == 2 and not pids & {h.pid for h in cluster.nodes}
        assert [s["init"] for s in seen] == [(0, 2), (1, 2)]
        assert await free_of(cluster, "gpu") == {h.address: 0.0 for h in cluster.nodes}
        await group.stop()
        await eventually(lambda: _gpus_back(cluster), what="the processes' GPUs to be given back")


async def _gpus_back(cluster: disto.Cluster) -> bool:
    return all(v == 1.0 for v in (await free_of(cluster, "gpu")).values())


@pytest.mark.loops("uvloop")
async def test_gpus_per_node_gives_each_node_its_own_gpus(monkeypatch) -> None:
    # no GPU here: the devices are declared through CUDA_VISIBLE_DEVICES, as a GPU host's driver would list them
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    async with disto.LocalCluster(gpus_per_node=1, env=ENV) as cluster:
        assert len(cluster.nodes) == 2
        assert [r["total"]["gpu"] for r in await cluster.resources()] == [1.0, 1.0]
        group = await cluster.spawn_group(Member, 2, resources={"gpu": 1})
        assert sorted(s["gpus"] for s in await group.seen()) == ["0", "1"]


@pytest.mark.loops("uvloop")
async def test_a_restarted_group_member_keeps_its_rank_and_the_group_learns_it() -> None:
    async with disto.LocalCluster(nodes=3, env=ENV, resources=[{}, {"gpu": 1}, {"gpu": 1}]) as cluster:
        group = await cluster.spawn_group(Member, 1, resources={"gpu": 1}, max_restarts=1)
        old = group[0]
        victim = next(h for h in cluster.nodes if h.address == old.node_address)
        os.kill(victim.pid, signal.SIGKILL)

        async def replaced() -> bool:
            await group.refresh()
            return group[0] != old

        await eventually(replaced, timeout=15, what="the member to be restarted and the group to learn it")
        assert group[0].node_address not in (old.node_address, cluster.nodes[0].address)
        [seen] = await group.seen()
        assert seen["init"][0] == 0  # the same rank
        await asyncio.wait_for(group.stop(), 10)
