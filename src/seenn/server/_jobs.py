"""What ``seenn serve`` does to jobs inside one store transaction.

``start_job`` creates a job (or answers again with the same one for a repeated client
id) and ``update_job`` applies progress, complete and fail; both link a child to its
parent and carry the change up to every ancestor: its children counts and, for a
declared parent, its progress and outcome, updated by difference from sums stored
with the parent (``_carry``), never by reading the siblings. Each checks its whole
body first with ``Fields`` so that a 400 names every bad field, and raises every
``HTTPError`` before it writes anything, with one exception: a running job found
past its stale limit is ended first (``end_stale``, failed with ``WORKER_LOST``), and
that stays written whatever the answer. ``_app`` commits the transaction of a
refused request to store its answer for ``Idempotency-Key`` replay. HTTP itself
(routing, keys, rate limits, replay, reading the body) belongs to ``_app``; these
functions see only a ``Transaction``, the app id and a parsed body.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from seenn._core.validation import (
    CHILD_PROGRESS_MODES,
    MAX_JOB_TYPE,
    MAX_MESSAGE,
    MAX_METADATA_BYTES,
    MAX_STALE_AFTER,
    MAX_TITLE,
    MAX_TOTAL_CHILDREN,
    MAX_TTL_SECONDS,
    MAX_USER_ID,
    MIN_STALE_AFTER,
    MIN_TTL_SECONDS,
    check_bool,
    check_choice,
    check_datetime,
    check_duration_ms,
    check_int,
    check_json,
    check_metadata,
    check_opt_text,
    check_progress,
    check_text,
    coerce_error,
    coerce_queue,
    coerce_result,
    coerce_stage,
    fail,
    format_datetime,
)
from seenn.errors import ValidationError
from seenn.server._errors import HTTPError
from seenn.server._eta import on_end, on_progress, start_state
from seenn.server._stale import StalePolicy
from seenn.server._store import Store
from seenn.server._transaction import FINISHED, StoredJob, Transaction, canonical_hash

TERMINAL = FINISHED
# A deeper tree is a mistake or an attack: every child change walks up all its ancestors.
MAX_DEPTH = 32
_WEIGHT_SCALE = 1_000_000
DEFAULT_TTL = MAX_TTL_SECONDS
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:~-]{0,254}")


@functools.lru_cache(maxsize=16)
def _now_iso(now: float) -> str:
    # Every write of a transaction (all the events of a batch) shares one ``tx.now``.
    return format_datetime(datetime.fromtimestamp(now, tz=timezone.utc))


def new_job_id() -> str:
    """Make a job id: ``job_`` and a time-ordered, random Crockford base32 string."""
    raw = int(time.time() * 1000).to_bytes(6, "big") + os.urandom(10)
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    number = int.from_bytes(raw, "big")
    return "job_" + "".join(alphabet[(number >> (5 * i)) & 31] for i in range(25, -1, -1))


class Fields:
    """Collects every field error of a body, so one 400 names them all."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def check(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ValidationError as error:
            details = error.details or {}
            self.errors.setdefault(str(details.get("field", name)),
                                   str(details.get("reason", error.message)))
            return None

    def check_all(self, rules: Mapping[str, Callable[[Any], Any]],
                  body: Mapping[str, Any]) -> dict[str, Any]:
        """Run each rule on its field of ``body`` (absent and null fields are skipped)."""
        values: dict[str, Any] = {}
        for name, rule in rules.items():
            value = body.get(name)
            if value is not None:
                values[name] = self.check(name, functools.partial(rule, value))
        return values

    def raise_if_any(self) -> None:
        if self.errors:
            first = next(iter(self.errors))
            raise HTTPError(400, "VALIDATION_ERROR", f"{first}: {self.errors[first]}",
                            {"field": first, "reason": self.errors[first],
                             "fields": dict(self.errors)})


def _reject(name: str, message: str) -> Any:
    fail(name, message)


def _stale_after(value: object) -> int:
    return check_int("staleAfterSeconds", value, minimum=MIN_STALE_AFTER,
                     maximum=MAX_STALE_AFTER)


def _passthrough(name: str, value: object) -> object:
    """Options the reference server accepts but does not act on (push, Live Activities)."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        fail(name, "must be a bool or an object")
    return check_json(name, value, max_bytes=4096)


def start_job(tx: Transaction, app_id: str, body: dict[str, Any], *,
              stale: StalePolicy | None = None) -> tuple[int, Any]:
    """Start a job of ``app_id`` from a ``POST /v1/jobs`` body: ``(status, job)``.

    Jobs met on the way (a job with the same id, the parent and its ancestors) are
    ended first if they are past their limit under ``stale`` (``None``: never).
    """
    f = Fields()
    job_id = f.check("id", lambda: _check_id(body.get("id")))
    job_type = f.check("jobType", lambda: check_text("jobType", body.get("jobType"),
                                                     max_len=MAX_JOB_TYPE))
    user_id = f.check("userId", lambda: check_text("userId", body.get("userId"),
                                                   max_len=MAX_USER_ID))
    title = f.check("title", lambda: check_text("title", body.get("title"),
                                                max_len=MAX_TITLE))
    optional: dict[str, Callable[[Any], Any]] = {
        "workflowId": lambda v: check_text("workflowId", v, max_len=MAX_JOB_TYPE),
        "metadata": lambda v: check_metadata(v) if isinstance(v, dict)
        else _reject("metadata", "must be a JSON object"),
        "queue": lambda v: coerce_queue(v).to_wire(),
        "stage": lambda v: coerce_stage(v).to_wire(),
        "estimatedCompletionAt": lambda v: check_datetime(
            v if isinstance(v, str) else _reject("estimatedCompletionAt", "must be a string"),
            "estimatedCompletionAt"),
        "estimatedDuration": lambda v: check_duration_ms(v, "estimatedDuration"),
        "ttlSeconds": lambda v: check_int("ttlSeconds", v, minimum=MIN_TTL_SECONDS,
                                          maximum=MAX_TTL_SECONDS),
        "parentJobId": lambda v: check_text("parentJobId", v, max_len=MAX_USER_ID),
        "childIndex": lambda v: check_int("childIndex", v, minimum=0,
                                          maximum=MAX_TOTAL_CHILDREN - 1),
        "totalChildren": lambda v: check_int("totalChildren", v, minimum=1,
                                             maximum=MAX_TOTAL_CHILDREN),
        "childProgressMode": lambda v: check_choice(v, "childProgressMode",
                                                    CHILD_PROGRESS_MODES),
        "staleAfterSeconds": _stale_after,
    }
    values = f.check_all(optional, body)
    if "childIndex" in values and "parentJobId" not in body:
        f.check("childIndex", lambda: _reject("childIndex", "needs parentJobId"))
    if "childProgressMode" in values and "totalChildren" not in values:
        f.check("childProgressMode",
                lambda: _reject("childProgressMode", "needs totalChildren"))
    f.raise_if_any()

    start_hash = canonical_hash(body)
    if job_id is not None:
        existing = _get(tx, job_id, stale)
        if existing is not None:
            if existing.start_hash != start_hash:
                raise HTTPError(409, "CONFLICT",
                                f"job {job_id} exists and was started with another body")
            return 200, existing.data
        if tx.has_children(job_id):
            # The id of an expired job whose children live on: a new job under it would
            # adopt them, and naming one of them as its parent would close a cycle.
            raise HTTPError(409, "CONFLICT",
                            f"job {job_id} has expired but its children have not: "
                            "its id is not free yet", {"field": "id"})
    now_iso = _now_iso(tx.now)
    job: dict[str, Any] = {
        "id": job_id or new_job_id(), "appId": app_id, "userId": user_id,
        "jobType": job_type, "title": title,
        "workflowId": values.get("workflowId", job_type),
        "status": "queued" if "queue" in values else "pending", "progress": 0,
        "createdAt": now_iso, "updatedAt": now_iso,
    }
    for name in ("metadata", "queue", "stage", "estimatedCompletionAt", "staleAfterSeconds"):
        if name in values:
            job[name] = values[name]
    if "estimatedDuration" in values and "estimatedCompletionAt" not in values:
        job["estimatedCompletionAt"] = _now_iso(tx.now + values["estimatedDuration"] / 1000)
    if "totalChildren" in values:
        job["children"] = {"total": values["totalChildren"], "completed": 0, "failed": 0,
                           "running": 0, "pending": 0}
        job["childProgressMode"] = values.get("childProgressMode", "average")
    if "parentJobId" in values:
        job["parent"] = _parent_link(tx, values["parentJobId"], values.get("childIndex"),
                                     stale)
    expires_at = tx.now + values.get("ttlSeconds", DEFAULT_TTL)
    tx.insert(job, start_hash=start_hash, expires_at=expires_at,
              eta=start_state(job, values, tx.now))
    if "parent" in job:
        _carry(tx, job["parent"]["parentJobId"], None, _share(job), expires_at, stale)
    return 201, job


def _parent_link(tx: Transaction, parent_id: str, index: int | None,
                 stale: StalePolicy | None) -> dict[str, Any]:
    parent = _get(tx, parent_id, stale)
    if parent is None:
        raise HTTPError(404, "NOT_FOUND", f"parent job {parent_id} not found",
                        {"field": "parentJobId"})
    if parent.data.get("status") in TERMINAL:
        raise HTTPError(409, "CONFLICT", f"parent job {parent_id} is already finished",
                        {"field": "parentJobId", "reason": "finished"})
    _check_depth(tx, parent)
    declared = parent.data.get("childProgressMode") is not None
    if index is None:
        last = tx.last_child_index(parent_id)
        index = 0 if last is None else last + 1
        if index >= MAX_TOTAL_CHILDREN:
            raise HTTPError(400, "VALIDATION_ERROR",
                            f"parentJobId: job {parent_id} has {MAX_TOTAL_CHILDREN} "
                            "children already", {"field": "parentJobId",
                                                 "reason": "too many children"})
    total = parent.data.get("children", {}).get("total", 0)
    if declared and index >= total:
        raise HTTPError(400, "VALIDATION_ERROR",
                        f"childIndex: must be below the parent's totalChildren ({total})",
                        {"field": "childIndex", "reason": "out of range"})
    if tx.child_index_taken(parent_id, index):
        raise HTTPError(409, "CONFLICT", f"parent {parent_id} already has child {index}",
                        {"field": "childIndex", "reason": "taken"})
    return {"parentJobId": parent_id, "childIndex": index}


def _check_depth(tx: Transaction, parent: StoredJob) -> None:
    """Refuse a child that would nest deeper than ``MAX_DEPTH`` levels of jobs."""
    levels, node = 2, parent  # the new job and its parent
    while node.parent_id is not None:
        above = tx.get(node.parent_id)
        if above is None:
            return
        levels, node = levels + 1, above
        if levels > MAX_DEPTH:
            raise HTTPError(400, "VALIDATION_ERROR",
                            f"parentJobId: jobs nest at most {MAX_DEPTH} levels deep",
                            {"field": "parentJobId",
                             "reason": f"jobs nest at most {MAX_DEPTH} levels deep"})


def _estimated_completion(value: object) -> str:
    if not isinstance(value, str):
        _reject("estimatedCompletionAt", "must be a string")
    return check_datetime(value, "estimatedCompletionAt")


def _message(value: object) -> str | None:
    return check_opt_text("message", value, max_len=MAX_MESSAGE)


def _metadata(value: object) -> Any:
    return check_metadata(value) if isinstance(value, dict) else _reject(
        "metadata", "must be a JSON object")


# The fields each update action takes, each with the rule that checks it; built once.
_UPDATE_RULES: dict[str, dict[str, Callable[[Any], Any]]] = {
    "progress": {
        "progress": check_progress,
        "message": _message,
        "stage": lambda v: coerce_stage(v).to_wire(),
        "queue": lambda v: coerce_queue(v).to_wire(),
        "metadata": _metadata,
        "estimatedCompletionAt": _estimated_completion,
        "staleAfterSeconds": _stale_after,
    },
    "complete": {
        "result": lambda v: coerce_result(v).to_wire(),
        "message": _message,
    },
    "fail": {
        "error": lambda v: coerce_error(v).to_wire(),
        "retryable": lambda v: check_bool(v, "retryable"),
    },
}
for _rules in _UPDATE_RULES.values():
    _rules["push"] = functools.partial(_passthrough, "push")
    _rules["liveActivity"] = functools.partial(_passthrough, "liveActivity")
del _rules


def update_job(tx: Transaction, action: str, job_id: str, body: dict[str, Any], *,
               stale: StalePolicy | None = None) -> tuple[int, Any]:
    """Apply ``progress``, ``complete`` or ``fail`` to a job: ``(status, job)``.

    A job past its limit under ``stale`` is ended first, so a late worker's call is a
    409 however soon after the limit it comes, and whether or not anyone looked.
    """
    f = Fields()
    rules = _UPDATE_RULES[action]
    if action != "complete":
        required = "progress" if action == "progress" else "error"
        if body.get(required) is None:
            f.errors[required] = "is required"
    # The body's own fields, looked up in the rules (most bodies carry two or three of
    # them): absent, null and unknown fields are skipped.
    values: dict[str, Any] = {}
    for name, value in body.items():
        rule = rules.get(name)
        if rule is None or value is None:
            continue
        try:
            values[name] = rule(value)
        except ValidationError as error:
            details = error.details or {}
            f.errors.setdefault(str(details.get("field", name)),
                                str(details.get("reason", error.message)))
    f.raise_if_any()

    stored = _get(tx, job_id, stale)
    if stored is None:
        raise HTTPError(404, "NOT_FOUND", f"job {job_id} not found")
    job = stored.data
    if job.get("status") in TERMINAL:
        raise HTTPError(409, "CONFLICT", f"job {job_id} is already {job['status']}")
    return 200, _apply(tx, stored, action, values, stale)


def _apply(tx: Transaction, stored: StoredJob, action: str, values: dict[str, Any],
           stale: StalePolicy | None) -> dict[str, Any]:
    """Write checked ``values`` of an action to an unfinished job, and carry it up."""
    job = stored.data
    # What the job added to its parent's sums, to carry the difference up.
    before = _share(job) if stored.parent_id is not None else None
    now_iso = _now_iso(tx.now)
    if action == "progress":
        if "metadata" in values:
            f = Fields()
            merged = {**job.get("metadata", {}), **values["metadata"]}
            f.check("metadata", lambda: check_json("metadata", merged,
                                                   max_bytes=MAX_METADATA_BYTES))
            f.raise_if_any()
            job["metadata"] = merged
        for name in ("message", "stage", "queue", "estimatedCompletionAt",
                     "staleAfterSeconds"):
            if name in values:
                job[name] = values[name]
        job["progress"] = values["progress"]
        # A queue puts the job in line, even a running one: a worker that hands
        # it back for a retry says where it waits (and a waiting job never goes stale).
        job["status"] = "queued" if "queue" in values else "running"
    elif action == "complete":
        for name in ("result", "message"):
            if name in values:
                job[name] = values[name]
        job.update(status="completed", progress=100, completedAt=now_iso)
    else:
        job.update(status="failed", error=values["error"], completedAt=now_iso)
        if "retryable" in values:
            job["retryable"] = values["retryable"]
    if job["status"] != "queued":
        job.setdefault("startedAt", now_iso)
    job["updatedAt"] = now_iso
    eta = None
    if action == "progress":
        eta = on_progress(tx, stored, job, values)
    else:
        on_end(tx, stored, job)
    tx.update(job, seq=stored.seq, eta=eta)
    if stored.parent_id is not None:
        _carry(tx, stored.parent_id, before, _share(job), None, stale)
    return job


def _get(tx: Transaction, job_id: str, stale: StalePolicy | None) -> StoredJob | None:
    """The live job with this id, ended first if it is past its stale limit."""
    stored = tx.get(job_id)
    if stored is not None and stale is not None and stale.is_stale(stored, tx.now):
        _end(tx, stored, stale)
        stored = tx.get(job_id)
    return stored


def _end(tx: Transaction, stored: StoredJob, stale: StalePolicy) -> None:
    _apply(tx, stored, "fail", {"error": coerce_error(stale.error(stored)).to_wire()}, stale)


def end_stale(tx: Transaction, job_id: str, stale: StalePolicy) -> bool:
    """End the job as ``failed`` with ``WORKER_LOST`` if it is past its stale limit.

    It is ended exactly as ``POST .../fail`` would end it (``completedAt``, the parent's
    counts and progress), in the caller's write transaction. A job that is not
    running, was written since, or was ended already is left alone, so racing
    sweeps and reads end a job once.

    Returns:
        Whether this call ended the job.
    """
    stored = tx.get(job_id)
    if stored is None or not stale.is_stale(stored, tx.now):
        return False
    _end(tx, stored, stale)
    return True


def sweep(store: Store, stale: StalePolicy, *, batch: int = 100, rounds: int = 100) -> int:
    """End every job of the database past its stale limit.

    Candidates come from the store's index a ``batch`` at a time, and each app's are
    ended in one short write transaction, so a sweep never holds the write lock for
    long. At most ``rounds`` batches: what is left waits for the next sweep.

    Returns:
        How many candidates this sweep ended (an ancestor ended on the way, as its
        child's change reached it, is not counted).
    """
    ended = 0
    for _ in range(rounds):
        found = store.stale_jobs(now=store.clock(), default=stale.default, since=stale.since,
                                 limit=batch)
        by_app: dict[str, list[str]] = {}
        for app_id, job_id in found:
            by_app.setdefault(app_id, []).append(job_id)
        progress = 0
        for app_id, job_ids in by_app.items():
            progress += store.transact(app_id, functools.partial(_end_all, job_ids, stale))
        ended += progress
        if not progress:
            break
    return ended


def _end_all(job_ids: list[str], stale: StalePolicy, tx: Transaction) -> int:
    return sum(end_stale(tx, job_id, stale) for job_id in job_ids)


def _share(job: Mapping[str, Any]) -> tuple[str, int, int]:
    """What a child adds to its parent's aggregate: bucket, progress and weight.

    The progress counts 100 once the child is finished; the weight is in millionths.
    """
    status = job.get("status")
    bucket = ("completed" if status == "completed" else
              "failed" if status in ("failed", "cancelled") else
              "running" if status == "running" else "pending")
    done = 100 if status in TERMINAL else int(job.get("progress", 0))
    # Whole millionths keep the weighted sums exact however often they change.
    return bucket, done, max(1, round(_weight(job) * _WEIGHT_SCALE))


def _empty_aggregate() -> dict[str, Any]:
    return {"n": 0, "completed": 0, "failed": 0, "running": 0, "pending": 0,
            "done": 0, "weight": 0, "weightedDone": 0, "expiresAt": None}


def _count(aggregate: dict[str, Any], share: tuple[str, int, int], sign: int) -> None:
    bucket, done, weight = share
    aggregate[bucket] += sign
    aggregate["done"] += sign * done
    aggregate["weight"] += sign * weight
    aggregate["weightedDone"] += sign * weight * done


def _add_child(aggregate: dict[str, Any], share: tuple[str, int, int],
               expires_at: float) -> None:
    _count(aggregate, share, 1)
    aggregate["n"] += 1
    soonest = aggregate["expiresAt"]
    aggregate["expiresAt"] = expires_at if soonest is None else min(soonest, expires_at)


def _scan(tx: Transaction, parent_id: str) -> dict[str, Any]:
    """A parent's aggregate built from all its live children (see ``_carry`` for when)."""
    aggregate = _empty_aggregate()
    for child, expires_at in tx.children(parent_id):
        _add_child(aggregate, _share(child), expires_at)
    return aggregate


def _carry(tx: Transaction, parent_id: str, before: tuple[str, int, int] | None,
           after: tuple[str, int, int], expires_at: float | None,
           stale: StalePolicy | None) -> None:
    """Apply a child's change to its parent, and the parent's change to its own parent.

    ``before`` is the child's share before the change (``None`` for a new child, which
    then expires at ``expires_at``). Each level costs a few indexed reads and one write,
    whatever the number of siblings: the parent's aggregate is updated by the difference.
    It is built from all the children instead only when there is none yet (a parent's
    first child, or a database written by a version without aggregates) or when one
    of the children counted in it has expired since, which drops that child out.
    """
    for _ in range(MAX_DEPTH):
        # A parent past its own stale limit is ended (and that carried up) first.
        stored = _get(tx, parent_id, stale)
        if stored is None:
            return
        parent = stored.data
        parent_before = _share(parent)
        aggregate = stored.aggregate
        soonest = None if aggregate is None else aggregate["expiresAt"]
        if aggregate is None or (soonest is not None and tx.now >= soonest):
            aggregate = _scan(tx, parent_id)
        elif before is None:
            _add_child(aggregate, after, tx.now if expires_at is None else expires_at)
        else:
            _count(aggregate, before, -1)
            _count(aggregate, after, 1)
        _follow_children(tx, parent_id, parent, aggregate)
        tx.update(parent, seq=stored.seq, aggregate=aggregate)
        if stored.parent_id is None:
            return
        parent_id, before, after, expires_at = (stored.parent_id, parent_before,
                                                _share(parent), None)


def _follow_children(tx: Transaction, parent_id: str, parent: dict[str, Any],
                     aggregate: Mapping[str, Any]) -> None:
    """Set a parent's children counts and, for a declared parent, its progress and status."""
    counts = {name: aggregate[name] for name in ("completed", "failed", "running", "pending")}
    mode = parent.get("childProgressMode")
    count = aggregate["n"]
    total = parent.get("children", {}).get("total", 0) if mode else count
    total = max(total, count)
    parent["children"] = {"total": total, **counts}
    now_iso = _now_iso(tx.now)
    if mode and parent.get("status") not in TERMINAL:
        parent["progress"] = _parent_progress(tx, parent_id, mode, aggregate, total)
        done = counts["completed"] + counts["failed"]
        if done or counts["running"]:
            parent.setdefault("startedAt", now_iso)
        if total and done >= total:
            parent["completedAt"] = now_iso
            if counts["failed"]:
                parent["status"] = "failed"
                parent["error"] = {"code": "CHILDREN_FAILED",
                                   "message": f"{counts['failed']} of {total} children failed"}
            else:
                parent.update(status="completed", progress=100)
        elif done or counts["running"]:
            parent["status"] = "running"
    parent["updatedAt"] = now_iso


def _parent_progress(tx: Transaction, parent_id: str, mode: str,
                     aggregate: Mapping[str, Any], total: int) -> int:
    """A declared parent's progress from its aggregate; see docs/self-hosted.md."""
    if not total:
        return 0
    if mode == "weighted":
        missing = total - aggregate["n"]
        return int(aggregate["weightedDone"] // (aggregate["weight"] + missing * _WEIGHT_SCALE))
    if mode == "sequential":
        finished = int(aggregate["completed"] + aggregate["failed"])
        first_open = tx.first_open_child(parent_id)
        current = int(first_open.get("progress", 0)) if first_open else 0
        return (finished * 100 + current) // total
    return int(aggregate["done"]) // total


def _weight(child: Mapping[str, Any]) -> float:
    weight = (child.get("metadata") or {}).get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        return 1.0
    return float(min(weight, 1e6))


def _check_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        fail("id", "must be 1 to 255 characters of letters, digits and _ . : ~ -, "
                   "starting with a letter or digit")
    return value
