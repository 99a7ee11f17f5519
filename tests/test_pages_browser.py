"""The job page and the operator view in a real headless Chromium against a real server.

Debian's ``chromium`` (``/usr/bin/chromium``, installed by ``.ci/run``) driven by
Playwright. Every test runs ``seenn serve``'s app on the stdlib gateway with its access
log on, behind a recorder of every request target, and ends by checking that no key
ever appeared in a URL the server saw or logged. Screenshots are kept in
``tests/artifacts/`` (ignored by git).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright

import seenn
from seenn.exporters import HTTPExporter, SimpleProcessor
from seenn.server import SeennServerApp, WSGIServer, create_app
from tests.tracking_helpers import no_job_left_behind  # noqa: F401 (autouse fixture)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).parent / "artifacts"
HOSTILE = "<img src=x onerror=alert(1)>"

expect.set_options(timeout=30_000)


class Recorder:
    """A WSGI middleware that keeps the request target (path and query) of every request."""

    def __init__(self, app: SeennServerApp | Mount) -> None:
        self.app = app
        self.max_body_bytes = app.max_body_bytes
        self.targets: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with self._lock:
            self.targets.append(str(environ.get("RAW_URI", "")))
        return self.app(environ, start_response)


class Mount:
    """The app mounted below ``/seenn``, as another WSGI server would mount it."""

    prefix = "/seenn"

    def __init__(self, app: SeennServerApp) -> None:
        self.app = app
        self.max_body_bytes = app.max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = str(environ.get("PATH_INFO", ""))
        if not path.startswith(self.prefix + "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not mounted here"]
        inner = {**environ, "SCRIPT_NAME": self.prefix, "PATH_INFO": path[len(self.prefix):]}
        return self.app(inner, start_response)


@dataclass
class Served:
    """A running backend, its keys, what it saw, and a tracker exporting to it."""

    url: str
    api_key: str
    public_key: str
    recorder: Recorder
    tracker: seenn.Tracker
    exporter: HTTPExporter
    keys: list[str] = field(default_factory=list)

    def flush(self) -> None:
        assert self.exporter.force_flush(timeout=30)

    def client(self) -> seenn.SeennClient:
        return seenn.SeennClient(self.api_key, base_url=self.url)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                              headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 900, "height": 700})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    assert errors == [], errors


@pytest.fixture
def dialogs(page: Page) -> list[str]:
    """Every alert/confirm/prompt the page tried to open (dismissed, recorded)."""
    seen: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        seen.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return seen


@pytest.fixture
def served(request: pytest.FixtureRequest, tmp_path: Path,
           capfd: pytest.CaptureFixture[str]) -> Iterator[Served]:
    """The backend, offering no long poll unless the ``indirect`` param is ``"long-poll"``
    (so the page's plain ETag polling is what most tests see); ``"mounted"`` mounts it
    below a prefix."""
    api_key, public_key = "sk_test_pageoperatorsecret0001", "pk_test_pagepublickey0001"
    kind = getattr(request, "param", None)
    app = create_app(tmp_path / "pages.db", api_key=api_key, public_key=public_key,
                     max_waiters=64 if kind == "long-poll" else 0)
    mount = Mount(app) if kind == "mounted" else None
    recorder = Recorder(mount or app)
    server = WSGIServer(("127.0.0.1", 0), recorder, access_log=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    url = server.url + (Mount.prefix if mount else "")
    exporter = HTTPExporter(api_key=api_key, base_url=url, progress_interval=0,
                            heartbeat_interval=None)
    tracker = seenn.Tracker(processors=[SimpleProcessor(exporter)])
    backend = Served(url, api_key, public_key, recorder, tracker, exporter,
                     keys=[api_key, public_key])
    try:
        yield backend
    finally:
        tracker.shutdown(timeout=10)
        server.shutdown()
        server.server_close()
        thread.join()
        app.close()
    log = capfd.readouterr().err
    sys.stderr.write(log)
    # The access log and every request target: no key, no token, ever.
    assert '"GET /' in log
    for key in backend.keys:
        assert key not in log
        assert all(key not in target for target in recorder.targets), key


def shot(page: Page, name: str) -> Path:
    """Keep a screenshot of the page as a test artifact."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    return path


def test_job_page_follows_a_tracked_job_from_0_to_100(served: Served, page: Page) -> None:
    """The page shows a tracked job advancing live, its stage and message, then its result."""
    bar = page.locator("#bar")
    with served.tracker.track("video-generation", user_id="user_1",
                              title="Generating your video",
                              stages=["script", "render", "upload"]) as job:
        job.set_progress(0, message="Queued for a GPU")
        served.flush()
        page.goto(f"{served.url}/jobs/{job.id}#key={served.public_key}")
        expect(page.locator("#title")).to_have_text("Generating your video")
        expect(bar).to_have_attribute("aria-valuenow", "0")
        expect(bar).to_have_attribute("role", "progressbar")
        expect(page.locator("#status")).to_have_text("running")
        with job.stage("render"):
            job.set_progress(40, message="Rendering frames")
            served.flush()
            expect(bar).to_have_attribute("aria-valuenow", "40")
            expect(page.locator("#percent")).to_have_text("40%")
            expect(page.locator("#stage")).to_have_text("2 of 3: render")
            expect(page.locator("#message")).to_have_text("Rendering frames")
            shot(page, "job-page-running")
            job.set_progress(75, message="Almost there")
            served.flush()
            expect(bar).to_have_attribute("aria-valuenow", "75")
        job.set_result({"type": "video", "url": "https://cdn.example.com/v/cat.mp4"})
    served.flush()
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#status")).to_have_text("completed")
    link = page.locator("#result-link")
    expect(link).to_have_attribute("href", "https://cdn.example.com/v/cat.mp4")
    expect(link).to_have_text("https://cdn.example.com/v/cat.mp4")
    expect(page.locator("#error")).to_be_hidden()
    expect(page).to_have_title("100% · Generating your video · seenn")
    shot(page, "job-page-completed")
    # This server offers no long poll: the page polled with If-None-Match, no ?wait=.
    assert not any("wait=" in target for target in served.recorder.targets)


@pytest.mark.parametrize("served", ["long-poll"], indirect=True)
def test_job_page_uses_the_long_poll_when_the_server_offers_it(served: Served,
                                                                page: Page) -> None:
    """With "wait" in /v1/healthz the page asks GET /v1/jobs/{id}?wait=25 with its ETag."""
    with served.tracker.track("render", user_id="u", title="Long polled") as job:
        job.set_progress(10)
        served.flush()
        page.goto(f"{served.url}/jobs/{job.id}#key={served.public_key}")
        expect(page.locator("#bar")).to_have_attribute("aria-valuenow", "10")
        job.set_progress(55, message="halfway")
        served.flush()
        expect(page.locator("#bar")).to_have_attribute("aria-valuenow", "55")
    served.flush()
    expect(page.locator("#bar")).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#status")).to_have_text("completed")
    assert f"/v1/jobs/{job.id}?wait=25" in served.recorder.targets


def test_job_page_shows_the_time_left_once_there_is_an_eta(served: Served, page: Page) -> None:
    """A queued job shows its place; running with an estimated completion, the time left."""
    with served.client() as client:
        job = client.jobs.start("render", user_id="u", title="Rendering",
                                queue={"position": 5, "total": 20, "queueName": "gpu"})
        page.goto(f"{served.url}/jobs/{job.id}#key={served.public_key}")
        expect(page.locator("#status")).to_have_text("queued")
        expect(page.locator("#queue")).to_have_text("position 5 of 20 in gpu")
        job.set_progress(10)
        expect(page.locator("#bar")).to_have_attribute("aria-valuenow", "10")
        expect(page.locator("#queue-row")).to_be_hidden()
        expect(page.locator("#eta")).to_have_text("")
        soon = datetime.now(timezone.utc) + timedelta(minutes=10, seconds=20)
        job.set_progress(20, estimated_completion_at=soon)
        expect(page.locator("#eta")).to_have_text("· about 10 min left")
        job.complete()
    expect(page.locator("#status")).to_have_text("completed")
    expect(page.locator("#eta")).to_have_text("")


class RenderError(Exception):
    code = "RENDER_FAILED"


def test_job_page_shows_a_failures_code_and_message(served: Served, page: Page) -> None:
    """A failed job shows its error code and message, and no result."""
    def render() -> None:
        with served.tracker.track("video-generation", user_id="user_1",
                                  title="Generating your video") as job:
            job.set_progress(30)
            box.append(job.id)
            raise RenderError("GPU memory exceeded")

    box: list[str] = []
    with pytest.raises(RenderError):
        render()
    served.flush()
    page.goto(f"{served.url}/jobs/{box[0]}#key={served.public_key}")
    expect(page.locator("#status")).to_have_text("failed")
    expect(page.locator("#error-code")).to_have_text("RENDER_FAILED")
    expect(page.locator("#error-message")).to_have_text("GPU memory exceeded")
    expect(page.locator("#error")).to_have_attribute("role", "alert")
    expect(page.locator("#bar")).to_have_attribute("aria-valuenow", "30")
    expect(page.locator("#result")).to_be_hidden()
    shot(page, "job-page-failed")


def test_hostile_fields_render_as_text(served: Served, page: Page, dialogs: list[str]) -> None:
    """Titles, messages, errors and result URLs that look like HTML or script stay text."""
    with served.client() as client:
        job = client.jobs.start(HOSTILE, user_id=HOSTILE, title=HOSTILE, total_children=1)
        child = client.jobs.start("child", user_id=HOSTILE, title="<b>child</b><script>"
                                  "alert(2)</script>", parent_job_id=job.id, child_index=0)
        child.set_progress(50, message=HOSTILE)
        job.fail(error={"code": "<svg onload=alert(3)>", "message": HOSTILE})
        done = client.jobs.start("t", user_id="u", title="done")
        done.complete(result={"type": "video", "url": "javascript:alert(4)"})
    page.goto(f"{served.url}/jobs/{job.id}#key={served.public_key}")
    expect(page.locator("#title")).to_have_text(HOSTILE)
    expect(page.locator("#error-code")).to_have_text("<svg onload=alert(3)>")
    expect(page.locator("#error-message")).to_have_text(HOSTILE)
    expect(page.locator("#child-list li")).to_have_count(1)
    expect(page.locator("#child-list .name")).to_have_text("<b>child</b><script>alert(2)</script>")
    assert page.locator("main img, main svg, main b, main script").count() == 0
    page.goto(f"{served.url}/jobs/{done.id}#key={served.public_key}")
    expect(page.locator("#status")).to_have_text("completed")
    # Not a link: only http(s) URLs are.
    expect(page.locator("#result-link")).to_be_hidden()
    expect(page.locator("#result-text")).to_have_text("javascript:alert(4)")
    assert page.locator("a[href^='javascript']").count() == 0
    assert dialogs == []
    shot(page, "job-page-hostile")


def test_children_have_their_own_bars(served: Served, page: Page) -> None:
    """A parent's page lists its children, each with a labelled progress bar, live."""
    with served.tracker.track("batch", user_id="user_1", title="Exporting the album") as job:
        with served.tracker.track("photo", title="Photo 1"):
            pass
        with served.tracker.track("photo", title="Photo 2") as second:
            second.set_progress(30)
            served.flush()
            page.goto(f"{served.url}/jobs/{job.id}#key={served.public_key}")
            items = page.locator("#child-list li")
            expect(items).to_have_count(2)
            expect(items.nth(0).locator(".name")).to_have_text("Photo 1")
            expect(items.nth(0).get_by_role("progressbar")).to_have_attribute(
                "aria-valuenow", "100")
            expect(items.nth(1).get_by_role("progressbar", name="Photo 2")).to_have_attribute(
                "aria-valuenow", "30")
            second.set_progress(80)
            served.flush()
            expect(items.nth(1).get_by_role("progressbar")).to_have_attribute(
                "aria-valuenow", "80")
    served.flush()
    expect(page.locator("#status")).to_have_text("completed")
    expect(page.locator("#child-list li").nth(1).get_by_role("progressbar")).to_have_attribute(
        "aria-valuenow", "100")
    shot(page, "job-page-children")


def test_a_user_token_in_the_fragment_reads_that_users_jobs_only(served: Served,
                                                                  page: Page) -> None:
    """With #key=ut_... the page shows the user's job; another user's job is not found."""
    with served.client() as client:
        mine = client.jobs.start("t", user_id="ann", title="Ann's job")
        mine.set_progress(20)
        theirs = client.jobs.start("t", user_id="bob", title="Bob's job")
        token = client.create_token("ann").token
    served.keys.append(token)
    page.goto(f"{served.url}/jobs/{mine.id}#key={token}")
    expect(page.locator("#title")).to_have_text("Ann's job")
    expect(page.locator("#bar")).to_have_attribute("aria-valuenow", "20")
    page.goto(f"{served.url}/jobs/{theirs.id}#key={token}")
    expect(page.locator("#notice")).to_have_text("No such job (it may have expired).")
    expect(page.locator("#card")).to_be_hidden()


def test_a_link_without_a_key_or_with_a_wrong_one_says_so(served: Served, page: Page) -> None:
    """No key in the fragment, or an unknown one, shows a notice instead of a job."""
    with served.client() as client:
        job = client.jobs.start("t", user_id="ann", title="x")
    page.goto(f"{served.url}/jobs/{job.id}")
    expect(page.locator("#notice")).to_contain_text("This link has no key")
    page.goto(f"{served.url}/jobs/{job.id}#key=pk_test_unknown")
    expect(page.locator("#notice")).to_contain_text("not valid")


def operator_jobs(client: seenn.SeennClient) -> dict[str, Any]:
    """Jobs of four users: failed (the oldest), running, completed, and a hostile title."""
    failed = client.jobs.start("export", user_id="bob", title="Bob's export")
    failed.fail(error={"code": "DISK_FULL", "message": "no space left"})
    running = client.jobs.start("video", user_id="ann", title="Ann's video")
    running.set_progress(35)
    done = client.jobs.start("video", user_id="cy", title="Cy's video")
    done.complete()
    hostile = client.jobs.start("video", user_id="dee", title=HOSTILE)
    return {"failed": failed, "running": running, "done": done, "hostile": hostile}


def log_in(page: Page, served: Served, key: str) -> None:
    page.goto(served.url + "/")
    page.get_by_label("Secret key").fill(key)
    page.get_by_role("button", name="Show jobs").click()


def test_operator_view_lists_every_users_jobs_live_failures_first(
        served: Served, page: Page, dialogs: list[str]) -> None:
    """After the secret key, recent jobs of all users show live, failed first, hostile as text."""
    client = served.client()
    jobs = operator_jobs(client)
    log_in(page, served, served.api_key)
    rows = page.locator("#rows tr")
    expect(rows).to_have_count(4)
    expect(rows.nth(0).locator(".title")).to_have_text("Bob's export")
    expect(rows.nth(0).locator(".status")).to_have_text("failed")
    # The others newest first.
    expect(rows.nth(1).locator(".title")).to_have_text(HOSTILE)
    expect(rows.nth(2).locator(".title")).to_have_text("Cy's video")
    expect(rows.nth(3).get_by_role("progressbar", name="Ann's video")).to_have_attribute(
        "aria-valuenow", "35")
    jobs["running"].set_progress(60)
    client.close()
    expect(rows.nth(3).get_by_role("progressbar")).to_have_attribute("aria-valuenow", "60")
    assert dialogs == []
    assert page.locator("main img").count() == 0
    # The key is in this tab's session storage only: no cookie, no local storage.
    assert page.evaluate("sessionStorage.getItem('seenn.secretKey')") == served.api_key
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    shot(page, "operator-view")
    page.reload()
    expect(rows).to_have_count(4)
    other = page.context.browser.new_context()  # type: ignore[union-attr]
    try:
        fresh = other.new_page()
        fresh.goto(served.url + "/")
        expect(fresh.get_by_label("Secret key")).to_be_visible()
    finally:
        other.close()


def test_operator_view_filters_and_clicks_through(served: Served, page: Page) -> None:
    """Filters by user, job type and status narrow the list; a click opens the job's page."""
    with served.client() as client:
        operator_jobs(client)
    log_in(page, served, served.api_key)
    rows = page.locator("#rows tr")
    expect(rows).to_have_count(4)
    page.get_by_label("User").fill("ann")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.nth(0).locator(".title")).to_have_text("Ann's video")
    page.get_by_label("User").fill("")
    page.get_by_label("Job type").fill("video")
    page.get_by_label("Status").select_option("completed")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.nth(0).locator(".title")).to_have_text("Cy's video")
    page.get_by_label("Job type").fill("")
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    rows.nth(0).locator(".title").click()
    # The job page reads the key from the tab's session storage: none in the URL.
    expect(page.locator("#title")).to_have_text("Bob's export")
    expect(page.locator("#error-code")).to_have_text("DISK_FULL")
    assert "#" not in page.url and served.api_key not in page.url


def test_operator_view_refuses_a_public_or_unknown_key(served: Served, page: Page) -> None:
    """A public key or an unknown one is refused with a message; nothing is stored."""
    log_in(page, served, served.public_key)
    expect(page.locator("#login-error")).to_contain_text("needs the app's secret key")
    log_in(page, served, "sk_test_not_a_key_of_this_app")
    expect(page.locator("#login-error")).to_contain_text("not valid")
    assert page.evaluate("sessionStorage.length") == 0
    expect(page.locator("#view")).to_be_hidden()


def test_operator_view_shows_more_with_the_cursor(served: Served, page: Page) -> None:
    """Past one page (50 jobs) a "Show more" button follows nextCursor; then it hides."""
    with served.client() as client:
        for number in range(52):
            client.jobs.start("t", user_id=f"u{number % 4}", title=f"Job {number}")
    log_in(page, served, served.api_key)
    rows = page.locator("#rows tr")
    expect(rows).to_have_count(50)
    expect(rows.nth(0).locator(".title")).to_have_text("Job 51")
    more = page.get_by_role("button", name="Show more")
    expect(more).to_be_visible()
    more.click()
    expect(rows).to_have_count(52)
    expect(rows.nth(51).locator(".title")).to_have_text("Job 0")
    expect(more).to_be_hidden()


def test_job_page_rides_out_a_server_restart(tmp_path: Path, page: Page) -> None:
    """While the server is down the page says so; once it is back it follows the job again."""
    api_key, public_key = "sk_test_pagerestartsecret0001", "pk_test_pagerestartpublic0001"
    app = create_app(tmp_path / "restart.db", api_key=api_key, public_key=public_key)

    def serve(port: int) -> tuple[WSGIServer, threading.Thread]:
        server = WSGIServer(("127.0.0.1", port), app)
        thread = threading.Thread(target=server.serve_forever,
                                  kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        return server, thread

    def stop(server: WSGIServer, thread: threading.Thread) -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    server, thread = serve(0)
    port = server.server_address[1]
    try:
        with seenn.SeennClient(api_key, base_url=server.url) as client:
            job = client.jobs.start("render", user_id="u", title="Survives")
            job.set_progress(20)
            page.goto(f"{server.url}/jobs/{job.id}#key={public_key}")
            expect(page.locator("#bar")).to_have_attribute("aria-valuenow", "20")
            stop(server, thread)
            expect(page.locator("#notice")).to_have_text(
                "The server cannot be reached; trying again…")
            server, thread = serve(port)
            job.set_progress(70)
            expect(page.locator("#bar")).to_have_attribute("aria-valuenow", "70")
            expect(page.locator("#notice")).to_be_hidden()
    finally:
        stop(server, thread)
        app.close()


@pytest.mark.parametrize("served", ["mounted"], indirect=True)
def test_pages_work_below_a_mount_prefix(served: Served, page: Page) -> None:
    """Mounted at /seenn by another WSGI server, both pages find their files and the API."""
    with served.client() as client:
        job = client.jobs.start("render", user_id="u", title="Mounted")
        job.set_progress(45)
    page.goto(f"{served.url}/jobs/{job.id}#key={served.public_key}")
    expect(page.locator("#bar")).to_have_attribute("aria-valuenow", "45")
    log_in(page, served, served.api_key)
    expect(page.locator("#rows tr .title")).to_have_text("Mounted")
    page.locator("#rows tr .title").click()
    expect(page.locator("#title")).to_have_text("Mounted")
    assert page.url.startswith(f"{served.url}/jobs/")
    assert all(target.startswith("/seenn/") for target in served.recorder.targets)
