"""The ``seenn`` command line: ``serve``, ``jobs get|list|watch``, ``conformance``, ``demo``.

Every failure ends in one clear line on stderr and a non-zero exit status,
never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from seenn._cli.errors import CLIError
from seenn._cli.workers import MAX_WORKERS
from seenn._core.validation import MAX_STALE_AFTER, MIN_STALE_AFTER
from seenn._version import __version__
from seenn.errors import SeennError
from seenn.server._engines import shown_db
from seenn.server._writes import DEFAULT_MAX_EVENTS, MAX_EVENTS_LIMIT

if TYPE_CHECKING:
    from seenn.server import SeennServerApp, WSGIServer


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise CLIError(f"{name} must be an integer, got {value!r}", 2) from None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return port


def _starting(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """Answer 503 in JSON: the app of a server bound before its database is open.

    ``serve`` sets the real app before it serves, so this answers only if that changes.
    """
    body = b'{"error":{"code":"STARTING","message":"the server is starting"}}'
    start_response("503 Service Unavailable", [("Content-Type", "application/json"),
                                               ("Content-Length", str(len(body)))])
    return [body]


def _cmd_serve(args: argparse.Namespace) -> int:
    from seenn.server import WSGIServer, create_app

    api_key = args.api_key or os.environ.get("SEENN_SERVER_API_KEY") or None
    public_key = args.public_key or os.environ.get("SEENN_SERVER_PUBLIC_KEY") or None
    rate_limit = args.rate_limit if args.rate_limit is not None else _env_int(
        "SEENN_SERVER_RATE_LIMIT")
    if rate_limit is not None and rate_limit < 1:
        raise CLIError("--rate-limit must be at least 1", 2)
    if args.workers > 1 and not hasattr(os, "fork"):
        raise CLIError("serve: --workers needs os.fork (Linux, macOS, other Unix)", 2)
    max_waiters = serve_waiters(args.max_waiters, args.max_connections)
    # Bind before the database is opened: a busy port must not leave behind a new
    # database whose key pair was never shown. Requests wait until the app is set.
    try:
        server = WSGIServer((args.host, args.port), _starting, access_log=args.access_log,
                            max_connections=args.max_connections,
                            header_timeout=args.header_timeout, idle_timeout=args.idle_timeout)
    except OSError as error:
        raise CLIError(f"serve: cannot listen on {args.host}:{args.port}: "
                       f"{error.strerror or error}") from None

    def open_app(api_key: str | None, public_key: str | None) -> SeennServerApp:
        try:
            return create_app(args.db, api_key=api_key, public_key=public_key,
                              rate_limit=rate_limit, cors_origin=args.cors_origin or None,
                              stale_after=args.stale_after, max_events=args.max_events,
                              max_waiters=max_waiters)
        except SeennError as error:
            raise CLIError(f"serve: {error.message}", 2) from None
        except (OSError, sqlite3.Error) as error:
            raise CLIError(f"serve: cannot open database {shown_db(args.db)}: {error}") from None

    try:
        app = open_app(api_key, public_key)
    except CLIError:
        server.server_close()
        raise
    out = sys.stdout
    if app.created_keys is not None:
        secret, public = app.created_keys
        try:
            out.write("Created an app with this key pair. It is shown once: store it now.\n"
                      f"  secret key (read and write): {secret}\n"
                      f"  public key (read only):      {public}\n")
            out.flush()
        except BaseException:
            server.server_close()
            app.close()
            raise
    rate = f", {rate_limit} requests/s per key" if rate_limit else ""
    stale = (f", running jobs silent for {args.stale_after:g} s fail as WORKER_LOST"
             if args.stale_after else "")
    processes = f", {args.workers} worker processes" if args.workers > 1 else ""
    listening = (f"seenn serve {__version__}: listening on {server.url} (the base_url for "
                 f"clients; database {shown_db(args.db)}{rate}{stale}{processes}); Ctrl-C stops\n"
                 f"  pages: {server.url}/ (every user's jobs, with the secret key), "
                 f"{server.url}/jobs/ID#key=PUBLIC_KEY (a job, to send to its user)\n")
    if args.workers > 1:
        # The workers open the database themselves after the fork, with the keys now
        # registered: nothing is carried across the fork, and none makes keys of its own.
        keys = app.created_keys or (api_key, public_key)
        app.close()
        return _serve_workers(args, server, lambda: open_app(*keys), listening)
    server.app = app
    try:
        out.write(listening)
        out.flush()
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        out.write("seenn serve: stopped\n")
    finally:
        server.server_close()
        app.close()
    return 0


def _serve_workers(args: argparse.Namespace, listener: WSGIServer,
                   open_app: Callable[[], SeennServerApp], listening: str) -> int:
    """Serve ``listener``'s socket from ``args.workers`` forked processes until stopped."""
    from seenn._cli.workers import Supervisor, drain
    from seenn.server import WSGIServer

    sock = listener.socket

    def serve(ready: Callable[[], None]) -> None:
        app = open_app()
        server = WSGIServer(("", 0), app, access_log=args.access_log,
                            max_connections=args.max_connections,
                            header_timeout=args.header_timeout,
                            idle_timeout=args.idle_timeout, sock=sock)
        try:
            ready()
            server.serve_forever(poll_interval=0.2)
        finally:
            # Stopped by a signal: answer what is in flight (for a moment), then close.
            server.server_close()
            drain(lambda: server.connections)
            app.close()

    def announce() -> None:
        sys.stdout.write(listening)
        sys.stdout.flush()

    try:
        status = Supervisor(args.workers, serve, announce).run()
    finally:
        listener.server_close()
    sys.stdout.write("seenn serve: stopped\n")
    return status


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _worker_count(text: str) -> int:
    value = _at_least_one(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_WORKERS}, got {text!r}")
    return value


def serve_waiters(given: int | None, max_connections: int) -> int:
    """The long polls ``seenn serve`` lets wait: ``--max-waiters``, or its default.

    Raises:
        CLIError: ``given`` is not below ``max_connections``.
    """
    if given is None:
        # Waiters hold connections: leave most of them to writes and plain polls.
        return min(64, max_connections // 4)
    if given >= max_connections:
        # At the cap, writes could not get in until a waiter ends.
        raise CLIError("--max-waiters must be below --max-connections", 2)
    return given


def _waiters(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 10000, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _stale_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value)
            and (value == 0 or MIN_STALE_AFTER <= value <= MAX_STALE_AFTER)):
        raise argparse.ArgumentTypeError(
            f"must be 0 (off) or {MIN_STALE_AFTER} to {MAX_STALE_AFTER} seconds, got {text!r}")
    return value


def _max_events(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_EVENTS_LIMIT:
        raise argparse.ArgumentTypeError(
            f"must be 0 (off) or a whole number up to {MAX_EVENTS_LIMIT}, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``seenn`` command."""
    parser = argparse.ArgumentParser(
        prog="seenn",
        description="Live state of long-running jobs: a reference backend and tools.",
    )
    parser.add_argument("--version", action="version", version=f"seenn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the reference self-hosted backend",
        description="Run the reference Seenn backend (HTTP + SQLite). On first start with "
                    "no keys it creates a test key pair and prints it once.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default: 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=_port, default=8080,
                       help="port, 0 to 65535; 0 picks a free one (default: 8080)")
    serve.add_argument("--db", default="seenn.db",
                       help="a SQLite file, or a postgresql:// URL (the postgres extra); "
                       "default: seenn.db")
    serve.add_argument("--api-key", help="the app's secret key (or SEENN_SERVER_API_KEY)")
    serve.add_argument("--public-key",
                       help="the app's public, read-only key (or SEENN_SERVER_PUBLIC_KEY)")
    serve.add_argument("--rate-limit", type=int, metavar="N",
                       help="requests per second allowed per key (429 beyond)")
    serve.add_argument("--cors-origin", default="*", metavar="ORIGIN",
                       help="Access-Control-Allow-Origin for browser clients (default '*'; "
                            "'' turns CORS off)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument("--workers", type=_worker_count, default=1, metavar="N",
                       help="processes serving the port, each with its own threads and "
                            "database connections; a worker that dies is replaced "
                            f"(1 to {MAX_WORKERS}, default: 1)")
    serve.add_argument("--max-connections", type=_at_least_one, default=256, metavar="N",
                       help="connections served at once; more wait to be accepted, and "
                            "idle kept-alive ones are closed to make room (default: 256)")
    serve.add_argument("--header-timeout", type=_positive_seconds, default=10.0,
                       metavar="SECONDS",
                       help="time a client has to send a request's line and headers, "
                            "in total (default: 10)")
    serve.add_argument("--idle-timeout", type=_positive_seconds, default=30.0,
                       metavar="SECONDS",
                       help="time a kept-alive connection may wait for its next request "
                            "(default: 30)")
    serve.add_argument("--stale-after", type=_stale_seconds, default=300.0,
                       metavar="SECONDS",
                       help="end a running job that has had no update for this long as "
                            "failed with WORKER_LOST (its worker is gone); 0 turns it off "
                            "for jobs that set no limit of their own (default: 300)")
    serve.add_argument("--max-events", type=_max_events, default=DEFAULT_MAX_EVENTS,
                       metavar="N",
                       help="the most job events one POST /v1/events may carry; 0 turns "
                            "that extension off (default: 500)")
    serve.add_argument("--max-waiters", type=_waiters, default=None, metavar="N",
                       help="long polls (GET ...?wait=) that may wait at once, each holding "
                            "a connection's thread; more are answered at once; 0 turns long "
                            "polls off; below --max-connections (default: 64, or a quarter "
                            "of --max-connections if less)")
    serve.set_defaults(func=_cmd_serve)

    from seenn._cli.jobs import add_commands

    add_commands(commands)

    from seenn._cli.demo import build_parser as demo_options

    demo = commands.add_parser(
        "demo", help="run a tracked pipeline against an embedded backend",
        description="Start seenn serve in this process (free loopback port, temporary "
                    "database), run a small tracked video pipeline through the HTTP "
                    "exporter, and show live what a phone polling the job would see.")
    demo_options(demo)
    demo.set_defaults(func=_cmd_demo)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from seenn._cli.demo import run

    # NaN fails the comparison; beyond 100 the sleeps overflow or never end.
    if not 0 <= args.pace <= 100:
        raise CLIError(f"--pace must be from 0 to 100, got {args.pace}", 2)
    return run(sys.stdout, pace=args.pace, fail=args.fail, open_page=args.open_page)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``seenn`` command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        return func(args)
    except CLIError as error:
        sys.stderr.write(f"seenn: {error}\n")
        return error.status
    except SeennError as error:
        sys.stderr.write(f"seenn: {error}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("seenn: interrupted\n")
        return 130
    except Exception as error:
        # A bug, not a usage error: still one line, as every failure of the command.
        detail = " ".join(str(error).split())
        sys.stderr.write(f"seenn: internal error: {type(error).__name__}: {detail}\n")
        return 1
