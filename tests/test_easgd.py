"""EA-SGD: the update rules, the actors, and short real runs on small data (CI-sized)."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

import disto
from disto.easgd import (CenterShard, EASGDConfig, Trainer, Worker, center_step_, elastic_step_, flatten_,
                         shard_bounds, simulate)
from helpers import eventually, nodes, spawn


def blobs(n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian blobs in 8 dimensions: learnable in seconds."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 8, generator=g) * 3
    y = torch.randint(0, 4, (n,), generator=g)
    return centers[y] + torch.randn(n, 8, generator=g), y


def small_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def blob_data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    return blobs(2000, seed=0)


def test_one_exchange_moves_worker_and_center_by_alpha_times_the_gap() -> None:
    # on a quadratic's parameters: x and c are just vectors; the exchange must be exact
    x = torch.tensor([4.0, -2.0, 10.0])
    c = torch.tensor([1.0, 1.0, 0.0])
    gap = x - c
    alpha = 0.45
    d = elastic_step_(x, c, alpha)
    center_step_(c, d)
    assert torch.allclose(d, alpha * gap)
    assert torch.allclose(x, torch.tensor([4.0, -2.0, 10.0]) - alpha * gap)
    assert torch.allclose(c, torch.tensor([1.0, 1.0, 0.0]) + alpha * gap)
    # the sum x + c is conserved (the elastic force is symmetric)
    assert torch.allclose(x + c, torch.tensor([5.0, -1.0, 10.0]))


def test_config_checks_and_alpha() -> None:
    assert EASGDConfig(workers=4, beta=0.9).alpha == pytest.approx(0.225)
    with pytest.raises(ValueError):
        EASGDConfig(algorithm="adam")
    with pytest.raises(ValueError):
        EASGDConfig(tau=10, prefetch=10)
    with pytest.raises(ValueError):
        EASGDConfig(algorithm="msgd", workers=2)


def test_flatten_makes_parameters_views_of_one_vector() -> None:
    m = small_model()
    flat = flatten_(m)
    assert flat.numel() == sum(p.numel() for p in m.parameters())
    flat.zero_()
    assert all(float(p.detach().abs().sum()) == 0 for p in m.parameters())
    assert shard_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)] and shard_bounds(2, 5) == [(0, 1), (1, 2)]


async def test_shard_applies_pushes_exactly() -> None:
    async with nodes(2) as (a, b):
        shard = await spawn(a, b, CenterShard, torch.zeros(5))
        d = torch.arange(5, dtype=torch.float32)
        assert await shard.push(d) == 1 and await shard.push(d) == 2
        assert torch.equal(await shard.fetch(), 2 * d)


async def test_worker_respects_tau_and_prefetch() -> None:
    cfg = EASGDConfig(workers=2, tau=10, prefetch=5, shards=2, batch_size=16)
    async with nodes(2) as (a, b):
        torch.manual_seed(cfg.seed)
        flat = flatten_(small_model()).clone()
        bounds = shard_bounds(flat.numel(), cfg.shards)
        shards = [await spawn(a, b, CenterShard, flat[s:e]) for s, e in bounds]
        w = await spawn(a, b, Worker, 0, cfg, small_model, blob_data, torch.nn.functional.cross_entropy, shards,
                        bounds)
        stats = await w.run(100)
        # exchanges at steps 10, 20, ..., 90; each fetched 5 steps ahead, each one push per shard
        assert stats["steps"] == 100 and stats["exchanges"] == 9
        assert stats["fetches"] == 9 and stats["pushes"] == 9
        assert [await s.get_version() for s in shards] == [9, 9]


async def test_short_run_improves_the_center() -> None:
    x_test, y_test = blobs(1000, seed=1)
    async with nodes(2) as (a, b):
        cluster = disto.Cluster(a)
        await cluster.refresh()
        cfg = EASGDConfig(workers=2, tau=5, prefetch=2, lr=0.05, batch_size=32, eval_interval=0.3)
        trainer = Trainer(cluster, cfg, small_model, blob_data, (x_test, y_test))
        from disto.easgd import accuracy

        before = accuracy(small_model, trainer.center0, x_test, y_test)
        history = await trainer.run(seconds=20, target=0.85)
        assert history.best >= 0.85 and history.best > before + 0.3
        assert all(w["exchanges"] > 0 for w in history.workers)
        assert history.evals and history.evals[-1]["samples"] > 0


async def _strided_run(monkeypatch, **cfg_extra: Any) -> tuple[list[int], int, Any, list[float]]:
    """A run whose center's snapshot k is recognisable (its first value is k) and whose "accuracy" crosses the
    target at snapshot 4, falls back at 5, 6 and 7, and stays above it from 8 on (a noisy curve): which snapshots
    were evaluated, in which order, how many were taken, the history and what on_eval saw."""
    import disto.easgd.trainer as trainer_module

    x_test, y_test = blobs(200, seed=1)
    evaluated: list[int] = []

    def fake_accuracy(model_fn, center, x, y, model=None) -> float:
        evaluated.append(int(center[0]))
        return 1.0 if center[0] == 4 or center[0] >= 8 else 0.0

    monkeypatch.setattr(trainer_module, "accuracy", fake_accuracy)
    async with nodes(2) as (a, b):
        cluster = disto.Cluster(a)
        await cluster.refresh()
        cfg = EASGDConfig(workers=2, tau=5, prefetch=2, lr=0.05, batch_size=32, eval_interval=0.05, eval_stride=3,
                          **cfg_extra)
        trainer = Trainer(cluster, cfg, small_model, blob_data, (x_test, y_test))
        snapshots = 0

        async def center() -> torch.Tensor:
            nonlocal snapshots
            snapshots += 1
            return torch.full((4,), float(snapshots))

        trainer.center = center  # type: ignore[method-assign]
        seen: list[float] = []
        history = await trainer.run(seconds=60, target=0.5, on_eval=lambda e: seen.append(e["accuracy"]))
    times = [e["time"] for e in history.evals]
    assert times == sorted(times) and all(e["samples"] >= 0 and "loadavg" in e for e in history.evals)
    return evaluated, snapshots, history, seen


async def test_evaluating_every_nth_snapshot_keeps_the_time_to_target_exact(monkeypatch) -> None:
    # with eval_stride 3 the training evaluates snapshots 3, 6 and 9, stops at 9, and only then evaluates the
    # skipped 1, 2, 4, 5, 7 and 8, so time_to(target) is snapshot 4's time, as if every snapshot had been evaluated
    with pytest.raises(ValueError):
        EASGDConfig(eval_stride=0)
    with pytest.raises(ValueError):
        EASGDConfig(eval_keep_bytes=-1)
    evaluated, snapshots, history, seen = await _strided_run(monkeypatch)
    assert evaluated == [3, 6, 9, 1, 2, 4, 5, 7, 8] and snapshots == 9
    assert [e["accuracy"] for e in history.evals] == [0, 0, 0, 1, 0, 0, 0, 1, 1]
    assert seen == [0, 0, 0, 0, 1, 0, 0, 1, 1]  # on_eval: as evaluated while training, then in time order
    assert history.time_to(0.5) == history.evals[3]["time"]  # snapshot 4


async def test_skipped_snapshots_beyond_the_memory_bound_are_evaluated_oldest_first_while_training(
        monkeypatch) -> None:
    # room for two skipped snapshots (16 bytes each): the third pushes the oldest out to be evaluated at once; the
    # run then stops at snapshot 4 (the first to cross) as soon as it is evaluated, after evaluating 5 and 7
    evaluated, snapshots, history, seen = await _strided_run(monkeypatch, eval_keep_bytes=32)
    assert evaluated == [3, 1, 2, 6, 4, 5, 7] and snapshots == 7
    assert [e["accuracy"] for e in history.evals] == [0, 0, 0, 1, 0, 0, 0]
    assert history.time_to(0.5) == history.evals[3]["time"]  # snapshot 4, exact as before


def test_virtual_time_runs_the_real_update_code() -> None:
    from disto.easgd import LocalLearner

    x, y = blobs(2000, seed=0)
    xt, yt = blobs(500, seed=1)
    cfg = EASGDConfig(algorithm="msgd", workers=1, tau=1)
    sim = simulate(cfg, small_model, x, y, xt, yt, rounds=200, eval_every=1000)
    learner = LocalLearner(small_model, x, y, torch.nn.functional.cross_entropy, cfg, seed=0)
    for _ in range(200):
        learner.step()
    assert torch.equal(sim["center"], learner.flat)  # bit for bit the same steps


def test_virtual_time_eamsgd_learns_with_many_workers() -> None:
    x, y = blobs(2000, seed=0)
    xt, yt = blobs(500, seed=1)
    res = simulate(EASGDConfig(algorithm="eamsgd", workers=8, tau=5), small_model, x, y, xt, yt, rounds=400,
                   eval_every=20, target=0.85)
    assert res["rounds_to_target"] is not None and res["workers"] == 8


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(90)
async def test_a_killed_worker_does_not_stop_training_and_is_respawned_from_the_center() -> None:
    import os
    import signal

    import cloudpickle

    import test_easgd

    cloudpickle.register_pickle_by_value(test_easgd)  # the node processes cannot import this test module
    x_test, y_test = blobs(1000, seed=1)
    async with disto.LocalCluster(nodes=3) as cluster:
        cfg = EASGDConfig(workers=2, shards=1, tau=5, prefetch=2, lr=0.02, eval_interval=0.3)
        trainer = Trainer(cluster, cfg, small_model, blob_data, (x_test, y_test))
        evals = []

        def kill_at_the_second_evaluation(entry: dict) -> None:
            # triggered by training progress, not by a sleep; the run then has ~9 s left for the respawn
            # (a new node process builds its model) and for the evaluations that follow it
            evals.append(entry)
            if len(evals) == 2:
                # spread placement: the shard on one node, the two workers on the other two
                where = trainer.workers[1].node_address
                assert where != trainer.shards[0].node_address
                os.kill(next(h.pid for h in cluster.nodes if h.address == where), signal.SIGKILL)

        history = await trainer.run(seconds=10, on_eval=kill_at_the_second_evaluation)
    assert [e["worker"] for e in history.events] == [1] and history.events[0].get("respawned")
    assert "NodeLostError" in history.events[0]["error"]
    # training went on: evaluations kept coming after the kill, and the center kept its quality
    after = [e for e in history.evals if e["time"] > history.events[0]["time"]]
    assert len(after) >= 3 and max(e["accuracy"] for e in after) >= 0.7
    assert after[-1]["samples"] > after[0]["samples"]


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(90)
async def test_the_trainer_places_workers_and_shards_by_what_they_need() -> None:
    import cloudpickle

    import test_easgd

    cloudpickle.register_pickle_by_value(test_easgd)
    x_test, y_test = blobs(500, seed=1)
    # the 2016 layout in small: a CPU-only parameter server labelled ps, two nodes with a GPU each
    async with disto.LocalCluster(nodes=3, resources=[{"ps": 1}, {"gpu": 1}, {"gpu": 1}]) as cluster:
        cfg = EASGDConfig(workers=2, shards=1, tau=5, prefetch=2, lr=0.05, eval_interval=0.3,
                          worker_resources={"gpu": 1}, shard_resources={"ps": 1})
        trainer = Trainer(cluster, cfg, small_model, blob_data, (x_test, y_test))
        placed: dict = {}

        def note(entry: dict) -> None:
            placed.setdefault("shards", [r.node_address for r in trainer.shards])
            placed.setdefault("workers", sorted(r.node_address for r in trainer.workers.values()))

        history = await trainer.run(seconds=20, max_steps=30, on_eval=note)
        assert placed["shards"] == [cluster.nodes[0].address]
        assert placed["workers"] == sorted(h.address for h in cluster.nodes[1:])
        assert len(history.workers) == 2 and all(w["steps"] == 30 for w in history.workers)

        async def given_back() -> bool:  # the stopped actors' holds (told to the seed by their nodes)
            free = {r["address"]: r["free"] for r in await cluster.resources()}
            return free[cluster.nodes[0].address]["ps"] == 1 and free[cluster.nodes[1].address]["gpu"] == 1
        await eventually(given_back, what="the trainer's actors to give back what they held")
        with pytest.raises(ValueError, match="spread"):
            EASGDConfig(algorithm="allreduce", worker_strategy="pack")


@pytest.mark.parametrize("algorithm", ["sync_easgd", "local_sgd"])
async def test_synchronous_rounds_meet_at_the_shards(algorithm: str) -> None:
    cfg = EASGDConfig(algorithm=algorithm, workers=2, tau=5, shards=2, batch_size=16)
    async with nodes(3) as (a, b, c):
        torch.manual_seed(cfg.seed)
        flat = flatten_(small_model()).clone()
        bounds = shard_bounds(flat.numel(), cfg.shards)
        shards = [await spawn(a, b, CenterShard, flat[s:e]) for s, e in bounds]
        workers = [await spawn(a, n, Worker, r, cfg, small_model, blob_data, torch.nn.functional.cross_entropy,
                               shards, bounds) for r, n in enumerate((b, c))]
        stats = await disto.collect(w.run(50) for w in workers)
        assert [s["exchanges"] for s in stats] == [9, 9]
        assert [await s.get_version() for s in shards] == [9, 9]  # one round per exchange, both workers in it
        if algorithm == "local_sgd":
            # after the last round both workers held the average; 5 more local steps each since
            center = torch.cat(await disto.collect(s.fetch() for s in shards))
            assert center.numel() == flat.numel()


def test_sync_center_update_rules() -> None:
    from disto.easgd.algorithms import sync_center_

    c = torch.tensor([0.0, 0.0])
    xs = [torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0])]
    old = sync_center_(c, xs, "sync_easgd", beta=0.5)
    assert torch.equal(old, torch.zeros(2)) and torch.allclose(c, torch.tensor([0.5, 1.0]))
    c = torch.tensor([9.0, 9.0])
    avg = sync_center_(c, xs, "local_sgd", beta=0.5)
    assert torch.allclose(avg, torch.tensor([1.0, 2.0])) and torch.allclose(c, avg)


def test_virtual_time_synchronous_algorithms_learn() -> None:
    x, y = blobs(2000, seed=0)
    xt, yt = blobs(500, seed=1)
    for algorithm in ("sync_easgd", "local_sgd"):
        res = simulate(EASGDConfig(algorithm=algorithm, workers=4, tau=5), small_model, x, y, xt, yt, rounds=400,
                       eval_every=20, target=0.85)
        assert res["rounds_to_target"] is not None, algorithm


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(90)
async def test_allreduce_sgd_through_torch_distributed() -> None:
    import cloudpickle

    import test_easgd

    cloudpickle.register_pickle_by_value(test_easgd)
    x_test, y_test = blobs(1000, seed=1)
    async with disto.LocalCluster(nodes=2) as cluster:
        cfg = EASGDConfig(algorithm="allreduce", workers=2, tau=5, lr=0.05, eval_interval=0.3)
        history = await Trainer(cluster, cfg, small_model, blob_data, (x_test, y_test)).run(seconds=20, target=0.85)
    assert history.best >= 0.85
    assert len(history.workers) == 2 and all(w["steps"] > 0 for w in history.workers)


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(90)
async def test_a_lost_parameter_shard_stops_the_run_with_a_clear_error(tmp_path) -> None:
    import os
    import signal

    import cloudpickle

    import test_easgd

    cloudpickle.register_pickle_by_value(test_easgd)
    x_test, y_test = blobs(1000, seed=1)
    checkpoint = str(tmp_path / "center.pt")
    async with disto.LocalCluster(nodes=3) as cluster:
        cfg = EASGDConfig(workers=2, shards=2, tau=5, prefetch=2, lr=0.02, eval_interval=0.3)
        trainer = Trainer(cluster, cfg, small_model, blob_data, (x_test, y_test), checkpoint=checkpoint)
        async def kill_soon() -> None:
            await eventually(lambda: os.path.exists(checkpoint), timeout=60, interval=0.05,
                             what="the first checkpoint")
            where = trainer.shards[1].node_address  # the node that holds shard 1
            os.kill(next(h.pid for h in cluster.nodes if h.address == where), signal.SIGKILL)

        killer = asyncio.ensure_future(kill_soon())
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(disto.DistoError, match="parameter shard was lost") as info:
            await trainer.run(seconds=60)
        await killer
        assert loop.time() - t0 < 30  # well before the 60 s of training asked for: no hang
        assert checkpoint in str(info.value)
        assert "center" in torch.load(checkpoint)  # the last good center is there to restart from


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(120)
async def test_workers_that_are_data_parallel_groups() -> None:
    import cloudpickle

    import test_easgd

    cloudpickle.register_pickle_by_value(test_easgd)
    x_test, y_test = blobs(1000, seed=1)
    async with disto.LocalCluster(nodes=4) as cluster:  # 2 EA-SGD workers, each a group of 2 processes
        cfg = EASGDConfig(workers=2, group_size=2, tau=5, prefetch=2, lr=0.05, eval_interval=0.3)
        # 4 worker processes on 2 cores: slow, so a modest target
        history = await Trainer(cluster, cfg, small_model, blob_data, (x_test, y_test)).run(seconds=60,
                                                                                           target=0.8)
    assert history.best >= 0.8
    stats = sorted(history.workers, key=lambda w: w["rank"])
    assert len(stats) == 4
    # inside a group every process holds the same parameters (averaged gradients, same updates, broadcasts)
    assert stats[0]["checksum"] == pytest.approx(stats[1]["checksum"], rel=1e-6)
    assert stats[2]["checksum"] == pytest.approx(stats[3]["checksum"], rel=1e-6)
    assert stats[0]["pushes"] > 0 and stats[1]["pushes"] == 0  # only the group's first rank talks to the center


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(90)
async def test_allreduce_workers_stop_together_when_only_one_is_told() -> None:
    import tempfile

    import cloudpickle

    import test_easgd

    cloudpickle.register_pickle_by_value(test_easgd)
    cfg = EASGDConfig(algorithm="allreduce", workers=2, tau=5, shards=1,
                      extra={"dist_init": "file://" + tempfile.mktemp(prefix="disto-gloo-test-")})
    async with disto.LocalCluster(nodes=2) as cluster:
        torch.manual_seed(cfg.seed)
        flat = flatten_(small_model()).clone()
        bounds = shard_bounds(flat.numel(), 1)
        shard = await cluster.nodes[0].spawn(CenterShard, flat)
        workers = [await h.spawn(Worker, r, cfg, small_model, blob_data, torch.nn.functional.cross_entropy,
                                 [shard], bounds) for r, h in enumerate(cluster.nodes)]
        runs = [w.run() for w in workers]
        async def stepped() -> bool:
            return (await workers[0].stats())["steps"] >= 20

        await eventually(stepped, timeout=30, interval=0.05, what="20 all-reduce steps")
        await workers[1].stop()  # only one of them: the other must not be left alone in the collective
        stats = await disto.within(disto.collect(runs), 20.0)
        assert stats[0]["steps"] == stats[1]["steps"] > 20
