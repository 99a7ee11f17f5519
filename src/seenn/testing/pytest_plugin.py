"""The seenn pytest plugin, registered through the ``pytest11`` entry point.

It provides the ``seenn_exporter`` fixture::

    def test_export_job(seenn_exporter):
        export_report()
        assert seenn_exporter.kinds()[-1] == "completed"
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from seenn.testing._capture import InMemoryExporter, capture_jobs

__all__ = ["seenn_exporter"]


@pytest.fixture
def seenn_exporter() -> Iterator[InMemoryExporter]:
    """Capture the default tracker's events for one test, in strict mode."""
    with capture_jobs() as exporter:
        yield exporter
