"""Which storage engine a ``--db`` value names."""

from __future__ import annotations

from typing import Any

from seenn.server._store import SQLiteStore, Store


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
