"""Instrumentation: ``track()``, ``@job``, stages, ``iterate()`` and the ambient job.

It turns job changes into :class:`~seenn.JobEvent` objects and hands them to
processors through the :class:`~seenn._core.pipeline.Processor` protocol; it
never imports an exporter, the REST client, the server or the CLI.
"""
