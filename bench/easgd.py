"""EA-SGD benchmark: wall time to 90% on MNIST-1D, several algorithms interleaved over seeds.

Real runs on a local 2-node cluster (one torch thread per worker, p <= 2 on 2 cores): MSGD p=1, EAMSGD p=2
(tau 10, prefetch 5), synchronous all-reduce SGD p=2 (torch.distributed, gloo) and DOWNPOUR p=2, interleaved
(A B C D A B C D ...) over several seeds, each until the center
reaches 90% test accuracy on MNIST-1D or the time limit. Then the virtual-time sweep: EAMSGD with p = 1..16
workers stepped round-robin in one process, rounds to 90%.

    python bench/easgd.py                 # 3 seeds (about 10 minutes)
    python bench/easgd.py --quick         # smoke test (CI)

Prints a table, writes bench/results/easgd.json and bench/results/easgd.png.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

import disto
from disto.easgd import EASGDConfig, Trainer, mlp, mnist1d, simulate

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples", "easgd"))
import train  # noqa: E402
from train import NUM_SAMPLES, train_data  # noqa: E402

import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(train)  # the node processes cannot import examples/ by name

CONFIGS = [("msgd", 1), ("eamsgd", 2), ("allreduce", 2), ("downpour", 2)]


async def real_run(algo: str, p: int, seed: int, seconds: float, eval_stride: int) -> dict:
    d = mnist1d(NUM_SAMPLES)
    test = torch.from_numpy(d["x_test"]), torch.from_numpy(d["y_test"])
    # a snapshot of the center every 0.5 s, evaluated (57 ms of CPU) every eval_stride-th while training; the
    # skipped snapshots are evaluated once the run stops at 90%, so the times to 88% and 90% keep 0.5 s resolution
    cfg = EASGDConfig(algorithm=algo, workers=p, tau=10, seed=seed, eval_interval=0.5, eval_stride=eval_stride,
                      lr=0.05)
    load = os.getloadavg()[0]
    async with disto.LocalCluster(nodes=2) as cluster:
        h = await Trainer(cluster, cfg, mlp, train_data, test).run(seconds=seconds, target=0.90)
    return {"algorithm": algo, "workers": p, "seed": seed, "load_before": load, "best": h.best,
            "t88": h.time_to(0.88), "t90": h.time_to(0.90), "s90": h.samples_to(0.90),
            "comm": max((w["comm_fraction"] for w in h.workers), default=0.0),
            "samples_per_s": (h.evals[-1]["samples"] / h.evals[-1]["time"]) if h.evals else 0.0,
            "curve": [(e["time"], e["samples"], e["accuracy"]) for e in h.evals]}


def med(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


STEP_LOOP = """
import sys, time, torch
from disto.easgd import EASGDConfig, LocalLearner, mlp
torch.set_num_threads(1)
torch.manual_seed(0)
x, y = torch.randn(60000, 40), torch.randint(0, 10, (60000,))
learner = LocalLearner(mlp, x, y, torch.nn.functional.cross_entropy, EASGDConfig(algorithm="msgd", workers=1), 0)
for _ in range(200):
    learner.step()
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < float(sys.argv[1]):
    learner.step()
    n += 1
print(n / (time.perf_counter() - t0))
"""


def step_rates(seconds: float, copies: int) -> list[float]:
    """Steps/s of ``copies`` processes each stepping one worker's MLP (batch 32, one torch thread, no disto) at
    the same time: what the machine gives p workers before any communication."""
    import subprocess

    procs = [subprocess.Popen([sys.executable, "-c", STEP_LOOP, str(seconds)], stdout=subprocess.PIPE, text=True)
             for _ in range(copies)]
    return [float(p.communicate()[0]) for p in procs]


def where_time_goes(real: list, sweep: list, seconds: float) -> dict:
    """EAMSGD p=2's wall-time ratio to MSGD, taken apart: the rounds it needs (virtual time, no communication)
    over the step rate each of two workers gets on this machine (two bare processes against one)."""
    solo = [step_rates(seconds, 1)[0] for _ in range(3)]
    pair = [min(step_rates(seconds, 2)) for _ in range(3)]
    r1 = med([s["rounds_to_90"] for s in sweep if s["workers"] == 1])
    r2 = med([s["rounds_to_90"] for s in sweep if s["workers"] == 2])
    t1 = med([r["t90"] for r in real if r["algorithm"] == "msgd"])
    t2 = med([r["t90"] for r in real if r["algorithm"] == "eamsgd"])
    sp1 = med([r["samples_per_s"] for r in real if r["algorithm"] == "msgd"])
    sp2 = med([r["samples_per_s"] for r in real if r["algorithm"] == "eamsgd"])
    out = {"solo_steps_per_s": med(solo), "pair_steps_per_s": med(pair),
           "machine_scaling": med(pair) / med(solo),
           "rounds_ratio": r2 / r1 if r1 and r2 else None,
           "disto_scaling": sp2 / 2 / sp1 if sp1 and sp2 else None,
           "measured_ratio": t2 / t1 if t1 and t2 else None}
    if out["rounds_ratio"]:
        out["predicted_bare"] = out["rounds_ratio"] / out["machine_scaling"]
        if out["disto_scaling"]:
            out["predicted_disto"] = out["rounds_ratio"] / out["disto_scaling"]
    print("\nwhere EAMSGD p=2's time goes (medians):")
    print(f"  one bare worker process alone: {out['solo_steps_per_s']:,.0f} steps/s; each of two at once: "
          f"{out['pair_steps_per_s']:,.0f} steps/s ({out['machine_scaling']:.2f}x: the machine's own scaling)")
    if out["disto_scaling"]:
        print(f"  in the real runs each EAMSGD worker did {out['disto_scaling']:.2f}x the samples/s of MSGD's one")
    if out.get("predicted_bare"):
        print(f"  virtual time: p=2 needs {out['rounds_ratio']:.2f}x the rounds of p=1; so the best ratio this "
              f"machine allows is {out['rounds_ratio']:.2f} / {out['machine_scaling']:.2f} = "
              f"{out['predicted_bare']:.2f}x, and with the workers' measured rate "
              f"{out.get('predicted_disto') or float('nan'):.2f}x; measured {fmt(out['measured_ratio'], '.2f')}x")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=90)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--eval-stride", type=int, default=4,
                    help="evaluate every n-th 0.5 s snapshot of the center while training (default 4; 1: all)")
    ap.add_argument("--algorithms", type=lambda s: s.split(","), default=[a for a, _ in CONFIGS],
                    help="which of msgd,eamsgd,allreduce,downpour to run (default: all)")
    ap.add_argument("--real-only", action="store_true",
                    help="only the real runs: no virtual-time sweep, no step-rate breakdown")
    args = ap.parse_args()
    configs = [(a, p) for a, p in CONFIGS if a in args.algorithms]
    seeds = 1 if args.quick else args.seeds
    seconds = 15 if args.quick else args.seconds
    os.makedirs(args.out, exist_ok=True)
    mnist1d(NUM_SAMPLES)

    real = []
    for seed in range(seeds):
        for algo, p in configs:  # interleaved: A B C A B C
            r = disto.run(real_run(algo, p, seed, seconds, args.eval_stride))
            real.append(r)
            print(f"  {algo:>8} p={p} seed={seed}: best {100 * r['best']:.1f}%, 90% after {fmt(r['t90'])} s, "
                  f"comm {100 * r['comm']:.1f}%, load {r['load_before']:.2f}", flush=True)

    d = mnist1d(NUM_SAMPLES)
    x, y, xt, yt = (torch.from_numpy(d[k]) for k in ("x", "y", "x_test", "y_test"))
    sweep = []
    ps = [] if args.real_only else [1, 2, 4] if args.quick else [1, 2, 4, 8, 16]
    rounds = 2500 if args.quick else 20_000
    target = 0.75 if args.quick else 0.90  # the smoke test only checks that the sweep runs
    for seed in range(seeds):
        for p in ps:
            cfg = EASGDConfig(algorithm="msgd" if p == 1 else "eamsgd", workers=p, tau=10, seed=seed)
            t0 = time.perf_counter()
            res = simulate(cfg, mlp, x, y, xt, yt, rounds=rounds, eval_every=250, target=target)
            sweep.append({"workers": p, "seed": seed, "rounds_to_90": res["rounds_to_target"],
                          "seconds": time.perf_counter() - t0})
            print(f"  virtual p={p:>2} seed={seed}: {100 * target:.0f}% after {res['rounds_to_target']} rounds",
                  flush=True)

    base = med([r["t90"] for r in real if r["algorithm"] == "msgd"])
    print(f"\nEA-SGD on disto, MNIST-1D 60k, MLP 40-256-256-10  {time.strftime('%Y-%m-%d %H:%M')}  "
          f"{os.cpu_count()} cores  seeds={seeds}  (medians)")
    print(f"{'configuration':<22} {'best':>6} {'to 88% s':>9} {'to 90% s':>9} {'vs MSGD':>8} {'samples/s':>10} "
          f"{'comm':>6}")
    for algo, p in configs:
        rs = [r for r in real if r["algorithm"] == algo and r["workers"] == p]
        t90 = med([r["t90"] for r in rs])
        ratio = f"{t90 / base:.2f}x" if t90 and base else "-"
        print(f"{algo + ' p=' + str(p):<22} {100 * med([r['best'] for r in rs]):>5.1f}% "
              f"{fmt(med([r['t88'] for r in rs])):>9} {fmt(t90):>9} {ratio:>8} "
              f"{fmt(med([r['samples_per_s'] for r in rs]), ',.0f'):>10} {100 * med([r['comm'] for r in rs]):>5.1f}%")
    r1 = med([s["rounds_to_90"] for s in sweep if s["workers"] == 1])
    print(f"\nvirtual time (zero communication cost), rounds to {100 * target:.0f}%:")
    for p in ps:
        rp = med([s["rounds_to_90"] for s in sweep if s["workers"] == p])
        print(f"  p={p:>2}: {fmt(rp, '.0f'):>6} rounds  ({fmt(rp / r1 if rp and r1 else None, '.2f')}x of p=1)")
    where = {} if args.real_only else where_time_goes(real, sweep, 2.0 if args.quick else 10.0)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "eval_stride": args.eval_stride, "real": real,
              "virtual": sweep, "where": where}
    with open(os.path.join(args.out, "easgd.json"), "w") as f:
        json.dump(result, f, indent=1)
    try:
        plot(real, sweep, os.path.join(args.out, "easgd.png"))
    except ImportError:
        print("(matplotlib not installed: no plot)")


def plot(real: list, sweep: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = {"msgd": "C0", "eamsgd": "C1", "downpour": "C2", "allreduce": "C3"}
    for r in real:
        t = [c[0] for c in r["curve"]]
        a = [100 * c[2] for c in r["curve"]]
        ax1.plot(t, a, color=colors[r["algorithm"]], alpha=0.7,
                 label=f"{r['algorithm']} p={r['workers']}" if r["seed"] == 0 else None)
    ax1.axhline(90, color="gray", lw=0.8, ls="--")
    ax1.set_xlabel("wall-clock seconds")
    ax1.set_ylabel("center test accuracy (%)")
    ax1.set_ylim(60, 95)
    ax1.legend()
    ax1.grid(alpha=0.3)
    ps = sorted({s["workers"] for s in sweep})
    meds = [med([s["rounds_to_90"] for s in sweep if s["workers"] == p]) for p in ps]
    ax2.plot(ps, meds, "o-")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("workers p (virtual time)")
    ax2.set_ylabel("rounds to 90%")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
