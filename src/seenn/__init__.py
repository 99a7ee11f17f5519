"""seenn: live state of long-running jobs, from the code doing the work to the people waiting.

Two ways in, one data model:

* instrumentation (``seenn.track``, ``@seenn.job``) that hands every job change to
  exporters without slowing the tracked code;
* a REST client (:class:`SeennClient`, :class:`AsyncSeennClient`) for any
  Seenn-compatible backend.
"""

from seenn._models import ChildrenStats, JobError, JobResult, ParentInfo, Queue, Stage
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
    "AuthenticationError",
    "ChildrenStats",
    "ConflictError",
    "JobError",
    "JobResult",
    "NotFoundError",
    "ParentInfo",
    "Queue",
    "RateLimitError",
    "SeennError",
    "ServerError",
    "Stage",
    "ValidationError",
    "__version__",
]
