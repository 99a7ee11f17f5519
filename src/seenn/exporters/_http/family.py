"""Outbox families: one ``outbox`` setting for any number of processes on one machine.

A setting names a family of outbox files:

* **A directory** (one that exists, or a path ending in ``/``, made ``0700`` if
  its parent exists): each process keeps its own file in it,
  ``seenn-outbox-<host>-<pid>-<random>.sqlite``, deleted when the process ends
  with it empty. This is the setting to share between processes.
* **A file**: the process that finds it free uses ``<path>`` itself, as a single
  process always has. A process that finds it in use by another keeps its own
  file beside it, ``<path>.<pid>-<random>``, and says so once, pointing at
  directories.

Each file is claimed with a ``flock`` (``outbox.lock_file``) for the life of its
process. A process adopts the files of its family whose owner is gone (their
lock can be taken without waiting): it copies their rows into its own outbox in
one transaction, then deletes them, WAL and lock file included, still holding
their lock. The lock decides who adopts a file, so two processes never both
replay it; a crash between the copy and the delete only means the next adopter
sends those events again, under the same idempotency keys, which the backend
has seen. Anything in the directory that is not an outbox file of the family
(by name, by type, by owner, by content) is left alone.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sqlite3
import stat
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from seenn._core.validation import fail
from seenn.exporters._http.outbox import (
    CAN_LOCK,
    LOAD_ORDER,
    Outbox,
    OutboxInUse,
    Row,
    decode_row,
    lock_file,
    reason,
    remove_outbox,
)

if TYPE_CHECKING:
    from seenn._core.events import JobEvent
    from seenn._core.pipeline import RateLimitedLog

__all__ = ["ADOPT_INTERVAL", "Family", "adopt_dead", "family_of", "open_own"]

logger = logging.getLogger("seenn")

ADOPT_INTERVAL = 60.0
"""Seconds between two looks of a running exporter for files left by processes that ended."""

_SEPARATORS = (os.sep, os.altsep) if os.altsep else (os.sep,)
_IN_DIRECTORY = re.compile(r"seenn-outbox-[A-Za-z0-9_.-]+-[0-9]+-[0-9a-f]{8}\.sqlite")


@dataclass(frozen=True)
class Family:
    """The outbox files that one setting names.

    Attributes:
        directory: Where they are.
        base: In file mode, the name of the file the setting names; ``None`` in
            directory mode.
    """

    directory: str
    base: str | None = None

    @property
    def path(self) -> str | None:
        """The file the setting names (file mode), else ``None``."""
        return None if self.base is None else os.path.join(self.directory, self.base)

    def new_path(self) -> str:
        """A name no process has used: for a file of this process alone."""
        tag = f"{os.getpid()}-{os.urandom(4).hex()}"
        if self.base is None:
            return os.path.join(self.directory, f"seenn-outbox-{_host()}-{tag}.sqlite")
        return os.path.join(self.directory, f"{self.base}.{tag}")

    def members(self) -> list[str]:
        """The outbox files of the family now in the directory, by name.

        Raises:
            OSError: the directory cannot be read.
        """
        if self.base is None:
            pattern = _IN_DIRECTORY
        else:
            pattern = re.compile(re.escape(self.base) + r"(?:\.[0-9]+-[0-9a-f]{8})?")
        with os.scandir(self.directory) as entries:
            return sorted(os.path.join(self.directory, entry.name) for entry in entries
                          if pattern.fullmatch(entry.name))


def family_of(setting: object) -> Family:
    """The family an ``outbox`` setting names, making its directory if it is to be made.

    Raises:
        ValidationError: ``outbox``: not a path, empty, a NUL character, or a
            directory that cannot be made or is not one.
    """
    try:
        path = os.fspath(setting)  # type: ignore[call-overload]
    except TypeError:
        fail("outbox", f"must be a path (str or os.PathLike), not {type(setting).__name__}")
    if not isinstance(path, str):
        fail("outbox", "must be a str path, not bytes")
    if not path:
        fail("outbox", "must not be empty")
    if "\0" in path:
        fail("outbox", "must not contain a NUL character")
    # Absolute, so a process that changes its working directory still finds its siblings.
    if path.endswith(_SEPARATORS) or os.path.isdir(path):
        directory = os.path.abspath(path.rstrip("".join(_SEPARATORS)) or path[:1])
        if not os.path.isdir(directory):
            try:
                os.mkdir(directory, 0o700)  # the last part only, as a file's directory must exist
            except FileExistsError:
                pass  # made by another process just now, or not a directory (below)
            except OSError as exc:
                fail("outbox", f"{directory} cannot be made an outbox directory: {reason(exc)}")
            if not os.path.isdir(directory):
                fail("outbox", f"{directory} is not a directory")
        return Family(directory)
    directory, base = os.path.split(os.path.abspath(path))
    return Family(directory, base)


def open_own(family: Family, max_events: int, log: RateLimitedLog) -> Outbox:
    """Open this process's outbox in ``family``.

    Raises:
        ValidationError: ``outbox``: no file of the family can be opened here.
    """
    if family.path is None:
        try:
            return Outbox(family.new_path(), max_events, log, per_process=True)
        except OutboxInUse:  # a fresh name, locked: only by tampering
            fail("outbox", f"{family.directory}: a new outbox file is locked by another "
                 "process already")
    try:
        return Outbox(family.path, max_events, log)
    except OutboxInUse:
        pass
    try:
        own = Outbox(family.new_path(), max_events, log, per_process=True)
    except OutboxInUse:
        fail("outbox", f"{family.path} is in use, and so is a new file beside it")
    logger.warning("seenn: HTTP exporter: the outbox %s is in use by another process; this "
                   "process (pid %d) keeps its events in %s instead. To share one setting "
                   "between processes, give outbox a directory (a path ending in '/'): each "
                   "process keeps its own file there", family.path, os.getpid(), own.path)
    return own


def adopt_dead(family: Family, own: Outbox, log: RateLimitedLog) -> list[JobEvent]:
    """Take over the files of ``family`` whose process is gone; their events, to deliver.

    Their rows are in ``own`` when this returns (the events are only to be filed
    for delivery, as ``durable``), and the files are deleted. Never raises: what
    goes wrong is logged once a minute, and the file stays for a later look.
    """
    if not CAN_LOCK or own.closed or own.gone:
        return []  # without flock nobody can tell a dead file from a live one
    try:
        paths = family.members()
    except OSError as exc:
        log.error("outbox-scan", "seenn: HTTP exporter: cannot look for outboxes of ended "
                  "processes in %s (%s)", family.directory, reason(exc))
        return []
    adopted: list[JobEvent] = []
    for path in paths:
        if path == own.path:
            continue
        try:
            adopted += _adopt(path, own, log)
        except Exception as exc:  # a bug or an odd file must not stop the exporter
            log.error("outbox-adopt", "seenn: HTTP exporter: cannot adopt the outbox %s "
                      "(%r); it stays as it is", path, exc)
    return adopted


def _adopt(path: str, own: Outbox, log: RateLimitedLog) -> list[JobEvent]:
    try:
        listed = os.lstat(path)
    except OSError:
        return []
    if not stat.S_ISREG(listed.st_mode) or listed.st_uid != os.geteuid():
        return []  # a symlink, a directory, someone else's file: not ours to take
    try:
        handle = lock_file(path + ".lock", create=False)
    except (OutboxInUse, FileNotFoundError):
        return []  # its process is alive; or no lock file: not an outbox, or just adopted
    except OSError as exc:
        log.error("outbox-adopt", "seenn: HTTP exporter: cannot adopt the outbox %s (%s); it "
                  "stays as it is", path, reason(exc))
        return []
    if handle is None:
        return []  # deleted under us: another process has just adopted it
    try:
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            # Its adopter ended between deleting it and deleting its lock file.
            remove_outbox(path, log)
            return []
        if (now.st_dev, now.st_ino) != (listed.st_dev, listed.st_ino):
            return []  # a new file by that name: look again next time
        try:
            rows = _read_dead(path) if now.st_size else []  # empty: it died making it
        except sqlite3.Error as exc:
            log.warning("outbox-foreign", "seenn: HTTP exporter: %s is named like an outbox but "
                        "cannot be read as one (%s); it is left alone", path, exc)
            return []
        kept, events = [], []
        for row in rows:
            event = decode_row(row[3], path, log)
            if event is not None:
                kept.append(row)
                events.append(event)
        if kept and not own.add_rows(kept):
            return []  # logged by the outbox; the file stays for a later look
        # From here a crash can only make the next adopter send these events again,
        # under the same idempotency keys: the backend applies each once.
        remove_outbox(path, log)
    finally:
        handle.close()
    if events:
        logger.info("seenn: HTTP exporter: adopted %d undelivered event(s) from %s, left by a "
                    "process that has ended", len(events), path)
    return events


def _read_dead(path: str) -> list[Row]:
    """Every row of the outbox at ``path``, in replay order.

    Raises:
        sqlite3.Error: it is not an outbox (not SQLite, no ``events`` table), or unreadable.
    """
    # mode=rw: never create a file by that name.
    uri = "file:" + urllib.parse.quote(os.fsencode(os.path.abspath(path))) + "?mode=rw"
    conn = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)
    try:
        rows = conn.execute(f"SELECT job_id, seq, kind, event, accepted FROM events AS e "
                            f"{LOAD_ORDER}").fetchall()
    finally:
        conn.close()
    return cast("list[Row]", rows)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:64] or "host"
