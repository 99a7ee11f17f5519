"""seenn: live state of long-running jobs, from the code doing the work to the people waiting.

Two ways in, one data model:

* instrumentation (``seenn.track``, ``@seenn.job``) that hands every job change to
  exporters without slowing the tracked code;
* a REST client (:class:`SeennClient`, :class:`AsyncSeennClient`) for any
  Seenn-compatible backend.
"""

from seenn import propagation as _propagation  # noqa: F401 (registers hand_off)
from seenn._client.client import AsyncJobs, AsyncSeennClient, Jobs, SeennClient
from seenn._client.eta import EtaStageStats, EtaStats
from seenn._client.resources import AsyncJob, BatchResult, Job, JobBatch, JobFamily, JobPage
from seenn._core.eta import Eta
from seenn._core.events import JobEvent
from seenn._core.models import (
    ChildrenStats,
    JobError,
    JobResult,
    ParentInfo,
    Queue,
    Stage,
    UserToken,
)
from seenn._instrumentation import tracker as _tracker
from seenn._instrumentation.job import StageScope, TrackedJob
from seenn._instrumentation.tracker import Tracker
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
from seenn.exporters import _setup
from seenn.propagation import DeferredJob, defer

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
    "DeferredJob",
    "Eta",
    "EtaStageStats",
    "EtaStats",
    "Job",
    "JobBatch",
    "JobError",
    "JobEvent",
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
    "StageScope",
    "TrackedJob",
    "Tracker",
    "UserToken",
    "ValidationError",
    "__version__",
    "configure",
    "current_job",
    "defer",
    "force_flush",
    "iterate",
    "job",
    "shutdown",
    "stage",
    "track",
    "with_current_job",
]

# The seam between instrumentation and the exporters, wired here at the top:
# configure() builds its pipeline through it. (seenn.propagation, imported
# above, plugs in the carrier format of TrackedJob.hand_off() the same way.)
_tracker.set_pipeline_builder(_setup.build_pipeline)

# The facade: bound methods of one default tracker. configure() changes this
# tracker in place, so a `from seenn import track` made earlier stays valid.
_default_tracker = _tracker.default_tracker()
configure = _default_tracker.configure
track = _default_tracker.track
job = _default_tracker.job
stage = _default_tracker.stage
iterate = _default_tracker.iterate
current_job = _default_tracker.current_job
with_current_job = _default_tracker.with_current_job
force_flush = _default_tracker.force_flush
shutdown = _default_tracker.shutdown
