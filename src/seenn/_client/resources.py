"""The REST model of a job, and the request bodies of its calls.

A backend's job object is camelCase JSON; :class:`Job` reads it into typed
snake_case attributes, leniently: unknown fields are kept in ``extra`` and a
field of the wrong shape reads as ``None`` rather than raising, so a newer
backend never breaks an older client.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, Protocol, TypeVar

from seenn._client.calls import complete_body, fail_body, progress_body
from seenn._client.transport import quote_id
from seenn._core.models import (
    TERMINAL_STATUSES,
    ChildrenStats,
    JobError,
    JobResult,
    ParentInfo,
    Queue,
    Stage,
)
from seenn._core.validation import (
    parse_datetime,
)
from seenn.errors import SeennError

if sys.version_info >= (3, 11):
    from typing import Self
else:  # pragma: no cover
    from typing_extensions import Self



class JobsAPI(Protocol):
    """What a :class:`Job` calls on its ``client.jobs`` (a ``Jobs``)."""

    def _post(self, path: str, body: dict[str, Any]) -> Any: ...

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any: ...


class AsyncJobsAPI(Protocol):
    """What an :class:`AsyncJob` awaits on its ``client.jobs`` (an ``AsyncJobs``)."""

    async def _post(self, path: str, body: dict[str, Any]) -> Any: ...

    async def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any: ...

__all__ = ["AsyncJob", "BatchResult", "Job", "JobBatch", "JobFamily", "JobPage"]

_KNOWN_FIELDS = frozenset({
    "id", "appId", "userId", "jobType", "title", "workflowId", "status", "progress",
    "message", "queue", "stage", "result", "error", "metadata", "estimatedCompletionAt",
    "etaConfidence", "etaBasedOn", "etaOverdue", "createdAt", "updatedAt", "startedAt",
    "completedAt", "parent", "children", "childProgressMode", "staleAfterSeconds",
})
JobT = TypeVar("JobT", bound="BaseJob")


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class BaseJob:
    """The fields of a job as the backend stored it (shared by :class:`Job` and :class:`AsyncJob`).

    Attributes:
        id: The job's id.
        app_id: The app (key pair) the job belongs to.
        user_id: The user the job belongs to.
        job_type: The kind of job, e.g. ``"video-generation"``.
        title: The human-readable title.
        workflow_id: The workflow used for ETA statistics, if any.
        status: ``pending``, ``queued``, ``running``, ``completed``, ``failed`` or
            ``cancelled`` (any other string a backend sends is kept as is).
        progress: 0 to 100.
        message: The latest status message.
        queue: The job's place in a queue.
        stage: The job's current stage.
        result: What the job produced, once completed.
        error: Why the job failed, once failed.
        metadata: Free-form JSON metadata.
        estimated_completion_at: When the backend expects the job to finish.
        eta_confidence: The backend's confidence in that estimate, 0.0 to 1.0.
        eta_based_on: How many completed jobs of its kind the backend's estimate uses
            (0: the job's own pace only), when the backend made the estimate.
        eta_overdue: Whether the job has run past what the backend expected (past the
            95th percentile of its kind, or past ``estimated_completion_at``): show
            "taking longer than usual" rather than a countdown.
        created_at: When the job was created.
        updated_at: When the job last changed.
        started_at: When the job started running.
        completed_at: When the job reached a terminal state.
        parent: The parent of a child job.
        children: The children counts of a parent job.
        child_progress_mode: How a parent's progress derives from its children.
        stale_after_seconds: The job's own stale limit, if it set one and the backend
            shows it: a running job silent for longer is ended as failed with
            ``WORKER_LOST`` (``seenn serve``).
        extra: Fields the backend sent that this version of seenn does not know.
    """

    __slots__ = (
        "_jobs",
        "_raw",
        "app_id",
        "child_progress_mode",
        "children",
        "completed_at",
        "created_at",
        "error",
        "estimated_completion_at",
        "eta_based_on",
        "eta_confidence",
        "eta_overdue",
        "extra",
        "id",
        "job_type",
        "message",
        "metadata",
        "parent",
        "progress",
        "queue",
        "result",
        "stage",
        "stale_after_seconds",
        "started_at",
        "status",
        "title",
        "updated_at",
        "user_id",
        "workflow_id",
    )

    id: str
    app_id: str | None
    user_id: str | None
    job_type: str | None
    title: str | None
    workflow_id: str | None
    status: str
    progress: int
    message: str | None
    queue: Queue | None
    stage: Stage | None
    result: JobResult | None
    error: JobError | None
    metadata: dict[str, Any] | None
    estimated_completion_at: datetime | None
    eta_confidence: float | None
    eta_based_on: int | None
    eta_overdue: bool
    created_at: datetime | None
    updated_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    parent: ParentInfo | None
    children: ChildrenStats | None
    child_progress_mode: str | None
    stale_after_seconds: int | None
    extra: dict[str, Any]

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._update(data)

    def _update(self, data: object) -> None:
        if not isinstance(data, Mapping) or not isinstance(data.get("id"), str):
            raise SeennError("the backend sent a job without an id", code="INVALID_RESPONSE")
        self._raw = dict(data)
        self.id = data["id"]
        self.app_id = _str(data.get("appId"))
        self.user_id = _str(data.get("userId"))
        self.job_type = _str(data.get("jobType"))
        self.title = _str(data.get("title"))
        self.workflow_id = _str(data.get("workflowId"))
        self.status = _str(data.get("status")) or "pending"
        progress = _number(data.get("progress"))
        self.progress = int(progress) if progress is not None else 0
        self.message = _str(data.get("message"))
        self.queue = Queue.from_wire(data.get("queue"))
        self.stage = Stage.from_wire(data.get("stage"))
        self.result = JobResult.from_wire(data.get("result"))
        self.error = JobError.from_wire(data.get("error"))
        metadata = data.get("metadata")
        self.metadata = dict(metadata) if isinstance(metadata, Mapping) else None
        self.estimated_completion_at = parse_datetime(data.get("estimatedCompletionAt"))
        self.eta_confidence = _number(data.get("etaConfidence"))
        based_on = data.get("etaBasedOn")
        self.eta_based_on = (based_on if isinstance(based_on, int)
                             and not isinstance(based_on, bool) else None)
        self.eta_overdue = data.get("etaOverdue") is True
        self.created_at = parse_datetime(data.get("createdAt"))
        self.updated_at = parse_datetime(data.get("updatedAt"))
        self.started_at = parse_datetime(data.get("startedAt"))
        self.completed_at = parse_datetime(data.get("completedAt"))
        self.parent = ParentInfo.from_wire(data.get("parent"))
        self.children = ChildrenStats.from_wire(data.get("children"))
        self.child_progress_mode = _str(data.get("childProgressMode"))
        stale_after = data.get("staleAfterSeconds")
        self.stale_after_seconds = (stale_after if isinstance(stale_after, int)
                                    and not isinstance(stale_after, bool) else None)
        self.extra = {k: v for k, v in data.items() if k not in _KNOWN_FIELDS}

    @property
    def is_terminal(self) -> bool:
        """Whether the job has finished (completed, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES

    @property
    def is_parent(self) -> bool:
        """Whether the job is a parent of child jobs."""
        return self.children is not None

    @property
    def is_child(self) -> bool:
        """Whether the job is a child of a parent job."""
        return self.parent is not None

    @property
    def eta_remaining(self) -> timedelta | None:
        """Time left until the estimated completion (never negative), or ``None`` without one."""
        if self.estimated_completion_at is None:
            return None
        left = self.estimated_completion_at - datetime.now(timezone.utc)
        return max(left, timedelta(0))

    def to_dict(self) -> dict[str, Any]:
        """Return the job as the backend sent it (camelCase JSON, unknown fields included)."""
        return dict(self._raw)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(id={self.id!r}, job_type={self.job_type!r}, "
                f"status={self.status!r}, progress={self.progress})")


class Job(BaseJob):
    """A job on the backend, with blocking methods that update it.

    Each method sends one call and updates this object from the backend's answer.
    """

    __slots__ = ()

    def __init__(self, data: Mapping[str, Any], jobs: JobsAPI) -> None:
        super().__init__(data)
        self._jobs = jobs

    def set_progress(
        self,
        progress: float,
        /,
        *,
        message: str | None = None,
        stage: Stage | Mapping[str, Any] | None = None,
        queue: Queue | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        estimated_completion_at: datetime | str | None = None,
        push: bool | Mapping[str, Any] | None = None,
        stale_after: int | None = None,
    ) -> Self:
        """Report progress (0–100, sent as an integer) and optionally message, stage, queue.

        Args:
            progress: Percentage done, an int or float from 0 to 100.
            message: A status line for the people waiting.
            stage: The current stage (a :class:`~seenn.Stage` or a dict).
            queue: The job's place in a queue (a :class:`~seenn.Queue` or a dict).
            metadata: Metadata to merge into the stored metadata (at most 10 KB).
            estimated_completion_at: A new ETA (datetime or ISO 8601 string).
            push: Push-notification options passed through to the backend.
            stale_after: A new stale limit for the job, in seconds (10 to 2,592,000):
                the backend ends it as failed (``WORKER_LOST``) after this long without
                an update (sent as ``staleAfterSeconds``).

        Returns:
            This job, updated from the backend's answer.

        Raises:
            ValidationError: An argument is invalid; nothing was sent.
        """
        body = progress_body(progress, message=message, stage=stage, queue=queue,
                             metadata=metadata, estimated_completion_at=estimated_completion_at,
                             push=push, stale_after=stale_after)
        self._update(self._jobs._post(f"/{quote_id(self.id)}/progress", body))
        return self

    def complete(
        self,
        *,
        result: JobResult | Mapping[str, Any] | None = None,
        message: str | None = None,
        push: bool | Mapping[str, Any] | None = None,
        live_activity: bool | Mapping[str, Any] | None = None,
    ) -> Self:
        """Mark the job completed (progress 100), with an optional result and message.

        Args:
            result: What the job produced (a :class:`~seenn.JobResult` or a dict), ≤ 100 KB.
            message: A final status line.
            push: Push-notification options passed through to the backend.
            live_activity: Live Activity options passed through to the backend.

        Returns:
            This job, updated from the backend's answer.

        Raises:
            ValidationError: An argument is invalid; nothing was sent.
        """
        body = complete_body(result=result, message=message, push=push,
                             live_activity=live_activity)
        self._update(self._jobs._post(f"/{quote_id(self.id)}/complete", body))
        return self

    def fail(
        self,
        *,
        error: JobError | Mapping[str, Any],
        retryable: bool | None = None,
        push: bool | Mapping[str, Any] | None = None,
    ) -> Self:
        """Mark the job failed with an error code and message.

        Args:
            error: Why it failed (a :class:`~seenn.JobError` or a dict with code and message).
            retryable: Whether trying again may succeed.
            push: Push-notification options passed through to the backend.

        Returns:
            This job, updated from the backend's answer.

        Raises:
            ValidationError: An argument is invalid; nothing was sent.
        """
        body = fail_body(error=error, retryable=retryable, push=push)
        self._update(self._jobs._post(f"/{quote_id(self.id)}/fail", body))
        return self

    def refresh(self) -> Self:
        """Read the job again from the backend and update this object."""
        self._update(self._jobs._get(f"/{quote_id(self.id)}"))
        return self


class AsyncJob(BaseJob):
    """A job on the backend, with awaitable methods that update it (see :class:`Job`)."""

    __slots__ = ()

    def __init__(self, data: Mapping[str, Any], jobs: AsyncJobsAPI) -> None:
        super().__init__(data)
        self._jobs = jobs

    async def set_progress(
        self,
        progress: float,
        /,
        *,
        message: str | None = None,
        stage: Stage | Mapping[str, Any] | None = None,
        queue: Queue | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        estimated_completion_at: datetime | str | None = None,
        push: bool | Mapping[str, Any] | None = None,
        stale_after: int | None = None,
    ) -> Self:
        """Report progress; see :meth:`Job.set_progress`."""
        body = progress_body(progress, message=message, stage=stage, queue=queue,
                             metadata=metadata, estimated_completion_at=estimated_completion_at,
                             push=push, stale_after=stale_after)
        self._update(await self._jobs._post(f"/{quote_id(self.id)}/progress", body))
        return self

    async def complete(
        self,
        *,
        result: JobResult | Mapping[str, Any] | None = None,
        message: str | None = None,
        push: bool | Mapping[str, Any] | None = None,
        live_activity: bool | Mapping[str, Any] | None = None,
    ) -> Self:
        """Mark the job completed; see :meth:`Job.complete`."""
        body = complete_body(result=result, message=message, push=push,
                             live_activity=live_activity)
        self._update(await self._jobs._post(f"/{quote_id(self.id)}/complete", body))
        return self

    async def fail(
        self,
        *,
        error: JobError | Mapping[str, Any],
        retryable: bool | None = None,
        push: bool | Mapping[str, Any] | None = None,
    ) -> Self:
        """Mark the job failed; see :meth:`Job.fail`."""
        body = fail_body(error=error, retryable=retryable, push=push)
        self._update(await self._jobs._post(f"/{quote_id(self.id)}/fail", body))
        return self

    async def refresh(self) -> Self:
        """Read the job again from the backend and update this object."""
        self._update(await self._jobs._get(f"/{quote_id(self.id)}"))
        return self


@dataclass(frozen=True, slots=True)
class JobPage(Generic[JobT]):
    """One page of a job listing.

    Attributes:
        jobs: The jobs on this page, newest first.
        next_cursor: Pass it as ``cursor=`` to get the next page; ``None`` on the last page.
    """

    jobs: list[JobT]
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class JobBatch(Generic[JobT]):
    """Several jobs read at once, as :meth:`~seenn.SeennClient.jobs.get_many` returns them.

    Attributes:
        jobs: The jobs found, in the order their ids were given (repeats once).
        missing: The ids that name no job the key may read (absent, expired, another
            app's, or for a user token another user's), in the order given.
    """

    jobs: list[JobT]
    missing: list[str]


@dataclass(frozen=True, slots=True)
class JobFamily(Generic[JobT]):
    """A parent job with one page of its children, as ``GET /jobs/{id}/children`` returns them.

    Attributes:
        parent: The parent job.
        children: Its children on this page, in ``child_index`` order.
        next_cursor: Pass it as ``cursor=`` to get the next page of children; ``None`` on
            the last page (and always from a backend that does not paginate children).
    """

    parent: JobT
    children: list[JobT]
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class BatchResult(Generic[JobT]):
    """What :meth:`~seenn.SeennClient.jobs.create_batch` made.

    Attributes:
        parent: The parent job, refreshed after its children were created.
        children: The child jobs, in the order of their titles.
    """

    parent: JobT
    children: list[JobT]


# Request bodies: validated here, before anything is sent. --------------------------

