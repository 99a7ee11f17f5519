"""client.eta (get_stats, list, reset) and the ETA fields of Job, against `seenn serve`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import seenn
import seenn.server
from seenn._core.eta import History
from seenn.server import RunningServer
from tests.server import RecordingServer

T0 = 1_800_000_000.0


class Clock:
    """The backend's time source, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A clock at T0."""
    return Clock()


@pytest.fixture
def backend(tmp_path: Path, clock: Clock) -> Iterator[RunningServer]:
    """A `seenn serve` on the test clock."""
    with seenn.server.running(tmp_path / "db", clock=clock, stale_after=0) as srv:
        yield srv


@pytest.fixture
def client(backend: RunningServer) -> Iterator[seenn.SeennClient]:
    """A blocking client with the secret key and no retries."""
    with seenn.SeennClient(backend.api_key, base_url=backend.url, max_retries=0) as c:
        yield c


def run(client: seenn.SeennClient, clock: Clock, seconds: float, *,
        workflow_id: str = "render") -> seenn.Job:
    job = client.jobs.start("video", user_id="u", title="t", workflow_id=workflow_id)
    job.set_progress(0, stage={"name": "a"})
    clock.now += seconds / 2
    job.set_progress(50, stage={"name": "b"})
    clock.now += seconds / 2
    return job.complete()


def test_get_stats_reads_typed_statistics(client: seenn.SeennClient, clock: Clock) -> None:
    """get_stats gives an EtaStats with timedeltas, stages, extras and the raw answer."""
    for seconds in (10.0, 20.0, 30.0):
        run(client, clock, seconds)
    stats = client.eta.get_stats("render")
    assert isinstance(stats, seenn.EtaStats)
    assert (stats.eta_key, stats.count) == ("render", 3)
    assert stats.avg_duration == stats.p50_duration == timedelta(seconds=20)
    assert (stats.min_duration, stats.max_duration) == (timedelta(seconds=10),
                                                        timedelta(seconds=30))
    assert stats.p95_duration == timedelta(seconds=29)
    assert 0 < stats.confidence < 1
    assert stats.last_updated == datetime.fromtimestamp(clock.now, tz=timezone.utc)
    assert stats.stages["a"] == seenn.EtaStageStats(3, timedelta(seconds=10),
                                                    timedelta(seconds=14.5))
    assert set(stats.extra) == {"history"}
    raw = stats.to_dict()
    assert raw["p95Duration"] == 29_000 and raw["history"] == stats.extra["history"]
    history = History.from_wire(raw["history"], raw["stages"])
    assert history is not None and history.total.count == 3
    with pytest.raises(FrozenInstanceError):
        stats.count = 4  # type: ignore[misc]


def test_list_and_reset(client: seenn.SeennClient, clock: Clock) -> None:
    """list() reads every key; reset() is True once, then False; get_stats is None after."""
    run(client, clock, 4.0, workflow_id="one")
    run(client, clock, 6.0, workflow_id="two")
    assert [s.eta_key for s in client.eta.list()] == ["two", "one"]
    assert client.eta.reset("one") is True
    assert client.eta.reset("one") is False
    assert client.eta.get_stats("one") is None
    assert [s.eta_key for s in client.eta.list()] == ["two"]


@pytest.mark.parametrize("key", ["..", ".", "a/b", "x?y#z", "%2F", " ", "\u00e9"])
def test_keys_are_path_escaped(client: seenn.SeennClient, clock: Clock, key: str) -> None:
    """Keys with slashes, dots, query or escape characters reach their own statistics."""
    run(client, clock, 3.0, workflow_id=key)
    stats = client.eta.get_stats(key)
    assert stats is not None and stats.eta_key == key
    assert client.eta.reset(key) is True
    assert client.eta.list() == []


def test_a_job_id_of_dots_is_not_a_dot_segment(client: seenn.SeennClient) -> None:
    """jobs.get('.') asks for that job (404), not for GET /jobs as a dot segment would."""
    for job_id in (".", ".."):
        with pytest.raises(seenn.NotFoundError):
            client.jobs.get(job_id)


@pytest.mark.parametrize(("key", "reason"), [
    ("", "1 to 100"), ("x" * 101, "1 to 100"), (7, "string"), (None, "string"),
    ("a\ud800", "surrogate"),
])
def test_bad_keys_are_refused_before_sending(key: Any, reason: str) -> None:
    """A bad eta_key raises ValidationError naming it, without a request (nothing listens)."""
    with seenn.SeennClient("sk_test_x", base_url="http://127.0.0.1:9", max_retries=0) as c:
        for call in (c.eta.get_stats, c.eta.reset):
            with pytest.raises(seenn.ValidationError) as caught:
                call(key)
            assert caught.value.details is not None
            assert caught.value.details["field"] == "eta_key"
            assert reason in str(caught.value)


def test_public_keys_cannot_read_statistics(backend: RunningServer, clock: Clock,
                                            client: seenn.SeennClient) -> None:
    """With a public key every eta call is AuthenticationError (403)."""
    run(client, clock, 2.0)
    assert backend.public_key is not None
    with seenn.SeennClient(backend.public_key, base_url=backend.url, max_retries=0) as public:
        for call in (public.eta.list, lambda: public.eta.get_stats("render"),
                     lambda: public.eta.reset("render")):
            with pytest.raises(seenn.AuthenticationError) as caught:
                call()
            assert caught.value.status_code == 403
    assert client.eta.get_stats("render") is not None


def test_job_reads_the_eta_fields(client: seenn.SeennClient, clock: Clock) -> None:
    """A running job shows estimated_completion_at, eta_confidence, eta_based_on, eta_overdue."""
    for _ in range(5):
        run(client, clock, 10.0)
    job = client.jobs.start("video", user_id="u", title="t", workflow_id="render")
    assert (job.eta_based_on, job.eta_overdue, job.estimated_completion_at) == (None, False,
                                                                                None)
    job.set_progress(20)
    assert job.eta_based_on == 5 and job.eta_overdue is False
    assert job.estimated_completion_at == datetime.fromtimestamp(clock.now + 10,
                                                                 tz=timezone.utc)
    assert job.eta_confidence is not None and 0 < job.eta_confidence <= 1
    clock.now += 60
    assert job.refresh().eta_overdue is True
    assert "etaOverdue" not in job.extra and "etaBasedOn" not in job.extra


def test_unusable_answers_are_invalid_responses(server: RecordingServer) -> None:
    """Statistics without their required numbers are INVALID_RESPONSE; unknown fields are kept."""
    good = {"etaKey": "k", "count": 1, "avgDuration": 5, "p50Duration": 5, "p95Duration": 5,
            "minDuration": 5, "maxDuration": 5, "confidence": 0.2,
            "lastUpdated": "2030-01-01T00:00:00Z", "future": {"x": 1}, "stages": {"s": 1}}
    server.eta_apart = False  # the replies below are for the client's own calls
    server.reply(200, good)
    for bad in ({**good, "p50Duration": "5"}, {**good, "maxDuration": 1e300},
                {**good, "count": True}, {**good, "etaKey": ""}, {**good, "confidence": None},
                {"stats": [good, {"etaKey": "k"}]}):
        server.reply(200, bad)
    with seenn.SeennClient("sk_test_x", base_url=server.url, max_retries=0) as c:
        stats = c.eta.get_stats("k")
        assert stats is not None and stats.extra == {"future": {"x": 1}} and stats.stages == {}
        for call in [lambda: c.eta.get_stats("k")] * 5 + [c.eta.list]:
            with pytest.raises(seenn.SeennError) as caught:
                call()
            assert caught.value.code == "INVALID_RESPONSE"


def test_reset_accepts_a_204_from_other_backends(server: RecordingServer) -> None:
    """A backend answering DELETE with 204 and no body reads as reset; the key is escaped."""
    server.reply(204)
    with seenn.SeennClient("sk_test_x", base_url=server.url, max_retries=0) as c:
        assert c.eta.reset("a/b") is True
    (request,) = server.requests
    assert (request.method, request.path) == ("DELETE", "/v1/eta/a%2Fb")
    assert "Idempotency-Key" not in request.headers


async def test_async_eta_calls(backend: RunningServer, clock: Clock,
                               client: seenn.SeennClient) -> None:
    """AsyncSeennClient.eta has the same calls, awaited."""
    run(client, clock, 8.0)
    async with seenn.AsyncSeennClient(backend.api_key, base_url=backend.url,
                                      max_retries=0) as aclient:
        stats = await aclient.eta.get_stats("render")
        assert stats is not None and stats.p50_duration == timedelta(seconds=8)
        assert [s.eta_key for s in await aclient.eta.list()] == ["render"]
        assert await aclient.eta.reset("render") is True
        assert await aclient.eta.reset("render") is False
        assert await aclient.eta.get_stats("render") is None
        with pytest.raises(seenn.ValidationError):
            await aclient.eta.get_stats("")
        job = await aclient.jobs.start("video", user_id="u", title="t", workflow_id="w")
        await job.set_progress(10)
        assert job.workflow_id == "w" and job.eta_based_on is None
        clock.now += 10
        await job.set_progress(20)
        assert job.eta_based_on == 0 and job.estimated_completion_at is not None
