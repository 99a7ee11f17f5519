"""Backends of several processes for tests: `seenn serve --workers N` and gunicorn (gthread).

Each is started in a subprocess on a free loopback port; :class:`Served` knows its
URL, keys, and worker processes. Which worker serves a connection is read from
``/proc`` (Linux): the server side of the connection is a socket in that worker's
file descriptor table.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.polling import wait_until

SECRET = "sk_test_procs-secret"
PUBLIC = "pk_test_procs-public"


@dataclass
class Served:
    """A backend in a subprocess: its main process, URL, keys and output."""

    proc: subprocess.Popen[str]
    url: str = ""
    secret: str = SECRET
    public: str = PUBLIC
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.url.rsplit(":", 1)[1])

    def pump(self, stream: object) -> None:
        """Read ``stream`` line by line into :attr:`lines` on a thread."""

        def run() -> None:
            for line in stream:  # type: ignore[attr-defined]
                self.lines.put(line)
            self.lines.put(None)

        threading.Thread(target=run, daemon=True).start()

    def line(self, pattern: str, timeout: float = 60.0) -> str:
        """The next output line matching ``pattern``."""
        while True:
            line = self.lines.get(timeout=timeout)
            assert line is not None, f"the server ended; it said: {''.join(self.seen)}"
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def workers(self) -> set[int]:
        """The pids of the main process's children."""
        return children(self.proc.pid)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` to the main process and wait for it to exit; its status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        """Kill the main process, then its workers (cleanup after a failed test).

        The main process goes first: alive, it would replace a killed worker.
        """
        workers = self.workers()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        for pid in workers | self.workers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def children(parent: int) -> set[int]:
    """The pids of the live (not zombie) children of a process."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def serving_pid(conn: socket.socket, pids: set[int]) -> int | None:
    """Which of ``pids`` holds the server side of a connected (and accepted) socket."""
    client_port = conn.getsockname()[1]
    server_port = conn.getpeername()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if (int(local.rsplit(":", 1)[1], 16) == server_port
                and int(remote.rsplit(":", 1)[1], 16) == client_port):
            inode = fields[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


def start_serve(db: Path | str, workers: int = 3, *args: str,
                keys: bool = True) -> Served:
    """`seenn serve --workers N` on a free port, once its listening line is printed."""
    key_args = ["--api-key", SECRET, "--public-key", PUBLIC] if keys else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "seenn", "serve", "--port", "0", "--db", str(db),
         "--workers", str(workers), *key_args, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return _ready(proc, proc.stdout, "listening", r"listening on (http://\S+) ", workers)


def gunicorn_command(db: Path | str, workers: int = 3, *args: str,
                     env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of gunicorn (gthread) serving ``seenn.server.wsgi:app``."""
    import gunicorn

    # gunicorn 25.1 added a control socket, by default one path per user: tests must
    # not share it.
    control = ["--no-control-socket"] if gunicorn.version_info >= (25, 1) else []
    settings = {"SEENN_SERVER_DB": str(db), "SEENN_SERVER_API_KEY": SECRET,
                "SEENN_SERVER_PUBLIC_KEY": PUBLIC, **(env or {})}
    command = [sys.executable, "-m", "gunicorn", *control, "-k", "gthread", "--threads", "4",
               "-w", str(workers), "-b", "127.0.0.1:0", "--graceful-timeout", "10",
               # Connections held by a test wait for their next request longer than 2 s.
               "--keep-alive", "120", *args,
               "seenn.server.wsgi:app"]
    return command, {**os.environ, "PYTHONUNBUFFERED": "1", **settings}


def start_gunicorn(db: Path | str, workers: int = 3, *args: str,
                   env: dict[str, str] | None = None) -> Served:
    """gunicorn with gthread workers serving ``seenn.server.wsgi:app`` on a free port."""
    command, environ = gunicorn_command(db, workers, *args, env=env)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=environ)
    return _ready(proc, proc.stderr, "Listening at", r"Listening at: (http://\S+) ", workers)


def _ready(proc: subprocess.Popen[str], output: Any, marker: str, pattern: str,
           workers: int) -> Served:
    """Read ``output`` until the line holding ``marker`` gives the URL, then wait until
    every worker process is up; a server that fails on the way is killed."""
    served = Served(proc)
    served.pump(output)
    try:
        match = re.search(pattern, served.line(marker))
        assert match is not None
        served.url = match.group(1)
        wait_until(lambda: len(served.workers()) == workers, what="the workers")
    except BaseException:
        served.kill()
        raise
    return served
