"""The ``Search`` Thrift service (``search.thrift``): a distributed index served to clients in any language.

Standard Thrift framing and binary protocol, so a stock client (C++, Java, Go, thriftpy2) talks to it; the server
side is ours rather than thriftpy2's, because that one reads frames of any announced size and decodes with length
fields it trusts. Here a frame is bounded before it is read, the body is walked by disto's bounded validator before
it is decoded, every call must carry the token (compared in constant time), idle and half-sent requests time out,
and the listener binds 127.0.0.1 unless told otherwise (pass ``ssl=`` to serve TLS beyond one host).
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import ssl as _ssl
import struct
from typing import Any

import numpy as np

from disto import DistoError, NodeLostError
from disto.wire.messages import decode_struct, encode

from ._idl import S
from .index import MAX_K, DistributedIndex

log = logging.getLogger("disto.search")

_VERSION_1 = -2147418112  # 0x80010000 as a signed i32: strict binary protocol, version 1
_CALL, _REPLY, _EXCEPTION = 1, 2, 3
_i32 = struct.Struct("!i")
_UNKNOWN_METHOD, _PROTOCOL_ERROR = 1, 7  # TApplicationException types


class _BadRequest(Exception):
    pass


def _message(name: str, mtype: int, seqid: int, body: bytes) -> bytes:
    raw = name.encode()
    head = _i32.pack(_VERSION_1 | mtype) + _i32.pack(len(raw)) + raw + _i32.pack(seqid)
    return _i32.pack(len(head) + len(body)) + head + body


def _app_exception(message: str, kind: int) -> bytes:
    raw = message.encode()[:1000]
    # TApplicationException {1: string message, 2: i32 type}
    return b"\x0b\x00\x01" + _i32.pack(len(raw)) + raw + b"\x08\x00\x02" + _i32.pack(kind) + b"\x00"


def _parse_header(frame: bytes) -> tuple[str, int, int, int]:
    if len(frame) < 12:
        raise _BadRequest("frame too short")
    (version,) = _i32.unpack_from(frame, 0)
    if version & 0xFFFF0000 != _VERSION_1 & 0xFFFF0000:
        raise _BadRequest("not a strict binary-protocol message (version 1)")
    (nlen,) = _i32.unpack_from(frame, 4)
    if not 0 < nlen <= 64 or 8 + nlen + 4 > len(frame):
        raise _BadRequest("bad method name")
    name = frame[8:8 + nlen].decode("ascii", "replace")
    (seqid,) = _i32.unpack_from(frame, 8 + nlen)
    return name, version & 0xFF, seqid, 12 + nlen


class SearchService:
    """Serve ``index`` over Thrift on ``host:port``. ``async with SearchService(index, token) as svc`` starts it;
    ``svc.address`` is where it listens."""

    def __init__(self, index: DistributedIndex, token: str | bytes, *, host: str = "127.0.0.1", port: int = 0,
                 ssl: _ssl.SSLContext | None = None, max_batch: int = 65536, idle_timeout: float = 300.0,
                 request_timeout: float = 30.0, max_connections: int = 1024) -> None:
        raw = token.encode() if isinstance(token, str) else bytes(token)
        if len(raw) < 16:
            raise ValueError("the service token must be at least 16 bytes")
        self.index = index
        self._token = raw
        self.host, self.port = host, port
        self._ssl = ssl
        self.max_batch = max_batch
        self.max_frame = max_batch * index.d * 4 + 4096
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task] = set()
        self.address = ""

    async def start(self) -> "SearchService":
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self._ssl,
                                                  ssl_handshake_timeout=self.request_timeout if self._ssl else None)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{self.host}:{port}"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            await self._server.wait_closed()

    async def __aenter__(self) -> "SearchService":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # ------------------------------------------------------------------ connections
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._conns) >= self.max_connections:
            writer.close()
            return
        self._conns.add(task)
        try:
            while True:
                async with asyncio.timeout(self.idle_timeout):
                    head = await reader.readexactly(4)
                (size,) = _i32.unpack(head)
                if not 12 <= size <= self.max_frame:
                    log.warning("search client sent a frame of %d bytes (limit %d): closing", size, self.max_frame)
                    return
                async with asyncio.timeout(self.request_timeout):
                    frame = await reader.readexactly(size)
                reply = await self._dispatch(frame)
                if reply is None:
                    return
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, _ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def _dispatch(self, frame: bytes) -> bytes | None:
        try:
            name, mtype, seqid, offset = _parse_header(frame)
        except _BadRequest as e:
            log.warning("bad search request: %s", e)
            return None
        fn = getattr(self, f"_do_{name}", None)
        if mtype != _CALL or fn is None:
            return _message(name, _EXCEPTION, seqid, _app_exception(f"unknown method {name!r}", _UNKNOWN_METHOD))
        args_cls = getattr(S.Search, f"{name}_args")
        result = getattr(S.Search, f"{name}_result")()
        try:
            args = decode_struct(args_cls, frame[offset:])
        except DistoError as e:
            return _message(name, _EXCEPTION, seqid, _app_exception(f"bad arguments: {e}", _PROTOCOL_ERROR))
        try:
            if not isinstance(args.token, str) or not hmac.compare_digest(args.token.encode(), self._token):
                raise _Refused("authentication failed: wrong or missing token")
            result.success = await fn(args)
        except _Refused as e:
            result.err = S.SearchError(message=str(e), lost_shard=False)
        except NodeLostError as e:
            result.err = S.SearchError(message=str(e), lost_shard=True)
        except (ValueError, TypeError, DistoError) as e:
            result.err = S.SearchError(message=f"{type(e).__name__}: {e}", lost_shard=False)
        return _message(name, _REPLY, seqid, encode(result))

    # ------------------------------------------------------------------ methods
    async def _do_info(self, args: Any) -> Any:
        ix = self.index
        return S.IndexInfo(d=ix.d, ntotal=await ix.ntotal(), nlist=ix.nlist, shards=len(ix.shards),
                           replicas=len(ix.shards[0]), max_k=MAX_K, max_batch=self.max_batch)

    async def _do_search(self, args: Any) -> Any:
        d = self.index.d
        q = args.queries
        if not isinstance(q, bytes) or not q or len(q) % (4 * d):
            raise _Refused(f"queries must be n * {d} little-endian float32 values "
                           f"({4 * d} bytes a query), got {len(q) if isinstance(q, bytes) else 0} bytes")
        xq = np.frombuffer(q, dtype="<f4").reshape(-1, d)
        if len(xq) > self.max_batch:
            raise _Refused(f"at most {self.max_batch} queries a call, got {len(xq)}")
        if args.k is None or args.nprobe is None:
            raise _Refused("k and nprobe are required")
        res = await self.index.search(xq, k=args.k, nprobe=args.nprobe, allow_partial=bool(args.allow_partial))
        return S.SearchResult(n=len(xq), k=args.k, distances=_le_bytes(res.distances, "<f4"),
                              labels=_le_bytes(res.labels, "<i8"), partial=res.partial,
                              missing_shards=list(res.missing))


class _Refused(Exception):
    pass


def _le_bytes(a: np.ndarray, dtype: str) -> bytes:
    # one copy: astype() would make a second one even when the array already has this layout
    return np.ascontiguousarray(a, dtype=dtype).tobytes()


async def serve(index: DistributedIndex, token: str | bytes, **kwargs: Any) -> SearchService:
    """Start a :class:`SearchService` (see its arguments) and return it; ``await svc.stop()`` ends it."""
    return await SearchService(index, token, **kwargs).start()
