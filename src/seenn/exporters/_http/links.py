"""Parents and children on the wire: the order of their calls, and links the backend refuses.

A backend knows a child only if its parent exists and has not ended. So:

* a child's start waits for its parent's start to be acknowledged (when both
  are in this exporter);
* a parent's end waits for the starts of its children filed before it (jobs
  go out concurrently: the end could overtake them, and the backend would then
  refuse the children);
* a child whose link the backend refuses anyway (its parent unknown after a
  minute, since that start may come from another process; finished; nested
  too deep; its index taken by an earlier attempt's child) is started on its
  own rather than lost.

Everything here runs under the exporter's lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from seenn.errors import ConflictError, NotFoundError, SeennError, ValidationError

if TYPE_CHECKING:
    from seenn._core.events import JobEvent
    from seenn._core.pipeline import RateLimitedLog
    from seenn.exporters._http.state import DeliveryStats, Job, Pending

__all__ = ["Links", "refuses_parent"]


class Links:
    """The parent/child half of ``DeliveryCore``."""

    stats: DeliveryStats
    _jobs: dict[str, Job]
    _log: RateLimitedLog

    def _schedule(self, job: Job) -> None:
        raise NotImplementedError  # DeliveryCore's

    def _reset_links(self) -> None:
        # Parent id -> its children whose start is filed but not settled.
        self._opening: dict[str, set[str]] = {}

    def _note_child(self, job: Job) -> None:
        """A child's start is filed: its parent's end waits for it."""
        if job.parent_id is not None:
            self._opening.setdefault(job.parent_id, set()).add(job.id)

    def _waits_for_family(self, job: Job) -> bool:
        """Whether the job's head event must wait for another job's start."""
        head = job.queue[0].event
        if head.is_terminal and job.id in self._opening:
            return True  # rescheduled by _child_settled
        if head.kind == "started" and job.parent_id is not None:
            parent = self._jobs.get(job.parent_id)
            if (parent is not None and parent.queue and not parent.started_acked
                    and parent.queue[0].event.kind == "started"):
                if job.id not in parent.dependents:
                    parent.dependents.append(job.id)
                return True
        return False

    def _child_settled(self, job: Job) -> None:
        """A child's start is settled (acknowledged or given up): its parent may end."""
        parent_id = job.parent_id
        if parent_id is None or parent_id not in self._opening:
            return
        waiting = self._opening[parent_id]
        waiting.discard(job.id)
        if not waiting:
            del self._opening[parent_id]
            parent = self._jobs.get(parent_id)
            if parent is not None and parent.queue and not parent.busy \
                    and not parent.scheduled:
                self._schedule(parent)

    def _forget_children(self, job: Job) -> None:
        """The job will not end here (dropped): nothing waits for its children."""
        self._child_settled(job)
        self._opening.pop(job.id, None)

    def _unlink(self, job: Job, pending: Pending, error: SeennError) -> None:
        """Start a child on its own: the backend refused the link to its parent."""
        self.stats.requests += 1
        self.stats.retries += 1
        self._log.warning("unlinked", "seenn: HTTP exporter: job %s starts without its parent "
                          "%s, which the backend refused: %s", job.id, job.parent_id, error)
        self._child_settled(job)  # its parent need not wait for it any more
        job.parent_id = None
        pending.renewals += 1  # another body: another key
        job.due = 0.0


def refuses_parent(error: SeennError, event: JobEvent, job: Job) -> bool:
    """Whether the backend refused a child's start for its link to its parent."""
    details = error.details
    return (event.kind == "started" and job.parent_id is not None
            and isinstance(error, (NotFoundError, ConflictError, ValidationError))
            and isinstance(details, Mapping)
            and details.get("field") in ("parentJobId", "childIndex"))
