"""The wrapt machinery shared by ``@job`` and ``@stage``: built once, cheap per call.

A decorated function is a ``wrapt.FunctionWrapper`` that pickles by
reference (a process pool can send it), and the kind of function (sync,
async, generator, async generator) is decided once, at decoration, so the
per-call path does no inspection.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Callable
from types import FunctionType
from typing import Any, TypeAlias

import wrapt

from seenn._core.validation import MAX_JOB_TYPE

__all__ = ["JobFunction", "Wrapper", "default_job_type", "fast_target", "kind_of", "wrap_stage"]

Wrapper: TypeAlias = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]
"""What wrapt calls for each call: ``(wrapped, instance, args, kwargs)``."""


class JobFunction(wrapt.FunctionWrapper[Any, Any]):
    """The decorated function; pickles by reference, like the function it replaces."""

    # What a @job decoration said and the kind of function (None for @stage):
    # wrapt keeps _self_* attributes on the proxy, not on the wrapped function.
    _self_seenn_spec: Any = None
    _self_seenn_kind: str = ""

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A string tells pickle to look the object up by name in its module,
        # where it finds this very wrapper: a process pool can send it.
        return self.__qualname__

    def __copy__(self) -> JobFunction:
        return self

    def __deepcopy__(self, memo: Any) -> JobFunction:
        return self


class _BoundJobFunction(wrapt.BoundFunctionWrapper[Any, Any]):
    """A decorated method bound to its instance (or class); pickles as ``getattr``."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        owner = self._self_instance if self._self_instance is not None else self._self_owner
        return getattr, (owner, self.__name__)


JobFunction.__bound_function_wrapper__ = _BoundJobFunction  # type: ignore[misc]


def fast_target(func: Any) -> Any:
    """Return what wrapt should wrap for ``func``.

    For a plain function wrapt looks up ``__self__`` on every call, in case it
    was handed a bound method; the failed lookup raises internally and costs
    more than the rest of the call. A copy of the function that has
    ``__self__ = None`` answers at once. The copy shares code, globals,
    closure and attributes, and the caller's function is left untouched.
    """
    if type(func) is not FunctionType or "__self__" in func.__dict__:
        return func
    clone = FunctionType(func.__code__, func.__globals__, func.__name__, func.__defaults__,
                         func.__closure__)
    clone.__kwdefaults__ = func.__kwdefaults__
    clone.__qualname__ = func.__qualname__
    clone.__module__ = func.__module__
    clone.__doc__ = func.__doc__
    clone.__annotations__ = func.__annotations__
    type_params = getattr(func, "__type_params__", None)
    if type_params:
        clone.__type_params__ = type_params  # type: ignore[attr-defined]
    clone.__dict__.update(func.__dict__)
    clone.__self__ = None  # type: ignore[attr-defined]
    return clone


def kind_of(func: Any) -> str:
    target = func.__func__ if isinstance(func, (classmethod, staticmethod)) else func
    if inspect.isasyncgenfunction(target):
        return "asyncgen"
    if inspect.iscoroutinefunction(target):
        return "async"
    if inspect.isgeneratorfunction(target):
        return "generator"
    return "sync"


def default_job_type(func: Any) -> str:
    """The job type for a bare ``@job``: the function's qualified name, without ``<locals>``."""
    target = func.__func__ if isinstance(func, (classmethod, staticmethod)) else func
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or "job"
    return name.replace("<locals>.", "")[-MAX_JOB_TYPE:]


def wrap_stage(func: Any, new_scope: Callable[[], Any]) -> Any:
    """Wrap ``func`` so that each call runs inside a new scope from ``new_scope()``.

    The scope (a ``StageScope``) is entered with ``with`` or ``async with`` to
    match the function: around the call, the awaited coroutine, or the whole
    iteration of a generator.
    """
    kind = kind_of(func)

    if kind == "async":
        async def run_async(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            async with new_scope():
                return await wrapped(*args, **kwargs)

        def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            return run_async(wrapped, args, kwargs)
    elif kind == "generator":
        def run_gen(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            with new_scope():
                return (yield from wrapped(*args, **kwargs))

        def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            return run_gen(wrapped, args, kwargs)
    elif kind == "asyncgen":
        async def run_agen(wrapped: Any, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> AsyncGenerator[Any, Any]:
            async with new_scope():
                async for item in wrapped(*args, **kwargs):
                    yield item

        def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            return run_agen(wrapped, args, kwargs)
    else:
        def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            with new_scope():
                return wrapped(*args, **kwargs)

    return JobFunction(fast_target(func), wrapper)
