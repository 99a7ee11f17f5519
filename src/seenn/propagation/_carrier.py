"""The ``seenn-job`` carrier: its format, ``inject``/``extract``, and the OTel propagator."""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote, unquote

from opentelemetry.context import Context, create_key, get_value, set_value
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from seenn._core.models import Stage
from seenn._core.pipeline import logger
from seenn._core.validation import (
    MAX_JOB_TYPE,
    MAX_TITLE,
    MAX_USER_ID,
    check_text,
    coerce_stage,
    fail,
)
from seenn._instrumentation.context import current_job
from seenn._instrumentation.plan import MAX_STAGES, check_plan

if TYPE_CHECKING:
    from seenn._instrumentation.job import TrackedJob

__all__ = [
    "CARRIER_KEY",
    "JobContext",
    "SeennPropagator",
    "encode_job",
    "extract",
    "inject",
    "job_from_context",
]

CARRIER_KEY = "seenn-job"
"""The carrier key (an HTTP header, a message attribute) that holds the job."""

_VERSION = "1"
_MAX_VALUE = 256 * 1024
_MAX_CHILDREN = 1_000_000
_ESCAPED = re.compile(r"(?:[A-Za-z0-9\-._~]|%[0-9A-Fa-f]{2})*")
_DIGITS = re.compile(r"[0-9]{1,10}")
_CONTEXT_KEY = create_key("seenn-job")


@dataclass(frozen=True, slots=True)
class JobContext:
    """A job as a carrier describes it: what another process needs to continue it.

    Attributes:
        job_id: The job's id.
        job_type: The kind of job.
        user_id: The user the job belongs to, if known.
        title: The job's title, if it has one.
        parent_id: The id of the job it was started inside, if any.
        child_index: Its 0-based index among that parent's children.
        stages: The declared stages: their names, their number, or ``None``.
        stage: The stage the job was in when it was handed over.
        progress: Its progress then, 0 to 100.
        children: How many child jobs it had started by then.
    """

    job_id: str
    job_type: str
    user_id: str | None = None
    title: str | None = None
    parent_id: str | None = None
    child_index: int | None = None
    stages: tuple[str, ...] | int | None = None
    stage: Stage | None = None
    progress: int = 0
    children: int = 0

    @classmethod
    def of(cls, job: TrackedJob) -> JobContext:
        """Take the context of a live job, as it is now.

        Args:
            job: The job to describe.
        """
        return cls(job.id, job.job_type, job.user_id, job.title, job.parent_id,
                   job.child_index, job._plan, job.current_stage, job.progress, job._children)


# -- the carrier format -------------------------------------------------------------------


def _esc(value: str) -> str:
    return quote(value, safe="")


def _encode_context(context: JobContext) -> str:
    """Return the ``seenn-job`` value for ``context`` (see the module documentation)."""
    parts = [f"v={_VERSION}", f"id={_esc(context.job_id)}", f"type={_esc(context.job_type)}"]
    if context.user_id is not None:
        parts.append(f"user={_esc(context.user_id)}")
    if context.parent_id is not None:
        parts.append(f"parent={_esc(context.parent_id)}")
        if context.child_index is not None:
            parts.append(f"child={context.child_index}")
    if context.title is not None:
        parts.append(f"title={_esc(context.title)}")
    stages = context.stages
    if isinstance(stages, int):
        parts.append(f"nstages={stages}")
    elif stages:
        parts.append("stages=" + ",".join(_esc(name) for name in stages))
    stage = context.stage
    if stage is not None:
        parts.append(f"stage={stage.current},{stage.total},{_esc(stage.name)}")
    if context.progress:
        parts.append(f"progress={context.progress}")
    if context.children:
        parts.append(f"children={context.children}")
    return ";".join(parts)


def encode_job(job: TrackedJob) -> str:
    """Return the ``seenn-job`` value for a live job."""
    return _encode_context(JobContext.of(job))


def _bad(message: str) -> NoReturn:
    fail(CARRIER_KEY, message)


def _text(fields: dict[str, str], name: str, max_len: int, *,
          required: bool = False) -> str | None:
    raw = fields.get(name)
    if raw is None:
        if required:
            _bad(f"has no {name!r} field")
        return None
    return check_text(f"{CARRIER_KEY}.{name}", _unescape(name, raw), max_len=max_len)


def _unescape(name: str, raw: str) -> str:
    if not _ESCAPED.fullmatch(raw):
        _bad(f"field {name!r} is not percent-encoded")
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        _bad(f"field {name!r} is not UTF-8")


def _int(fields: dict[str, str], name: str, maximum: int, *, minimum: int = 0) -> int | None:
    raw = fields.get(name)
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw):
        _bad(f"field {name!r} must be a non-negative integer, got {raw[:20]!r}")
    value = int(raw)
    if not minimum <= value <= maximum:
        _bad(f"field {name!r} must be {minimum} to {maximum}, got {value}")
    return value


def _decode(value: object) -> JobContext:
    """Read a ``seenn-job`` value.

    Raises:
        ValidationError: The value is not a well-formed job.
    """
    if not isinstance(value, str):
        _bad(f"must be a string, not {type(value).__name__}")
    if not value.strip():
        _bad("is empty")
    if len(value) > _MAX_VALUE:
        _bad(f"is longer than {_MAX_VALUE} characters")
    fields: dict[str, str] = {}
    for part in value.strip().split(";"):
        name, sep, raw = part.strip().partition("=")
        if not sep or not name:
            _bad(f"has a field that is not name=value: {part[:40]!r}")
        if name in fields:
            _bad(f"names the field {name!r} twice")
        fields[name] = raw
    version = fields.get("v")
    if version != _VERSION:
        _bad("has no format version (v=1)" if version is None
             else f"has format version {version[:10]!r}; this seenn reads version {_VERSION}")
    job_id = _text(fields, "id", MAX_JOB_TYPE, required=True)
    job_type = _text(fields, "type", MAX_JOB_TYPE, required=True)
    if job_id is None or job_type is None:  # for the type checker: required fields
        _bad("has no id or type")
    parent_id = _text(fields, "parent", MAX_JOB_TYPE)
    child_index = _int(fields, "child", 1_000_000)
    stages: tuple[str, ...] | int | None = None
    if "stages" in fields and "nstages" in fields:
        _bad("has both 'stages' and 'nstages'")
    if "stages" in fields:
        names = tuple(_unescape("stages", raw) for raw in fields["stages"].split(","))
        stages = _plan(names)
    elif "nstages" in fields:
        stages = _plan(_int(fields, "nstages", MAX_STAGES, minimum=1))
    stage = None
    if "stage" in fields:
        current, sep, rest = fields["stage"].partition(",")
        total, sep2, name = rest.partition(",")
        if not (sep and sep2 and _DIGITS.fullmatch(current) and _DIGITS.fullmatch(total)):
            _bad("field 'stage' must be current,total,name")
        stage = coerce_stage({"name": _unescape("stage", name), "current": int(current),
                              "total": int(total)}, f"{CARRIER_KEY}.stage")
    return JobContext(
        job_id=job_id,
        job_type=job_type,
        user_id=_text(fields, "user", MAX_USER_ID),
        title=_text(fields, "title", MAX_TITLE),
        parent_id=parent_id,
        child_index=child_index if parent_id is not None else None,
        stages=stages,
        stage=stage,
        progress=_int(fields, "progress", 100) or 0,
        children=_int(fields, "children", _MAX_CHILDREN) or 0,
    )


def _plan(value: object) -> tuple[str, ...] | int | None:
    try:
        return check_plan(value)
    except Exception as exc:
        _bad(f"declares malformed stages: {exc}")


def _lookup(carrier: object) -> object:
    """The ``seenn-job`` value of a carrier (any letter case), or ``None``."""
    if not isinstance(carrier, Mapping):
        fail("carrier", f"must be a mapping of strings, not {type(carrier).__name__}")
    value = carrier.get(CARRIER_KEY)
    if value is None:
        for key, item in carrier.items():
            if isinstance(key, str) and key.lower() == CARRIER_KEY:
                value = item
                break
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]  # a multi-valued header mapping
    return value


# -- the functions ------------------------------------------------------------------------


def inject(carrier: MutableMapping[str, str], /, *, job: TrackedJob | None = None) -> None:
    """Write a job into ``carrier`` under ``seenn-job``: the ambient job unless ``job`` is given.

    Outside any job (and without ``job``) nothing is written. The job itself
    is not changed: to have a worker finish it, use :meth:`TrackedJob.hand_off`.

    Args:
        carrier: A dict of strings (headers, message attributes) to write into.
        job: The job to write instead of the ambient one.
    """
    if job is None:
        job = current_job()
        if job is None:
            return
    carrier[CARRIER_KEY] = encode_job(job)


def extract(carrier: Mapping[str, Any], /) -> JobContext | None:
    """Read the job a carrier holds, or ``None`` when it holds none.

    The key is looked up in any letter case (``Seenn-Job`` from an HTTP
    server works); a list holding one value is read as that value.

    Args:
        carrier: A mapping of strings (headers, message attributes).

    Returns:
        The job as the carrier describes it, or ``None``.

    Raises:
        ValidationError: The carrier holds a malformed job (or is not a mapping).
    """
    value = _lookup(carrier)
    if value is None:
        return None
    return _decode(value)


def job_from_context(context: Context | None = None) -> JobContext | None:
    """Return the job :class:`SeennPropagator` extracted into an OpenTelemetry context.

    Args:
        context: The context to look in; the current one if not given.
    """
    value = get_value(_CONTEXT_KEY, context)
    return value if isinstance(value, JobContext) else None


# -- OpenTelemetry ------------------------------------------------------------------------


class SeennPropagator(TextMapPropagator):
    """An OpenTelemetry ``TextMapPropagator`` that carries the job under ``seenn-job``.

    Compose it with the trace propagators, globally or per call::

        from opentelemetry.propagate import set_global_textmap
        from opentelemetry.propagators.composite import CompositePropagator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        set_global_textmap(CompositePropagator(
            [TraceContextTextMapPropagator(), SeennPropagator()]))

    ``inject`` writes the job of the given context (one this propagator
    extracted), else the ambient seenn job, else the job extracted into the
    current context (so a service in the middle passes it on). ``extract``
    puts the job in the returned context, where :func:`job_from_context`
    finds it and :func:`resume` takes it; a malformed value is ignored with a
    warning (a propagator never raises).
    """

    def extract(self, carrier: CarrierT, context: Context | None = None,
                getter: Getter[CarrierT] = default_getter) -> Context:
        """Return ``context`` with the carrier's job in it (unchanged if it has none)."""
        if context is None:
            context = Context()
        try:
            values = getter.get(carrier, CARRIER_KEY)
            if not values:
                return context
            job = _decode(values[0])
        except Exception as exc:
            logger.warning("seenn: SeennPropagator: ignored a malformed %r: %s",
                           CARRIER_KEY, exc)
            return context
        return set_value(_CONTEXT_KEY, job, context)

    def inject(self, carrier: CarrierT, context: Context | None = None,
               setter: Setter[CarrierT] = default_setter) -> None:
        """Write the job (see the class documentation) into ``carrier``, if there is one."""
        try:
            remote = job_from_context(context) if context is not None else None
            if remote is not None:
                value = _encode_context(remote)
            else:
                job = current_job()
                if job is not None:
                    value = encode_job(job)
                else:
                    remote = job_from_context()
                    if remote is None:
                        return
                    value = _encode_context(remote)
            setter.set(carrier, CARRIER_KEY, value)
        except Exception as exc:
            logger.warning("seenn: SeennPropagator: could not inject the job: %r", exc)

    @property
    def fields(self) -> set[str]:
        """The carrier keys :meth:`inject` sets: ``{"seenn-job"}``."""
        return {CARRIER_KEY}

