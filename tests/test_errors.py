"""Level 1: every exception pickles to the same type and fields; a RemoteError is its original's class, args,
str and fields, with each hop's traceback as a note."""
from __future__ import annotations

import pickle
import traceback

import pytest

import disto
from disto.errors import format_remote_traceback, make_remote_error
from disto.serialization import dumps, loads


class OutOfStock(Exception):
    """A user exception whose __init__ takes other arguments than its args."""

    def __init__(self, item: str, wanted: int) -> None:
        super().__init__(f"only 3 of {item} left, {wanted} wanted")
        self.item = item
        self.wanted = wanted


class Clashing(Exception):
    def __init__(self, node: str) -> None:
        super().__init__(f"bad {node}")
        self.node = node  # a field named like one of RemoteError's
        self.message = "the user's message field"


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
    assert back.args == ("msg",) and back.__notes__ == ["Remote traceback, in a.m on n:\ntb"]


def test_generator_exceptions_are_not_mixed_in() -> None:
    err = make_remote_error(StopIteration, "StopIteration", "x")
    assert type(err) is disto.RemoteError


def raise_in(fn, *args):  # noqa: ANN001, ANN201
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("did not raise")


def take(item: str, wanted: int) -> None:
    raise OutOfStock(item, wanted)


def test_user_exceptions_pickle_by_their_fields_not_their_constructor() -> None:
    exc = raise_in(take, "widget", 5)
    exc.add_note("a note of the user's")
    back = loads(*dumps(exc))
    assert type(back) is OutOfStock and back.args == exc.args and (back.item, back.wanted) == ("widget", 5)
    assert back.__notes__ == ["a note of the user's"]
    assert loads(*dumps(ValueError("bad value"))).args == ("bad value",)


def test_a_remote_error_is_the_original_through_every_hop() -> None:
    exc = raise_in(take, "widget", 5)
    tb_b = format_remote_traceback(exc)
    assert 'raise OutOfStock(item, wanted)' in tb_b and "test_errors.py" in tb_b
    at_a = make_remote_error(OutOfStock, "test_errors.OutOfStock", str(exc), tb_b, "B#17", "take", "b:1",
                             loads(*dumps(exc)))
    # A re-raises it: it travels again, pickled, and the driver builds its own
    at_a_again = loads(*dumps(at_a))
    at_driver = make_remote_error(OutOfStock, at_a_again.type_name, str(at_a_again), "A's frames", "A#16", "buy",
                                  "a:1", at_a_again)
    for e in (at_a, at_driver):
        assert isinstance(e, OutOfStock) and isinstance(e, disto.RemoteError)
        assert e.args == exc.args and str(e) == str(exc) and (e.item, e.wanted) == ("widget", 5)
        assert type(e).__name__ == "OutOfStock" and isinstance(e.cause, OutOfStock) and not e.stand_in
    assert (at_driver.actor, at_driver.node, at_driver.remote_traceback) == ("A#16", "a:1", "A's frames")
    assert at_driver.__notes__ == [f"Remote traceback, in B#17.take on b:1:\n{tb_b.rstrip()}",
                                   "Remote traceback, in A#16.buy on a:1:\nA's frames"]
    printed = "".join(traceback.format_exception(at_driver))
    assert "test_errors.OutOfStock: only 3 of widget left, 5 wanted" in printed and "B#17.take" in printed


def test_the_originals_fields_win_over_disto_names_and_stand_ins_say_so() -> None:
    exc = Clashing("n7")
    e = make_remote_error(Clashing, "test_errors.Clashing", str(exc), "tb", "X#1", "m", "x:1", exc)
    assert e.node == "n7" and e.message == "the user's message field" and e.actor == "X#1"
    stand_in = make_remote_error(OutOfStock, "test_errors.OutOfStock", "only 3 of widget left", "tb", "X#1", "m",
                                 "x:1", None, stand_in=True)
    assert isinstance(stand_in, OutOfStock) and stand_in.stand_in and stand_in.cause is None
    assert str(stand_in) == "only 3 of widget left" and "a stand-in" in stand_in.__notes__[0]
    plain = make_remote_error(None, "somewhere.Unknown", "no class here", "tb", stand_in=True)
    assert type(plain) is disto.RemoteError and str(plain) == "no class here"
