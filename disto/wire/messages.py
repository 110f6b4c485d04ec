"""The Thrift IDL, loaded once, and safe encode/decode of message bodies.

thriftpy2's cython decoder trusts length fields (a binary length of 2**31 makes it allocate 2 GiB and read past
its buffer; a list count of 2**31 makes it loop for minutes). So every body is first walked by :func:`validate`,
a bounded scanner that checks each length and count against the bytes actually present, and only then decoded
by the cython protocol. No asyncio, sockets or torch here.
"""
from __future__ import annotations

import os
import struct
from typing import Any

import thriftpy2
from thriftpy2.protocol.cybin import TCyBinaryProtocol
from thriftpy2.transport.memory import TCyMemoryBuffer

from ..errors import RemoteProtocolError

IDL_PATH = os.path.join(os.path.dirname(__file__), "disto.thrift")
T: Any = thriftpy2.load(IDL_PATH, module_name="disto_thrift")

WIRE_VERSION: int = T.WIRE_VERSION
Kind = T.MessageKind
BufferKind = T.BufferKind
FailureKind = T.FailureKind

STRUCT_OF_KIND: dict[int, type] = {
    Kind.HELLO: T.Hello,
    Kind.WELCOME: T.Welcome,
    Kind.AUTH: T.Auth,
    Kind.CALL: T.Call,
    Kind.REPLY: T.Reply,
    Kind.FAILURE: T.Failure,
    Kind.CANCEL: T.Cancel,
    Kind.HEARTBEAT: T.Heartbeat,
    Kind.GOODBYE: T.Goodbye,
    Kind.RELEASE: T.Release,
    Kind.MODULES: T.Modules,
    Kind.STREAM_ITEM: T.StreamItem,
    Kind.STREAM_END: T.StreamEnd,
    Kind.STREAM_CREDIT: T.StreamCredit,
}

# Thrift binary type ids
_STOP, _BOOL, _BYTE, _DOUBLE, _I16, _I32, _I64, _STRING, _STRUCT, _MAP, _SET, _LIST = 0, 2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15
_FIXED = {_BOOL: 1, _BYTE: 1, _DOUBLE: 8, _I16: 2, _I32: 4, _I64: 8}
# the fewest bytes one element of each type can take: bounds loop counts by the data present
_MIN_SIZE = {**_FIXED, _STRING: 4, _STRUCT: 1, _MAP: 6, _SET: 5, _LIST: 5}
MAX_DEPTH = 16

_field_hdr = struct.Struct("!bh")
_i32 = struct.Struct("!i")
_list_hdr = struct.Struct("!bi")
_map_hdr = struct.Struct("!bbi")


def _skip(data: bytes, pos: int, ttype: int, end: int, depth: int) -> int:
    """Return the position after one value of `ttype` at `pos`, or raise RemoteProtocolError."""
    size = _FIXED.get(ttype)
    if size is not None:
        pos += size
        if pos > end:
            raise RemoteProtocolError("truncated value")
        return pos
    if ttype == _STRING:
        if pos + 4 > end:
            raise RemoteProtocolError("truncated length")
        (n,) = _i32.unpack_from(data, pos)
        pos += 4 + n
        if n < 0 or pos > end:
            raise RemoteProtocolError(f"string length {n} out of bounds")
        return pos
    if depth >= MAX_DEPTH:
        raise RemoteProtocolError("nesting too deep")
    if ttype == _STRUCT:
        return _walk_struct(data, pos, end, depth + 1)
    if ttype in (_LIST, _SET):
        if pos + 5 > end:
            raise RemoteProtocolError("truncated list header")
        etype, n = _list_hdr.unpack_from(data, pos)
        pos += 5
        min_size = _MIN_SIZE.get(etype)
        if min_size is None or n < 0 or n * min_size > end - pos:
            raise RemoteProtocolError(f"bad list (type {etype}, count {n})")
        esize = _FIXED.get(etype)
        if esize is not None:
            return pos + n * esize
        for _ in range(n):
            pos = _skip(data, pos, etype, end, depth + 1)
        return pos
    if ttype == _MAP:
        if pos + 6 > end:
            raise RemoteProtocolError("truncated map header")
        ktype, vtype, n = _map_hdr.unpack_from(data, pos)
        pos += 6
        kmin, vmin = _MIN_SIZE.get(ktype), _MIN_SIZE.get(vtype)
        if kmin is None or vmin is None or n < 0 or n * (kmin + vmin) > end - pos:
            raise RemoteProtocolError(f"bad map (count {n})")
        for _ in range(n):
            pos = _skip(data, pos, ktype, end, depth + 1)
            pos = _skip(data, pos, vtype, end, depth + 1)
        return pos
    raise RemoteProtocolError(f"unknown thrift type {ttype}")


def _walk_struct(data: bytes, pos: int, end: int, depth: int) -> int:
    while True:
        if pos >= end:
            raise RemoteProtocolError("struct not terminated")
        ttype = data[pos]
        if ttype == _STOP:
            return pos + 1
        if pos + 3 > end:
            raise RemoteProtocolError("truncated field header")
        pos = _skip(data, pos + 3, ttype, end, depth)


def validate(data: bytes) -> None:
    """Check that `data` is exactly one well-formed Thrift binary struct whose lengths fit the data."""
    end = len(data)
    if _walk_struct(data, 0, end, 0) != end:
        raise RemoteProtocolError("trailing bytes after struct")


def encode(obj: Any) -> bytes:
    buf = TCyMemoryBuffer()
    obj.write(TCyBinaryProtocol(buf))
    return buf.getvalue()


def _required(cls: type) -> tuple[str, ...]:
    return tuple(spec[1] for spec in cls.thrift_spec.values() if spec[-1] is True)


_REQUIRED: dict[type, tuple[str, ...]] = {cls: _required(cls) for cls in STRUCT_OF_KIND.values()}


def decode(kind: int, data: bytes) -> Any:
    """Decode a body of message `kind`. Raises RemoteProtocolError, and nothing else, for any bad input."""
    cls = STRUCT_OF_KIND.get(kind)
    if cls is None:
        raise RemoteProtocolError(f"unknown message kind {kind}")
    return decode_struct(cls, data)


def decode_struct(cls: type, data: bytes) -> Any:
    """Decode one Thrift struct of any IDL-generated class, bounded as :func:`decode` is."""
    validate(data)
    obj = cls()
    try:
        obj.read(TCyBinaryProtocol(TCyMemoryBuffer(data)))
    except Exception as e:  # the cython decoder raises many types on type mismatches
        raise RemoteProtocolError(f"undecodable {cls.__name__}: {e}") from None
    required = _REQUIRED.get(cls)
    if required is None:
        required = _REQUIRED[cls] = _required(cls)
    for name in required:
        if getattr(obj, name) is None:
            raise RemoteProtocolError(f"{cls.__name__}.{name} is missing")
    return obj
