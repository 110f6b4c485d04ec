"""Instructions per call, counted by valgrind's callgrind: a measure of the runtime's own CPU cost per call that
does not depend on what else the machine is doing (the same binary and inputs give the same count).

    python bench/instructions.py                        # this tree
    python bench/instructions.py --before 0a9fe29       # and a git revision (or a source tree), side by side

Two nodes in one process and one event loop, N sequential round trips of an empty call from one to an actor on
the other over loopback TCP: both sides of the wire, no wake-ups (``--method``: which kind of method it calls;
``--payload``: what it carries there and back, an int or a tensor). It runs N1 and N2 calls and reports
(instructions(N2) - instructions(N1)) / (N2 - N1), which cancels start-up and shutdown. Needs valgrind
(Debian: apt-get install valgrind); about a minute per tree.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKLOAD = '''
import sys, disto

on_loop = getattr(disto, "on_loop", lambda fn: fn)  # (older disto ran every method on the loop)

class Echo(disto.Actor):
    def ping(self, x):
        return x

class EchoOnLoop(disto.Actor):
    @on_loop
    def ping(self, x):
        return x

class EchoAsync(disto.Actor):
    async def ping(self, x):
        return x

async def main(n):
    token = "instructions-token-0123456789"
    a = disto.Node(token); await a.start()
    b = disto.Node(token, seed=a.address); await b.start()
    cls = {"sync": Echo, "loop": EchoOnLoop, "async": EchoAsync}[sys.argv[2]]
    ref = await disto.NodeHandle({"node_id": b.node_id, "address": b.address}, a).spawn(cls)
    payload = sys.argv[3]
    if payload == "int":
        for i in range(n):
            await ref.ping(i)
        await b.stop(); await a.stop()
        return
    import torch
    x = {"tiny-tensor": lambda: torch.ones(1), "tensor-1mb": lambda: torch.ones(1 << 18),
         "ndarray-1mb": lambda: torch.ones(1 << 18).numpy(),
         "shared-1mb": lambda: torch.frombuffer(a.buffers.exporter.allocate_shared(1 << 20)[0],
                                                dtype=torch.float32)}[payload]()
    for i in range(n):
        await ref.ping(x)
    await b.stop(); await a.stop()

disto.run(main(int(sys.argv[1])))
'''


def count(tree: str, n: int, script: str, method: str, payload: str = "int") -> int:
    env = dict(os.environ, PYTHONPATH=tree, PYTHONHASHSEED="0")
    python = os.path.realpath(sys.executable)  # not a shim script: valgrind must start Python itself
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python, script,
                          str(n), method, payload], env=env, cwd=tree, capture_output=True, text=True, check=True)
    m = re.search(r"Collected : (\d+)", out.stderr)
    if not m:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(m.group(1))


def tree_of(spec: str, tmp: str) -> str:
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    path = os.path.join(tmp, "tree")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, spec], check=True, capture_output=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="a git revision or source tree to measure next to this one")
    ap.add_argument("--calls", type=int, nargs=2, default=(200, 10200), metavar=("N1", "N2"))
    ap.add_argument("--method", choices=("loop", "async", "sync"), default="loop",
                    help="the actor's ping: @on_loop (the call path alone, default), async, or a plain sync method "
                         "(on its actor's thread: the count then includes the hand-over)")
    ap.add_argument("--payload", choices=("int", "tiny-tensor", "tensor-1mb", "ndarray-1mb", "shared-1mb"),
                    default="int",
                    help="what each call carries there and back: an int (default), a 1-element tensor, 1 MB "
                         "as a tensor or a numpy array (through shared memory: both nodes are on this host), or "
                         "1 MB of memory that is shared already (what disto.shared_tensor makes: by reference)")
    a = ap.parse_args()
    n1, n2 = a.calls
    if n2 - n1 < 5000:
        print(f"(only {n2 - n1} calls apart: start-up noise, about 20M instructions, dominates; a smoke test)")
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "workload.py")
        with open(script, "w") as fh:
            fh.write(WORKLOAD)
        trees = [("this tree", ROOT)]
        if a.before:
            trees.insert(0, (a.before, tree_of(a.before, tmp)))
        results = []
        try:
            for label, tree in trees:
                per_call = (count(tree, n2, script, a.method, a.payload)
                            - count(tree, n1, script, a.method, a.payload)) / (n2 - n1)
                results.append(per_call)
                print(f"{label:<24} {per_call:>12,.0f} instructions per round trip (both sides)", flush=True)
        finally:
            for label, tree in trees:
                if tree.startswith(tmp):
                    subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], capture_output=True)
    if len(results) == 2:
        print(f"ratio this/before: {results[1] / results[0]:.3f}")


if __name__ == "__main__":
    main()
