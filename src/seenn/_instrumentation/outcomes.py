"""How a tracked block ends: the outcome table of DESIGN.md, and retry rules.

An exception leaving a job's block becomes a :class:`~seenn.JobError` (its code,
message and details) and, through the job's retry rule, a ``retryable`` flag.
Nothing here knows about jobs or events: it maps exceptions to models.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeAlias

from seenn._core.models import JobError
from seenn._core.pipeline import internal_error, is_strict
from seenn._core.validation import MAX_JOB_TYPE, MAX_MESSAGE, fail

__all__ = ["RetryRule", "check_retry_rule", "error_from_exception", "is_success_exit",
           "retryable_for"]

RetryRule: TypeAlias = (
    bool
    | type[BaseException]
    | tuple[type[BaseException], ...]
    | Callable[[BaseException], bool]
    | None
)
"""Whether a failure may be retried: a bool, exception types, or a predicate."""

_MAX_TRACEBACK = 8000
_MAX_CHAIN = 5


def check_retry_rule(value: object) -> RetryRule:
    """Check a ``retryable`` option: a bool, exception types, or a predicate."""
    if value is None or isinstance(value, bool) or callable(value):
        return value
    if isinstance(value, tuple) and all(
            isinstance(item, type) and issubclass(item, BaseException) for item in value):
        return value
    fail("retryable", "must be a bool, an exception type, a tuple of them, or a predicate")
    return None  # unreachable: fail() raises


def _qualified_name(kind: type) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def encodable(text: str) -> str:
    """``text`` with lone surrogates escaped (``\\udc80``), so that it can be sent as UTF-8.

    Exception messages and tracebacks often hold file names decoded with
    ``surrogateescape``; a failure report must never be refused for that.
    """
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_str(exc: BaseException) -> str:
    try:
        return encodable(str(exc))
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, GeneratorExit):
        return True
    # asyncio is only consulted if something already imported it: an asyncio
    # CancelledError cannot exist otherwise, and importing asyncio is slow.
    aio = sys.modules.get("asyncio")
    if aio is not None and isinstance(exc, aio.CancelledError):
        return True
    # trio.Cancelled and friends: cancellations that are not Exceptions.
    return not isinstance(exc, Exception) and type(exc).__name__ in ("Cancelled", "CancelledError")


def is_success_exit(exc: BaseException) -> bool:
    """Whether ``exc`` ends a tracked block successfully (``SystemExit(0)``)."""
    if isinstance(exc, SystemExit):
        code = exc.code
        return code is None or (isinstance(code, int) and code == 0)
    return False


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "INTERRUPTED"
    if _is_cancellation(exc):
        return "CANCELLED"
    try:
        code = getattr(exc, "code", None)
    except Exception:
        code = None
    if isinstance(code, str) and 1 <= len(code) <= MAX_JOB_TYPE:
        return encodable(code)
    return type(exc).__name__[:MAX_JOB_TYPE]


def _chain(exc: BaseException) -> list[dict[str, str]]:
    links: list[dict[str, str]] = []
    seen = {id(exc)}
    current: BaseException | None = exc
    while current is not None and len(links) < _MAX_CHAIN:
        if current.__cause__ is not None:
            nxt, relation = current.__cause__, "cause"
        elif current.__context__ is not None and not current.__suppress_context__:
            nxt, relation = current.__context__, "context"
        else:
            break
        if id(nxt) in seen:
            break
        seen.add(id(nxt))
        links.append({"relation": relation, "type": _qualified_name(type(nxt)),
                      "message": _safe_str(nxt)[:MAX_MESSAGE]})
        current = nxt
    return links


def error_from_exception(exc: BaseException, *, full: bool = True) -> JobError:
    """Build the ``JobError`` for an exception, following the outcome table of DESIGN.md.

    ``details`` always names the exception's qualified type; with ``full`` it
    also holds the formatted traceback (the last 8,000 characters, chain
    included) and the cause/context chain, for exporters that want them.
    """
    message = _safe_str(exc)[:MAX_MESSAGE] or type(exc).__name__
    details: dict[str, Any] = {"type": _qualified_name(type(exc))}
    if full:
        try:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except Exception:
            text = ""
        details["traceback"] = encodable(text[-_MAX_TRACEBACK:])
        chain = _chain(exc)
        if chain:
            details["chain"] = chain
    return JobError(code=_error_code(exc), message=message, details=details)


def retryable_for(rule: RetryRule, exc: BaseException) -> bool | None:
    """Apply a retry rule to the exception that failed a job (``None``: not said)."""
    if rule is None or isinstance(rule, bool):
        return rule
    if isinstance(rule, (type, tuple)):
        return isinstance(exc, rule)
    try:
        return bool(rule(exc))
    except Exception as failure:
        internal_error("the retryable predicate", failure, ())
        if is_strict():
            raise
        return None
