"""`seenn jobs watch` on a job not created yet, and the `jobs list` hint for the next page."""

from __future__ import annotations

import shlex
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import seenn
import seenn.server
from seenn._cli import main
from seenn._cli.jobs import watch
from seenn.server import RunningServer
from tests.test_cli import _Lines


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[RunningServer]:
    """A `seenn serve` on a free loopback port."""
    with seenn.server.running(tmp_path / "cli.db") as srv:
        yield srv


@pytest.fixture
def client(backend: RunningServer) -> Iterator[seenn.SeennClient]:
    """A client of the backend."""
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as c:
        yield c


def test_watch_waits_for_a_job_that_starts_later(client: seenn.SeennClient) -> None:
    """An id the backend does not know yet is polled until its job appears, then followed."""
    out = _Lines()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(
        watch(client, "job_later", interval=0.01, out=out, tty=False)))
    thread.start()
    out.wait_for("waiting for job job_later to appear\n")
    job = client.jobs.start("video", user_id="u", title="t", job_id="job_later")
    out.wait_for("  0%")
    job.complete()
    thread.join(timeout=30)
    assert result == [0]
    lines = out.getvalue().splitlines()
    assert lines[0] == "waiting for job job_later to appear"
    assert lines.count("waiting for job job_later to appear") == 1
    assert lines[-1] == "completed"


def test_watch_with_no_wait_fails_at_once_on_an_unknown_id(
        backend: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    """`--wait 0` keeps the old behaviour: an unknown id is one error line, exit 1."""
    assert main(["jobs", "watch", "job_missing", "--wait", "0", "--base-url", backend.url,
                 "--api-key", backend.api_key]) == 1
    captured = capsys.readouterr()
    assert captured.err == "seenn: job job_missing not found (or expired)\n"
    assert "waiting" not in captured.out


@pytest.mark.parametrize("value", ["-1", "nan", "86401"])
def test_watch_refuses_a_wait_out_of_range(backend: RunningServer, value: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`--wait` outside 0..86400 seconds is a usage error (exit 2) before any request."""
    assert main(["jobs", "watch", "job_1", "--wait", value, "--base-url", "http://127.0.0.1:1",
                 "--api-key", "sk_test_x"]) == 2
    assert "--wait must be between 0 and 86400 seconds" in capsys.readouterr().err


def test_list_hint_runs_as_printed(backend: RunningServer, client: seenn.SeennClient,
                                   capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The "more:" line keeps --limit, --base-url and --api-key, and runs as it is."""
    monkeypatch.delenv("SEENN_API_KEY", raising=False)
    monkeypatch.delenv("SEENN_BASE_URL", raising=False)
    ids = [client.jobs.start("video", user_id="bob o'neil", title=f"Video {i}").id
           for i in range(5)]
    assert main(["jobs", "list", "bob o'neil", "--limit", "2", "--base-url", backend.url,
                 "--api-key", backend.api_key]) == 0
    seen: list[str] = []
    for _ in range(3):
        lines = capsys.readouterr().out.splitlines()
        seen += [line.split()[0] for line in lines[1:] if line.startswith("job_")]
        hints = [line for line in lines if line.startswith("more: ")]
        if not hints:
            break
        words = shlex.split(hints[0].removeprefix("more: "))
        assert words[:4] == ["seenn", "jobs", "list", "bob o'neil"]
        assert words[words.index("--limit") + 1] == "2"
        assert main(words[1:]) == 0
    assert seen == ids[::-1]


def test_list_hint_leaves_the_environment_in_the_environment(
        backend: RunningServer, client: seenn.SeennClient,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A key and URL taken from SEENN_API_KEY / SEENN_BASE_URL are not written out."""
    monkeypatch.setenv("SEENN_API_KEY", backend.api_key)
    monkeypatch.setenv("SEENN_BASE_URL", backend.url)
    for i in range(3):
        client.jobs.start("video", user_id="carol", title=f"Video {i}")
    assert main(["jobs", "list", "carol", "--limit", "1"]) == 0
    hint = capsys.readouterr().out.splitlines()[-1]
    assert hint.startswith("more: seenn jobs list carol --limit 1 --cursor ")
    assert backend.api_key not in hint and backend.url not in hint
