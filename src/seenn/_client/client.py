"""The REST clients: :class:`SeennClient` and :class:`AsyncSeennClient`.

Both speak the wire protocol of Seenn Cloud and of self-hosted backends
(see ``docs/client.md``), with the same surface; the async one is awaited.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import httpx

from seenn._client.calls import (
    check_batch,
    check_ids,
    check_watch,
    children_params,
    extensions_of,
    family_shape,
    ids_shape,
    job_shape,
    list_params,
    next_cursor,
    offered,
    page_shape,
    parent_body,
    start_body,
    token_body,
    token_shape,
    user_token,
    wait_param,
)
from seenn._client.eta import AsyncEtaStatsResource, EtaStatsResource
from seenn._client.resources import (
    AsyncJob,
    BatchResult,
    Job,
    JobBatch,
    JobFamily,
    JobPage,
)
from seenn._client.transport import (
    DEFAULT_BASE_PATH,
    NOT_MODIFIED,
    AsyncHTTP,
    BaseClient,
    Shape,
    SyncHTTP,
    quote_id,
)
from seenn._core.models import ChildProgressMode, Queue, Stage, UserToken
from seenn._core.validation import (
    check_text,
)
from seenn.errors import (
    APIConnectionError,
    APITimeoutError,
    NotFoundError,
    SeennError,
    ServerError,
)

__all__ = ["AsyncJobs", "AsyncSeennClient", "Jobs", "SeennClient"]

_BATCH_CONCURRENCY = 8
# Failures that say nothing about what the backend offers: ask again next time.
_PASSING = (APIConnectionError, APITimeoutError, ServerError)


def _learned(http: BaseClient, answer: Any) -> dict[str, Any]:
    http.extensions = extensions_of(answer)
    return http.extensions


def _batch(ids: builtins.list[str], found: builtins.list[Any]) -> tuple[
        builtins.list[Any], builtins.list[str]]:
    """The jobs found in the order asked (repeats once), and the ids not found."""
    by_id = {job.id: job for job in found}
    return ([by_id[job_id] for job_id in ids if job_id in by_id],
            [job_id for job_id in ids if job_id not in by_id])


class _Watch:
    """The state of one ``watch()``, shared by the sync and async loops (sans I/O)."""

    def __init__(self, job_id: str, interval: float, wait: float,
                 extensions: Mapping[str, Any]) -> None:
        self.path = "/jobs/" + quote_id(check_text("job_id", job_id, max_len=255))
        self.interval = interval
        most = offered(extensions, "wait", "maxSeconds")
        self.hold = 0.0 if most is None else min(wait, most)
        self.etag: str | None = None
        self.last: dict[str, Any] | None = None

    def request(self) -> tuple[dict[str, Any] | None, float]:
        """The query and the seconds the backend may hold the next read."""
        if self.hold and self.etag is not None:
            return {"wait": wait_param(self.hold)}, self.hold
        return None, 0.0

    def answered(self, data: Any, etag: str | None) -> bool:
        """Take an answer in; whether it changed the job."""
        if data is NOT_MODIFIED or data == self.last:
            return False
        self.etag, self.last = etag, dict(data)
        return True

    def pause(self, changed: bool, held: float, elapsed: float) -> float:
        """Seconds to sleep before the next read."""
        if not held:
            return self.interval  # plain polling
        if changed:
            return 0.0  # a long poll: ask again at once
        # A 304 long before its time: the backend turned the wait away; poll, don't spin.
        return max(0.0, self.interval - elapsed)


class Jobs:
    """The jobs resource of :class:`SeennClient` (``client.jobs``)."""

    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def _post(self, path: str, body: dict[str, Any], expect: Shape = job_shape) -> Any:
        return self._http.request("POST", "/jobs" + path, json=body, expect=expect)

    def _get(self, path: str, params: Mapping[str, Any] | None = None,
             expect: Shape = job_shape) -> Any:
        return self._http.request("GET", "/jobs" + path, params=params, expect=expect)

    def start(
        self,
        job_type: str,
        *,
        user_id: str,
        title: str,
        job_id: str | None = None,
        workflow_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        queue: Queue | Mapping[str, Any] | None = None,
        stage: Stage | Mapping[str, Any] | None = None,
        estimated_completion_at: datetime | str | None = None,
        estimated_duration: float | timedelta | None = None,
        ttl_seconds: int | None = None,
        parent_job_id: str | None = None,
        child_index: int | None = None,
        total_children: int | None = None,
        child_progress_mode: ChildProgressMode | None = None,
        stale_after: int | None = None,
    ) -> Job:
        """Start a job (``POST /jobs``).

        Args:
            job_type: The kind of job, 1–100 characters, e.g. ``"video-generation"``.
            user_id: The user who waits for it, 1–255 characters.
            title: A human-readable title, 1–200 characters.
            job_id: Choose the job's id instead of letting the backend make one.
            workflow_id: The workflow used for ETA statistics (defaults to the job type).
            metadata: JSON metadata, at most 10 KB.
            queue: The job's initial place in a queue.
            stage: The job's initial stage.
            estimated_completion_at: An ETA (datetime or ISO 8601 string).
            estimated_duration: An expected duration (milliseconds or a timedelta).
            ttl_seconds: How long the backend keeps the job (60 s to 30 days).
            parent_job_id: Make this job a child of that parent.
            child_index: This child's 0-based index (needs ``parent_job_id``).
            total_children: Make this job a parent of that many children (1–1000).
            child_progress_mode: How a parent's progress follows its children.
            stale_after: The job's own stale limit in seconds (10 to 2,592,000), sent
                as ``staleAfterSeconds``: a backend that supports it (``seenn serve``)
                ends the job as failed with ``WORKER_LOST`` once it has run this long
                without an update. Its default otherwise (300 s for ``seenn serve``).

        Returns:
            The job as the backend stored it.

        Raises:
            ValidationError: An argument is invalid; nothing was sent.
            SeennError: The backend refused the call or could not be reached.
        """
        body = start_body(
            job_type=job_type, user_id=user_id, title=title, job_id=job_id,
            workflow_id=workflow_id, metadata=metadata, queue=queue, stage=stage,
            estimated_completion_at=estimated_completion_at,
            estimated_duration=estimated_duration, ttl_seconds=ttl_seconds,
            parent_job_id=parent_job_id, child_index=child_index,
            total_children=total_children, child_progress_mode=child_progress_mode,
            stale_after=stale_after)
        return Job(self._post("", body), self)

    def get(self, job_id: str) -> Job:
        """Read one job (``GET /jobs/{id}``); raises :class:`~seenn.NotFoundError` if absent."""
        return Job(self._get("/" + quote_id(check_text("job_id", job_id, max_len=255))), self)

    def _extensions(self) -> dict[str, Any]:
        """The extensions the backend lists in ``GET /healthz`` (asked once per client)."""
        if self._http.extensions is not None:
            return self._http.extensions
        try:
            return _learned(self._http, self._http.request("GET", "/healthz"))
        except _PASSING:
            return {}
        except SeennError:
            return _learned(self._http, None)

    def get_many(self, job_ids: Sequence[str]) -> JobBatch[Job]:
        """Read several jobs at once (``GET /jobs?ids=``), e.g. every job a screen follows.

        With a backend that offers batched reads (``seenn serve``: up to 100 ids a
        request; more are split) it is one request per 100 ids; with one that does not
        (Seenn Cloud) one ``GET /jobs/{id}`` per id.

        Args:
            job_ids: The ids, in the order the jobs should come back; repeats are read once.

        Returns:
            ``batch.jobs`` in the order asked, and ``batch.missing``: the ids of jobs the
            key cannot read (absent, expired, or another user's for a user token).

        Raises:
            ValidationError: An id is empty, longer than 255 characters or holds a comma.
            SeennError: The backend refused the call or could not be reached.
        """
        ids = check_ids(job_ids)
        found: builtins.list[Job] = []
        most = offered(self._extensions(), "jobsByIds", "maxIds") if ids else None
        if most is None:
            for job_id in ids:
                with contextlib.suppress(NotFoundError):
                    found.append(self.get(job_id))
        else:
            size = min(int(most), 100) or 1
            for start in range(0, len(ids), size):
                data = self._get("", {"ids": ",".join(ids[start:start + size])}, ids_shape)
                found += [Job(job, self) for job in data["jobs"]]
        jobs, missing = _batch(ids, found)
        return JobBatch(jobs, missing)

    def watch(self, job_id: str, *, interval: float = 1.0, wait: float = 30.0,
              unchanged: bool = False) -> Iterator[Job]:
        """Follow a job: yield it now, then each time it changes, until it has ended.

        With a backend that offers long polls (``seenn serve``) each read waits up to
        ``wait`` seconds for a change and answers as soon as there is one; otherwise the
        job is read every ``interval`` seconds, with ``If-None-Match`` so an unchanged
        job costs an empty answer. The last job yielded is terminal.

        Args:
            job_id: The job to follow.
            interval: Seconds between two reads when polling (and the least time between
                two reads when a backend answers a long poll at once), 0–3600.
            wait: The longest a long poll waits for a change, 0–30 seconds.
            unchanged: Also yield the job (as last read) after a read that found no
                change, e.g. to redraw a countdown.

        Raises:
            ValidationError: An argument is invalid; nothing was sent.
            NotFoundError: The job does not exist, or has expired.
            SeennError: The backend refused a read or could not be reached.
        """
        interval, wait = check_watch(interval, wait)
        state = _Watch(job_id, interval, wait, self._extensions())
        http = self._http
        job: Job | None = None
        while True:
            params, held = state.request()
            started = http._monotonic()
            data, etag = http.get_tagged(state.path, params=params, etag=state.etag,
                                         wait=held, expect=job_shape)
            changed = state.answered(data, etag)
            if changed:
                job = Job(data, self)
            if job is not None and (changed or unchanged):
                yield job
                if job.is_terminal:
                    return
            pause = state.pause(changed, held, http._monotonic() - started)
            if pause:
                http._sleep(pause)

    def list(self, user_id: str, *, limit: int | None = None,
             cursor: str | None = None) -> JobPage[Job]:
        """Read one page of a user's jobs, newest first (``GET /jobs?userId=``).

        Args:
            user_id: Whose jobs.
            limit: Page size, 1–100 (the backend's default when omitted).
            cursor: The ``next_cursor`` of the previous page.

        Returns:
            The page: ``page.jobs`` and ``page.next_cursor``.
        """
        data = self._get("", list_params(user_id, limit, cursor), page_shape)
        return JobPage([Job(job, self) for job in data["jobs"]], next_cursor(data))

    def iter(self, user_id: str, *, page_size: int | None = None) -> Iterator[Job]:
        """Walk every job of a user, newest first, fetching pages as the loop needs them."""
        list_params(user_id, page_size, None)
        cursor: str | None = None
        while True:
            page = self.list(user_id, limit=page_size, cursor=cursor)
            yield from page.jobs
            if page.next_cursor is None or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    def children(self, parent_id: str, *, cursor: str | None = None,
                 limit: int | None = None) -> JobFamily[Job]:
        """Read a parent job with one page of its children (``GET /jobs/{id}/children``).

        Args:
            parent_id: The parent job's id.
            cursor: The ``next_cursor`` of the previous page.
            limit: Page size, 1–100 (the backend's default when omitted).

        Returns:
            The parent, the children on this page and ``next_cursor``. A backend that
            does not paginate children answers every child on one page.
        """
        path = f"/{quote_id(check_text('parent_id', parent_id, max_len=255))}/children"
        data = self._get(path, children_params(cursor, limit), family_shape)
        return JobFamily(Job(data["parent"], self),
                         [Job(child, self) for child in data["children"]], next_cursor(data))

    def iter_children(self, parent_id: str, *, page_size: int | None = None) -> Iterator[Job]:
        """Walk every child of a parent, in ``child_index`` order, a page at a time."""
        check_text("parent_id", parent_id, max_len=255)
        children_params(None, page_size)
        cursor: str | None = None
        while True:
            family = self.children(parent_id, cursor=cursor, limit=page_size)
            yield from family.children
            if family.next_cursor is None or family.next_cursor == cursor:
                return
            cursor = family.next_cursor

    def create_parent(
        self,
        job_type: str,
        *,
        user_id: str,
        title: str,
        child_count: int,
        child_progress_mode: ChildProgressMode | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        job_id: str | None = None,
    ) -> Job:
        """Start a parent job that expects ``child_count`` children (1–1000)."""
        body = parent_body(job_type, user_id=user_id, title=title, child_count=child_count,
                            child_progress_mode=child_progress_mode, metadata=metadata,
                            ttl_seconds=ttl_seconds, job_id=job_id)
        return Job(self._post("", body), self)

    def create_child(
        self,
        job_type: str,
        *,
        parent_job_id: str,
        child_index: int,
        user_id: str,
        title: str,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        job_id: str | None = None,
    ) -> Job:
        """Start child number ``child_index`` (from 0) of the parent ``parent_job_id``."""
        return self.start(job_type, user_id=user_id, title=title, job_id=job_id,
                          metadata=metadata, ttl_seconds=ttl_seconds,
                          parent_job_id=parent_job_id, child_index=child_index)

    def create_batch(
        self,
        job_type: str,
        *,
        user_id: str,
        parent_title: str,
        child_titles: Sequence[str],
        child_progress_mode: ChildProgressMode | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
    ) -> BatchResult[Job]:
        """Start a parent and one child per title, then refresh the parent.

        Every argument (each child title included) is checked before the first call.
        """
        titles = check_batch(child_titles)
        parent_request = parent_body(job_type, user_id=user_id, title=parent_title,
                                     child_count=len(titles),
                                     child_progress_mode=child_progress_mode,
                                     metadata=metadata, ttl_seconds=ttl_seconds, job_id=None)
        parent = Job(self._post("", parent_request), self)
        children = [self.create_child(job_type, parent_job_id=parent.id, child_index=i,
                                      user_id=user_id, title=title, ttl_seconds=ttl_seconds)
                    for i, title in enumerate(titles)]
        parent.refresh()
        return BatchResult(parent, children)


class AsyncJobs:
    """The jobs resource of :class:`AsyncSeennClient`; the same calls as :class:`Jobs`, awaited."""

    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def _post(self, path: str, body: dict[str, Any], expect: Shape = job_shape) -> Any:
        return await self._http.request("POST", "/jobs" + path, json=body, expect=expect)

    async def _get(self, path: str, params: Mapping[str, Any] | None = None,
                   expect: Shape = job_shape) -> Any:
        return await self._http.request("GET", "/jobs" + path, params=params, expect=expect)

    async def start(
        self,
        job_type: str,
        *,
        user_id: str,
        title: str,
        job_id: str | None = None,
        workflow_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        queue: Queue | Mapping[str, Any] | None = None,
        stage: Stage | Mapping[str, Any] | None = None,
        estimated_completion_at: datetime | str | None = None,
        estimated_duration: float | timedelta | None = None,
        ttl_seconds: int | None = None,
        parent_job_id: str | None = None,
        child_index: int | None = None,
        total_children: int | None = None,
        child_progress_mode: ChildProgressMode | None = None,
        stale_after: int | None = None,
    ) -> AsyncJob:
        """Start a job; see :meth:`Jobs.start`."""
        body = start_body(
            job_type=job_type, user_id=user_id, title=title, job_id=job_id,
            workflow_id=workflow_id, metadata=metadata, queue=queue, stage=stage,
            estimated_completion_at=estimated_completion_at,
            estimated_duration=estimated_duration, ttl_seconds=ttl_seconds,
            parent_job_id=parent_job_id, child_index=child_index,
            total_children=total_children, child_progress_mode=child_progress_mode,
            stale_after=stale_after)
        return AsyncJob(await self._post("", body), self)

    async def get(self, job_id: str) -> AsyncJob:
        """Read one job; see :meth:`Jobs.get`."""
        path = "/" + quote_id(check_text("job_id", job_id, max_len=255))
        return AsyncJob(await self._get(path), self)

    async def _extensions(self) -> dict[str, Any]:
        if self._http.extensions is not None:
            return self._http.extensions
        try:
            return _learned(self._http, await self._http.request("GET", "/healthz"))
        except _PASSING:
            return {}
        except SeennError:
            return _learned(self._http, None)

    async def get_many(self, job_ids: Sequence[str]) -> JobBatch[AsyncJob]:
        """Read several jobs at once; see :meth:`Jobs.get_many`."""
        ids = check_ids(job_ids)
        found: builtins.list[AsyncJob] = []
        most = offered(await self._extensions(), "jobsByIds", "maxIds") if ids else None
        if most is None:
            gate = asyncio.Semaphore(_BATCH_CONCURRENCY)

            async def one(job_id: str) -> AsyncJob | None:
                async with gate:
                    try:
                        return await self.get(job_id)
                    except NotFoundError:
                        return None

            found = [job for job in await asyncio.gather(*map(one, ids)) if job is not None]
        else:
            size = min(int(most), 100) or 1
            for start in range(0, len(ids), size):
                data = await self._get("", {"ids": ",".join(ids[start:start + size])},
                                       ids_shape)
                found += [AsyncJob(job, self) for job in data["jobs"]]
        jobs, missing = _batch(ids, found)
        return JobBatch(jobs, missing)

    async def watch(self, job_id: str, *, interval: float = 1.0, wait: float = 30.0,
                    unchanged: bool = False) -> AsyncIterator[AsyncJob]:
        """Follow a job until it has ended (``async for``); see :meth:`Jobs.watch`."""
        interval, wait = check_watch(interval, wait)
        state = _Watch(job_id, interval, wait, await self._extensions())
        http = self._http
        job: AsyncJob | None = None
        while True:
            params, held = state.request()
            started = http._monotonic()
            data, etag = await http.get_tagged(state.path, params=params, etag=state.etag,
                                               wait=held, expect=job_shape)
            changed = state.answered(data, etag)
            if changed:
                job = AsyncJob(data, self)
            if job is not None and (changed or unchanged):
                yield job
                if job.is_terminal:
                    return
            pause = state.pause(changed, held, http._monotonic() - started)
            if pause:
                await http._sleep(pause)

    async def list(self, user_id: str, *, limit: int | None = None,
                   cursor: str | None = None) -> JobPage[AsyncJob]:
        """Read one page of a user's jobs; see :meth:`Jobs.list`."""
        data = await self._get("", list_params(user_id, limit, cursor), page_shape)
        return JobPage([AsyncJob(job, self) for job in data["jobs"]], next_cursor(data))

    async def iter(self, user_id: str, *, page_size: int | None = None) -> AsyncIterator[AsyncJob]:
        """Walk every job of a user (``async for``); see :meth:`Jobs.iter`."""
        list_params(user_id, page_size, None)
        cursor: str | None = None
        while True:
            page = await self.list(user_id, limit=page_size, cursor=cursor)
            for job in page.jobs:
                yield job
            if page.next_cursor is None or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    async def children(self, parent_id: str, *, cursor: str | None = None,
                       limit: int | None = None) -> JobFamily[AsyncJob]:
        """Read a parent job with one page of its children; see :meth:`Jobs.children`."""
        path = f"/{quote_id(check_text('parent_id', parent_id, max_len=255))}/children"
        data = await self._get(path, children_params(cursor, limit), family_shape)
        return JobFamily(AsyncJob(data["parent"], self),
                         [AsyncJob(child, self) for child in data["children"]],
                         next_cursor(data))

    async def iter_children(self, parent_id: str, *,
                            page_size: int | None = None) -> AsyncIterator[AsyncJob]:
        """Walk every child of a parent (``async for``); see :meth:`Jobs.iter_children`."""
        check_text("parent_id", parent_id, max_len=255)
        children_params(None, page_size)
        cursor: str | None = None
        while True:
            family = await self.children(parent_id, cursor=cursor, limit=page_size)
            for child in family.children:
                yield child
            if family.next_cursor is None or family.next_cursor == cursor:
                return
            cursor = family.next_cursor

    async def create_parent(
        self,
        job_type: str,
        *,
        user_id: str,
        title: str,
        child_count: int,
        child_progress_mode: ChildProgressMode | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        job_id: str | None = None,
    ) -> AsyncJob:
        """Start a parent job; see :meth:`Jobs.create_parent`."""
        body = parent_body(job_type, user_id=user_id, title=title, child_count=child_count,
                            child_progress_mode=child_progress_mode, metadata=metadata,
                            ttl_seconds=ttl_seconds, job_id=job_id)
        return AsyncJob(await self._post("", body), self)

    async def create_child(
        self,
        job_type: str,
        *,
        parent_job_id: str,
        child_index: int,
        user_id: str,
        title: str,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        job_id: str | None = None,
    ) -> AsyncJob:
        """Start a child job; see :meth:`Jobs.create_child`."""
        return await self.start(job_type, user_id=user_id, title=title, job_id=job_id,
                                metadata=metadata, ttl_seconds=ttl_seconds,
                                parent_job_id=parent_job_id, child_index=child_index)

    async def create_batch(
        self,
        job_type: str,
        *,
        user_id: str,
        parent_title: str,
        child_titles: Sequence[str],
        child_progress_mode: ChildProgressMode | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
    ) -> BatchResult[AsyncJob]:
        """Start a parent and its children, a few at a time; see :meth:`Jobs.create_batch`."""
        titles = check_batch(child_titles)
        parent_request = parent_body(job_type, user_id=user_id, title=parent_title,
                                     child_count=len(titles),
                                     child_progress_mode=child_progress_mode,
                                     metadata=metadata, ttl_seconds=ttl_seconds, job_id=None)
        parent = AsyncJob(await self._post("", parent_request), self)
        gate = asyncio.Semaphore(_BATCH_CONCURRENCY)

        async def child(index: int, title: str) -> AsyncJob:
            async with gate:
                return await self.create_child(job_type, parent_job_id=parent.id,
                                               child_index=index, user_id=user_id,
                                               title=title, ttl_seconds=ttl_seconds)

        children = await asyncio.gather(*(child(i, t) for i, t in enumerate(titles)))
        await parent.refresh()
        return BatchResult(parent, builtins.list(children))


def _options(base_url: str | None, base_path: str, timeout: float, max_retries: int,
             deadline: float | None, debug: bool) -> dict[str, Any]:
    return {"base_url": base_url, "base_path": base_path, "timeout": timeout,
            "max_retries": max_retries, "deadline": deadline, "debug": debug}


class _ClientInfo:
    _http: BaseClient

    @property
    def base_url(self) -> str:
        """The backend's base URL, without the base path."""
        return self._http.base_url

    @property
    def base_path(self) -> str:
        """The path prefix of every call, ``/v1`` by default."""
        return self._http.base_path

    @property
    def timeout(self) -> float:
        """Seconds one attempt may take."""
        return self._http.timeout

    @property
    def max_retries(self) -> int:
        """How many times a failed call is retried (0: never)."""
        return self._http.max_retries

    @property
    def deadline(self) -> float | None:
        """Seconds one call may take, all attempts and waits included (``None``: no limit)."""
        return self._http.deadline

    def __repr__(self) -> str:
        return repr(self._http).replace(type(self._http).__name__, type(self).__name__, 1)


class SeennClient(_ClientInfo):
    """A blocking client for the Seenn REST API (Seenn Cloud or a self-hosted backend).

    Every call retries connection errors, timeouts, 408, 429 and 5xx answers with
    exponential backoff and full jitter, honours ``Retry-After`` (up to 60 s),
    stops at the call's deadline, and sends one ``Idempotency-Key`` per POST,
    the same on every attempt, so a retry never applies a change twice.

    Args:
        api_key: A secret key (``sk_live_…``/``sk_test_…``); defaults to ``SEENN_API_KEY``.
            Seenn Cloud needs a secret key; a self-hosted backend takes any non-empty key.
        base_url: The backend; defaults to ``SEENN_BASE_URL``, then ``https://api.seenn.io``.
        base_path: The path prefix of the API.
        timeout: Seconds one attempt may take.
        max_retries: Retries after the first attempt; 0 turns retries off.
        deadline: Seconds one call may take in all, retries and waits included;
            ``None`` for no overall limit.
        debug: Log one line per attempt to the ``seenn`` logger (never the key).
        http_client: An ``httpx.Client`` to send with (it is not closed by :meth:`close`).

    Attributes:
        jobs: Start, update, read and list jobs.
        eta: The ETA statistics of the app's job types and workflows (a secret key).

    Raises:
        ValidationError: No key, a bad option, or a public key against Seenn Cloud.

    Example:
        >>> with SeennClient(api_key="sk_test_...") as client:  # doctest: +SKIP
        ...     job = client.jobs.start("video-generation", user_id="u1", title="Video")
        ...     job.set_progress(50, message="Rendering")
        ...     job.complete(result={"type": "video", "url": "https://..."})
    """

    _http: SyncHTTP

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        base_path: str = DEFAULT_BASE_PATH,
        timeout: float = 30.0,
        max_retries: int = 3,
        deadline: float | None = 120.0,
        debug: bool = False,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._http = SyncHTTP(api_key, http_client=http_client,
                              **_options(base_url, base_path, timeout, max_retries, deadline,
                                         debug))
        self.jobs = Jobs(self._http)
        self.eta = EtaStatsResource(self._http)

    def create_token(self, user_id: str, *, ttl_seconds: int = 3600) -> UserToken:
        """Mint a read token for one user's jobs (``POST /tokens``, with a secret key).

        Hand the token to that user's app: it polls with it as its key, reads and lists
        that user's jobs only, until it expires, and never writes.

        Args:
            user_id: The user whose jobs the token may read, 1–255 characters.
            ttl_seconds: How long the token lives, 60 s to 30 days.

        Returns:
            The token and when it expires.

        Raises:
            ValidationError: An argument is invalid; nothing was sent.
            SeennError: The backend refused the call (e.g. not a secret key) or could not
                be reached.
        """
        data = self._http.request("POST", "/tokens", json=token_body(user_id, ttl_seconds),
                                  expect=token_shape)
        return user_token(data)

    def close(self) -> None:
        """Close the connections this client opened."""
        self._http.close()

    def __enter__(self) -> SeennClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncSeennClient(_ClientInfo):
    """The asyncio twin of :class:`SeennClient`: the same options, calls and guarantees.

    Use it with ``async with``, or call :meth:`aclose` when done.
    """

    _http: AsyncHTTP

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        base_path: str = DEFAULT_BASE_PATH,
        timeout: float = 30.0,
        max_retries: int = 3,
        deadline: float | None = 120.0,
        debug: bool = False,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._http = AsyncHTTP(api_key, http_client=http_client,
                               **_options(base_url, base_path, timeout, max_retries, deadline,
                                          debug))
        self.jobs = AsyncJobs(self._http)
        self.eta = AsyncEtaStatsResource(self._http)

    async def create_token(self, user_id: str, *, ttl_seconds: int = 3600) -> UserToken:
        """Mint a read token for one user's jobs; see :meth:`SeennClient.create_token`."""
        data = await self._http.request("POST", "/tokens",
                                        json=token_body(user_id, ttl_seconds),
                                        expect=token_shape)
        return user_token(data)

    async def aclose(self) -> None:
        """Close the connections this client opened."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncSeennClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
