"""A real PostgreSQL server for the tests: a fresh cluster on a free loopback port.

PostgreSQL refuses to run as root, so as root (CI) the cluster belongs to the
``postgres`` user Debian's package creates, and its processes run as that user.
Durability is switched off (``fsync=off``): the tests need a real engine, not one that
survives a power cut.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.polling import wait_until


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if found:
        return Path(found[-1]).parent
    postgres = shutil.which("postgres")
    if postgres:
        return Path(postgres).parent
    raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; "
                       ".ci/run does it)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster; ``new_database()`` hands out empty databases."""

    def __init__(self) -> None:
        self._bindir = _bindir()
        self._root = Path(tempfile.mkdtemp(prefix="seenn-pg-"))
        self.port = _free_port()
        self._count = 0
        self._lock = threading.Lock()
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self._root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        data = self._root / "data"
        subprocess.run([*self._as, str(self._bindir / "initdb"), "-D", str(data), "-U",
                        "seenn", "-A", "trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True)
        self._process = subprocess.Popen(
            [*self._as, str(self._bindir / "postgres"), "-D", str(data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self._root}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(self._accepts, timeout=30, what="PostgreSQL to accept connections")

    def _accepts(self) -> bool:
        import psycopg

        if self._process.poll() is not None:
            raise RuntimeError(f"postgres exited with {self._process.returncode}")
        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def url(self, database: str) -> str:
        """The URL of one database of this server."""
        return f"postgresql://seenn@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """Create an empty database; its URL."""
        import psycopg

        with self._lock:
            self._count += 1
            name = f"t{self._count}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by ``new_database``, closing whatever is still connected.

        A test that leaves an app open would otherwise keep its connections until the
        run ends, and enough of them exhaust ``max_connections``.
        """
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete the cluster."""
        if self._process.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown: clients are disconnected.
            os.killpg(self._process.pid, signal.SIGINT)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        shutil.rmtree(self._root, ignore_errors=True)


def postgres_server() -> Iterator[PostgresServer]:
    """Run one server for as long as the generator is open."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()
