"""Writes with their idempotency keys: one call, or many job events in one transaction.

``apply_write`` is what every write does inside its ``Store.write`` transaction: replay
the stored answer of an ``Idempotency-Key`` seen before (or refuse the key's reuse for
another request), else run ``start_job`` or ``update_job`` and store the answer under
the key. The single endpoints (``POST /v1/jobs``, ``.../progress``, ``.../complete``,
``.../fail``) make one such write; ``POST /v1/events`` (``apply_events``) makes one per
event, in order, each inside a savepoint, all in one transaction. An event is hashed
exactly as its single call would be, so a key first used in a batch replays the same
answer to a single call, and the other way round.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from seenn.server._errors import HTTPError
from seenn.server._jobs import start_job, update_job
from seenn.server._json import loads
from seenn.server._stale import StalePolicy
from seenn.server._transaction import Transaction, canonical_hash

logger = logging.getLogger("seenn.server")

__all__ = ["DEFAULT_MAX_EVENTS", "EVENT_TYPES", "MAX_EVENTS_LIMIT", "MAX_KEY_CHARS", "Applied",
           "Event", "apply_events", "apply_write", "check_events", "check_key"]

DEFAULT_MAX_EVENTS = 500
MAX_EVENTS_LIMIT = 10_000  # the most ``max_events`` may be set to
MAX_KEY_CHARS = 255
# Event type -> the route of the single call it stands for (its second part is the job id).
EVENT_TYPES = {"start": "list", "progress": "progress", "complete": "complete",
               "fail": "fail"}
_MAX_FIELD_ERRORS = 20
# The event types whose events name their job (all but start).
_UPDATES = frozenset(kind for kind in EVENT_TYPES if kind != "start")


# Applied and Event are not frozen, though never changed after they are made: a
# frozen dataclass's __init__ costs four times as much, and a batch makes one of each
# per event.
@dataclass(slots=True)
class Applied:
    """The outcome of one write: its answer, and whether it was replayed or refused."""

    status: int
    body: Any
    replayed: bool = False
    failure: HTTPError | None = None


@dataclass(slots=True)
class Event:
    """One checked event of a batch: the single call's route, its body and its key."""

    route: tuple[str, ...]
    body: dict[str, Any]
    key: str


def check_key(raw: object, field: str) -> str:
    """An idempotency key, trimmed (empty: none); 400 naming ``field`` if too long or NUL."""
    key = raw.strip() if isinstance(raw, str) else ""
    if len(key) > MAX_KEY_CHARS or "\x00" in key:
        reason = f"at most {MAX_KEY_CHARS} characters, no NUL"
        raise HTTPError(400, "VALIDATION_ERROR", f"{field}: {reason}",
                        {"field": field, "reason": reason})
    return key


def apply_write(tx: Transaction, app_id: str, route: tuple[str, ...], body: dict[str, Any],
                key: str, stale: StalePolicy | None) -> Applied:
    """Make one write (``route`` as ``_requests.route`` names it) under its idempotency key.

    A refusal (``HTTPError``) is an answer like any other: it is stored under the key
    and returned as ``failure``; ``_jobs`` raises it before writing anything but the
    end of a job found past its stale limit, which stands whatever the answer.
    """
    request_hash = canonical_hash([list(route), body]) if key else ""
    if key:
        earlier = tx.idempotent(key)
        if earlier is not None:
            if earlier[0] != request_hash:
                error = HTTPError(409, "IDEMPOTENCY_KEY_REUSED",
                                  "this Idempotency-Key was used for another request")
                return Applied(409, error.response()[1], failure=error)
            return Applied(earlier[1], loads(earlier[2]), replayed=True)
    failure: HTTPError | None = None
    try:
        if route[0] == "list":
            status, answer = start_job(tx, app_id, body, stale=stale)
        else:
            status, answer = update_job(tx, route[0], route[1], body, stale=stale)
    except HTTPError as error:
        failure = error
        status, answer, _ = error.response()
    if key:
        tx.remember(key, request_hash, status, tx.dumped(answer))
    return Applied(status, answer, failure=failure)


def check_events(body: Mapping[str, Any], max_events: int) -> list[Event]:
    """The events of a ``POST /v1/events`` body, checked whole before anything is written.

    Raises:
        HTTPError: 400 ``VALIDATION_ERROR`` naming every bad field (``events``,
            ``events.3.type``, ...), up to twenty of them.
    """
    raw = body.get("events")
    if not isinstance(raw, list):
        _refuse({"events": "is required: a list of events"})
    if not 1 <= len(raw) <= max_events:
        _refuse({"events": f"must hold 1 to {max_events} events, got {len(raw)}"})
    errors: dict[str, str] = {}
    events: list[Event] = []
    for index, item in enumerate(raw):
        if type(item) is dict:
            kind = item.get("type")
            event_body = item.get("body")
            job_id = item.get("jobId")
            raw_key = item.get("idempotencyKey")
            # The common event, checked in one expression; anything else is looked at
            # field by field below, to name each fault.
            if (type(kind) is str and kind in _UPDATES and type(event_body) is dict
                    and type(job_id) is str and 1 <= len(job_id) <= 255
                    and (raw_key is None or (type(raw_key) is str
                                             and len(raw_key) <= MAX_KEY_CHARS
                                             and "\x00" not in raw_key))):
                if not errors:
                    events.append(Event((EVENT_TYPES[kind], job_id), event_body,
                                        raw_key.strip() if raw_key else ""))
                continue
        if not _check_event(index, item, errors, events):
            break
    if errors:
        _refuse(errors)
    return events


def _check_event(index: int, item: object, errors: dict[str, str],
                 events: list[Event]) -> bool:
    """Check one event field by field, naming each fault in ``errors``; ``False``: stop."""
    where = f"events.{index}"
    if not isinstance(item, dict):
        errors[where] = "must be an object"
        return True
    kind = item.get("type")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        errors[f"{where}.type"] = "must be one of start, progress, complete, fail"
    event_body = item.get("body")
    if not isinstance(event_body, dict):
        errors[f"{where}.body"] = "is required: the JSON object the single call takes"
    job_id = item.get("jobId")
    if kind == "start":
        if job_id is not None:
            errors[f"{where}.jobId"] = "is not used by start: give the id as body.id"
    elif not (isinstance(job_id, str) and 1 <= len(job_id) <= 255):
        errors[f"{where}.jobId"] = "is required: a string of 1 to 255 characters"
    raw_key = item.get("idempotencyKey")
    key = raw_key.strip() if isinstance(raw_key, str) else ""
    if raw_key is not None and not isinstance(raw_key, str):
        errors[f"{where}.idempotencyKey"] = "must be a string"
    elif len(key) > MAX_KEY_CHARS or "\x00" in key:
        errors[f"{where}.idempotencyKey"] = f"at most {MAX_KEY_CHARS} characters, no NUL"
    if len(errors) >= _MAX_FIELD_ERRORS:
        return False
    if not errors and isinstance(kind, str) and isinstance(event_body, dict):
        route = ("list",) if kind == "start" else (EVENT_TYPES[kind], str(job_id))
        events.append(Event(route, event_body, key))
    return True


class UnexpectedFailure(Exception):
    """An event of a batch failed inside the server (not a refusal): run it carefully."""


def apply_events(tx: Transaction, app_id: str, events: Sequence[Event],
                 stale: StalePolicy | None,
                 retry: tuple[type[BaseException], ...] = (), *,
                 careful: bool = True) -> list[Applied]:
    """Apply checked events in order in the caller's transaction, answering each.

    A refused event is answered and stored like its single call; the others stand.
    ``careful`` runs each event in a savepoint: an event that fails inside the server
    is rolled back alone and answered 500 (not stored under its key, as a single
    call's 500 is not). Without it (two statements fewer per event) such a failure
    raises ``UnexpectedFailure`` and the caller runs the whole batch again, carefully,
    in a new transaction. An error of ``retry`` (a deadlock the engine ended) is
    raised: the whole batch is to run again.
    """
    results: list[Applied] = []
    # Read ahead what the events will ask for, in a few queries instead of two each.
    # (A job id with NUL is answered 404 below, unread: PostgreSQL cannot even look it up.)
    tx.prefetch([event.route[1] for event in events
                 if len(event.route) > 1 and "\x00" not in event.route[1]],
                [event.key for event in events if event.key])
    if not careful:
        # Job updates and idempotency records run many at a time; a failing one raises
        # below, and the caller runs the batch again carefully, writing as it goes.
        tx.defer_writes()
    for event in events:
        if len(event.route) > 1 and "\x00" in event.route[1]:
            # As a single call's path: no job id holds NUL, and PostgreSQL could not even
            # look one up.
            error = HTTPError(404, "NOT_FOUND", "job not found")
            results.append(Applied(404, error.response()[1], failure=error))
            continue
        if not careful:
            # Refusals are answers (HTTPError never leaves apply_write), raised before
            # anything is written: only a failure inside the server needs undoing.
            try:
                results.append(apply_write(tx, app_id, event.route, event.body,
                                           event.key, stale))
            except retry:
                raise
            except Exception as failed:
                raise UnexpectedFailure from failed
            continue
        try:
            with tx.savepoint():
                results.append(apply_write(tx, app_id, event.route, event.body, event.key,
                                           stale))
        except retry:
            raise
        except Exception:
            logger.exception(
                "seenn serve: internal error on an event of POST /v1/events")
            error = HTTPError(500, "INTERNAL", "internal server error")
            results.append(Applied(500, error.response()[1], failure=error))
    if not careful:
        try:
            tx.flush()
        except retry:
            raise
        except Exception as failed:
            raise UnexpectedFailure from failed
    return results


def _refuse(errors: dict[str, str]) -> NoReturn:
    first = next(iter(errors))
    raise HTTPError(400, "VALIDATION_ERROR", f"{first}: {errors[first]}",
                    {"field": first, "reason": errors[first], "fields": errors})
