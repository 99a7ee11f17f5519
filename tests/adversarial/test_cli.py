"""The `seenn` command never prints a traceback, whatever it is given or however it is stopped."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import seenn


def seenn_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real `seenn` command in a subprocess."""
    return subprocess.run([sys.executable, "-m", "seenn", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_serve_refuses_an_out_of_range_port(tmp_path: Path) -> None:
    """--port 99999 is a usage error (exit 2) naming the range, before anything is created."""
    out = seenn_cli("serve", "--port", "99999", "--db", str(tmp_path / "p.db"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "0 to 65535" in out.stderr
    assert not (tmp_path / "p.db").exists()


def test_serve_on_a_busy_port_creates_no_database_and_no_keys(tmp_path: Path) -> None:
    """A port in use fails in one line before the database or a key pair is made."""
    db = tmp_path / "busy.db"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        out = seenn_cli("serve", "--port", str(busy.getsockname()[1]), "--db", str(db))
    assert out.returncode == 1
    assert out.stderr.startswith("seenn: serve: cannot listen on 127.0.0.1:")
    assert out.stderr.count("\n") == 1
    assert not db.exists()
    assert "secret key" not in out.stdout


def test_serve_prints_the_base_url_a_client_takes(tmp_path: Path) -> None:
    """The URL in serve's "listening on" line works as a client's base_url as printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "seenn", "serve", "--port", "0", "--db", str(tmp_path / "u.db")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stdout is not None
        lines: list[str] = []
        while not any("listening on" in line for line in lines):
            line = process.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        secret = next(line.split()[-1] for line in lines if "secret key" in line)
        match = re.search(r"listening on (http://\S+)", lines[-1])
        assert match is not None
        with seenn.SeennClient(secret, base_url=match.group(1)) as client:
            job = client.jobs.start("render", user_id="u", title="t")
            assert client.jobs.get(job.id).id == job.id
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 0


def test_ctrl_c_during_the_demo_stops_it_quietly(tmp_path: Path) -> None:
    """SIGINT while the demo runs exits 130 with one line, no traceback, well within 30 s."""
    process = subprocess.Popen([sys.executable, "-m", "seenn", "demo", "--pace", "5"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    seen: list[str] = []
    while not any(re.search(r"\d+%", line) for line in seen):
        line = process.stdout.readline()
        assert line, "".join(seen)
        seen.append(line)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "Traceback" not in err + out
    assert err == "seenn: interrupted\n"


@pytest.mark.parametrize("args", [
    ["demo", "--pace", "nan"], ["demo", "--pace", "inf"], ["demo", "--pace", "-1"],
    ["jobs", "watch", "job_1", "--interval", "nan", "--base-url", "http://127.0.0.1:1",
     "--api-key", "sk_test_x"],
    ["jobs", "watch", "job_1", "--interval", "1e300", "--base-url", "http://127.0.0.1:1",
     "--api-key", "sk_test_x"],
])
def test_numbers_that_cannot_be_waited_on_are_one_line_errors(args: list[str]) -> None:
    """NaN, infinite or negative --pace and --interval exit 2 with one line, not a traceback."""
    out = seenn_cli(*args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("seenn: ")
    assert out.stderr.count("\n") == 1


@pytest.mark.parametrize(("base_url", "api_key"), [
    ("http://[::1", "sk_test_fine"), ("http://h:abc", "sk_test_fine"),
    ("http://127.0.0.1:1", "sk_test_topsecret\nX-Evil: 1"),
])
def test_bad_connection_options_are_one_line_errors(base_url: str, api_key: str) -> None:
    """A malformed --base-url or --api-key exits 2 with one line that never shows the key."""
    out = seenn_cli("jobs", "get", "job_1", "--base-url", base_url, "--api-key", api_key)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1
    assert "topsecret" not in out.stderr


def test_an_unexpected_error_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A bug in a command is reported in one line and exit status 1, not a traceback."""
    import seenn._cli.jobs
    from seenn._cli import main

    def broken(args: object) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(seenn._cli.jobs, "_cmd_get", broken)
    assert main(["jobs", "get", "job_1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("seenn: internal error: ZeroDivisionError: division by zero")
    assert err.count("\n") == 1
