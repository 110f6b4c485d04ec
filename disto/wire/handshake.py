"""The handshake, sans-IO: mutual HMAC-SHA256 challenge-response on the cluster token.

    dialer   -> HELLO    {nonce_d, identity}
    listener -> WELCOME  {nonce_l, identity, proof_l = HMAC(token, "disto1/listener" | HELLO | nonce_l | listener)}
    dialer   -> AUTH     {proof_d = HMAC(token, "disto1/dialer" | HELLO | nonce_l | listener)}

Each side is done once it has checked the other's proof. Every step is a row of :data:`TRANSITIONS`; a message
that is not the row's (a CALL before AUTH, a second HELLO) fails the handshake, and nothing received before it
is done can reach a decoder other than these three bounded structs.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import os
from typing import Any, Callable

from ..errors import AuthenticationError, RemoteProtocolError
from .events import Identity
from .framing import frame_bytes
from .messages import WIRE_VERSION, Kind, T, decode, encode

NONCE_SIZE = 32


class Step(enum.Enum):
    AWAIT_HELLO = "awaiting HELLO"      # listener, at first
    AWAIT_WELCOME = "awaiting WELCOME"  # dialer, after sending HELLO
    AWAIT_AUTH = "awaiting AUTH"        # listener, after sending WELCOME
    DONE = "done"


# (where we are, what arrived) -> where we go. Nothing else is allowed.
TRANSITIONS: dict[tuple[Step, int], Step] = {
    (Step.AWAIT_HELLO, Kind.HELLO): Step.AWAIT_AUTH,
    (Step.AWAIT_WELCOME, Kind.WELCOME): Step.DONE,
    (Step.AWAIT_AUTH, Kind.AUTH): Step.DONE,
}
EXPECTED: dict[Step, int] = {step: kind for step, kind in TRANSITIONS}


def _mac(token: bytes, label: bytes, *parts: bytes) -> bytes:
    h = hmac.new(token, label, hashlib.sha256)
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.digest()


def _identity_bytes(ident: Identity) -> bytes:
    return f"{ident.node_id}\0{ident.listen}\0{ident.host_id}\0{ident.pid}".encode()


def _name(kind: int) -> str:
    return Kind._VALUES_TO_NAMES.get(kind, str(kind))


class Handshake:
    """One side of the handshake. ``outbox`` holds frames to send; :meth:`receive` takes one handshake frame's
    kind and body and returns the peer's identity once the peer has proved the token."""

    def __init__(self, *, dialer: bool, token: bytes, identity: Identity) -> None:
        if not token:
            raise AuthenticationError("an empty token is not allowed")
        self.identity = identity
        self.step = Step.AWAIT_WELCOME if dialer else Step.AWAIT_HELLO
        self.peer: Identity | None = None
        self.outbox: list[bytes] = []
        self._token = token
        self._nonce = os.urandom(NONCE_SIZE)
        self._hello_body = b""
        if dialer:
            hello = T.Hello(version=WIRE_VERSION, nonce=self._nonce, node_id=identity.node_id,
                            listen=identity.listen, host_id=identity.host_id, pid=identity.pid)
            self._hello_body = encode(hello)
            self.outbox.append(frame_bytes(Kind.HELLO, self._hello_body))

    @property
    def expected(self) -> int | None:
        """The message kind the next frame must have (None once done)."""
        return EXPECTED.get(self.step)

    def check_kind(self, kind: int) -> None:
        want = self.expected
        if kind != want:
            raise AuthenticationError(f"expected {_name(want) if want else 'nothing'} during the handshake, "
                                      f"got {_name(kind)}")

    def receive(self, kind: int, body_bytes: bytes) -> Identity | None:
        self.check_kind(kind)
        nxt = TRANSITIONS[(self.step, kind)]
        body = decode(kind, body_bytes)
        self._HANDLERS[kind](self, body, body_bytes)
        self.step = nxt
        if nxt is Step.DONE:
            self._token = b""  # not needed any more
            return self.peer
        return None

    # ------------------------------------------------------------------ one handler per row
    def _on_hello(self, body: Any, body_bytes: bytes) -> None:  # listener
        self._check_version(body.version)
        self._check_nonce(body.nonce)
        self._hello_body = body_bytes
        self.peer = Identity(body.node_id, body.listen or "", body.host_id or "", body.pid or 0)
        me = self.identity
        proof = _mac(self._token, b"disto1/listener", body_bytes, self._nonce, _identity_bytes(me))
        welcome = T.Welcome(version=WIRE_VERSION, nonce=self._nonce, node_id=me.node_id, listen=me.listen,
                            host_id=me.host_id, pid=me.pid, proof=proof)
        self.outbox.append(frame_bytes(Kind.WELCOME, encode(welcome)))

    def _on_welcome(self, body: Any, _body_bytes: bytes) -> None:  # dialer
        self._check_version(body.version)
        self._check_nonce(body.nonce)
        peer = Identity(body.node_id, body.listen or "", body.host_id or "", body.pid or 0)
        want = _mac(self._token, b"disto1/listener", self._hello_body, body.nonce, _identity_bytes(peer))
        if not body.proof or not hmac.compare_digest(want, body.proof):
            raise AuthenticationError("token mismatch: the listener does not hold the cluster token")
        mine = _mac(self._token, b"disto1/dialer", self._hello_body, body.nonce, _identity_bytes(peer))
        self.outbox.append(frame_bytes(Kind.AUTH, encode(T.Auth(proof=mine))))
        self.peer = peer

    def _on_auth(self, body: Any, _body_bytes: bytes) -> None:  # listener
        want = _mac(self._token, b"disto1/dialer", self._hello_body, self._nonce, _identity_bytes(self.identity))
        if not hmac.compare_digest(want, body.proof):
            raise AuthenticationError("token mismatch: the dialer does not hold the cluster token")

    _HANDLERS: dict[int, Callable[["Handshake", Any, bytes], None]] = {
        Kind.HELLO: _on_hello, Kind.WELCOME: _on_welcome, Kind.AUTH: _on_auth}

    @staticmethod
    def _check_version(version: int) -> None:
        if version != WIRE_VERSION:
            raise RemoteProtocolError(f"peer speaks wire version {version}, this side {WIRE_VERSION}")

    def _check_nonce(self, nonce: bytes) -> None:
        if len(nonce) != NONCE_SIZE:
            raise RemoteProtocolError("bad nonce length")
        if hmac.compare_digest(nonce, self._nonce):
            raise AuthenticationError("the peer echoed our nonce (reflection)")
