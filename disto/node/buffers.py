"""How a node's payload buffers reach a peer: inline on the socket, or through shared memory when the peer is on
this host (the placement policy decides per buffer), with the shared-memory leases, RELEASE messages and
peer-death cleanup that go with it. One instance per node; it keeps its per-peer state keyed by channel."""
from __future__ import annotations

import asyncio
import functools
import threading
import sys
from typing import Any, Callable

from ..actor.threads import defer_to_loop
from ..errors import LocalProtocolError, SerializationError
from ..serialization import (Route, ShmExporter, ShmImporter, buffer_address, dumps, dumps_for, loads,
                             route_on_host)
from ..serialization import pickler, scalars
from ..transport import Channel
from ..wire import BufferKind, Release, T, external_desc

INLINE_PAYLOAD_MAX = 1 << 20  # a larger pickle stream travels out of band, not through a Thrift field
CUDA_COLLECT_EVERY = 1.0      # seconds between torch.cuda.ipc_collect() calls once CUDA IPC was used
_DESC = T.BufferDesc
_SHM = BufferKind.SHM
_SHM_SHARED = BufferKind.SHM_SHARED
_ROUTE_SHM = Route.SHM
_ROUTE_SHM_SHARED = Route.SHM_SHARED


def scalar_payload(stream: bytes) -> tuple[bytes, list, bool]:
    """A pickle stream made by the scalar fast path, as (stream, buffers, out of band): out of band when large
    (a 100 MB str travels like an array does)."""
    if len(stream) > INLINE_PAYLOAD_MAX:
        return stream, [memoryview(stream)], True
    return stream, [], False


SCALAR_TYPES = frozenset({int, float, str, bool, type(None)})
_scalar_dumps = scalars.dumps  # (pickle.dumps(v, 5), without a Pickler when compiled)
_plain_dumps = scalars.dumps_plain


def plain_payload(value: Any) -> tuple[bytes, list, bool] | None:
    """A reply's or stream item's value as (stream, buffers, out of band) when it needs no general pickling: a
    scalar (out of band when large, see scalar_payload), or a tuple, list or dict of scalars that the compiled
    writer takes (at most 1 KiB, in band); None for anything else (the router's serialize then takes it)."""
    if type(value) in SCALAR_TYPES:
        return scalar_payload(_scalar_dumps(value))
    stream = _plain_dumps(value)  # (None in pure Python)
    return None if stream is None else (stream, [], False)


def too_large(e: LocalProtocolError, max_frame: int) -> SerializationError:
    """What a call gets when its value does not fit in one frame (the connection is not affected)."""
    return SerializationError(f"the value is too large to send ({e}); the limit is NodeConfig.max_frame = "
                              f"{max_frame} bytes, which must be raised on every node")


class BufferRouter:
    def __init__(self, *, transfer: str, shm_min: int, shm_pool_bytes: int,
                 loop: Callable[[], asyncio.AbstractEventLoop | None],
                 ship: Callable[[Channel, set[str]], None]) -> None:
        self.transfer = transfer
        self._ship = ship  # sends the peer the source of our own modules a payload refers to
        self.shm_min = shm_min
        self.exporter = ShmExporter(max_free_bytes=shm_pool_bytes)
        self.importer = ShmImporter()
        self._loop = loop
        self._loop_thread = 0  # the loop's thread, once the node runs (set_loop_thread)
        self._leases: dict[Channel, dict[str, int]] = {}  # blocks lent to each peer: segment -> count
        self.releases: dict[Channel, list[str]] = {}     # the peer's blocks we no longer use, to tell it
        self._last_collect = 0.0

    def set_loop_thread(self, ident: int) -> None:
        self._loop_thread = ident

    def close(self) -> None:
        self.exporter.close()
        self.importer.close()

    def serialize(self, ch: Channel, obj: Any, mode: str | None) -> tuple[bytes, list, bool]:
        """Pickle for this channel's peer: (stream, buffers, stream is out of band). Buffers for a peer on this
        host go through shared memory as the placement policy says."""
        mode = mode or self.transfer
        modules: set[str] = set()
        if ch.same_host and mode != "tcp":
            cuda_before = pickler.CUDA_IPC_BYTES
            stream, bufs, shared = dumps_for(obj, same_host=True, modules=modules)
            if pickler.CUDA_IPC_BYTES != cuda_before:
                ch.cuda_bytes_out += pickler.CUDA_IPC_BYTES - cuda_before
            if bufs:
                bufs = self._export(ch, bufs, shared, mode)
        else:
            stream, bufs = dumps(obj, modules)
        if modules:
            self._ship(ch, modules)  # written now: ahead of the frame that needs them
        if len(stream) > INLINE_PAYLOAD_MAX:
            bufs.insert(0, memoryview(stream))
            return stream, bufs, True
        return stream, bufs, False

    def _export(self, ch: Channel, bufs: list, shared: dict, mode: str) -> list:
        out: list[Any] = []
        for v in bufs:
            n = v.nbytes
            addr = buffer_address(v)
            ref = shared.get(addr) if shared else None
            if ref is None:
                ref = self.exporter.find_shared(v, addr) or self.importer.find_shared(v, addr)
            r = route_on_host(ref is not None, n, mode, self.shm_min)
            if r is _ROUTE_SHM_SHARED:
                assert ref is not None
                ch.shm_bytes_out += n
                out.append(external_desc(n, _SHM_SHARED, ref[0], ref[1]))
            elif r is _ROUTE_SHM:
                ch.shm_bytes_out += n
                name, offset, _ = self.exporter.export_copy(v)
                leases = self._leases.setdefault(ch, {})
                leases[name] = leases.get(name, 0) + 1
                out.append(external_desc(n, _SHM, name, offset))
            else:
                out.append(v)
        return out

    def value_of(self, ch: Channel, body: Any, buffers: list) -> Any:
        """The value a CALL, REPLY or STREAM_ITEM carries: its pickle stream (inline, or the first out-of-band
        buffer) over its buffers, shared-memory ones mapped. SerializationError if it does not unpickle."""
        if body.payload_oob:
            if not buffers:
                raise SerializationError("payload marked out-of-band but no buffer came")
            stream, buffers = buffers[0], buffers[1:]
        else:
            stream = body.payload or b""
        if body.buffers is not None:  # descriptors were decoded: some buffers may live in shared memory
            buffers = self.import_(ch, buffers)
        return loads(stream, buffers)

    def import_(self, ch: Channel, bufs: list) -> list:
        """Turn shared-memory descriptors into memory; SHM blocks are released to the sender when dropped."""
        out = []
        for b in bufs:
            if type(b) is not _DESC:
                out.append(b)
            elif b.kind == _SHM:
                out.append(self.importer.import_(b.segment or "", b.offset or 0, b.size,
                                                 functools.partial(self._release_later, ch, b.segment)))
            elif b.kind == _SHM_SHARED:
                out.append(self.importer.import_(b.segment or "", b.offset or 0, b.size, None, shared=True))
            else:
                raise SerializationError(f"buffer kind {b.kind} is not supported here")
        return out

    # ------------------------------------------------------------------ telling senders what we dropped
    def _release_later(self, ch: Channel, name: str) -> None:
        # runs from a finalizer, in whatever thread dropped the last reference
        loop = self._loop()
        if loop is None or ch.closed or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            self._release_now(ch, name)  # on the loop already: no wake-up through the loop's pipe
            return
        if defer_to_loop(loop, self._release_now, ch, name):
            return  # an actor thread dropping a call's arguments: goes with the call's outcome
        try:
            loop.call_soon_threadsafe(self._release_now, ch, name)
        except RuntimeError:
            pass  # the loop is closing

    def _release_now(self, ch: Channel, name: str) -> None:
        if ch.closed:
            return
        names = self.releases.get(ch)
        if names is None:
            names = self.releases[ch] = []
            loop = self._loop()  # (the node's loop: this runs on it; get_running_loop() makes a getpid call)
            if loop is not None:
                loop.call_soon(self._flush_releases, ch)
        names.append(name)

    def _flush_releases(self, ch: Channel) -> None:
        names = self.releases.pop(ch, None)
        if names and ch.can_send():
            ch.write(ch.conn.send_release(names))

    def take_releases(self, ch: Channel) -> list:
        """The RELEASE frame for what we dropped of this peer's memory since the last one, if anything: to go
        out in the same write as a reply or call being written now (one wake-up of the peer, not two)."""
        if not self.releases:
            return []
        names = self.releases.pop(ch, None)
        if not names:
            return []
        return ch.conn.send_release(names)

    # ------------------------------------------------------------------ what peers tell us
    def on_release(self, ch: Channel, ev: Release) -> None:
        leases = self._leases.get(ch)
        if not leases:
            return
        for d in ev.body.buffers:
            name = d.segment or ""
            count = leases.get(name, 0)
            if count > 0:  # only what we leased to this very peer
                if count == 1:
                    del leases[name]
                else:
                    leases[name] = count - 1
                self.exporter.release(name)

    def peer_lost(self, ch: Channel) -> None:
        """The peer can no longer release what it held: take it all back."""
        self.releases.pop(ch, None)
        for name, count in self._leases.pop(ch, {}).items():
            for _ in range(count):
                self.exporter.release(name)

    def leased_to(self, ch: Channel) -> int:
        return sum(self._leases.get(ch, {}).values())

    def tick(self, now: float) -> None:
        """Let torch free CUDA memory whose IPC consumers are done with it (once this process shared some)."""
        if pickler.CUDA_IPC_USED and now - self._last_collect >= CUDA_COLLECT_EVERY:
            self._last_collect = now
            cuda = getattr(sys.modules.get("torch"), "cuda", None)
            if cuda is not None:
                cuda.ipc_collect()
