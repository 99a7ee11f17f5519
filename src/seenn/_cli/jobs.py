"""``seenn jobs get|list|watch`` and ``seenn conformance``: tools that talk to a backend."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TextIO

from seenn._cli.errors import CLIError
from seenn._client.client import SeennClient
from seenn._client.resources import Job
from seenn._core.eta_live import describe
from seenn.errors import NotFoundError, SeennError


def _fail(message: str, status: int = 1) -> Exception:
    return CLIError(message, status)


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", help="the backend (default: SEENN_BASE_URL)")
    parser.add_argument("--api-key", help="the API key (default: SEENN_API_KEY)")


def _client(args: argparse.Namespace) -> SeennClient:
    base_url = args.base_url or os.environ.get("SEENN_BASE_URL")
    if not base_url:
        raise _fail("no backend: pass --base-url or set SEENN_BASE_URL", 2)
    api_key = args.api_key or os.environ.get("SEENN_API_KEY")
    if not api_key:
        raise _fail("no API key: pass --api-key or set SEENN_API_KEY", 2)
    try:
        return SeennClient(api_key, base_url=base_url, timeout=10.0, max_retries=2,
                           deadline=30.0)
    except SeennError as error:
        raise _fail(error.message, 2) from None


def _when(job: Job, name: str) -> str:
    value = getattr(job, name)
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def _stage(job: Job) -> str:
    if job.stage is None:
        return ""
    return f"{job.stage.name} ({job.stage.current}/{job.stage.total})"


def _cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.jobs.get(args.job_id)
    out = sys.stdout
    if args.json:
        out.write(json.dumps(job.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return 0
    rows = [("id", job.id), ("type", job.job_type), ("user", job.user_id),
            ("title", job.title), ("status", job.status), ("progress", f"{job.progress}%"),
            ("eta", time_left(job, _utc_now())),
            ("stage", _stage(job)), ("message", job.message),
            ("queue", f"{job.queue.position}/{job.queue.total}" if job.queue else ""),
            ("created", _when(job, "created_at")), ("updated", _when(job, "updated_at")),
            ("completed", _when(job, "completed_at")),
            ("result", job.result.url or job.result.type if job.result else ""),
            ("error", f"{job.error.code}: {job.error.message}" if job.error else ""),
            ("parent", job.parent.parent_job_id if job.parent else ""),
            ("children", _children(job))]
    for name, value in rows:
        if value:
            out.write(f"{name:<10} {value}\n")
    return 0


def _children(job: Job) -> str:
    c = job.children
    if c is None:
        return ""
    return (f"{c.total} total, {c.completed} completed, {c.failed} failed, "
            f"{c.running} running, {c.pending} pending")


def _cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.jobs.list(args.user_id, limit=args.limit, cursor=args.cursor)
    out = sys.stdout
    if args.json:
        out.write(json.dumps({"jobs": [job.to_dict() for job in page.jobs],
                              "nextCursor": page.next_cursor}, indent=2,
                             ensure_ascii=False) + "\n")
        return 0
    table = [("ID", "TYPE", "STATUS", "PROGRESS", "UPDATED", "TITLE")]
    table += [(job.id, job.job_type or "", job.status, f"{job.progress}%",
               _when(job, "updated_at"), job.title or "") for job in page.jobs]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
                  + "  " + row[5] + "\n")
    if not page.jobs:
        out.write(f"(no jobs for {args.user_id})\n")
    if page.next_cursor:
        out.write(f"more: {_next_page(args, page.next_cursor)}\n")
    return 0


def _next_page(args: argparse.Namespace, cursor: str) -> str:
    """The command for the next page: the options given on this command line, a new cursor.

    What came from the environment stays there; what was typed is typed again, so the
    line runs as it is (each value shell-quoted).
    """
    words = ["seenn", "jobs", "list", args.user_id]
    if args.limit != 20:
        words += ["--limit", str(args.limit)]
    words += ["--cursor", cursor]
    if args.base_url:
        words += ["--base-url", args.base_url]
    if args.api_key:
        words += ["--api-key", args.api_key]
    return shlex.join(words)


def _bar(job: Job, width: int = 30) -> str:
    filled = width * job.progress // 100
    parts = [f"[{'#' * filled}{'.' * (width - filled)}] {job.progress:3d}%", job.status]
    if job.stage is not None:
        parts.append(_stage(job))
    if job.message:
        parts.append(job.message)
    return "  ".join(parts)


def time_left(job: Job, now: datetime) -> str:
    """How long a running job has left by the backend's estimate, in words, or ``""``.

    From ``estimatedCompletionAt``; "taking longer than usual" when the backend says
    ``etaOverdue`` or that time has passed while the job still runs.
    """
    if job.status != "running":
        return ""
    if job.eta_overdue:
        return describe(0.0, overdue=True)
    when = job.estimated_completion_at
    if when is None:
        return ""
    left = (when - now).total_seconds()
    return describe(left, overdue=left <= 0)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def watch(client: SeennClient, job_id: str, *, interval: float, out: TextIO,
          tty: bool, now: Callable[[], datetime] = _utc_now,
          appear_within: float = 60.0, clock: Callable[[], float] = time.monotonic) -> int:
    """Follow a job until it ends, drawing its progress; 0 if it completed, 1 otherwise.

    A running job's line ends with the time left by the backend's estimate. On a
    terminal the line is redrawn whenever it changes; otherwise a line is written
    when the job changes (the countdown alone does not add lines). A backend that
    offers long polls answers as soon as the job changes; on a terminal a read then
    waits at most ``interval`` seconds, so the countdown still moves. Otherwise the
    job is read every ``interval`` seconds.

    A job the backend does not know yet is waited for, up to ``appear_within``
    seconds (an id is often handed out a moment before its job is created); one that
    disappears after it was seen ends the watch at once.
    """
    last = last_bar = ""
    seen = waiting = False
    give_up = clock() + appear_within
    wait = min(interval, 30.0) if tty else 30.0
    while True:
        try:
            for job in client.jobs.watch(job_id, interval=interval, wait=wait,
                                         unchanged=True):
                seen = True
                bar = _bar(job)
                left = time_left(job, now())
                line = f"{bar}  {left}" if left else bar
                if line != last and (tty or bar != last_bar):
                    if tty:
                        out.write("\r\x1b[2K" + line)
                    else:
                        out.write(line + "\n")
                    out.flush()
                    last, last_bar = line, bar
                if job.is_terminal:
                    return _ended(job, out, tty)
        except NotFoundError:
            if not seen and clock() < give_up:
                if not waiting:
                    out.write(f"waiting for job {job_id} to appear\n")
                    out.flush()
                    waiting = True
                time.sleep(interval)
                continue
            if tty and last:
                out.write("\n")
            raise _fail(f"job {job_id} not found (or expired)") from None
        raise AssertionError("watch() ends with a terminal job")  # pragma: no cover


def _ended(job: Job, out: TextIO, tty: bool) -> int:
    if tty:
        out.write("\n")
    if job.status == "completed":
        url = f": {job.result.url}" if job.result and job.result.url else ""
        out.write(f"completed{url}\n")
        return 0
    if job.error is not None:
        out.write(f"{job.status}: {job.error.code}: {job.error.message}\n")
    else:
        out.write(f"{job.status}\n")
    return 1


def _cmd_watch(args: argparse.Namespace) -> int:
    # NaN fails the comparison; a longer sleep overflows the platform's timer.
    if not 0 < args.interval <= 3600:
        raise _fail(f"--interval must be above 0 and at most 3600 seconds, got {args.interval}",
                    2)
    if not 0 <= args.wait <= 86400:
        raise _fail(f"--wait must be between 0 and 86400 seconds, got {args.wait}", 2)
    with _client(args) as client:
        return watch(client, args.job_id, interval=args.interval, out=sys.stdout,
                     tty=sys.stdout.isatty(), appear_within=args.wait)


def _cmd_conformance(args: argparse.Namespace) -> int:
    from seenn.conformance import format_table, run_checks

    base_url = args.base_url or os.environ.get("SEENN_BASE_URL")
    api_key = args.api_key or os.environ.get("SEENN_API_KEY")
    if not base_url or not api_key:
        raise _fail("conformance needs --base-url and --api-key "
                    "(or SEENN_BASE_URL and SEENN_API_KEY)", 2)
    results = run_checks(base_url, api_key, public_key=args.public_key,
                         base_path=args.base_path)
    sys.stdout.write(format_table(results))
    return 0 if all(r.passed or r.optional for r in results) else 1


def add_commands(commands: Any) -> None:
    """Add ``jobs`` and ``conformance`` to the ``seenn`` command's subparsers."""
    jobs = commands.add_parser("jobs", help="look at jobs on a backend",
                               description="Look at jobs on a Seenn-compatible backend.")
    sub = jobs.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND", required=True)

    get = sub.add_parser("get", help="show one job")
    get.add_argument("job_id", metavar="ID")
    get.add_argument("--json", action="store_true", help="print the job as JSON")
    _add_connection(get)
    get.set_defaults(func=_cmd_get)

    lst = sub.add_parser("list", help="list a user's jobs, newest first")
    lst.add_argument("user_id", metavar="USER")
    lst.add_argument("--limit", type=int, default=20, help="page size, 1-100 (default 20)")
    lst.add_argument("--cursor", help="continue after a previous page")
    lst.add_argument("--json", action="store_true", help="print the page as JSON")
    _add_connection(lst)
    lst.set_defaults(func=_cmd_list)

    wat = sub.add_parser("watch", help="follow a job live until it ends",
                         description="Follow a job until it ends: exit 0 when it completes, "
                                     "1 when it fails.")
    wat.add_argument("job_id", metavar="ID")
    wat.add_argument("--interval", type=float, default=1.0,
                     help="seconds between polls (default 1); a backend that offers long "
                          "polls answers as soon as the job changes")
    wat.add_argument("--wait", type=float, default=60.0,
                     help="seconds to wait for a job the backend does not know yet "
                          "(default 60; 0: fail at once)")
    _add_connection(wat)
    wat.set_defaults(func=_cmd_watch)

    conf = commands.add_parser(
        "conformance", help="check that a backend speaks the Seenn protocol",
        description="Run the protocol checks against a backend and print a pass/fail table. "
                    "It creates a few jobs for the user 'seenn-conformance'.")
    _add_connection(conf)
    conf.add_argument("--public-key", help="a public key of the same app, to check read-only "
                                           "access")
    conf.add_argument("--base-path", default="/v1", help="API path prefix (default /v1)")
    conf.set_defaults(func=_cmd_conformance)
