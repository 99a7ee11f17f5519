"""`seenn demo`: the README's main job runs end to end against its embedded backend."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "seenn", "demo", *args], capture_output=True,
                          text=True, timeout=300)


def test_demo_completes_a_tracked_pipeline() -> None:
    """The demo's job is seen by the poller live and ends completed, with its child, exit 0."""
    out = demo("--pace", "0.2")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(r"backend listening on http://127\.0\.0\.1:\d+", text)
    assert "what a phone polling GET /jobs/{id} sees" in text
    bars = re.findall(r"^\[[#.]{30}\]\s+(\d+)%", text, re.M)
    assert len(bars) >= 2
    assert [int(b) for b in bars] == sorted(int(b) for b in bars)
    assert "completed: https://cdn.example.com/demo/cat.mp4" in text
    assert re.search(r"job\s+job_\w+ \(video-generation\) completed, 100%", text)
    assert re.search(r"child job\s+job_\w+ \(audio-encoding\) completed, child of job_", text)
    assert re.search(r"delivery\s+\d+ HTTP calls for \d+ events .*, 0 lost", text)
    assert "Traceback" not in out.stderr


def test_demo_can_show_a_failure() -> None:
    """With --fail the job fails at its encode stage and the demo exits 1."""
    out = demo("--pace", "0", "--fail")
    assert out.returncode == 1, out.stderr
    assert "failed: RuntimeError: the encoder ran out of memory" in out.stdout
    assert "encode (3/4)" in out.stdout
    assert re.search(r"job\s+job_\w+ \(video-generation\) failed, 50%", out.stdout)


def test_demo_help_explains_the_options() -> None:
    """seenn demo --help names the options."""
    out = demo("--help")
    assert out.returncode == 0
    assert "--pace" in out.stdout
    assert "--fail" in out.stdout
    assert "--open" in out.stdout


def test_demo_shows_the_time_left_the_backend_estimates() -> None:
    """Once a few percent are done, the phone's lines end with the backend's time left."""
    out = demo("--pace", "0.5")
    assert out.returncode == 0, out.stderr
    running = re.findall(r"^\[[#.]{30}\]\s+(\d+)%  running  .*$", out.stdout, re.M)
    assert running, out.stdout
    assert re.search(r"%  running  .*  (~\d+ s left|taking longer than usual)$", out.stdout,
                     re.M), out.stdout
    assert not re.search(r"completed  .*left", out.stdout)


FAKE_BROWSER = '''
import os, sys, httpx
url = sys.argv[1]
page, _, fragment = url.partition("#")
html = httpx.get(page, headers={"Accept": "text/html"})
key = fragment.removeprefix("key=")
base, _, job_id = page.rpartition("/jobs/")
job = httpx.get(f"{base}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
with open(os.environ["FAKE_BROWSER_LOG"], "w") as log:
    log.write(f"{url}\\n{html.status_code} {html.headers['content-type']}\\n{job.status_code}\\n")
'''


def test_demo_open_prints_the_job_page_and_opens_it(tmp_path: Path) -> None:
    """--open prints the page URL with the public key in its fragment and opens it; it serves."""
    fake = tmp_path / "fake_browser.py"
    fake.write_text(FAKE_BROWSER)
    log = tmp_path / "opened.txt"
    env = {**os.environ, "BROWSER": f"{sys.executable} {fake} %s",
           "FAKE_BROWSER_LOG": str(log)}
    out = subprocess.run([sys.executable, "-m", "seenn", "demo", "--pace", "0", "--open"],
                         capture_output=True, text=True, timeout=300, env=env,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    found = re.search(r"^job page: (http://127\.0\.0\.1:\d+/jobs/job_\w+#key=pk_test_\w+)$",
                      out.stdout, re.M)
    assert found, out.stdout
    opened, page, job = log.read_text().splitlines()
    assert opened == found.group(1)
    assert page == "200 text/html; charset=utf-8"
    assert job == "200"
    assert "no browser" not in out.stdout
    # Not a terminal: the demo ends rather than waiting for Enter.
    assert "press Enter" not in out.stdout


def test_demo_open_without_a_browser_only_prints_the_url(tmp_path: Path) -> None:
    """With no browser to be found (no display, nothing on PATH) --open prints the URL and ends."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY")}
    env["PATH"] = str(tmp_path)  # no www-browser, lynx or xdg-open to find
    out = subprocess.run([sys.executable, "-m", "seenn", "demo", "--pace", "0", "--open"],
                         capture_output=True, text=True, timeout=300, env=env,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^job page: http://127\.0\.0\.1:\d+/jobs/job_\w+#key=pk_test_\w+$",
                     out.stdout, re.M), out.stdout
    assert "(no browser to open here: open the job page's URL yourself)" in out.stdout


def test_demo_open_in_a_terminal_keeps_serving_the_page_until_enter(tmp_path: Path) -> None:
    """With a terminal on stdin, --open keeps the backend up after the summary until Enter."""
    import pty
    import selectors

    import httpx

    env = {name: value for name, value in os.environ.items()
           if name not in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY")}
    env["PATH"] = str(tmp_path)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "seenn", "demo", "--pace", "0", "--open"],
                            stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    os.close(terminal)
    try:
        assert proc.stdout is not None
        text = ""
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while "press Enter" not in text:
                assert selector.select(timeout=120), text
                chunk = os.read(proc.stdout.fileno(), 65536).decode()
                assert chunk, text
                text += chunk
        found = re.search(r"^job page: (\S+)$", text, re.M)
        assert found, text
        page = httpx.get(found.group(1).partition("#")[0], headers={"Accept": "text/html"})
        assert page.status_code == 200
        os.write(controller, b"\n")
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
