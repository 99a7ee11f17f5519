"""Value objects shared by the REST client and the instrumentation.

They are frozen, slotted dataclasses. Building one directly does not validate
it; every API that accepts one (or the equivalent plain dict) validates it
through :mod:`seenn._core.validation` before anything is sent or changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "ChildProgressMode",
    "ChildrenStats",
    "JobError",
    "JobResult",
    "JobStatus",
    "ParentInfo",
    "Queue",
    "Stage",
    "UserToken",
]

JobStatus = Literal["pending", "queued", "running", "completed", "failed", "cancelled"]
ChildProgressMode = Literal["average", "weighted", "sequential"]

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Stage:
    """Where a job is in a fixed sequence of named steps.

    Attributes:
        name: The stage's name, e.g. ``"render"``.
        current: The 1-based number of this stage.
        total: How many stages the job has.
        description: An optional human-readable description.
    """

    name: str
    current: int
    total: int
    description: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """Return the camelCase JSON object the protocol uses."""
        wire: dict[str, Any] = {"name": self.name, "current": self.current, "total": self.total}
        if self.description is not None:
            wire["description"] = self.description
        return wire

    @classmethod
    def from_wire(cls, data: object) -> Stage | None:
        """Read a stage from a backend response, leniently (``None`` if unusable)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            return None
        return cls(
            name=data["name"],
            current=_opt_int(data.get("current")) or 0,
            total=_opt_int(data.get("total")) or 0,
            description=_opt_str(data.get("description")),
        )


@dataclass(frozen=True, slots=True)
class Queue:
    """A job's place in a waiting line.

    Attributes:
        position: The job's position (0 means it is next).
        total: How many jobs are in the line, if known.
        queue_name: The name of the line, if it has one.
    """

    position: int
    total: int | None = None
    queue_name: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """Return the camelCase JSON object the protocol uses."""
        wire: dict[str, Any] = {"position": self.position}
        if self.total is not None:
            wire["total"] = self.total
        if self.queue_name is not None:
            wire["queueName"] = self.queue_name
        return wire

    @classmethod
    def from_wire(cls, data: object) -> Queue | None:
        """Read a queue from a backend response, leniently (``None`` if unusable)."""
        if not isinstance(data, Mapping) or _opt_int(data.get("position")) is None:
            return None
        return cls(
            position=data["position"],
            total=_opt_int(data.get("total")),
            queue_name=_opt_str(data.get("queueName")),
        )


@dataclass(frozen=True, slots=True)
class JobResult:
    """What a finished job produced.

    Attributes:
        type: The kind of result, e.g. ``"video"``.
        url: Where the result can be fetched.
        data: Any further JSON-serialisable data.
    """

    type: str | None = None
    url: str | None = None
    data: Any = None

    def to_wire(self) -> dict[str, Any]:
        """Return the camelCase JSON object the protocol uses."""
        wire: dict[str, Any] = {}
        if self.type is not None:
            wire["type"] = self.type
        if self.url is not None:
            wire["url"] = self.url
        if self.data is not None:
            wire["data"] = self.data
        return wire

    @classmethod
    def from_wire(cls, data: object) -> JobResult | None:
        """Read a result from a backend response, leniently (``None`` if unusable)."""
        if not isinstance(data, Mapping):
            return None
        return cls(type=_opt_str(data.get("type")), url=_opt_str(data.get("url")),
                   data=data.get("data"))


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job failed.

    Attributes:
        code: A stable, machine-readable code, e.g. ``"RENDER_FAILED"``.
        message: A human-readable description.
        details: Optional JSON-serialisable details.
    """

    code: str
    message: str
    details: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        """Return the camelCase JSON object the protocol uses."""
        wire: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            wire["details"] = self.details
        return wire

    @classmethod
    def from_wire(cls, data: object) -> JobError | None:
        """Read an error from a backend response, leniently (``None`` if unusable)."""
        if not isinstance(data, Mapping):
            return None
        details = data.get("details")
        return cls(
            code=_opt_str(data.get("code")) or "UNKNOWN",
            message=_opt_str(data.get("message")) or "",
            details=dict(details) if isinstance(details, Mapping) else None,
        )


@dataclass(frozen=True, slots=True)
class ParentInfo:
    """The parent of a child job.

    Attributes:
        parent_job_id: The parent job's id.
        child_index: This child's 0-based index among its siblings.
    """

    parent_job_id: str
    child_index: int

    @classmethod
    def from_wire(cls, data: object) -> ParentInfo | None:
        """Read parent info from a backend response, leniently (``None`` if unusable)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("parentJobId"), str):
            return None
        return cls(parent_job_id=data["parentJobId"],
                   child_index=_opt_int(data.get("childIndex")) or 0)


@dataclass(frozen=True, slots=True)
class ChildrenStats:
    """How a parent job's children are doing.

    Attributes:
        total: How many children the parent expects.
        completed: Children that completed.
        failed: Children that failed.
        running: Children that are running.
        pending: Children that have not started.
    """

    total: int
    completed: int = 0
    failed: int = 0
    running: int = 0
    pending: int = 0

    @classmethod
    def from_wire(cls, data: object) -> ChildrenStats | None:
        """Read children stats from a backend response, leniently (``None`` if unusable)."""
        if not isinstance(data, Mapping):
            return None
        return cls(
            total=_opt_int(data.get("total")) or 0,
            completed=_opt_int(data.get("completed")) or 0,
            failed=_opt_int(data.get("failed")) or 0,
            running=_opt_int(data.get("running")) or 0,
            pending=_opt_int(data.get("pending")) or 0,
        )


@dataclass(frozen=True, slots=True)
class UserToken:
    """A read token for one user's jobs, minted with a secret key (``POST /tokens``).

    Your backend mints one for the signed-in user and hands it to that user's app,
    which polls with it as its key: it reads and lists that user's jobs only, until
    it expires, and never writes.

    Attributes:
        token: The token (``ut_…``), a credential: ``repr()`` never shows it.
        expires_at: When the backend stops accepting it.
    """

    token: str = field(repr=False)
    expires_at: datetime

    def __repr__(self) -> str:
        return f"UserToken(token='{self.token[:3]}…', expires_at={self.expires_at!r})"
