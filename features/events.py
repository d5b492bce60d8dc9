"""The event contract (DESIGN: Events and triggers): behaviour and catalog changes as they
happen, from `POST /events`, `POST /catalog`, Segment/RudderStack's HTTP tracking API, or a
file (`sendwise events ingest`, `sendwise triggers replay`).

Every event is checked here, where the shop contract is checked, and flattened to one row of
`EVENT_SCHEMA`: the properties the triggers read become columns, the rest is kept as JSON. A
problem is named by its event's index and field (`events.3.properties.product_id`).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import polars as pl
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sendwise.store.events import CATALOG_SCHEMA, EVENT_SCHEMA

from .contract import ContractError

MAX_EVENTS = 10_000  # per call
Id = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]

# what each type must carry in `properties` (others are kept, never required)
REQUIRED: dict[str, tuple[str, ...]] = {
    "product_viewed": ("product_id",),
    "product_list_viewed": ("category",),
    "products_searched": ("query",),
    "product_added": ("product_id",),
    "product_removed": ("product_id",),
    "checkout_started": (),
    "order_completed": ("order_id", "products"),
    "signed_up": (),
    "email_opened": (),
    "email_clicked": (),
    "unsubscribed": (),
}
EVENT_TYPES = tuple(REQUIRED)
EventType = Literal[EVENT_TYPES]


def _aware(value: datetime) -> datetime:
    if not 1970 <= value.year <= 2200:
        raise ValueError("timestamp must fall between 1970 and 2200")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class OrderLine(BaseModel):
    model_config = ConfigDict(extra="allow")

    product_id: Id
    price: float | None = Field(None, ge=0)
    quantity: int = Field(1, ge=1)


class Properties(BaseModel):
    """The properties triggers read; anything else an event carries is kept, not checked."""

    model_config = ConfigDict(extra="allow")

    product_id: Id | None = None
    category: Id | None = None
    query: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    price: float | None = Field(None, ge=0)
    quantity: int = Field(1, ge=1)
    order_id: Id | None = None
    products: list[OrderLine] | None = Field(None, min_length=1)
    machine_open: bool = False


class Event(BaseModel):
    """One behavioural event (DESIGN names, Segment's e-commerce spec in snake_case)."""

    model_config = ConfigDict(extra="forbid")

    message_id: Id
    type: EventType
    customer_id: Id
    timestamp: datetime
    properties: Properties = Field(default_factory=Properties, validate_default=True)

    @field_validator("timestamp")
    @classmethod
    def in_range(cls, value: datetime) -> datetime:
        return _aware(value)

    @field_validator("properties")
    @classmethod
    def carries_what_its_type_needs(cls, value: Properties, info: ValidationInfo) -> Properties:
        kind = info.data.get("type")
        missing = [p for p in REQUIRED.get(kind, ()) if getattr(value, p) is None]
        if missing:
            raise ValueError(f"a {kind} event needs {' and '.join(missing)}")
        return value


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS)


class CatalogUpdate(BaseModel):
    """A product's price or stock (or both) from a moment on."""

    model_config = ConfigDict(extra="forbid")

    product_id: Id
    timestamp: datetime
    price: float | None = Field(None, ge=0)
    stock: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def says_something(self) -> CatalogUpdate:
        self.timestamp = _aware(self.timestamp)
        if self.price is None and self.stock is None:
            raise ValueError("a catalog update needs price or stock")
        return self


class CatalogBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    products: list[CatalogUpdate] = Field(min_length=1, max_length=MAX_EVENTS)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def micros(at: datetime) -> int:
    """An aware time as µs since the epoch, exactly (no float on the way)."""
    return (at - EPOCH) // MICROSECOND


def as_time(us: int) -> datetime:
    return EPOCH + us * MICROSECOND


def event_rows(events: list[Event]) -> pl.DataFrame:
    """Checked events as `EVENT_SCHEMA` rows."""
    rows = []
    for e in events:
        p = e.properties
        rows.append(
            (
                e.message_id,
                e.type,
                e.customer_id,
                micros(e.timestamp),
                p.product_id,
                p.category,
                p.query,
                p.price,
                p.quantity,
                p.order_id,
                None if p.products is None else [line.product_id for line in p.products],
                p.machine_open,
                p.model_dump_json(exclude_defaults=True),
            )
        )
    return pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")


def catalog_rows(updates: list[CatalogUpdate]) -> pl.DataFrame:
    rows = [(u.product_id, micros(u.timestamp), u.price, u.stock) for u in updates]
    return pl.DataFrame(rows, schema=CATALOG_SCHEMA, orient="row")


# Segment / RudderStack: track calls named as the e-commerce spec names them
SEGMENT_NAMES = {
    "Product Viewed": "product_viewed",
    "Product List Viewed": "product_list_viewed",
    "Product Category Viewed": "product_list_viewed",
    "Products Searched": "products_searched",
    "Product Added": "product_added",
    "Product Removed": "product_removed",
    "Checkout Started": "checkout_started",
    "Order Completed": "order_completed",
    "Signed Up": "signed_up",
    "Email Opened": "email_opened",
    "Email Link Clicked": "email_clicked",
    "Email Clicked": "email_clicked",
    "Unsubscribed": "unsubscribed",
}


class SegmentCall(BaseModel):
    """One call of Segment's HTTP tracking API, as its SDKs (and RudderStack's) send it."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: str = "track"
    event: str | None = None
    message_id: Id | None = Field(None, alias="messageId")
    user_id: Id | None = Field(None, alias="userId")
    timestamp: datetime | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


class SegmentBatch(BaseModel):
    model_config = ConfigDict(extra="allow")

    batch: list[SegmentCall] = Field(min_length=1, max_length=MAX_EVENTS)


def snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def from_segment(calls: list[SegmentCall], received: datetime) -> tuple[list[dict], int]:
    """The calls sendwise acts on as API events, and how many it skips: identify, page and
    screen calls, events without a `userId` (an anonymous visitor is nobody to email yet),
    and track names outside the e-commerce spec's."""
    events, skipped = [], 0
    for call in calls:
        name = call.event or ""
        kind = SEGMENT_NAMES.get(name) or (snake(name) if snake(name) in REQUIRED else None)
        if call.type != "track" or kind is None or call.user_id is None:
            skipped += 1
            continue
        events.append(
            {
                "message_id": call.message_id or f"{call.user_id}:{name}:{call.timestamp}",
                "type": kind,
                "customer_id": call.user_id,
                "timestamp": call.timestamp or received,
                "properties": call.properties,
            }
        )
    return events, skipped


EVENTS = TypeAdapter(list[Event])
CATALOG = TypeAdapter(list[CatalogUpdate])


def read_event_file(path: Path, adapter: TypeAdapter = EVENTS, what: str = "event") -> list:
    """Events (or catalog updates) from JSON lines (one API object a line) or Parquet (the
    properties as columns), checked as the API checks them; the first bad line is named."""
    if not path.is_file():
        raise ContractError(f"{path}: no such file")
    if path.suffix == ".parquet":
        records = _parquet_records(pl.read_parquet(path), what)
    else:
        records = []
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ContractError(f"{path}: line {number}: not JSON ({error.msg})") from None
    try:
        return adapter.validate_python(records)
    except ValidationError as invalid:
        problem = invalid.errors(include_url=False)[0]
        index, *field = problem["loc"]
        where = f"line {index + 1}" if path.suffix != ".parquet" else f"row {index + 1}"
        name = ".".join(map(str, field)) or what
        raise ContractError(f"{path}: {where}: {name}: {problem['msg']}") from None


def _parquet_records(frame: pl.DataFrame, what: str) -> list[dict]:
    if what != "event":
        return frame.to_dicts()
    top = {"message_id", "type", "customer_id", "timestamp"}
    return [
        {
            **{k: v for k, v in row.items() if k in top},
            "properties": {k: v for k, v in row.items() if k not in top and v is not None},
        }
        for row in frame.to_dicts()
    ]
