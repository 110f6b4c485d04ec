"""Low-communication training on disto: a small GPT on the Python standard library's own source, with DiLoCo,
Streaming DiLoCo and the all-reduce baseline, on a local cluster this script starts.

    python examples/lowcomm/train_lm.py                                   # diloco, streaming_diloco, ddp; 4 workers
    python examples/lowcomm/train_lm.py --algorithms diloco --size base   # the 3.3M-parameter model
    python examples/lowcomm/train_lm.py --algorithms async_diloco --slow 1=0.05   # worker 1 slower
    python examples/lowcomm/train_lm.py --connect 127.0.0.1:7000          # a running cluster (DISTO_TOKEN set)

The corpus is the standard library's .py files (no download), split by file into train and validation and cached
in ~/.cache/disto. Every algorithm trains from the same initial weights on the same number of samples. Writes
history.json (every run: validation loss over time, bytes per worker and per round) and loss.png (validation
loss against wall time and against bytes communicated) to --out (default lowcomm-out/).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import disto
from disto.lowcomm import ALGORITHMS, Config, History, LMTask, Trainer, gpu_each, lm_loss, plot_runs
from disto.lowcomm.lm import parameters


def progress(total: int, label: str):
    """A tqdm bar over each worker's inner steps (a printed line per evaluation without tqdm)."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    bar = tqdm(total=total, desc=f"{label:>17}", unit="step") if tqdm else None

    def on_eval(e: dict) -> None:
        text = f"val loss {e['loss']:.3f} | {e['bytes'] / 1e6:9.2f} MB sent+received"
        if bar is not None:
            bar.n = round(e["progress"] * total)
            bar.set_postfix_str(text)  # refreshes
        else:
            print(f"{label} {100 * e['progress']:5.1f}% | {text} | {e['time']:.1f} s", flush=True)
    return on_eval, bar


def delays(text: str | None) -> dict[int, float]:
    """"1=0.05,2=0.1" -> {1: 0.05, 2: 0.1} (seconds of sleep after each inner step of that worker)"""
    if not text:
        return {}
    try:
        return {int(k): float(v) for k, v in (p.split("=", 1) for p in text.split(",") if p.strip())}
    except ValueError:
        raise SystemExit(f"--slow takes RANK=SECONDS,..., not {text!r}") from None


async def main(args: argparse.Namespace) -> int:
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    bad = [a for a in algorithms if a not in ALGORITHMS]
    if bad:
        raise SystemExit(f"unknown algorithm {bad[0]!r}: choose from {', '.join(ALGORITHMS)}")
    if args.workers is None:  # one per GPU with --device cuda, else 4
        args.workers = torch.cuda.device_count() if args.device == "cuda" else 4
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here (a CPU build of torch, or no GPU)")
    task = LMTask.sized(args.size)
    task.validation()  # build and cache the corpus once, before the nodes need it
    os.makedirs(args.out, exist_ok=True)
    print(f"TinyGPT {args.size}: {parameters(task.model()) / 1e6:.2f}M parameters, context {task.gpt.context}; "
          f"{args.workers} workers x {args.rounds} rounds x {args.inner_steps} inner steps x batch "
          f"{args.batch_size}", flush=True)
    # --device cuda: one node per GPU of this host (LocalCluster(gpus_per_node=1)), each worker holding one; more
    # workers than GPUs share the first one (and ddp all-reduces over gloo: NCCL wants a GPU per rank)
    share = args.device == "cuda" and not args.connect and not gpu_each(args.workers)
    per_gpu = args.device == "cuda" and not share
    nodes = args.nodes or (None if per_gpu else args.workers)
    gpus = {"gpus_per_node": 1} if per_gpu else {}
    cluster_cm = disto.connect(args.connect) if args.connect else disto.LocalCluster(
        nodes=nodes, dashboard=args.dashboard, **gpus)
    runs: dict[str, History] = {}
    async with cluster_cm as cluster:
        if cluster.dashboard_link:
            print(f"dashboard: {cluster.dashboard_link}", flush=True)
        for algorithm in algorithms:
            cfg = Config(algorithm=algorithm, workers=args.workers, inner_steps=args.inner_steps,
                         rounds=args.rounds, batch_size=args.batch_size, inner_lr=args.lr,
                         warmup_steps=args.warmup, seed=args.seed, step_delay=delays(args.slow),
                         device=args.device, worker_resources={"gpu": 1} if per_gpu else None,
                         ddp_backend="gloo" if share else None,
                         **({"compression": args.compression} if args.compression else {}))
            on_eval, bar = progress(cfg.total_steps, algorithm)
            ckpt = os.path.join(args.out, f"{algorithm}.pt")
            trainer = Trainer(cluster, cfg, task.model, task.data, task.evaluate, loss_fn=lm_loss,
                              checkpoint=ckpt, resume=ckpt if args.resume and os.path.exists(ckpt) else None,
                              eval_every=args.eval_every)
            t0 = time.perf_counter()
            h = runs[algorithm] = await trainer.run(on_eval=on_eval)
            if bar is not None:
                bar.close()
            print(f"{algorithm:>17}: val loss {h.final_loss:.4f} (best {h.best_loss:.4f}) in "
                  f"{time.perf_counter() - t0:.1f} s; {h.bytes_total / 1e6:.2f} MB communicated, peak "
                  f"{h.peak_exchange_bytes / 1e6:.3f} MB per exchange", flush=True)
    with open(os.path.join(args.out, "history.json"), "w") as f:
        json.dump({a: h.to_dict() for a, h in runs.items()}, f, indent=1)
    plot_runs(runs, os.path.join(args.out, "loss.png"),
              f"TinyGPT {args.size} on the stdlib's source, {args.workers} workers")
    if "ddp" in runs and len(runs) > 1:
        base = runs["ddp"]
        for a, h in runs.items():
            if a != "ddp":
                print(f"{a:>17}: loss {100 * (h.final_loss / base.final_loss - 1):+.2f}% vs ddp, "
                      f"{base.bytes_total / max(h.bytes_total, 1):.0f}x fewer bytes", flush=True)
    print(f"results in {args.out}/ (history.json, loss.png)", flush=True)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algorithms", default="diloco,streaming_diloco,ddp",
                    help=f"comma-separated, run in turn; from {', '.join(ALGORITHMS)}")
    ap.add_argument("--size", default="tiny", choices=["tiny", "small", "base"],
                    help="tiny 0.44M, small 1.9M, base 3.3M parameters")
    ap.add_argument("--workers", type=int, default=None,
                    help="default 4 (--device cuda: one per GPU; more than the GPUs share the first)")
    ap.add_argument("--nodes", type=int, default=None, help="node processes of the local cluster (default: workers)")
    ap.add_argument("--inner-steps", type=int, default=50, help="H: inner steps between exchanges")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3, help="inner AdamW learning rate (cosine decay)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=1, help="evaluate (and checkpoint) after every N rounds")
    ap.add_argument("--compression", choices=["fp32", "fp16", "bf16", "int8"],
                    help="what exchanges carry (default: fp16 for streaming_diloco, else fp32)")
    ap.add_argument("--slow", metavar="RANK=SECONDS,...", help="make workers slower (sleep after each step)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: each worker on a GPU of its own (the local cluster gets one node per GPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="go on from the checkpoints in --out")
    ap.add_argument("--connect", help="HOST:PORT of a running cluster's seed instead of a local cluster")
    ap.add_argument("--dashboard", metavar="HOST:PORT", help="serve the live dashboard there")
    ap.add_argument("--out", default="lowcomm-out")
    sys.exit(disto.run(main(ap.parse_args())))
