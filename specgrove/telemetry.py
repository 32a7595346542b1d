"""OpenTelemetry set-up and the few helpers every role uses: tracer, meters with vLLM's metric
names, and trace-context propagation over gRPC metadata.

Exporters are chosen at the edge (CLI / tests): OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
set, a JSON-lines file when ``SPECGROVE_TRACE_FILE`` is set (one span per line: what the
benchmarks read to split round time), or any exporter a test passes in (the in-memory one).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
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


def setup(service_name: str, environ: dict[str, str], span_exporter: SpanExporter | None = None,
          metric_readers: list | None = None) -> None:
    """Install the global tracer and meter providers once per process."""
    global _configured
    if _configured:
        return
    _configured = True
    resource = Resource.create({"service.name": service_name})
    provider = TracerProvider(resource=resource)
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    if environ.get("SPECGROVE_TRACE_FILE"):
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(environ["SPECGROVE_TRACE_FILE"])))
    readers = list(metric_readers or [])
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))


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


@dataclass
class SpecDecodeMetrics:
    """vLLM's speculative-decoding counters plus latency histograms."""

    num_drafts: object
    num_draft_tokens: object
    num_accepted_tokens: object
    num_accepted_tokens_per_pos: object
    time_to_first_token: object
    time_per_output_token: object

    @classmethod
    def create(cls) -> "SpecDecodeMetrics":
        meter = metrics.get_meter(TRACER_NAME)
        return cls(
            meter.create_counter("spec_decode_num_drafts", description="rounds with a draft"),
            meter.create_counter("spec_decode_num_draft_tokens", description="draft tokens proposed"),
            meter.create_counter("spec_decode_num_accepted_tokens", description="draft tokens accepted"),
            meter.create_counter("spec_decode_num_accepted_tokens_per_pos",
                                 description="accepted draft tokens by position (attribute position)"),
            meter.create_histogram("time_to_first_token_seconds", unit="s"),
            meter.create_histogram("time_per_output_token_seconds", unit="s"),
        )

    def record_round(self, num_drafted: int, num_accepted: int) -> None:
        if num_drafted:
            self.num_drafts.add(1)
            self.num_draft_tokens.add(num_drafted)
            self.num_accepted_tokens.add(num_accepted)
            for pos in range(num_accepted):
                self.num_accepted_tokens_per_pos.add(1, {"position": pos})
