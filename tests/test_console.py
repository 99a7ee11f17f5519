"""ConsoleExporter: readable lines, a live bar on terminals, JSON lines."""

from __future__ import annotations

import io
import json

import pytest

import seenn
from seenn.exporters import ConsoleExporter, SimpleProcessor
from tests.tracking_helpers import no_job_left_behind  # noqa: F401 (autouse fixture)


class FakeTerminal(io.StringIO):
    """A StringIO that says it is a TTY."""

    def isatty(self) -> bool:
        return True


def _tracker(exporter: ConsoleExporter) -> seenn.Tracker:
    return seenn.Tracker(processors=[SimpleProcessor(exporter)])


def test_text_lines_show_lifecycle_stage_and_children() -> None:
    """Text format prints one line per event, with stage, message, child indentation and outcome."""
    stream = io.StringIO()
    tracker = _tracker(ConsoleExporter(stream))
    with tracker.track("video", user_id="user_1", title="Cat video", stages=["render", "upload"]):
        with seenn.stage("render"):
            seenn.current_job().set_progress(30, message="Frames")  # type: ignore[union-attr]
        with tracker.track("thumbnail") as child:
            pass
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[seenn] video job_")
    assert "started 'Cat video' for user_1" in lines[0]
    assert any(line.endswith(" 30% render (1/2) Frames") for line in lines)
    child_lines = [line for line in lines if child.id in line]
    assert child_lines[0].startswith("[seenn]   thumbnail ")
    assert "(child 0 of job_" in child_lines[0]
    assert " completed in " in child_lines[-1]
    assert lines[-1].startswith("[seenn] video ") and " completed in " in lines[-1]


def test_failed_line_has_code_message_and_retryable() -> None:
    """A failed job's line shows the error code, message and whether it may be retried."""
    stream = io.StringIO()
    tracker = _tracker(ConsoleExporter(stream))
    with pytest.raises(TimeoutError), tracker.track("t", retryable=True):
        raise TimeoutError("render took too long")
    last = stream.getvalue().splitlines()[-1]
    assert " failed in " in last
    assert last.endswith(": TimeoutError: render took too long (retryable)")


def test_text_output_is_ascii() -> None:
    """Non-ASCII titles and messages are escaped so any stream encoding can take them."""
    stream = io.StringIO()
    tracker = _tracker(ConsoleExporter(stream))
    with tracker.track("t", title="Vid\u00e9o \u2713") as job:
        job.set_progress(1, message="\u2192 next")
    text = stream.getvalue()
    assert text.isascii()
    assert "Vid\\xe9o \\u2713" in text


def test_live_bar_redraws_progress_in_place_on_a_terminal() -> None:
    """On a TTY, progress redraws one line with a bar; the next full line clears it first."""
    terminal = FakeTerminal()
    tracker = _tracker(ConsoleExporter(terminal))
    with tracker.track("t") as job:
        job.set_progress(50, message="Half")
        job.set_progress(75)
    text = terminal.getvalue()
    assert "\r\x1b[2K[seenn] t " in text
    assert "[############------------]  50% Half" in text
    assert "[##################------]  75%" in text
    completed = text.rsplit("\r\x1b[2K", 1)[1]
    assert completed.startswith("[seenn] t ") and " completed in " in completed
    assert text.endswith("\n")


def test_live_false_forces_plain_lines_on_a_terminal() -> None:
    """live=False prints a line per progress event even on a TTY."""
    terminal = FakeTerminal()
    tracker = _tracker(ConsoleExporter(terminal, live=False))
    with tracker.track("t") as job:
        job.set_progress(10)
    assert "\r" not in terminal.getvalue()
    assert len(terminal.getvalue().splitlines()) == 3


def test_json_format_writes_one_object_per_event() -> None:
    """format='json' writes JSON lines carrying every event field."""
    stream = io.StringIO()
    tracker = _tracker(ConsoleExporter(stream, format="json"))
    with tracker.track("t", user_id="u", stages=2) as job:
        job.set_stage("first")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["kind"] for r in records] == ["started", "progress", "completed"]
    assert records[1]["stage"] == {"name": "first", "current": 1, "total": 2}
    assert records[2]["job_id"] == job.id and records[2]["progress"] == 100
    assert set(records[0]) == set(seenn.JobEvent.__dataclass_fields__)


def test_default_stream_is_stderr_at_export_time(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a stream the exporter writes to whatever sys.stderr is when it exports."""
    tracker = _tracker(ConsoleExporter())
    with tracker.track("to-stderr"):
        pass
    captured = capsys.readouterr()
    assert "to-stderr" in captured.err and captured.out == ""


def test_console_behind_batch_processor_via_configure() -> None:
    """configure(exporters=[ConsoleExporter(...)]) delivers through a batch processor on flush."""
    stream = io.StringIO()
    tracker = seenn.Tracker(exporters=[ConsoleExporter(stream)])
    with tracker.track("batched") as job:
        job.set_progress(10)
    assert tracker.force_flush(timeout=10)
    assert "batched" in stream.getvalue() and "completed" in stream.getvalue()
    tracker.shutdown(timeout=10)


def test_unknown_format_is_rejected() -> None:
    """ConsoleExporter(format=...) accepts only 'text' and 'json'."""
    with pytest.raises(ValueError, match="format"):
        ConsoleExporter(format="xml")  # type: ignore[arg-type]
