"""The exception hierarchy. One root, :class:`DistoError`; every exception pickles to the same type and fields.

Exceptions cross the wire, so each class keeps its fields in ``__dict__`` and pickles through
:func:`_rebuild`, which restores them without calling ``__init__`` (whose signature may differ from ``args``).
"""
from __future__ import annotations

import builtins
from typing import Any


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class DistoError(Exception):
    """Root of every error that disto raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class ProtocolError(DistoError):
    """The wire protocol was violated."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow (a bug in the caller of the wire layer)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid disto frame; the connection is closed."""


class AuthenticationError(DistoError):
    """The peer failed the token handshake (or we did); nothing it sent was decoded."""


class SerializationError(DistoError):
    """A value could not be pickled or unpickled."""


class ClosedError(DistoError):
    """The node or connection was closed by this process."""


class NodeLostError(DistoError):
    """The connection to a node was lost while calls to it were pending, or it could not be reached."""

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


class ActorError(DistoError):
    """Base of errors about one actor."""

    def __init__(self, message: str, actor: str | None = None, node: str | None = None) -> None:
        super().__init__(message)
        self.actor = actor
        self.node = node


class ActorNotFoundError(ActorError):
    """No actor with that id or name exists."""


class ActorDeadError(ActorError):
    """The actor was stopped (or its node restarted); calls to it fail at once."""


class NameTakenError(ActorError):
    """An actor with that name is already registered in the cluster."""


class TimeoutError(DistoError, builtins.TimeoutError):  # noqa: A001 - deliberately shadows the builtin
    """A deadline passed (``within``). Also a ``builtins.TimeoutError``, so ``except TimeoutError`` catches it."""


class RemoteError(ActorError):
    """A remote method raised.

    Fields: ``type_name`` ("module.QualName" of the remote exception), ``message``, ``remote_traceback`` (text),
    ``actor``, ``method``, ``node`` and ``cause`` (the original exception object when it could be unpickled here,
    else None). When the original class is importable here, the raised object is also an instance of it, so
    ``except ValueError`` catches a remote ``ValueError``.
    """

    def __init__(
        self,
        type_name: str,
        message: str,
        remote_traceback: str = "",
        actor: str | None = None,
        method: str | None = None,
        node: str | None = None,
        cause: BaseException | None = None,
    ) -> None:
        # No super().__init__: in the dynamic subclasses the next class in the MRO is the original exception,
        # whose __init__ may want other arguments (UnicodeDecodeError takes five).
        self.args = (f"{type_name}: {message}",)
        self.actor = actor
        self.node = node
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.method = method
        self.cause = cause

    def __str__(self) -> str:
        where = f"{self.actor}.{self.method}" if self.actor else (self.method or "?")
        text = f"{self.type_name}: {self.message} (in {where} on {self.node})"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        base = _remote_base(type(self))
        return (_rebuild_remote, (base, self.args, state))


_REMOTE_CLASSES: dict[type[BaseException], type[RemoteError]] = {}


def _remote_base(cls: type[RemoteError]) -> type[BaseException] | None:
    """The original exception class that a dynamic RemoteError subclass mixes in, if any."""
    return getattr(cls, "_disto_original", None)


def remote_error_class(original: type[BaseException] | None) -> type[RemoteError]:
    """A subclass of both RemoteError and ``original`` (cached), or RemoteError when they cannot be combined."""
    if (original is None or not issubclass(original, Exception) or issubclass(original, RemoteError)
            or issubclass(original, (StopIteration, StopAsyncIteration))):  # these change generator semantics
        return RemoteError
    cls = _REMOTE_CLASSES.get(original)
    if cls is None:
        try:
            cls = type(
                f"Remote{original.__name__}",
                (RemoteError, original),
                {"_disto_original": original, "__module__": __name__,
                 "__init__": RemoteError.__init__, "__str__": RemoteError.__str__,
                 "__reduce__": RemoteError.__reduce__},
            )
        except TypeError:  # layout conflict (a C exception with its own struct) or a final class
            cls = RemoteError
        _REMOTE_CLASSES[original] = cls
    return cls


def _rebuild_remote(original: type[BaseException] | None, args: tuple[Any, ...], state: dict[str, Any]) -> RemoteError:
    cls = remote_error_class(original)
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def original_class(exc: BaseException) -> type[BaseException]:
    """The class a caller should be able to catch ``exc`` as: for a RemoteError, the class it wraps."""
    if isinstance(exc, RemoteError):
        return _remote_base(type(exc)) or RemoteError
    return type(exc)


def make_remote_error(
    original: type[BaseException] | None,
    type_name: str,
    message: str,
    remote_traceback: str = "",
    actor: str | None = None,
    method: str | None = None,
    node: str | None = None,
    cause: BaseException | None = None,
) -> RemoteError:
    cls = remote_error_class(original)
    exc = cls.__new__(cls)
    RemoteError.__init__(exc, type_name, message, remote_traceback, actor, method, node, cause)
    return exc
