"""``seenn serve``: the reference self-hosted backend (WSGI, standard library, SQLite).

Run it from the command line::

    seenn serve --host 127.0.0.1 --port 8080 --db seenn.db

or under any WSGI server (``create_app`` returns the WSGI application), or in
process, e.g. for tests and demos::

    with seenn.server.running("jobs.db") as backend:
        client = seenn.SeennClient(backend.api_key, base_url=backend.url)

The protocol it speaks is described in ``docs/self-hosted.md``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from seenn.server._app import SeennServerApp, create_app
from seenn.server._changes import DEFAULT_MAX_WAITERS
from seenn.server._stale import DEFAULT_STALE_AFTER
from seenn.server._writes import DEFAULT_MAX_EVENTS
from seenn.server._wsgi import WSGIServer

__all__ = ["RunningServer", "SeennServerApp", "WSGIServer", "create_app", "running"]


@dataclass(frozen=True)
class RunningServer:
    """A backend serving in this process (see :func:`running`).

    Attributes:
        url: The base URL, e.g. ``http://127.0.0.1:54321``.
        api_key: The secret key of the served app.
        public_key: The public key of the served app, when known.
        app: The WSGI application.
        server: The HTTP server.
    """

    url: str
    api_key: str
    public_key: str | None
    app: SeennServerApp
    server: WSGIServer


@contextmanager
def running(db_path: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = 0,
            api_key: str | None = None, public_key: str | None = None,
            rate_limit: int | None = None, stale_after: float = DEFAULT_STALE_AFTER,
            clock: Callable[[], float] | None = None,
            max_events: int = DEFAULT_MAX_EVENTS,
            max_waiters: int = DEFAULT_MAX_WAITERS) -> Iterator[RunningServer]:
    """Serve the reference backend on a background thread for the duration of a block.

    Args:
        db_path: The SQLite database file.
        host: The address to bind (loopback by default).
        port: The port; 0 picks a free one.
        api_key: The app's secret key; a fresh test pair is made when omitted.
        public_key: The app's public key.
        rate_limit: Requests per second allowed per key.
        stale_after: Seconds without a write after which a running job is ended as
            failed with ``WORKER_LOST``; 0 turns the server-wide limit off.
        clock: The app's time source, ``time.time`` by default (a seam for tests).
        max_events: The most events one ``POST /v1/events`` may carry; 0 turns that
            extension off, as on a backend without it.
        max_waiters: Long polls that may wait at once (0 turns them off).

    Yields:
        The running server: its URL and keys.
    """
    if api_key is None:
        from seenn.server._auth import new_key

        api_key, public_key = new_key("sk"), public_key or new_key("pk")
    app = create_app(db_path, api_key=api_key, public_key=public_key, rate_limit=rate_limit,
                     stale_after=stale_after, clock=clock, max_events=max_events,
                     max_waiters=max_waiters)
    server = WSGIServer((host, port), app)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="seenn-serve", daemon=True)
    thread.start()
    try:
        known_public = public_key or (app.created_keys[1] if app.created_keys else None)
        yield RunningServer(server.url, api_key, known_public, app, server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        app.close()
