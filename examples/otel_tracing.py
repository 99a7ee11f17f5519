"""Jobs inside OpenTelemetry traces: a span per job, events for every change.

It needs the OpenTelemetry SDK, which seenn does not install (seenn needs only
``opentelemetry-api``). Run it from the repository root::

    python -m pip install -e ".[otel]"      # seenn and opentelemetry-sdk
    python examples/otel_tracing.py

Without the SDK it stops at once with a line that says what to install.

A request span starts a video job (with a child thumbnail job), and a second
job fails. ``OTelExporter(span_per_job=True)`` gives each job a span
``seenn.job <type>`` under the request, carrying ``seenn.job.*`` events
(started, progress, stage, completed/failed); the failed job's span has status
ERROR and the exception recorded. Without ``span_per_job`` the same events go
on the span current at each change instead.

The spans are printed as a tree when the request ends. In a real application
the provider would send them to a collector (``BatchSpanProcessor(
OTLPSpanExporter())``); with only ``opentelemetry-api`` installed the exporter
does nothing at all.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from opentelemetry import trace

import seenn
from seenn.exporters import OTelExporter

try:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
except ImportError:
    sys.exit('examples/otel_tracing.py needs the OpenTelemetry SDK: '
             'python -m pip install "seenn[otel]" (or opentelemetry-sdk)')


class TreePrinter(SpanExporter):
    """Keeps finished spans and prints them as an indented tree."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def print_tree(self) -> None:
        children: dict[int | None, list[ReadableSpan]] = {}
        for span in sorted(self.spans, key=lambda s: s.start_time or 0):
            parent = span.parent.span_id if span.parent is not None else None
            children.setdefault(parent, []).append(span)

        def show(span: ReadableSpan, depth: int) -> None:
            pad = "  " * depth
            status = span.status.status_code.name
            description = f" ({span.status.description})" if span.status.description else ""
            print(f"{pad}{span.name}  [{status}{description}]")
            for event in span.events:
                attributes = event.attributes or {}
                detail = ", ".join(f"{key.removeprefix('seenn.job.')}={attributes[key]}"
                                   for key in ("seenn.job.progress", "seenn.job.stage.name",
                                               "seenn.job.error.code", "exception.type")
                                   if key in attributes)
                print(f"{pad}  - {event.name} {detail}")
            assert span.context is not None
            for child in children.get(span.context.span_id, []):
                show(child, depth + 1)

        for root in children.get(None, []):
            show(root, 0)


class RenderError(Exception):
    """The renderer gave up; ``code`` becomes the job's error code."""

    code = "RENDER_FAILED"


def main() -> None:
    """Trace one request that runs a successful and a failing job."""
    printer = TreePrinter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(printer))
    trace.set_tracer_provider(provider)
    seenn.configure(exporters=[OTelExporter(span_per_job=True, progress_interval=0.05)])
    tracer = trace.get_tracer("example")

    with tracer.start_as_current_span("POST /videos"):
        with seenn.track("video-generation", user_id="user_123",
                         stages=["render", "encode"]) as job:
            with seenn.stage("render"):
                for _ in seenn.iterate(range(20), message="Rendering frames"):
                    time.sleep(0.01)
            with seenn.stage("encode"), seenn.track("thumbnail"):
                time.sleep(0.01)
            job.set_result({"type": "video", "url": "https://cdn.example.com/cat.mp4"})
        try:
            with seenn.track("video-generation", user_id="user_123"):
                raise RenderError("GPU memory exceeded")
        except RenderError:
            pass

    seenn.shutdown()
    provider.shutdown()
    printer.print_tree()


if __name__ == "__main__":
    main()
