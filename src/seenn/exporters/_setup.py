"""How ``configure()`` turns exporters into a pipeline, and ``SEENN_EXPORTER`` names them.

``import seenn`` registers :func:`build_pipeline` with the tracker
(``seenn._instrumentation.tracker.set_pipeline_builder``): instrumentation
knows processors only by their protocol, and this module is where the
exporters it may be given by name come from.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from seenn._core.pipeline import logger
from seenn.exporters._console import ConsoleExporter
from seenn.exporters._processors import BatchProcessor
from seenn.exporters._simple import SimpleProcessor

if TYPE_CHECKING:
    from seenn._core.events import JobEvent
    from seenn._core.pipeline import Exporter, Processor

__all__ = ["ENV_EXPORTERS", "build_pipeline", "exporters_from_env"]


def _http_exporter() -> Exporter:
    from seenn.exporters._http import HTTPExporter

    return HTTPExporter()


def _otel_exporter() -> Exporter:
    from seenn.exporters._otel import OTelExporter

    return OTelExporter()


ENV_EXPORTERS: dict[str, Callable[[], Exporter]] = {"console": ConsoleExporter,
                                                    "http": _http_exporter,
                                                    "otel": _otel_exporter}
"""Exporters ``SEENN_EXPORTER`` may name, by name (``none`` means no exporter)."""


def exporters_from_env() -> list[Exporter]:
    """Build the exporters named in ``SEENN_EXPORTER`` (a comma-separated list).

    ``none`` (or an empty value) means no exporter. Unknown names are skipped
    with a warning on the ``seenn`` logger that lists the known ones.
    """
    raw = os.environ.get("SEENN_EXPORTER")
    if raw is None:
        # A key in the environment is an application that wants its jobs seen.
        raw = "http" if os.environ.get("SEENN_API_KEY") else ""
    exporters: list[Exporter] = []
    for part in raw.split(","):
        name = part.strip().lower()
        if not name or name == "none":
            continue
        factory = ENV_EXPORTERS.get(name)
        if factory is None:
            known = ", ".join(sorted([*ENV_EXPORTERS, "none"]))
            logger.warning("seenn: SEENN_EXPORTER names an unknown exporter %r; it is "
                           "ignored (known: %s)", name, known)
            continue
        try:
            exporters.append(factory())
        except Exception as exc:
            # Configuration runs at import: a bad setting must not break `import seenn`.
            logger.warning("seenn: SEENN_EXPORTER=%s could not be set up and is ignored: %s",
                           name, exc)
    return exporters


class _DebugProcessor:
    """Logs every event on the ``seenn`` logger at DEBUG level (``debug=True``)."""

    def on_event(self, event: JobEvent) -> None:
        logger.debug("seenn: %s %s %s %d%% seq=%d", event.kind, event.job_type, event.job_id,
                     event.progress, event.sequence)

    def force_flush(self, timeout: float = 30.0) -> bool:
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        return None


def _enable_debug_logging() -> None:
    logger.setLevel(logging.DEBUG)
    if not any(getattr(handler, "_seenn_debug", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler._seenn_debug = True  # type: ignore[attr-defined]
        logger.addHandler(handler)




def build_pipeline(*, exporters: Sequence[Exporter] | None,
                   processors: Sequence[Processor] | None, api_key: str | None,
                   base_url: str | None, debug: bool) -> list[Processor]:
    """Build the processors of a pipeline from the arguments of ``configure()``.

    Each exporter goes behind its own :class:`BatchProcessor` (with the
    exporter's ``progress_interval``, if it has one), except an exporter that
    declares ``inline = True``, which goes behind a :class:`SimpleProcessor`.
    ``processors`` follow as they are; ``debug`` adds one that logs every event.

    Raises:
        ValidationError: ``api_key`` or ``base_url`` is malformed.
    """
    from seenn.exporters._http import HTTPExporter

    if exporters is None and processors is None:
        exporters = exporters_from_env()
        if api_key is not None or base_url is not None:
            exporters = [e for e in exporters if not isinstance(e, HTTPExporter)]
    chosen = list(exporters or ())
    if api_key is not None or base_url is not None:
        chosen.append(HTTPExporter(api_key=api_key, base_url=base_url))
    pipeline: list[Processor] = []
    for exporter in chosen:
        if getattr(exporter, "inline", False) is True:
            pipeline.append(SimpleProcessor(exporter))
        else:
            interval = getattr(exporter, "progress_interval", None)
            pipeline.append(BatchProcessor(exporter) if interval is None
                            else BatchProcessor(exporter, progress_interval=interval))
    pipeline.extend(processors or ())
    if debug:
        _enable_debug_logging()
        pipeline.append(_DebugProcessor())
    return pipeline
