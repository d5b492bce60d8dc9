"""The decision log: every served decision, with its holdout and randomisation probability.

A batch is one transaction: its `batches` row and all its decisions commit together or not at
all, so a server killed mid-batch leaves whole batches only, and a client that got no answer
knows its batch is not logged. Decisions are kept a row each in `decisions`, except a scored
batch's (`append_parts(..., columnar=True)`): each of its parts is one compressed Parquet
segment in `segments` (the bench's million decisions logged in 7.5 s, not 21-24 s a row each);
`read` gives both alike. SQLite under the sendwise home by default (WAL, so several workers
append at once); PostgreSQL when `SENDWISE_DECISION_LOG_URL` names one.

Reports and later training read outcomes' randomisation from here, never from serving.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from sendwise.errors import SendwiseError

from .database import database_url, open_engine, placeholder
from .files import constant, json_array

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
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("customer_id", sa.String(128), nullable=False),
    sa.Column("campaign", sa.String(128), nullable=False),
    sa.Column("trigger", sa.String(128)),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.Column("transactional", sa.Boolean, nullable=False),
    sa.Column("segment", sa.String(32), nullable=False),
    sa.Column("send", sa.Boolean, nullable=False),
    sa.Column("holdout", sa.Boolean, nullable=False),
    sa.Column("holdout_kind", sa.String(16)),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("offer", sa.String(64), nullable=False),
    sa.Column("offer_value", sa.Float, nullable=False),
    sa.Column("offer_probability", sa.Float),  # the offer's own draw; null: not drawn
    sa.Column("products", sa.Text, nullable=False),  # JSON array
    sa.Column("cross_sell", sa.Text),  # JSON array
    sa.Column("send_at", UTCDateTime),
    sa.Column("best_hours", sa.Text),  # JSON array
    sa.Column("purchase_propensity", sa.Float),
    sa.Column("reasons", sa.Text, nullable=False),  # JSON array
    sa.Column("model_versions", sa.String(256), nullable=False),
    sa.Index("ix_decisions_time", "decided_at"),  # in time order: cheap to keep up
)

# a scored batch's decisions, a compressed Parquet table per part (EXPORT_COLUMNS, as `read`
# gives them); its decision ids are `<batch_id>-<n>`, unique by construction (`batches` is
# keyed by batch), so a segment is found by its batch alone
segments = sa.Table(
    "segments",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("part", sa.Integer, primary_key=True),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

# the first marketing send of each campaign to each customer, written with its batch: caps
# read this small table by customer, so the log itself needs no index by customer (one that
# every batch of a thousand random customers rewrites a thousand pages of)
sends = sa.Table(
    "sends",
    metadata,
    sa.Column("customer_id", sa.String(128), primary_key=True),
    sa.Column("campaign", sa.String(128), primary_key=True),
    sa.Column("first_sent_at", UTCDateTime, nullable=False),
)
KEEP_SENDS = timedelta(days=90)  # a campaign name sent again after this counts anew

COLUMNS = [c.name for c in decisions.columns]
SENT_AT = pl.Datetime("us", "UTC")
LISTS = {
    "products": pl.String,
    "cross_sell": pl.String,
    "best_hours": pl.Int64,
    "reasons": pl.String,
}
# the export's columns (DESIGN: Decision log), then what else the log keeps
EXPORT_COLUMNS = (
    "decision_id",
    "batch_id",
    "decided_at",
    "customer_id",
    "campaign",
    "trigger",
    "segment",
    "send",
    "holdout",
    "holdout_kind",
    "probability",
    "offer",
    "products",
    "cross_sell",
    "send_at",
    "reasons",
    "model_versions",
    "transactional",
    "offer_value",
    "best_hours",
    "purchase_propensity",
    "offer_probability",
)


def would_be_send_time() -> pl.Expr:
    """When a decision's outcomes start counting, as `start_at`: its `send_at`, else (a
    holdout, or a send a cap or an empty window stopped) `decided_at` rounded up to the next
    full hour, the earliest time the policy could have chosen for a campaign with no window
    of its own. The log keeps neither a held-out recipient's time zone nor the request's
    window, so nothing closer to the hour they would have had is known from it."""
    decided = pl.col("decided_at")
    hour = decided.dt.truncate("1h")
    ceiling = pl.when(hour == decided).then(hour).otherwise(hour + pl.duration(hours=1))
    return pl.coalesce(pl.col("send_at"), ceiling).alias("start_at")


def log_url() -> str:
    """`SENDWISE_DECISION_LOG_URL`, or SQLite at `<home>/decisions.db`."""
    return database_url("SENDWISE_DECISION_LOG_URL", "decisions.db")


def _statements(values: list[str] | None) -> list[list[str] | None]:
    """`values` a few hundred per statement (SQLite's limit on parameters); None: one
    statement with no such filter."""
    if values is None:
        return [None]
    return [values[k : k + 500] for k in range(0, len(values), 500)]


def _polars_type(column: sa.Column) -> pl.DataType:
    if isinstance(column.type, UTCDateTime):
        return pl.Datetime("us", "UTC")
    return {bool: pl.Boolean, float: pl.Float64, int: pl.Int64}.get(
        column.type.python_type, pl.String
    )


# each exported column's type as `read` gives it: lists as lists
READ_TYPES = {
    name: pl.List(LISTS[name]) if name in LISTS else _polars_type(decisions.c[name])
    for name in EXPORT_COLUMNS
}


def _completed(frame: pl.DataFrame, batch_id: str, at: datetime | str) -> pl.DataFrame:
    """A batch's decisions with its id and time, and null for a nullable column the frame
    lacks (a writer from before it was kept)."""
    n = len(frame)
    batch = [constant(batch_id, n).alias("batch_id"), constant(at, n).alias("decided_at")]
    absent = [
        pl.lit(None).alias(c.name)
        for c in decisions.columns
        if c.nullable and c.name not in frame.columns
    ]
    return frame.hstack(batch).with_columns(absent)


@dataclass(frozen=True)
class Segment:
    """One part of a scored batch as the log keeps it (`DecisionLog.segment`)."""

    rows: int
    data: bytes  # the rows as zstd Parquet, typed as `read` gives them
    sent: pl.Series  # who was sent a marketing message, sorted: the send history's rows
    campaign: str
    versions: str


def _marketing_sends(rows: pl.DataFrame) -> pl.Series:
    """Who the rows send a marketing message to, sorted: in key order, each page of the send
    history is visited once (854,237 sends recorded in 2.1 s, not 2.6 s)."""
    return rows.filter(pl.col("send") & ~pl.col("transactional"))["customer_id"].sort()


class DecisionLog:
    """Append-only log of served and exported decisions, and the send history frequency
    caps read."""

    def __init__(self, url: str | None = None):
        self.url = url or log_url()
        self.engine = open_engine(self.url)
        had_sends = sa.inspect(self.engine).has_table("sends")
        metadata.create_all(self.engine, checkfirst=True)
        self._upgrade(had_sends)

    @property
    def address(self) -> str:
        """Where the log is, fit to print: the URL without its password."""
        return self.engine.url.render_as_string(hide_password=True)

    def _upgrade(self, had_sends: bool) -> None:
        """A log written by an earlier version gains the columns added since (nullable) and
        the send history its decisions hold."""
        present = {c["name"] for c in sa.inspect(self.engine).get_columns("decisions")}
        with self.engine.begin() as connection:
            if not had_sends:
                first = (
                    sa.select(
                        decisions.c.customer_id,
                        decisions.c.campaign,
                        sa.func.min(decisions.c.decided_at),
                    )
                    .where(decisions.c.send, ~decisions.c.transactional)
                    .group_by(decisions.c.customer_id, decisions.c.campaign)
                )
                connection.execute(
                    sends.insert().from_select(["customer_id", "campaign", "first_sent_at"], first)
                )
            for column in decisions.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=self.engine.dialect)
                    connection.execute(
                        sa.text(f'ALTER TABLE decisions ADD COLUMN "{column.name}" {kind}')
                    )

    def append(self, batch_id: str, decided_at: datetime, rows: pl.DataFrame) -> None:
        """Log one batch of decisions (`sendwise.policy.decide.DECISION_COLUMNS`) whole, in
        one transaction, or raise with nothing logged."""
        self.append_parts(batch_id, decided_at, [rows])

    def append_parts(
        self,
        batch_id: str,
        decided_at: datetime,
        parts: Iterable[pl.DataFrame | Segment],
        columnar: bool = False,
    ) -> None:
        """`append` of a batch that comes in parts (a million decisions, bucket by bucket):
        one transaction still, with one part in memory at a time. `columnar`: the decision
        ids are `<batch_id>-<n>` (a scored batch's), and each part is kept as one segment;
        a part already encoded (`segment`) is kept so too."""
        at, stale = self._driver_time(decided_at), self._driver_time(decided_at - KEEP_SENDS)
        size, versions, campaign = 0, "", ""
        with self.engine.begin() as connection:
            for part in parts:
                if isinstance(part, pl.DataFrame) and columnar and len(part):
                    part = self.segment(part, batch_id, decided_at)
                rows = part.rows if isinstance(part, Segment) else len(part)
                if not rows:
                    continue
                first, size = size, size + rows
                if isinstance(part, Segment):
                    versions, campaign, sent = part.versions, part.campaign, part.sent
                    connection.execute(
                        segments.insert(),
                        {"batch_id": batch_id, "part": first, "decided_at": decided_at}
                        | {"rows": rows, "data": part.data},
                    )
                else:  # one driver-level executemany: a thousand rows in a few milliseconds
                    versions, campaign = part["model_versions"][0], part["campaign"][0]
                    sent = _marketing_sends(part)
                    connection.exec_driver_sql(
                        self._insert_sql, self._driver_values(part, batch_id, at)
                    )
                if len(sent):
                    connection.exec_driver_sql(
                        self._record_send_sql, [(c, campaign, at, stale) for c in sent]
                    )
            connection.exec_driver_sql(self._batch_sql, (batch_id, at, campaign, size, versions))

    @property
    def _mark(self) -> str:
        return placeholder(self.engine)

    @property
    def _batch_sql(self) -> str:
        m = self._mark
        return (
            "INSERT INTO batches (batch_id, decided_at, campaign, size, model_versions) "
            f"VALUES ({m}, {m}, {m}, {m}, {m})"
        )

    @property
    def _insert_sql(self) -> str:
        names = ", ".join(f'"{c}"' for c in COLUMNS)
        return f"INSERT INTO decisions ({names}) VALUES ({', '.join([self._mark] * len(COLUMNS))})"

    @property
    def _record_send_sql(self) -> str:
        """The first send of a campaign counts; one older than `KEEP_SENDS` is replaced."""
        m = self._mark
        return (
            f"INSERT INTO sends (customer_id, campaign, first_sent_at) VALUES ({m}, {m}, {m}) "
            "ON CONFLICT (customer_id, campaign) DO UPDATE SET first_sent_at = "
            f"excluded.first_sent_at WHERE sends.first_sent_at < {m}"
        )

    def _driver_time(self, at: datetime) -> datetime | str:
        """A time as `UTCDateTime` stores it: naive UTC; on SQLite, SQLAlchemy's text."""
        naive = at.astimezone(UTC).replace(tzinfo=None)
        return (
            naive.isoformat(" ", "microseconds") if self.engine.dialect.name == "sqlite" else naive
        )

    def _driver_values(self, frame: pl.DataFrame, batch_id: str, at: datetime | str) -> list[tuple]:
        """Rows as the driver takes them, in one select (`_stored`), with the batch's id
        and time (`_driver_time`)."""
        return _completed(frame, batch_id, at).select(self._stored).rows()

    @staticmethod
    def segment(frame: pl.DataFrame, batch_id: str, decided_at: datetime) -> Segment:
        """A part of a scored batch (rows, ids `<batch_id>-<n>`) as the log keeps it, for
        `append_parts`: encoding is most of logging a part, and can run while later parts
        are still being scored."""
        numbered = frame["decision_id"].str.starts_with(f"{batch_id}-").all()
        if not numbered:
            raise SendwiseError(f"a columnar batch's decision ids are {batch_id}-<n>")
        buffer = io.BytesIO()
        _completed(frame, batch_id, decided_at.astimezone(UTC)).select(
            pl.col(name).cast(kind) for name, kind in READ_TYPES.items()
        ).write_parquet(buffer, compression="zstd")
        return Segment(
            len(frame),
            buffer.getvalue(),
            _marketing_sends(frame),
            frame["campaign"][0],
            frame["model_versions"][0],
        )

    @cached_property
    def _stored(self) -> list[pl.Expr]:
        """Each column as the driver takes it: lists as JSON text, times as `UTCDateTime`
        stores them (naive UTC; on SQLite, the text SQLAlchemy writes, since comparisons
        there are on that text); the batch's own time is given so. Built once: building
        costs more than running."""
        sqlite = self.engine.dialect.name == "sqlite"

        def stored(column: sa.Column) -> pl.Expr:
            if column.name in LISTS:
                return json_array(column.name)
            if not isinstance(column.type, UTCDateTime) or column.name == "decided_at":
                return pl.col(column.name)
            naive = pl.col(column.name).dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            return naive.dt.strftime("%Y-%m-%d %H:%M:%S.%6f") if sqlite else naive

        return [stored(column) for column in decisions.columns]

    def sends(
        self, customer_ids: Iterable[str] | None, since: datetime, campaign: str
    ) -> pl.DataFrame:
        """`customer_id`, `sent_at`: when each other campaign first sent to each customer
        since `since` (a campaign asked about again counts once, the current one not at
        all); every customer's when `customer_ids` is None. Driver-level SQL: this runs on
        every API call, where SQLAlchemy's statement building cost more than the query."""
        m = self._mark
        sql = (
            "SELECT customer_id, first_sent_at FROM sends "
            f"WHERE first_sent_at >= {m} AND campaign != {m}"
        )
        params: list = [self._driver_time(since), campaign]
        if customer_ids is not None:  # one parameter, however many ids
            ids = list(dict.fromkeys(customer_ids))
            if self.engine.dialect.name == "sqlite":
                sql += f" AND customer_id IN (SELECT value FROM json_each({m}))"
                params.append(json.dumps(ids))
            else:
                sql += f" AND customer_id = ANY({m})"
                params.append(ids)
        with self.engine.connect() as connection:
            found = connection.exec_driver_sql(sql, tuple(params)).all()
        if not found:  # the usual answer to one recipient: no query plan for it
            return pl.DataFrame(schema={"customer_id": pl.String, "sent_at": SENT_AT})
        frame = pl.DataFrame(found, schema=["customer_id", "sent_at"], orient="row")
        sent_at = pl.col("sent_at")
        if self.engine.dialect.name == "sqlite":  # the text `_driver_time` writes
            sent_at = sent_at.cast(pl.String).str.to_datetime(
                "%Y-%m-%d %H:%M:%S%.f", time_unit="us"
            )
        return frame.select(
            pl.col("customer_id").cast(pl.String),
            sent_at.cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        )

    def record_sends(self, customer_ids: Iterable[str], at: datetime, campaign: str) -> None:
        """Nothing to do: the log itself is the send history."""

    def read(
        self,
        since: datetime | None = None,
        campaign: str | None = None,
        decision_ids: list[str] | None = None,
    ) -> pl.DataFrame:
        """The logged decisions (`EXPORT_COLUMNS`), oldest first; lists as lists."""
        query = sa.select(*(decisions.c[c] for c in EXPORT_COLUMNS))
        kept = sa.select(segments.c.data).order_by(segments.c.batch_id, segments.c.part)
        if since is not None:
            query = query.where(decisions.c.decided_at >= since)
            kept = kept.where(segments.c.decided_at >= since)
        if campaign is not None:
            query = query.where(decisions.c.campaign == campaign)
        chunks = _statements(decision_ids)
        with self.engine.connect() as connection:
            found = [
                row
                for chunk in chunks
                for row in connection.execute(
                    query if chunk is None else query.where(decisions.c.decision_id.in_(chunk))
                ).all()
            ]
            # a segment holds `<batch_id>-<n>`: each batch once, however many ids it was asked
            held = _statements(
                None if decision_ids is None else list({i.rpartition("-")[0] for i in decision_ids})
            )
            parts = [
                pl.read_parquet(io.BytesIO(data))
                for chunk in held
                for (data,) in connection.execute(
                    kept if chunk is None else kept.where(segments.c.batch_id.in_(chunk))
                )
            ]
        stored = {c: _polars_type(decisions.c[c]) for c in EXPORT_COLUMNS}  # lists as JSON
        frame = pl.DataFrame(found, schema=stored, orient="row").with_columns(
            pl.col(name).str.json_decode(pl.List(inner)) for name, inner in LISTS.items()
        )
        if parts:
            wanted = [pl.lit(True)]
            if campaign is not None:
                wanted.append(pl.col("campaign") == campaign)
            if decision_ids is not None:
                wanted.append(pl.col("decision_id").is_in(decision_ids))
            frame = pl.concat([frame, pl.concat(parts).filter(*wanted)])
        return frame.sort(
            "decided_at",
            "batch_id",
            pl.col("decision_id").str.extract(r"-(\d+)$").cast(pl.Int64, strict=False),
            maintain_order=True,
        )

    def batch_sizes(self) -> dict[str, tuple[int, int]]:
        """Per logged batch: (declared size, decisions present), for audits of wholeness."""
        rows = sa.select(decisions.c.batch_id, sa.func.count()).group_by(decisions.c.batch_id)
        kept = sa.select(segments.c.batch_id, sa.func.sum(segments.c.rows))
        present: dict[str, int] = {}
        with self.engine.connect() as connection:
            for batch, n in [
                *connection.execute(rows),
                *connection.execute(kept.group_by(segments.c.batch_id)),
            ]:
                present[batch] = present.get(batch, 0) + n
            declared = connection.execute(sa.select(batches.c.batch_id, batches.c.size)).all()
        return {batch: (size, present.get(batch, 0)) for batch, size in declared}

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.SQLAlchemyError:
            return False

    def count(self) -> int:
        kept = sa.select(sa.func.coalesce(sa.func.sum(segments.c.rows), 0))
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(sa.func.count()).select_from(decisions)).scalar()
            return rows + connection.execute(kept).scalar()

    def close(self) -> None:
        self.engine.dispose()


# what the campaign report needs of an exported decisions file (DESIGN: decisions export)
REPORTED = (
    "decision_id", "decided_at", "customer_id", "campaign", "trigger", "segment", "send",
    "holdout", "holdout_kind", "probability", "offer", "products", "send_at", "reasons",
)  # fmt: skip


def read_export(path: Path) -> pl.DataFrame:
    """A decisions file `sendwise decisions export` wrote (Parquet, or CSV with lists as JSON
    arrays), typed as `DecisionLog.read` gives the log, so a report from either is the same;
    a missing column or an unreadable value is one line naming it."""
    if not path.is_file():
        raise SendwiseError(f"{path}: no such file")
    try:
        frame = (
            pl.read_parquet(path)
            if path.suffix == ".parquet"
            else pl.read_csv(path, infer_schema=False)
        )
    except pl.exceptions.PolarsError as error:
        raise SendwiseError(f"{path}: not a decisions table: {error}") from None
    missing = [c for c in REPORTED if c not in frame.columns]
    if missing:
        raise SendwiseError(
            f"{path}: no column {', '.join(missing)} (write it with `sendwise decisions export`)"
        )
    for name in frame.columns:
        if name not in READ_TYPES:
            continue
        kind = READ_TYPES[name]
        column = frame[name]
        try:
            if column.dtype == pl.String and name in LISTS:
                column = column.str.json_decode(kind)
            elif column.dtype == pl.String and kind == pl.Datetime("us", "UTC"):
                column = column.str.to_datetime(time_zone="UTC", time_unit="us")
            elif column.dtype == pl.String and kind == pl.Boolean:
                column = column.str.to_lowercase().replace_strict(
                    {"true": True, "false": False}, default=None, return_dtype=pl.Boolean
                )
            frame = frame.with_columns(column.cast(kind).alias(name))
        except pl.exceptions.PolarsError as error:
            raise SendwiseError(f"{path}: column {name}: {str(error).splitlines()[0]}") from None
    return frame
