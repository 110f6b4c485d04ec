"""The failure codec: an exception raised for a call <-> the FAILURE message that carries it to the caller.

A remote method's exception travels with its type name, message and traceback as text (any client can read
those) and, when it pickles, as the pickled object; the caller rebuilds a :class:`~disto.RemoteError` that is
also an instance of the original class when that class exists on its side. The runtime's own errors (actor not
found or dead, cancelled, a value that would not pickle) travel as their kind alone.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any

from ..actor import describe_exception
from ..errors import (ActorDeadError, ActorNotFoundError, DistoError, NodeLostError, SerializationError,
                      make_remote_error, original_class)
from ..serialization import dumps, loads
from ..wire import FailureKind, T

INLINE_ERROR_MAX = 1 << 20  # a pickled exception larger than this travels as text only
TEXT_MAX = 64 << 10         # the message and traceback text of a failure are cut to this many characters


def _cut(text: str) -> str:
    if len(text) <= TEXT_MAX:
        return text
    return text[:TEXT_MAX // 2] + f"\n... [{len(text) - TEXT_MAX} characters cut] ...\n" + text[-TEXT_MAX // 2:]


def is_runtime(exc: BaseException, tb: str) -> bool:
    """Raised by the runtime (not by the method): it reaches the caller as it is."""
    return not tb and isinstance(exc, (DistoError, asyncio.CancelledError))


def failure_kind(exc: BaseException, tb: str) -> int:
    if isinstance(exc, asyncio.CancelledError):
        return FailureKind.CANCELLED
    if is_runtime(exc, tb) and isinstance(exc, ActorDeadError):
        return FailureKind.ACTOR_DEAD
    if is_runtime(exc, tb) and isinstance(exc, ActorNotFoundError):
        return FailureKind.ACTOR_NOT_FOUND
    return FailureKind.REMOTE


def failure_body(call_id: int, kind: int, exc: BaseException, tb: str, actor: str | None, method: str | None,
                 node: str, modules: set[str] | None = None) -> Any:
    """The FAILURE message for a call; ``modules`` collects the shippable modules its pickled exception needs."""
    pickled = None
    if kind == FailureKind.REMOTE:
        try:
            stream, bufs = dumps(exc, modules)
            if bufs or len(stream) > INLINE_ERROR_MAX:
                raise SerializationError(f"it pickles to more than {INLINE_ERROR_MAX} bytes")
            pickled = stream
        except SerializationError as e:  # the caller gets a stand-in; say why
            tb = f"{tb.rstrip()}\n(disto: the exception itself could not be sent: {e})\n"
    msg = str(exc) if not isinstance(exc, ActorNotFoundError) else exc.args[0] if exc.args else ""
    return T.Failure(call_id=call_id, kind=kind, type_name=describe_exception(exc), message=_cut(msg),
                     traceback=_cut(tb), actor=actor, method=method, node=node, error=pickled)


def lookup_class(type_name: str | None) -> type[BaseException] | None:
    """Find an exception class by its printed name among already-imported modules (never imports)."""
    if not type_name:
        return None
    mod, _, qual = type_name.rpartition(".")
    module = sys.modules.get(mod or "builtins")
    obj: Any = module
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None


def exception_from(body: Any, default_node: str) -> BaseException:
    """The exception a caller gets for a FAILURE message."""
    kind = body.kind
    message = body.message or ""
    node = body.node or default_node
    if kind == FailureKind.REMOTE:
        cause: Any = None
        tb = body.traceback or ""
        if body.error:
            try:
                cause = loads(body.error)
            except SerializationError as e:
                tb = f"{tb.rstrip()}\n(disto: the exception could not be rebuilt here: {e})\n"
        if not isinstance(cause, BaseException):
            cause = None
        original = original_class(cause) if cause is not None else lookup_class(body.type_name)
        return make_remote_error(original, body.type_name or "Exception", message, tb, body.actor, body.method,
                                 node, cause, stand_in=cause is None)
    if kind == FailureKind.ACTOR_NOT_FOUND:
        return ActorNotFoundError(message, actor=body.actor, node=node)
    if kind == FailureKind.ACTOR_DEAD:
        return ActorDeadError(message, actor=body.actor, node=node)
    if kind == FailureKind.CANCELLED:
        return asyncio.CancelledError(message or "cancelled on the remote side")
    if kind == FailureKind.SERIALIZATION:
        return SerializationError(message)
    return NodeLostError(message, node=node)


def local_exception(exc: BaseException, tb: str, actor: str, method: str, node: str) -> BaseException:
    """What a caller on the actor's own node gets: the same RemoteError a remote caller would."""
    if is_runtime(exc, tb):
        return exc
    return make_remote_error(original_class(exc), describe_exception(exc), str(exc), tb, actor, method, node, exc)
