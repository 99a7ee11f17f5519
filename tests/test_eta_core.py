"""The ETA estimator (seenn._core.eta): its rules, its smoothing, and its measured accuracy."""

from __future__ import annotations

import importlib.util
import itertools
import math
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seenn._core.eta import (
    CURVE_POINTS,
    MAX_RISE,
    MIN_PROGRESS,
    MIN_RISE,
    MIN_SAMPLES,
    History,
    Sample,
    curve_of,
    curve_point,
    estimate,
    history_of,
    smooth_completion,
    stats_of,
)

ROOT = Path(__file__).resolve().parents[1]


def linear_samples(durations: list[float]) -> list[Sample]:
    """Jobs whose progress grew evenly with time."""
    even = tuple(i / (CURVE_POINTS - 1) for i in range(CURVE_POINTS))
    return [Sample(d, even) for d in durations]


def test_without_history_nothing_is_said_before_a_little_progress() -> None:
    """No history and under MIN_PROGRESS done: no estimate; then the job's own rate."""
    assert estimate(10.0, MIN_PROGRESS / 2) is None
    found = estimate(10.0, 0.25)
    assert found is not None
    assert found.remaining == pytest.approx(30.0)  # 10 s for a quarter: 30 s for the rest
    assert found.based_on == 0 and not found.overdue


def test_a_quiet_stretch_counts_down_instead_of_slowing_the_job() -> None:
    """Judged from when progress last changed, time without news shortens the time left."""
    early = estimate(10.0, 0.5, reached_at=10.0)
    later = estimate(14.0, 0.5, reached_at=10.0)
    assert early is not None and later is not None
    assert later.remaining == pytest.approx(early.remaining - 4.0)


def test_history_alone_gives_the_median_before_any_progress() -> None:
    """At 0 % the estimate is history's median duration minus the time elapsed."""
    history = history_of(linear_samples([80.0, 90.0, 100.0, 110.0, 120.0]))
    found = estimate(30.0, 0.0, history=history)
    assert found is not None
    assert found.remaining == pytest.approx(100.0 - 30.0)
    assert found.based_on == 5


def test_history_needs_enough_samples() -> None:
    """Fewer than MIN_SAMPLES completed jobs: history is not used."""
    history = history_of(linear_samples([100.0] * (MIN_SAMPLES - 1)))
    assert not history.usable
    assert estimate(30.0, 0.0, history=history) is None


def test_the_jobs_own_pace_wins_where_it_predicted_history_well() -> None:
    """Past jobs whose curve predicted them exactly: the job's own pace decides."""
    history = history_of(linear_samples([50.0, 100.0, 150.0, 200.0, 400.0, 800.0]))
    found = estimate(120.0, 0.5, history=history)  # this job: 240 s in all, by its pace
    assert found is not None
    assert found.remaining == pytest.approx(120.0, rel=0.01)


def test_history_wins_where_the_jobs_pace_said_little() -> None:
    """Past jobs of one length whose pace varied wildly: history's median decides."""
    rng = random.Random(3)
    samples = []
    for _ in range(60):
        # All 100 s long; when they reached each point varied a lot.
        bumps = sorted(rng.random() for _ in range(CURVE_POINTS - 2))
        samples.append(Sample(100.0, (0.0, *bumps, 1.0)))
    found = estimate(80.0, 0.2, history=history_of(samples))
    assert found is not None
    assert found.remaining == pytest.approx(20.0, rel=0.15)


def test_a_job_past_historys_95th_percentile_is_overdue_not_zero() -> None:
    """Past p95 the estimate says overdue and still leaves a little time, never 0 s."""
    history = history_of(linear_samples([90.0, 95.0, 100.0, 105.0, 110.0] * 4))
    found = estimate(150.0, 0.9, history=history)
    assert found is not None
    assert found.overdue
    assert found.remaining > 0


def test_a_finished_job_has_nothing_left() -> None:
    """At 100 % the time left is 0 and the job is not overdue."""
    found = estimate(10.0, 1.0)
    assert found is not None and found.remaining == 0 and not found.overdue


def test_bad_numbers_give_no_estimate() -> None:
    """NaN or infinite inputs are not an estimate."""
    assert estimate(math.nan, 0.5) is None
    assert estimate(10.0, math.inf) is None


def test_curves_never_go_back_and_unreached_points_are_the_end() -> None:
    """curve_of: 0 at the start, never decreasing, 1 for points the job jumped over."""
    reached: list[float | None] = [0.0, 10.0, 10.0, 5.0, 20.0] + [None] * (CURVE_POINTS - 5)
    curve = curve_of(reached, 40.0)
    assert curve[:5] == (0.0, 0.25, 0.25, 0.25, 0.5)  # point 3 cannot come before point 2
    assert all(share == 1.0 for share in curve[5:])
    assert all(a <= b for a, b in itertools.pairwise(curve))


def test_curve_points_are_two_percent_steps() -> None:
    """curve_point maps progress to the last 2 % point at or below it."""
    assert [curve_point(p) for p in (0.0, 0.019, 0.02, 0.5, 0.999, 1.0)] == [0, 0, 1, 25, 49, 50]


def test_stats_of_gives_the_median_and_95th_percentile() -> None:
    """stats_of interpolates percentiles linearly between sorted values."""
    stats = stats_of([float(v) for v in range(1, 101)])
    assert (stats.count, stats.p50, stats.p95) == (100, 50.5, pytest.approx(95.05))


def test_smoothing_limits_how_far_the_countdown_rises_in_one_update() -> None:
    """A later estimate moves the shown time by at most 10 % of what was left (1 s minimum)."""
    now = 1000.0
    assert smooth_completion(now + 100, now + 200, now) == now + 100 * (1 + MAX_RISE)
    assert smooth_completion(now + 2, now + 10, now) == now + 2 + MIN_RISE
    assert smooth_completion(now + 100, now + 50, now) == now + 50  # earlier: at once
    assert smooth_completion(now - 5, now + 50, now) == now + 50  # a time already past
    assert smooth_completion(None, now + 50, now) == now + 50


@given(st.lists(st.tuples(st.floats(0.1, 30.0), st.floats(0.0, 1000.0)), min_size=1,
                max_size=40))
def test_the_shown_time_left_never_jumps_up_by_more_than_the_bound(
        steps: list[tuple[float, float]]) -> None:
    """Whatever the estimates, each update raises the shown time left by at most the bound."""
    now, shown = 0.0, None
    for wait, new_left in steps:
        now += wait
        previous_left = None if shown is None or shown <= now else shown - now
        shown = smooth_completion(shown, now + new_left, now)
        if previous_left is not None:
            assert shown - now <= previous_left + max(previous_left * MAX_RISE, MIN_RISE) + 1e-9


def test_the_eta_benchmark_meets_its_targets(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/eta.py: seenn beats tqdm's rate and history's median, < 15 % from 25 %."""
    spec = importlib.util.spec_from_file_location("eta_benchmark", ROOT / "benchmarks/eta.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    assert module.main(["--history", "150", "--jobs", "200", "--seed", "11"]) == 0
    assert "target (all jobs: better than both everywhere, < 15 % from 25 % on): met" \
        in capsys.readouterr().out


def test_history_of_nothing_is_not_usable() -> None:
    """No completed jobs: an unusable history, not an error."""
    assert not history_of([]).usable
    assert isinstance(history_of([]), History)
