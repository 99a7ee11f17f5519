"""The examples do what their docstrings say: how to run them, and where their jobs go."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import seenn
import seenn.server
from seenn.server import RunningServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# Every example and the test that runs it.
RUN_BY = {
    "video_pipeline.py": "tests/test_examples_tracking.py",
    "worker_propagation.py": "tests/test_examples_otel.py",
    "otel_tracing.py": "tests/test_examples_otel.py",
    "rest_client.py": "tests/test_examples_client.py",
    "celery_app/tasks.py": "tests/integrations/test_example_celery.py",
    "celery_app/web.py": "tests/integrations/test_example_celery.py",
}


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[RunningServer]:
    """A real backend on a loopback port."""
    with seenn.server.running(str(tmp_path / "examples.db")) as running:
        yield running


def _run(name: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SEENN_", "OTEL_"))}
    return subprocess.run([sys.executable, str(EXAMPLES / name)], env={**clean, **env},
                          cwd=ROOT, capture_output=True, text=True, timeout=180)


def _jobs(backend: RunningServer, user_id: str) -> dict[str, str]:
    with seenn.SeennClient(backend.api_key, base_url=backend.url) as client:
        return {job.title: job.status for job in client.jobs.iter(user_id)}


def test_every_example_says_how_to_run_it_and_a_test_runs_it() -> None:
    """Each example's docstring gives the command that runs it, and a named test runs it."""
    found = {str(path.relative_to(EXAMPLES)) for path in EXAMPLES.rglob("*.py")
             if path.name != "__init__.py"}
    assert found == set(RUN_BY)
    for name, test in RUN_BY.items():
        doc = ast.get_docstring(ast.parse((EXAMPLES / name).read_text(encoding="utf-8"))) or ""
        assert "Run it" in doc and "::" in doc, f"{name}: no command to run it"
        module = name.removesuffix(".py").replace("/", ".")
        assert Path(name).name in doc or module in doc, f"{name}: the command names another file"
        assert Path(name).name in (ROOT / test).read_text(encoding="utf-8") or \
            module.split(".")[0] in (ROOT / test).read_text(encoding="utf-8")


def test_video_pipeline_sends_its_jobs_to_the_backend_named_in_the_environment(
        backend: RunningServer) -> None:
    """With SEENN_API_KEY and SEENN_BASE_URL, the jobs reach the backend, not the console."""
    out = _run("video_pipeline.py", SEENN_API_KEY=backend.api_key, SEENN_BASE_URL=backend.url)
    assert out.returncode == 0, out.stderr
    assert "[seenn]" not in out.stderr
    assert _jobs(backend, "user_123") == {"Video: a cat surfing": "completed",
                                          "thumbnail": "completed"}
    assert _jobs(backend, "user_456") == {"Video: a paradox": "failed"}


def test_video_pipeline_console_and_http_together(backend: RunningServer) -> None:
    """SEENN_EXPORTER=http,console prints the events and delivers them."""
    out = _run("video_pipeline.py", SEENN_EXPORTER="http,console",
               SEENN_API_KEY=backend.api_key, SEENN_BASE_URL=backend.url)
    assert out.returncode == 0, out.stderr
    assert "[seenn]" in out.stderr
    assert _jobs(backend, "user_123") == {"Video: a cat surfing": "completed",
                                          "thumbnail": "completed"}


def test_worker_propagation_reports_both_processes_to_the_backend(
        backend: RunningServer) -> None:
    """The web process's start and the worker's end reach the backend as one job each."""
    out = _run("worker_propagation.py", SEENN_API_KEY=backend.api_key,
               SEENN_BASE_URL=backend.url)
    assert out.returncode == 0, out.stderr
    assert _jobs(backend, "user_123") == {"Video: a cat surfing": "completed",
                                          "Video: a paradox": "failed"}


def test_otel_example_without_the_sdk_says_what_to_install() -> None:
    """Without opentelemetry-sdk the example exits with one line naming the extra."""
    code = ("import runpy, sys; sys.modules['opentelemetry.sdk'] = None; "
            f"runpy.run_path({str(EXAMPLES / 'otel_tracing.py')!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 1
    assert out.stderr.strip() == ("examples/otel_tracing.py needs the OpenTelemetry SDK: "
                                  'python -m pip install "seenn[otel]" (or opentelemetry-sdk)')
