"""Level 1: the sans-IO wire layer, with no event loop. Bytes in, events out."""
from __future__ import annotations

import os
import re
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from disto.errors import AuthenticationError, LocalProtocolError, RemoteProtocolError
from disto.wire import CLOSED, NEED_DATA, Connection, Identity, Kind, Message, Ready, State, T
from disto.wire.framing import HANDSHAKE_MAX_BODY, HEADER
from disto.wire.messages import decode, encode, validate

TOKEN = b"a-test-token-of-enough-length!!"


def make_pair(token_a: bytes = TOKEN, token_b: bytes = TOKEN, **kw) -> tuple[Connection, Connection]:
    a = Connection(dialer=True, token=token_a, identity=Identity("A", "127.0.0.1:1", "host", 1), **kw)
    b = Connection(dialer=False, token=token_b, identity=Identity("B", "127.0.0.1:2", "host", 2), **kw)
    return a, b


def pump(src: Connection, dst: Connection) -> list:
    for data in src.data_to_send():
        dst.receive_data(data)
    out = []
    while (ev := dst.next_event()) not in (NEED_DATA, CLOSED):
        out.append(ev)
    return out


def handshake(a: Connection, b: Connection) -> None:
    assert pump(a, b) == []
    ev_a = pump(b, a)
    ev_b = pump(a, b)
    assert ev_a == [Ready(Identity("B", "127.0.0.1:2", "host", 2))]
    assert ev_b == [Ready(Identity("A", "127.0.0.1:1", "host", 1))]
    assert a.state is State.READY and b.state is State.READY


def feed(conn: Connection, frames: list, chunk: int | None = None) -> list:
    data = b"".join(bytes(f) for f in frames)
    events = []
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        conn.receive_data(data[i:i + step])
        while (ev := conn.next_event()) not in (NEED_DATA, CLOSED):
            events.append(ev)
    return events


def test_handshake_both_sides_ready() -> None:
    a, b = make_pair()
    handshake(a, b)


def test_wrong_token_fails_on_both_sides() -> None:
    a, b = make_pair(token_b=b"another-token-of-enough-length!")
    pump(a, b)
    with pytest.raises(AuthenticationError):
        pump(b, a)  # the dialer checks the listener's proof first
    assert a.state is State.CLOSED
    # and a listener facing a dialer with the wrong token refuses its AUTH
    a, b = make_pair(token_a=b"another-token-of-enough-length!")
    pump(a, b)
    for data in b.data_to_send():
        a.receive_data(data)
    with pytest.raises(AuthenticationError):
        a.next_event()


def test_listener_rejects_forged_auth() -> None:
    a, b = make_pair()
    pump(a, b)
    b.data_to_send()
    forged = encode(T.Auth(proof=b"\0" * 32))
    b.receive_data(HEADER.pack(len(forged), 1, Kind.AUTH, 0, 0) + forged)
    with pytest.raises(AuthenticationError):
        b.next_event()
    assert b.state is State.CLOSED


def test_replayed_handshake_is_refused() -> None:
    a, b = make_pair()
    hello = a.data_to_send()
    b.receive_data(hello[0])
    b.next_event()
    for d in b.data_to_send():
        a.receive_data(d)
    a.next_event()
    auth = a.data_to_send()
    # a recorder replays HELLO and AUTH to a fresh listener: its nonce differs, so AUTH no longer verifies
    b2 = Connection(dialer=False, token=TOKEN, identity=Identity("B"))
    b2.receive_data(hello[0])
    assert b2.next_event() is NEED_DATA
    b2.data_to_send()
    b2.receive_data(auth[0])
    with pytest.raises(AuthenticationError):
        b2.next_event()


def test_application_frame_before_handshake_is_never_decoded() -> None:
    _, b = make_pair()
    body = encode(T.Call(call_id=1, actor_id=1, method="m", payload=b"\x80\x05N."))
    b.receive_data(HEADER.pack(len(body), 1, Kind.CALL, 0, 0) + body)
    with pytest.raises(AuthenticationError):
        b.next_event()
    assert b.state is State.CLOSED
    b.receive_data(b"more bytes")  # ignored once closed
    assert b.next_event() is CLOSED


def test_handshake_frame_size_is_bounded() -> None:
    _, b = make_pair()
    b.receive_data(HEADER.pack(HANDSHAKE_MAX_BODY + 1, 1, Kind.HELLO, 0, 0))
    with pytest.raises(RemoteProtocolError):
        b.next_event()
    _, b = make_pair()
    b.receive_data(HEADER.pack(10, 1, Kind.HELLO, 0, 1 << 40))
    with pytest.raises(RemoteProtocolError):
        b.next_event()


def test_version_mismatch() -> None:
    _, b = make_pair()
    b.receive_data(HEADER.pack(10, 99, Kind.HELLO, 0, 0))
    with pytest.raises(RemoteProtocolError, match="version"):
        b.next_event()


def test_oversized_frames_after_handshake() -> None:
    a, b = make_pair(max_body=1000, max_frame=10_000)
    handshake(a, b)
    b.receive_data(HEADER.pack(1001, 1, Kind.CALL, 0, 0))
    with pytest.raises(RemoteProtocolError, match="max_body"):
        b.next_event()
    a, b = make_pair(max_body=1000, max_frame=10_000)
    handshake(a, b)
    b.receive_data(HEADER.pack(10, 1, Kind.CALL, 0, 10_001))
    with pytest.raises(RemoteProtocolError, match="max_frame"):
        b.next_event()
    with pytest.raises(LocalProtocolError):
        a.send(Kind.CALL, T.Call(call_id=1, actor_id=1, method="m"), [b"x" * 10_001])


def call_frames(a: Connection, buffers: list) -> list:
    return a.send(Kind.CALL, T.Call(call_id=7, actor_id=3, method="add", payload=b"stream"), buffers)


@pytest.mark.parametrize("chunk", [None, 1, 7, 4096])
def test_frames_whole_and_split(chunk: int | None) -> None:
    a, b = make_pair(large=1000)
    handshake(a, b)
    big = np.arange(5000, dtype=np.float64)
    frames = call_frames(a, [b"small-buffer", memoryview(big)]) + a.send(Kind.CANCEL, T.Cancel(call_id=7))
    events = feed(b, frames, chunk)
    assert [e.kind for e in events] == [Kind.CALL, Kind.CANCEL]
    call = events[0]
    assert call.body.method == "add" and call.body.payload == b"stream"
    assert bytes(call.buffers[0]) == b"small-buffer"
    assert np.array_equal(np.frombuffer(call.buffers[1], dtype=np.float64), big)
    assert all(not memoryview(buf).readonly for buf in call.buffers)


def test_large_buffers_land_in_alloc_memory_without_copy() -> None:
    blocks = []

    def alloc(n: int) -> memoryview:
        blocks.append(bytearray(n))
        return memoryview(blocks[-1])

    a, b = make_pair(large=1000, alloc=alloc)
    handshake(a, b)
    payload = os.urandom(100_000)
    frames = call_frames(a, [payload])
    # the sender's frames reference the payload's own memory, not a copy
    assert any(isinstance(f, memoryview) and f.obj is payload for f in frames)
    data = b"".join(bytes(f) for f in frames)
    # the receiver asks for the destination as soon as the body is parsed, and bytes go straight there
    header_and_body = len(data) - len(payload)
    b.receive_data(data[:header_and_body + 10])
    assert b.next_event() is NEED_DATA
    dest = b.get_buffer()
    assert dest.obj is blocks[0]
    rest = data[header_and_body + 10:]
    dest[:len(rest)] = rest
    b.buffer_updated(len(rest))
    msg = b.next_event()
    assert isinstance(msg, Message) and msg.buffers[0].obj is blocks[0]
    assert bytes(blocks[0]) == payload


def test_trailing_garbage_after_valid_frames() -> None:
    a, b = make_pair()
    handshake(a, b)
    frames = a.send(Kind.HEARTBEAT, T.Heartbeat(seq=1))
    b.receive_data(b"".join(bytes(f) for f in frames) + b"\xff" * 40)
    assert b.next_event().kind == Kind.HEARTBEAT
    with pytest.raises(RemoteProtocolError):
        b.next_event()
    assert b.state is State.CLOSED


def test_buffer_sizes_must_match_header() -> None:
    a, b = make_pair()
    handshake(a, b)
    body = encode(T.Call(call_id=1, actor_id=1, method="m", buffers=[T.BufferDesc(size=10)]))
    b.receive_data(HEADER.pack(len(body), 1, Kind.CALL, 0, 11) + body)
    with pytest.raises(RemoteProtocolError, match="add up"):
        b.next_event()


def test_missing_required_field() -> None:
    a, b = make_pair()
    handshake(a, b)
    body = encode(T.Reply())  # call_id missing
    b.receive_data(HEADER.pack(len(body), 1, Kind.REPLY, 0, 0) + body)
    with pytest.raises(RemoteProtocolError, match="call_id"):
        b.next_event()


def test_goodbye_closes() -> None:
    a, b = make_pair()
    handshake(a, b)
    feed(b, a.send(Kind.GOODBYE, T.Goodbye(reason="bye")))
    assert b.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        b.send(Kind.HEARTBEAT, T.Heartbeat(seq=1))


def test_send_before_ready_is_a_local_error() -> None:
    a, _ = make_pair()
    with pytest.raises(LocalProtocolError):
        a.send(Kind.CALL, T.Call(call_id=1, actor_id=1, method="m"))


@pytest.mark.parametrize("blob", [
    struct.pack("!bhi", 11, 2, 2**31 - 1) + b"abc",           # binary length far past the data
    struct.pack("!bhi", 11, 2, -5) + b"abc",                   # negative length
    struct.pack("!bhbi", 15, 5, 12, 2**31 - 1) + b"\0" * 10,  # list count far past the data
    struct.pack("!bh", 12, 99) * 5000,                         # deep nesting
    struct.pack("!bhbbi", 13, 9, 11, 11, 2**30),               # map count
    b"",
])
def test_validator_bounds_lengths(blob: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(Kind.HELLO, blob)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bodies_only_raise_protocol_errors(blob: bytes) -> None:
    for kind in (Kind.HELLO, Kind.CALL, Kind.REPLY, Kind.FAILURE):
        try:
            decode(kind, blob)
        except RemoteProtocolError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.booleans())
def test_random_streams_only_raise_protocol_errors(blob: bytes, authenticated: bool) -> None:
    a, b = make_pair()
    if authenticated:
        handshake(a, b)
    try:
        b.receive_data(blob)
        while b.next_event() not in (NEED_DATA, CLOSED):
            pass
    except (RemoteProtocolError, AuthenticationError):
        assert b.state is State.CLOSED


@settings(max_examples=100, deadline=None)
@given(
    calls=st.lists(st.tuples(st.integers(1, 2**62), st.integers(0, 2**62), st.text(max_size=30),
                             st.binary(max_size=200), st.lists(st.binary(max_size=3000), max_size=3)),
                   min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 20_000), max_size=6),
)
def test_roundtrip_any_split(calls: list, cuts: list) -> None:
    a, b = make_pair(large=1024)
    handshake(a, b)
    frames = []
    for cid, actor, method, payload, bufs in calls:
        frames += a.send(Kind.CALL, T.Call(call_id=cid, actor_id=actor, method=method, payload=payload), bufs)
    data = b"".join(bytes(f) for f in frames)
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    events = []
    for lo, hi in zip(points, points[1:]):
        b.receive_data(data[lo:hi])
        while (ev := b.next_event()) not in (NEED_DATA, CLOSED):
            events.append(ev)
    assert len(events) == len(calls)
    for ev, (cid, actor, method, payload, bufs) in zip(events, calls):
        assert (ev.body.call_id, ev.body.actor_id, ev.body.method, ev.body.payload or b"") == \
            (cid, actor, method, payload)
        assert [bytes(x) for x in ev.buffers] == bufs


def test_validate_accepts_every_message_kind() -> None:
    samples = [
        T.Hello(version=1, nonce=b"n" * 32, node_id="x"), T.Welcome(version=1, nonce=b"n" * 32, node_id="y"),
        T.Auth(proof=b"p"), T.Call(call_id=1, actor_id=2, method="m", buffers=[T.BufferDesc(size=3)]),
        T.Reply(call_id=1, payload=b"x"), T.Failure(call_id=1, kind=1, type_name="E", message="m"),
        T.Cancel(call_id=1), T.Heartbeat(seq=1, sent_at=1.5), T.Goodbye(reason="r"),
    ]
    for s in samples:
        validate(encode(s))


# ---------------------------------------------------------------------------- the hand-written CALL/REPLY codec
# Both implementations, the pure-Python one and the compiled one (when built), pass the same tests; the compiled
# one must also agree with the pure one on every input, bad ones included.
from disto.wire import codec, fastcodec  # noqa: E402
from disto.wire.framing import inline_sizes  # noqa: E402

try:
    from disto.wire import _speedups  # noqa: E402
except ImportError:  # not built (no compiler at install time): its tests skip, the pure codec's still run
    _speedups = None

CODECS = [pytest.param(fastcodec, id="python"),
          pytest.param(_speedups, id="compiled",
                       marks=pytest.mark.skipif(_speedups is None, reason="the compiled codec is not built"))]

_i64 = st.integers(-(2**63), 2**63 - 1)
_sizes = st.lists(st.integers(0, 2**40), max_size=4)


@pytest.mark.parametrize("impl", CODECS)
@settings(max_examples=300, deadline=None)
@given(call_id=_i64, actor_id=_i64, method=st.text(max_size=40), payload=st.none() | st.binary(max_size=200),
       sizes=_sizes, oob=st.booleans(), node_id=st.none() | st.text(max_size=20),
       traceparent=st.none() | st.text(max_size=60))
def test_fast_call_codec_matches_thriftpy2(impl, call_id, actor_id, method, payload, sizes, oob, node_id,
                                           traceparent) -> None:
    ref = T.Call(call_id=call_id, actor_id=actor_id, method=method, payload=payload,
                 buffers=[T.BufferDesc(size=n) for n in sizes] or None, payload_oob=oob, node_id=node_id,
                 traceparent=traceparent)
    fast = impl.encode_call(call_id, actor_id, method, payload, sizes, oob, node_id, traceparent)
    assert fast == encode(ref)  # the same bytes thriftpy2 writes
    got, got_sizes = impl.decode_call(fast, 0, len(fast))
    assert (got.call_id, got.actor_id, got.method, got.payload, got.payload_oob, got.node_id, got.traceparent,
            got_sizes) == (call_id, actor_id, method, payload, oob, node_id, traceparent, sizes)
    back = decode(Kind.CALL, fast)  # and thriftpy2 reads what we write
    assert (back.call_id, back.method, back.payload, back.node_id) == (call_id, method, payload, node_id)
    framed = bytearray(b"h" * 7) + fast + b"t" * 5  # a body inside a receive buffer, as the connection has it
    got, _ = impl.decode_call(framed, 7, 7 + len(fast))
    assert (got.call_id, got.method, got.payload) == (call_id, method, payload)


@pytest.mark.parametrize("impl", CODECS)
@settings(max_examples=200, deadline=None)
@given(call_id=_i64, payload=st.none() | st.binary(max_size=200), sizes=_sizes, oob=st.booleans())
def test_fast_reply_codec_matches_thriftpy2(impl, call_id, payload, sizes, oob) -> None:
    ref = T.Reply(call_id=call_id, payload=payload, buffers=[T.BufferDesc(size=n) for n in sizes] or None,
                  payload_oob=oob)
    fast = impl.encode_reply(call_id, payload, sizes, oob)
    assert fast == encode(ref)
    got, got_sizes = impl.decode_reply(fast, 0, len(fast))
    assert (got.call_id, got.payload, got.payload_oob, got_sizes) == (call_id, payload, oob, sizes)


@pytest.mark.parametrize("impl", CODECS)
@settings(max_examples=200, deadline=None)
@given(call_id=_i64, actor_id=_i64, method=st.text(max_size=40), payload=st.none() | st.binary(max_size=200),
       oob=st.booleans(), node_id=st.none() | st.text(max_size=20), traceparent=st.none() | st.text(max_size=60),
       kind=st.sampled_from([Kind.REPLY, Kind.STREAM_ITEM]), max_body=st.integers(0, 400))
def test_whole_frames_are_the_header_and_the_body(impl, call_id, actor_id, method, payload, oob, node_id,
                                                  traceparent, kind, max_body) -> None:
    # call_frame / reply_frame: what the connection sends for a message without buffers, in one allocation;
    # None when the body is over max_body (the connection then raises its error)
    body = fastcodec.encode_call(call_id, actor_id, method, payload, (), oob, node_id, traceparent)
    frame = impl.call_frame(call_id, actor_id, method, payload, oob, node_id, traceparent, max_body)
    assert frame == (HEADER.pack(len(body), 1, Kind.CALL, 0, 0) + body if len(body) <= max_body else None)
    body = fastcodec.encode_reply(call_id, payload, (), oob)
    frame = impl.reply_frame(call_id, payload, oob, kind, max_body)
    assert frame == (HEADER.pack(len(body), 1, kind, 0, 0) + body if len(body) <= max_body else None)


def test_a_call_over_max_body_is_a_local_error_on_either_codec() -> None:
    a, b = make_pair(max_body=64)
    handshake(a, b)
    (frame,) = a.send_call(1, 16, "m", b"x" * 10, ())
    assert b"m" in bytes(frame)
    with pytest.raises(LocalProtocolError, match="exceeds max_body"):
        a.send_call(1, 16, "m", b"x" * 100, ())
    with pytest.raises(LocalProtocolError, match="exceeds max_body"):
        a.send_reply(1, b"x" * 100)


@pytest.mark.parametrize("impl", CODECS)
def test_fast_decoders_defer_unknown_layouts_to_the_generic_path(impl) -> None:
    # a buffer kind this side does not know: not for the fast path, the generic one says what is wrong
    odd = encode(T.Call(call_id=1, actor_id=2, method="m", buffers=[T.BufferDesc(size=4, kind=7)]))
    assert impl.decode_call(odd, 0, len(odd)) is None
    with pytest.raises(RemoteProtocolError, match="unknown buffer kind"):
        inline_sizes(decode(Kind.CALL, odd))


_descs = st.lists(st.integers(0, 2**40) | st.builds(
    T.BufferDesc, size=st.integers(0, 2**40), kind=st.sampled_from([1, 2, 3]),
    segment=st.none() | st.text(max_size=30), offset=st.none() | _i64, handle=st.none() | st.binary(max_size=40)),
    max_size=4)


@pytest.mark.parametrize("impl", CODECS)
@settings(max_examples=200, deadline=None)
@given(descs=_descs, payload=st.none() | st.binary(max_size=50), oob=st.booleans())
def test_fast_codec_carries_shared_memory_and_cuda_descriptors(impl, descs, payload, oob) -> None:
    # sizes for inline buffers, whole descriptors for memory that lives elsewhere: the bytes thriftpy2 writes
    full = [d if isinstance(d, T.BufferDesc) else T.BufferDesc(size=d) for d in descs] or None
    call = impl.encode_call(3, 17, "put", payload, descs, oob, "n1")
    assert call == encode(T.Call(call_id=3, actor_id=17, method="put", payload=payload, buffers=full,
                                 payload_oob=oob, node_id="n1"))
    reply = impl.encode_reply(4, payload, descs, oob)
    assert reply == encode(T.Reply(call_id=4, payload=payload, buffers=full, payload_oob=oob))
    for body, dec in ((call, impl.decode_call), (reply, impl.decode_reply)):
        got = dec(body, 0, len(body))
        if got is None:  # a reply without a payload takes the general loop; still ours, not thriftpy2's
            assert payload is None and dec is impl.decode_reply
            continue
        msg, items = got
        assert items == descs  # inline: its size; elsewhere: the descriptor, every field kept
        assert msg.buffers == (descs if any(isinstance(d, T.BufferDesc) for d in descs) else None)


_odd_descs = st.lists(st.integers(-2**70, 2**70) | st.builds(
    T.BufferDesc, size=st.none() | st.integers(-2**70, 2**70) | st.text(max_size=3),
    kind=st.none() | st.integers(-2**40, 2**40), segment=st.none() | st.text(max_size=20) | st.binary(max_size=5),
    offset=st.none() | st.integers(-2**70, 2**70), handle=st.none() | st.binary(max_size=20) | st.text(max_size=3)),
    max_size=4)


def _encoded(fn, *args) -> object:
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - the outcome compared, whatever it is
        # (b"".join's message counts the parts before the bad one, which the two writers split differently)
        return (type(e).__name__, re.sub(r"sequence item \d+", "sequence item N", str(e)))


@pytest.mark.skipif(_speedups is None, reason="the compiled codec is not built")
@settings(max_examples=400, deadline=None)
@given(descs=_odd_descs, oob=st.booleans())
def test_compiled_descriptor_writer_agrees_with_the_pure_one_on_any_fields(descs, oob) -> None:
    # the compiled writer takes the usual descriptors; for anything else it hands over to the pure helper, so the
    # bytes, or the error, are the same
    for args in ((3, 17, "put", b"p", descs, oob, "n1"),):
        assert _encoded(_speedups.encode_call, *args) == _encoded(fastcodec.encode_call, *args)
    assert _encoded(_speedups.encode_reply, 4, b"p", descs, oob) == _encoded(fastcodec.encode_reply, 4, b"p", descs,
                                                                             oob)


def _outcome(impl, name: str, data: bytes) -> object:
    """What a decoder makes of ``data``: the message's fields and the sizes, None, or the protocol error."""
    try:
        got = getattr(impl, name)(data, 0, len(data))
    except RemoteProtocolError as e:
        return ("error", str(e))
    if got is None:
        return None
    msg, sizes = got
    keys = fastcodec.CallMsg.__slots__ if name == "decode_call" else fastcodec.ReplyMsg.__slots__
    return {k: getattr(msg, k) for k in keys}, sizes


_blobs = st.binary(max_size=300)


@st.composite
def _mutated_bodies(draw: st.DrawFn) -> bytes:
    """A valid CALL or REPLY body with a few bytes changed, cut or added: what the decoders' bounds must stop."""
    if draw(st.booleans()):
        body = fastcodec.encode_call(draw(_i64), draw(_i64), draw(st.text(max_size=8)),
                                     draw(st.none() | st.binary(max_size=20)), draw(_sizes), draw(st.booleans()),
                                     draw(st.none() | st.text(max_size=8)))
    else:
        body = fastcodec.encode_reply(draw(_i64), draw(st.none() | st.binary(max_size=20)), draw(_sizes),
                                      draw(st.booleans()))
    b = bytearray(body)
    for _ in range(draw(st.integers(1, 3))):  # a byte changed: a type, a field id, a length, a STOP...
        b[draw(st.sampled_from(range(len(b))))] = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 15,
                                                                         0x7F, 0x80, 0xFF]))
    cut = draw(st.sampled_from(["whole", "whole", "cut", "longer"]))
    if cut == "cut":
        b = b[:draw(st.integers(0, len(b)))]
    elif cut == "longer":
        b += draw(st.binary(min_size=1, max_size=3))
    return bytes(b)


_BYTE_VALUES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 15, 0x7F, 0x80, 0xFF]


@pytest.mark.skipif(_speedups is None, reason="the compiled codec is not built")
def test_compiled_codec_agrees_on_every_single_byte_change_and_cut() -> None:
    # exhaustive over a few canonical bodies: every position set to each value of interest, every truncation
    bodies = [fastcodec.encode_call(7, 16, "add", b"\x80\x05K\x01.", [], False, "node-1"),
              fastcodec.encode_call(-1, 2**40, "m", None, [4096, 0], True, None, "00-ab-cd-01"),
              fastcodec.encode_call(1, 2, "", b"", [3], False, ""),
              fastcodec.encode_reply(9, b"\x80\x05K\x02.", [], False),
              fastcodec.encode_reply(-5, b"", [10, 4096], True),
              fastcodec.encode_reply(3, None, [], False),
              fastcodec.encode_call(2, 16, "put", b"p", [T.BufferDesc(size=4096, kind=2, segment="/proc/9/fd/3",
                                                                       offset=64), 12], True, "n"),
              fastcodec.encode_reply(8, b"r", [T.BufferDesc(size=4, kind=1, segment="disto-1-buf-2", offset=0),
                                               T.BufferDesc(size=4, kind=3, handle=b"h")], False)]
    for body in bodies:
        variants = [body[:n] for n in range(len(body))] + [body + b"\x00", body + b"\x07"]
        for i in range(len(body)):
            for v in _BYTE_VALUES:
                b = bytearray(body)
                b[i] = v
                variants.append(bytes(b))
        for data in variants:
            for name in ("decode_call", "decode_reply"):
                assert _outcome(_speedups, name, data) == _outcome(fastcodec, name, data), (name, data)


@pytest.mark.skipif(_speedups is None, reason="the compiled codec is not built")
@settings(max_examples=1500, deadline=None)
@given(st.one_of(_blobs, _mutated_bodies()))
def test_compiled_codec_agrees_with_the_pure_one_on_any_bytes(data: bytes) -> None:
    for name in ("decode_call", "decode_reply"):
        assert _outcome(_speedups, name, data) == _outcome(fastcodec, name, data), name


def _frame_outcome(impl, rx: bytes, start: int, max_body: int) -> object:
    try:
        got = impl.decode_frame(rx, start, len(rx), max_body)
    except RemoteProtocolError as e:
        return ("error", str(e))
    if got is None:
        return None
    ev, end = got
    keys = fastcodec.CallMsg.__slots__ if type(ev).__name__ == "Call" else fastcodec.ReplyMsg.__slots__
    return type(ev).__name__, {k: getattr(ev.body, k) for k in keys}, ev.buffers, end


@pytest.mark.skipif(_speedups is None, reason="the compiled codec is not built")
@settings(max_examples=1000, deadline=None)
@given(body=_mutated_bodies(), kind=st.sampled_from([Kind.CALL, Kind.REPLY, Kind.STREAM_ITEM, Kind.FAILURE]),
       version=st.sampled_from([1, 1, 1, 2]), flags=st.sampled_from([0, 0, 0, 1, 0x100]),
       oob=st.sampled_from([0, 0, 0, 5]), lie=st.sampled_from([0, 0, 0, -1, 1, 1 << 31]),
       before=st.binary(max_size=5), after=st.binary(max_size=5), max_body=st.sampled_from([16 << 20, 8]))
def test_compiled_frame_decoder_agrees_with_the_pure_one(body, kind, version, flags, oob, lie, before, after,
                                                        max_body) -> None:
    # whole frames (a header that may lie about the body's length, carry flags, another version, oob bytes)
    # inside a receive buffer: the same event and end, or the same refusal to take it
    n = max(0, min(len(body) + lie, 2**32 - 1))
    rx = before + HEADER.pack(n, version, kind, flags, oob) + body + after
    for start in (0, len(before)):
        assert _frame_outcome(_speedups, rx, start, max_body) == _frame_outcome(fastcodec, rx, start, max_body)


@pytest.mark.parametrize("impl", CODECS)
def test_decode_frame_takes_whole_plain_calls_and_replies_only(impl) -> None:
    call = fastcodec.encode_call(5, 16, "add", b"p", [], False, None)
    rx = HEADER.pack(len(call), 1, Kind.CALL, 0, 0) + call
    ev, end = impl.decode_frame(rx + b"next", 0, len(rx) + 4, 1 << 20)
    assert type(ev).__name__ == "Call" and (ev.body.call_id, ev.body.method, ev.buffers, end) == (5, "add", [], len(rx))
    assert impl.decode_frame(rx, 0, len(rx) - 1, 1 << 20) is None  # not all of it has arrived
    assert impl.decode_frame(rx, 0, len(rx), len(call) - 1) is None  # too big: the general path refuses it
    with_buffers = fastcodec.encode_reply(6, b"r", [4], False)
    rx = HEADER.pack(len(with_buffers), 1, Kind.REPLY, 0, 4) + with_buffers + b"abcd"
    assert impl.decode_frame(rx, 0, len(rx), 1 << 20) is None  # buffers follow: the general path reads them
    item = fastcodec.encode_reply(7, b"i", [], False)
    rx = HEADER.pack(len(item), 1, Kind.STREAM_ITEM, 0, 0) + item
    ev, _ = impl.decode_frame(rx, 0, len(rx), 1 << 20)
    assert type(ev).__name__ == "StreamItem" and ev.body.call_id == 7


@pytest.mark.parametrize("impl", CODECS)
@pytest.mark.parametrize("kind", [Kind.CALL, Kind.REPLY])
def test_decode_frame_takes_shared_memory_descriptors_as_the_general_path_does(impl, kind) -> None:
    # descriptors of memory the receiver maps (no bytes after the body): the frame decoder hands them over in the
    # event's buffers, in order, as the connection's general path does (which it once had to decode again)
    descs = [T.BufferDesc(size=4096, kind=T.BufferKind.SHM, segment="disto-v-1", offset=0),
             T.BufferDesc(size=64, kind=T.BufferKind.SHM_SHARED, segment="/proc/1/fd/3", offset=128)]
    body = (fastcodec.encode_call(9, 16, "add", b"p", descs, False, "n1") if kind == Kind.CALL
            else fastcodec.encode_reply(9, b"r", descs, False))
    rx = HEADER.pack(len(body), 1, kind, 0, 0) + body
    ev, end = impl.decode_frame(rx, 0, len(rx), 1 << 20)
    assert end == len(rx) and ev.body.call_id == 9
    assert [(d.kind, d.segment, d.offset, d.size) for d in ev.buffers] == [
        (T.BufferKind.SHM, "disto-v-1", 0, 4096), (T.BufferKind.SHM_SHARED, "/proc/1/fd/3", 128, 64)]
    a, b = make_pair()
    handshake(a, b)
    b.receive_data(rx)
    general = b._next_event()  # the general path alone
    assert [(d.kind, d.segment, d.offset, d.size) for d in general.buffers] == \
        [(d.kind, d.segment, d.offset, d.size) for d in ev.buffers]
    # a descriptor of inline bytes among them: those bytes follow the body, so the general path reads them
    mixed = (fastcodec.encode_call(9, 16, "add", b"p", [descs[0], 0], False, "n1") if kind == Kind.CALL
             else fastcodec.encode_reply(9, b"r", [descs[0], 0], False))
    rx = HEADER.pack(len(mixed), 1, kind, 0, 0) + mixed
    assert impl.decode_frame(rx, 0, len(rx), 1 << 20) is None


@pytest.mark.parametrize("impl", CODECS)
@pytest.mark.parametrize("kind", [Kind.CALL, Kind.REPLY])
def test_frames_of_shared_memory_descriptors_are_built_whole(impl, kind) -> None:
    # descriptors only (nothing follows the body): one frame, header and body in one allocation, the same bytes
    # as the general path's, which the receiver reads back with the descriptors in order
    descs = [T.BufferDesc(size=4096, kind=T.BufferKind.SHM, segment="disto-v-1", offset=0),
             T.BufferDesc(size=64, kind=T.BufferKind.SHM_SHARED, segment="/proc/1/fd/3", offset=128)]
    if kind == Kind.CALL:
        frame = impl.call_frame(9, 16, "add", b"p", False, "n1", None, 1 << 20, descs)
        body = fastcodec.encode_call(9, 16, "add", b"p", descs, False, "n1")
        assert impl.call_frame(9, 16, "add", b"p", False, "n1", None, len(body) - 1, descs) is None
    else:
        frame = impl.reply_frame(9, b"r", False, Kind.REPLY, 1 << 20, descs)
        body = fastcodec.encode_reply(9, b"r", descs, False)
        assert impl.reply_frame(9, b"r", False, Kind.REPLY, len(body) - 1, descs) is None
    assert frame == HEADER.pack(len(body), 1, kind, 0, 0) + body
    # what a sender builds for each such buffer, and what a receiver gets back: plain T.BufferDesc objects
    made = [impl.external_desc(d.size, d.kind, d.segment, d.offset) for d in descs]
    assert made == descs and all(type(d) is T.BufferDesc and vars(d) == vars(e) for d, e in zip(made, descs))
    got, _ = impl.decode_frame(frame, 0, len(frame), 1 << 20)
    assert got.buffers == descs and all(type(d) is T.BufferDesc for d in got.buffers)
    a, b = make_pair()
    handshake(a, b)
    out = (a.send_call(9, 16, "add", b"p", descs, False, "n1") if kind == Kind.CALL
           else a.send_reply(9, b"r", descs, False))
    assert out == [frame]
    (ev,) = feed(b, out)
    assert [(d.kind, d.segment, d.offset, d.size) for d in ev.buffers] == [
        (T.BufferKind.SHM, "disto-v-1", 0, 4096), (T.BufferKind.SHM_SHARED, "/proc/1/fd/3", 128, 64)]
    # a descriptor of another kind among them still goes through the general path, which refuses it
    with pytest.raises(LocalProtocolError):
        a.send_call(10, 16, "add", b"p", [descs[0], T.BufferDesc(size=4, kind=T.BufferKind.INLINE)], False, "n1")


@st.composite
def _release_bodies(draw: st.DrawFn) -> bytes:
    """A RELEASE body as thriftpy2 writes it, sometimes with a few bytes changed."""
    descs = [T.BufferDesc(size=draw(st.integers(0, 1 << 40)),
                          kind=draw(st.sampled_from([T.BufferKind.SHM, T.BufferKind.SHM_SHARED, 0])),
                          segment=draw(st.none() | st.text(max_size=12)),
                          offset=draw(st.none() | st.integers(0, 1 << 40)))
             for _ in range(draw(st.integers(0, 3)))]
    b = bytearray(encode(T.Release(buffers=descs)))
    for _ in range(draw(st.integers(0, 2))):
        b[draw(st.sampled_from(range(len(b))))] = draw(st.sampled_from([0, 1, 2, 8, 10, 11, 12, 15, 0x7F, 0xFF]))
    return bytes(b)


def _descs_of(release) -> list:
    return [(d.size, d.kind, d.segment, d.offset, d.handle) for d in release.buffers]


@settings(max_examples=1500, deadline=None)
@given(_release_bodies())
def test_fast_release_decoder_agrees_with_thriftpy2(body: bytes) -> None:
    # what it takes, thriftpy2 takes too and reads the same; what it cannot judge it leaves to the generic path
    fast = fastcodec.decode_release(body, 0, len(body))  # never raises: odd input is the generic path's to judge
    if fast is not None:
        assert _descs_of(fast) == _descs_of(decode(Kind.RELEASE, body))


@pytest.mark.skipif(_speedups is None, reason="the compiled codec is not built")
@settings(max_examples=1500, deadline=None)
@given(_release_bodies())
def test_the_compiled_release_decoder_gives_what_the_pure_one_gives(body: bytes) -> None:
    fast, compiled = fastcodec.decode_release(body, 0, len(body)), _speedups.decode_release(body, 0, len(body))
    assert (fast is None) == (compiled is None)
    if fast is not None:
        assert _descs_of(compiled) == _descs_of(fast)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=4))
def test_release_bodies_are_encoded_as_thriftpy2_writes_them(names: list) -> None:
    rel = T.Release(buffers=[T.BufferDesc(size=0, kind=T.BufferKind.SHM, segment=n) for n in names])
    assert fastcodec.encode_release(names) == encode(rel)
    assert fastcodec.encode_release(names) == encode(rel)  # (again: from the per-name cache)


def test_send_release_frames_what_the_generic_send_frames() -> None:
    a, b = make_pair()
    handshake(a, b)
    names = ["disto-1-buf-2", "disto-1-buf-3"]
    rel = T.Release(buffers=[T.BufferDesc(size=0, kind=T.BufferKind.SHM, segment=n) for n in names])
    assert [bytes(f) for f in a.send_release(names)] == [bytes(f) for f in a.send(Kind.RELEASE, rel)]
    (ev,) = feed(b, a.send_release(names))
    assert type(ev).__name__ == "Release" and _descs_of(ev.body) == _descs_of(rel)


def test_release_frames_decode_fast_and_reach_the_receiver() -> None:
    a, b = make_pair()
    handshake(a, b)
    rel = T.Release(buffers=[T.BufferDesc(size=0, kind=T.BufferKind.SHM, segment="disto-v-7")])
    body = encode(rel)
    assert _descs_of(fastcodec.decode_release(body, 0, len(body))) == _descs_of(rel)
    (ev,) = feed(b, a.send(Kind.RELEASE, rel))
    assert type(ev).__name__ == "Release" and _descs_of(ev.body) == _descs_of(rel)


@pytest.mark.parametrize("impl", CODECS)
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fast_decoders_only_raise_protocol_errors(impl, blob: bytes) -> None:
    for dec in (impl.decode_call, impl.decode_reply):
        try:
            dec(blob, 0, len(blob))
        except RemoteProtocolError:
            pass


@pytest.mark.parametrize("impl", CODECS)
def test_fast_decoders_accept_fields_in_any_order(impl) -> None:
    decode_call, decode_reply = impl.decode_call, impl.decode_reply
    # a writer may emit fields in another order: same message, decoded by the general field loop
    fields = [struct.pack("!bhi", 11, 3, 3) + b"add", struct.pack("!bhq", 10, 2, 7), struct.pack("!bhb", 2, 6, 1),
              struct.pack("!bhq", 10, 1, 42), struct.pack("!bhi", 11, 4, 2) + b"pp"]
    body = b"".join(fields) + b"\0"
    msg, sizes = decode_call(body, 0, len(body))
    assert (msg.call_id, msg.actor_id, msg.method, msg.payload, msg.payload_oob, sizes) == (42, 7, "add", b"pp",
                                                                                          True, [])
    reply = struct.pack("!bhb", 2, 4, 0) + struct.pack("!bhq", 10, 1, 9) + b"\0"
    got, _ = decode_reply(reply, 0, len(reply))
    assert got.call_id == 9 and got.payload is None
    missing = struct.pack("!bhq", 10, 2, 7) + b"\0"
    with pytest.raises(RemoteProtocolError):
        decode_call(missing, 0, len(missing))
    wrong_type = struct.pack("!bhi", 8, 1, 5) + b"\0"  # call_id as i32: not ours to judge
    assert decode_call(wrong_type, 0, len(wrong_type)) is None


def test_the_codec_in_use_is_the_compiled_one_when_built() -> None:
    # DISTO_PURE_PYTHON=1 (CI's second pass) forces the pure one; otherwise a built extension must be used
    if codec.PURE_PYTHON_REQUESTED or _speedups is None:
        assert codec.IMPLEMENTATION == "python" and codec.decode_call is fastcodec.decode_call
    else:
        assert codec.IMPLEMENTATION == "compiled" and codec.decode_call is _speedups.decode_call


# ---------------------------------------------------------------------- the handshake's table, typed events
def test_the_handshake_is_its_transition_table() -> None:
    from disto.wire.handshake import TRANSITIONS, Step

    assert TRANSITIONS == {(Step.AWAIT_HELLO, Kind.HELLO): Step.AWAIT_AUTH,
                           (Step.AWAIT_WELCOME, Kind.WELCOME): Step.DONE,
                           (Step.AWAIT_AUTH, Kind.AUTH): Step.DONE}
    # a listener past HELLO wants AUTH: a second HELLO is refused
    a, b = make_pair()
    hello = a.data_to_send()
    b.receive_data(hello[0])
    assert b.next_event() is NEED_DATA and b._handshake.step is Step.AWAIT_AUTH
    b.receive_data(hello[0])
    with pytest.raises(AuthenticationError, match="expected AUTH during the handshake, got HELLO"):
        b.next_event()
    # a dialer wants WELCOME and nothing else
    a, b = make_pair()
    a.data_to_send()
    body = encode(T.Auth(proof=b"\0" * 32))
    a.receive_data(HEADER.pack(len(body), 1, Kind.AUTH, 0, 0) + body)
    with pytest.raises(AuthenticationError, match="expected WELCOME"):
        a.next_event()


def test_events_have_one_type_per_kind_and_the_sentinels_mean_one_thing_each() -> None:
    from disto.wire import Call, Cancel, Goodbye, Heartbeat, Release, Reply

    a, b = make_pair()
    handshake(a, b)
    assert b.next_event() is NEED_DATA
    frames = [*a.send_call(1, 16, "m", b"\x80\x05N."), *a.send_reply(1, b"\x80\x05N."),
              *a.send(Kind.CANCEL, T.Cancel(call_id=1)), *a.send(Kind.HEARTBEAT, T.Heartbeat(seq=1)),
              *a.send(Kind.RELEASE, T.Release(buffers=[])), *a.send(Kind.GOODBYE, T.Goodbye(reason="bye"))]
    events = feed(b, frames)
    assert [type(e) for e in events] == [Call, Reply, Cancel, Heartbeat, Release, Goodbye]
    assert events[0].body.method == "m" and events[-1].body.reason == "bye"
    assert b.next_event() is CLOSED  # after GOODBYE, and ever after
