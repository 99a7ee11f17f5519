"""Real brokers and workers: a Redis server, `seenn serve`, and queue workers in subprocesses."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import seenn
import seenn.server
from seenn.server import RunningServer
from tests.faults import free_port
from tests.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]


def fetch(client: seenn.SeennClient, job_id: str) -> seenn.Job | None:
    """The job as the backend shows it, or ``None`` while its start is on its way."""
    try:
        return client.jobs.get(job_id)
    except seenn.NotFoundError:
        return None


def settled(client: seenn.SeennClient, job_id: str, timeout: float = 60.0) -> seenn.Job:
    """Wait until the backend shows the job finished; return it."""
    return wait_until(lambda: (job := fetch(client, job_id)) is not None and job.is_terminal
                      and job, timeout, f"job {job_id} to end")


def showing(client: seenn.SeennClient, job_id: str, progress: int) -> seenn.Job:
    """Wait until the backend shows the job at ``progress``."""
    return wait_until(lambda: (job := fetch(client, job_id)) is not None
                      and job.progress == progress and job, 60, f"job {job_id} at {progress}%")


def running_pid(signals: Any, task_id: str) -> int:
    """The pid of the process running a holding task, once it runs (the task sets it)."""
    return int(wait_until(lambda: signals.get(f"pid:{task_id}"), 60, "the task to run"))


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis server on a free loopback port (Debian's redis-server), for the session."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is needed (.ci/run installs it)"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None or _redis_ping(port), 30, "redis-server")
        assert proc.poll() is None, "redis-server exited"
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """`seenn serve` in-process on a free loopback port, for one test module."""
    with seenn.server.running(tmp_path_factory.mktemp("serve") / "serve.db") as running:
        yield running


@pytest.fixture(scope="module")
def client(backend: RunningServer) -> Iterator[seenn.SeennClient]:
    """A REST client reading what the backend shows (what a phone would poll)."""
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as reader:
        yield reader


@pytest.fixture(scope="module")
def publisher(backend: RunningServer) -> Iterator[None]:
    """This process, as the web process: the default tracker sends jobs to the backend."""
    tracker = seenn.track.__self__  # type: ignore[attr-defined]
    previous = tracker.processors
    seenn.configure(api_key=backend.api_key, base_url=backend.url)
    try:
        yield
    finally:
        seenn.force_flush(timeout=10)
        seenn.configure(processors=list(previous))


class WorkerProcess:
    """A queue worker in a subprocess, its output read by a thread so waits stay bounded."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], ready: str) -> None:
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(list(argv), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for_line(ready, 90)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_line(self, text: str, timeout: float = 60.0) -> str:
        """Wait until the worker prints a line containing ``text``."""
        deadline = time.monotonic() + timeout
        for line in self.output:
            if text in line:
                return line
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"worker printed no {text!r}:\n{''.join(self.output[-40:])}"
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"worker exited:\n{''.join(self.output[-40:])}"
            if text in line:
                return line

    def stop(self, sig: int = 15, timeout: float = 60.0) -> int:
        """Stop the worker (and its process group) and return its exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
        return self.proc.wait(timeout=timeout)


def worker_env(backend: RunningServer, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a worker process: the backend, the broker, this checkout first."""
    paths = [str(ROOT / "src"), str(ROOT)]
    existing = os.environ.get("PYTHONPATH")
    if existing:
        paths.append(existing)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1",
            "SEENN_TEST_WORKER": "1", "SEENN_API_KEY": backend.api_key,
            "SEENN_BASE_URL": backend.url, "SEENN_TEST_REDIS": redis_url,
            **extra}


PYTHON = sys.executable
