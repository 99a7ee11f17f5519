"""History.to_wire / from_wire: the estimator's history as `GET /v1/eta/{key}` carries it."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from seenn._core.eta import (
    CURVE_POINTS,
    DurationStats,
    History,
    Sample,
    curve_of,
    estimate,
    history_of,
)


def _history() -> History:
    rng = random.Random(3)
    samples = []
    for _ in range(20):
        duration = 30 * math.exp(rng.gauss(0, 0.3))
        reached: list[float | None] = [duration * (i / 50) ** 1.3 * rng.uniform(0.9, 1.0)
                                       for i in range(CURVE_POINTS - 5)]
        samples.append(Sample(duration, curve_of(reached + [None] * 5, duration)))
    return history_of(samples, {"render": DurationStats(20, 12.3456, 20.5)})


def test_wire_is_json_and_round_trips_to_a_fixed_point() -> None:
    """to_wire is plain JSON; one round trip may round, a second changes nothing."""
    history = _history()
    wire = history.to_wire()
    assert json.loads(json.dumps(wire, allow_nan=False)) == wire
    stages = {"render": DurationStats(20, 12.3456, 20.5).to_wire()}
    assert stages == {"render": {"count": 20, "p50Duration": 12346, "p95Duration": 20500}}
    once = History.from_wire(wire, stages)
    assert once is not None
    assert once.to_wire() == wire
    assert History.from_wire(once.to_wire(), stages) == once
    assert once.stages == {"render": DurationStats(20, 12.346, 20.5)}
    assert once.total.count == history.total.count
    assert once.curve == pytest.approx(history.curve, abs=1e-6)
    assert math.isinf(once.errors[0]) and wire["errors"][0] is None
    for progress in (0.1, 0.5, 0.9):
        first, second = (estimate(12.0 * progress * 2, progress, history=h,
                                  reached_times={0: 0.0}) for h in (history, once))
        assert first is not None and second is not None
        assert second.remaining == pytest.approx(first.remaining, rel=1e-4)


@pytest.mark.parametrize("change", [
    {"count": True}, {"count": -1}, {"count": 1.0}, {"p50Duration": "10"},
    {"p95Duration": -5}, {"p50Duration": math.inf}, {"spread": "x"}, {"curve": [0.0] * 50},
    {"curve": [None] * CURVE_POINTS}, {"errors": "x"}, {"recentErrors": [True] * CURVE_POINTS},
    {"curve": [-0.5] * CURVE_POINTS},
])
def test_malformed_wire_is_none(change: dict[str, Any]) -> None:
    """A history that is not the shape to_wire makes reads as None, never raises."""
    wire = {**_history().to_wire(), **change}
    assert History.from_wire(wire) is None


def test_missing_or_odd_parts_are_handled() -> None:
    """A non-mapping is None; malformed stage entries are left out; no stages is empty."""
    assert History.from_wire(None) is None
    assert History.from_wire([1, 2]) is None
    wire = _history().to_wire()
    read = History.from_wire(wire, {"a": {"count": 1, "p50Duration": 5, "p95Duration": 9},
                                    "b": {"count": "1"}, "c": 3})
    assert read is not None and read.stages == {"a": DurationStats(1, 0.005, 0.009)}
    plain = History.from_wire(wire)
    assert plain is not None and plain.stages == {}
