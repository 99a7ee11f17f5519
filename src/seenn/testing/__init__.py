"""Helpers for testing code instrumented with seenn.

* :class:`InMemoryExporter` keeps every event in a list.
* :func:`capture_jobs` routes the default tracker's events to one, inline,
  with strict mode on, for the duration of a ``with`` block.
* The pytest plugin (installed with seenn) provides the ``seenn_exporter``
  fixture, which does the same for one test.

::

    from seenn.testing import capture_jobs

    def test_render_reports_progress():
        with capture_jobs() as exporter:
            render(video)
        assert [e.kind for e in exporter.events][-1] == "completed"
"""

from seenn.testing._capture import InMemoryExporter, capture_jobs, strict_mode

__all__ = ["InMemoryExporter", "capture_jobs", "strict_mode"]
