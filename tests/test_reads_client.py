"""The client's batched reads (`jobs.get_many`) and long polls (`jobs.watch`), and the CLI's."""

from __future__ import annotations

import asyncio
import io
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import seenn
import seenn.server
from seenn._cli.jobs import watch as cli_watch
from seenn._client.client import _Watch
from seenn.server import RunningServer
from tests.polling import wait_until
from tests.server import RecordingServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
try:
    from _serve import start_server
finally:
    sys.path.pop(0)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[RunningServer]:
    """A `seenn serve` on a free loopback port with a fresh database."""
    with seenn.server.running(tmp_path / "seenn.db") as srv:
        yield srv


@pytest.fixture
def real(backend: RunningServer) -> Iterator[seenn.SeennClient]:
    """A SeennClient of the real backend."""
    with seenn.SeennClient(backend.api_key, base_url=backend.url, max_retries=0) as c:
        yield c


def test_get_many_reads_in_order_with_missing_ids(real: seenn.SeennClient) -> None:
    """get_many answers the jobs in the order asked, repeats once, and the missing ids."""
    a = real.jobs.start("t", user_id="u", title="A")
    b = real.jobs.start("t", user_id="u", title="B")
    batch = real.jobs.get_many([b.id, "nope", a.id, b.id])
    assert isinstance(batch, seenn.JobBatch)
    assert [job.id for job in batch.jobs] == [b.id, a.id]
    assert batch.missing == ["nope"]
    batch.jobs[0].set_progress(5)  # the jobs are live Job objects
    assert real.jobs.get(b.id).progress == 5


def test_get_many_splits_more_than_a_backend_takes(real: seenn.SeennClient) -> None:
    """150 ids are read in two requests of at most 100 (the server refuses more)."""
    made = [real.jobs.start("t", user_id="u", title=str(i)).id for i in range(3)]
    ids = [f"absent{i}" for i in range(147)] + made
    batch = real.jobs.get_many(ids)
    assert [job.id for job in batch.jobs] == made
    assert len(batch.missing) == 147


def test_get_many_with_a_user_token_misses_other_users_jobs(
        backend: RunningServer, real: seenn.SeennClient) -> None:
    """A user token reads its own user's jobs; another user's job is missing."""
    mine = real.jobs.start("t", user_id="alice", title="A")
    theirs = real.jobs.start("t", user_id="bob", title="B")
    token = real.create_token("alice").token
    with seenn.SeennClient(token, base_url=backend.url) as user:
        batch = user.jobs.get_many([theirs.id, mine.id])
    assert ([job.id for job in batch.jobs], batch.missing) == ([mine.id], [theirs.id])


@pytest.mark.parametrize(("ids", "field"), [
    ("job_1", "job_ids"),
    ([""], "job_ids[0]"),
    (["ok", "a,b"], "job_ids[1]"),
    (["x" * 256], "job_ids[0]"),
    ([1], "job_ids[0]"),
])
def test_get_many_refuses_bad_ids_before_sending(client: seenn.SeennClient,
                                                 server: RecordingServer, ids: object,
                                                 field: str) -> None:
    """A string, an empty, long or comma id: ValidationError naming it, nothing sent."""
    with pytest.raises(seenn.ValidationError) as caught:
        client.jobs.get_many(ids)  # type: ignore[arg-type]
    assert caught.value.details is not None and caught.value.details["field"] == field
    assert server.requests == []


def test_get_many_of_nothing_sends_nothing(client: seenn.SeennClient,
                                           server: RecordingServer) -> None:
    """No ids: an empty batch, without a request."""
    assert client.jobs.get_many([]) == seenn.JobBatch([], [])
    assert server.requests == []


def test_get_many_falls_back_to_single_reads(client: seenn.SeennClient,
                                             server: RecordingServer) -> None:
    """A backend that lists no jobsByIds gets one GET per id; 404s become missing."""
    a = client.jobs.start("t", user_id="u", title="A")
    b = client.jobs.start("t", user_id="u", title="B")
    server.requests.clear()
    batch = client.jobs.get_many([a.id, "nope", b.id])
    assert ([job.id for job in batch.jobs], batch.missing) == ([a.id, b.id], ["nope"])
    paths = [r.path for r in server.requests]
    assert paths == [f"/v1/jobs/{a.id}", "/v1/jobs/nope", f"/v1/jobs/{b.id}"]
    assert [r.path for r in server.health_requests] == ["/v1/healthz"]
    client.jobs.get_many([a.id])  # what the backend offers is asked once
    assert [r.path for r in server.requests][-1] == f"/v1/jobs/{a.id}"
    assert len(server.health_requests) == 1


def test_watch_follows_a_job_through_long_polls(backend: RunningServer,
                                                real: seenn.SeennClient) -> None:
    """watch yields the job now and at each change, waiting in the backend meanwhile."""
    job = real.jobs.start("t", user_id="u", title="T")
    seen: list[tuple[str, int]] = []
    done = threading.Event()

    def follow() -> None:
        with seenn.SeennClient(backend.api_key, base_url=backend.url) as watcher:
            for state in watcher.jobs.watch(job.id, interval=0.5):
                seen.append((state.status, state.progress))
        done.set()

    thread = threading.Thread(target=follow)
    thread.start()
    for progress in (10, 60):
        wait_until(lambda: backend.app.changes.waiting == 1, what="the long poll to wait")
        job.set_progress(progress)
        wait_until(lambda p=progress: ("running", p) in seen, what=f"progress {progress}")
    wait_until(lambda: backend.app.changes.waiting == 1, what="the long poll to wait")
    job.complete()
    assert done.wait(60)
    thread.join()
    # A change the clock makes (etaOverdue once the server's estimate passes) is a change
    # too, so a state may come twice.
    assert list(dict.fromkeys(seen)) == [("pending", 0), ("running", 10), ("running", 60),
                                         ("completed", 100)]


def test_watch_polls_a_backend_without_long_polls(client: seenn.SeennClient,
                                                  server: RecordingServer) -> None:
    """Without the extension, watch reads every interval (no wait=) until the job ends."""
    job = client.jobs.start("t", user_id="u", title="T")
    server.backend.jobs[job.id].update(status="completed", progress=100)
    states = list(client.jobs.watch(job.id, interval=2))
    assert [s.status for s in states] == ["completed"]
    reads = [r for r in server.requests if r.path == f"/v1/jobs/{job.id}"]
    assert reads and all("wait" not in r.query for r in reads)


@pytest.mark.parametrize(("options", "field"), [
    ({"interval": 0}, "interval"), ({"interval": 3601}, "interval"),
    ({"wait": 0}, "wait"), ({"wait": 31}, "wait"), ({"wait": True}, "wait"),
    ({"interval": float("nan")}, "interval"),
])
def test_watch_refuses_bad_options(client: seenn.SeennClient, options: dict[str, float],
                                   field: str) -> None:
    """interval must be in (0, 3600] and wait in (0, 30]."""
    with pytest.raises(seenn.ValidationError) as caught:
        next(client.jobs.watch("job_1", **options))
    assert caught.value.details is not None and caught.value.details["field"] == field


def test_a_long_poll_turned_away_is_not_retried_at_once() -> None:
    """A 304 that came before its time (the backend was full) waits out the interval."""
    state = _Watch("j", interval=1.0, wait=30.0, extensions={"wait": {"maxSeconds": 30}})
    assert state.request() == (None, 0.0)  # the first read has nothing to wait against
    assert state.answered({"id": "j", "progress": 1}, '"a"')
    assert state.request() == ({"wait": "30"}, 30.0)
    assert state.pause(changed=False, held=30.0, elapsed=0.01) == pytest.approx(0.99)
    assert state.pause(changed=False, held=30.0, elapsed=30.0) == 0.0
    assert state.pause(changed=True, held=30.0, elapsed=0.01) == 0.0
    plain = _Watch("j", interval=2.0, wait=30.0, extensions={})
    assert plain.pause(changed=True, held=0.0, elapsed=0.0) == 2.0


def test_async_get_many_and_watch(backend: RunningServer, real: seenn.SeennClient) -> None:
    """The async client reads by ids and follows a job to its end."""
    a = real.jobs.start("t", user_id="u", title="A")
    a.complete()

    async def main() -> tuple[list[str], list[str], list[str]]:
        async with seenn.AsyncSeennClient(backend.api_key, base_url=backend.url) as client:
            batch = await client.jobs.get_many([a.id, "nope"])
            states = [job.status async for job in client.jobs.watch(a.id)]
        return [job.id for job in batch.jobs], batch.missing, states

    assert asyncio.run(main()) == ([a.id], ["nope"], ["completed"])


def test_async_get_many_falls_back_to_single_reads(server: RecordingServer) -> None:
    """The async client reads one job per request from a backend without jobsByIds."""

    async def main() -> tuple[list[str], list[str]]:
        async with seenn.AsyncSeennClient("sk_test_x", base_url=server.url) as client:
            job = await client.jobs.start("t", user_id="u", title="A")
            batch = await client.jobs.get_many(["nope", job.id])
            return [j.id for j in batch.jobs], batch.missing

    ids, missing = asyncio.run(main())
    assert len(ids) == 1 and missing == ["nope"]


def test_cli_watch_waits_in_the_backend(backend: RunningServer,
                                        real: seenn.SeennClient) -> None:
    """`seenn jobs watch` long-polls seenn serve and prints each change as it lands."""
    job = real.jobs.start("t", user_id="u", title="T")
    out = io.StringIO()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(
        cli_watch(real, job.id, interval=1.0, out=out, tty=False)))
    thread.start()
    wait_until(lambda: backend.app.changes.waiting == 1, what="watch to wait in the backend")
    job.set_progress(25, message="Rendering")
    wait_until(lambda: " 25%" in out.getvalue(), what="the new line")
    wait_until(lambda: backend.app.changes.waiting == 1, what="watch to wait again")
    job.complete()
    thread.join(timeout=60)
    assert result == [0]
    lines = out.getvalue().splitlines()
    assert lines[-1] == "completed" and "Rendering" in lines[1]


@pytest.mark.parametrize("value", ["-1", "10001", "x", "1.5", ""])
def test_serve_refuses_max_waiters_out_of_range(tmp_path: Path, value: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """--max-waiters takes 0 to 10,000; anything else is exit 2, no database."""
    from seenn._cli.main import main

    db = tmp_path / "never.db"
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "0", "--db", str(db), "--max-waiters", value])
    assert exited.value.code == 2
    assert "argument --max-waiters" in capsys.readouterr().err
    assert not db.exists()


def test_serve_refuses_as_many_waiters_as_connections(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Waiters hold connections: --max-waiters must stay below --max-connections."""
    from seenn._cli.main import build_parser, main

    db = tmp_path / "never.db"
    assert main(["serve", "--port", "0", "--db", str(db), "--max-connections", "8",
                 "--max-waiters", "8"]) == 2
    assert "--max-waiters must be below --max-connections" in capsys.readouterr().err
    assert not db.exists()
    assert build_parser().parse_args(["serve"]).max_waiters is None  # 64, or a quarter
    assert build_parser().parse_args(["serve", "--max-waiters", "0"]).max_waiters == 0



def test_serve_defaults_to_a_quarter_of_small_connection_caps(tmp_path: Path) -> None:
    """Without --max-waiters: 64, or a quarter of --max-connections if less (0: no wait)."""
    from seenn._cli.main import serve_waiters

    assert [serve_waiters(None, n) for n in (256, 1000, 20, 3)] == [64, 64, 5, 0]
    assert serve_waiters(7, 8) == 7
    served = start_server(tmp_path / "q.db", "--max-connections", "3")
    try:
        assert "wait" not in httpx.get(served.url + "/v1/healthz").json()["extensions"]
    finally:
        served.stop()
