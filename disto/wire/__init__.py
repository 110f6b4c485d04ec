"""Sans-IO wire protocol: framing, the handshake's transition table, typed events and the message codec.
No asyncio, sockets or torch below this line."""
from .codec import external_desc
from .connection import Connection, State
from .events import (CLOSED, NEED_DATA, Call, Cancel, Event, Failure, Goodbye, Heartbeat, Identity, Message, Modules,
                     Ready, Release, Reply, StreamCredit, StreamEnd, StreamItem)
from .messages import WIRE_VERSION, BufferKind, FailureKind, Kind, T

__all__ = ["Connection", "State", "CLOSED", "NEED_DATA", "Call", "Cancel", "Event", "Failure", "Goodbye",
           "Heartbeat", "Identity", "Message", "Modules", "Ready", "Release", "Reply", "StreamCredit", "StreamEnd",
           "StreamItem", "WIRE_VERSION", "BufferKind",
           "FailureKind", "Kind", "T", "external_desc"]
