"""The `seenn` command line: serve, jobs get/list/watch, and its one-line errors."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

import seenn
import seenn.server
from seenn._cli import main
from seenn._cli.jobs import watch
from seenn.server import RunningServer
from tests.conftest import SECRET
from tests.server import RecordingServer


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


def _conn(backend: RunningServer) -> list[str]:
    return ["--base-url", backend.url, "--api-key", backend.api_key]


class _Server:
    """`python -m seenn serve` in a subprocess, its stdout read line by line on a thread."""

    def __init__(self, db: Path, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seenn", "serve", "--port", "0", "--db", str(db), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def line(self, pattern: str) -> str:
        """The next stdout line matching ``pattern`` (bounded: 60 s)."""
        while True:
            line = self.lines.get(timeout=60)
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def url(self) -> str:
        """The base URL from the "listening" line."""
        match = re.search(r"http://\S+", self.line("listening"))
        assert match is not None
        return match.group(0)

    def stop(self) -> tuple[int, str]:
        """Ctrl-C the server; return its exit status and stderr."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read()


def test_serve_prints_a_key_pair_once_and_stops_cleanly(tmp_path: Path) -> None:
    """First start prints the new key pair; Ctrl-C exits 0; the next start prints no keys."""
    db = tmp_path / "serve.db"
    server = _Server(db)
    try:
        secret = server.line(r"secret key").split()[-1]
        public = server.line(r"public key").split()[-1]
        url = server.url()
        pages = server.line(r"pages: ")
        assert f"{url}/ (every user's jobs, with the secret key)" in pages
        assert f"{url}/jobs/ID#key=PUBLIC_KEY" in pages
        assert secret.startswith("sk_test_")
        assert public.startswith("pk_test_")
        assert main(["conformance", "--base-url", url, "--api-key", secret,
                     "--public-key", public]) == 0
    finally:
        status, err = server.stop()
    assert status == 0, err
    assert "Traceback" not in err
    server.line("stopped")
    second = _Server(db)
    try:
        second.url()
    finally:
        status, _ = second.stop()
    assert status == 0
    assert not any("secret key" in line for line in second.seen)


def test_serve_reports_a_busy_port_in_one_line(tmp_path: Path) -> None:
    """A port already in use is one clear error line and exit status 1."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "seenn", "serve", "--port", str(port),
                              "--db", str(tmp_path / "b.db")], capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith(f"seenn: serve: cannot listen on 127.0.0.1:{port}")
    assert out.stderr.count("\n") == 1


def test_serve_reports_an_unusable_database_in_one_line(tmp_path: Path) -> None:
    """A database path in a missing folder is one clear error line, not a traceback."""
    out = subprocess.run([sys.executable, "-m", "seenn", "serve", "--port", "0", "--db",
                          str(tmp_path / "missing" / "x.db")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("seenn: serve: cannot open database")
    assert out.stderr.count("\n") == 1


def test_serve_takes_keys_from_the_environment(tmp_path: Path) -> None:
    """SEENN_SERVER_API_KEY and SEENN_SERVER_PUBLIC_KEY set the app's key pair."""
    server = _Server(tmp_path / "e.db", {"SEENN_SERVER_API_KEY": "sk_test_envkey",
                                          "SEENN_SERVER_PUBLIC_KEY": "pk_test_envkey"})
    try:
        url = server.url()
        with seenn.SeennClient("sk_test_envkey", base_url=url) as c:
            job = c.jobs.start("t", user_id="u", title="t")
        assert main(["jobs", "get", job.id, "--base-url", url, "--api-key",
                     "pk_test_envkey"]) == 0
    finally:
        server.stop()
    assert not any("secret key" in line for line in server.seen)


def test_serve_takes_a_stale_limit_and_says_so(tmp_path: Path) -> None:
    """--stale-after 60 ends a silent running job after 60 s, and the listening line says so."""
    server = _Server(tmp_path / "s.db", args=("--stale-after", "60"))
    try:
        secret = server.line(r"secret key").split()[-1]
        url = server.url()
        assert "silent for 60 s fail as WORKER_LOST" in server.seen[-1]
        with seenn.SeennClient(secret, base_url=url) as c:
            job = c.jobs.start("t", user_id="u", title="t")
        assert "staleAfterSeconds" not in job.to_dict()
    finally:
        server.stop()
    off = _Server(tmp_path / "off.db", args=("--stale-after", "0"))
    try:
        off.url()
        assert "WORKER_LOST" not in off.seen[-1]
    finally:
        off.stop()


@pytest.mark.parametrize("value", ["5", "9.9", "-1", "2592001", "nan", "inf", "1e400", "x", ""])
def test_serve_refuses_a_stale_limit_out_of_range(tmp_path: Path, value: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--stale-after takes 0 or 10 to 2,592,000 seconds; anything else is exit 2, no database."""
    db = tmp_path / "never.db"
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "0", "--db", str(db), "--stale-after", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --stale-after: must be 0 (off) or 10 to 2592000 seconds" in err
    assert not db.exists()


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("10", 10.0), ("2592000", 2592000.0),
                                                ("90.5", 90.5), ("1e3", 1000.0)])
def test_serve_accepts_a_stale_limit_in_range(value: str, seconds: float) -> None:
    """0 (off) and 10 to 2,592,000 seconds, fractions included, are valid --stale-after values."""
    from seenn._cli.main import build_parser

    assert build_parser().parse_args(["serve", "--stale-after", value]).stale_after == seconds
    assert build_parser().parse_args(["serve"]).stale_after == 300


def test_serve_takes_an_events_cap(tmp_path: Path) -> None:
    """--max-events sets what /healthz offers; 0 switches POST /v1/events off."""
    server = _Server(tmp_path / "m.db", args=("--max-events", "7"))
    try:
        url = server.url()
        offer = httpx.get(url + "/healthz").json()["extensions"]["events"]
        assert offer["maxEvents"] == 7
    finally:
        server.stop()
    off = _Server(tmp_path / "off.db", args=("--max-events", "0"))
    try:
        assert "events" not in httpx.get(off.url() + "/healthz").json()["extensions"]
    finally:
        off.stop()


@pytest.mark.parametrize("value", ["-1", "10001", "x", "1.5", ""])
def test_serve_refuses_an_events_cap_out_of_range(tmp_path: Path, value: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--max-events takes 0 to 10,000; anything else is exit 2, no database."""
    db = tmp_path / "never.db"
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "0", "--db", str(db), "--max-events", value])
    assert exited.value.code == 2
    assert "argument --max-events: must be 0 (off)" in capsys.readouterr().err
    assert not db.exists()


def test_jobs_get_prints_a_table_or_json(backend: RunningServer, client: seenn.SeennClient,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`seenn jobs get` shows the job's fields for people, or the raw JSON with --json."""
    job = client.jobs.start("video", user_id="alice", title="Cat video")
    job.set_progress(45, message="Rendering", stage={"name": "render", "current": 2,
                                                     "total": 4})
    assert main(["jobs", "get", job.id, *_conn(backend)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^status\s+running$", out, re.M)
    assert re.search(r"^progress\s+45%$", out, re.M)
    assert re.search(r"^stage\s+render \(2/4\)$", out, re.M)
    assert main(["jobs", "get", job.id, "--json", *_conn(backend)]) == 0
    assert json.loads(capsys.readouterr().out)["progress"] == 45


def test_jobs_list_pages_newest_first(backend: RunningServer, client: seenn.SeennClient,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`seenn jobs list` prints a table, newest first, and how to get the next page."""
    ids = [client.jobs.start("video", user_id="bob", title=f"Video {i}").id for i in range(3)]
    assert main(["jobs", "list", "bob", "--limit", "2", *_conn(backend)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["ID", "TYPE", "STATUS", "PROGRESS"]
    assert [line.split()[0] for line in lines[1:3]] == [ids[2], ids[1]]
    assert lines[3].startswith("more: seenn jobs list bob --limit 2 --cursor ")
    assert main(["jobs", "list", "bob", "--json", *_conn(backend)]) == 0
    page = json.loads(capsys.readouterr().out)
    assert [j["id"] for j in page["jobs"]] == ids[::-1]
    assert page["nextCursor"] is None
    assert main(["jobs", "list", "nobody", *_conn(backend)]) == 0
    assert "(no jobs for nobody)" in capsys.readouterr().out


def test_jobs_watch_exit_status_follows_the_outcome(backend: RunningServer,
                                                    client: seenn.SeennClient,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`seenn jobs watch` exits 0 for a completed job and 1 for a failed one."""
    done = client.jobs.start("v", user_id="u", title="t")
    done.complete(result={"type": "video", "url": "https://cdn/x.mp4"})
    assert main(["jobs", "watch", done.id, *_conn(backend)]) == 0
    assert "completed: https://cdn/x.mp4" in capsys.readouterr().out
    bad = client.jobs.start("v", user_id="u", title="t")
    bad.fail(error={"code": "GPU", "message": "out of memory"})
    assert main(["jobs", "watch", bad.id, *_conn(backend)]) == 1
    assert "failed: GPU: out of memory" in capsys.readouterr().out


class _Lines(io.StringIO):
    """An output that lets a test wait for a given text to be written."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = threading.Condition()

    def write(self, text: str) -> int:
        with self.changed:
            n = super().write(text)
            self.changed.notify_all()
        return n

    def wait_for(self, text: str) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: text in self.getvalue(), timeout=30), text


@pytest.mark.parametrize("tty", [False, True])
def test_jobs_watch_follows_a_live_job(client: seenn.SeennClient, tty: bool) -> None:
    """watch draws each change (a bar on a TTY, plain lines otherwise) until the job ends."""
    job = client.jobs.start("video", user_id="u", title="t")
    out = _Lines()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(
        watch(client, job.id, interval=0.01, out=out, tty=tty)))
    thread.start()
    out.wait_for("  0%")
    job.set_progress(30, message="Rendering", stage={"name": "render", "current": 2,
                                                     "total": 4})
    out.wait_for(" 30%")
    job.complete()
    thread.join(timeout=30)
    assert result == [0]
    text = out.getvalue()
    assert "render (2/4)  Rendering" in text
    assert ("\r\x1b[2K" in text) is tty
    if not tty:
        assert text.splitlines()[-1] == "completed"


NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def recorded(server: RecordingServer) -> Iterator[seenn.SeennClient]:
    """A client of the recording server, whose jobs a test can change at will."""
    with seenn.SeennClient(SECRET, base_url=server.url) as c:
        yield c


def _change(server: RecordingServer, job_id: str, **fields: Any) -> None:
    with server.backend._lock:
        server.backend.jobs[job_id].update(fields)


def _watch(client: seenn.SeennClient, job_id: str, *, tty: bool,
           now: Callable[[], datetime]) -> tuple[_Lines, threading.Thread, list[int]]:
    out = _Lines()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(
        watch(client, job_id, interval=0.01, out=out, tty=tty, now=now)))
    thread.start()
    return out, thread, result


@pytest.mark.parametrize("tty", [False, True])
def test_jobs_watch_says_how_long_the_backend_expects(server: RecordingServer,
                                                      recorded: seenn.SeennClient,
                                                      tty: bool) -> None:
    """A running job's line ends with the time left until its estimatedCompletionAt."""
    job = recorded.jobs.start("video", user_id="u", title="t")
    _change(server, job.id, status="running", progress=40,
            estimatedCompletionAt="2026-01-01T12:01:20.000Z")
    out, thread, result = _watch(recorded, job.id, tty=tty, now=lambda: NOW)
    out.wait_for("left")
    _change(server, job.id, status="completed", progress=100)
    thread.join(timeout=30)
    assert result == [0]
    assert "[############..................]  40%  running  ~1 min 20 s left" in out.getvalue()
    assert "completed  ~" not in out.getvalue()  # an ended job has no countdown


@pytest.mark.parametrize("fields", [
    {"estimatedCompletionAt": "2026-01-01T12:05:00.000Z", "etaOverdue": True},
    {"estimatedCompletionAt": "2026-01-01T11:59:59.000Z"},
])
def test_jobs_watch_says_when_a_job_takes_longer_than_usual(
        server: RecordingServer, recorded: seenn.SeennClient, fields: dict[str, Any]) -> None:
    """etaOverdue, or an estimated completion already past while running, reads as such."""
    job = recorded.jobs.start("video", user_id="u", title="t")
    _change(server, job.id, status="running", progress=70, **fields)
    out, thread, result = _watch(recorded, job.id, tty=False, now=lambda: NOW)
    out.wait_for("usual")
    _change(server, job.id, status="completed", progress=100)
    thread.join(timeout=30)
    assert result == [0]
    assert " 70%  running  taking longer than usual\n" in out.getvalue()


@pytest.mark.parametrize("tty", [False, True])
def test_jobs_watch_adds_no_line_for_the_countdown_alone(server: RecordingServer,
                                                        recorded: seenn.SeennClient,
                                                        tty: bool) -> None:
    """Off a terminal a line is written when the job changes; on one the line is redrawn."""
    job = recorded.jobs.start("video", user_id="u", title="t")
    _change(server, job.id, status="running", progress=40,
            estimatedCompletionAt="2026-01-01T12:10:00.000Z")
    polls: list[datetime] = []
    enough = threading.Event()

    def now() -> datetime:
        polls.append(NOW + timedelta(minutes=len(polls)))
        if len(polls) >= 4:
            enough.set()
        return polls[-1]

    out, thread, result = _watch(recorded, job.id, tty=tty, now=now)
    assert enough.wait(30)
    _change(server, job.id, progress=50)
    out.wait_for(" 50%")
    _change(server, job.id, status="completed", progress=100)
    thread.join(timeout=30)
    assert result == [0]
    text = out.getvalue()
    assert "~10 min left" in text
    forties = len(re.findall(r" 40%  running  ~\d+ min left", text))
    assert forties == 1 if not tty else forties >= 4, text


def test_jobs_get_shows_the_time_left_of_a_running_job(
        server: RecordingServer, recorded: seenn.SeennClient,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`seenn jobs get` has an eta row while the backend has an estimate."""
    job = recorded.jobs.start("video", user_id="u", title="t")
    soon = datetime.now(timezone.utc) + timedelta(hours=2)
    _change(server, job.id, status="running", progress=10,
            estimatedCompletionAt=soon.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
    assert main(["jobs", "get", job.id, "--base-url", server.url, "--api-key", SECRET]) == 0
    assert "eta        ~2 h left\n" in capsys.readouterr().out


def test_errors_are_one_line_without_traceback(backend: RunningServer,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing jobs, missing settings and unreachable backends each give one stderr line."""
    monkeypatch.delenv("SEENN_API_KEY", raising=False)
    monkeypatch.delenv("SEENN_BASE_URL", raising=False)
    assert main(["jobs", "get", "job_missing", *_conn(backend)]) == 1
    assert capsys.readouterr().err == "seenn: [404 NOT_FOUND] job job_missing not found\n"
    assert main(["jobs", "get", "x"]) == 2
    assert "SEENN_BASE_URL" in capsys.readouterr().err
    assert main(["jobs", "get", "x", "--base-url", "http://127.0.0.1:9"]) == 2
    assert "SEENN_API_KEY" in capsys.readouterr().err
    assert main(["jobs", "list", "u", "--limit", "0", *_conn(backend)]) == 1
    assert capsys.readouterr().err.startswith("seenn: [VALIDATION_ERROR] limit:")
    out = subprocess.run([sys.executable, "-m", "seenn", "jobs", "list", "u", "--base-url",
                          "http://127.0.0.1:9", "--api-key", "sk_test_x"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.startswith("seenn: [CONNECTION_ERROR] could not reach")
    assert out.stderr.count("\n") == 1
    assert "sk_test_x" not in out.stderr


def test_environment_supplies_url_and_key(backend: RunningServer, client: seenn.SeennClient,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """SEENN_BASE_URL and SEENN_API_KEY are used when the flags are absent."""
    job = client.jobs.start("v", user_id="u", title="t")
    monkeypatch.setenv("SEENN_BASE_URL", backend.url)
    monkeypatch.setenv("SEENN_API_KEY", backend.api_key)
    assert main(["jobs", "get", job.id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == job.id


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`seenn` alone prints the help, listing the commands."""
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("serve", "jobs", "conformance"):
        assert command in out
