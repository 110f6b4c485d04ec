"""W3C trace context on calls, with OpenTelemetry when ``opentelemetry-api`` is installed (the ``tracing``
extra); without it, nothing here runs (the call path checks one module flag, ``ENABLED``).

A call made while an OpenTelemetry span is current gets a CLIENT span ``disto.call Class.method``, ended when its
future is done, and carries that span's ``traceparent`` (an optional field of the CALL message). The callee runs
the call under a SERVER span whose parent is that context, so spans the actor's code starts, and the calls it
makes in turn, join the caller's trace. A call made outside any span carries nothing and costs one check.
``DISTO_TRACING=0`` turns it off even where the library is installed."""
from __future__ import annotations

import os
from typing import Any

try:
    if os.environ.get("DISTO_TRACING", "1") == "0":
        raise ImportError("disabled by DISTO_TRACING=0")
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    ENABLED = True
except ImportError:
    ENABLED = False

_propagator: Any = TraceContextTextMapPropagator() if ENABLED else None
# opentelemetry's current context: empty when no span is current anywhere (the caller checks it inline, so a
# call made outside any span costs one C-level lookup chain and no frame of ours)
get_current: Any = _context.get_current if ENABLED else None
if ENABLED:
    # the runtime context's ContextVar itself, when OpenTelemetry keeps it in one (its default runtime context):
    # ContextVar.get is C, where get_current goes through two Python frames on every call made
    _var = getattr(getattr(_context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    if _var is not None and type(_var).__name__ == "ContextVar":
        get_current = _var.get


def _tracer() -> Any:
    return _trace.get_tracer("disto")


def outgoing(ref: Any, method: str, fut: Any) -> str | None:
    """For a call about to be sent (while some context is current): its traceparent, with a CLIENT span ended
    when ``fut`` is done; None when no span is current (nothing to propagate)."""
    if not _trace.get_current_span().get_span_context().is_valid:
        return None
    actor = ref._describe()
    span = _tracer().start_span(f"disto.call {actor}.{method}", kind=_trace.SpanKind.CLIENT,
                                attributes={"rpc.system": "disto", "rpc.service": actor, "rpc.method": method})
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=_trace.set_span_in_context(span))
    fut.add_done_callback(lambda f: _end(span, f))
    return carrier.get("traceparent")


def _end(span: Any, fut: Any) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, str(fut.exception())))
    span.end()


def incoming(traceparent: str, actor: str, method: str) -> tuple[Any, Any]:
    """For a call that arrived with a traceparent: (its SERVER span, the token to detach once it is posted).
    While attached, the call's dispatch (and the context its thread or task copies) has the span current."""
    parent = _propagator.extract({"traceparent": traceparent})
    span = _tracer().start_span(f"disto.serve {actor}.{method}", context=parent, kind=_trace.SpanKind.SERVER,
                                attributes={"rpc.system": "disto", "rpc.service": actor, "rpc.method": method})
    return span, _context.attach(_trace.set_span_in_context(span, parent))


def detach(token: Any) -> None:
    _context.detach(token)


def finish(span: Any, exc: BaseException | None = None) -> None:
    if exc is not None:
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
    span.end()
