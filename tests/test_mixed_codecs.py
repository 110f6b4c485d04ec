"""A node on the pure-Python codec and one on the compiled codec in one cluster (a machine without a C compiler
joining others): every kind of message they exchange must cross both ways, since both write the same bytes."""
from __future__ import annotations

import pytest
import torch

import disto
from disto.wire import codec
from helpers import NODE_ENV

pytestmark = pytest.mark.skipif(codec.IMPLEMENTATION != "compiled",
                                reason="needs the compiled codec here (the driver) to mix it with the pure one")


class Probe(disto.Actor):
    def codec(self) -> str:
        from disto.wire import codec as c

        return c.IMPLEMENTATION

    def total(self, t: torch.Tensor) -> float:
        return float(t.sum())

    def echo(self, x: object) -> object:
        return x

    def fail(self) -> None:
        raise KeyError("missing")

    async def count(self, n: int):  # noqa: ANN201 - a stream
        for i in range(n):
            yield i


async def test_pure_and_compiled_nodes_exchange_every_kind_of_message() -> None:
    env = dict(NODE_ENV, DISTO_PURE_PYTHON="1")
    async with disto.LocalCluster(nodes=2, env=env) as cluster:
        pure = await cluster.nodes[0].spawn(Probe)
        other = await cluster.nodes[1].spawn(Probe)
        assert await pure.codec() == "python" and await other.codec() == "python"
        assert codec.IMPLEMENTATION == "compiled"  # the driver's node: calls cross between the two codecs
        assert await pure.echo(("x" * 10, 7, None)) == ("x" * 10, 7, None)
        big = "y" * (3 << 20)  # a pickle stream out of band
        assert await pure.echo(big) == big
        t = torch.arange(1 << 18, dtype=torch.float32)  # 1 MB: through shared memory, a SHM descriptor
        assert await pure.total(t) == float(t.sum())
        with disto.transfer("tcp"):  # the same bytes inline, after the body
            assert await pure.total(t) == float(t.sum())
        shared = disto.shared_tensor(1 << 18)  # by reference: a SHM_SHARED descriptor
        shared.fill_(2.0)
        assert await pure.total(shared) == 2.0 * (1 << 18)
        back = await pure.echo(t)  # a tensor in the reply, from the pure node to the compiled one
        assert torch.equal(back, t)
        with pytest.raises(KeyError):
            await pure.fail()
        assert [i async for i in pure.count(5)] == [0, 1, 2, 3, 4]
        # an actor ref crosses too
        assert await other.echo(pure) == pure
