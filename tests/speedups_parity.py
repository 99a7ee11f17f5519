"""Run tracking scenarios and print what they did as JSON, for comparing the two hot paths.

``tests/test_speedups.py`` runs this twice, once with the compiled hot path
(``seenn._core._speedups``) and once with ``SEENN_NO_EXTENSIONS=1``, and
compares the outputs. Ids, clocks and trace ids differ from run to run, so
they are replaced by their order of first appearance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections import UserString
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

import seenn
from seenn._core.accel import speedups
from seenn.exporters import BatchProcessor, ExportResult, SimpleProcessor
from seenn.testing import InMemoryExporter, strict_mode

Scenario = Callable[[seenn.Tracker], None]
SCENARIOS: dict[str, Scenario] = {}


def scenario(func: Scenario) -> Scenario:
    SCENARIOS[func.__name__] = func
    return func


@scenario
def configured_block(tracker: seenn.Tracker) -> None:
    with tracker.track("t", user_id="u") as job:
        for value in (0, 10, 10, 11, 50, 50, 99, 100):
            job.set_progress(value)


@scenario
def track_arguments(tracker: seenn.Tracker) -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        (("t",), {"user_id": "new-user"}), (("t",), {"user_id": "new-user"}),
        (("another type",), {}), (("t",), {"user_id": None}), (("t",), {"title": "x"}),
        (("t",), {"user_id": UserString("u")}), (("t",), {"user_id": ""}), ((5,), {}),
        (("",), {}), (("t",), {"colour": 1}), ((), {"job_type": "t"}), (("t", "u"), {}),
        (("t",), {"user_id": "u\x00"}), ((UserString("t"),), {}),
    ]
    for args, kwargs in calls:
        try:
            with tracker.track(*args, **kwargs) as job:
                job.set_progress(1)
            print(json.dumps({"made": [job.job_type, job.user_id, job.title]}))
        except (seenn.ValidationError, TypeError) as exc:
            print(json.dumps({"refused": f"{type(exc).__name__}: {exc}"}))


@scenario
def deleted_fields(tracker: seenn.Tracker) -> None:
    # A job's own value deleted: its events carry the default (None) again.
    with tracker.track("t") as job:
        job.set_progress(1, message="m")
        job._title = "title"
        del job._title, job._message
        job.set_progress(2)
    with tracker.track("t") as job:  # without a sequence no event is made: logged
        del job._seq
        job.set_progress(3)
    try:  # without processors to hand it to, the event's change raises
        with tracker.track("t") as job:
            del job._procs
            job.set_progress(3)
    except AttributeError as exc:
        print(json.dumps({"raised": str(exc)}))


@scenario
def options_and_odd_values(tracker: seenn.Tracker) -> None:
    with tracker.track("t") as job:
        job.set_progress(12.9)
        job.set_progress(20, message="twenty")
        job.set_progress(21, message=None)
        for bad in (-1, 101, 10**30, float("nan"), "5", True):
            with suppress(seenn.ValidationError):
                job.set_progress(bad)  # type: ignore[arg-type]
        with suppress(TypeError):
            job.set_progress(1, colour="red")  # type: ignore[call-overload]
        with suppress(TypeError):
            job.set_progress()  # type: ignore[call-overload]


@scenario
def failing_block(tracker: seenn.Tracker) -> None:
    with suppress(ValueError), tracker.track("t") as job:
        job.set_progress(30)
        raise ValueError("boom")


@scenario
def nested_jobs(tracker: seenn.Tracker) -> None:
    with tracker.track("parent", user_id="u") as parent:
        parent.set_progress(5)
        for _ in range(2):
            with tracker.track("child") as child:
                child.set_progress(50)
        with tracker.track("grandparent-less", user_id="v") as other:
            other.set_progress(1)


@scenario
def queued_job(tracker: seenn.Tracker) -> None:
    with tracker.track("t", queue={"position": 3}) as job:
        job.set_progress(0)
        job.set_progress(5)
    with tracker.track("t") as job:
        job.set_progress(1, queue={"position": 2})
        job.set_progress(1)
        job.set_progress(2)


@scenario
def after_the_end(tracker: seenn.Tracker) -> None:
    with tracker.track("t") as job:
        job.complete()
        job.set_progress(40)
    job.set_progress(41)
    with suppress(RuntimeError), job:
        pass
    fresh = tracker.track("t")
    fresh.set_progress(3)  # not entered yet


@scenario
def span_ids(tracker: seenn.Tracker) -> None:
    otel = TracerProvider().get_tracer("parity")
    with otel.start_as_current_span("outer"), tracker.track("t") as job:
        job.set_progress(9)


class _Broken:
    """A processor that raises on the events of the given kinds."""

    def __init__(self, *kinds: str) -> None:
        self.kinds = kinds

    def on_event(self, event: seenn.JobEvent) -> None:
        if event.kind in self.kinds:
            raise RuntimeError(f"no {event.kind}")

    def force_flush(self, timeout: float = 30.0) -> bool:
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        return None


@scenario
def failing_processor(tracker: seenn.Tracker) -> None:
    broken = seenn.Tracker(processors=[_Broken("started", "progress", "completed"),
                                       *tracker.processors])
    with broken.track("t") as job:
        job.set_progress(60)
    for kind in ("started", "progress", "completed"):
        strict = seenn.Tracker(processors=[_Broken(kind), *tracker.processors])
        with strict_mode(), suppress(RuntimeError), strict.track(kind) as job:
            job.set_progress(61)
        print(json.dumps({"strict": kind, "status": job.status,
                          "ambient": seenn.current_job() is not None}))


@scenario
def async_block(tracker: seenn.Tracker) -> None:
    async def run() -> None:
        async with tracker.track("t") as job:
            job.set_progress(70)

    asyncio.run(run())


@scenario
def unconfigured(tracker: seenn.Tracker) -> None:
    quiet = seenn.Tracker()
    with quiet.track("t", user_id="u") as job:
        job.set_progress(44)
        state = (job.status, job.progress)
    print(json.dumps({"inside": state, "after": [job.status, job.progress]}))
    with suppress(KeyError), quiet.track("t") as job:
        raise KeyError("k")
    print(json.dumps({"failed": [job.status, job.progress, job.error and job.error.code]}))


@scenario
def eta_marks(tracker: seenn.Tracker) -> None:
    with tracker.track("t") as job:
        for value in range(0, 101, 3):
            job.set_progress(value)
        marks = job._eta_marks[::2]  # the percentages (the others are clock readings)
    print(json.dumps({"marks": marks, "next": job._eta_next}))


class _NoIds(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname} " + re.sub(r"job_[0-9A-Z]{26}", "job_*", record.getMessage())


class _Recorder(InMemoryExporter):
    def export(self, events: Sequence[seenn.JobEvent]) -> ExportResult:
        return super().export(events)


def main(argv: Sequence[str]) -> int:
    # Log lines without ids or tracebacks (the compiled code has no Python frames).
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_NoIds())
    logging.getLogger("seenn").addHandler(handler)
    print(json.dumps({"compiled": speedups is not None}), file=sys.stderr)
    names: dict[Any, str] = {}

    def stable(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int)):
            return value
        return names.setdefault(value, f"#{len(names)}")

    for name, run in SCENARIOS.items():
        print(f"== {name}")
        for processor_type in (SimpleProcessor, BatchProcessor):
            exporter = _Recorder()
            tracker = seenn.Tracker(processors=[processor_type(exporter)])
            run(tracker)
            tracker.force_flush()
            for event in exporter.events:
                fields = event.to_dict()
                for key in ("job_id", "parent_id", "timestamp", "trace_id", "span_id"):
                    fields[key] = stable(fields[key])
                if fields["error"] is not None:
                    # Where it was raised from differs: the compiled code has no frames.
                    fields["error"]["details"].pop("traceback", None)
                print(json.dumps(fields, sort_keys=True))
            tracker.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
