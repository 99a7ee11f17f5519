"""`seenn serve` in a subprocess for the benchmarks (its CPU is not the measured process's)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

_LISTENING = re.compile(r"listening on (http://([\d.]+):(\d+))")


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


def start_server(db: Path, *extra: str, timeout: float = 60.0) -> Served:
    """Start `seenn serve --port 0` on ``db`` and wait for its listening line.

    Raises:
        SystemExit: The server exited or printed no listening line in ``timeout``.
    """
    proc = subprocess.Popen([sys.executable, "-m", "seenn", "serve", "--port", "0", "--db",
                             str(db), *extra], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue[str | None] = queue.Queue()
    assert proc.stdout is not None
    out = proc.stdout

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
            raise SystemExit("seenn serve printed no listening line") from None
        if line is None:
            raise SystemExit(f"seenn serve exited with {proc.wait()}")
        if "secret key" in line:
            secret = line.split()[-1]
        match = _LISTENING.search(line)
        if match:
            return Served(proc, match.group(1), match.group(2), int(match.group(3)), secret)
