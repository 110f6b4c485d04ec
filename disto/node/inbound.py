"""Calls that arrive for this node's actors: from a peer (a CALL or CANCEL event) or from this process (a local
call skips the wire and passes its arguments as they are)."""
from __future__ import annotations

import logging
from typing import Any

from ..actor import ActorRef, CallItem
from ..actor import context
from ..errors import ActorDeadError, ActorNotFoundError, SerializationError
from ..futures import Future
from ..serialization.direct import MAGIC as _DIRECT  # (a payload encoded without pickle starts with it)
from ..serialization import scalars
from ..transport import Channel
from ..wire import Call, Cancel, FailureKind
from . import tracing
from .actors import ActorTable
from .buffers import BufferRouter
from .config import Here
from .replies import Replies

log = logging.getLogger("disto.node")
_scalar_loads = scalars.loads  # (pickle.loads, without an Unpickler per call when compiled)


def failed(fut: Future, exc: BaseException, oneway: bool) -> Future:
    fut.set_exception(exc)
    if oneway:
        fut.exception()  # a one-way call's future is usually ignored: don't warn that nobody read it
    return fut


class InboundCalls:
    def __init__(self, here: Here, actors: ActorTable, replies: Replies, buffers: BufferRouter, node: Any) -> None:
        self._node = node  # the context the actors' code runs in
        self._here = here
        self._actors = actors
        self._replies = replies
        self._buffers = buffers

    def on_call(self, ch: Channel, ev: Call) -> None:
        body = ev.body
        cell = self._actors.cells.get(body.actor_id)
        here = self._here
        if cell is None or (body.node_id and body.node_id != here.node_id) or here.closing:
            if body.call_id:
                err = self._actors.missing(body.actor_id, body.node_id) if not here.closing else \
                    ActorDeadError("node is stopping", node=here.address)
                kind = FailureKind.ACTOR_NOT_FOUND if isinstance(err, ActorNotFoundError) else FailureKind.ACTOR_DEAD
                self._replies.send_failure(ch, body.call_id, kind, err, "", err.actor, body.method)
            return
        try:
            payload = body.payload
            if body.payload_oob or body.buffers is not None or ev.buffers or (payload and payload[0] == _DIRECT):
                args, kwargs = self._buffers.value_of(ch, body, ev.buffers)
            else:  # the common case, pickled inline without buffers: no value_of frames (it words errors)
                try:
                    args, kwargs = _scalar_loads(payload or b"")
                except Exception:
                    args, kwargs = self._buffers.value_of(ch, body, ev.buffers)
            if type(args) is not tuple or type(kwargs) is not dict:
                raise SerializationError("call arguments must be (tuple, dict)")
        except (SerializationError, ValueError, TypeError) as e:
            e = SerializationError(f"{e} (unpickling the arguments of {cell.mailbox.label}.{body.method} on node "
                                   f"{here.address})")
            if body.call_id:
                self._replies.send_failure(ch, body.call_id, FailureKind.SERIALIZATION, e, "", cell.mailbox.label,
                                           body.method)
            else:
                log.warning("dropping one-way call with bad arguments from %s: %s", ch.peer_name(), e)
            return
        ch.queued += 1  # (ch.call_received(), inlined)
        if ch.queued >= ch.max_queued:
            ch.full()
        item = CallItem(ch, body.call_id, body.method, args, kwargs, None)
        # only the item holds the arguments now: the mailbox drops them before the reply is written, so that
        # shared memory they mapped goes back (a RELEASE) in the same write as the reply, not in one of its own
        del args, kwargs
        if body.traceparent is not None and tracing.ENABLED:
            item.span, token = tracing.incoming(body.traceparent, cell.mailbox.label, body.method)
            try:
                cell.mailbox.post(item)  # its thread or task copies the context: the span is current there
            finally:
                tracing.detach(token)
            return
        cell.mailbox.post(item)

    def on_cancel(self, ch: Channel, ev: Cancel) -> None:
        cid = ev.body.call_id
        for cell in list(self._actors.cells.values()):
            if cell.mailbox.cancel(lambda it: it.ch is ch and it.call_id == cid):
                break

    def call_local(self, ref: ActorRef, method: str, args: tuple, kwargs: dict, fut: Future, oneway: bool) -> None:
        cell = self._actors.cells.get(ref.actor_id)
        if cell is None or (ref.node_id and ref.node_id != self._here.node_id):
            failed(fut, self._actors.missing(ref.actor_id, ref.node_id), oneway)
            return
        item = CallItem(None, 0, method, args, kwargs, None if oneway else fut)
        if oneway:
            fut.set_result(None)
        else:
            mailbox = cell.mailbox
            fut._on_cancel = lambda: mailbox.cancel(lambda it: it is item)
        token = context.current.set(self._node)
        try:
            cell.mailbox.post(item)
        finally:
            context.current.reset(token)
