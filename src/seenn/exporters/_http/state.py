"""The records of delivery: each job's queue and state, what outlives it, and the counters.

``Job``, ``Pending`` and ``Beat`` are guarded by the exporter's lock;
``DeliveryStats`` is what ``HTTPExporter.stats`` reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from seenn._core.events import JobEvent
    from seenn._core.models import Stage

__all__ = ["Beat", "DeliveryStats", "Job", "Pending", "remember"]


@dataclass
class DeliveryStats:
    """Counters of an :class:`HTTPExporter` (read ``exporter.stats``).

    Attributes:
        accepted: Events taken by ``export()``.
        delivered: Events the backend acknowledged.
        requests: HTTP calls made (attempts included; a ``POST /v1/events`` carrying
            many events counts once).
        batches: ``POST /v1/events`` calls answered, each carrying the calls of many
            jobs (see ``max_batch_events``).
        retries: Attempts that failed and were retried.
        coalesced: Progress events replaced by a newer one before they were sent.
        rejected: Events the backend refused for good (400/401/403/404/409) and
            events dropped because their job's start was refused.
        dropped: Events dropped because ``max_pending_jobs`` jobs were waiting in
            memory and there was no outbox to hold them (each drop also makes the
            next ``force_flush()`` return ``False``).
        lost: Events given up on after ``delivery_timeout`` or at shutdown (they,
            too, make the next ``force_flush()`` return ``False``).
        replayed: Events read back from the outbox at start, and events adopted
            from the outbox file of a process that ended.
        spilled: Events kept in the outbox only while memory was full, and read
            back from there once there was room (not lost).
        heartbeats: Heartbeat calls the backend acknowledged (one per heartbeat,
            however many attempts it took). Heartbeats are not events: they are
            not in ``accepted`` or ``delivered``, but their attempts are in
            ``requests`` and ``retries``.
        eta_fetches: ``GET /v1/eta/{jobType}`` calls made for the ETA prior (see
            ``eta_history_interval``); not in ``requests``.
    """

    accepted: int = 0
    delivered: int = 0
    requests: int = 0
    batches: int = 0
    retries: int = 0
    coalesced: int = 0
    rejected: int = 0
    dropped: int = 0
    lost: int = 0
    replayed: int = 0
    spilled: int = 0
    heartbeats: int = 0
    eta_fetches: int = 0


_MAX_REMEMBERED = 100_000


def remember(memory: dict[str, Any], job_id: str, value: Any = None) -> None:
    """Set ``memory[job_id]``, forgetting the oldest half past ``_MAX_REMEMBERED``."""
    memory[job_id] = value
    if len(memory) > _MAX_REMEMBERED:
        for old in list(memory)[:_MAX_REMEMBERED // 2]:
            del memory[old]


@dataclass(slots=True)
class Pending:
    event: JobEvent
    accepted: float
    attempts: int = 0
    key_suffix: str = ""  # "p": the progress call made from a terminal event; "h<n>": a heartbeat
    resumed: bool = False  # a resumed job's first progress call (or what replaced it)
    renewals: int = 0  # 404s waited out: each retry after one goes under a new key


@dataclass(slots=True)
class Job:
    id: str
    parent_id: str | None = None
    # A list, not a deque: a job rarely has more than three events waiting (progress is
    # coalesced), and an empty deque costs 600 bytes, a third of a waiting job.
    queue: list[Pending] = field(default_factory=list)
    busy: bool = False  # a delivery thread is sending the head event
    scheduled: bool = False  # in the ready queue or on a timer
    due: float = 0.0  # the head may not be sent before this (retry or progress rate)
    started_acked: bool = False
    server_id: str | None = None
    last_progress: float = float("-inf")
    dependents: list[str] = field(default_factory=list)
    shown: tuple[int, Stage | None, str | None] = (0, None, None)  # what the backend will show
    metadata: Mapping[str, Any] | None = None  # the metadata object last filed for the backend
    finished: bool = False  # its terminal event was handled
    beat: Beat | None = None  # live in this process: heartbeats when quiet


@dataclass(slots=True)
class Beat:
    """What the heartbeat of a job live in this process needs, kept while it is quiet.

    A job has one from its start (or its resume) here until it ends, is handed
    off, or the backend refuses or no longer knows it.
    """

    sequence: int  # of the job's latest event: the base of the heartbeat's key
    running: bool  # its latest event says "running" (not "queued")
    # The progress, stage and message of the last call the backend took (or may have
    # taken: one given up on), which a heartbeat repeats; None until there is one.
    shown: tuple[int, Stage | None, str | None] | None = None
    count: int = 0  # heartbeats made since `sequence`: "<job id>.<sequence>h<count>"
    due: float = 0.0  # when the next heartbeat is due, if the job stays quiet
    timer: int = 0  # the sequence number of its entry in the timer heap (0: none)
    implied: int = 0  # hand-offs a resume here implied, whose on_hand_off is still to come
