"""Stage bookkeeping: a job's declared stages, how a stage is numbered, and its share of 100.

A job may declare its stages (their names in order, or just how many there
are). A stage named later gets its number and the total from that plan, and
each stage owns an equal slice of the progress bar. These are pure functions
of the plan: the job's state machine (``lifecycle``) applies their answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from seenn._core.models import Stage
from seenn._core.validation import MAX_STAGE_NAME, check_int, check_text, coerce_stage, fail

__all__ = ["MAX_STAGES", "Plan", "StagePlan", "check_plan", "resolve_stage", "stage_share"]

StagePlan: TypeAlias = Sequence[str] | int | None
"""Declared stages: their names in order, or just how many there are."""

Plan: TypeAlias = tuple[str, ...] | int | None
"""A checked :data:`StagePlan`: the names as a tuple, a count, or ``None``."""

MAX_STAGES = 1000


def check_plan(stages: object) -> Plan:
    """Check a ``stages`` option and return it as a :data:`Plan`.

    Raises:
        ValidationError: Not 1 to 1,000 distinct valid names, nor an int in that range.
    """
    if stages is None:
        return None
    if isinstance(stages, int) and not isinstance(stages, bool):
        return check_int("stages", stages, minimum=1, maximum=MAX_STAGES)
    if isinstance(stages, str) or not isinstance(stages, Sequence):
        fail("stages", f"must be a sequence of stage names or an int, not {type(stages).__name__}")
    names = tuple(stages)
    if not 1 <= len(names) <= MAX_STAGES:
        fail("stages", f"must name 1 to {MAX_STAGES} stages, got {len(names)}")
    for index, name in enumerate(names):
        check_text(f"stages[{index}]", name, max_len=MAX_STAGE_NAME)
    if len(set(names)) != len(names):
        fail("stages", "must not name a stage twice")
    return names


def resolve_stage(plan: Plan, stage_count: int, stage: Stage | Mapping[str, Any] | str,
                  current: int | None = None, total: int | None = None,
                  description: str | None = None) -> Stage:
    """Turn a stage given by name (or as a model or dict) into a checked ``Stage``.

    A name is numbered from the plan (its place among the declared names), or,
    without names, as the stage after the ``stage_count`` seen so far.

    Raises:
        ValidationError: The name is not declared, or the numbers are off.
    """
    if not isinstance(stage, str):
        return coerce_stage(stage)
    check_text("stage.name", stage, max_len=MAX_STAGE_NAME)
    if current is None:
        if isinstance(plan, tuple):
            try:
                current = plan.index(stage) + 1
            except ValueError:
                fail("stage.name", f"{stage!r} is not one of the declared stages "
                                   f"({', '.join(plan)})")
        else:
            current = stage_count + 1
    if total is None:
        total = len(plan) if isinstance(plan, tuple) else max(plan or 0, current)
    return coerce_stage({"name": stage, "current": current, "total": total,
                         "description": description})


def stage_share(plan: Plan, stage: Stage | None) -> tuple[int, int] | None:
    """The progress range of ``stage`` when stages are declared, else ``None``."""
    if plan is None or stage is None:
        return None
    return (stage.current - 1) * 100 // stage.total, stage.current * 100 // stage.total
