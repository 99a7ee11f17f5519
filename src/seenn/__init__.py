"""seenn: live state of long-running jobs, from the code doing the work to the people waiting.

Two ways in, one data model:

* instrumentation (``seenn.track``, ``@seenn.job``) that hands every job change to
  exporters without slowing the tracked code;
* a REST client (:class:`SeennClient`, :class:`AsyncSeennClient`) for any
  Seenn-compatible backend.
"""

from seenn._client import AsyncJobs, AsyncSeennClient, Jobs, SeennClient
from seenn._models import ChildrenStats, JobError, JobResult, ParentInfo, Queue, Stage
from seenn._rest import AsyncJob, BatchResult, Job, JobFamily, JobPage
from seenn._version import __version__
from seenn.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    RateLimitError,
    SeennError,
    ServerError,
    ValidationError,
)

__all__ = [
    "APIConnectionError",
    "APITimeoutError",
    "AsyncJob",
    "AsyncJobs",
    "AsyncSeennClient",
    "AuthenticationError",
    "BatchResult",
    "ChildrenStats",
    "ConflictError",
    "Job",
    "JobError",
    "JobFamily",
    "JobPage",
    "JobResult",
    "Jobs",
    "NotFoundError",
    "ParentInfo",
    "Queue",
    "RateLimitError",
    "SeennClient",
    "SeennError",
    "ServerError",
    "Stage",
    "ValidationError",
    "__version__",
]
