"""Spans that no processor will ever see: their ids and sampling decision, and nothing recorded.

With no exporter configured, the SDK's tracer still builds every span in full (attributes checked and
copied, links and events lists, locks, start and end times) for nobody to read: about 0.15 ms of the
embedding server's event-loop CPU per request under 64 clients (bench/embed_batching.py), where each
request makes a server span and an ``infer`` span. A span still has to exist: its trace and span ids go
into the logs and on to the next hop in ``traceparent``, with the sampling decision that a downstream
parent-based sampler follows. So this tracer makes the span context exactly as the SDK's tracer would
(the provider's sampler and id generator) and returns a ``NonRecordingSpan`` carrying it.

A processor added to the provider later (a test's in-memory exporter, say) turns recording back on for
every tracer the provider handed out.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags


class UnexportedTracerProvider(TracerProvider):
    """A ``TracerProvider`` whose tracers record nothing until a span processor is added."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recording = False

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self.recording = True

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        tracer = super().get_tracer(*args, **kwargs)
        return UnexportedTracer(tracer, self) if isinstance(tracer, SdkTracer) else tracer


class UnexportedTracer(trace.Tracer):
    def __init__(self, sdk: SdkTracer, provider: UnexportedTracerProvider) -> None:
        self._sdk = sdk
        self._provider = provider

    def start_span(
        self, name: str, context: context_api.Context | None = None, kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None, links: Sequence[Link] | None = (), start_time: int | None = None,
        record_exception: bool = True, set_status_on_exception: bool = True,
    ) -> trace.Span:
        if self._provider.recording:
            return self._sdk.start_span(name, context, kind, attributes, links, start_time, record_exception,
                                        set_status_on_exception)
        sdk = self._sdk
        parent = trace.get_current_span(context).get_span_context()
        root = not parent.is_valid
        trace_id = sdk.id_generator.generate_trace_id() if root else parent.trace_id
        decision = sdk.sampler.should_sample(context, trace_id, name, kind, attributes, links or ())
        flags = TraceFlags.SAMPLED if decision.decision.is_sampled() else TraceFlags.DEFAULT
        random_id = sdk.id_generator.is_trace_id_random() if root else parent.trace_flags.random_trace_id
        if random_id:  # the W3C level-2 flag, set as the SDK sets it
            flags |= TraceFlags.RANDOM_TRACE_ID
        return NonRecordingSpan(SpanContext(trace_id, sdk.id_generator.generate_span_id(), is_remote=False,
                                            trace_flags=TraceFlags(flags), trace_state=decision.trace_state))

    @contextmanager
    def start_as_current_span(
        self, name: str, context: context_api.Context | None = None, kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None, links: Sequence[Link] | None = (), start_time: int | None = None,
        record_exception: bool = True, set_status_on_exception: bool = True, end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time, record_exception,
                               set_status_on_exception)
        with trace.use_span(span, end_on_exit=end_on_exit, record_exception=record_exception,
                            set_status_on_exception=set_status_on_exception) as current:
            yield current
