"""Sans-IO wire protocol: framing, handshake and message codec. No asyncio, sockets or torch below this line."""
from .connection import Connection, Event, Identity, Message, Ready, State
from .messages import WIRE_VERSION, BufferKind, FailureKind, Kind, T

__all__ = ["Connection", "Event", "Identity", "Message", "Ready", "State", "WIRE_VERSION", "BufferKind",
           "FailureKind", "Kind", "T"]
