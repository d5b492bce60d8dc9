"""One way to open the databases sendwise keeps (the decision log, the event store): SQLite
under the sendwise home by default, or the server a URL in the environment names."""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa

from .settings import home


def database_url(variable: str, default_file: str) -> str:
    """The URL in `variable`, with psycopg 3 as the PostgreSQL driver, else SQLite at
    `<home>/<default_file>`."""
    url = os.environ.get(variable)
    if url:
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+psycopg://" + url[len(plain) :]
        return url
    home().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home() / default_file}"


def open_engine(url: str, synchronous: str = "NORMAL") -> sa.Engine:
    """An engine; on SQLite in WAL mode (readers never wait for the writer) with the given
    `synchronous` level (FULL: a commit survives a power cut, not only a crash)."""
    sqlite = url.startswith("sqlite")
    engine = sa.create_engine(url, pool_pre_ping=not sqlite)
    if sqlite:
        if engine.url.database:
            Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)

        def pragmas(connection, _record) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        sa.event.listen(engine, "connect", pragmas)
    return engine


def placeholder(engine: sa.Engine) -> str:
    """The driver's parameter mark, for driver-level SQL on the hot paths."""
    return "?" if engine.dialect.paramstyle == "qmark" else "%s"
