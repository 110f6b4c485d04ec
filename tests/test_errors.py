"""Every exception pickles to the same type and fields; RemoteError mixes in the original class."""
from __future__ import annotations

import pickle

import pytest

import disto
from disto.errors import make_remote_error


@pytest.mark.parametrize("exc", [
    disto.DistoError("root"), disto.ProtocolError("p"), disto.LocalProtocolError("l"),
    disto.RemoteProtocolError("r"), disto.AuthenticationError("a"), disto.SerializationError("s"),
    disto.ClosedError("c"), disto.NodeLostError("lost", node="h:1"),
    disto.ActorNotFoundError("nf", actor="x", node="h:1"), disto.ActorDeadError("dead", actor="x", node="h:1"),
    disto.NameTakenError("taken", actor="x"), disto.TimeoutError("t"),
    disto.RemoteError("builtins.ValueError", "m", "tb", "a", "meth", "h:1"),
])
def test_pickle_roundtrip(exc: Exception) -> None:
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and back.args == exc.args and back.__dict__ == exc.__dict__
    assert isinstance(back, disto.DistoError)


@pytest.mark.parametrize("original", [ValueError, KeyError, OSError, ConnectionResetError, UnicodeDecodeError,
                                      ZeroDivisionError, disto.NodeLostError])
def test_remote_error_is_catchable_as_its_original_class(original: type) -> None:
    err = make_remote_error(original, original.__name__, "msg", "tb", "a", "m", "n")
    assert isinstance(err, original) and isinstance(err, disto.RemoteError)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and back.__dict__ == err.__dict__
    assert "msg" in str(back) and "tb" in str(back)


def test_generator_exceptions_are_not_mixed_in() -> None:
    err = make_remote_error(StopIteration, "StopIteration", "x")
    assert type(err) is disto.RemoteError
