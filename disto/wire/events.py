"""What a :class:`~disto.wire.Connection` hands its user: one type per event, and two sentinels.

``next_event()`` returns an event, :data:`NEED_DATA` (feed more bytes) or :data:`CLOSED` (the connection ended:
a GOODBYE, an error, or ``close()``). Application events carry their decoded Thrift body (``body``) and their
out-of-band buffers (``buffers``: writable memory in the order the body lists them; shared-memory descriptors
stay descriptors for the layer above to map).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Union

from .messages import Kind


@dataclass(frozen=True)
class Identity:
    """Who a node is, as exchanged in the handshake."""

    node_id: str
    listen: str = ""
    host_id: str = ""
    pid: int = 0


@dataclass(frozen=True)
class Ready:
    """The handshake completed: the peer proved it holds the token."""

    peer: Identity


class Message:
    """Base of the application events: a decoded body and its out-of-band buffers."""

    __slots__ = ("body", "buffers")
    kind: ClassVar[int]

    def __init__(self, body: Any, buffers: list[Any]) -> None:
        self.body = body
        self.buffers = buffers

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.body!r}, {len(self.buffers)} buffers)"


class Call(Message):
    __slots__ = ()
    kind = Kind.CALL


class Reply(Message):
    __slots__ = ()
    kind = Kind.REPLY


class Failure(Message):
    __slots__ = ()
    kind = Kind.FAILURE


class Cancel(Message):
    __slots__ = ()
    kind = Kind.CANCEL


class Heartbeat(Message):
    __slots__ = ()
    kind = Kind.HEARTBEAT


class Goodbye(Message):
    __slots__ = ()
    kind = Kind.GOODBYE


class Release(Message):
    __slots__ = ()
    kind = Kind.RELEASE


class Modules(Message):
    __slots__ = ()
    kind = Kind.MODULES


class StreamItem(Message):
    __slots__ = ()
    kind = Kind.STREAM_ITEM


class StreamEnd(Message):
    __slots__ = ()
    kind = Kind.STREAM_END


class StreamCredit(Message):
    __slots__ = ()
    kind = Kind.STREAM_CREDIT


EVENT_OF_KIND: dict[int, type[Message]] = {cls.kind: cls for cls in (
    Call, Reply, Failure, Cancel, Heartbeat, Goodbye, Release, Modules, StreamItem, StreamEnd, StreamCredit)}


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
"""``next_event()``: no complete event yet; feed more bytes."""
CLOSED = _Sentinel("CLOSED")
"""``next_event()``: the connection is closed; nothing more will come."""

Event = Union[Message, Ready]
