"""A private schema in the real PostgreSQL (127.0.0.1:5432, database `test`), so that tests
and helpers running at once never see each other's rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextmanager
def private_schema(prefix: str = "t") -> Iterator[str]:
    """A ledger URL whose search_path is a fresh schema, dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(PG_URL)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
