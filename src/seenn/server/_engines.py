"""Which storage engine a ``--db`` value names."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from seenn.server._sqlite import SQLiteStore
from seenn.server._store import Store


def open_store(db: str, **options: Any) -> Store:
    """The store of ``db``: a ``postgresql://`` (or ``postgres://``) URL, else a SQLite file.

    Raises:
        seenn.ValidationError: ``db`` names PostgreSQL and the ``postgres`` extra
            (psycopg) is not installed.
    """
    if db.startswith(("postgresql://", "postgres://")):
        # Imported only here: psycopg belongs to the postgres extra.
        from seenn.server._postgres import PostgresStore

        store: Store = PostgresStore(db, **options)
        return store
    return SQLiteStore(db, **options)


def shown_db(db: str) -> str:
    """``db`` fit to print or log: the password of a URL is masked (``***``)."""
    try:
        parts = urlsplit(db)
        password = parts.password
    except ValueError:
        return db
    if not parts.scheme.startswith("postgres") or password is None:
        return db
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
