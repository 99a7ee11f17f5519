"""Shared fixtures: a real loopback HTTP server and clients whose waits are instant."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import seenn
import seenn.server
from seenn._core.eta_live import clear_priors
from tests.pg import PostgresServer, postgres_server
from tests.server import RecordingServer

SECRET = "sk_test_s3cr3t-key-do-not-leak"


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture(autouse=True)
def no_eta_priors() -> Iterator[None]:
    """Start and end every test with an empty ETA prior cache (it is process-wide)."""
    clear_priors()
    yield
    clear_priors()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole run, started on first use."""
    yield from postgres_server()


ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(params=ENGINES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for ``seenn serve``, once per engine: a file or a URL."""
    if request.param == "sqlite":
        yield str(tmp_path / "seenn.db")
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.new_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def backend(db: str) -> Iterator[seenn.server.RunningServer]:
    """`seenn serve` in this process on a free loopback port, with a fresh database of
    each engine (a test module may define its own ``backend`` with other options)."""
    with seenn.server.running(db) as srv:
        yield srv


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    """A recording server on a free loopback port."""
    srv = RecordingServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock the clients wait on, so retry tests never wait for real."""
    return FakeClock()


@pytest.fixture
def client(server: RecordingServer, clock: FakeClock) -> Iterator[seenn.SeennClient]:
    """A SeennClient against the recording server, waiting on the fake clock."""
    with seenn.SeennClient(SECRET, base_url=server.url) as c:
        c._http._sleep = clock.sleep
        c._http._monotonic = clock.monotonic
        yield c


@pytest.fixture
async def aclient(server: RecordingServer,
                  clock: FakeClock) -> AsyncIterator[seenn.AsyncSeennClient]:
    """An AsyncSeennClient against the recording server, waiting on the fake clock."""
    async with seenn.AsyncSeennClient(SECRET, base_url=server.url) as c:
        c._http._sleep = clock.async_sleep
        c._http._monotonic = clock.monotonic
        yield c
