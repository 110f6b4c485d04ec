"""Trace context on calls: the traceparent field on the wire, and OpenTelemetry spans that join the caller's trace
across nodes (in-process nodes, a real SDK with an in-memory exporter)."""
from __future__ import annotations

import pytest

import disto
from disto.wire.fastcodec import decode_call, encode_call

from helpers import nodes, spawn

otel = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

EXPORTER = InMemorySpanExporter()
_provider = otel.TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_traceparent_field_round_trips_and_calls_without_it_keep_the_fast_layout() -> None:
    plain = encode_call(7, 16, "step", b"x", [], False, None)
    traced = encode_call(7, 16, "step", b"x", [], False, None, TP)
    assert traced != plain and len(traced) == len(plain) + 3 + 4 + len(TP)
    msg, _ = decode_call(plain, 0, len(plain))
    assert msg.traceparent is None and msg.method == "step"
    msg, _ = decode_call(traced, 0, len(traced))
    assert msg.traceparent == TP and msg.call_id == 7 and msg.payload == b"x"


class Traced(disto.Actor):
    async def where(self, other: disto.ActorRef | None) -> list[str]:
        ctx = trace.get_current_span().get_span_context()
        mine = [format(ctx.trace_id, "032x")]
        if other is not None:
            mine += await other.where(None)  # a nested call joins the same trace
        return mine


async def test_a_traced_call_joins_the_callers_trace_across_nodes() -> None:
    EXPORTER.clear()
    async with nodes(3) as (a, b, c):
        on_b = await spawn(a, b, Traced)
        on_c = await spawn(a, c, Traced)
        untraced = await on_b.where(None)
        assert untraced == ["0" * 32]  # no span at the caller: nothing is propagated
        with trace.get_tracer("test").start_as_current_span("driver step") as root:
            got = await on_b.where(on_c)
        want = format(root.get_span_context().trace_id, "032x")
        assert got == [want, want]
    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    assert {"driver step", "disto.call Traced#16.where", "disto.serve Traced#16.where"} <= set(spans)
    client, server = spans["disto.call Traced#16.where"], spans["disto.serve Traced#16.where"]
    assert client.kind == trace.SpanKind.CLIENT and server.kind == trace.SpanKind.SERVER
    assert client.parent.span_id == root.get_span_context().span_id
    assert server.parent.span_id == client.context.span_id
    assert len([s for s in EXPORTER.get_finished_spans() if s.name.startswith("disto.serve")]) == 2
