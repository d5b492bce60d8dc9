"""The decision log: every served decision, with its holdout and randomisation probability.

A batch is one transaction: its `batches` row and all its `decisions` rows commit together or
not at all, so a server killed mid-batch leaves whole batches only, and a client that got no
answer knows its batch is not logged. SQLite under the sendwise home by default (WAL, so
several workers append at once); PostgreSQL when `SENDWISE_DECISION_LOG_URL` names one.

Reports and later training read outcomes' randomisation from here, never from serving.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from .settings import home

metadata = sa.MetaData()


class UTCDateTime(sa.types.TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out, stored as naive UTC on every backend
    (SQLite has no time zones, and comparisons there are on the stored text)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


batches = sa.Table(
    "batches",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.Column("campaign", sa.String(128), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("model_versions", sa.String(256), nullable=False),
)

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("decision_id", sa.String(96), primary_key=True),
    sa.Column("batch_id", sa.String(64), nullable=False, index=True),
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("campaign", sa.String(128), nullable=False),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.Column("transactional", sa.Boolean, nullable=False),
    sa.Column("send", sa.Boolean, nullable=False),
    sa.Column("holdout", sa.Boolean, nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("segment", sa.String(32), nullable=False),
    sa.Column("offer", sa.String(64), nullable=False),
    sa.Column("offer_value", sa.Float, nullable=False),
    sa.Column("send_at", UTCDateTime),
    sa.Column("products", sa.Text, nullable=False),  # JSON array
    sa.Column("reasons", sa.Text, nullable=False),  # JSON array
    sa.Column("model_versions", sa.String(256), nullable=False),
    sa.Index("ix_decisions_customer_time", "customer_id", "decided_at"),
)

COLUMNS = [c.name for c in decisions.columns]


def log_url() -> str:
    """`SENDWISE_DECISION_LOG_URL`, or SQLite at `<home>/decisions.db`."""
    url = os.environ.get("SENDWISE_DECISION_LOG_URL")
    if url:
        # psycopg 3 is the PostgreSQL driver we ship
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+psycopg://" + url[len(plain) :]
        return url
    home().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home() / 'decisions.db'}"


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class DecisionLog:
    """Append-only log of served decisions, and the send history frequency caps read."""

    def __init__(self, url: str | None = None):
        self.url = url or log_url()
        self.engine = sa.create_engine(self.url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            if self.engine.url.database:
                Path(self.engine.url.database).parent.mkdir(parents=True, exist_ok=True)
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine, checkfirst=True)

    def append(self, batch_id: str, decided_at: datetime, campaign: str, rows: Sequence[dict]):
        """Log one batch whole (one transaction) or raise with nothing logged."""
        records = [
            {
                **{name: row.get(name) for name in COLUMNS},
                "batch_id": batch_id,
                "campaign": campaign,
                "decided_at": decided_at,
                "products": json.dumps(row["products"]),
                "reasons": json.dumps(row["reasons"]),
            }
            for row in rows
        ]
        versions = rows[0]["model_versions"] if rows else ""
        with self.engine.begin() as connection:
            connection.execute(
                batches.insert(),
                {
                    "batch_id": batch_id,
                    "decided_at": decided_at,
                    "campaign": campaign,
                    "size": len(rows),
                    "model_versions": versions,
                },
            )
            if records:
                connection.execute(decisions.insert(), records)

    def sends(
        self, customer_ids: Iterable[str], since: datetime, campaign: str
    ) -> dict[str, list[datetime]]:
        """Per customer, when each other campaign first sent to them since `since` (a campaign
        asked about again counts once, and the current one not at all)."""
        ids = list(set(customer_ids))
        if not ids:
            return {}
        query = (
            sa.select(decisions.c.customer_id, sa.func.min(decisions.c.decided_at))
            .where(
                decisions.c.customer_id.in_(sa.bindparam("ids", expanding=True)),
                decisions.c.send,
                decisions.c.decided_at >= since,
                decisions.c.campaign != campaign,
                ~decisions.c.transactional,
            )
            .group_by(decisions.c.customer_id, decisions.c.campaign)
        )
        found: dict[str, list[datetime]] = {}
        with self.engine.connect() as connection:
            for customer, at in connection.execute(query, {"ids": ids}):
                found.setdefault(customer, []).append(at)
        return found

    def record_sends(self, customer_ids: Iterable[str], at: datetime, campaign: str) -> None:
        """Nothing to do: the log itself is the send history."""

    def batch_sizes(self) -> dict[str, tuple[int, int]]:
        """Per logged batch: (declared size, decisions present), for audits of wholeness."""
        query = (
            sa.select(batches.c.batch_id, batches.c.size, sa.func.count(decisions.c.decision_id))
            .select_from(batches.outerjoin(decisions, decisions.c.batch_id == batches.c.batch_id))
            .group_by(batches.c.batch_id, batches.c.size)
        )
        with self.engine.connect() as connection:
            return {b: (size, n) for b, size, n in connection.execute(query)}

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.SQLAlchemyError:
            return False

    def count(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(decisions)).scalar()

    def close(self) -> None:
        self.engine.dispose()
