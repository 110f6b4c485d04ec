"""A driver interrupted with Ctrl-C while it waits on a long call: it must end with KeyboardInterrupt and stop
its cluster cleanly."""
import asyncio
import faulthandler
import signal

import disto

faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for every thread's stack if this hangs


class Slow(disto.Actor):
    async def work(self) -> str:
        await asyncio.sleep(60)
        return "done"


async def main() -> None:
    async with disto.LocalCluster(nodes=2) as cluster:
        slow = await cluster.nodes[1].spawn(Slow)
        print("ready", " ".join(str(h.pid) for h in cluster.nodes), flush=True)
        await slow.work()


disto.run(main())
