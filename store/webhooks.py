"""What webhook delivery keeps beside the event store.

Dead letters: a firing the receiver never took after the last retry (or refused outright with a
4xx) is written here with its last status, error and attempt count, so the sender's cursor can
move on and one bad firing never holds back the rest; an operator reads them to redeliver or
to see what broke. The table lives in the same database as the firings (`EventStore.url`):
one backup, one connection string. A dead letter is keyed by `trigger_id`, so a sender that
crashes between writing it and moving its cursor writes the same row again, not a second one.
"""

from __future__ import annotations

import sqlalchemy as sa

from .database import open_engine, placeholder
from .events import Seq, now_micros

metadata = sa.MetaData()

dead_letters = sa.Table(
    "webhook_dead_letters",
    metadata,
    sa.Column("trigger_id", sa.String(64), primary_key=True),
    sa.Column("firing_seq", Seq, nullable=False),  # the firing's `seq` in the event store
    sa.Column("status", sa.Integer),  # the last HTTP status; null when none came back
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("failed_at", sa.BigInteger, nullable=False),  # µs since the epoch, UTC
)


class WebhookStore:
    """The dead letters of webhook delivery, in the event store's database."""

    def __init__(self, url: str):
        self.url = url
        self.engine = open_engine(url, synchronous="FULL")
        metadata.create_all(self.engine, checkfirst=True)
        m = placeholder(self.engine)
        self._insert = (
            "INSERT INTO webhook_dead_letters "
            "(trigger_id, firing_seq, status, error, attempts, failed_at) "
            f"VALUES ({m}, {m}, {m}, {m}, {m}, {m}) ON CONFLICT (trigger_id) DO UPDATE SET "
            "status = excluded.status, error = excluded.error, attempts = excluded.attempts, "
            "failed_at = excluded.failed_at"
        )

    def add_dead_letter(
        self, trigger_id: str, firing_seq: int, status: int | None, error: str, attempts: int
    ) -> None:
        """Record a firing given up on (again: the row of an earlier try is replaced)."""
        with self.engine.begin() as connection:
            connection.exec_driver_sql(
                self._insert, (trigger_id, firing_seq, status, error, attempts, now_micros())
            )

    def dead_letters(self) -> list[dict]:
        """Every dead letter in firing order: `trigger_id`, `firing_seq`, `status`, `error`,
        `attempts`, `failed_at` (µs since the epoch, UTC)."""
        query = sa.select(dead_letters).order_by(dead_letters.c.firing_seq)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def close(self) -> None:
        self.engine.dispose()
