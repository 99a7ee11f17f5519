"""The states of a tracked job: one small int per job, and the status read off it.

A job's state is one int, and its status is read off it (``STATUS``): the
unconfigured path then stores one attribute per transition, not two. The
numbering makes each question one comparison (see the comments below).
"""

from __future__ import annotations

from seenn._core.models import JobStatus

__all__ = ["COMPLETED", "FAILED", "HANDED", "HANDED_QUEUED", "NEW", "NEW_QUEUED",
           "NEW_WITH_QUEUE", "QUEUED", "RUNNING", "STATUS"]

# The questions, each one comparison:
#   not started: state <= 0   live here: 0 < state < 3   handed off: 2 < state < 5
#   ended: state >= 5
# and a job that is not NEW has a queue or has started (the one test __enter__ makes).
NEW = 0  # made without a queue, not started: "pending"
RUNNING = 1
QUEUED = 2  # started, and the last update gave a queue
HANDED = 3  # running, but continued elsewhere: leaving the block does not complete it
HANDED_QUEUED = 4
COMPLETED = 5
FAILED = 6
NEW_QUEUED = -1  # not started, but set_progress(queue=...) said it waits in a queue
NEW_WITH_QUEUE = -2  # made with a queue (track(queue=...)), not started: "pending"

STATUS: tuple[JobStatus, ...] = (
    "pending", "running", "queued", "running", "queued", "completed", "failed",
    "pending",  # STATUS[-2]: NEW_WITH_QUEUE
    "queued",  # STATUS[-1]: NEW_QUEUED
)
"""The status of each state, by index."""
