"""The OpenTelemetry and propagation examples run and show what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(name: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SEENN_", "OTEL_"))}
    return subprocess.run([sys.executable, str(EXAMPLES / name)], env=env,
                          capture_output=True, text=True, timeout=180)


def test_worker_propagation_example_finishes_jobs_in_another_process() -> None:
    """examples/worker_propagation.py: the web process hands off, the worker process finishes."""
    out = _run("worker_propagation.py")
    assert out.returncode == 0, out.stderr
    web = re.findall(r"^web    \(pid (\d+)\): (job_\w+) handed off, still running$",
                     out.stdout, re.MULTILINE)
    done = re.findall(r"^worker \(pid (\d+)\): (job_\w+) (completed|failed) at (\d+)%$",
                      out.stdout, re.MULTILINE)
    assert [job_id for _, job_id in web] == [job_id for _, job_id, _, _ in done]
    assert [(status, progress) for _, _, status, progress in done[:1]] == [("completed", "100")]
    assert [status for _, _, status, _ in done[1:]] == ["failed"]
    assert {pid for pid, _ in web}.isdisjoint({pid for pid, _, _, _ in done})
    for _, job_id in web:
        # One start (from the web process) and one end (from the worker) per job.
        lines = [line for line in out.stderr.splitlines() if job_id in line]
        assert sum(" started " in line for line in lines) == 1
        assert sum(" completed" in line or " failed" in line for line in lines) == 1
    assert "RENDER_FAILED: GPU memory exceeded at frame 12" in out.stderr


def test_otel_tracing_example_prints_job_spans_under_the_request() -> None:
    """examples/otel_tracing.py: job spans under the request, events, an ERROR span."""
    out = _run("otel_tracing.py")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "POST /videos  [UNSET]"
    assert "  seenn.job video-generation  [UNSET]" in lines
    assert "    seenn.job thumbnail  [UNSET]" in lines
    assert "  seenn.job video-generation  [ERROR (RENDER_FAILED: GPU memory exceeded)]" in lines
    assert "    - seenn.job.stage progress=50, stage.name=encode" in lines
    assert "    - exception exception.type=__main__.RenderError" in lines
    assert sum(line.strip().startswith("- seenn.job.completed") for line in lines) == 2
    assert out.stderr == ""
