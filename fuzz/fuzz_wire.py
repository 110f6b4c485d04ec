"""Coverage-guided fuzzing of everything that parses bytes from a peer (atheris / libFuzzer).

    pip install 'disto[fuzz]'
    python fuzz/fuzz_wire.py -max_total_time=600 -rss_limit_mb=1024 -timeout=10 fuzz/corpus

Targets, chosen by the first input byte:
  0  a listener before the handshake: bytes from a stranger (nothing may reach the application: no event)
  1  an authenticated connection: frames after the handshake (any split of the input into reads)
  2  each message body through the bounded validator and the Thrift decoder
  3  the hand-written CALL/REPLY/RELEASE codec and frame decoder: the pure-Python one, and the compiled one
     (disto.wire._speedups, when built), which must give the same message, None, or the same error on every input
     (a difference is a crash)
  4  a request frame of the search service (header parser, then the bounded decoder)
  5  the search link (sans-IO ends): requests as a shard's session reads them after the secret (frames, the cached
     repeat, the views' checks: a segment name that is not a search segment's is refused before anything is
     opened), and answers as a router's end reads them
  6  the direct encoding of tensor-and-scalar payloads (disto.serialization.direct), over 0-3 buffers of any size:
     the compiled decoder and the pure-Python one (its source, loaded as a module of its own) must give the same
     value or the same SerializationError; only SerializationError may come out
  7  the compiled reader of scalar pickle streams (disto.serialization._scalars, when built): every stream it
     reads itself, pickle (an Unpickler that may not import anything) reads to the same value; the rest it
     leaves to pickle (not run here: pickle.loads of arbitrary bytes may call what they name)
The property: only RemoteProtocolError / AuthenticationError (a clean close) ever comes out (SerializationError
for target 6); anything else is a crash. libFuzzer's -timeout catches hangs, -rss_limit_mb an allocation driven by a length field.
"""
from __future__ import annotations

import importlib.util
import io
import os
import pickle
import sys
import types

import atheris
import torch  # (not instrumented: the direct decoder builds tensors)

with atheris.instrument_imports():
    from disto.errors import AuthenticationError, RemoteProtocolError
    from disto.wire import CLOSED, NEED_DATA, Connection, Identity, Message, Ready, State
    from disto.wire import codec, fastcodec
    if codec.IMPLEMENTATION == "compiled":
        from disto.wire import _speedups
    from disto.wire.messages import STRUCT_OF_KIND, decode
    from disto.errors import SerializationError
    from disto.serialization import direct
    from disto.serialization import scalars
    if scalars.IMPLEMENTATION == "compiled":
        from disto.serialization import _scalars

TOKEN = b"fuzzing-token-0123456789abcdef"
OK = (RemoteProtocolError, AuthenticationError)
MAX_FRAME = 1 << 26  # what a fuzz run may make a connection allocate for one frame's buffers

try:  # the search service is optional (needs faiss); fuzz its parser when it is there
    with atheris.instrument_imports():
        from disto.search import link as _link
        from disto.search import link_protocol as _link_protocol
        from disto.search import service as _search
except ImportError:
    _search = _link = _link_protocol = None
_link_server = None


def _outcome(impl: object, name: str, data: bytes) -> object:
    """A codec's answer to ``data``: the message's fields and sizes, None, or its protocol error's text."""
    try:
        got = getattr(impl, name)(data, 0, len(data))
    except RemoteProtocolError as e:
        return str(e)
    if got is None:
        return None
    msg, sizes = got
    slots = fastcodec.CallMsg.__slots__ if name == "decode_call" else fastcodec.ReplyMsg.__slots__
    return [getattr(msg, k) for k in slots], sizes


def _release_outcome(impl: object, data: bytes) -> object:
    """A RELEASE decoder's answer: its descriptors' fields, or None (never an exception)."""
    got = impl.decode_release(data, 0, len(data))  # type: ignore[attr-defined]
    return None if got is None else [(d.size, d.kind, d.segment, d.offset, d.handle) for d in got.buffers]


def _frame_outcome(impl: object, rx: bytes) -> object:
    try:
        got = impl.decode_frame(rx, 0, len(rx), 1 << 16)  # type: ignore[attr-defined]
    except RemoteProtocolError as e:
        return str(e)
    if got is None:
        return None
    ev, end = got
    slots = fastcodec.CallMsg.__slots__ if type(ev).__name__ == "Call" else fastcodec.ReplyMsg.__slots__
    return type(ev).__name__, [getattr(ev.body, k) for k in slots], end


def _fuzz_link(rest: bytes) -> None:
    global _link_server
    if _link_server is None:  # one server (a socket and a thread) for the whole run; its search is a no-op
        _link_server = _link.LinkServer(lambda *views: (0.0, 0.0), d=4, nlist=8, max_k=16)
    session = _link_server.session()
    try:  # as a shard reads a router that knows the secret
        session.feed(_link_server.secret + rest)
    except OK:
        pass
    router = _link_protocol.RouterEnd(0)
    try:  # no request is pending: any answer is refused cleanly
        router.receive(rest)
    except OK:
        pass


def _pure_direct() -> object:
    """disto.serialization.direct from its source, whether or not the compiled module is what imports."""
    spec = importlib.util.spec_from_file_location("disto.serialization._direct_source",
                                                  direct.__file__.split(".")[0] + ".py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    for f in [*vars(module).values(), *vars(module._Reader).values()]:  # coverage feedback (not an import)
        if isinstance(f, types.FunctionType) and f.__module__ == module.__name__:
            atheris.instrument_func(f)
    return module


_DIRECT_PURE = _pure_direct()


def _direct_outcome(impl: object, stream: bytes, buffers: list) -> object:
    try:
        value = impl.decode(stream, [memoryview(bytearray(b)) for b in buffers])  # type: ignore[attr-defined]
    except SerializationError as e:
        return f"error: {e}"
    return _describe(value)


def _describe(v: object) -> object:
    if isinstance(v, torch.Tensor):
        return ("tensor", str(v.dtype), tuple(v.shape), v.requires_grad, type(v).__name__, bytes(v.detach().view(-1)
                                                                                                  .view(torch.uint8)))
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, [_describe(x) for x in v])
    if isinstance(v, dict):
        return ("dict", [(k, _describe(x)) for k, x in v.items()])
    if isinstance(v, float) and v != v:
        return "nan"
    return (type(v).__name__, v)


def _fuzz_direct(fdp: atheris.FuzzedDataProvider) -> None:
    buffers = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096)) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    stream = bytes((direct.MAGIC, direct.VERSION)) + fdp.ConsumeBytes(fdp.remaining_bytes())
    compiled = _direct_outcome(direct, stream, buffers)
    pure = _direct_outcome(_DIRECT_PURE, stream, buffers)
    if compiled != pure:
        raise AssertionError(f"direct: compiled {compiled!r} != pure {pure!r}")


class _NoImports(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(f"no imports here ({module}.{name})")


def _same(v: object) -> str:
    """A value's type and repr, nested (nan equals nan, -0.0 differs from 0.0)."""
    if isinstance(v, tuple):
        return "(" + ",".join(_same(x) for x in v) + ")"
    return f"{type(v).__name__}:{v!r}"


def _fuzz_scalars(rest: bytes) -> None:
    if scalars.IMPLEMENTATION != "compiled":
        return
    got = _scalars.fast_loads(rest)
    if got is _scalars.GIVE_UP:
        return
    try:
        want = _NoImports(io.BytesIO(rest)).load()
    except Exception as e:  # noqa: BLE001 - pickle refusing what the fast reader took is the bug
        raise AssertionError(f"scalars read {rest!r} as {got!r}; pickle: {type(e).__name__}: {e}") from None
    if _same(got) != _same(want):
        raise AssertionError(f"scalars read {rest!r} as {got!r}; pickle as {want!r}")


def _pair() -> tuple[Connection, Connection]:
    a = Connection(dialer=True, token=TOKEN, identity=Identity("A", "127.0.0.1:1", "h", 1), max_frame=MAX_FRAME)
    b = Connection(dialer=False, token=TOKEN, identity=Identity("B", "127.0.0.1:2", "h", 2), max_frame=MAX_FRAME)
    return a, b


def _pump(src: Connection, dst: Connection) -> None:
    for d in src.data_to_send():
        dst.receive_data(d)
    while dst.next_event() not in (NEED_DATA, CLOSED):
        pass


def _authenticated() -> Connection:
    a, b = _pair()
    _pump(a, b)
    _pump(b, a)
    _pump(a, b)
    assert b.state is State.READY
    return b


def _feed(conn: Connection, fdp: atheris.FuzzedDataProvider, before_ready: bool) -> None:
    try:
        while fdp.remaining_bytes():
            chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 4096))
            conn.receive_data(chunk)
            while (ev := conn.next_event()) not in (NEED_DATA, CLOSED):
                if before_ready and isinstance(ev, (Message, Ready)):
                    # a stranger cannot forge the HMAC: nothing may get past the handshake
                    raise AssertionError(f"unauthenticated bytes produced {ev!r}")
    except OK:
        assert conn.state is State.CLOSED


def one_input(data: bytes) -> None:
    if not data:
        return
    target, rest = data[0] % 8, data[1:]
    fdp = atheris.FuzzedDataProvider(rest)
    if target == 0:
        _, listener = _pair()
        _feed(listener, fdp, before_ready=True)
    elif target == 1:
        _feed(_authenticated(), fdp, before_ready=False)
    elif target == 2:
        for kind in STRUCT_OF_KIND:
            try:
                decode(kind, rest)
            except RemoteProtocolError:
                pass
    elif target == 3:
        for name in ("decode_call", "decode_reply"):
            pure = _outcome(fastcodec, name, rest)
            if codec.IMPLEMENTATION == "compiled":
                compiled = _outcome(_speedups, name, rest)
                if compiled != pure:
                    raise AssertionError(f"{name}: compiled {compiled!r} != pure {pure!r}")
        if codec.IMPLEMENTATION == "compiled":  # a RELEASE body: the same descriptors, or both leave it (None)
            pure, compiled = _release_outcome(fastcodec, rest), _release_outcome(_speedups, rest)
            if compiled != pure:
                raise AssertionError(f"decode_release: compiled {compiled!r} != pure {pure!r}")
        if codec.IMPLEMENTATION == "compiled":  # the input as a receive buffer holding a frame
            pure, compiled = _frame_outcome(fastcodec, rest), _frame_outcome(_speedups, rest)
            if compiled != pure:
                raise AssertionError(f"decode_frame: compiled {compiled!r} != pure {pure!r}")
    elif target == 5:
        if _link is not None:
            _fuzz_link(rest)
    elif target == 6:
        _fuzz_direct(fdp)
    elif target == 7:
        _fuzz_scalars(rest)
    elif _search is not None:
        try:
            name, _mtype, _seq, offset = _search._parse_header(rest)
        except _search._BadRequest:
            return
        for fn in ("search", "info"):
            try:
                _search.decode_struct(getattr(_search.S.Search, f"{fn}_args"), rest[offset:])
            except RemoteProtocolError:
                pass


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    argv = list(sys.argv)
    print(f"fuzz_wire: the {codec.IMPLEMENTATION} CALL/REPLY codec is in use", file=sys.stderr)
    if not any(not a.startswith("-") for a in argv[1:]):
        # new inputs go to fuzz/work (not committed); the checked-in seeds are read only
        work = os.path.join(here, "work")
        os.makedirs(work, exist_ok=True)
        argv += [work, os.path.join(here, "corpus")]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
