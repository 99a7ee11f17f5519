"""``seenn demo``: a tracked video pipeline, end to end, against an embedded backend.

It starts ``seenn serve`` in this process on a free loopback port with a
temporary SQLite database, runs a small pipeline with ``track()``, stages,
``iterate()`` and a child job through the HTTP exporter, and meanwhile shows
what a phone polling ``GET /jobs/{id}`` with the public key would see. With
``--open`` it also prints the job page's URL (the public key in its fragment) and
opens it in a browser, where there is one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from seenn._client.resources import Job
    from seenn.server import RunningServer

# How long Ctrl-C may take to end the pipeline, then to deliver its last events.
_STOP_SECONDS = 2.0


def _pipeline(started: threading.Event, box: dict[str, object], pace: float,
              fail: bool, stop: threading.Event) -> None:
    import seenn

    def work(seconds: float) -> None:
        # Stands in for real work. Ctrl-C reaches only the main thread, which sets
        # ``stop``: the pipeline then ends as an interrupted one would (INTERRUPTED).
        if stop.wait(seconds * pace):
            raise KeyboardInterrupt

    try:
        with seenn.track("video-generation", user_id="demo-user",
                         title="Generating your video", metadata={"prompt": "A cat playing piano"},
                         stages=["script", "render", "encode", "upload"]) as job:
            box["job_id"] = job.id
            started.set()
            with seenn.stage("script"):
                job.set_progress(job.progress, message="Writing the script")
                work(0.4)
            with seenn.stage("render"):
                job.set_progress(job.progress, message="Rendering frames")
                for _frame in seenn.iterate(range(48), message="Rendering frames"):
                    work(0.03)
            with seenn.stage("encode"):
                job.set_progress(job.progress, message="Encoding")
                with seenn.track("audio-encoding", title="Encoding the soundtrack") as audio:
                    box["child_id"] = audio.id
                    for _chunk in seenn.iterate(range(10), message="Encoding audio"):
                        work(0.04)
                if fail:
                    raise RuntimeError("the encoder ran out of memory")
                work(0.3)
            with seenn.stage("upload"):
                job.set_progress(job.progress, message="Uploading to the CDN")
                work(0.4)
            job.set_result({"type": "video", "url": "https://cdn.example.com/demo/cat.mp4"})
    except RuntimeError as error:
        box["error"] = error
    except KeyboardInterrupt:
        box["interrupted"] = True
    finally:
        started.set()


def _stop(stop: threading.Event, worker: threading.Thread) -> None:
    """After Ctrl-C: end the pipeline and deliver its failure, each within a short deadline."""
    import seenn

    stop.set()
    worker.join(_STOP_SECONDS)
    # Before the embedded backend stops: nothing is left to retry against a closed
    # database, and the exit-time flush has nothing to wait for.
    seenn.shutdown(timeout=_STOP_SECONDS)


def open_in_browser(url: str) -> bool:
    """Open ``url`` in the user's browser, if there is one that will not block; whether it did.

    A browser named in ``$BROWSER`` is used as it is. Without one, Python's choice is used
    unless it is a console browser (lynx, w3m, ``www-browser`` on a machine without a
    display): that would take over this terminal and wait, as on a server or in CI.
    """
    import webbrowser

    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    if type(browser) is webbrowser.GenericBrowser and not os.environ.get("BROWSER"):
        return False
    try:
        return bool(browser.open(url))
    except OSError:
        return False


def _open_page(out: TextIO, backend: RunningServer, job_id: str, phone_key: str) -> str:
    from urllib.parse import quote

    url = f"{backend.url}/jobs/{quote(job_id, safe='')}#key={phone_key}"
    out.write(f"job page: {url}\n")
    out.flush()
    if not open_in_browser(url):
        out.write("(no browser to open here: open the job page's URL yourself)\n")
    return url


def _follow(out: TextIO, backend: RunningServer, started: threading.Event,
            box: dict[str, object], worker: threading.Thread, interval: float,
            tty: bool, open_page: bool = False) -> tuple[int, Job, Job | None]:
    """Show the job as a phone polling it sees it; return the status and the final jobs."""
    import seenn
    from seenn._cli.jobs import watch

    started.wait()
    job_id = str(box["job_id"])
    out.write(f"tracking job {job_id}; what a phone polling GET /jobs/{{id}} sees:\n")
    phone_key = backend.public_key or backend.api_key
    with seenn.SeennClient(phone_key, base_url=backend.url) as phone:
        # The job may not have reached the backend yet: a phone would retry too.
        while True:
            try:
                phone.jobs.get(job_id)
                break
            except seenn.NotFoundError:
                time.sleep(interval / 2)
        if open_page:
            box["page_url"] = _open_page(out, backend, job_id, phone_key)
        status = watch(phone, job_id, interval=interval, out=out, tty=tty)
        worker.join()
        seenn.force_flush(10.0)
        final = phone.jobs.get(job_id)
        child = phone.jobs.get(str(box["child_id"])) if "child_id" in box else None
    return status, final, child


def run(out: TextIO, *, pace: float = 1.0, fail: bool = False, interval: float = 0.1,
        open_page: bool = False) -> int:
    """Run the demo, writing to ``out``; return the exit status (0 when the job completed).

    Ctrl-C fails the job as interrupted, delivers that and stops the embedded backend,
    each within a short deadline, then raises ``KeyboardInterrupt``. With ``open_page``
    the job page's URL is printed and opened in a browser where there is one; when the
    demo runs in a terminal, the backend then keeps serving the page until Enter or
    Ctrl-C.
    """
    import seenn
    import seenn.server
    from seenn.exporters import HTTPExporter

    tty = out.isatty()
    with tempfile.TemporaryDirectory(prefix="seenn-demo-") as tmp, \
            seenn.server.running(Path(tmp) / "demo.db") as backend:
        out.write(f"seenn demo: backend listening on {backend.url} "
                  f"(seenn serve, database in {tmp})\n")
        exporter = HTTPExporter(api_key=backend.api_key, base_url=backend.url,
                                progress_interval=0.1)
        seenn.configure(exporters=[exporter])
        started = threading.Event()
        stop = threading.Event()
        box: dict[str, object] = {}
        began = time.perf_counter()
        worker = threading.Thread(target=_pipeline, args=(started, box, pace, fail, stop),
                                  name="seenn-demo-pipeline", daemon=True)
        worker.start()
        try:
            status, final, child = _follow(out, backend, started, box, worker, interval, tty,
                                           open_page)
        except KeyboardInterrupt:
            _stop(stop, worker)
            raise
        elapsed = time.perf_counter() - began
        stats = exporter.stats
        seenn.configure(exporters=[])
        out.write("\nsummary\n")
        out.write(f"  job        {final.id} ({final.job_type}) {final.status}, "
                  f"{final.progress}%\n")
        if final.result is not None:
            out.write(f"  result     {final.result.url}\n")
        if final.error is not None:
            out.write(f"  error      {final.error.code}: {final.error.message}\n")
        if child is not None:
            out.write(f"  child job  {child.id} ({child.job_type}) {child.status}, "
                      f"child of {child.parent.parent_job_id if child.parent else '-'}\n")
        out.write(f"  delivery   {stats.requests} HTTP calls for {stats.accepted} events "
                  f"({stats.coalesced} progress updates coalesced), {stats.lost} lost\n")
        out.write(f"  time       {elapsed:.1f} s\n")
        if "page_url" in box and sys.stdin is not None and sys.stdin.isatty():
            _keep_serving(out, str(box["page_url"]))
    return status


def _keep_serving(out: TextIO, url: str) -> None:
    """Keep the embedded backend up for the job page until Enter or Ctrl-C (terminals only)."""
    out.write(f"\nthe job page stays live at {url}\npress Enter (or Ctrl-C) to stop the "
              "backend\n")
    out.flush()
    try:
        sys.stdin.readline()
    except KeyboardInterrupt:
        out.write("\n")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the demo's options to ``parser`` (or a new one)."""
    parser = parser or argparse.ArgumentParser(prog="seenn demo")
    parser.add_argument("--pace", type=float, default=1.0,
                        help="multiply the simulated work time (default 1: a few seconds)")
    parser.add_argument("--fail", action="store_true",
                        help="make the encode stage fail, to see a failed job end to end")
    parser.add_argument("--open", action="store_true", dest="open_page",
                        help="print the job page's URL and open it in a browser, where "
                             "there is one (in a terminal, the backend then keeps serving "
                             "until Enter)")
    return parser
