"""Payload serialization: out-of-band buffers without copies, every tensor shape and dtype, pooled buffers."""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from disto import SerializationError
from disto.memory import BufferPool
from disto.serialization import dumps, loads


def roundtrip(obj):
    stream, bufs = dumps(obj)
    # a receiver gets its own writable memory for each buffer
    return loads(stream, [memoryview(bytearray(b)) for b in bufs]), bufs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8,
                                   torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool,
                                   torch.complex64, torch.complex128])
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (7,), (33, 65)])
def test_tensor_dtypes_and_shapes(dtype, shape) -> None:
    t = (torch.randn(shape) * 10).to(dtype) if dtype != torch.bool else torch.randn(shape) > 0
    back, _ = roundtrip(t)
    assert back.dtype == dtype and back.shape == t.shape and torch.equal(back, t)


def test_non_contiguous_views_and_flags() -> None:
    base = torch.arange(4096, dtype=torch.float32).reshape(64, 64)
    for t in (base.t(), base[::2, 1::3], base[5], base.conj(), torch.randn(8, 8, dtype=torch.complex64).conj()):
        back, _ = roundtrip(t)
        assert torch.equal(back, t.resolve_conj()) and back.is_contiguous()
    p = torch.nn.Parameter(torch.randn(512))
    back, _ = roundtrip(p)
    assert type(back) is torch.nn.Parameter and back.requires_grad and torch.equal(back, p)
    g = torch.randn(512, requires_grad=True)
    back, _ = roundtrip(g)
    assert back.requires_grad and back.is_leaf


class _Box:
    def __init__(self, x: object) -> None:
        self.x = x


def test_plain_tensors_skip_cloudpickle_and_match_the_full_path(monkeypatch) -> None:
    from disto.serialization import pickler

    z = torch.randn(4, dtype=torch.complex64)
    cases = [torch.ones(1), torch.arange(6.0).reshape(2, 3).t(), torch.randn(300, 300), z.conj(), z.conj().imag,
             torch.nn.Parameter(torch.randn(5)), torch.randn(3, requires_grad=True), torch.randn(4).to(torch.bfloat16)]
    full = []
    for t in cases:  # through cloudpickle: the tensor inside an object of a user class
        stream, bufs, _ = pickler.dumps_for(_Box(t), same_host=True)
        full.append(pickler.loads(stream, [memoryview(bytearray(b)) for b in bufs]).x)

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("plain tensors went through cloudpickle")

    monkeypatch.setattr(pickler, "_Pickler", refuse)
    for t, other in zip(cases, full):
        stream, bufs, _ = pickler.dumps_for(((t, [t.shape[0] if t.dim() else 0]), {"k": 1.5}), same_host=True)
        (args, kwargs) = pickler.loads(stream, [memoryview(bytearray(b)) for b in bufs])
        back = args[0]
        want = t.detach().resolve_conj().resolve_neg()
        for got in (back, other):
            assert type(got) is type(t) and got.dtype == t.dtype and got.shape == t.shape
            assert torch.equal(got.detach(), want) and got.requires_grad == t.requires_grad
        assert kwargs == {"k": 1.5}


def test_nested_containers_and_dataclasses() -> None:
    @dataclasses.dataclass
    class Batch:
        x: torch.Tensor
        y: np.ndarray
        meta: dict

    b = Batch(torch.randn(100, 100), np.arange(1000), {"ids": [torch.ones(300), (np.zeros(500),)]})
    back, bufs = roundtrip({"batch": b, "list": [b.x, b.y]})
    assert len(bufs) >= 4
    assert torch.equal(back["batch"].x, b.x) and np.array_equal(back["batch"].y, b.y)
    assert torch.equal(back["batch"].meta["ids"][0], torch.ones(300))


def test_large_buffers_are_views_of_the_original_memory() -> None:
    a = np.random.rand(1 << 16)
    t = torch.randn(1 << 16)
    _, bufs = dumps((a, t))
    assert len(bufs) == 2
    assert np.shares_memory(np.frombuffer(bufs[0], dtype=np.float64), a)
    assert np.shares_memory(np.frombuffer(bufs[1], dtype=np.float32), t.numpy())


def test_received_values_use_the_received_memory() -> None:
    a = np.random.rand(1 << 16)
    stream, bufs = dumps(a)
    recv = bytearray(bufs[0])
    back = loads(stream, [memoryview(recv)])
    assert np.shares_memory(back, np.frombuffer(recv, dtype=np.float64)) and back.flags.writeable
    t = torch.randn(1 << 16)
    stream, bufs = dumps(t)
    recv = bytearray(bufs[0])
    back = loads(stream, [memoryview(recv)])
    assert back.data_ptr() == np.frombuffer(recv, dtype=np.uint8).ctypes.data


def test_small_buffers_stay_in_band_and_simple_calls_use_the_c_pickler() -> None:
    stream, bufs = dumps((np.arange(10), torch.ones(3)))
    assert bufs == []
    stream, bufs = dumps(((1, "a", 2.5, None, b"x"), {"k": True}))
    assert bufs == [] and pickle.loads(stream) == ((1, "a", 2.5, None, b"x"), {"k": True})


def test_closures_and_local_classes() -> None:
    k = 3

    class Local:
        def f(self, x):
            return x + k

    back, _ = roundtrip((lambda x: x * k, Local()))
    assert back[0](2) == 6 and back[1].f(1) == 4


def test_errors_are_serialization_errors() -> None:
    import threading

    with pytest.raises(SerializationError):
        dumps(threading.Lock())
    with pytest.raises(SerializationError):
        loads(b"\x80\x05garbage")


def test_pool_reuses_free_blocks_and_keeps_used_ones() -> None:
    pool = BufferPool(min_size=1 << 10)
    v = pool.alloc(100_000)
    arr = np.frombuffer(v, dtype=np.uint8)
    del v
    v2 = pool.alloc(100_000)  # arr still uses the first block
    assert pool.allocated == 2
    del arr, v2
    v3 = pool.alloc(90_000)  # both free again: one is reused
    assert pool.allocated == 2 and v3.nbytes == 90_000
    small = pool.alloc(100)
    assert isinstance(small.obj, bytearray)


def test_pool_trims_free_blocks_beyond_its_budget() -> None:
    pool = BufferPool(max_free_bytes=300_000, min_size=1 << 10)
    for n in (100_000, 200_000, 400_000, 800_000):
        pool.alloc(n)
    assert pool.stats()["bytes"] <= 300_000 + 800_000 + 4096


def test_own_modules_are_noted_shipped_with_what_they_import_and_served_from_source(tmp_path) -> None:
    import importlib
    import linecache
    import sys

    from disto.serialization.modules import ShippedModules, closure, shippable

    (tmp_path / "shipkit").mkdir()
    (tmp_path / "shipkit" / "__init__.py").write_text("")
    (tmp_path / "shipkit" / "model.py").write_text(
        "import shiphelp\nfrom shiphelp import scale\n\nclass Net:\n    def run(self):\n        return scale(2)\n")
    (tmp_path / "shiphelp.py").write_text("def scale(x):\n    return 10 * x\n")
    sys.path.insert(0, str(tmp_path))
    names = ("shipkit", "shipkit.model", "shiphelp")
    try:
        model = importlib.import_module("shipkit.model")
        assert shippable("shipkit.model") and not shippable("numpy") and not shippable("disto.node")
        modules: set = set()
        dumps(model.Net(), modules)
        assert modules == {"shipkit.model"}  # noted while pickling (the class goes by reference)
        sources = closure(modules)
        assert [s.name for s in sources] == ["shipkit", "shiphelp", "shipkit.model"]  # parents, imports, itself
        assert sources[0].is_package and "class Net" in sources[2].source
    finally:
        sys.path.remove(str(tmp_path))
        for n in names:
            sys.modules.pop(n, None)
    # a process that cannot import them (the path is gone) gets them from the shipped sources
    finder = ShippedModules()
    finder.install(sources)
    sys.meta_path.append(finder)
    try:
        (tmp_path / "shiphelp.py").unlink()  # and no file behind them: everything comes from the source sent
        model = importlib.import_module("shipkit.model")
        assert model.Net().run() == 20 and model.__spec__.loader is finder
        assert linecache.getline(model.__file__, 6).strip() == "return scale(2)"  # tracebacks show the lines
        assert shippable("shipkit.model")  # shipped here: passed on to the next peer
    finally:
        sys.meta_path.remove(finder)
        for n in names:
            sys.modules.pop(n, None)


def test_a_module_that_cannot_be_imported_is_named_with_what_to_do() -> None:
    stream = b"cnosuchmod\nfn\n."  # a function by reference, in a module that does not exist here
    with pytest.raises(SerializationError, match=r"module 'nosuchmod' cannot be imported here.*ships its source"):
        loads(stream)


def test_a_tensor_travels_with_its_dtype_by_name_and_an_unknown_name_is_refused() -> None:
    from disto.serialization.pickler import dumps_for
    from disto.serialization.tensors import rebuild_tensor

    t = torch.arange(6, dtype=torch.int16).reshape(2, 3)
    stream, bufs, _ = dumps_for(((t, t), {}), same_host=False)  # (twice: pickled, not encoded directly)
    assert stream[0] == 0x80 and b"int16" in stream and b"torch" not in stream  # the dtype's name, not a global
    assert loads(stream, bufs)[0][0].dtype == torch.int16
    with pytest.raises(SerializationError, match="not a torch dtype: 'load'"):
        rebuild_tensor(bytearray(8), "load", (2,), False, False)


def test_tensors_name_their_rebuild_function_by_extension_code_on_both_pickling_paths() -> None:
    # (unpickling then takes it from copyreg's cache: no import of its module per tensor)
    from disto.serialization.pickler import dumps_for

    t = torch.ones(3)
    for value in (((t, t), {}), ((t, lambda: 1), {})):  # the C pickler (twice: not direct); cloudpickle
        stream, bufs, _ = dumps_for(value, same_host=False)
        assert b"rebuild_tensor" not in stream and b"disto.serialization" not in stream
        assert torch.equal(loads(stream, bufs)[0][0], t)


def test_a_tensor_unpickles_in_a_process_that_has_not_imported_torch() -> None:
    import subprocess
    import sys

    stream, bufs = dumps(torch.arange(3, dtype=torch.int16))
    assert not bufs
    code = ("import sys; from disto.serialization import loads; assert 'torch' not in sys.modules; "
            "t = loads(sys.stdin.buffer.read()); print(t.dtype, t.tolist())")
    out = subprocess.run([sys.executable, "-c", code], input=stream, capture_output=True, check=True)
    assert out.stdout.decode().split() == ["torch.int16", "[0,", "1,", "2]"]


class _Nested:
    """Pickling it pickles something else first, on the same thread, while the outer dump is under way."""

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t

    def __reduce__(self):
        from disto.serialization.pickler import dumps_for

        inner, bufs, _ = dumps_for((self.t,), same_host=False)
        return (_Nested._rebuild, (inner, [bytes(b) for b in bufs]))

    @staticmethod
    def _rebuild(inner: bytes, bufs: list) -> "_Nested":
        return _Nested(loads(inner, [memoryview(bytearray(b)) for b in bufs])[0])


def test_a_dump_inside_a_dump_keeps_the_outer_state() -> None:
    from disto.serialization.pickler import dumps_for

    outer = torch.full((1 << 15,), 2.0)
    stream, bufs, _ = dumps_for([outer, _Nested(torch.full((1 << 15,), 5.0)), outer], same_host=False)
    a, n, b = loads(stream, [memoryview(bytearray(x)) for x in bufs])
    assert torch.equal(a, outer) and torch.equal(n.t, torch.full((1 << 15,), 5.0)) and a.data_ptr() == b.data_ptr()
