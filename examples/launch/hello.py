"""Run under a launcher: DISTO_TOKEN=$(python -c 'import disto; print(disto.new_token())') \\
       torchrun --nproc-per-node=2 -m disto.launch examples/launch/hello.py"""
import os
import socket

import disto
from disto import launch


class Where(disto.Actor):
    def where(self) -> tuple[str, str, int]:
        return os.environ.get("RANK") or os.environ.get("SLURM_PROCID", "?"), socket.gethostname(), os.getpid()


async def main() -> None:
    async with launch.connect() as cluster:
        refs = [await node.spawn(Where) for node in cluster.nodes]
        answers = await disto.collect([r.where() for r in refs])
        for rank, host, pid in sorted(answers):
            print(f"rank {rank}: node on {host}, pid {pid}")
        print("ranks", sorted(rank for rank, _, _ in answers))


disto.run(main())
