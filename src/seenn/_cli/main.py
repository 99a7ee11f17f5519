"""The ``seenn`` command line: ``serve``, ``jobs get|list|watch``, ``conformance``, ``demo``.

Every failure ends in one clear line on stderr and a non-zero exit status,
never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence

from seenn._cli.errors import CLIError
from seenn._version import __version__
from seenn.errors import SeennError


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise CLIError(f"{name} must be an integer, got {value!r}", 2) from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from seenn.server import WSGIServer, create_app

    api_key = args.api_key or os.environ.get("SEENN_SERVER_API_KEY") or None
    public_key = args.public_key or os.environ.get("SEENN_SERVER_PUBLIC_KEY") or None
    rate_limit = args.rate_limit if args.rate_limit is not None else _env_int(
        "SEENN_SERVER_RATE_LIMIT")
    if rate_limit is not None and rate_limit < 1:
        raise CLIError("--rate-limit must be at least 1", 2)
    try:
        app = create_app(args.db, api_key=api_key, public_key=public_key,
                         rate_limit=rate_limit, cors_origin=args.cors_origin or None)
    except SeennError as error:
        raise CLIError(f"serve: {error.message}", 2) from None
    except (OSError, sqlite3.Error) as error:
        raise CLIError(f"serve: cannot open database {args.db}: {error}") from None
    try:
        server = WSGIServer((args.host, args.port), app, access_log=args.access_log)
    except OSError as error:
        app.close()
        raise CLIError(f"serve: cannot listen on {args.host}:{args.port}: "
                       f"{error.strerror or error}") from None
    out = sys.stdout
    try:
        if app.created_keys is not None:
            secret, public = app.created_keys
            out.write("Created an app with this key pair. It is shown once: store it now.\n"
                      f"  secret key (read and write): {secret}\n"
                      f"  public key (read only):      {public}\n")
        rate = f", {rate_limit} requests/s per key" if rate_limit else ""
        out.write(f"seenn serve {__version__}: listening on {server.url}/v1 "
                  f"(database {args.db}{rate}); Ctrl-C stops\n")
        out.flush()
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        out.write("seenn serve: stopped\n")
    finally:
        server.server_close()
        app.close()
    return 0


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
    serve.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    serve.add_argument("--db", default="seenn.db", help="SQLite file (default: seenn.db)")
    serve.add_argument("--api-key", help="the app's secret key (or SEENN_SERVER_API_KEY)")
    serve.add_argument("--public-key",
                       help="the app's public, read-only key (or SEENN_SERVER_PUBLIC_KEY)")
    serve.add_argument("--rate-limit", type=int, metavar="N",
                       help="requests per second allowed per key (429 beyond)")
    serve.add_argument("--cors-origin", default="*", metavar="ORIGIN",
                       help="Access-Control-Allow-Origin for browser clients (default '*'; "
                            "'' turns CORS off)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
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

    if args.pace < 0:
        raise CLIError("--pace must not be negative", 2)
    return run(sys.stdout, pace=args.pace, fail=args.fail)


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
