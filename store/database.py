"""One way to open the databases sendwise keeps (the decision log, the event store): SQLite
under the sendwise home by default, or the server a URL in the environment names."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def leader(engine: sa.Engine, name: str, key: int) -> Iterator[Callable[[], bool]]:
    """A callable that tries to take (and from then on holds) the lock `name` of the workers
    sharing `engine`'s database; the lock is let go when the block ends: the one "only one
    worker acts" lock of the trigger engine and the webhook sender. The operating system or
    the server releases it when its holder dies, even by `kill -9`, so a waiting worker takes
    over without anyone cleaning up.

    SQLite: `flock` on `<database>.<name>-lock` (per open file, so two workers in one process
    exclude each other too). PostgreSQL: the session advisory lock `key` on a connection held
    for the block. Each kind of worker passes its own name and key, so the trigger engine and
    the webhook sender may lead in different processes.
    """
    if engine.dialect.name == "sqlite":
        with Path(f"{engine.url.database}.{name}-lock").open("a") as handle:

            def take_file() -> bool:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    return False

            yield take_file
        return
    with engine.connect() as connection:
        held = False

        def take_advisory() -> bool:
            nonlocal held
            if not held:
                held = bool(
                    connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({key})").scalar()
                )
                connection.commit()  # end the transaction; the session lock stays
            return held

        try:
            yield take_advisory
        finally:  # the pool keeps the session open: let go of the lock by hand
            if held:
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
                connection.commit()
