"""OpenTelemetry set-up and the few helpers every role uses: the tracer and trace-context
propagation over gRPC metadata (metrics are Prometheus': ``specgrove.metrics``).

Exporters are chosen at the edge (CLI / tests): OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
set, a JSON-lines file when ``SPECGROVE_TRACE_FILE`` is set (one span per line: what the
benchmarks read to split round time), or any exporter a test passes in (the in-memory one).
"""

from __future__ import annotations

import json
import threading

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult

TRACER_NAME = "specgrove"
_configured = False


class JsonLinesExporter(SpanExporter):
    """Appends one JSON object per finished span to a file (name, ids, parent, times, attributes)."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            lines.append(json.dumps({
                "name": span.name, "service": span.resource.attributes.get("service.name"),
                "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                "start_ns": span.start_time, "end_ns": span.end_time, "attributes": dict(span.attributes or {}),
            }))
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def setup(service_name: str, environ: dict[str, str], span_exporter: SpanExporter | None = None) -> None:
    """Install the global tracer provider once per process."""
    global _configured
    if _configured:
        return
    _configured = True
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    if environ.get("SPECGROVE_TRACE_FILE"):
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(environ["SPECGROVE_TRACE_FILE"])))
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def tracer():
    return trace.get_tracer(TRACER_NAME)


def inject_metadata() -> list[tuple[str, str]]:
    """The current trace context as gRPC metadata (W3C traceparent)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def extract_context(metadata) -> object:
    """A context whose parent is the caller's span, from gRPC invocation metadata."""
    return propagate.extract({k: v for k, v in (metadata or ())})
