"""A researcher's own program: a driver that imports its actors from a module next to it (not installed on the
nodes). Run from another directory: python3 proj/driver.py [local | SEED_ADDRESS]."""
import sys
import types

import disto
from myactors import Counter, OutOfStock, Shop, Store
from myutils import Order


async def main(where: str) -> None:
    if where == "local":
        cluster_cm = disto.LocalCluster(nodes=2)
    else:
        cluster_cm = disto.connect(where)
    async with cluster_cm as cluster:
        c = await cluster.nodes[-1].spawn(Counter, 10)
        print("counter", await c.add(5))
        order = await c.stamp(Order("widget", 2))  # a dataclass of myutils, there and back
        print("order", type(order).__module__, order.item, order.qty, order.stamped)
        store = await cluster.nodes[-1].spawn(Store)
        shop = await cluster.nodes[0].spawn(Shop)
        try:
            await shop.buy(store, "widget", 5)  # driver -> shop -> store raises
        except OutOfStock as e:
            print("caught", type(e).__name__, e.item, e.wanted, e.args)
            print("notes", len(e.__notes__), "myactors.py" in e.__notes__[0], "raise OutOfStock" in e.__notes__[0])
        ghost = types.ModuleType("ghostmod")  # a module with no source file: nothing to ship
        exec("class Ghost:\n    pass\n", ghost.__dict__)
        sys.modules["ghostmod"] = ghost
        try:
            await c.echo(ghost.Ghost())
        except disto.SerializationError as e:
            print("unloadable", "'ghostmod'" in str(e), "on node" in str(e), "PYTHONPATH" in str(e))


disto.run(main(sys.argv[1] if len(sys.argv) > 1 else "local"))
