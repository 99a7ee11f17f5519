"""The ``seenn`` command: ``serve``, ``jobs``, ``conformance`` and ``demo``."""

from seenn._cli.main import main

__all__ = ["main"]
