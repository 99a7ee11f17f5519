"""`seenn serve` or gunicorn in a subprocess for the benchmarks (not the measured process)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_LISTENING = re.compile(r"listening on (http://([\d.]+):(\d+))")
_GUNICORN_LISTENING = re.compile(r"Listening at: (http://([\d.]+):(\d+))")


@dataclass
class Served:
    """A running `seenn serve`: its process, base URL, host, port and the secret key printed."""

    proc: subprocess.Popen[str]
    url: str
    host: str
    port: int
    secret: str

    def stop(self) -> None:
        """Stop it as Ctrl-C would, and wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            self.proc.wait(timeout=60)


def start_server(db: Path | str, *extra: str, timeout: float = 60.0) -> Served:
    """Start `seenn serve --port 0` on ``db`` and wait for its listening line.

    ``db`` is passed as it is: a SQLite file or a database URL. With several
    ``--workers`` the line comes once every worker is ready.

    Raises:
        SystemExit: The server exited or printed no listening line in ``timeout``.
    """
    proc = subprocess.Popen([sys.executable, "-m", "seenn", "serve", "--port", "0", "--db",
                             str(db), *extra], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return _wait_listening(proc, proc.stdout, _LISTENING, timeout, "seenn serve")


def start_gunicorn(db: Path | str, workers: int, threads: int, secret: str, public: str,
                   timeout: float = 60.0) -> Served:
    """Start gunicorn (gthread) serving ``seenn.server.wsgi:app`` on ``db``, on a free port.

    Its workers boot after the listening line; connections wait in the backlog meanwhile.

    Raises:
        SystemExit: gunicorn exited or printed no listening line in ``timeout``.
    """
    import gunicorn

    control = ["--no-control-socket"] if gunicorn.version_info >= (25, 1) else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", *control, "-k", "gthread", "--threads",
         str(threads), "-w", str(workers), "-b", "127.0.0.1:0", "seenn.server.wsgi:app"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "SEENN_SERVER_DB": str(db),
             "SEENN_SERVER_API_KEY": secret, "SEENN_SERVER_PUBLIC_KEY": public})
    served = _wait_listening(proc, proc.stderr, _GUNICORN_LISTENING, timeout, "gunicorn")
    served.secret = secret
    return served


def _wait_listening(proc: subprocess.Popen[str], stream: IO[str] | None,
                    pattern: re.Pattern[str], timeout: float, name: str) -> Served:
    lines: queue.Queue[str | None] = queue.Queue()
    assert stream is not None
    out = stream

    def pump() -> None:
        for line in out:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    secret = ""
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            proc.kill()
            raise SystemExit(f"{name} printed no listening line") from None
        if line is None:
            raise SystemExit(f"{name} exited with {proc.wait()}")
        if "secret key" in line:
            secret = line.split()[-1]
        match = pattern.search(line)
        if match:
            return Served(proc, match.group(1), match.group(2), int(match.group(3)), secret)
