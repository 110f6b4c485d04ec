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

import disto
from disto.serialization import scalars
from helpers import nodes, spawn

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
          ((1,), {}, 3), (((1,),),), 3 + 4j, frozenset({1}),
          [], [1], [1, "a", None, 2.5], {}, {"k": 1}, {"loss": 0.5, "step": 7, "lr": 1e-3}, {1: "a", 2.5: None},
          {("a", 1): [1, 2]}, [[1, [2, [3, [4, [5]]]]]], {"a": {"b": {"c": {"d": {"e": 1}}}}}, [{"a": [1, (2, 3)]}],
          ((1, [2, 3]), {"k": {"x": 1.5}}), list(range(70)), {str(i): i for i in range(40)}, [1] * 600,
          ([],) * 20, (b"x", [1]), [object], {"k": b"v"}]


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
@pytest.mark.parametrize("value", [b"x", "é", "x" * 256, 2**64, 3 + 4j, tuple(range(5000)), ((1, [b"x"]), {}),
                                   [[[[[1]]]]]], ids=repr)
def test_other_values_are_pickles_own_stream(value: object) -> None:
    assert _scalars.dumps(value) == pickle.dumps(value, 5)


@compiled
@pytest.mark.parametrize("data", [b"", b"\x80", b"\x80\x05", b"\x80\x05K", b"\x80\x05K\x05", b"\x80\x05\x85.",
                                  b"\x80\x05K\x01K\x02.", b"\x80\x06K\x01.", b"\x80\x05(K\x01(t.", b"\x80\x05t.",
                                  b"\x80\x05\x8c\x05ab.", b"\x80\x05\x8c\x01\xff.", b"\x80\x05\x94K\x01.",
                                  b"\x80\x05\x95\x09\x00\x00\x00\x00\x00\x00\x00K\x01.", b"garbage",
                                  b"\x80\x05K\x01(K\x02e.", b"\x80\x05}(K\x01u.", b"\x80\x05}(]K\x01u.",
                                  b"\x80\x05]K\x01s.", b"\x80\x05}K\x01a.", b"\x80\x05(]K\x01a.",
                                  b"\x80\x05]((K\x01ee."])
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
def test_dumps_plain_writes_only_what_it_can() -> None:
    for value in [5, "ping", ((1, "a"), {}), ((1,), {"k": [1, 2]}), {"loss": 0.5}, [1, 2.5], ([{"a": 1}],)]:
        assert pickle.loads(_scalars.dumps_plain(value)) == value
    shared = [1]
    inside: list = []
    inside.append(inside)
    for value in [object(), b"bytes", (1, b"x"), {"k": object()}, [shared, shared], (shared, shared), inside,
                  [[[[[1]]]]], "é", 2**64, "x" * 256, list(range(600)), [[i] for i in range(17)]]:
        assert _scalars.dumps_plain(value) is None, value
        assert _scalars.dumps(value) == pickle.dumps(value, 5)  # sharing kept: pickle's own stream


@compiled
def test_containers_are_read_in_place() -> None:
    for value in [[1, 2], {"a": 1}, {"a": 1, "b": [1, {"c": None}]}, ((1,), {"k": 2}), [[]], [{}]]:
        for data in (_scalars.dumps(value), pickle.dumps(value, 5)):
            got = _scalars.fast_loads(data)
            assert got is not _scalars.GIVE_UP and same(got) == same(value) and got == value, data


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


class Mirror(disto.Actor):
    """Returns what it was given, and says what arrived (types, sharing) as the callee saw it."""

    def back(self, *args: object, **kwargs: object) -> object:
        return args, kwargs

    def shared(self, pair: list) -> bool:
        return pair[0] is pair[1]

    def pair(self) -> list:
        inner = [1]
        return [inner, inner]

    def metrics(self, step: int) -> dict:
        return {"loss": 0.25, "step": step, "tags": ["a", "b"], "lr": None}

    def tensor_in_dict(self, d: dict) -> dict:
        return {"sum": float(d["t"].sum()), "t": d["t"] * 2}


async def test_calls_carry_containers_and_keywords_across_the_wire() -> None:
    """Between two nodes (a real connection): lists, dicts and keyword arguments of scalars come back equal
    (the compiled writer and reader), a list shared twice stays shared (pickle's path), and a dict that holds a
    tensor still goes the general way."""
    torch = pytest.importorskip("torch")
    async with nodes(2) as (a, b):
        ref = await spawn(a, b, Mirror)
        for args, kwargs in [((1, "a"), {}), (([1, 2.5], {"k": None}), {}), ((), {"x": 1, "y": [1, {"z": "w"}]}),
                             (((1, (2, 3)),), {"deep": [[[1]]]}), (("é", 2**70, "x" * 300), {"b": b"raw"})]:
            got = await ref.back(*args, **kwargs)
            assert same(got) == same((args, kwargs)) and got == (args, kwargs)
        assert await ref.metrics(3) == {"loss": 0.25, "step": 3, "tags": ["a", "b"], "lr": None}
        inner = [1]
        assert await ref.shared([inner, inner]) is True
        back = await ref.pair()
        assert back == [[1], [1]] and back[0] is back[1]
        out = await ref.tensor_in_dict({"t": torch.arange(4.0)})
        assert out["sum"] == 6.0 and torch.equal(out["t"], torch.arange(4.0) * 2)
