"""Same-host transfers through shared memory: placement, value and reference semantics, leases, cleanup."""
from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch

import disto
from disto.memory import janitor
from disto.memory.segments import PREFIX
from disto.serialization import Route, ShmExporter, ShmImporter, route, route_on_host
from helpers import MB, eventually, nodes, spawn



@pytest.mark.parametrize("facts,mode,expected", [
    (dict(same_process=True, same_host=True, is_cuda=False, already_shared=False, size=MB), "auto", Route.OBJECT),
    (dict(same_process=True, same_host=True, is_cuda=True, already_shared=False, size=MB), "tcp", Route.OBJECT),
    (dict(same_process=False, same_host=True, is_cuda=False, already_shared=False, size=MB), "auto", Route.SHM),
    (dict(same_process=False, same_host=True, is_cuda=False, already_shared=False, size=100), "auto", Route.INLINE),
    (dict(same_process=False, same_host=True, is_cuda=False, already_shared=False, size=100), "shm", Route.SHM),
    (dict(same_process=False, same_host=True, is_cuda=False, already_shared=True, size=100), "auto",
     Route.SHM_SHARED),
    (dict(same_process=False, same_host=True, is_cuda=False, already_shared=True, size=MB), "tcp", Route.INLINE),
    (dict(same_process=False, same_host=True, is_cuda=False, already_shared=False, size=MB), "tcp", Route.INLINE),
    (dict(same_process=False, same_host=True, is_cuda=True, already_shared=False, size=MB), "auto",
     Route.CUDA_IPC),
    (dict(same_process=False, same_host=True, is_cuda=True, already_shared=False, size=MB), "tcp",
     Route.CUDA_VIA_HOST),
    (dict(same_process=False, same_host=False, is_cuda=True, already_shared=False, size=MB), "auto",
     Route.CUDA_VIA_HOST),
    (dict(same_process=False, same_host=False, is_cuda=False, already_shared=True, size=MB), "shm", Route.INLINE),
    (dict(same_process=False, same_host=False, is_cuda=False, already_shared=False, size=MB), "auto", Route.INLINE),
])
def test_placement_table(facts: dict, mode: str, expected: Route) -> None:
    assert route(mode=mode, shm_min=1 << 16, **facts) is expected
    if facts["same_host"] and not facts["same_process"] and not facts["is_cuda"]:
        # the per-buffer hot path's own entry (a CPU buffer to another process on this host) agrees
        assert route_on_host(facts["already_shared"], facts["size"], mode, 1 << 16) is expected


def test_placement_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError):
        route(same_process=False, same_host=True, is_cuda=False, already_shared=False, size=1, mode="udp")


def disto_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(PREFIX)}


def test_buffer_address_is_the_first_byte_of_the_buffer() -> None:
    # the key of every shared-memory lookup: the compiled one (when built) and numpy's must agree on every buffer
    from disto.serialization import shm
    from disto.wire.codec import compiled_buffer_address

    arr = np.arange(64, dtype=np.uint8)
    t = torch.arange(16, dtype=torch.float32)
    cases = [bytearray(b"abc"), memoryview(arr)[5:], arr, t.numpy(), memoryview(t.numpy()).cast("B")[8:], b"xyz",
             memoryview(b"readonly bytes"), b"", bytearray()]
    for buf in cases:
        want = shm._numpy_buffer_address(buf)
        assert shm.buffer_address(buf) == want
        if compiled_buffer_address is not None:
            assert compiled_buffer_address(buf) == want
    assert shm.buffer_address(memoryview(arr)[5:]) == arr.ctypes.data + 5
    assert shm.buffer_address(b"") == 0


def test_exporter_reuses_released_segments_and_cleans_up() -> None:
    before = disto_segments()
    ex, im = ShmExporter(), ShmImporter()
    a = np.arange(MB // 8, dtype=np.float64)
    name, off, n = ex.export_copy(memoryview(a))
    released = []
    mem = im.import_(name, off, n, lambda: released.append(name))
    got = np.frombuffer(mem, dtype=np.float64)
    assert np.array_equal(got, a) and got.flags.writeable
    del mem
    assert released == []  # the array still uses the block
    del got
    gc.collect()
    assert released == [name]
    ex.release(name)
    again, _, _ = ex.export_copy(memoryview(a))
    assert again == name and ex.stats()["segments"] == 1  # reused, not a new segment
    ex.close()
    im.close()
    assert disto_segments() == before


def test_one_segment_primitive_one_naming_scheme(tmp_path) -> None:
    from disto.memory import Segment, SegmentPool, is_segment_name, segment_name

    a, b = segment_name("buf"), segment_name("search")
    assert a.startswith(f"{PREFIX}{os.getpid()}-buf-") and is_segment_name(a) and is_segment_name(b, "search")
    assert int(b.rsplit("-", 1)[1]) > int(a.rsplit("-", 1)[1])  # one counter per process: never reused
    assert not is_segment_name(b, "buf") and not is_segment_name("../etc/passwd") and not is_segment_name("x")
    with pytest.raises(ValueError):
        segment_name("Bad-Word")
    seg = Segment.create("search", 1000, directory=str(tmp_path))
    assert (os.stat(seg.path).st_mode & 0o777) == 0o600 and seg.size == 1000
    seg.array(64, np.float32, (2, 3))[:] = 7
    other = Segment.open(seg.name, str(tmp_path), purpose="search")  # another process would do the same
    assert (other.array(64, np.float32, (2, 3)) == 7).all()
    for bad in ((3, np.float32, (1,)), (992, np.float32, (3,)), (-8, np.int64, (1,))):  # misaligned, past the end
        with pytest.raises(ValueError):
            other.array(*bad)
    with pytest.raises(ValueError, match="not a disto buf segment"):
        Segment.open(seg.name, str(tmp_path), purpose="buf")
    other.discard()
    seg.discard()
    assert not os.path.exists(seg.path)
    pool = SegmentPool("buf", min_size=4096, max_free=2, directory=str(tmp_path))
    s1, s2, s3 = pool.take(5000), pool.take(100), pool.take(100)
    assert (s1.size, s2.size) == (8192, 4096)  # powers of two, at least min_size
    for s_ in (s1, s2, s3):
        pool.give(s_)
    assert pool.free == [s2, s3] and not os.path.exists(s1.path)  # beyond max_free: the oldest goes
    assert pool.take(10) is s2 and pool.created == 3  # best fit, reused
    assert pool.free_bytes == 4096  # (s3 alone)
    pool.close()
    s2.discard()
    assert os.listdir(tmp_path) == [] and pool.free_bytes == 0


def test_segment_pool_keeps_at_most_max_free_bytes_oldest_out(tmp_path) -> None:
    from disto.memory import SegmentPool

    pool = SegmentPool("buf", min_size=4096, max_free_bytes=3 * 4096, directory=str(tmp_path))
    small = [pool.take(100) for _ in range(3)]
    big = pool.take(8192)
    for s_ in small:
        pool.give(s_)
    assert pool.free == small and pool.free_bytes == 3 * 4096  # at the limit: all kept
    pool.give(big)  # 5 pages: the two oldest go to make room
    assert pool.free == [small[2], big] and pool.free_bytes == 3 * 4096
    assert not os.path.exists(small[0].path) and not os.path.exists(small[1].path)
    assert pool.take(5000) is big and pool.free_bytes == 4096 and pool.created == 4
    pool.give(pool.take(1 << 20))  # larger than the limit on its own: not kept (it goes, with the others)
    assert pool.free == [] and pool.free_bytes == 0 and pool.created == 5
    pool.give(big)
    pool.close()
    assert os.listdir(tmp_path) == [] and pool.free_bytes == 0


def test_janitor_removes_segments_of_dead_processes(tmp_path) -> None:
    import subprocess
    import time

    zombie = subprocess.Popen(["true"])  # exits at once; not reaped until wait(): a zombie meanwhile
    while open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.001)
    killed = tmp_path / f"{PREFIX}{zombie.pid}-x-1"
    killed.write_bytes(b"x")
    assert janitor(str(tmp_path)) == [killed.name]  # a killed process its parent has not reaped yet is dead
    zombie.wait()
    dead = tmp_path / f"{PREFIX}999999999-x-1"
    dead.write_bytes(b"x")
    mine = tmp_path / f"{PREFIX}{os.getpid()}-x-1"
    mine.write_bytes(b"x")
    assert janitor(str(tmp_path)) == [dead.name]
    assert mine.exists() and not dead.exists()


def test_importer_refuses_paths_outside_shm() -> None:
    im = ShmImporter()
    with pytest.raises(disto.SerializationError):
        im.import_("../etc/passwd", 0, 1, None)
    with pytest.raises(disto.SerializationError):
        im.import_("not-disto", 0, 1, None)


class Keeper(disto.Actor):
    def __init__(self) -> None:
        self.kept: list = []

    def keep(self, x: object) -> float:
        self.kept.append(x)
        return float(x.sum())

    def kept_sum(self) -> float:
        return float(sum(float(x.sum()) for x in self.kept))

    def drop(self) -> None:
        self.kept.clear()
        gc.collect()

    def scale(self, t: torch.Tensor, k: float) -> None:
        t.mul_(k)  # in place: visible to the sender only if the memory is shared

    def kept_sum_of(self, x: torch.Tensor) -> float:  # runs on the actor's thread
        return float(x.sum())

    @disto.on_loop
    def scale_copy(self, x: torch.Tensor) -> float:  # runs inline on the loop
        return float((x * 2).sum())

    def echo(self, x: object) -> object:
        return x


async def test_value_semantics_and_block_reuse() -> None:
    async with nodes(2) as (a, b):
        k = await spawn(a, b, Keeper)
        x = torch.ones(MB)  # 4 MB
        assert await k.keep(x) == MB
        x.fill_(2.0)  # the sender changes its tensor after the call: the receiver has a value
        assert await k.kept_sum() == MB
        stats = a.buffers.exporter.stats()
        assert stats["copies"] == 1 and stats["leased"] == 1
        await k.drop()
        await eventually(lambda: a.buffers.exporter.stats()["leased"] == 0)  # RELEASE came back
        assert await k.keep(x) == 2 * MB
        assert a.buffers.exporter.stats()["segments"] == 1  # the released segment was reused


async def test_the_release_of_an_argument_arrives_with_the_reply() -> None:
    async with nodes(2) as (a, b):
        k = await spawn(a, b, Keeper)
        x = torch.randn(512, 512)  # 1 MB: through a's shared memory
        await k.scale_copy(x)  # an @on_loop method: its arguments are dropped on the loop, before the reply
        # no waiting: the RELEASE came in the same write as the reply, and was handled before it
        assert a.buffers.exporter.stats()["leased"] == 0
        await k.kept_sum_of(x)  # on the actor's thread: dropped there, the RELEASE goes with the outcome too
        assert a.buffers.exporter.stats()["leased"] == 0
        await disto.collect([k.kept_sum_of(x) for _ in range(5)])  # a batch on the thread: each with its reply
        assert a.buffers.exporter.stats()["leased"] == 0


async def test_replies_use_shared_memory_too() -> None:
    async with nodes(2) as (a, b):
        k = await spawn(a, b, Keeper)
        x = torch.randn(512, 512)
        back = await k.echo(x)
        assert torch.equal(back, x)
        assert b.buffers.exporter.stats()["copies"] == 1  # the reply went b -> a through b's pool
        del back
        gc.collect()
        await eventually(lambda: b.buffers.exporter.stats()["leased"] == 0)


async def test_shared_tensors_travel_by_reference() -> None:
    async with nodes(2) as (a, b):
        k = await spawn(a, b, Keeper)
        from disto.actor import context

        token = context.current.set(a)
        try:
            t = disto.shared_tensor((256, 256))
            with pytest.raises(TypeError, match=r"takes a shape.*t\.copy_\(x\)"):
                disto.shared_tensor(t)  # a tensor where a shape belongs: says how to share one
            with pytest.raises(TypeError, match="tuple of ints"):
                disto.shared_array((2, -1))
        finally:
            context.current.reset(token)
        t.fill_(1.0)
        await k.scale(t, 3.0)
        assert float(t[0, 0]) == 3.0 and a.buffers.exporter.stats()["copies"] == 0
        torch_shared = torch.ones(300_000).share_memory_()
        await k.scale(torch_shared, 5.0)
        assert float(torch_shared[0]) == 5.0 and a.buffers.exporter.stats()["copies"] == 0


async def test_transfer_tcp_forces_bytes_on_the_socket() -> None:
    async with nodes(2) as (a, b):
        k = await spawn(a, b, Keeper)
        with disto.transfer("tcp"):
            assert await k.keep(torch.ones(MB)) == MB
        assert a.buffers.exporter.stats()["copies"] == 0
        with disto.transfer("shm"):
            assert await k.keep(torch.ones(1000)) == 1000  # small, but forced through shared memory
        assert a.buffers.exporter.stats()["copies"] == 1
        with pytest.raises(ValueError):
            with disto.transfer("carrier-pigeon"):
                pass


@pytest.mark.parametrize("mode", ["tcp", "shm"])
async def test_tensor_kinds_round_trip_through_each_path(mode: str) -> None:
    base = torch.arange(100_000, dtype=torch.float32)
    values = {
        "strided": base.reshape(100, 1000).t(),
        "view": base[10:50_000:3],
        "bf16": torch.randn(70_000).to(torch.bfloat16),
        "bool": torch.rand(100_000) > 0.5,
        "complex": torch.randn(20_000, dtype=torch.complex64),
        "empty": torch.zeros(0, 5),
        "param": torch.nn.Parameter(torch.randn(50_000)),
        "grad": torch.randn(50_000, requires_grad=True),
        "nested": {"list": [np.arange(100_000), (torch.ones(40_000),)]},
    }
    async with nodes(2) as (a, b):
        k = await spawn(a, b, Keeper)
        with disto.transfer(mode):
            back = await k.echo(values)
    for key in ("strided", "view", "bf16", "bool", "complex", "empty"):
        assert back[key].dtype == values[key].dtype and torch.equal(back[key], values[key]), key
    assert isinstance(back["param"], torch.nn.Parameter) and back["param"].requires_grad
    assert back["grad"].requires_grad and torch.equal(back["grad"].detach(), values["grad"].detach())
    assert np.array_equal(back["nested"]["list"][0], values["nested"]["list"][0])


async def test_node_stop_leaves_no_segments() -> None:
    before = disto_segments()
    async with nodes(2) as (a, b):
        k = await spawn(a, b, Keeper)
        await k.keep(torch.ones(MB))
        assert disto_segments() - before
    assert disto_segments() - before == set()


@pytest.mark.parametrize("mode", ["tcp", "shm"])
async def test_views_that_share_storage_arrive_with_their_values(mode: str) -> None:
    base = torch.arange(200_000, dtype=torch.float32)
    msg = (base, base[1000:50_000], base.view(400, 500)[:, ::7], base)  # the same tensor twice: one object
    async with nodes(2) as (a, b):
        k = await spawn(a, b, Keeper)
        with disto.transfer(mode):
            back = await k.echo(msg)
    assert torch.equal(back[0], base) and torch.equal(back[1], base[1000:50_000])
    assert torch.equal(back[2], base.view(400, 500)[:, ::7])
    assert back[3] is back[0]  # pickle's memo: one object in, one object out
    # a view travels as its own data (a small view of a big tensor does not drag the whole storage along)
    assert back[1].untyped_storage().nbytes() == 49_000 * 4


def test_finding_the_shared_segment_that_holds_a_view() -> None:
    from disto.serialization.shm import _find, buffer_address

    mem = np.zeros(1000, dtype=np.uint8)
    base = mem.ctypes.data
    ranges = [(base, base + 100, "a"), (base + 100, base + 300, "b"), (base + 500, base + 1000, "c")]

    def find(r: list, view: memoryview) -> tuple | None:
        return _find(r, buffer_address(view), view.nbytes)

    assert find(ranges, memoryview(mem[0:100])) == ("a", 0, 100)
    assert find(ranges, memoryview(mem[100:101])) == ("b", 0, 1)  # starts exactly where b starts
    assert find(ranges, memoryview(mem[150:300])) == ("b", 50, 150)
    assert find(ranges, memoryview(mem[990:1000])) == ("c", 490, 10)
    assert find(ranges, memoryview(mem[90:110])) is None  # across two segments
    assert find(ranges, memoryview(mem[300:400])) is None  # between them
    assert find([], memoryview(mem)) is None
