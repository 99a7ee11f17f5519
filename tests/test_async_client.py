"""The asyncio REST client behaves like the blocking one."""

from __future__ import annotations

import asyncio

import pytest

import seenn
from seenn import AsyncSeennClient
from tests.conftest import SECRET, FakeClock
from tests.server import RecordingServer


async def test_async_job_lifecycle(aclient: AsyncSeennClient, server: RecordingServer) -> None:
    """start, set_progress, complete and refresh are awaited and update the AsyncJob."""
    job = await aclient.jobs.start("video", user_id="u", title="T", metadata={"p": 1})
    assert isinstance(job, seenn.AsyncJob)
    assert await job.set_progress(33.3, message="Working") is job
    assert (job.status, job.progress) == ("running", 33)
    await job.complete(result={"type": "video", "url": "https://cdn/v.mp4"})
    assert job.status == "completed" and job.progress == 100
    assert (await job.refresh()).result == seenn.JobResult("video", "https://cdn/v.mp4")
    assert [r.path for r in server.requests] == [
        "/v1/jobs", f"/v1/jobs/{job.id}/progress", f"/v1/jobs/{job.id}/complete",
        f"/v1/jobs/{job.id}"]
    assert server.requests[0].headers["Authorization"] == f"Bearer {SECRET}"


async def test_async_fail_sends_error(aclient: AsyncSeennClient, server: RecordingServer) -> None:
    """fail() posts the error and retryable flag."""
    job = await aclient.jobs.start("video", user_id="u", title="T")
    await job.fail(error=seenn.JobError("GPU", "out of memory"), retryable=False)
    assert server.requests[-1].json == {"error": {"code": "GPU", "message": "out of memory"},
                                        "retryable": False}
    assert job.status == "failed"


async def test_async_retries_keep_one_idempotency_key(aclient: AsyncSeennClient,
                                                      server: RecordingServer,
                                                      clock: FakeClock) -> None:
    """The async client retries a POST with the same Idempotency-Key and honours Retry-After."""
    server.reply(429, {"error": {"code": "RATE_LIMITED", "message": "x"}},
                 headers={"Retry-After": "2"})
    server.reply(drop=True)
    await aclient.jobs.start("video", user_id="u", title="T")
    assert len({r.headers["Idempotency-Key"] for r in server.requests}) == 1
    assert len(server.requests) == 3
    assert clock.sleeps[0] == 2.0 and 0 <= clock.sleeps[1] <= 1.0


@pytest.mark.parametrize(("status", "error_type"), [
    (400, seenn.ValidationError), (401, seenn.AuthenticationError),
    (404, seenn.NotFoundError), (409, seenn.ConflictError),
])
async def test_async_error_mapping(aclient: AsyncSeennClient, server: RecordingServer,
                                   status: int, error_type: type[seenn.SeennError]) -> None:
    """Error statuses map to the same exceptions as in the blocking client, without retries."""
    server.reply(status, {"error": {"code": "E", "message": "m"}})
    with pytest.raises(error_type) as caught:
        await aclient.jobs.get("job_1")
    assert caught.value.status_code == status and len(server.requests) == 1


async def test_async_gives_up_after_retries(aclient: AsyncSeennClient,
                                            server: RecordingServer) -> None:
    """Persistent 5xx answers raise ServerError after 1 + max_retries attempts."""
    server.reply(500, {"error": {"code": "BOOM", "message": "m"}}, times=4)
    with pytest.raises(seenn.ServerError):
        await aclient.jobs.get("job_1")
    assert len(server.requests) == 4


async def test_async_timeout(server: RecordingServer) -> None:
    """A slow answer raises APITimeoutError."""
    import threading

    release = threading.Event()
    server.reply(200, {"id": "x"}, hold=release)
    async with AsyncSeennClient(SECRET, base_url=server.url, timeout=0.2,
                                max_retries=0) as client:
        with pytest.raises(seenn.APITimeoutError):
            await client.jobs.get("x")
    release.set()


async def test_async_iter_and_list(aclient: AsyncSeennClient, server: RecordingServer) -> None:
    """list() returns a JobPage and iter() walks every page with async for."""
    ids = [(await aclient.jobs.start("v", user_id="u7", title=f"T{i}")).id for i in range(3)]
    page = await aclient.jobs.list("u7", limit=2)
    assert len(page.jobs) == 2 and page.next_cursor == "2"
    assert [job.id async for job in aclient.jobs.iter("u7", page_size=2)] == ids[::-1]


async def test_async_batch_creates_children_concurrently(aclient: AsyncSeennClient,
                                                         server: RecordingServer) -> None:
    """create_batch makes the parent, every child in index order, and refreshes the parent."""
    batch = await aclient.jobs.create_batch("thumbs", user_id="u", parent_title="P",
                                            child_titles=[f"c{i}" for i in range(10)])
    assert [c.title for c in batch.children] == [f"c{i}" for i in range(10)]
    assert [c.parent.child_index for c in batch.children if c.parent] == list(range(10))
    assert batch.parent.children == seenn.ChildrenStats(10, pending=10)
    family = await aclient.jobs.children(batch.parent.id)
    assert len(family.children) == 10
    parent = await aclient.jobs.create_parent("p", user_id="u", title="P", child_count=1)
    child = await aclient.jobs.create_child("p", parent_job_id=parent.id, child_index=0,
                                            user_id="u", title="C")
    assert child.is_child


async def test_async_validation_before_request(aclient: AsyncSeennClient,
                                               server: RecordingServer) -> None:
    """Invalid arguments raise ValidationError before the async client sends anything."""
    with pytest.raises(seenn.ValidationError) as caught:
        await aclient.jobs.start("v", user_id="u", title="t", metadata={"x": "y" * 20_000})
    assert caught.value.field == "metadata"
    job = await aclient.jobs.start("v", user_id="u", title="t")
    with pytest.raises(seenn.ValidationError):
        await job.set_progress(101)
    assert len(server.requests) == 1


async def test_async_stale_after_is_sent_and_checked(aclient: AsyncSeennClient,
                                                     server: RecordingServer) -> None:
    """stale_after on start and set_progress is sent as staleAfterSeconds, or refused locally."""
    with pytest.raises(seenn.ValidationError) as caught:
        await aclient.jobs.start("v", user_id="u", title="t", stale_after=5)
    assert caught.value.field == "stale_after"
    assert server.requests == []
    job = await aclient.jobs.start("v", user_id="u", title="t", stale_after=120)
    assert server.requests[-1].json["staleAfterSeconds"] == 120
    with pytest.raises(seenn.ValidationError) as caught:
        await job.set_progress(5, stale_after=1.5)
    assert caught.value.field == "stale_after"
    await job.set_progress(5, stale_after=3600)
    assert server.requests[-1].json == {"progress": 5, "staleAfterSeconds": 3600}
    assert len(server.requests) == 2


async def test_async_client_closes_and_reprs_without_key(server: RecordingServer) -> None:
    """aclose() closes the owned connection pool and repr hides the key."""
    client = AsyncSeennClient(SECRET, base_url=server.url)
    assert SECRET not in repr(client) and "AsyncSeennClient" in repr(client)
    await client.aclose()
    assert client._http._http.is_closed


async def test_async_calls_run_concurrently(aclient: AsyncSeennClient,
                                            server: RecordingServer) -> None:
    """Many calls gathered at once all complete."""
    jobs = await asyncio.gather(*(aclient.jobs.start("v", user_id="u", title=f"{i}")
                                  for i in range(20)))
    assert len({j.id for j in jobs}) == 20


async def test_async_create_token_and_children_pages(aclient: AsyncSeennClient,
                                                     server: RecordingServer) -> None:
    """The async client mints tokens and walks paginated children like the blocking one."""
    server.reply(201, {"token": "ut_p.s", "expiresAt": "2030-01-01T00:00:00Z"})
    minted = await aclient.create_token("u", ttl_seconds=120)
    assert server.requests[-1].json == {"userId": "u", "ttlSeconds": 120}
    assert minted.token == "ut_p.s"
    parent = {"id": "job_p", "status": "running"}
    server.reply(200, {"parent": parent, "children": [{"id": "job_a"}], "nextCursor": "x"})
    server.reply(200, {"parent": parent, "children": [{"id": "job_b"}]})
    ids = [child.id async for child in aclient.jobs.iter_children("job_p", page_size=1)]
    assert ids == ["job_a", "job_b"]
    assert server.requests[-1].query == {"cursor": ["x"], "limit": ["1"]}
