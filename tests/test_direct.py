"""The direct encoding of tensor-and-scalar values (disto.serialization.direct): what it covers and what it leaves to
pickle, that a value comes back as pickle would give it, and that no stream, however malformed, gets anything but
SerializationError out of the decoder. No event loop, no sockets."""
from __future__ import annotations

import math
import os
import pickle
import struct
import subprocess
import sys

import pytest
import torch

from disto import SerializationError
from disto.serialization import direct, dumps, dumps_for, loads, pickler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _received(bufs: list) -> list:
    """The buffers as a receiver has them: its own writable memory."""
    return [memoryview(bytearray(bytes(b))) for b in bufs]


def _same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return (a.dtype == b.dtype and a.shape == b.shape and a.requires_grad == b.requires_grad  # type: ignore
                and torch.equal(a.detach(), b.detach()))  # type: ignore[union-attr]
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)  # type: ignore[union-attr]
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)  # type: ignore[arg-type]
    return a == b


def _values() -> list:
    big = torch.arange(1 << 16, dtype=torch.float32)
    out = [
        torch.ones(3),
        big,
        ((big,), {}),
        ((torch.ones(4), 1, -2.5, "x", None, True, False), {"lr": 0.1, "name": "w", "t": torch.zeros(2, 3)}),
        ((torch.tensor(3.0),), {}),                     # 0-d
        ((torch.empty(0, 4),), {}),                     # no elements
        ((torch.arange(24).reshape(2, 3, 4),), {}),     # 3-d
        ((torch.arange(12.0).reshape(3, 4).t(),), {}),  # not contiguous
        ((big[1000:3000],), {}),                        # a view at an offset
        torch.ones(5, requires_grad=True),
        torch.nn.Parameter(torch.ones(2, 2)),
        torch.nn.Parameter(torch.ones(2), requires_grad=False),
        ((torch._neg_view(torch.arange(4.0)),), {}),    # a negative-bit view: the values, not the raw bytes
        ((torch.tensor([1 + 2j, 3 - 1j]).conj(),), {}),  # a conjugate view
        ((torch.tensor([1 + 2j, 3 - 1j]).conj().detach(),), {}),  # the bit without a base
        ((torch._neg_view(torch.arange(3.0)).detach(),), {}),
        ([torch.ones(1), [torch.zeros(2)]], {"x": {"y": 1}}),
        (1 << 63) - 1, -(1 << 63), math.nan, math.inf, "é\udc80 lone surrogate", "",
    ]
    for name in direct.DTYPE_NAMES:
        dtype = getattr(torch, name, None)
        if isinstance(dtype, torch.dtype):
            out.append(((torch.zeros(300).to(dtype),), {}))    # in band
            out.append(((torch.zeros(1000).to(dtype),), {}))   # out of band (1000 elements of 1 byte or more)
    return out


@pytest.mark.parametrize("value", _values(), ids=lambda v: type(v).__name__)
def test_a_value_comes_back_as_pickle_gives_it(value: object) -> None:
    for same_host in (False, True):
        stream, bufs, _ = dumps_for(value, same_host=same_host)
        has_tensor = "Tensor" in repr(type(value)) or "tensor" in repr(value)
        assert (stream[0] == direct.MAGIC) == has_tensor  # scalars alone stay with pickle
        got = loads(stream, _received(bufs))
        pickled, pickled_bufs, _ = pickler._thread_dump().dump(value, False)  # the C pickler's path, as before
        assert pickled[0] == 0x80
        expected = pickle.loads(pickled, buffers=_received(pickled_bufs))  # (neg and conj views: their values)
        assert _same(got, expected), (got, expected)


def test_tensors_come_back_writable_and_over_the_received_memory() -> None:
    t = torch.arange(1 << 12, dtype=torch.float32)
    stream, bufs, _ = dumps_for(((t,), {}), same_host=False)
    assert stream[0] == direct.MAGIC and len(bufs) == 1 and bufs[0].nbytes == t.nbytes  # out of band, not copied
    received = _received(bufs)
    (got,), _ = loads(stream, received)
    got[0] = 42.0  # writable, and the very memory that arrived
    assert received[0].cast("f")[0] == 42.0
    (ro,), _ = loads(stream, [bytes(bufs[0])])  # read-only bytes: copied, so still writable
    ro[0] = 1.0


def test_what_the_encoding_leaves_to_pickle() -> None:
    t = torch.ones(3)

    class Sub(torch.Tensor):
        pass

    cases = {
        "the same tensor twice (pickle keeps them one object)": ((t, t), {}),
        "a subclass": ((t.as_subclass(Sub),), {}),
        "a sparse tensor": ((torch.eye(3).to_sparse(),), {}),
        "a quantized tensor": ((torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8),), {}),
        "an int beyond 64 bits": ((t, 1 << 64), {}),
        "a dict with a non-str key": ((t, {1: 2}), {}),
        "too many items": ((t,) + (1,) * direct.MAX_ITEMS, {}),
        "too deep": ((t, [[[1]]]), {}),
        "another type": ((t, object()), {}),
        "no tensor": ((1, 2.5, "x"), {}),
    }
    for what, value in cases.items():
        assert direct.encode(value, True) is None, what
        stream, bufs, _ = dumps_for(value, same_host=True)
        assert stream[0] == 0x80, what  # pickled
        loads(stream, _received(bufs))
    (a, b), _ = loads(*dumps(cases["the same tensor twice (pickle keeps them one object)"]))
    assert a is b


def test_a_tensor_in_torch_shared_memory_is_noted_for_the_same_host_only() -> None:
    t = torch.ones(1 << 12).share_memory_()
    _, bufs, shared = dumps_for(((t,), {}), same_host=True)
    assert list(shared) == [t.data_ptr()] and shared[t.data_ptr()][0].startswith("/proc/")
    assert dumps_for(((t,), {}), same_host=False)[2] == {}


def _direct_stream(value: object) -> tuple[bytes, list]:
    stream, bufs, _ = dumps_for(value, same_host=False)
    assert stream[0] == direct.MAGIC
    return stream, _received(bufs)


def test_every_truncation_and_every_bad_byte_is_a_serialization_error() -> None:
    stream, bufs = _direct_stream(((torch.ones(300), torch.ones(2000), 7, "s"), {"k": 1.5}))
    for n in range(len(stream)):
        with pytest.raises(SerializationError):
            direct.decode(stream[:n], bufs)
    for i in range(len(stream)):  # each byte changed: the same value or SerializationError, never anything else
        for v in (0, 1, 0x7F, 0xFF):
            bad = stream[:i] + bytes([v]) + stream[i + 1:]
            try:
                direct.decode(bad, bufs)
            except SerializationError:
                pass


def test_malformed_streams_are_named() -> None:
    stream, bufs = _direct_stream(((torch.ones(2000),), {}))
    with pytest.raises(SerializationError, match="version 9"):
        direct.decode(stream[:1] + b"\x09" + stream[2:], bufs)
    with pytest.raises(SerializationError, match="left over"):
        direct.decode(stream + b"n", bufs)
    with pytest.raises(SerializationError, match="left over"):
        direct.decode(stream, bufs + bufs)
    with pytest.raises(SerializationError, match="without its buffer"):
        direct.decode(stream, [])
    with pytest.raises(SerializationError, match="does not match"):
        direct.decode(stream, [memoryview(bytearray(12))])
    huge = bytes((direct.MAGIC, direct.VERSION, ord("t"), 0, 0, 1)) + struct.pack("<q", 1 << 50)
    with pytest.raises(SerializationError, match="does not match"):  # refused before 4 PB are allocated
        direct.decode(huge, [memoryview(bytearray(0))])
    negative = bytes((direct.MAGIC, direct.VERSION, ord("t"), 0, 0, 2)) + struct.pack("<qq", -1, -4)
    with pytest.raises(SerializationError, match="shape"):
        direct.decode(negative, [memoryview(bytearray(16))])
    unknown = bytes((direct.MAGIC, direct.VERSION, ord("t"), 200, 0, 1)) + struct.pack("<q", 1)
    with pytest.raises(SerializationError, match="dtype code 200"):
        direct.decode(unknown, [memoryview(bytearray(4))])
    with pytest.raises(SerializationError, match="malformed stream"):
        direct.decode(bytes((direct.MAGIC, direct.VERSION, ord("s"))) + struct.pack("<I", 1) + b"\xff", [])
    with pytest.raises(SerializationError, match="nested too deep"):
        direct.decode(bytes((direct.MAGIC, direct.VERSION)) + b"(\x01\x00" * 4 + b"n", [])


def test_the_pure_python_and_the_compiled_encoder_write_the_same_bytes() -> None:
    # (the same module, run without its extension: what a machine without a compiler runs)
    code = ("import sys, torch; from disto.serialization import dumps_for, direct; "
            "v = ((torch.arange(6, dtype=torch.int16).reshape(2, 3), torch.ones(2000), 1, -2.5, 's', None, True), "
            "{'k': [torch.zeros(1, dtype=torch.bfloat16)]}); "
            "s, b, _ = dumps_for(v, same_host=False); "
            "sys.stdout.write(s.hex() + ' ' + ','.join(bytes(x).hex() for x in b) + ' ' + direct.__file__)")
    outs = []
    for pure in ("1", "0"):
        env = dict(os.environ, DISTO_PURE_PYTHON=pure, PYTHONPATH=ROOT)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        outs.append(out.stdout.split(" "))
    assert outs[0][2].endswith(".py")
    assert outs[0][:2] == outs[1][:2]
