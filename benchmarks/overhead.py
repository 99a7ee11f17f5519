"""What instrumenting code with seenn costs the code, against baselines measured in the same run.

Run it alone (other processes skew the figures)::

    python benchmarks/overhead.py [--repeat 7] [--number 20000]

It prints a table of four measurements:

1. ``with seenn.track(...)`` plus one ``set_progress`` with nothing configured,
   against a minimal class context manager that sets and resets one
   ``ContextVar`` (the floor for any ambient-context API). Target: <= 2x.
2. The same block with a ``BatchProcessor`` and an exporter that discards,
   against OpenTelemetry SDK's ``start_as_current_span`` + ``add_event`` with a
   ``BatchSpanProcessor`` and an exporter that discards. Target: <= 0.25x.
   Both queues hold a whole run, so each worker handles every event (none is
   dropped: a dropped event would be cheaper than a delivered one), sharing
   the GIL with the tracked loop as it would in production.
3. A call of a ``@seenn.job`` sync function (nothing configured) against the
   plain call, in microseconds.
4. One job with 1,000,000 ``set_progress`` calls through a ``BatchProcessor``:
   how many events reached the exporter (progress is coalesced per job).

The first line says which hot path ran: the compiled one
(``seenn._core._speedups``) or pure Python; ``SEENN_NO_EXTENSIONS=1`` measures
the latter where the extension is built.

Each figure is the best of ``--repeat`` runs of ``--number`` iterations. A
figure and its baseline are measured in alternating runs, so that a noisy
neighbour (this machine is a shared VM) slows both alike instead of skewing
the ratio; each pipeline is flushed between runs, outside the timing.
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import seenn
from seenn.exporters import BatchProcessor, ExportResult

_var: ContextVar[object] = ContextVar("baseline", default=None)


class MinimalContext:
    """The baseline: a class context manager setting and resetting one ContextVar."""

    __slots__ = ("_token",)

    def __enter__(self) -> MinimalContext:
        self._token = _var.set(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        _var.reset(self._token)


class DiscardingExporter:
    """A seenn exporter that counts and drops events."""

    def __init__(self) -> None:
        self.events = 0

    def export(self, events: Sequence[seenn.JobEvent]) -> ExportResult:
        self.events += len(events)
        return ExportResult.SUCCESS

    def force_flush(self, timeout: float = 30.0) -> bool:
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        return None


class DiscardingSpanExporter(SpanExporter):
    """An OpenTelemetry span exporter that drops spans."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None



def best_pair_us(subject: Callable[[], Any], baseline: Callable[[], Any], number: int,
                 repeat: int, settle: Callable[[], Any] = lambda: None) -> tuple[float, float]:
    """The best times per call of ``subject`` and ``baseline``, measured in alternating runs.

    ``settle`` runs after every run, untimed (a flush, so that no run pays for
    the backlog of the one before).
    """
    subject_best = baseline_best = float("inf")
    for _ in range(repeat):
        baseline_best = min(baseline_best, timeit.timeit(baseline, number=number))
        settle()
        subject_best = min(subject_best, timeit.timeit(subject, number=number))
        settle()
    return subject_best / number * 1e6, baseline_best / number * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--updates", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    number, repeat = args.number, args.repeat
    rows: list[tuple[str, str, str, str]] = []
    track = seenn.track

    # 1. Nothing configured.
    seenn.configure(exporters=[])

    def minimal() -> None:
        with MinimalContext():
            pass

    def tracked() -> None:
        with track("benchmark", user_id="user_1") as job:
            job.set_progress(50)

    noop, baseline = best_pair_us(tracked, minimal, number * 5, repeat)
    rows.append(("1. track()+set_progress, nothing configured", f"{noop:.2f} us",
                 f"{baseline:.2f} us (ContextVar class CM)", f"{noop / baseline:.2f}x (<= 2x)"))

    # 2. BatchProcessor + discarding exporter vs OpenTelemetry SDK.
    provider = TracerProvider()
    # Queues that hold a whole run: both workers must handle every event, none
    # is dropped (a dropped event is cheaper than a delivered one).
    queue_size = 4 * number
    provider.add_span_processor(BatchSpanProcessor(DiscardingSpanExporter(),
                                                   max_queue_size=queue_size))
    tracer = provider.get_tracer("benchmark")

    def otel() -> None:
        with tracer.start_as_current_span("benchmark") as span:
            span.add_event("progress", {"progress": 50})

    discard = DiscardingExporter()
    processor = BatchProcessor(discard, max_queue_size=queue_size)
    seenn.configure(processors=[processor])

    def settle() -> None:
        provider.force_flush()
        seenn.force_flush()

    batch_us, otel_us = best_pair_us(tracked, otel, number, repeat, settle)
    rows.append(("2. same block, BatchProcessor + discarding exporter", f"{batch_us:.2f} us",
                 f"{otel_us:.2f} us (OTel SDK span + event, BSP)",
                 f"{batch_us / otel_us:.2f}x (<= 0.25x)"))
    rows.append(("   events exported (and dropped)", f"{discard.events:,} ({processor.dropped})",
                 "", ""))
    provider.shutdown()
    seenn.configure(exporters=[])

    # 3. Decorated call vs plain call.
    def plain(value: int) -> int:
        return value

    decorated = seenn.job("benchmark")(plain)
    decorated_us, plain_us = best_pair_us(lambda: decorated(1), lambda: plain(1), number * 5,
                                          repeat)
    rows.append(("3. @seenn.job sync call, nothing configured", f"{decorated_us:.2f} us",
                 f"{plain_us:.2f} us (plain call)",
                 f"+{decorated_us - plain_us:.2f} us per call"))

    # 4. One job, a million updates.
    discard = DiscardingExporter()
    processor = BatchProcessor(discard)
    seenn.configure(processors=[processor])
    started = time.perf_counter()
    with track("benchmark") as job:
        set_progress = job.set_progress
        for index in range(args.updates):
            set_progress(index % 101)
    elapsed = time.perf_counter() - started
    seenn.force_flush()
    rows.append((f"4. one job, {args.updates:,} set_progress calls",
                 f"{discard.events} events exported",
                 f"{processor.coalesced:,} coalesced, {processor.dropped} dropped",
                 f"{elapsed:.2f} s, {elapsed / args.updates * 1e6:.2f} us/call"))
    seenn.shutdown()

    from seenn._core.accel import speedups

    print("hot path:", "compiled (seenn._core._speedups)" if speedups is not None else
          "pure Python (no C extension, or SEENN_NO_EXTENSIONS set)")
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    header = ("measurement", "seenn", "baseline", "result")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
