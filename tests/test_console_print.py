"""On one terminal, the live bar and the program's print() do not write over each other."""

from __future__ import annotations

import io
import re
import sys

import pytest

import seenn
from seenn.exporters import ConsoleExporter, SimpleProcessor


class _Terminal:
    """One screen that two streams write to, with the few controls the console uses."""

    def __init__(self) -> None:
        self.lines = [""]
        self.column = 0

    def feed(self, text: str) -> None:
        for token in re.findall(r"\x1b\[2K|\r|\n|[^\r\n\x1b]+", text):
            if token == "\x1b[2K":
                self.lines[-1] = ""
            elif token == "\r":
                self.column = 0
            elif token == "\n":
                self.lines.append("")
                self.column = 0
            else:
                line = self.lines[-1].ljust(self.column)
                self.lines[-1] = line[:self.column] + token + line[self.column + len(token):]
                self.column += len(token)

    def screen(self) -> list[str]:
        return [line for line in self.lines if line]


class _TtyStream(io.TextIOBase):
    """A stream of the terminal, as stdout or stderr is when both go to one console."""

    def __init__(self, terminal: _Terminal) -> None:
        self.terminal = terminal

    def write(self, text: str) -> int:
        self.terminal.feed(text)
        return len(text)

    def isatty(self) -> bool:
        return True


def _on_one_terminal(monkeypatch: pytest.MonkeyPatch) -> _Terminal:
    """stdout and stderr on one (emulated) terminal, from here to the end of the test.

    Set in the test itself: pytest puts its own capture back after fixtures run.
    """
    screen = _Terminal()
    monkeypatch.setattr(sys, "stdout", _TtyStream(screen))
    monkeypatch.setattr(sys, "stderr", _TtyStream(screen))
    return screen


def test_print_goes_above_the_bar_and_the_bar_comes_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """print() during a live bar gets a line of its own; the bar is drawn again below it."""
    terminal = _on_one_terminal(monkeypatch)
    stdout = sys.stdout
    console = ConsoleExporter()
    tracker = seenn.Tracker(processors=[SimpleProcessor(console)])
    with tracker.track("video") as job:
        job.set_progress(30, message="Rendering")
        print("hello from the program")
        during = terminal.screen()
        job.set_progress(60, message="Rendering")
    tracker.shutdown()
    assert during[-2] == "hello from the program"
    assert during[-1].startswith("[seenn] video ") and " 30% Rendering" in during[-1]
    screen = terminal.screen()
    assert screen[1] == "hello from the program"
    assert "completed in" in screen[-1]
    assert len(screen) == 3  # started, the printed line, completed: no bar left behind
    assert sys.stdout is stdout  # the wrapper is gone once the bar is


def test_no_wrapper_when_stdout_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Output redirected to a file (not a TTY) is left alone."""
    _on_one_terminal(monkeypatch)
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stdout", captured)
    tracker = seenn.Tracker(processors=[SimpleProcessor(ConsoleExporter())])
    with tracker.track("video") as job:
        job.set_progress(30)
        assert sys.stdout is captured
        print("to the file")
    tracker.shutdown()
    assert captured.getvalue() == "to the file\n"


def test_wrapper_forwards_everything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    """While wrapped, stdout's other attributes are the terminal stream's own."""
    _on_one_terminal(monkeypatch)
    stdout = sys.stdout
    tracker = seenn.Tracker(processors=[SimpleProcessor(ConsoleExporter())])
    with tracker.track("video") as job:
        job.set_progress(30)
        assert sys.stdout is not stdout
        assert sys.stdout.isatty()
        sys.stdout.flush()
    tracker.shutdown()
    assert sys.stdout is stdout
