"""EA-SGD on disto: train an MLP on MNIST-1D with elastic averaging, on a local cluster this script starts.

    python examples/easgd/train.py                      # EAMSGD, 2 workers, tau 10, until 90% or 3 minutes
    python examples/easgd/train.py --algorithm msgd --workers 1      # the single-worker baseline
    python examples/easgd/train.py --connect 127.0.0.1:7000          # on a running cluster (DISTO_TOKEN set)

Writes a JSON history and a PNG of center accuracy against time and against samples (--out, default
easgd-out/). The data set (60k samples) is generated offline by the mnist1d package the first time (about 20 s)
and cached in ~/.cache/disto.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import disto
from disto.easgd import EASGDConfig, Trainer, mlp, mnist1d

NUM_SAMPLES = 60_000


def train_data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs on each worker's node: every worker samples the whole training set (with its own seed)."""
    d = mnist1d(NUM_SAMPLES)
    return torch.from_numpy(d["x"]), torch.from_numpy(d["y"])


def plot(history, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [e["time"] for e in history.evals]
    s = [e["samples"] for e in history.evals]
    a = [100 * e["accuracy"] for e in history.evals]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    label = f"{history.config['algorithm']} p={history.config['workers']} tau={history.config['tau']}"
    ax1.plot(t, a, label=label)
    ax2.plot(s, a, label=label)
    for ax, xl in ((ax1, "wall-clock seconds"), (ax2, "training samples (all workers)")):
        ax.axhline(90, color="gray", lw=0.8, ls="--")
        ax.set_xlabel(xl)
        ax.set_ylabel("center test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("EA-SGD on disto, MNIST-1D, MLP 40-256-256-10")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def amounts(text: str | None) -> dict[str, float] | None:
    """"gpu=1,ssd=1" -> {"gpu": 1.0, "ssd": 1.0}"""
    if not text:
        return None
    return {k.strip(): float(v) for k, v in (part.split("=", 1) for part in text.split(",") if part.strip())}


async def main(args: argparse.Namespace) -> int:
    d = mnist1d(NUM_SAMPLES)  # generate and cache once, before the workers need it
    test = torch.from_numpy(d["x_test"]), torch.from_numpy(d["y_test"])
    cfg = EASGDConfig(algorithm=args.algorithm, workers=args.workers, tau=args.tau, prefetch=args.prefetch, lr=args.lr,
                      seed=args.seed, eval_interval=args.eval_interval,
                      worker_resources=amounts(args.worker_resources), shard_resources=amounts(args.shard_resources))
    cluster_cm = disto.connect(args.connect) if args.connect else disto.LocalCluster(nodes=args.nodes,
                                                                                    dashboard=args.dashboard)
    os.makedirs(args.out, exist_ok=True)
    async with cluster_cm as cluster:
        if cluster.dashboard_link:
            print(f"dashboard: {cluster.dashboard_link}", flush=True)
        try:
            from tqdm import tqdm
            bar = tqdm(total=100, unit="%", bar_format="{desc} |{bar}| {n:.1f}% center accuracy [{elapsed}]")
        except ImportError:
            bar = None
        last = [time.perf_counter(), 0]

        def on_eval(e: dict) -> None:
            now = time.perf_counter()
            rate = (e["samples"] - last[1]) / max(now - last[0], 1e-9)
            last[:] = [now, e["samples"]]
            desc = f"step {e['steps']:>7,} | {rate:>8,.0f} samples/s | comm {100 * e['comm_fraction']:4.1f}%"
            if bar is not None:
                bar.set_description_str(desc)
                bar.n = 100 * e["accuracy"]
                bar.refresh()
            else:
                print(f"{desc} | center accuracy {100 * e['accuracy']:.1f}%", flush=True)

        trainer = Trainer(cluster, cfg, mlp, train_data, test, checkpoint=os.path.join(args.out, "center.pt"))
        history = await trainer.run(seconds=args.seconds, target=args.target, on_eval=on_eval)
        if bar is not None:
            bar.close()
    history.save(os.path.join(args.out, "history.json"))
    plot(history, os.path.join(args.out, "accuracy.png"))
    t90 = history.time_to(0.9)
    print(f"best center accuracy {100 * history.best:.1f}%; reached 90% "
          f"{'after %.1f s and %s samples' % (t90, f'{history.samples_to(0.9):,}') if t90 else 'not yet'}; "
          f"communication {100 * max((w['comm_fraction'] for w in history.workers), default=0):.1f}% of step "
          f"time; results in {args.out}/")
    return 0 if history.best >= args.target or not args.require_target else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algorithm", default="eamsgd", choices=["eamsgd", "easgd", "msgd", "downpour"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=2, help="node processes of the local cluster")
    ap.add_argument("--tau", type=int, default=10)
    ap.add_argument("--prefetch", type=int, default=None, help="steps ahead of the exchange (default 5)")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--eval-interval", type=float, default=1.0)
    ap.add_argument("--connect", help="HOST:PORT of a running cluster's seed instead of a local cluster")
    ap.add_argument("--worker-resources", metavar="NAME=N,...",
                    help="what each worker holds, e.g. gpu=1 (nodes offer it: disto node start --resources gpu=4)")
    ap.add_argument("--shard-resources", metavar="NAME=N,...",
                    help="what each center shard holds, e.g. ps=1 (CPU-only parameter servers labelled ps)")
    ap.add_argument("--out", default="easgd-out")
    ap.add_argument("--dashboard", metavar="HOST:PORT", help="serve the live dashboard there (e.g. 127.0.0.1:8265): "
                    "the workers and center shards show as actors")
    ap.add_argument("--require-target", action="store_true", help="exit 1 unless the target was reached")
    sys.exit(disto.run(main(ap.parse_args())))
