"""A simulated event stream for a shop: what its site would send sendwise in real time.

Sessions, each a burst of a few minutes: category browsing (views, repeat views of a
product, list views), searches, carts (adds, the odd removal), checkouts and orders; new
visitors signing up; a few unsubscribes; and catalog changes (price cuts and rises, stock
selling out and coming back, stock running low). Deterministic by seed, rows in
`sendwise.features.events.EVENT_SCHEMA` and `CATALOG_SCHEMA`, so the same stream feeds
`POST /events`, `sendwise events ingest` and `sendwise triggers replay`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from sendwise.store.files import atomic_path

from .events import CATALOG_SCHEMA, EVENTS, as_time, event_rows, micros

MINUTE = 60_000_000  # µs
DAY = 24 * 60 * MINUTE


@dataclass(frozen=True)
class StreamSettings:
    start: datetime
    days: int = 7
    seed: int = 0
    sessions_per_customer_day: float = 0.15
    signups_per_day: int = 50
    price_changes_per_day: float = 0.03  # share of products
    stock_changes_per_day: float = 0.02


def simulate_stream(
    customers: list[str], products: pl.DataFrame, settings: StreamSettings
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(events, catalog updates) over `settings.days` from `settings.start`, time ordered.
    `products` needs `product_id`, `category` and `price`."""
    rng = np.random.default_rng(settings.seed)
    start = micros(settings.start)
    ids = products["product_id"].to_numpy().astype(str)
    categories = products["category"].to_numpy().astype(str)
    prices = products["price"].to_numpy().astype(float)
    by_category = {c: np.flatnonzero(categories == c) for c in np.unique(categories)}
    names = list(by_category)
    rows: list[tuple] = []
    counter = iter(range(1 << 62))

    def emit(kind: str, who: str, at: int, **properties) -> None:
        rows.append((f"sim-{settings.seed}-{next(counter)}", kind, who, int(at), properties))

    signed_up = [
        f"s{settings.seed}-{k:06d}" for k in range(settings.signups_per_day * settings.days)
    ]
    visitors = list(customers)
    for who in signed_up:
        at = start + rng.integers(0, settings.days * DAY)
        emit("signed_up", who, at)
        if rng.random() < 0.5:  # some browse right away
            visitors.append(who)
    sessions = rng.poisson(settings.sessions_per_customer_day * settings.days * len(visitors))
    for who_index, at in zip(
        rng.integers(0, len(visitors), sessions),
        start + rng.integers(0, settings.days * DAY, sessions),
        strict=True,
    ):
        _session(emit, rng, visitors[who_index], int(at), ids, prices, by_category, names)
    for who in rng.choice(customers, max(1, len(customers) // 500), replace=False):
        emit("unsubscribed", str(who), start + rng.integers(0, settings.days * DAY))
    rows.sort(key=lambda row: row[3])
    records = [
        {"message_id": m, "type": t, "customer_id": w, "timestamp": as_time(a),
         "properties": _api_properties(p)}
        for m, t, w, a, p in rows
    ]  # fmt: skip
    events = event_rows(EVENTS.validate_python(records))  # as the API would store them
    return events, _catalog(rng, start, settings, ids, prices)


def _session(emit, rng, who, at, ids, prices, by_category, names) -> None:
    """One visit: browse a category (maybe by search), maybe cart, maybe buy."""
    category = names[rng.integers(len(names))]
    pool = by_category[category]
    if rng.random() < 0.3:
        for _ in range(rng.integers(1, 4)):
            emit("products_searched", who, at, query=f"{category} {rng.integers(1, 4)}")
            at += rng.integers(1, 3) * MINUTE
    else:
        emit("product_list_viewed", who, at, category=category)
        at += MINUTE
    viewed = rng.choice(pool, min(len(pool), rng.integers(1, 5)), replace=True)
    for p in viewed:
        emit("product_viewed", who, at, product_id=ids[p], category=category, price=prices[p])
        at += rng.integers(1, 4) * MINUTE
    if rng.random() > 0.35:
        return
    cart = list(dict.fromkeys(ids[p] for p in viewed[: rng.integers(1, len(viewed) + 1)]))
    for product in cart:
        emit("product_added", who, at, product_id=product, quantity=1)
        at += MINUTE
    if len(cart) > 1 and rng.random() < 0.2:
        emit("product_removed", who, at, product_id=cart.pop(0), quantity=1)
        at += MINUTE
    if rng.random() < 0.5:
        return  # abandoned
    emit("checkout_started", who, at)
    at += rng.integers(2, 6) * MINUTE
    if rng.random() < 0.7:
        order = f"o-{who}-{at}"
        emit("order_completed", who, at, order_id=order, products=cart)


def _catalog(rng, start: int, settings: StreamSettings, ids, prices) -> pl.DataFrame:
    n, days = len(ids), settings.days
    rows = [(str(p), start, float(prices[k]), int(rng.integers(5, 60))) for k, p in enumerate(ids)]
    for k in rng.choice(n, int(settings.price_changes_per_day * n * days), replace=True):
        factor = rng.choice([0.7, 0.8, 0.85, 0.95, 1.1])
        rows.append(
            (
                str(ids[k]),
                start + int(rng.integers(1, days * DAY)),
                round(float(prices[k]) * factor, 2),
                None,
            )
        )
    for k in rng.choice(n, int(settings.stock_changes_per_day * n * days), replace=True):
        at = start + int(rng.integers(1, days * DAY))
        if rng.random() < 0.5:  # sells out, restocked a day or two later
            rows.append((str(ids[k]), at, None, 0))
            rows.append(
                (str(ids[k]), at + int(rng.integers(1, 3)) * DAY, None, int(rng.integers(10, 50)))
            )
        else:  # runs low
            rows.append((str(ids[k]), at, None, int(rng.integers(1, 5))))
    return pl.DataFrame(rows, schema=CATALOG_SCHEMA, orient="row").sort("at", maintain_order=True)


def _api_properties(properties: dict) -> dict:
    """Properties as the API takes them: an order's products as lines."""
    if "products" not in properties:
        return properties
    lines = [{"product_id": p, "quantity": 1} for p in properties["products"]]
    return {**properties, "products": lines}


def api_events(events: pl.DataFrame) -> list[dict]:
    """Stream rows as `POST /events` objects (and JSON lines for `sendwise events ingest`)."""
    stamps = events.select(
        pl.from_epoch("at", "us").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
    ).to_series()
    return [
        {
            "message_id": m,
            "type": t,
            "customer_id": c,
            "timestamp": at,
            "properties": json.loads(p),
        }
        for m, t, c, at, p in zip(
            events["message_id"], events["type"], events["customer_id"], stamps,
            events["properties"], strict=True,
        )
    ]  # fmt: skip


def api_catalog(catalog: pl.DataFrame) -> list[dict]:
    """Catalog rows as `POST /catalog` products."""
    stamps = catalog.select(pl.from_epoch("at", "us").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
    rows = catalog.drop("at").with_columns(timestamp=stamps.to_series()).to_dicts()
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def write_json_lines(records: list[dict], path: Path) -> None:
    """One JSON object a line, written whole or not at all."""
    with atomic_path(path) as staging:
        staging.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
