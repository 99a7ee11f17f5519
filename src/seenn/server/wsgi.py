"""The backend of ``seenn serve`` for gunicorn and other WSGI servers, set up from the environment.

    SEENN_SERVER_DB=/var/lib/seenn/seenn.db \\
    SEENN_SERVER_API_KEY=sk_live_... SEENN_SERVER_PUBLIC_KEY=pk_live_... \\
    gunicorn -k gthread --threads 8 -w 4 -b 127.0.0.1:8080 'seenn.server.wsgi:app'

``app`` is made when it is first looked up (gunicorn does that in each worker, or once
in its master with ``--preload``); ``'seenn.server.wsgi:create_app_from_env()'`` does
the same as a factory. Settings, read from the environment:

* ``SEENN_SERVER_DB`` (required): the database, passed to ``create_app`` as it is.
* ``SEENN_SERVER_API_KEY`` and ``SEENN_SERVER_PUBLIC_KEY`` (both required): the key pair
  of the app to serve. Every worker registers the same pair, which is idempotent, so
  workers starting together on a new database make one app, not one each; a pair
  made up in a worker could not be shown to anyone.
* ``SEENN_SERVER_RATE_LIMIT``: requests per second per key, in each process.
* ``SEENN_SERVER_STALE_AFTER``: seconds before a silent running job fails as
  ``WORKER_LOST`` (default 300, ``0`` turns the server-wide limit off).
* ``SEENN_SERVER_CORS_ORIGIN``: ``Access-Control-Allow-Origin`` (default ``*``; empty
  turns CORS off).
* ``SEENN_SERVER_MAX_EVENTS``: the most events one ``POST /v1/events`` may carry
  (default 500, up to 10,000; ``0`` turns that extension off).
* ``SEENN_SERVER_MAX_WAITERS``: long polls (``?wait=``) that may wait at once in each
  worker process. Default ``0``, long polls off: a waiting long poll holds one of the
  worker's ``--threads``, and this module cannot see how many there are. Set it below
  ``--threads`` (say 4 of 8) to offer them.

A bad setting raises ``seenn.ValidationError`` naming the variable, before anything
is served.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from seenn._core.validation import MAX_STALE_AFTER, MIN_STALE_AFTER, fail
from seenn.server._app import SeennServerApp, StartResponse, create_app
from seenn.server._stale import DEFAULT_STALE_AFTER
from seenn.server._writes import MAX_EVENTS_LIMIT

__all__ = ["ProcessApp", "create_app_from_env"]

ENV_DB = "SEENN_SERVER_DB"
ENV_API_KEY = "SEENN_SERVER_API_KEY"
ENV_PUBLIC_KEY = "SEENN_SERVER_PUBLIC_KEY"
ENV_RATE_LIMIT = "SEENN_SERVER_RATE_LIMIT"
ENV_STALE_AFTER = "SEENN_SERVER_STALE_AFTER"
ENV_CORS_ORIGIN = "SEENN_SERVER_CORS_ORIGIN"
ENV_MAX_EVENTS = "SEENN_SERVER_MAX_EVENTS"
ENV_MAX_WAITERS = "SEENN_SERVER_MAX_WAITERS"


class ProcessApp:
    """The backend as a WSGI application whose database connections stay in their process.

    It makes its :class:`~seenn.server.SeennServerApp` at once, so a bad setting or an
    unusable database fails before anything is served, and again in any process
    forked from this one, on that process's first request: connections to a database
    (SQLite's above all) must not be carried across a fork. Before a fork the app
    of the forking process is closed, so no open connection is ever copied.

    Args:
        db: The database, as ``create_app`` takes it (a path or a URL).
        options: The keyword arguments of ``create_app``.
    """

    def __init__(self, db: str, **options: Any) -> None:
        self.db = db
        self._options = options
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._app: SeennServerApp | None = self._make()
        if hasattr(os, "register_at_fork"):
            ref = weakref.WeakMethod(self._before_fork)
            os.register_at_fork(before=lambda: _call(ref))

    def _make(self) -> SeennServerApp:
        try:
            return create_app(self.db, **self._options)
        except Exception:
            # Workers starting together on a new database race to register the key
            # pair; the loser of a race its engine reports as a conflict finds it
            # registered on a second try. Any other error recurs and is raised.
            return create_app(self.db, **self._options)

    def _before_fork(self) -> None:
        with self._lock:
            app, self._app = self._app, None
        # An app another process made is dropped unclosed: its connections are not ours.
        if app is not None and self._pid == os.getpid():
            app.close()

    @property
    def app(self) -> SeennServerApp:
        """The app of this process, made now if this process has none yet."""
        app = self._app
        if app is not None and self._pid == os.getpid():
            return app
        with self._lock:
            if self._app is None or self._pid != os.getpid():
                # An app copied by a fork is dropped unclosed: closing it here would
                # touch connections that belong to the parent.
                self._app = self._make()
                self._pid = os.getpid()
            return self._app

    def __call__(self, environ: dict[str, Any],
                 start_response: StartResponse) -> Iterable[bytes]:
        return self.app(environ, start_response)

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read (the standard-library gateway reads it too)."""
        return self.app.max_body_bytes

    def start_sweeper(self) -> None:
        """Start this process's sweep for silent jobs (as :class:`SeennServerApp` does)."""
        self.app.start_sweeper()

    def stop_sweeper(self) -> None:
        """Stop this process's sweep for silent jobs, if it runs."""
        app = self._app
        if app is not None and self._pid == os.getpid():
            app.stop_sweeper()

    def close(self) -> None:
        """Stop this process's sweep for silent jobs and close its database connections."""
        self._before_fork()


def _call(ref: weakref.WeakMethod[Any]) -> None:
    method = ref()
    if method is not None:
        method()


def _number(env: Mapping[str, str], name: str) -> float | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        fail(name, f"must be a number, got {text!r}")
    return value


def settings_from_env(env: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """The database and the ``create_app`` options the environment gives.

    Raises:
        seenn.ValidationError: A setting is missing or invalid; the error names its
            variable (never a key's value).
    """
    db = env.get(ENV_DB, "")
    if not db.strip():
        fail(ENV_DB, "is required: the database (a SQLite file, or a URL)")
    api_key = env.get(ENV_API_KEY, "")
    public_key = env.get(ENV_PUBLIC_KEY, "")
    for name, key in ((ENV_API_KEY, api_key), (ENV_PUBLIC_KEY, public_key)):
        if not key:
            fail(name, "is required: every worker process registers the same key pair "
                       f"({ENV_API_KEY} and {ENV_PUBLIC_KEY})")
        if key != key.strip():
            fail(name, "must not have surrounding white space")
    options: dict[str, Any] = {"api_key": api_key, "public_key": public_key}
    rate = _number(env, ENV_RATE_LIMIT)
    if rate is not None:
        if rate != int(rate) or rate < 1:
            fail(ENV_RATE_LIMIT, f"must be a whole number of at least 1, got "
                                 f"{env[ENV_RATE_LIMIT]!r}")
        options["rate_limit"] = int(rate)
    stale = _number(env, ENV_STALE_AFTER)
    if stale is not None and not (stale == 0 or MIN_STALE_AFTER <= stale <= MAX_STALE_AFTER):
        fail(ENV_STALE_AFTER, f"must be 0 (off) or {MIN_STALE_AFTER} to {MAX_STALE_AFTER} "
                              f"seconds, got {env[ENV_STALE_AFTER]!r}")
    options["stale_after"] = DEFAULT_STALE_AFTER if stale is None else stale
    if ENV_CORS_ORIGIN in env:
        options["cors_origin"] = env[ENV_CORS_ORIGIN].strip() or None
    events = _number(env, ENV_MAX_EVENTS)
    if events is not None:
        if events != int(events) or not 0 <= events <= MAX_EVENTS_LIMIT:
            fail(ENV_MAX_EVENTS, f"must be 0 (off) or a whole number up to {MAX_EVENTS_LIMIT}, "
                                 f"got {env[ENV_MAX_EVENTS]!r}")
        options["max_events"] = int(events)
    waiters = _number(env, ENV_MAX_WAITERS)
    if waiters is not None and (waiters != int(waiters) or not 0 <= waiters <= 10_000):
        fail(ENV_MAX_WAITERS, f"must be a whole number from 0 (off) to 10000, got "
                              f"{env[ENV_MAX_WAITERS]!r}")
    options["max_waiters"] = 0 if waiters is None else int(waiters)
    return db, options


def create_app_from_env(environ: Mapping[str, str] | None = None) -> ProcessApp:
    """Make the backend's WSGI application from ``SEENN_SERVER_*`` variables.

    For gunicorn: ``gunicorn -k gthread --threads 8 -w 4
    'seenn.server.wsgi:create_app_from_env()'``.

    Args:
        environ: The variables to read; ``os.environ`` when omitted.

    Returns:
        The application, safe to serve from several threads and processes.

    Raises:
        seenn.ValidationError: A setting is missing or invalid; the error names its
            variable.
    """
    db, options = settings_from_env(os.environ if environ is None else environ)
    return ProcessApp(db, **options)


def __getattr__(name: str) -> ProcessApp:
    # ``seenn.server.wsgi:app`` is made on first look-up, not at import: importing the
    # module needs no settings, and each gunicorn worker makes it after the fork.
    if name == "app":
        application = create_app_from_env()
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
