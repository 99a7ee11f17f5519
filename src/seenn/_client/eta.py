"""The ETA statistics resource of the REST clients (``client.eta``) and its model.

``GET /eta`` lists an app's statistics, ``GET /eta/{etaKey}`` reads one key's and
``DELETE /eta/{etaKey}`` resets them, as in the Node SDK (``eta.getStats``,
``eta.list``, ``eta.reset``). They need a secret key.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from seenn._client.transport import AsyncHTTP, SyncHTTP, quote_id
from seenn._core.validation import MAX_JOB_TYPE, check_text, parse_datetime
from seenn.errors import NotFoundError

__all__ = ["AsyncEtaStatsResource", "EtaStageStats", "EtaStats", "EtaStatsResource",
           "eta_list_shape", "eta_stats_shape"]

_DURATIONS = ("avgDuration", "p50Duration", "p95Duration", "minDuration", "maxDuration")
_KNOWN_FIELDS = frozenset({"etaKey", "count", "confidence", "lastUpdated", "stages",
                           *_DURATIONS})
# timedelta holds about 2.7e8 years; a sane backend sends durations far below this.
_MAX_MS = 1e15


def _count(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _ms(value: object) -> timedelta | None:
    """A duration in milliseconds from JSON, or ``None`` if it is not a sane one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not (math.isfinite(value) and 0 <= value <= _MAX_MS):
        return None
    return timedelta(milliseconds=value)


@dataclass(frozen=True, slots=True)
class EtaStageStats:
    """How long one stage of a key's recent jobs took.

    Attributes:
        count: How many recent completed jobs went through the stage.
        p50_duration: The median time spent in it.
        p95_duration: The 95th percentile of that time.
    """

    count: int
    p50_duration: timedelta
    p95_duration: timedelta


@dataclass(frozen=True, slots=True)
class EtaStats:
    """The statistics a backend keeps of one eta key's completed jobs.

    A job's eta key is its ``workflow_id``, which defaults to its job type. The
    backend uses these statistics to put an ETA (``estimated_completion_at``) on
    the key's running jobs. Durations are ``timedelta`` (the wire carries
    milliseconds; :meth:`to_dict` returns the answer as it was sent).

    Attributes:
        eta_key: The key.
        count: How many completed jobs the statistics hold, all time.
        avg_duration: Their mean duration (running time), all time.
        p50_duration: The median duration of the recent ones (``seenn serve``: the
            last 128).
        p95_duration: The 95th percentile of the recent ones.
        min_duration: The shortest, all time.
        max_duration: The longest, all time.
        confidence: 0 to 1: how far the backend trusts its estimates for this key.
        last_updated: When a completed job last changed them.
        stages: Per stage name, how long the recent jobs spent in it (present when
            the backend sends it, as ``seenn serve`` does for one key).
        extra: Fields the backend sent that this model does not read (``seenn
            serve`` sends ``history``, what the estimator needs, there).
    """

    eta_key: str
    count: int
    avg_duration: timedelta
    p50_duration: timedelta
    p95_duration: timedelta
    min_duration: timedelta
    max_duration: timedelta
    confidence: float
    last_updated: datetime | None = None
    stages: Mapping[str, EtaStageStats] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    _raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> EtaStats:
        """Read an answer that :func:`eta_stats_shape` accepted."""
        avg, p50, p95, low, high = (_ms(data[name]) or timedelta(0) for name in _DURATIONS)
        stages: dict[str, EtaStageStats] = {}
        raw_stages = data.get("stages")
        if isinstance(raw_stages, Mapping):
            for name, item in raw_stages.items():
                if not isinstance(item, Mapping):
                    continue
                count = _count(item.get("count"))
                mid, high_end = _ms(item.get("p50Duration")), _ms(item.get("p95Duration"))
                if isinstance(name, str) and count is not None and mid is not None \
                        and high_end is not None:
                    stages[name] = EtaStageStats(count, mid, high_end)
        return cls(data["etaKey"], data["count"], avg, p50, p95, low, high,
                   float(data["confidence"]),
                   parse_datetime(data.get("lastUpdated")), stages,
                   {k: v for k, v in data.items() if k not in _KNOWN_FIELDS}, dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Return the statistics as the backend sent them (camelCase JSON, every field)."""
        return dict(self._raw)


def eta_stats_shape(data: object) -> str | None:
    """Check a decoded answer is an ``EtaStats`` object: ``None`` if so, else what was expected."""
    wanted = "ETA statistics ({\"etaKey\", \"count\", \"avgDuration\", ...})"
    if not isinstance(data, Mapping):
        return wanted
    key, confidence = data.get("etaKey"), data.get("confidence")
    if not isinstance(key, str) or not key or _count(data.get("count")) is None:
        return wanted
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) \
            or not math.isfinite(confidence):
        return wanted
    if any(_ms(data.get(name)) is None for name in _DURATIONS):
        return wanted
    return None


def eta_list_shape(data: object) -> str | None:
    """Check a decoded answer is a list of statistics."""
    stats = data.get("stats") if isinstance(data, Mapping) else None
    if isinstance(stats, builtins.list) and all(eta_stats_shape(s) is None for s in stats):
        return None
    return "a list of ETA statistics ({\"stats\": [...]})"


def _path(eta_key: str) -> str:
    segment = quote_id(check_text("eta_key", eta_key, max_len=MAX_JOB_TYPE))
    return "/eta/" + segment


class EtaStatsResource:
    """The ETA statistics of :class:`~seenn.SeennClient` (``client.eta``); needs a secret key."""

    def __init__(self, http: SyncHTTP) -> None:
        self._http = http

    def get_stats(self, eta_key: str) -> EtaStats | None:
        """Read one key's statistics (``GET /eta/{etaKey}``).

        Args:
            eta_key: A workflow id, or a job type (1–100 characters).

        Returns:
            The statistics, or ``None`` when the backend has none for the key (404:
            no job of it has completed yet, or they were reset).

        Raises:
            ValidationError: ``eta_key`` is invalid; nothing was sent.
            AuthenticationError: The key is not a secret key (403) or is unknown.
            SeennError: The backend refused the call or could not be reached.
        """
        path = _path(eta_key)
        try:
            data = self._http.request("GET", path, expect=eta_stats_shape)
        except NotFoundError:
            return None
        return EtaStats.from_wire(data)

    def list(self) -> builtins.list[EtaStats]:
        """Read the statistics of every key of the app (``GET /eta``).

        ``seenn serve`` answers at most 1,000 keys, the most recently updated first.
        """
        data = self._http.request("GET", "/eta", expect=eta_list_shape)
        return [EtaStats.from_wire(item) for item in data["stats"]]

    def reset(self, eta_key: str) -> bool:
        """Forget one key's statistics (``DELETE /eta/{etaKey}``).

        Jobs of the key that are running keep the ETA they have; the next completed
        job starts the statistics again.

        Returns:
            ``True`` if the backend removed statistics, ``False`` if it had none for
            the key (404; also what a retry finds when the answer to a first attempt
            that succeeded was lost).

        Raises:
            ValidationError: ``eta_key`` is invalid; nothing was sent.
            SeennError: The backend refused the call or could not be reached.
        """
        path = _path(eta_key)
        try:
            self._http.request("DELETE", path)
        except NotFoundError:
            return False
        return True


class AsyncEtaStatsResource:
    """The ETA statistics of :class:`~seenn.AsyncSeennClient`; see :class:`EtaStatsResource`."""

    def __init__(self, http: AsyncHTTP) -> None:
        self._http = http

    async def get_stats(self, eta_key: str) -> EtaStats | None:
        """Read one key's statistics; see :meth:`EtaStatsResource.get_stats`."""
        path = _path(eta_key)
        try:
            data = await self._http.request("GET", path, expect=eta_stats_shape)
        except NotFoundError:
            return None
        return EtaStats.from_wire(data)

    async def list(self) -> builtins.list[EtaStats]:
        """Read the statistics of every key of the app; see :meth:`EtaStatsResource.list`."""
        data = await self._http.request("GET", "/eta", expect=eta_list_shape)
        return [EtaStats.from_wire(item) for item in data["stats"]]

    async def reset(self, eta_key: str) -> bool:
        """Forget one key's statistics; see :meth:`EtaStatsResource.reset`."""
        path = _path(eta_key)
        try:
            await self._http.request("DELETE", path)
        except NotFoundError:
            return False
        return True
