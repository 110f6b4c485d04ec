"""disto.memory.blocks: writable bytes at an address that keep their owner alive and call back once they are gone;
the compiled Block and the pure-Python fallback behave the same. No event loop."""
from __future__ import annotations

import gc
import pickle
import sys
import weakref

import numpy as np
import pytest
import torch

from disto.memory import blocks
from disto.serialization import dumps_for, loads

IMPLEMENTATIONS = [pytest.param(blocks._py_block, id="python"),
                   pytest.param(blocks.Block, id="compiled",
                                marks=pytest.mark.skipif(blocks.Block is None, reason="not compiled"))]


class Owner:
    """Memory to point into, and a way to see when it is freed."""

    def __init__(self, n: int) -> None:
        self.arr = np.arange(n, dtype=np.uint8)


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_a_block_is_writable_memory_of_its_owner(make) -> None:
    owner = Owner(64)
    b = make(owner, owner.arr.ctypes.data + 8, 16)
    view = memoryview(b)
    assert view.nbytes == 16 and not view.readonly and view.format == "B" and view.shape == (16,)
    assert bytes(view[:3]) == bytes([8, 9, 10])
    np.frombuffer(b, dtype=np.uint8)[0] = 200
    assert owner.arr[8] == 200
    assert torch.frombuffer(b, dtype=torch.uint8)[1].item() == 9
    assert np.frombuffer(make(owner, 0, 0), dtype=np.uint8).size == 0  # empty: nothing is read
    with pytest.raises(ValueError, match="size must be >= 0"):
        make(owner, owner.arr.ctypes.data, -1)


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_the_callback_runs_once_when_nothing_uses_the_block_and_the_owner_lives_until_then(make) -> None:
    owner = Owner(1 << 12)
    gone = weakref.ref(owner)
    calls: list[int] = []
    b = make(owner, owner.arr.ctypes.data, 1 << 12, lambda: calls.append(1))
    del owner
    t = torch.frombuffer(memoryview(b), dtype=torch.float32)  # a tensor over the block keeps it, and the owner
    a = np.frombuffer(b, dtype=np.uint8)
    del b
    gc.collect()
    assert calls == [] and gone() is not None
    del a
    gc.collect()
    assert calls == [] and t.view(torch.uint8)[:3].tolist() == [0, 1, 2]  # still readable
    del t
    gc.collect()
    assert calls == [1] and gone() is None


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_a_failing_callback_is_reported_not_raised(make) -> None:
    owner = Owner(8)
    seen = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u.exc_type)
    try:
        b = make(owner, owner.arr.ctypes.data, 8, lambda: 1 / 0)
        del b
        gc.collect()
    finally:
        sys.unraisablehook = old
    assert seen and seen[0] is ZeroDivisionError


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.bool, torch.complex64, torch.int64])
def test_a_tensor_sent_out_of_band_keeps_its_memory_until_the_stream_is_read(dtype) -> None:
    t = torch.arange(2000).to(dtype).reshape(40, 50)  # (a bool tensor too: >= 1 KiB goes out of band)
    want = t.clone()
    stream, bufs, _ = dumps_for(((t,), {}), same_host=True)
    assert len(bufs) == 1 and bufs[0].nbytes == t.nbytes
    del t
    gc.collect()  # the buffer still refers to the tensor's memory, which must not have been freed
    back = loads(stream, [bytearray(bufs[0])])[0][0]
    assert back.dtype == dtype and torch.equal(back, want)


def test_the_pure_python_fallback_pickles_a_tensor_the_same_way(monkeypatch) -> None:
    from disto.serialization import pickler

    t = torch.randn(1000)
    fast = dumps_for(t, same_host=True)
    monkeypatch.setattr(pickler, "BLOCKS_COMPILED", False)
    slow = dumps_for(t, same_host=True)
    assert fast[0] == slow[0] and bytes(fast[1][0]) == bytes(slow[1][0])
    assert pickle.PickleBuffer(fast[1][0]).raw().nbytes == 4000


def test_a_small_tensor_goes_in_band_and_comes_back_writable() -> None:
    t = torch.arange(10, dtype=torch.float32)
    stream, bufs, _ = dumps_for(((t,), {}), same_host=True)
    assert bufs == [] and t.numpy().tobytes() in stream
    back = loads(stream)[0][0]
    back += 1  # writable: no copy-on-read warning, no error
    assert torch.equal(back, t + 1) and torch.equal(t, torch.arange(10, dtype=torch.float32))


def test_the_reused_pickler_keeps_nothing_alive_and_serves_threads_apart() -> None:
    import threading

    t = torch.randn(1 << 12)
    gone = weakref.ref(t)
    stream, bufs, _ = dumps_for({"x": t}, same_host=True)
    assert loads(stream, bufs)["x"].data_ptr() == t.data_ptr()
    del t, bufs
    gc.collect()
    assert gone() is None  # not held by the pickler's memo or its buffer list

    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(200):  # (each thread has its own pickler: their buffers never mix)
                x, big = torch.full((300 + k,), float(i)), torch.full((1 << 15,), float(k * 1000 + i))
                s, b, _ = dumps_for((k, x, big), same_host=False)
                kk, y, z = loads(s, b)
                assert kk == k and torch.equal(x, y) and torch.equal(z, big)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
