"""The instrumentation example runs and reports its jobs on the console."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_video_pipeline_example_runs() -> None:
    """examples/video_pipeline.py prints the life of a successful, a child and a failed job."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEENN_")}
    out = subprocess.run([sys.executable, str(EXAMPLES / "video_pipeline.py")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "video ready: https://cdn.example.com/user_123/a-cat-surfing.mp4" in out.stdout
    assert "video failed: GPU memory exceeded at frame 24" in out.stdout
    lines = out.stderr.splitlines()
    assert any("video-generation" in line and "started 'Video: a cat surfing' for user_123"
               in line for line in lines)
    # A job's first progress event is never held back: the first stage always shows.
    assert any(line.endswith("  0% queued (1/4)") for line in lines)
    assert any(line.startswith("[seenn]   thumbnail ") and "(child 0 of job_" in line
               for line in lines)
    assert any("completed in" in line and "a-cat-surfing.mp4" in line for line in lines)
    assert any("failed in" in line and "RENDER_FAILED: GPU memory exceeded" in line
               for line in lines)
