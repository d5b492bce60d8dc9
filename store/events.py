"""The event store: behaviour and catalog changes as they arrived, and the triggers they fired.

Embedded default: SQLite at `<home>/events.db` (synchronous FULL: an acknowledged batch
survives a crash and a power cut); PostgreSQL when `SENDWISE_EVENTS_URL` names one. Every
table has a `seq` in arrival order: the trigger engine reads events after its cursor, and an
ESP reads firings after its own (`GET /triggers?after=`). Events are idempotent by
`message_id`, firings by `trigger_id`; a batch is stored whole or not at all.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import polars as pl
import sqlalchemy as sa

from .database import database_url, open_engine, placeholder
from .files import json_array

# an event as the engine reads it (`sendwise.features.events` checks and flattens them);
# `at` and `received_at` in µs since the epoch, UTC
EVENT_SCHEMA = {
    "message_id": pl.String,
    "type": pl.String,
    "customer_id": pl.String,
    "at": pl.Int64,
    "product_id": pl.String,
    "category": pl.String,
    "query": pl.String,
    "price": pl.Float64,
    "quantity": pl.Int64,
    "order_id": pl.String,
    "products": pl.List(pl.String),  # an order's product ids
    "machine_open": pl.Boolean,
    "properties": pl.String,  # everything the event said, as JSON
}
CATALOG_SCHEMA = {"product_id": pl.String, "at": pl.Int64, "price": pl.Float64, "stock": pl.Int64}


metadata = sa.MetaData()
Seq = sa.BigInteger().with_variant(sa.Integer, "sqlite")  # SQLite's rowid needs INTEGER

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", Seq, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(256), nullable=False, unique=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("customer_id", sa.String(256), nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),  # µs since the epoch, UTC
    sa.Column("product_id", sa.String(256)),
    sa.Column("category", sa.String(256)),
    sa.Column("query", sa.String(1024)),
    sa.Column("price", sa.Float),
    sa.Column("quantity", sa.Integer),
    sa.Column("order_id", sa.String(256)),
    sa.Column("products", sa.Text),  # JSON list of product ids
    sa.Column("machine_open", sa.Boolean),
    sa.Column("properties", sa.Text),
    sa.Column("received_at", sa.BigInteger, nullable=False),
)
catalog = sa.Table(
    "catalog_updates",
    metadata,
    sa.Column("seq", Seq, primary_key=True, autoincrement=True),
    sa.Column("product_id", sa.String(256), nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("price", sa.Float),
    sa.Column("stock", sa.Integer),
    sa.Column("received_at", sa.BigInteger, nullable=False),
)
firings = sa.Table(
    "firings",
    metadata,
    sa.Column("seq", Seq, primary_key=True, autoincrement=True),
    sa.Column("trigger_id", sa.String(64), nullable=False, unique=True),
    sa.Column("trigger", sa.String(32), nullable=False),
    sa.Column("customer_id", sa.String(256), nullable=False),
    sa.Column("subject", sa.String(1024)),
    sa.Column("fired_at", sa.BigInteger, nullable=False),
    sa.Column("decision", sa.Text, nullable=False),  # the decision as the API writes it
)
cursors = sa.Table(
    "cursors",  # how far a reader (the trigger engine) has read each table
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
)

EVENT_COLUMNS = list(EVENT_SCHEMA)


CHUNK = 500  # ids per IN (...): SQLite allows a few thousand parameters a statement


def events_url() -> str:
    return database_url("SENDWISE_EVENTS_URL", "events.db")


def now_micros() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


class EventStore:
    """Events, catalog updates and firings, durable once a call returns."""

    def __init__(self, url: str | None = None):
        self.url = url or events_url()
        self.engine = open_engine(self.url, synchronous="FULL")
        metadata.create_all(self.engine, checkfirst=True)
        m = placeholder(self.engine)
        names = [*EVENT_COLUMNS, "received_at"]
        self._insert_events = (
            f"INSERT INTO events ({', '.join(names)}) VALUES ({', '.join([m] * len(names))}) "
            "ON CONFLICT (message_id) DO NOTHING"
        )
        self._insert_catalog = (
            "INSERT INTO catalog_updates (product_id, at, price, stock, received_at) "
            f"VALUES ({m}, {m}, {m}, {m}, {m})"
        )
        self._insert_firing = (
            "INSERT INTO firings (trigger_id, trigger, customer_id, subject, fired_at, decision) "
            f"VALUES ({m}, {m}, {m}, {m}, {m}, {m}) ON CONFLICT (trigger_id) DO NOTHING"
        )
        self._mark = m

    def add_events(self, rows: pl.DataFrame) -> int:
        """Store checked events (`sendwise.features.events.EVENT_SCHEMA`) in one transaction;
        the number new (the rest repeat a stored `message_id`, within the batch or before)."""
        values = rows.with_columns(json_array("products"), received_at=pl.lit(now_micros()))
        with self.engine.begin() as connection:
            return connection.exec_driver_sql(self._insert_events, values.rows()).rowcount

    def add_catalog(self, rows: pl.DataFrame) -> int:
        values = rows.with_columns(received_at=pl.lit(now_micros())).rows()
        if not values:
            return 0
        with self.engine.begin() as connection:
            connection.exec_driver_sql(self._insert_catalog, values)
        return len(values)

    def events_after(
        self, seq: int, limit: int | None = None, types: tuple[str, ...] | None = None
    ) -> pl.DataFrame:
        """Stored events after `seq` (of these types), in arrival order, with their `seq`."""
        query = sa.select(events).where(events.c.seq > seq).order_by(events.c.seq)
        if types is not None:
            query = query.where(events.c.type.in_(types))
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            found = connection.execute(query).all()
        schema = {"seq": pl.Int64, **EVENT_SCHEMA, "products": pl.String}
        frame = pl.DataFrame(found, schema={**schema, "received_at": pl.Int64}, orient="row")
        return frame.with_columns(pl.col("products").str.json_decode(pl.List(pl.String)))

    def catalog_after(self, seq: int) -> pl.DataFrame:
        query = sa.select(catalog).where(catalog.c.seq > seq).order_by(catalog.c.seq)
        with self.engine.connect() as connection:
            found = connection.execute(query).all()
        schema = {"seq": pl.Int64, **CATALOG_SCHEMA, "received_at": pl.Int64}
        return pl.DataFrame(found, schema=schema, orient="row")

    def add_firings(self, rows: list[tuple[str, str, str, str | None, int, str]]) -> None:
        """(trigger_id, trigger, customer_id, subject, fired_at µs, decision JSON), once each."""
        if rows:
            with self.engine.begin() as connection:
                connection.exec_driver_sql(self._insert_firing, rows)

    def fired(self, trigger_ids: list[str]) -> set[str]:
        """Which of these firings are stored already (a restart re-derives them)."""
        found: set[str] = set()
        with self.engine.connect() as connection:
            for start in range(0, len(trigger_ids), CHUNK):
                chunk = trigger_ids[start : start + CHUNK]
                query = sa.select(firings.c.trigger_id).where(firings.c.trigger_id.in_(chunk))
                found.update(connection.execute(query).scalars())
        return found

    def firings_after(self, seq: int, limit: int) -> list[dict]:
        """Firings after `seq` in firing order: `seq`, `trigger_id`, `trigger`,
        `customer_id`, `subject`, `fired_at` (ISO 8601 UTC), `decision`."""
        query = sa.select(firings).where(firings.c.seq > seq).order_by(firings.c.seq).limit(limit)
        with self.engine.connect() as connection:
            found = connection.execute(query).mappings().all()
        return [
            {
                **{k: row[k] for k in ("seq", "trigger_id", "trigger", "customer_id", "subject")},
                "fired_at": _iso(row["fired_at"]),
                "decision": json.loads(row["decision"]),
            }
            for row in found
        ]

    def cursor(self, name: str) -> int:
        with self.engine.connect() as connection:
            found = connection.execute(
                sa.select(cursors.c.position).where(cursors.c.name == name)
            ).scalar()
        return found or 0

    def set_cursor(self, name: str, position: int) -> None:
        m = self._mark
        with self.engine.begin() as connection:
            connection.exec_driver_sql(
                f"INSERT INTO cursors (name, position) VALUES ({m}, {m}) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                (name, position),
            )

    def close(self) -> None:
        self.engine.dispose()


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
