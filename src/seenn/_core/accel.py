"""Whether seenn runs its tracking hot path compiled: ``speedups`` is the module, or ``None``.

``seenn._core._speedups`` is an optional C extension, built by ``pip install``
when a C compiler is at hand. It holds a compiled twin of the few functions
every job change runs (see ``_speedups_src/speedups.h``); everything else, and the whole
reference behaviour, is Python. Without the extension (no compiler, another
Python implementation, or ``SEENN_NO_EXTENSIONS=1`` in the environment) seenn
runs the Python twins, which behave the same, only slower. A sub-interpreter
runs them too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import ModuleType

__all__ = ["API_VERSION", "DISABLE_ENV", "speedups", "use_compiled"]

API_VERSION = 2
"""The version of ``_speedups_src/`` this Python matches (its ``API_VERSION``)."""

DISABLE_ENV = "SEENN_NO_EXTENSIONS"
"""Set to anything but ``""`` or ``"0"`` to run the pure-Python hot path."""


def _load() -> ModuleType | None:
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    try:
        from seenn._core import _speedups
    except ImportError:
        return None
    # A module built from another version of _speedups_src/ (a stale build left
    # beside the source) would not match the Python around it.
    # The module's bound state is per process: a sub-interpreter runs the Python twins.
    if _speedups.API_VERSION != API_VERSION or not _speedups.usable():
        return None
    return _speedups


speedups = _load()


def use_compiled(cls: type, methods: Mapping[str, str | None]) -> None:
    """Let the compiled twins, on a base class of ``cls``, answer ``methods`` of ``cls``.

    Each Python method moves to the name given, where the compiled twin hands
    every call it does not finish itself (or, for ``None``, it goes: the twin
    does all of it). Without the compiled hot path this does nothing.
    """
    if speedups is None:
        return
    for name, fallback in methods.items():
        method = cls.__dict__[name]
        delattr(cls, name)
        if fallback is not None:
            setattr(cls, fallback, method)
