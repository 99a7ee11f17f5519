"""The ambient job as users see it: ``current_job()`` and ``with_current_job()``."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import TypeVar

from typing_extensions import ParamSpec

from seenn._instrumentation.job import current_job

__all__ = ["current_job", "with_current_job"]

P = ParamSpec("P")
R = TypeVar("R")


def with_current_job(func: Callable[P, R], /) -> Callable[P, R]:
    """Wrap ``func`` so that it runs with the context (and ambient job) of the caller.

    New threads and ``concurrent.futures`` executors start with an empty
    context, so ``seenn.current_job()``, ``seenn.stage()`` and ``seenn.iterate()``
    would see no job there. Wrap the function where the job is ambient and hand
    the wrapper over::

        with seenn.track("export") as job:
            pool.submit(seenn.with_current_job(render_part), part)

    The whole context is carried (OpenTelemetry's current span too), as
    ``asyncio.to_thread`` does. Each call runs in its own copy of it, so one
    wrapper may run in several threads at once. ``asyncio`` tasks and
    ``asyncio.to_thread`` already carry the context; they need no wrapper.

    Args:
        func: The callable to run elsewhere.

    Returns:
        A callable with the same signature as ``func``.
    """
    context = contextvars.copy_context()

    @functools.wraps(func)
    def run_in_context(*args: P.args, **kwargs: P.kwargs) -> R:
        return context.copy().run(func, *args, **kwargs)

    return run_in_context
