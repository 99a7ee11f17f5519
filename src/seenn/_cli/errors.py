"""``CLIError``: how every command reports a failure as one line and an exit status."""

from __future__ import annotations

__all__ = ["CLIError"]


class CLIError(Exception):
    """A failure to report as one line, with an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status
