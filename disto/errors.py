"""The exception hierarchy. One root, :class:`DistoError`; every exception pickles to the same type and fields.

Exceptions cross the wire, so each class keeps its fields in ``__dict__`` and pickles through
:func:`_rebuild`, which restores them without calling ``__init__`` (whose signature may differ from ``args``).
"""
from __future__ import annotations

import builtins
import os
import traceback
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


class PlacementError(DistoError):
    """No node can take what a spawn asked for (``resources=``), now or within its ``placement_timeout``.

    Fields: ``requested`` (one dict of name -> amount per actor), ``strategy``, and ``free`` (address -> what
    that node had free of the requested resources when placement gave up)."""

    def __init__(self, message: str, requested: list[dict[str, float]] | None = None, strategy: str = "spread",
                 free: dict[str, dict[str, float]] | None = None) -> None:
        super().__init__(message)
        self.requested = requested or []
        self.strategy = strategy
        self.free = free or {}


class TimeoutError(DistoError, builtins.TimeoutError):  # noqa: A001 - deliberately shadows the builtin
    """A deadline passed (``within``). Also a ``builtins.TimeoutError``, so ``except TimeoutError`` catches it."""


class RemoteError(ActorError):
    """A remote method raised.

    When the original exception's class exists on the caller's side (it is importable, or its module was shipped),
    the raised object is an instance of a subclass of both that class and RemoteError, named like the original:
    ``except OutOfStock`` catches it, its ``args``, ``str()`` and fields (``e.item``) are the original's, through
    any number of actor hops. Each hop's remote traceback is added as an exception note, so it is shown when the
    exception is printed.

    Fields of disto's own (the original's fields of the same name win): ``type_name`` ("module.QualName" of the
    remote exception), ``message`` (its str), ``remote_traceback`` (the last hop's, as text), ``actor``,
    ``method``, ``node`` (where it was raised), ``cause`` (the original exception object, None for a stand-in)
    and ``stand_in`` (True when the original could not be sent here: it did not pickle or unpickle; type name,
    message and traceback still arrive).
    """

    _FIELDS = ("type_name", "message", "remote_traceback", "actor", "method", "node", "cause", "stand_in")

    def __init__(
        self,
        type_name: str,
        message: str,
        remote_traceback: str = "",
        actor: str | None = None,
        method: str | None = None,
        node: str | None = None,
        cause: BaseException | None = None,
        stand_in: bool = False,
    ) -> None:
        # No super().__init__: in the dynamic subclasses the next class in the MRO is the original exception,
        # whose __init__ may want other arguments (UnicodeDecodeError takes five).
        self.args = (message,)
        self.actor = actor
        self.node = node
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.method = method
        self.cause = cause
        self.stand_in = stand_in

    def __str__(self) -> str:
        return self.message if type(self) is RemoteError else super().__str__()

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        base = _remote_base(type(self))
        return (_rebuild_remote, (base, self.args, state))


_REMOTE_CLASSES: dict[type[BaseException], type[RemoteError]] = {}


def _remote_base(cls: type[RemoteError]) -> type[BaseException] | None:
    """The original exception class that a dynamic RemoteError subclass mixes in, if any."""
    return getattr(cls, "_disto_original", None)


def remote_error_class(original: type[BaseException] | None) -> type[RemoteError]:
    """A subclass of both RemoteError and ``original`` (cached) that prints as ``original`` does, or RemoteError
    when they cannot be combined."""
    if (original is None or not issubclass(original, Exception) or issubclass(original, RemoteError)
            or issubclass(original, (StopIteration, StopAsyncIteration))):  # these change generator semantics
        return RemoteError
    cls = _REMOTE_CLASSES.get(original)
    if cls is None:
        try:
            cls = type(
                original.__name__,
                (RemoteError, original),
                {"_disto_original": original, "__module__": original.__module__,
                 "__qualname__": original.__qualname__, "__doc__": original.__doc__,
                 "__init__": RemoteError.__init__, "__str__": original.__str__, "__repr__": original.__repr__,
                 "__reduce__": RemoteError.__reduce__},
            )
        except TypeError:  # layout conflict (a C exception with its own struct) or a final class
            cls = RemoteError
        _REMOTE_CLASSES[original] = cls
    return cls


def _rebuild_remote(original: type[BaseException] | None, args: tuple[Any, ...], state: dict[str, Any]) -> RemoteError:
    cls = remote_error_class(original)
    exc = cls.__new__(cls, *args) if cls is not RemoteError else cls.__new__(cls)
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
    stand_in: bool = False,
) -> RemoteError:
    """The exception a caller gets for one hop. ``cause`` is the exception as it arrived from the callee (the
    original, or a RemoteError of an earlier hop): its args, fields and notes carry over, and this hop's
    traceback is added as a note."""
    cls = remote_error_class(original)
    root = cause.cause if isinstance(cause, RemoteError) else cause
    try:
        exc = cls.__new__(cls, *cause.args) if cause is not None and cls is not RemoteError else cls.__new__(cls)
    except TypeError:
        exc = cls.__new__(cls)
    RemoteError.__init__(exc, type_name, message, remote_traceback, actor, method, node, root, stand_in)
    notes: list[str] = []
    if cause is not None:
        exc.args = cause.args
        inherited = dict(cause.__dict__)
        if isinstance(cause, RemoteError):
            for k in RemoteError._FIELDS:  # this hop's say where it was raised
                inherited.pop(k, None)
        notes = list(inherited.pop("__notes__", None) or ())
        exc.__dict__.update(inherited)  # the original's fields, even where they share a name with disto's
    where = f"{actor}.{method}" if actor else (method or "?")
    if stand_in:
        notes.append(f"(disto: a stand-in for the remote {type_name}, which could not be sent here; raised in "
                     f"{where} on {node})")
    if remote_traceback:
        notes.append(f"Remote traceback, in {where} on {node}:\n{remote_traceback.rstrip()}")
    if notes:
        exc.__notes__ = notes
    return exc


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
# (the frames of a module compiled from its source name it relative to the build's root: "disto/node/inbound.py")
_PREFIXES = (_PACKAGE, "disto" + os.sep)
_LIBRARIES = tuple(p + sub + os.sep for p in _PREFIXES for sub in ("easgd", "lowcomm", "search"))  # built on disto


def _internal(filename: str) -> bool:
    return filename.startswith(_PREFIXES) and not filename.startswith(_LIBRARIES)


def format_remote_traceback(exc: BaseException) -> str:
    """The traceback text a caller is sent: the method's own frames (disto's internal ones trimmed), source lines
    where the source exists, chained exceptions, but not the exception's notes (earlier hops carry their own)."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
    _trim(te)
    te.__notes__ = None  # type: ignore[assignment]
    return "".join(te.format())


def _trim(te: traceback.TracebackException) -> None:
    frames = [f for f in te.stack if not _internal(f.filename or "")]
    te.stack = traceback.StackSummary.from_list(frames)
    for chained in (te.__cause__, te.__context__):
        if chained is not None:
            _trim(chained)
