"""The shop input contract: each table's columns as data, and the checks a shop must pass.

A table is checked in two steps. `check_columns` looks at the schema only (no rows read);
`check_rows` runs every row-level rule in one lazy query and reports the first rule broken,
naming the file, the column and the first offending rows. Conversion expressions
(`typed_columns`) are shared by both, so what is validated is exactly what is later read.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from enum import Enum
from functools import cache

import polars as pl

from sendwise.errors import SendwiseError

TIMESTAMP = pl.Datetime("us", "UTC")
ROW = "__row"  # 1-based data row number, for error messages
SHOWN_ROWS = 3


class ContractError(SendwiseError):
    """A shop table breaks the input contract."""


class Kind(Enum):
    ID = "id"
    TIMESTAMP = "timestamp"
    INT = "integer"
    FLOAT = "number"
    BOOL = "boolean"
    TEXT = "text"
    TIMEZONE = "IANA time zone"


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    required: bool = False
    allowed: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    unique: tuple[str, ...] = ()  # a key that must not repeat
    exact_duplicates: bool = False  # whole-row repeats of the required columns are refused
    mandatory: bool = False
    time_column: str | None = None  # the column the point-in-time rule filters on
    defaults: dict[str, object] = field(default_factory=dict)

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


WEB_EVENT_TYPES = ("view", "add_to_cart", "search", "checkout")
EMAIL_EVENT_TYPES = ("send", "open", "click", "unsubscribe", "bounce", "complaint")

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "orders",
            (
                Column("order_id", Kind.ID, required=True),
                Column("customer_id", Kind.ID, required=True),
                Column("product_id", Kind.ID, required=True),
                Column("ordered_at", Kind.TIMESTAMP, required=True),
                Column("quantity", Kind.INT, required=True),
                Column("unit_price", Kind.FLOAT, required=True, minimum=0.0),
                Column("discount", Kind.FLOAT, minimum=0.0, maximum=1.0),
                Column("currency", Kind.TEXT),
            ),
            exact_duplicates=True,
            mandatory=True,
            time_column="ordered_at",
            defaults={"discount": 0.0},
        ),
        Table(
            "customers",
            (
                Column("customer_id", Kind.ID, required=True),
                Column("created_at", Kind.TIMESTAMP),
                Column("country", Kind.TEXT),
                Column("timezone", Kind.TIMEZONE),
                Column("email_opt_in", Kind.BOOL),
            ),
            unique=("customer_id",),
            time_column="created_at",
            defaults={"email_opt_in": True},
        ),
        Table(
            "products",
            (
                Column("product_id", Kind.ID, required=True),
                Column("title", Kind.TEXT),
                Column("category", Kind.TEXT),
                Column("price", Kind.FLOAT, minimum=0.0),
                Column("margin", Kind.FLOAT, minimum=0.0, maximum=1.0),
                Column("in_stock", Kind.BOOL),
                Column("replenish_days", Kind.FLOAT, minimum=0.0),
            ),
            unique=("product_id",),
            defaults={"in_stock": True},
        ),
        Table(
            "events",
            (
                Column("customer_id", Kind.ID, required=True),
                Column("occurred_at", Kind.TIMESTAMP, required=True),
                Column("event_type", Kind.TEXT, required=True, allowed=WEB_EVENT_TYPES),
                Column("product_id", Kind.ID),
                Column("session_id", Kind.ID),
            ),
            time_column="occurred_at",
        ),
        Table(
            "email_events",
            (
                Column("customer_id", Kind.ID, required=True),
                Column("occurred_at", Kind.TIMESTAMP, required=True),
                Column("event_type", Kind.TEXT, required=True, allowed=EMAIL_EVENT_TYPES),
                Column("campaign_id", Kind.ID),
                Column("machine_open", Kind.BOOL),
            ),
            time_column="occurred_at",
            defaults={"machine_open": False},
        ),
        Table(
            "assignments",
            (
                Column("customer_id", Kind.ID, required=True),
                Column("campaign_id", Kind.ID, required=True),
                Column("arm", Kind.TEXT, required=True),
                Column("assigned_at", Kind.TIMESTAMP, required=True),
                Column("propensity", Kind.FLOAT, minimum=0.0, maximum=1.0),
            ),
            unique=("customer_id", "campaign_id"),
            time_column="assigned_at",
        ),
    )
}

_DTYPES = {
    Kind.ID: pl.String,
    Kind.TIMESTAMP: TIMESTAMP,
    Kind.INT: pl.Int64,
    Kind.FLOAT: pl.Float64,
    Kind.BOOL: pl.Boolean,
    Kind.TEXT: pl.String,
    Kind.TIMEZONE: pl.String,
}

# Naive formats are read as UTC; "T" separators and a trailing "Z" are normalised first.
_TIMESTAMP_FORMATS = (
    "%Y-%m-%d %H:%M:%S%.f%:z",
    "%Y-%m-%d %H:%M:%S%:z",
    "%Y-%m-%d %H:%M%:z",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
)


def dtype_of(kind: Kind) -> pl.DataType:
    return _DTYPES[kind]


@cache
def known_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def parse_timestamp(text: pl.Expr) -> pl.Expr:
    """Strings in any common ISO form to UTC timestamps; null where none fits."""
    normal = text.str.strip_chars().str.replace("T", " ").str.replace(r"(?i)z$", "+00:00")
    return pl.coalesce(
        [
            normal.str.to_datetime(fmt, strict=False, time_unit="us", time_zone="UTC")
            for fmt in _TIMESTAMP_FORMATS
        ]
    )


def convert(expr: pl.Expr, kind: Kind, source: pl.DataType) -> pl.Expr:
    """One column as read (CSV text or a Parquet type) to the contract's type; null on failure."""
    if kind is Kind.TIMESTAMP:
        if isinstance(source, pl.Datetime):
            if source.time_zone is None:
                return expr.dt.replace_time_zone("UTC").dt.cast_time_unit("us")
            return expr.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
        if source == pl.Date:
            return expr.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        return parse_timestamp(expr.cast(pl.String))
    if kind is Kind.BOOL:
        if source == pl.Boolean:
            return expr
        text = expr.cast(pl.String).str.strip_chars().str.to_lowercase()
        return (
            pl.when(text.is_in(["true", "t", "1", "yes", "y"]))
            .then(True)
            .when(text.is_in(["false", "f", "0", "no", "n"]))
            .then(False)
            .otherwise(None)
        )
    if kind is Kind.INT:
        number = expr.cast(pl.Float64, strict=False)
        return pl.when(number == number.round()).then(number).otherwise(None).cast(pl.Int64)
    if kind is Kind.FLOAT:
        return expr.cast(pl.Float64, strict=False)
    if kind is Kind.ID and source in (pl.Float32, pl.Float64):
        return expr.cast(pl.Int64, strict=False).cast(pl.String)
    return expr.cast(pl.String).str.strip_chars()


def typed_columns(table: Table, schema: pl.Schema) -> list[pl.Expr]:
    """Expressions that give every contract column its type, with defaults for absent ones."""
    exprs = []
    for column in table.columns:
        if column.name in schema:
            exprs.append(convert(pl.col(column.name), column.kind, schema[column.name]))
        else:
            default = table.defaults.get(column.name)
            exprs.append(pl.lit(default, dtype=dtype_of(column.kind)))
    return [e.alias(c.name) for e, c in zip(exprs, table.columns, strict=True)]


def check_columns(table: Table, schema: pl.Schema, file: str) -> None:
    """Required columns are present (schema only, no rows read)."""
    missing = [name for name in table.required if name not in schema]
    if missing:
        have = ", ".join(schema.names()) or "none"
        raise ContractError(
            f"{file}: missing required column {', '.join(repr(m) for m in missing)} "
            f"(columns found: {have})"
        )


@dataclass(frozen=True)
class _Rule:
    column: str
    problem: str
    bad: pl.Expr  # true on an offending row
    shown: pl.Expr  # what to show of an offending row
    exact: pl.Expr | None = None  # set: `bad` only marks candidates, this says which offend


def _column_rules(column: Column, source: pl.DataType) -> list[_Rule]:
    raw = pl.col(column.name)
    value = convert(raw, column.kind, source)
    rules = []
    if column.required:
        rules.append(_Rule(column.name, "is empty", raw.is_null(), raw))
    rules.append(
        _Rule(
            column.name,
            f"is not a valid {column.kind.value}",
            raw.is_not_null() & value.is_null(),
            raw.cast(pl.String),
        )
    )
    if column.allowed:
        rules.append(
            _Rule(
                column.name,
                f"has unknown values (allowed: {', '.join(column.allowed)})",
                value.is_not_null() & ~value.is_in(column.allowed),
                value,
            )
        )
    if column.kind is Kind.TIMEZONE:
        rules.append(
            _Rule(
                column.name,
                "is not an IANA time zone (e.g. Europe/London)",
                value.is_not_null() & ~value.is_in(sorted(known_timezones())),
                value,
            )
        )
    if column.minimum is not None:
        rules.append(
            _Rule(column.name, f"is below {column.minimum:g}", value < column.minimum, raw)
        )
    if column.maximum is not None:
        rules.append(
            _Rule(column.name, f"is above {column.maximum:g}", value > column.maximum, raw)
        )
    return rules


def _duplicate_rules(table: Table, schema: pl.Schema) -> list[_Rule]:
    """Repeats, found in one pass by a 64-bit hash of each row's key (a hundred million rows
    hold a hash each, not their columns), then confirmed on the rows whose hash repeats."""
    rules = []
    if table.unique:
        columns = [pl.col(c).cast(pl.String) for c in table.unique]
        key = pl.struct(columns)
        rules.append(
            _Rule(
                "+".join(table.unique),
                "repeats a value that must be unique",
                key.hash().is_duplicated(),
                pl.concat_str(columns, separator="|"),
                key.is_duplicated(),
            )
        )
    if table.exact_duplicates:
        typed = pl.struct(typed_columns(table, schema)[: len(table.required)])
        rules.append(
            _Rule(
                "all required columns",
                "has exact duplicate lines",
                typed.hash().is_duplicated(),
                pl.concat_str([pl.col(c).cast(pl.String) for c in table.required], separator="|"),
                typed.is_duplicated(),
            )
        )
    return rules


def check_rows(table: Table, frame: pl.LazyFrame, file: str) -> int:
    """Run every row rule in one pass; raise on the first one broken, else return the row count."""
    schema = frame.collect_schema()
    rules = [r for c in table.columns if c.name in schema for r in _column_rules(c, schema[c.name])]
    rules += _duplicate_rules(table, schema)
    flags = [rule.bad.fill_null(False) for rule in rules]
    counts = frame.select(
        pl.len().alias("rows"), *[flag.sum().alias(f"n{i}") for i, flag in enumerate(flags)]
    ).collect()
    rows = counts["rows"][0]
    if table.mandatory and rows == 0:
        raise ContractError(f"{file}: has no rows ({table.name} is required and must not be empty)")
    for i, (rule, flag) in enumerate(zip(rules, flags, strict=True)):
        count = counts[f"n{i}"][0]
        if not count:
            continue
        # a second pass, on the error path only, finds the first offending rows
        offending = frame.with_row_index(ROW, offset=1).filter(flag)
        if rule.exact is not None:  # candidates: the exact rule, on them alone, decides
            offending = offending.filter(rule.exact.fill_null(False)).collect().lazy()
            count = offending.select(pl.len()).collect().item()
            if not count:
                continue  # hashes that collided, not repeats
        shown = (
            offending.head(SHOWN_ROWS)
            .select(ROW, rule.shown.cast(pl.String).fill_null("null").alias("value"))
            .collect()
        )
        first = ", ".join(f"{row} ({value})" for row, value in shown.iter_rows())
        raise ContractError(
            f"{file}: column '{rule.column}' {rule.problem} in {count} row"
            f"{'s' if count > 1 else ''}; first rows: {first}"
        )
    return rows
