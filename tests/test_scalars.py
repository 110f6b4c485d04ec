"""The scalar pickle streams (disto.serialization.scalars): the compiled writer and reader against pickle itself.

No event loop: values in, bytes out, bytes in, values out. The compiled module must write streams any
``pickle.loads`` reads back to the same value, read every stream it accepts exactly as pickle does, and hand
everything else to pickle (so errors are pickle's own)."""
from __future__ import annotations

import io
import os
import pickle
import random
import subprocess
import sys
import tracemalloc

import pytest

from disto.serialization import scalars

try:
    from disto.serialization import _scalars
except ImportError:  # an install without a C compiler: only the pure-Python selection is tested
    _scalars = None

compiled = pytest.mark.skipif(_scalars is None, reason="disto's compiled modules are not built")

INTS = [0, 1, 127, 128, 255, 256, 65535, 65536, -1, -128, -129, -255, -256, -65536, 2**31 - 1, -2**31, 2**31,
        -2**31 - 1, 2**32, 2**40 + 7, -2**40, 2**63 - 1, -2**63, 2**63, -2**63 - 1, 2**64, -2**200]
FLOATS = [0.0, -0.0, 1.5, -2.25, 1e300, 5e-324, float("inf"), float("-inf"), float("nan")]
STRS = ["", "a", "ping", "x" * 255, "x" * 256, "x" * 5000, "é", "日本", "\udc80", "a\x00b"]
SCALARS = [None, True, False, *INTS, *FLOATS, *STRS]
SHAPES = [*SCALARS, (), (1,), (1, "a"), (1, 2.5, None), (1, 2, 3, 4), tuple(range(63)), tuple(range(64)),
          tuple(range(200)), ((), {}), ((7,), {}), ((1, "s", 2.5, True, None, -3), {}), (tuple(range(70)), {}),
          ((1,), {"k": 2}), ((1, (2,)), {}), ([1],), [1, 2], {"a": 1}, {1: 2}, b"bytes", bytearray(b"x"),
          ((1,), {}, 3), (((1,),),), 3 + 4j, frozenset({1})]


class NoImports(pickle.Unpickler):
    """pickle's reader, unable to import anything: what it returns is what pickle.loads would, and it cannot run
    code named by arbitrary bytes."""

    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(f"no imports here ({module}.{name})")


def pickle_outcome(data: bytes) -> tuple[str, str]:
    try:
        value = NoImports(io.BytesIO(data)).load()
    except Exception as e:  # noqa: BLE001 - the error is the outcome
        return "error", type(e).__name__
    return "value", same(value)


def same(v: object) -> str:
    """A value's type and repr, nested: equal for the same value (nan included, -0.0 told from 0.0)."""
    if isinstance(v, tuple):
        return "(" + ",".join(same(x) for x in v) + ")"
    return f"{type(v).__name__}:{v!r}"


@compiled
@pytest.mark.parametrize("value", SHAPES, ids=repr)
def test_pickle_reads_what_it_writes(value: object) -> None:
    data = _scalars.dumps(value)
    assert same(pickle.loads(data)) == same(value)
    assert same(_scalars.loads(data)) == same(value)


@compiled
@pytest.mark.parametrize("value", SHAPES, ids=repr)
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_it_reads_what_pickle_writes(value: object, protocol: int) -> None:
    data = pickle.dumps(value, protocol)
    assert same(_scalars.loads(data)) == same(pickle.loads(data))


@compiled
def test_the_common_shapes_take_the_fast_path() -> None:
    # what a call to ping(i), its reply, and pickle's own stream of them look like: no pickle involved
    for value in [((5,), {}), 5, "ok", None, 2.5, ((1, "a", 2.5, None, True), {})]:
        for data in (_scalars.dumps(value), pickle.dumps(value, 5)):
            assert _scalars.fast_loads(data) is not _scalars.GIVE_UP, data
    assert _scalars.dumps(((5,), {})) == b"\x80\x05K\x05\x85}\x86."
    assert _scalars.dumps(300) == b"\x80\x05M,\x01."


@compiled
@pytest.mark.parametrize("value", [[1], {"a": 1}, b"x", "é", "x" * 256, 2**64, ((1,), {"k": 2}), 3 + 4j,
                                   tuple(range(5000)), ((1, (2,)), {})], ids=repr)
def test_other_values_are_pickles_own_stream(value: object) -> None:
    assert _scalars.dumps(value) == pickle.dumps(value, 5)


@compiled
@pytest.mark.parametrize("data", [b"", b"\x80", b"\x80\x05", b"\x80\x05K", b"\x80\x05K\x05", b"\x80\x05\x85.",
                                  b"\x80\x05K\x01K\x02.", b"\x80\x06K\x01.", b"\x80\x05(K\x01(t.", b"\x80\x05t.",
                                  b"\x80\x05\x8c\x05ab.", b"\x80\x05\x8c\x01\xff.", b"\x80\x05\x94K\x01.",
                                  b"\x80\x05\x95\x09\x00\x00\x00\x00\x00\x00\x00K\x01.", b"garbage"])
def test_unusual_streams_get_pickles_answer(data: bytes) -> None:
    """Truncated, unknown or odd streams (two values, an open MARK, an empty MEMOIZE, a FRAME of the wrong
    length) are pickle's to judge: its value or its error."""
    assert _scalars.fast_loads(data) is _scalars.GIVE_UP

    def outcome(loads: object) -> tuple[str, str]:
        try:
            return "value", same(loads(data))  # type: ignore[operator]
        except Exception as e:  # noqa: BLE001 - the error is the outcome
            return type(e).__name__, str(e)

    assert outcome(_scalars.loads) == outcome(pickle.loads)


@compiled
def test_trailing_bytes_after_stop_are_pickles_business() -> None:
    data = b"\x80\x05K\x05.trailing"
    assert _scalars.fast_loads(data) is _scalars.GIVE_UP
    assert _scalars.loads(data) == pickle.loads(data) == 5


@compiled
def test_mutated_streams_agree_with_pickle() -> None:
    """Every stream the fast reader accepts, pickle reads to the same value (20,000 seeded mutations of the
    streams both writers make: flipped, inserted and dropped bytes)."""
    rng = random.Random(1234)
    seeds = [_scalars.dumps(v) for v in SHAPES] + [pickle.dumps(v, 5) for v in SHAPES if not isinstance(v, complex)]
    accepted = 0
    for _ in range(20_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            op, at = rng.randrange(3), rng.randrange(len(data) + 1)
            if op == 0 and at < len(data):
                data[at] = rng.randrange(256)
            elif op == 1:
                data[at:at] = bytes([rng.randrange(256)])
            elif at < len(data):
                del data[at]
        data = bytes(data)
        got = _scalars.fast_loads(data)
        if got is not _scalars.GIVE_UP:
            accepted += 1
            assert ("value", same(got)) == pickle_outcome(data), data
    assert accepted > 1000  # the property was exercised, not just the refusals


@compiled
def test_no_references_leak() -> None:
    good = pickle.dumps(((5, "abc", 1.5, None, True), {}), 5)
    bad = [b"\x80\x05K\x05\x85\x85\x85", b"\x80\x05K\x05K\x06.", b"\x80\x05(K\x01K\x02(t.",
           b"\x80\x05" + b"K\x01" * 100 + b"t."]

    def run(n: int) -> None:
        for _ in range(n):
            _scalars.loads(good)
            _scalars.dumps(((5, "abc", 1.5, None, True), {}))
            for data in bad:
                _scalars.fast_loads(data)

    run(1_000)
    refs = sys.getrefcount(None), sys.getrefcount(True)
    run(20_000)
    drift = sys.getrefcount(None) - refs[0], sys.getrefcount(True) - refs[1]
    assert max(map(abs, drift)) < 100, drift  # a reference kept per value would be 20,000 or more
    tracemalloc.start()
    try:
        run(20_000)
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current < 64 * 1024  # 20,000 rounds of leaked tuples would be megabytes


def test_the_selection() -> None:
    assert scalars.IMPLEMENTATION == ("compiled" if _scalars is not None and not os.environ.get("DISTO_PURE_PYTHON")
                                      else "python")
    assert scalars.loads(scalars.dumps(((1, "a"), {}))) == ((1, "a"), {})
    out = subprocess.run([sys.executable, "-c", "from disto.serialization import scalars as s; "
                          "print(s.IMPLEMENTATION, s.loads(s.dumps(((1, 'a'), {}))))"],
                         env=dict(os.environ, DISTO_PURE_PYTHON="1"), capture_output=True, text=True, check=True)
    assert out.stdout.split(maxsplit=1) == ["python", "((1, 'a'), {})\n"]
