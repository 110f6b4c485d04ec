"""A/B: the core benchmark on two versions of disto, side by side in one run, interleaved.

    python bench/ab.py --before 0a9fe29                 # a git revision (checked out in a temporary worktree)
    python bench/ab.py --before /path/to/other/tree     # or a source tree
    python bench/ab.py --before HEAD~3 --rounds 7 --json ab.json

Each round runs ``bench/core.py`` (this tree's script, so both sides run the same workload) once per version,
in a fresh process whose ``PYTHONPATH`` points at that version's sources (the node processes it starts inherit
it), alternating which goes first. Medians over rounds are printed with the ratio after/before and the range of
the per-round ratios. ``--cpus 0,1`` runs everything under ``taskset -c 0,1``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORE = os.path.join(HERE, "core.py")
ROWS = [("w1_p50", "W1 round trip p50 (µs)", False), ("w1_p99", "W1 round trip p99 (µs)", False),
        ("w2", "W2 pipelined calls/s", True), ("w3", "W3 2 callers -> 1 actor, calls/s", True),
        ("local", "local call (µs)", False), ("w1_loop", "W1 p50, @on_loop method (µs)", False),
        ("w2_loop", "W2 calls/s, @on_loop method", True), ("w1_async", "W1 p50, async method (µs)", False),
        ("w2_async", "W2 calls/s, async method", True)]


def tree_of(spec: str, tmp: str) -> str:
    """A source tree for ``spec``: a directory as it is, or a git revision checked out under ``tmp``."""
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    path = os.path.join(tmp, "before")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, spec], check=True,
                   capture_output=True)
    return path


def run_core(tree: str, args: list[str], cpus: str | None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = dict(os.environ, PYTHONPATH=tree + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, CORE, "--repeat", "1", "--json", out.name, *args]
        if cpus:
            cmd = ["taskset", "-c", cpus, *cmd]
        # cwd too: `python -m disto node start` (the node processes) puts the working directory first on sys.path
        subprocess.run(cmd, env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL)
        result = json.load(open(out.name))
        medians = dict(result["median"], codec=result.get("codec", "python"))
        for row in result.get("pinned", []):  # the pinned rows (same core, cross core), by their name
            medians["pinned " + row["workload"]] = row["disto"]
            medians["pinned floor " + row["workload"]] = row["raw"]
        return medians


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="git revision or source tree")
    ap.add_argument("--after", default=ROOT, help="source tree (default: this one)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cpus", help="taskset CPU list for every process, e.g. 0,1")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--json", help="write every round's medians here")
    a = ap.parse_args()
    core_args = ["--quick"] if a.quick else []
    with tempfile.TemporaryDirectory() as tmp:
        before = tree_of(a.before, tmp)
        try:
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for r in range(a.rounds):
                order = [("before", before), ("after", a.after)]
                for label, tree in (order if r % 2 == 0 else order[::-1]):
                    runs[label].append(run_core(tree, core_args, a.cpus))
                    print(f"round {r + 1}/{a.rounds} {label}: W1 p50 {runs[label][-1]['w1_p50']:.1f} µs, "
                          f"W2 {runs[label][-1]['w2']:,.0f}/s", flush=True)
        finally:
            if before.startswith(tmp):
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", before], capture_output=True)
    print(f"\ndisto A/B  {time.strftime('%Y-%m-%d %H:%M')}  before={a.before} ({runs['before'][0]['codec']} codec)  "
          f"after={a.after} ({runs['after'][0]['codec']} codec)  rounds={a.rounds} (medians; ratio = after/before, "
          f"range of per-round ratios)")
    print(f"{'workload':<44} {'before':>12} {'after':>12} {'ratio':>8}  range")
    pinned = [k for k in runs["after"][0] if k.startswith("pinned ") and not k.startswith("pinned floor ")
              and all(k in m for m in runs["before"])]
    for key, name, _higher_better in ROWS + [(k, k, True) for k in pinned]:
        b = [m[key] for m in runs["before"]]
        f = [m[key] for m in runs["after"]]
        ratios = [y / x for x, y in zip(b, f)]
        print(f"{name:<44} {statistics.median(b):>12,.1f} {statistics.median(f):>12,.1f} "
              f"{statistics.median(f) / statistics.median(b):>7.3f}x  {min(ratios):.3f}-{max(ratios):.3f}")
    for key in pinned:  # each pinned row against its echo floor, measured in the same run
        floor = "pinned floor " + key.removeprefix("pinned ")
        for label in ("before", "after"):
            ratios = [m[key] / m[floor] for m in runs[label]]
            print(f"{key.removeprefix('pinned ') + ' / echo, ' + label:<58} {statistics.median(ratios):>7.2f}x")
    print(f"load average: {os.getloadavg()}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"before": a.before, "after": a.after, "runs": runs}, fh, indent=2)


if __name__ == "__main__":
    main()
