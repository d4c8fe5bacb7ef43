"""Optional OpenTelemetry tracing (`pip install "meshgate[tracing]"`, `tracing.enabled: true`).

Each process names itself `meshgate-<service>`. The gRPC client and server
instrumentation carries the W3C trace context in metadata across every hop, so
one request is one trace from the edge to the engine. Spans go to an OTLP
collector (`tracing.otlp_endpoint`) and/or a JSON-lines file (`tracing.file`).
When tracing is off nothing is imported and nothing is paid per request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from meshgate.config import TracingConfig

_tracer: Any = None


def configure(service: str, config: TracingConfig) -> None:
    """Install the tracer provider and the gRPC instrumentation; call before any channel or server exists."""
    global _tracer
    if not config.enabled:
        return
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import (
            GrpcAioInstrumentorClient,
            GrpcAioInstrumentorServer,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SimpleSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError:
        raise SystemExit(
            'meshgate: tracing.enabled needs `pip install "meshgate[tracing]"`'
        ) from None

    class JsonLines(SpanExporter):
        """One JSON object per finished span, appended to a file shared by every process."""

        def __init__(self, path: str) -> None:
            self._path = path
            self._lock = threading.Lock()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            lines = []
            for span in spans:
                context = span.get_span_context()
                if context is None:
                    continue
                lines.append(
                    json.dumps(
                        {
                            "service": service,
                            "name": span.name,
                            "trace_id": f"{context.trace_id:032x}",
                            "span_id": f"{context.span_id:016x}",
                            "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                            "duration_us": ((span.end_time or 0) - (span.start_time or 0)) // 1000,
                        }
                    )
                )
            with self._lock, open(self._path, "a", encoding="utf-8") as file:
                file.write("".join(line + "\n" for line in lines))
            return SpanExportResult.SUCCESS

    provider = TracerProvider(resource=Resource.create({"service.name": f"meshgate-{service}"}))
    if config.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=config.otlp_endpoint, insecure=True))
        )
    if config.file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLines(config.file)))
    trace.set_tracer_provider(provider)
    GrpcAioInstrumentorClient().instrument()
    GrpcAioInstrumentorServer().instrument()
    _tracer = trace.get_tracer("meshgate")


def span(name: str) -> AbstractContextManager[Any]:
    """A span around one HTTP request at the edge; a no-op when tracing is off."""
    if _tracer is None:
        return nullcontext()
    context: AbstractContextManager[Any] = _tracer.start_as_current_span(name)
    return context
