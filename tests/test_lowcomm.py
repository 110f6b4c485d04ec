"""Low-communication training: the outer optimizer, compression, the schedule and the quorum (no event loop),
then short real runs on a local cluster (a tiny GPT on the stdlib's source), a killed worker, and resuming."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch

import disto
from helpers import eventually
from disto.lowcomm import (Config, OuterOptimizer, OuterServer, RoundBook, Schedule, TextSampler, TinyGPT,
                           GPTConfig, Trainer, async_diloco, decode, diloco, easgd, encode, gpu_each, lm_loss, local_sgd,
                           overlap_merge_,
                           stdlib_corpus)

TINY = GPTConfig(context=16, dim=32, layers=1, heads=2)


def test_outer_sgd_presets_are_local_sgd_easgd_and_nesterov() -> None:
    theta, xs = torch.tensor([1.0, 2.0]), [torch.tensor([0.0, 0.0]), torch.tensor([2.0, 0.0])]
    g = theta - torch.stack(xs).mean(0)          # pseudo-gradient (1 - 1, 2 - 0)
    st = local_sgd().state(theta)
    local_sgd().step_(st, g)
    assert torch.equal(st.params, torch.stack(xs).mean(0))   # model averaging
    opt = easgd(workers=2, beta=0.9)
    st = opt.state(theta)
    opt.step_(st, g)
    assert torch.allclose(st.params, theta - 0.9 * g)        # c = (1 - beta) c + beta mean(x)
    x = xs[0].clone()
    opt.pull_(x, theta, st.params)
    assert torch.allclose(x, xs[0] - 0.45 * (xs[0] - theta))  # pulled alpha to the old center
    opt = diloco(lr=0.7, momentum=0.9)
    st = opt.state(theta)
    opt.step_(st, g)
    assert torch.allclose(st.params, theta - 0.7 * (g + 0.9 * g))  # Nesterov: g + mu * buf, buf = g
    opt.step_(st, g)
    buf = 0.9 * g + g
    assert torch.allclose(st.params, theta - 0.7 * 1.9 * g - 0.7 * (g + 0.9 * buf))
    with pytest.raises(ValueError):
        OuterOptimizer(lr=0)
    with pytest.raises(ValueError):
        OuterOptimizer(pull_to="middle")


def test_delayed_nesterov_equals_one_nesterov_step_on_the_mean_every_n_arrivals() -> None:
    n = 4
    gs = [torch.randn(5, generator=torch.Generator().manual_seed(i)) for i in range(2 * n)]
    a = async_diloco(workers=n)
    s = diloco()
    sa, ss = a.state(torch.zeros(5)), s.state(torch.zeros(5))
    for k in range(2):
        chunk = gs[k * n:(k + 1) * n]
        for g in chunk:
            a.arrive_(sa, g)
        s.step_(ss, torch.stack(chunk).mean(0))
        assert torch.allclose(sa.params, ss.params, atol=1e-6)


@pytest.mark.parametrize("kind,tol", [("fp32", 0), ("fp16", 1e-3), ("bf16", 1e-2), ("int8", 1e-2)])
def test_compression_round_trips_within_its_precision(kind: str, tol: float) -> None:
    t = torch.randn(1000) * 3
    p = encode(t, kind)
    back = decode(p)
    assert back.dtype == torch.float32 and back.shape == t.shape
    assert float((back - t).abs().max()) <= tol * float(t.abs().max()) + 1e-12
    expect = {"fp32": 4000, "fp16": 2000, "bf16": 2000, "int8": 1000 + 4 * 4}[kind]
    assert p.nbytes == expect
    assert torch.equal(decode(encode(torch.zeros(7), kind)), torch.zeros(7))
    with pytest.raises(ValueError):
        encode(t, "fp8")


def test_streaming_schedule_staggers_fragments_and_syncs_all_at_the_end() -> None:
    s = Schedule(inner_steps=8, fragments=4, total=20)
    due = {t: s.due(t) for t in range(1, 21) if s.due(t)}
    assert due == {2: [3], 4: [2], 6: [1], 8: [0], 10: [3], 12: [2], 14: [1], 16: [0], 18: [3], 20: [0, 1, 2, 3]}
    assert [s.round_at(t, 3) for t in (2, 10, 18, 20)] == [1, 2, 3, 4] and s.rounds(3) == 4
    assert s.round_at(16, 0) == 2 and s.round_at(20, 0) == 3 and s.step_of(0, 3) == 20
    assert Schedule(10, 1, 30).due(10) == [0] and Schedule(10, 1, 30).due(5) == []
    with pytest.raises(ValueError):
        Schedule(inner_steps=2, fragments=4, total=10)
    # round lengths: fragment 3 (shift 6) runs 2, 8, 8 then 2 steps; fragment 0 8, 8 then the last 4
    assert [s.length(3, r) for r in range(1, 5)] == [2, 8, 8, 2]
    assert [s.length(0, r) for r in range(1, 4)] == [8, 8, 4]
    assert [s.short_final(3, r) for r in range(1, 5)] == [False, False, False, True]
    assert s.short_final(0, 3) and not s.short_final(0, 2)
    full = Schedule(inner_steps=8, fragments=1, total=24)     # DiLoCo: every round H, the last too
    assert [full.length(0, r) for r in (1, 2, 3)] == [8, 8, 8] and not full.short_final(0, 3)
    s4 = Schedule(inner_steps=8, fragments=4, total=24)      # fragment 0 ends on a sync point, 1-3 do not
    assert [s4.short_final(p, s4.rounds(p)) for p in range(4)] == [False, True, True, True]
    assert sum(s4.length(2, r) for r in range(1, s4.rounds(2) + 1)) == 24


def test_a_short_final_round_lands_on_the_workers_mean_without_momentum() -> None:
    theta, mean = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.0])
    opt = diloco(lr=1.0, momentum=0.5)
    st = opt.state(theta)
    opt.step_(st, torch.tensor([0.2, 0.2]))                  # a full round: a momentum buffer
    buf = st.buf.clone()
    st.params.copy_(theta)
    opt.step_(st, theta - mean, short_final=True)
    assert torch.equal(st.params, mean) and torch.equal(st.buf, buf) and st.steps == 2
    st2 = opt.state(theta)                                   # a full final round: the usual Nesterov step
    opt.step_(st2, theta - mean)
    assert torch.allclose(st2.params, theta - 1.5 * (theta - mean))
    off = OuterOptimizer(lr=1.0, momentum=0.5, final_average=False)   # switched off: a momentum step
    st3 = off.state(theta)
    off.step_(st3, theta - mean, short_final=True)
    assert torch.allclose(st3.params, st2.params)
    e = easgd(workers=2, beta=0.9)                            # no momentum: its step is unchanged
    st4 = e.state(theta)
    e.step_(st4, theta - mean, short_final=True)
    assert torch.allclose(st4.params, theta - 0.9 * (theta - mean))
    assert Config(algorithm="streaming_diloco", final_average=False).outer().final_average is False


@pytest.mark.parametrize("final_average,expected", [(True, -4.25), (False, -5.125)])
async def test_the_server_ends_a_short_final_round_on_the_workers_mean(final_average: bool, expected: float) -> None:
    # the outer server itself, no cluster: one worker, 2 fragments, H = 4, 8 steps. Fragment 1 (shift 2) closes
    # rounds of 2, 4 and then 2 steps (the short final one); each time the worker reports a pseudo-gradient of 1
    cfg = Config(algorithm="streaming_diloco", workers=1, inner_steps=4, rounds=2, fragments=2, overlap=0,
                 compression="fp32", outer_lr=1.0, outer_momentum=0.5, final_average=final_average)
    srv = OuterServer(cfg, torch.zeros(4))
    assert (await srv.join(0))["step"] == 0
    assert [srv.sched.length(1, r) for r in (1, 2, 3)] == [2, 4, 2] and srv.sched.short_final(1, 3)
    for rnd in (1, 2, 3):
        reply = await srv.exchange(0, 1, rnd, encode(torch.ones(2), "fp32"))
        assert reply["kind"] == "diff"
    # Nesterov (lr 1, mu 0.5) on rounds 1 and 2: -1.5, then -1.75 more; round 3: the mean (-1), or -1.875 more
    assert torch.equal(srv.states[1].params, torch.full((2,), expected))
    assert torch.equal(srv.states[0].params, torch.zeros(2))   # fragment 0 untouched


def test_an_overlapped_exchange_keeps_only_the_steps_made_since_the_send() -> None:
    theta_new = torch.tensor([1.0, 1.0, 1.0])
    sent = torch.tensor([0.0, 2.0, 4.0])                 # the replica when it sent its pseudo-gradient
    since = torch.tensor([0.5, -0.25, 0.0])              # its inner steps while the exchange was in flight
    x = sent + since
    overlap_merge_(x, theta_new, sent, mix=0.5)
    assert torch.equal(x, theta_new + since)             # theta, plus those steps; the rest was in the exchange
    x = sent + since
    overlap_merge_(x, theta_new, None, mix=0.5)          # the paper's mix keeps half the replica's divergence
    assert torch.allclose(x, 0.5 * (sent + since) + 0.5 * theta_new)
    assert Config(algorithm="streaming_diloco").merge == "progress"
    with pytest.raises(ValueError, match="merge"):
        Config(algorithm="streaming_diloco", merge="average")


def test_quorum_closes_when_all_came_or_at_the_deadline_with_whoever_came() -> None:
    book = RoundBook([0, 1, 2], deadline=5.0)
    assert book.arrive(0, 1, "a", now=0.0) == "open" and not book.ready(1.0)
    book.arrive(1, 1, "b", now=1.0)
    assert not book.ready(4.9) and book.ready(5.0)           # worker 2 is frozen: the deadline closes it
    number, values, missing = book.close()
    assert number == 1 and values == {0: "a", 1: "b"} and missing == {2}
    assert book.arrive(2, 1, "late", now=6.0) == "late"       # round 1 is over
    for w in (0, 1, 2):
        book.arrive(w, 2, w, now=7.0)
    assert book.ready(7.0)                                    # everyone came: no waiting
    book.close()
    book.arrive(0, 3, 0, now=8.0)
    book.leave(1)
    book.leave(2)
    assert book.ready(8.0)                                    # the lost ones are not waited for
    book.close()
    book.join(5, 5)                                           # a new worker, expected from round 5
    book.arrive(0, 4, 0, now=9.0)
    assert book.ready(9.0) and book.expected(5) == {0, 5}
    q = RoundBook([0, 1], deadline=1.0, min_workers=2)
    q.arrive(0, 1, 0, now=0.0)
    assert not q.ready(10.0)                                  # past the deadline but short of the quorum
    with pytest.raises(ValueError):
        RoundBook([0], deadline=0)


def test_config_defaults_and_checks() -> None:
    s = Config(algorithm="streaming_diloco", inner_steps=50)
    assert (s.fragments, s.overlap, s.compression) == (4, 5, "fp16")
    assert Config().outer() == diloco() and Config(algorithm="local_sgd").outer() == local_sgd()
    for bad in ({"algorithm": "adam"}, {"fragments": 2}, {"workers": 0}, {"compression": "fp8"},
                {"algorithm": "streaming_diloco", "inner_steps": 8, "overlap": 2}, {"min_workers": 9},
                {"outer_momentum": 1.0}, {"device": "tpu"}, {"ddp_backend": "mpi"}):
        with pytest.raises(ValueError):
            Config(**bad)
    # ddp's backend: gloo on the CPU, NCCL on GPUs unless asked for gloo (ranks sharing a GPU)
    assert Config(algorithm="ddp").ddp_backend == "gloo"
    assert Config(algorithm="ddp", device="cuda").ddp_backend == "nccl"
    assert Config(algorithm="ddp", device="cuda:1", ddp_backend="gloo").ddp_backend == "gloo"
    with pytest.raises(ValueError, match="needs device 'cuda'"):
        Config(algorithm="ddp", ddp_backend="nccl")


def test_gpu_workers_get_a_gpu_each_only_when_there_are_enough(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert gpu_each(2) and not gpu_each(3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not gpu_each(1)


def test_the_benchmark_refuses_bad_settings_before_starting_a_cluster() -> None:
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "lowcomm.py")
    bad = subprocess.run([sys.executable, script, "--ddp-backend", "nccl", "--algorithms", "ddp"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "bad settings: ddp_backend 'nccl' needs device 'cuda'" in bad.stderr
    if not torch.cuda.is_available():
        gpu = subprocess.run([sys.executable, script, "--device", "cuda"], capture_output=True, text=True,
                             timeout=120)
        assert gpu.returncode != 0 and "torch sees no CUDA device here" in gpu.stderr


def test_the_corpus_is_the_stdlib_split_by_file_and_the_model_learns_it() -> None:
    d = stdlib_corpus()
    assert d["files"][0] > 100 and d["files"][1] > 10 and len(d["train"]) > 10 * len(d["val"]) / 2
    assert b"def " in bytes(d["train"][:200_000])
    s = TextSampler(d["train"], 16)
    x, y = s(torch.Generator().manual_seed(0), 4)
    assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    m = TinyGPT(TINY)
    with pytest.raises(ValueError):
        m(torch.zeros(1, 17, dtype=torch.long))


def tiny_model() -> torch.nn.Module:
    return TinyGPT(TINY)


def tiny_data(rank: int) -> TextSampler:
    return TextSampler(stdlib_corpus()["train"], TINY.context)


VAL = TextSampler(stdlib_corpus()["val"], TINY.context).fixed(2, 32)


def tiny_eval(m: torch.nn.Module) -> float:
    return sum(lm_loss(m(x), y).item() for x, y in VAL) / len(VAL)


def run_cfg(**kw) -> Config:
    base = dict(workers=2, inner_steps=8, rounds=3, batch_size=8, inner_lr=3e-3)
    base.update(kw)
    return Config(**base)


@pytest.mark.parametrize("algorithm,merge", [("diloco", "progress"), ("streaming_diloco", "progress"),
                                             ("streaming_diloco", "mix"), ("async_diloco", "progress"),
                                             ("sync_easgd", "progress"), ("ddp", "progress")])
async def test_short_runs_learn_and_count_their_bytes(algorithm: str, merge: str) -> None:
    cfg = run_cfg(algorithm=algorithm, merge=merge)
    async with disto.LocalCluster(nodes=2) as cluster:
        h = await Trainer(cluster, cfg, tiny_model, tiny_data, tiny_eval, loss_fn=lm_loss).run()
    assert len(h.workers) == 2 and all(w["steps"] == cfg.total_steps for w in h.workers)
    assert h.evals and h.final_loss < 5.4  # ln 256 = 5.55 at the start
    n = sum(p.numel() for p in tiny_model().parameters())
    per = {"ddp": 2 * 2 * (2 - 1) / 2 * n * 4 * cfg.total_steps}.get(algorithm)
    if per is not None:
        assert h.bytes_total == pytest.approx(2 * per, rel=1e-6)
    elif algorithm == "streaming_diloco":
        assert h.peak_exchange_bytes <= 2 * (n // 4 + 1) * 2      # a quarter of the model, fp16, both ways
        assert sum(r["up"] + r["down"] for r in h.bytes_by_round()) == h.bytes_total
    else:  # fp32, whole model, up and down, every round
        assert h.bytes_total == 2 * cfg.rounds * 2 * n * 4
        assert h.peak_exchange_bytes == 2 * n * 4
    assert all(e["outcome"] == "ok" for e in h.exchanges)
    progress = [e["progress"] for e in h.evals]
    assert progress == sorted(progress) and progress[-1] == 1.0   # what the example's progress bar shows
    json.dumps(h.to_dict())                                        # the example's history.json


async def test_a_worker_error_stops_the_run_with_that_error() -> None:
    def broken(rank: int):
        def sample(gen, n):
            raise KeyError("no such shard")
        return sample
    async with disto.LocalCluster(nodes=2) as cluster:
        with pytest.raises(KeyError, match="no such shard"):
            await Trainer(cluster, run_cfg(), tiny_model, broken, tiny_eval, loss_fn=lm_loss).run()


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(120)
async def test_a_killed_worker_is_respawned_from_the_outer_parameters_and_the_run_finishes() -> None:
    # each inner step ends with a 10 ms sleep: the victim still has 6 rounds (0.48 s at least) to go at the kill
    cfg = run_cfg(algorithm="diloco", inner_steps=8, rounds=8, deadline=20.0, step_delay={0: 0.01, 1: 0.01})
    async with disto.LocalCluster(nodes=3) as cluster:
        trainer = Trainer(cluster, cfg, tiny_model, tiny_data, tiny_eval, loss_fn=lm_loss)
        killed: list[int] = []

        async def kill_after_the_second_round() -> None:  # triggered by the rounds, not by a sleep
            server = await eventually(lambda: trainer.server, timeout=60, what="run() spawning the outer server")
            version = 0
            while version < 2:  # a round closes only once the workers run: trainer.workers is set by then
                version = (await server.updated(version, timeout=1.0))["version"]
            victim = next(r for r, w in trainer.workers.items() if w.node_address != server.node_address)
            where = trainer.workers[victim].node_address
            killed.append(victim)
            os.kill(next(h.pid for h in cluster.nodes if h.address == where), signal.SIGKILL)

        killer = asyncio.ensure_future(kill_after_the_second_round())
        h = await trainer.run()
        await killer
    victim, = killed
    assert [e["worker"] for e in h.events] == [victim] and h.events[0].get("respawned")
    assert "NodeLostError" in h.events[0]["error"]
    # every round of the run closed, the lost worker's without it (its place left by leave(), not a deadline)
    assert [r["round"] for r in h.rounds] == list(range(1, cfg.rounds + 1))
    assert any(victim in r["missing"] for r in h.rounds) or any(victim not in r["workers"] for r in h.rounds)
    # the new incarnation joined at the current outer step and did the rest of the run
    runs = sorted((w for w in h.workers if w["rank"] == victim), key=lambda w: w["start_step"])
    assert runs[-1]["start_step"] > 0 and runs[-1]["start_step"] + runs[-1]["steps"] == cfg.total_steps
    assert [e["version"] for e in h.evals] == sorted({e["version"] for e in h.evals})
    assert h.evals[-1]["version"] == cfg.rounds and h.final_loss < h.evals[0]["loss"]


@pytest.mark.loops("uvloop")
async def test_the_trainer_evaluates_every_n_rounds_and_off_the_drivers_loop() -> None:
    # The driver is a node as well: an evaluation that held its loop would hold its heartbeats, the rounds'
    # replies and the watch on lost workers for as long as it ran.
    loop = asyncio.get_running_loop()
    served = threading.Event()

    def eval_fn(m: torch.nn.Module) -> float:
        served.clear()
        loop.call_soon_threadsafe(served.set)  # runs only if the loop is free while this evaluation runs
        if not served.wait(timeout=5):
            raise AssertionError("the driver's loop was held during the evaluation")
        return tiny_eval(m)

    async with disto.LocalCluster(nodes=1) as cluster:
        with pytest.raises(ValueError, match="eval_every"):
            Trainer(cluster, run_cfg(workers=1), tiny_model, tiny_data, eval_fn, eval_every=0)
        h = await Trainer(cluster, run_cfg(workers=1, rounds=5), tiny_model, tiny_data, eval_fn,
                          loss_fn=lm_loss, eval_every=2).run()
    versions = [e["version"] for e in h.evals]
    # after every 2 rounds (or later, when an evaluation lags), and the last round's parameters at the end
    assert versions[-1] == 5 and len(versions) <= 3
    assert all(b - a >= 2 for a, b in zip([0, *versions[:-2]], versions[:-1]))


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(120)
async def test_a_run_resumes_from_its_checkpoint_with_the_outer_momentum(tmp_path) -> None:
    path = str(tmp_path / "outer.pt")
    first = run_cfg(algorithm="diloco", rounds=3)
    async with disto.LocalCluster(nodes=2) as cluster:
        a = await Trainer(cluster, first, tiny_model, tiny_data, tiny_eval, loss_fn=lm_loss, checkpoint=path).run()
        saved = torch.load(path, weights_only=False)
        assert saved["algorithm"] == "diloco" and saved["server"]["rounds"] == [3]
        assert float(saved["server"]["states"][0]["buf"].abs().sum()) > 0  # there is momentum to keep
        longer = run_cfg(algorithm="diloco", rounds=5)
        b = await Trainer(cluster, longer, tiny_model, tiny_data, tiny_eval, loss_fn=lm_loss, resume=path,
                          checkpoint=path + ".2").run()
        again = torch.load(path + ".2", weights_only=False)["server"]["states"][0]
        with pytest.raises(disto.DistoError, match="checkpoint of 'diloco'"):
            Trainer(cluster, run_cfg(algorithm="local_sgd"), tiny_model, tiny_data, tiny_eval, resume=path)
    # the resumed run starts where the checkpoint ended: rounds 4 and 5 only, from step 3 * H
    assert b.evals[:len(a.evals)] == a.evals and b.evals[-1]["version"] == 5
    assert [r["round"] for r in b.rounds] == [4, 5]
    assert again["steps"] == 5  # the outer state went on from its 3 steps (momentum kept), not from zero
    assert all(w["start_step"] == 3 * longer.inner_steps and w["steps"] == 2 * longer.inner_steps
               for w in b.workers)


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(120)
async def test_the_quorum_deadline_closes_rounds_without_a_slow_worker() -> None:
    # worker 1 sleeps 0.5 s after each inner step: its first exchange comes >= 2 s after its start, far past
    # the 0.2 s deadline of a round that worker 0 opened after four quick steps
    cfg = run_cfg(algorithm="diloco", inner_steps=4, rounds=3, deadline=0.2, step_delay={1: 0.5})
    async with disto.LocalCluster(nodes=2) as cluster:
        h = await Trainer(cluster, cfg, tiny_model, tiny_data, tiny_eval, loss_fn=lm_loss).run()
    assert [r["round"] for r in h.rounds] == [1, 2, 3]
    assert all(r["workers"] == [0] and r["missing"] == [1] for r in h.rounds)
    assert {e["outcome"] for e in h.exchanges if e["worker"] == 1} == {"late"}      # resynced in full
    assert {e["outcome"] for e in h.exchanges if e["worker"] == 0} == {"ok"}
    assert all(w["steps"] == cfg.total_steps for w in h.workers)


@pytest.mark.loops("uvloop")
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
async def test_cuda_workers_on_nodes_without_a_gpu_say_so() -> None:
    async with disto.LocalCluster(nodes=1) as cluster:
        with pytest.raises(ValueError, match="sees no CUDA device"):
            await Trainer(cluster, run_cfg(workers=1, device="cuda"), tiny_model, tiny_data, tiny_eval,
                          loss_fn=lm_loss).run()


def test_the_lm_task_pickles_by_reference_and_scores_a_model(tmp_path) -> None:
    import pickle

    import cloudpickle

    from disto.lowcomm import LMTask, plot_runs
    task = LMTask(TINY, val_batches=2, val_batch=4)
    blob = cloudpickle.dumps((task.model, task.data, task.evaluate))
    assert len(blob) < 2000 and b"LMTask" in blob                 # a reference to the class, not its code
    model_fn, data_fn, eval_fn = pickle.loads(blob)
    loss = eval_fn(model_fn())
    assert 5.0 < loss < 6.0                                      # an untrained byte model: about ln 256
    assert data_fn(0).context == TINY.context
    with pytest.raises(ValueError, match="size is one of"):
        LMTask.sized("huge")
    from disto.lowcomm import History
    run = History(config={}, evals=[{"time": 1.0, "bytes": 10, "loss": 3.0}, {"time": 2.0, "bytes": 20, "loss": 2.5}],
                  events=[{"time": 1.5, "worker": 1}])
    plot_runs({"a": run, "empty": History(config={})}, str(tmp_path / "p.png"), "title")
    assert (tmp_path / "p.png").stat().st_size > 1000


class GroupProbe(disto.Actor):
    def initialized(self) -> bool:
        import torch.distributed as dist
        return dist.is_initialized()


@pytest.mark.loops("uvloop")
@pytest.mark.async_timeout(120)
async def test_ddp_runs_one_after_another_on_one_cluster_each_with_its_own_process_group() -> None:
    # a node outlives a run: a process group left behind would be reused with the last run's ranks
    # and ranks share no process: three ranks on two nodes, each rank in a process of its own
    async with disto.LocalCluster(nodes=2) as cluster:
        for seed, workers in ((0, 2), (1, 3)):
            h = await Trainer(cluster, run_cfg(algorithm="ddp", rounds=1, seed=seed, workers=workers), tiny_model,
                              tiny_data, tiny_eval, loss_fn=lm_loss).run()
            assert sorted(w["steps"] for w in h.workers) == [8] * workers
        probes = [await node.spawn(GroupProbe) for node in cluster.nodes]
        assert [await p.initialized() for p in probes] == [False, False]


def test_the_benchmark_combines_runs_made_separately_into_one_table(tmp_path) -> None:
    # seeds of one protocol run at different times (a 400-round run is an hour here) give one table and the bars
    args = {"size": "tiny", "workers": 4, "inner_steps": 50, "rounds": 400, "batch_size": 16, "lr": 3e-3,
            "inner_lr": None, "outer_lr": 1.0, "outer_momentum": 0.5, "warmup": 20, "fragments": None,
            "overlap": None, "merge": "progress", "mix": 0.5, "compression": None, "final_average": True}

    def run(seed: int, loss: float, nbytes: int, peak: int) -> dict:
        return {"seed": seed, "final_loss": loss, "best_loss": loss, "bytes": nbytes, "peak_exchange_bytes": peak,
                "seconds": 10.0, "blocked_s": 0.0, "events": []}

    files = {"a": {"ddp": [run(0, 1.00, 1000, 50)], "diloco": [run(0, 1.03, 10, 30)]},
             "b": {"ddp": [run(1, 2.00, 1000, 50)], "diloco": [run(1, 2.02, 10, 30)],
                   "streaming_diloco": [run(1, 2.01, 5, 5)]},
             "c": {"ddp": [run(2, 1.00, 1000, 50)], "diloco": [run(2, 1.01, 10, 30)]}}
    paths = []
    for name, runs in files.items():
        paths.append(str(tmp_path / f"{name}.json"))
        (tmp_path / f"{name}.json").write_text(json.dumps({"args": args, "runs": runs, "kill": None}))
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "lowcomm.py")
    bench = [sys.executable, script, "--out", str(tmp_path / "out"), "--combine"]
    out = subprocess.run([*bench, *paths], capture_output=True, text=True, check=True).stdout
    combined = json.loads((tmp_path / "out" / "lowcomm-combined.json").read_text())
    assert combined["table"]["diloco"]["seeds"] == [0, 1, 2]
    assert combined["table"]["diloco"]["vs_ddp"] == pytest.approx(0.01)    # the median of +3%, +1%, +1% by seed
    assert combined["table"]["streaming_diloco"]["vs_ddp"] == pytest.approx(0.005)  # against its own seed's ddp
    assert "[met] DiLoCo loss within 2% of ddp: +1.00%" in out
    assert "[met] Streaming peak bytes/exchange >= 4x lower than DiLoCo: 6.0x" in out
    # the same seed twice, or another protocol, is refused
    twice = subprocess.run([*bench, paths[0], paths[0]], capture_output=True, text=True)
    assert twice.returncode != 0 and "ddp seed 0 is in two files" in twice.stderr
    (tmp_path / "d.json").write_text(json.dumps({"args": {**args, "rounds": 200}, "runs": {}, "kill": None}))
    other = subprocess.run([*bench, paths[0], str(tmp_path / "d.json")], capture_output=True, text=True)
    assert other.returncode != 0 and "rounds is 200, not 400" in other.stderr
    # runs on GPUs are not mixed with runs on CPUs (files from before --device ran on CPUs)
    (tmp_path / "g.json").write_text(json.dumps({"args": {**args, "device": "cuda"}, "runs": {}, "kill": None}))
    gpu = subprocess.run([*bench, paths[0], str(tmp_path / "g.json")], capture_output=True, text=True)
    assert gpu.returncode != 0 and "device is 'cuda', not 'cpu'" in gpu.stderr
    (tmp_path / "h.json").write_text(json.dumps({"args": {**args, "device": "cpu"}, "runs": {}, "kill": None}))
    assert subprocess.run([*bench, paths[0], str(tmp_path / "h.json")], capture_output=True).returncode == 0
    (tmp_path / "e.json").write_text(json.dumps({"history": []}))
    foreign = subprocess.run([*bench, str(tmp_path / "e.json")], capture_output=True, text=True)
    assert foreign.returncode != 0 and "not a result file of bench/lowcomm.py" in foreign.stderr


@pytest.mark.loops("uvloop")
@pytest.mark.parametrize("merge", ["progress", "mix"])
async def test_the_worker_merges_an_overlapped_reply_as_configured(merge: str) -> None:
    # With zero gradients AdamW only decays the weights (x *= 1 - lr_t * wd per step), so every value the worker
    # holds is known exactly. One fragment, H = 8, overlap 2, two rounds: the send at step 8, the reply (theta
    # moved by +10) merged at step 10, and the last exchange at step 16 sends theta_new - x_16, which says how
    # the reply was merged.
    from disto.lowcomm import InnerWorker, inner_lr

    class FakeServer(disto.Actor):
        def __init__(self, init: torch.Tensor) -> None:
            self.init, self.got = init, []

        def join(self, worker: int) -> dict:
            return {"bounds": [(0, self.init.numel())], "params": self.init, "step": 0, "stopped": False}

        def exchange(self, worker: int, p: int, rnd: int, delta) -> dict:
            self.got.append(decode(delta))
            move = torch.full_like(self.init, 10.0) if len(self.got) == 1 else torch.zeros_like(self.init)
            return {"kind": "diff", "packed": encode(move, "fp32"), "stopped": False}

        def deltas(self) -> list:
            return self.got

    cfg = Config(algorithm="streaming_diloco", workers=1, fragments=1, inner_steps=8, rounds=2, overlap=2,
                 compression="fp32", merge=merge, inner_lr=0.05, warmup_steps=0, grad_clip=0.0)
    init = torch.arange(1.0, 6.0)  # nn.Linear(4, 1): 5 parameters

    def zero_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (out * 0).sum()

    def zeros(rank: int):
        return lambda gen, n: (torch.zeros(n, 4), torch.zeros(n, 1))

    async with disto.LocalCluster(nodes=1) as cluster:
        server = await cluster.spawn(FakeServer, init)
        worker = await cluster.spawn(InnerWorker, 0, cfg, lambda: torch.nn.Linear(4, 1), zeros, zero_loss, server)
        stats = await worker.run()
        first, last = await server.deltas()
    assert stats["steps"] == 16 and stats["exchanges"] == 2

    def decay(x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        x = x.clone()
        for t in range(a, b):
            x.mul_(1 - inner_lr(cfg, t) * cfg.weight_decay)
        return x

    sent = decay(init, 0, 8)
    assert torch.allclose(first, init - sent, rtol=1e-6)
    new = init + 10.0
    x10 = decay(sent, 8, 10)
    merged = new + (x10 - sent) if merge == "progress" else 0.5 * x10 + 0.5 * new
    assert torch.allclose(last, new - decay(merged, 10, 16), rtol=1e-5, atol=1e-6)
