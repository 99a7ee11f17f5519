"""Argument checks shared by the REST client and the instrumentation.

Each check either returns the normalised value or raises
:class:`seenn.ValidationError` whose ``details["field"]`` names the argument.
The limits mirror the wire protocol, so a request that passes here is not
rejected by a conforming backend for its shape. The checks sit on the hot path
of ``set_progress``: they are plain type tests, no regexes, no copies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn

from seenn._core.models import JobError, JobResult, Queue, Stage
from seenn.errors import ValidationError

MAX_JOB_TYPE = 100
MAX_USER_ID = 255
MAX_TITLE = 200
MAX_STAGE_NAME = 100
MAX_MESSAGE = 1000
MAX_METADATA_BYTES = 10 * 1024
MAX_RESULT_BYTES = 100 * 1024
MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 2_592_000
# No job outlives its longest TTL, so neither does its expected duration (milliseconds).
MAX_DURATION_MS = MAX_TTL_SECONDS * 1000
# A running job silent for longer than this is ended (WORKER_LOST) by seenn serve.
# Never longer than a job lives; never shorter than a few missed progress calls.
MIN_STALE_AFTER = 10
MAX_STALE_AFTER = MAX_TTL_SECONDS
MAX_TOTAL_CHILDREN = 1000
MAX_LIST_LIMIT = 100
CHILD_PROGRESS_MODES = ("average", "weighted", "sequential")


def fail(field: str, message: str) -> NoReturn:
    """Raise the ValidationError for ``field``."""
    raise ValidationError(f"{field}: {message}", details={"field": field, "reason": message})


def check_option_names(call: str, options: Mapping[str, object], known: frozenset[str]) -> None:
    """Refuse an unknown keyword passed through ``**options``, as a plain signature would.

    Raises:
        TypeError: ``options`` names something not in ``known``; the message
            names ``call`` and the (first, sorted) unknown keyword.
    """
    unknown = options.keys() - known
    if unknown:
        raise TypeError(f"{call}() got an unexpected keyword argument {min(unknown)!r}")


def _unencodable(field: str, error: UnicodeEncodeError) -> NoReturn:
    # The text itself is not echoed: it may be a file name or a user's input.
    fail(field, f"must be valid Unicode text: it holds a lone surrogate at index {error.start} "
                "(e.g. a file name decoded from bytes that are not UTF-8)")


def check_text(field: str, value: object, *, max_len: int, min_len: int = 1) -> str:
    """Check that ``value`` is a string of ``min_len`` to ``max_len`` characters.

    The string must also be encodable as UTF-8: a lone surrogate (what
    ``os.fsdecode`` makes of bytes that are not UTF-8) could never be sent. NUL is
    refused: PostgreSQL cannot store it in a text column, and a backend on SQLite
    answers the same.
    """
    if not isinstance(value, str):
        fail(field, f"must be a string, not {type(value).__name__}")
    if not min_len <= len(value) <= max_len:
        fail(field, f"must be {min_len} to {max_len} characters long, got {len(value)}")
    if "\x00" in value:
        fail(field, "must not contain NUL (U+0000)")
    # isascii() is a flag read in CPython: the encode only runs for non-ASCII text.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            _unencodable(field, error)
    return value


def check_opt_text(field: str, value: object, *, max_len: int) -> str | None:
    """Like :func:`check_text`, but ``None`` passes through and empty strings are allowed."""
    if value is None:
        return None
    return check_text(field, value, max_len=max_len, min_len=0)


def check_int(field: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """Check that ``value`` is an int (not a bool) within ``[minimum, maximum]``."""
    if not isinstance(value, int) or isinstance(value, bool):
        fail(field, f"must be an integer, not {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        fail(field, f"must be {bound}, got {value}")
    return value


def check_progress(value: object, field: str = "progress") -> int:
    """Check a progress percentage and return it as an int (floored, so 99.9 is not 100)."""
    # type() rather than isinstance(): rejects bool (an int subclass) in one test.
    kind = type(value)
    if kind is int:
        progress: int = value  # type: ignore[assignment]
        if 0 <= progress <= 100:
            return progress
    elif kind is float:
        number: float = value  # type: ignore[assignment]
        if 0.0 <= number <= 100.0:  # NaN fails both comparisons
            return int(number)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return check_progress(int(value) if isinstance(value, int) else float(value), field)
    else:
        fail(field, f"must be an int or float, not {kind.__name__}")
    fail(field, f"must be between 0 and 100, got {value!r}")


def _json_size(field: str, value: object) -> int:
    try:
        encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        fail(field, f"must be JSON-serialisable ({exc})")
    except RecursionError:
        fail(field, "is nested too deeply")
    if encoded.isascii():
        return len(encoded)
    try:
        return len(encoded.encode("utf-8"))
    except UnicodeEncodeError as error:
        _unencodable(field, error)


def check_json(field: str, value: object, *, max_bytes: int) -> Any:
    """Check that ``value`` is JSON-serialisable and at most ``max_bytes`` as compact JSON."""
    size = _json_size(field, value)
    if size > max_bytes:
        fail(field, f"must be at most {max_bytes} bytes as JSON, got {size}")
    return value


def check_metadata(value: object, field: str = "metadata") -> dict[str, Any] | None:
    """Check a metadata mapping (JSON object, at most 10 KB); ``None`` passes through."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        fail(field, f"must be a mapping, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            fail(field, f"keys must be strings, got {key!r}")
    metadata = dict(value)
    check_json(field, metadata, max_bytes=MAX_METADATA_BYTES)
    return metadata


def _fields(field: str, value: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in value:
        if key not in allowed:
            expected = ", ".join(allowed)
            fail(f"{field}.{key}", f"is not a field of {field} (expected one of {expected})")


def coerce_stage(value: object, field: str = "stage") -> Stage:
    """Accept a :class:`Stage` or a dict with its fields and return a checked ``Stage``."""
    if isinstance(value, Stage):
        name, current, total, description = (
            value.name, value.current, value.total, value.description)
    elif isinstance(value, Mapping):
        _fields(field, value, ("name", "current", "total", "description"))
        if "name" not in value:
            fail(f"{field}.name", "is required")
        name = value["name"]
        current = value.get("current", 1)
        total = value.get("total", 1)
        description = value.get("description")
    else:
        fail(field, f"must be a Stage or a dict, not {type(value).__name__}")
    check_text(f"{field}.name", name, max_len=MAX_STAGE_NAME)
    check_int(f"{field}.current", current, minimum=1)
    check_int(f"{field}.total", total, minimum=1)
    if current > total:
        fail(f"{field}.current", f"must not exceed {field}.total ({current} > {total})")
    check_opt_text(f"{field}.description", description, max_len=MAX_MESSAGE)
    if isinstance(value, Stage):
        return value
    return Stage(name=name, current=current, total=total, description=description)


def coerce_queue(value: object, field: str = "queue") -> Queue:
    """Accept a :class:`Queue` or a dict with its fields and return a checked ``Queue``."""
    if isinstance(value, Queue):
        position, total, queue_name = value.position, value.total, value.queue_name
    elif isinstance(value, Mapping):
        _fields(field, value, ("position", "total", "queue_name", "queueName"))
        if "position" not in value:
            fail(f"{field}.position", "is required")
        position = value["position"]
        total = value.get("total")
        queue_name = value.get("queue_name", value.get("queueName"))
    else:
        fail(field, f"must be a Queue or a dict, not {type(value).__name__}")
    check_int(f"{field}.position", position, minimum=0)
    if total is not None:
        check_int(f"{field}.total", total, minimum=0)
    check_opt_text(f"{field}.queue_name", queue_name, max_len=MAX_JOB_TYPE)
    if isinstance(value, Queue):
        return value
    return Queue(position=position, total=total, queue_name=queue_name)


def coerce_result(value: object, field: str = "result") -> JobResult:
    """Accept a :class:`JobResult` or a dict with its fields; at most 100 KB as JSON."""
    if isinstance(value, JobResult):
        result = value
    elif isinstance(value, Mapping):
        _fields(field, value, ("type", "url", "data"))
        result = JobResult(type=value.get("type"), url=value.get("url"), data=value.get("data"))
    else:
        fail(field, f"must be a JobResult or a dict, not {type(value).__name__}")
    check_opt_text(f"{field}.type", result.type, max_len=MAX_JOB_TYPE)
    check_opt_text(f"{field}.url", result.url, max_len=8192)
    check_json(field, result.to_wire(), max_bytes=MAX_RESULT_BYTES)
    return result


def coerce_error(value: object, field: str = "error") -> JobError:
    """Accept a :class:`JobError` or a dict with ``code``, ``message`` and ``details``."""
    if isinstance(value, JobError):
        error = value
    elif isinstance(value, Mapping):
        _fields(field, value, ("code", "message", "details"))
        for required in ("code", "message"):
            if required not in value:
                fail(f"{field}.{required}", "is required")
        error = JobError(code=value["code"], message=value["message"],
                         details=value.get("details"))
    else:
        fail(field, f"must be a JobError or a dict, not {type(value).__name__}")
    check_text(f"{field}.code", error.code, max_len=MAX_JOB_TYPE)
    check_text(f"{field}.message", error.message, max_len=10_000, min_len=0)
    if error.details is not None:
        if not isinstance(error.details, Mapping):
            fail(f"{field}.details", "must be a mapping")
        check_json(f"{field}.details", error.details, max_bytes=MAX_METADATA_BYTES)
    return error


def check_datetime(value: object, field: str) -> str:
    """Accept a datetime or an ISO 8601 string; return ISO 8601 in UTC ending in ``Z``.

    Naive datetimes are taken to be UTC, as ``datetime.utcnow()`` produces them.
    """
    if isinstance(value, str):
        parsed = parse_datetime(value)
        if parsed is None:
            fail(field, f"must be an ISO 8601 date-time, got {value!r}")
        value = parsed
    if not isinstance(value, datetime):
        fail(field, f"must be a datetime or an ISO 8601 string, not {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    try:
        return format_datetime(value)
    except (OverflowError, ValueError):
        # 0001-01-01T00:00:00+14:00 is a valid date-time that has no UTC equivalent.
        fail(field, "must fall within years 1 to 9999 once converted to UTC")


def format_datetime(value: datetime) -> str:
    """Format an aware datetime as ISO 8601 in UTC with millisecond precision and ``Z``.

    Raises:
        OverflowError: The instant falls outside years 1 to 9999 in UTC.
    """
    utc = value.astimezone(timezone.utc)
    # Not strftime("%Y"): it drops the leading zeros of years before 1000 on glibc.
    return (f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
            f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z")


def parse_datetime(value: object) -> datetime | None:
    """Parse an ISO 8601 string (``Z`` or offset; any fraction length); ``None`` if not one."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python 3.10's fromisoformat only takes 3- or 6-digit fractions.
    dot = text.find(".")
    if dot != -1:
        end = dot + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        fraction = (text[dot + 1:end] + "000000")[:6]
        text = text[:dot + 1] + fraction + text[end:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def check_duration_ms(value: object, field: str) -> int:
    """Accept milliseconds (int or float) or a timedelta; return whole milliseconds.

    The duration must be 0 to 30 days (:data:`MAX_DURATION_MS`), the longest a job lives.
    """
    if isinstance(value, timedelta):
        value = value.total_seconds() * 1000.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(field, f"must be milliseconds or a timedelta, not {type(value).__name__}")
    # NaN fails both comparisons, and so never passes.
    if not 0 <= value <= MAX_DURATION_MS:
        fail(field, f"must be 0 to {MAX_DURATION_MS} milliseconds (30 days), got {value!r}")
    return int(value)


def check_choice(value: object, field: str, choices: tuple[str, ...]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        fail(field, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_bool(value: object, field: str) -> bool:
    """Check that ``value`` is a bool."""
    if not isinstance(value, bool):
        fail(field, f"must be a bool, not {type(value).__name__}")
    return value
