"""The REST client example runs end to end against a real loopback server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.server import RecordingServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_rest_client_example_runs(server: RecordingServer) -> None:
    """examples/rest_client.py completes a job, reads it back and makes a batch."""
    env = {**os.environ, "SEENN_API_KEY": "sk_test_example", "SEENN_BASE_URL": server.url}
    out = subprocess.run([sys.executable, str(EXAMPLES / "rest_client.py")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "finished job_0001: completed (100%)" in out.stdout
    assert "a finished job refuses updates: CONFLICT" in out.stdout
    assert "3 children done" in out.stdout
    stored = server.backend.jobs["job_0001"]
    assert stored["status"] == "completed"
    assert stored["result"]["url"] == "https://cdn.example.com/cat.mp4"
