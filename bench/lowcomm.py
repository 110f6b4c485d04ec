"""Low-communication training benchmark: DiLoCo and Streaming DiLoCo against all-reduce data parallelism on a
small GPT (the standard library's source as text), seeds interleaved; then a run with a worker killed mid-run.

Every run: the same initial weights, the same inner AdamW schedule and the same samples per worker (R rounds x H
inner steps x batch), validation loss of the outer parameters after every round. ddp all-reduces gradients every
step (gloo), so its per-step batch is workers x batch. Bytes are what each worker sent and received for training
(ddp: a ring all-reduce's 2 (p - 1) / p of the gradient each way per step).

    python bench/lowcomm.py                        # 4 workers, H 50, 10 rounds, 3 seeds (about 15 minutes here)
    python bench/lowcomm.py --quick                # smoke test (CI)
    python bench/lowcomm.py --combine A.json B.json  # one table over runs made separately (same protocol)

Prints a table and the bars, writes bench/results/lowcomm.json and bench/results/lowcomm.png.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import signal
import statistics
import sys
import time

import torch

import disto
from disto.lowcomm import ALGORITHMS, Config, History, LMTask, Trainer, gpu_each, lm_loss, plot_runs
from disto.lowcomm.lm import parameters

HERE = os.path.dirname(os.path.abspath(__file__))


def config(args: argparse.Namespace, algorithm: str, seed: int) -> Config:
    outer = {} if algorithm == "ddp" else {"outer_lr": args.outer_lr, "outer_momentum": args.outer_momentum,
                                           "final_average": args.final_average}
    if algorithm == "streaming_diloco":  # its own knobs (None: Config's defaults)
        outer.update({k: getattr(args, k) for k in ("fragments", "overlap", "compression")
                      if getattr(args, k) is not None})
        outer["mix"], outer["merge"] = args.mix, args.merge
    lr = args.lr if algorithm == "ddp" or args.inner_lr is None else args.inner_lr
    per_gpu = gpu_per_node(args)
    return Config(algorithm=algorithm, workers=args.workers, inner_steps=args.inner_steps, rounds=args.rounds,
                  batch_size=args.batch_size, inner_lr=lr, warmup_steps=args.warmup, seed=seed, device=args.device,
                  ddp_backend=args.ddp_backend or ("nccl" if per_gpu else "gloo"),
                  worker_resources={"gpu": 1} if per_gpu else None, **outer)


def gpu_per_node(args: argparse.Namespace) -> bool:
    """``--device cuda``: a GPU of its own for every node of both clusters (the workers and, with the kill, a spare)
    if there are that many (ddp over NCCL), else every worker on the first visible GPU (ddp over gloo)."""
    return args.device == "cuda" and gpu_each(args.workers + int(args.kill))


def local_cluster(args: argparse.Namespace, nodes: int) -> disto.LocalCluster:
    return disto.LocalCluster(nodes=nodes, gpus_per_node=1 if gpu_per_node(args) else None)


def summary(h: History) -> dict:
    return {"final_loss": h.final_loss, "best_loss": h.best_loss, "bytes": h.bytes_total,
            "peak_exchange_bytes": h.peak_exchange_bytes, "seconds": round(h.seconds, 2),
            "blocked_s": round(max((w["blocked_s"] for w in h.workers), default=0.0), 2), "events": h.events}


async def kill_run(args: argparse.Namespace, task: LMTask) -> tuple[History, dict]:
    """DiLoCo with one worker's node killed (SIGKILL) once 40% of the rounds have closed: the run must finish,
    the lost worker respawned from the outer parameters on a spare node. The kill follows the outer server's
    round count, not the evaluations (which lag behind the rounds, most in a short run)."""
    cfg = config(args, "diloco", args.seeds[0])
    info: dict = {}
    last: dict = {}
    target = math.ceil(0.4 * cfg.rounds)
    async with local_cluster(args, args.workers + 1) as cluster:
        trainer = Trainer(cluster, cfg, task.model, task.data, task.evaluate, loss_fn=lm_loss,
                          eval_every=args.eval_every)

        async def killer() -> None:
            while trainer.server is None:  # run() is spawning it
                await asyncio.sleep(0.01)
            server, version = trainer.server, 0
            while version < target:  # DiLoCo: one version per closed round (trainer.workers is set by then)
                version = (await server.updated(version, timeout=1.0))["version"]
            rank, ref = next((r, w) for r, w in trainer.workers.items() if w.node_address != server.node_address)
            pid = next(h.pid for h in cluster.nodes if h.address == ref.node_address)
            os.kill(pid, signal.SIGKILL)
            info.update(killed=rank, killed_at=time.perf_counter(), rounds_closed=version,
                        loss_before=last.get("loss"))

        watcher = asyncio.ensure_future(killer())
        try:
            h = await asyncio.wait_for(trainer.run(on_eval=last.update), timeout=args.kill_timeout)
            ended = time.perf_counter()
        finally:
            watcher.cancel()
    if "killed_at" in info:  # on the clock of the history's times (they count from the start of training)
        info["at"] = round(info.pop("killed_at") - (ended - h.seconds), 3)
    after = [e for e in h.evals if e["version"] > info.get("rounds_closed", float("inf"))]
    info.update(finished=bool(h.evals) and h.evals[-1]["progress"] >= 1.0, events=h.events,
                worst_after=max((e["loss"] for e in after), default=None), final=h.final_loss)
    return h, info


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def span(xs: list[float], spec: str) -> str:
    return f"{format(med(xs), spec)} [{format(min(xs), spec)}-{format(max(xs), spec)}]"


def table(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Medians over seeds per algorithm, each seed's loss and bytes taken against ddp's of the same seed; prints
    the table."""
    base = {r["seed"]: r for r in runs.get("ddp", [])}
    print(f"\n{'algorithm':>17} | {'final val loss, median [range]':>30} | {'vs ddp':>7} | {'MB, all workers':>15} | "
          f"{'ddp/x bytes':>11} | {'peak MB/exchange':>16} | {'wall s':>17} | seeds")
    rows = {}
    for a, rs in runs.items():
        if not rs:
            continue
        loss = [r["final_loss"] for r in rs]
        vs = [r["final_loss"] / base[r["seed"]]["final_loss"] - 1 for r in rs if r["seed"] in base]
        ratio = [base[r["seed"]]["bytes"] / r["bytes"] for r in rs if r["seed"] in base]
        rows[a] = {"loss": med(loss), "vs_ddp": med(vs) if vs else None, "bytes": med([r["bytes"] for r in rs]),
                   "bytes_ratio": med(ratio) if ratio else None, "seconds": med([r["seconds"] for r in rs]),
                   "peak": med([r["peak_exchange_bytes"] for r in rs]), "seeds": [r["seed"] for r in rs],
                   "vs_ddp_by_seed": vs}
        print(f"{a:>17} | {span(loss, '.4f'):>30} | {(f'{100 * med(vs):+.2f}%' if vs else '-'):>7} | "
              f"{med([r['bytes'] for r in rs]) / 1e6:15.2f} | {(f'{med(ratio):.0f}x' if ratio else '-'):>11} | "
              f"{rows[a]['peak'] / 1e6:16.3f} | {span([r['seconds'] for r in rs], '.1f'):>17} | "
              f"{','.join(str(r['seed']) for r in rs)}")
    return rows


def check_bars(rows: dict[str, dict], kill: dict | None) -> list[tuple[str, bool, str]]:
    """The issue's bars on the table (and the killed-worker run); prints them."""
    bars = []
    d, s = rows.get("diloco"), rows.get("streaming_diloco")
    if d is not None and d["vs_ddp"] is not None:
        bars.append(("DiLoCo loss within 2% of ddp", d["vs_ddp"] <= 0.02, f"{100 * d['vs_ddp']:+.2f}%"))
        bars.append(("DiLoCo sends >= 50x fewer bytes", d["bytes_ratio"] >= 50, f"{d['bytes_ratio']:.0f}x"))
    if s is not None and s["vs_ddp"] is not None:
        bars.append(("Streaming DiLoCo loss within 2% of ddp", s["vs_ddp"] <= 0.02, f"{100 * s['vs_ddp']:+.2f}%"))
    if s is not None and d is not None:
        r = d["peak"] / s["peak"]
        bars.append(("Streaming peak bytes/exchange >= 4x lower than DiLoCo", r >= 4, f"{r:.1f}x"))
    if kill is not None:
        ok = "killed" in kill and kill["finished"] and any(e.get("respawned") for e in kill["events"])
        bars.append(("a killed worker: the run finishes, the worker respawned", ok,
                     f"final loss {kill['final']:.4f}"))
    print()
    for what, ok, value in bars:
        print(f"  [{'met' if ok else 'NOT met'}] {what}: {value}")
    return bars


# What makes two runs comparable: the protocol; and Streaming DiLoCo's own knobs, for its runs.
PROTOCOL = ("size", "workers", "inner_steps", "rounds", "batch_size", "lr", "inner_lr", "outer_lr",
            "outer_momentum", "warmup", "device")
BEFORE = {"device": "cpu"}  # what files written before a protocol field existed ran with
STREAMING = ("fragments", "overlap", "merge", "mix", "compression", "final_average")
HISTORY_FIELDS = [f.name for f in dataclasses.fields(History)]


def combine(paths: list[str], out: str) -> int:
    """One table and the bars over the runs of several result files of the same protocol (runs of one length
    made at different times: seeds, or algorithms, in separate invocations)."""
    runs: dict[str, dict[int, dict]] = {}
    curves: dict[str, History] = {}
    first: dict | None = None
    kill, sources = None, []
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        if not isinstance(d, dict) or not {"args", "runs"} <= d.keys():
            raise SystemExit(f"{path}: not a result file of bench/lowcomm.py (no 'args' and 'runs')")
        a = d["args"]
        first = first or a
        for key in PROTOCOL:
            mine, theirs = a.get(key, BEFORE.get(key)), first.get(key, BEFORE.get(key))
            if mine != theirs:
                raise SystemExit(f"{path}: {key} is {mine!r}, not {theirs!r} as in {paths[0]}: "
                                 "not the same protocol")
        for algorithm, rs in d["runs"].items():
            for r in rs:
                if algorithm == "streaming_diloco":
                    knobs = {k: a.get(k, "?") for k in STREAMING}
                    seen = next((x["knobs"] for x in runs.get(algorithm, {}).values()), knobs)
                    if knobs != seen:
                        raise SystemExit(f"{path}: Streaming DiLoCo ran with {knobs}, elsewhere with {seen}")
                    r = {**r, "knobs": knobs}
                if r["seed"] in runs.setdefault(algorithm, {}):
                    raise SystemExit(f"{path}: {algorithm} seed {r['seed']} is in two files")
                runs[algorithm][r["seed"]] = {**r, "source": path}
        if d.get("kill") and kill is None:
            kill = d["kill"]
        sources.append({"path": path, "args": a})
        for label, c in d.get("curves", {}).items():  # each file's curves are of its first seed
            curves[f"{label}, seed {a['seeds'][0]}"] = History(**{k: c[k] for k in HISTORY_FIELDS if k in c})
    known = ("ddp", "diloco", "streaming_diloco")
    order = [x for x in known if x in runs] + sorted(set(runs) - set(known))
    merged = {a: [runs[a][k] for k in sorted(runs[a])] for a in order}
    assert first is not None
    print(f"{len(paths)} files, {first['rounds']} rounds of H={first['inner_steps']}, {first['workers']} workers, "
          f"TinyGPT {first['size']}")
    rows = table(merged)
    bars = check_bars(rows, kill)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "lowcomm-combined.json"), "w") as f:
        json.dump({"sources": sources, "runs": merged, "table": rows, "kill": kill,
                   "bars": [{"what": w, "met": ok, "value": v} for w, ok, v in bars]}, f, indent=1, default=str)
    if curves:
        plot_runs(curves, os.path.join(out, "lowcomm-combined.png"),
                  f"TinyGPT {first['size']}, {first['workers']} workers, H={first['inner_steps']}, "
                  f"{first['rounds']} rounds")
    print(f"\nwrote {out}/lowcomm-combined.json and lowcomm-combined.png")
    return 0


def save(args: argparse.Namespace, n: int, runs: dict[str, list[dict]], curves: dict[str, History],
         partial: bool = False, **more: object) -> None:
    """``lowcomm.json``: after each run with the runs so far (``"partial": true``; ``--combine`` takes it), at
    the end with the table and the bars."""
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "lowcomm.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"args": vars(args), "parameters": n, "partial": partial, "runs": runs, "kill": None, **more,
                   "curves": {a: h.to_dict() for a, h in curves.items()}}, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


async def main(args: argparse.Namespace) -> int:
    bad = [a for a in args.algorithms if a not in ALGORITHMS]
    if bad:
        raise SystemExit(f"unknown algorithm {bad[0]!r}: choose from {', '.join(ALGORITHMS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here (a CPU build of torch, or no GPU)")
    try:  # bad settings (say --ddp-backend nccl on the CPU) before any cluster starts
        for algorithm in args.algorithms:
            config(args, algorithm, args.seeds[0])
    except ValueError as e:
        raise SystemExit(f"bad settings: {e}") from None
    task = LMTask.sized(args.size)
    task.validation()
    n = parameters(task.model())
    print(f"TinyGPT {args.size} ({n / 1e6:.2f}M parameters), {args.workers} workers, H={args.inner_steps}, "
          f"{args.rounds} rounds, batch {args.batch_size}/worker, lr {args.lr} (ddp) / "
          f"{args.lr if args.inner_lr is None else args.inner_lr} (inner), outer lr {args.outer_lr} "
          f"momentum {args.outer_momentum}, seeds {args.seeds}; load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    runs: dict[str, list[dict]] = {a: [] for a in args.algorithms}
    curves: dict[str, History] = {}
    async with local_cluster(args, args.workers) as cluster:
        for seed in args.seeds:             # interleaved: A B C A B C ...
            for algorithm in args.algorithms:
                t0 = time.perf_counter()
                h = await Trainer(cluster, config(args, algorithm, seed), task.model, task.data, task.evaluate,
                                  loss_fn=lm_loss, eval_every=args.eval_every).run()
                row = {"seed": seed, **summary(h)}
                runs[algorithm].append(row)
                if seed == args.seeds[0]:
                    curves[algorithm] = h
                print(f"  seed {seed} {algorithm:>17}: loss {h.final_loss:.4f}, {h.bytes_total / 1e6:10.2f} MB, "
                      f"peak {h.peak_exchange_bytes / 1e6:.3f} MB, {time.perf_counter() - t0:6.1f} s", flush=True)
                save(args, n, runs, curves, partial=True)  # a long invocation cut short keeps its finished runs
    kill = None
    if args.kill:
        h, kill = await kill_run(args, task)
        curves["diloco, a worker killed"] = h
        before = kill.get("loss_before")
        print(f"  kill: worker {kill.get('killed')} at {kill.get('at')} s, {kill.get('rounds_closed')} rounds closed "
              f"(last loss {'-' if before is None else format(before, '.4f')}); "
              f"finished {kill['finished']}, worst after {kill['worst_after']}, final {kill['final']:.4f}; "
              f"events {[(e['worker'], e.get('respawned')) for e in kill['events']]}", flush=True)

    rows = table(runs)
    bars = check_bars(rows, kill)
    save(args, n, runs, curves, table=rows, kill=kill,
         bars=[{"what": w, "met": ok, "value": v} for w, ok, v in bars])
    plot_runs(curves, os.path.join(args.out, "lowcomm.png"),
              f"TinyGPT {args.size} ({n / 1e6:.2f}M), {args.workers} workers, H={args.inner_steps}, seed {args.seeds[0]}")
    print(f"\nwrote {args.out}/lowcomm.json and lowcomm.png", flush=True)
    # The losses and bytes are measurements; the killed worker is a correctness check, so it sets the exit status.
    return 1 if kill is not None and not bars[-1][1] else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--inner-steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--inner-lr", type=float, default=None, help="the inner lr of the local algorithms (default: --lr)")
    # tuned on seed 0 (docs/lowcomm.md): at this scale 1.0/0.5 beat the paper's 0.7/0.9 (Config's default)
    ap.add_argument("--outer-lr", type=float, default=1.0, help="outer lr of the DiLoCo runs (default 1.0)")
    ap.add_argument("--outer-momentum", type=float, default=0.5, help="outer Nesterov momentum (default 0.5)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--fragments", type=int, default=None, help="Streaming DiLoCo's fragments (default 4)")
    ap.add_argument("--overlap", type=int, default=None, help="Streaming DiLoCo's overlap in inner steps (default 5)")
    ap.add_argument("--merge", default="progress", choices=("progress", "mix"),
                    help="Streaming DiLoCo's merge after an overlapped exchange: theta + the steps made since the "
                    "send (default), or the paper's mix")
    ap.add_argument("--mix", type=float, default=0.5, help="with --merge mix: x = mix x + (1 - mix) theta")
    ap.add_argument("--compression", default=None, help="Streaming DiLoCo's pseudo-gradients: fp16 (default), "
                    "int8, bf16, fp32")
    ap.add_argument("--no-final-average", dest="final_average", action="store_false",
                    help="a fragment's short final round takes a momentum step like the others (Config.final_average)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="where the workers train; cuda: a GPU per worker if there are enough (ddp over NCCL), "
                    "else all on the first GPU (ddp over gloo)")
    ap.add_argument("--ddp-backend", default=None, choices=("gloo", "nccl"),
                    help="ddp's all-reduce (default: gloo on the CPU and on a shared GPU, NCCL with a GPU per worker)")
    ap.add_argument("--eval-every", type=int, default=1, help="evaluate after every N rounds (and at the end); "
                    "long runs: the driver's evaluations share the cores with the workers")
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--algorithms", type=lambda s: s.split(","), default=["ddp", "diloco", "streaming_diloco"])
    ap.add_argument("--no-kill", dest="kill", action="store_false", help="skip the killed-worker run")
    ap.add_argument("--kill-timeout", type=float, default=900)
    ap.add_argument("--quick", action="store_true", help="2 workers, 5 rounds of 10 steps, one seed (CI smoke)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="no training: one table and the bars over the runs "
                    "of these lowcomm.json files (the same protocol, e.g. seeds run separately)")
    a = ap.parse_args()
    if a.combine:
        sys.exit(combine(a.combine, a.out))
    if a.quick:
        a.workers, a.inner_steps, a.rounds, a.seeds, a.warmup = 2, 10, 5, [0], 5
    sys.exit(disto.run(main(a)))
