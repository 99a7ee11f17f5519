"""Where job events go: the exporter and processor protocols and the built-in ones.

* :class:`Exporter` delivers events (``export(events) -> ExportResult``,
  ``force_flush(timeout)``, ``shutdown(timeout)``), as OpenTelemetry's
  ``SpanExporter`` does.
* :class:`Processor` receives each event inline and must not block;
  :class:`BatchProcessor` queues events for an exporter on a worker thread,
  :class:`SimpleProcessor` exports at once.
* :class:`ConsoleExporter` writes events to stderr.
* :class:`HTTPExporter` delivers them to a Seenn-compatible backend (its
  counters: :class:`DeliveryStats`).
* :class:`OTelExporter` records them on OpenTelemetry spans (inline).
"""

from seenn._core.pipeline import Exporter, ExportResult, Processor
from seenn.exporters._console import ConsoleExporter
from seenn.exporters._http import DeliveryStats, HTTPExporter
from seenn.exporters._otel import OTelExporter
from seenn.exporters._processors import BatchProcessor
from seenn.exporters._simple import SimpleProcessor

__all__ = [
    "BatchProcessor",
    "ConsoleExporter",
    "DeliveryStats",
    "ExportResult",
    "Exporter",
    "HTTPExporter",
    "OTelExporter",
    "Processor",
    "SimpleProcessor",
]
