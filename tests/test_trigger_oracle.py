"""The trigger engine against an independent oracle (tests/trigger_oracle.py), written from the
spec alone: hand-worked cases check the oracle (and the engine), then whole simulated weeks
must fire exactly the same (trigger, customer, subject, fired_at) rows."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from trigger_oracle import HOUR, OUTPUT, expected_firings

from sendwise.features.event_stream import StreamSettings, simulate_stream
from sendwise.features.events import CATALOG_SCHEMA, EVENT_SCHEMA, micros
from sendwise.policy.config import Settings
from sendwise.policy.triggers import TriggerEngine
from sendwise.serving.triggers import stream

T0 = micros(datetime(2025, 7, 1, tzinfo=UTC))


def at(hours: float) -> int:
    return T0 + int(round(hours * HOUR))


def event(kind: str, who: str, hours: float, **properties) -> dict:
    return {
        "message_id": None,  # numbered by `events`
        "type": kind,
        "customer_id": who,
        "at": at(hours),
        "product_id": properties.get("product_id"),
        "category": properties.get("category"),
        "query": properties.get("query"),
        "price": properties.get("price"),
        "quantity": properties.get("quantity", 1),
        "order_id": properties.get("order_id"),
        "products": properties.get("products"),
        "machine_open": False,
        "properties": json.dumps(properties),
    }


def view(who, hours, product, category="k", price=None):
    return event("product_viewed", who, hours, product_id=product, category=category, price=price)


def add(who, hours, product):
    return event("product_added", who, hours, product_id=product)


def remove(who, hours, product):
    return event("product_removed", who, hours, product_id=product)


def order(who, hours, *products):
    return event("order_completed", who, hours, order_id=f"o-{who}-{hours}", products=[*products])


def listing(who, hours, category="k"):
    return event("product_list_viewed", who, hours, category=category)


def search(who, hours, query):
    return event("products_searched", who, hours, query=query)


def events(*rows: dict) -> pl.DataFrame:
    rows = [{**row, "message_id": f"m{k}"} for k, row in enumerate(rows)]
    return pl.DataFrame(rows, schema=EVENT_SCHEMA)


def catalog(*rows: tuple) -> pl.DataFrame:
    """(product_id, hours, price, stock) rows."""
    return pl.DataFrame(
        [(p, at(h), price, stock) for p, h, price, stock in rows],
        schema=CATALOG_SCHEMA,
        orient="row",
    )


NO_CATALOG = catalog()
A, B = "a", "b"

# (events, catalog, until in hours, the firings worked out by hand: trigger, who, subject, hours)
CASES = {
    "one view fires nothing": (events(view(A, 0, "p")), NO_CATALOG, 48, []),
    "two views of one product: browse 2 h after the second": (
        events(view(A, 0, "p"), view(A, 0.5, "p")),
        NO_CATALOG,
        48,
        [("browse_abandoned", A, "p", 2.5)],
    ),
    "three views in one category: browse by category": (
        events(view(A, 0, "p1"), view(A, 0.2, "p2"), view(A, 0.4, "p3")),
        NO_CATALOG,
        48,
        [("browse_abandoned", A, "k", 2.4)],
    ),
    "an abandoned cart fires 1 h after the add": (
        events(view(A, 0, "p"), add(A, 0.1, "p")),
        NO_CATALOG,
        48,
        [("cart_abandoned", A, "p", 1.1)],
    ),
    "an order of the carted product cancels the cart": (
        events(view(A, 0, "p"), add(A, 0.1, "p"), order(A, 0.5, "p")),
        NO_CATALOG,
        48,
        [],
    ),
    "a removal restarts the wait; the subject is the last product still carted": (
        events(add(A, 0, "p"), add(A, 0.2, "q"), remove(A, 0.5, "q")),
        NO_CATALOG,
        48,
        [("cart_abandoned", A, "p", 1.5)],
    ),
    "re-adding a product makes it the most recent": (
        events(add(A, 0, "p"), add(A, 0.1, "q"), add(A, 0.2, "p")),
        NO_CATALOG,
        48,
        [("cart_abandoned", A, "p", 1.2)],
    ),
    "a removal emptying the cart cancels it": (
        events(add(A, 0, "p"), add(A, 0.1, "q"), remove(A, 0.2, "p"), remove(A, 0.3, "q")),
        NO_CATALOG,
        48,
        [],
    ),
    "a price 10% below the price seen fires": (
        events(listing(A, 1), view(A, 1, "p", price=100.0)),
        catalog(("p", 0, 100.0, 20), ("p", 5, 90.0, None)),
        48,
        [("price_drop", A, "p", 5)],
    ),
    "a price 9% below does not": (
        events(listing(A, 1), view(A, 1, "p", price=100.0)),
        catalog(("p", 0, 100.0, 20), ("p", 5, 91.0, None)),
        48,
        [],
    ),
    "a view without a price saw the catalog price": (
        events(listing(A, 1), view(A, 1, "p")),
        catalog(("p", 0, 100.0, 20), ("p", 5, 90.0, None)),
        48,
        [("price_drop", A, "p", 5)],
    ),
    "a product bought since the view gets no price drop": (
        events(listing(A, 1), view(A, 1, "p", price=100.0), order(A, 2, "p")),
        catalog(("p", 0, 100.0, 20), ("p", 5, 80.0, None)),
        48,
        [],
    ),
    "back in stock: 0 -> above 0 for a viewed product": (
        events(view(A, 2, "p"), listing(A, 2.1)),
        catalog(("p", 0, 100.0, 10), ("p", 1, None, 0), ("p", 10, None, 5)),
        48,
        [("back_in_stock", A, "p", 10)],
    ),
    "no back in stock without a sell-out": (
        events(view(A, 2, "p"), listing(A, 2.1)),
        catalog(("p", 0, 100.0, 10), ("p", 10, None, 8)),
        48,
        [],
    ),
    "low stock for a carted product (18 h after the cart firing)": (
        events(view(A, 1, "p"), add(A, 1.01, "p")),
        catalog(("p", 0, 100.0, 20), ("p", 20, None, 3)),
        48,
        [("cart_abandoned", A, "p", 2.01), ("low_stock", A, "p", 20)],
    ),
    "no low stock once the product left the cart": (
        events(view(A, 1, "p"), add(A, 1.01, "p"), remove(A, 1.5, "p")),
        catalog(("p", 0, 100.0, 20), ("p", 20, None, 3)),
        48,
        [],
    ),
    "cart beats a price drop due at once; the gap holds the next for 16 h": (
        events(view(A, 1, "p", price=100.0), add(A, 2, "p")),
        catalog(
            ("p", 0, 100.0, 20),
            ("p", 3, 80.0, None),
            ("p", 10, 70.0, None),
            ("p", 19.5, 60.0, None),
        ),
        48,
        [("cart_abandoned", A, "p", 3), ("price_drop", A, "p", 19.5)],
    ),
    "browse beats a search due at once, though the search restarted first": (
        events(
            search(A, 0, "shoes"), view(A, 0.2, "p"), search(A, 0.5, "red shoes"), view(A, 0.5, "p")
        ),
        NO_CATALOG,
        48,
        [("browse_abandoned", A, "p", 2.5)],
    ),
    "cooldown: the same cart 20 h later is dropped, and the drop does not count": (
        events(listing(A, 0), add(A, 0.1, "p"), add(A, 20, "p"), add(A, 30, "p")),
        NO_CATALOG,
        48,
        [("cart_abandoned", A, "p", 1.1), ("cart_abandoned", A, "p", 31)],
    ),
    "unsubscribed before the firing": (
        events(view(A, 0, "p"), view(A, 0.5, "p"), event("unsubscribed", A, 1)),
        NO_CATALOG,
        48,
        [],
    ),
    "unsubscribed after the firing": (
        events(view(A, 0, "p"), view(A, 0.5, "p"), event("unsubscribed", A, 3)),
        NO_CATALOG,
        48,
        [("browse_abandoned", A, "p", 2.5)],
    ),
    "welcome neither blocks nor is blocked, and is sent once": (
        events(
            add(A, 0, "p"),
            add(B, 0, "p"),
            add(A, 0.1, "q"),
            add(B, 0.1, "q"),
            event("signed_up", A, 0.5),
            event("signed_up", B, 2),
            event("signed_up", A, 3),
        ),
        NO_CATALOG,
        48,
        [
            ("welcome", A, None, 0.5),
            ("cart_abandoned", A, "q", 1.1),
            ("cart_abandoned", B, "q", 1.1),
            ("welcome", B, None, 2),
        ],
    ),
    "two searches: the subject is the last query": (
        events(search(A, 0, "shoes"), search(A, 0.5, "red shoes")),
        NO_CATALOG,
        48,
        [("search_abandoned", A, "red shoes", 2.5)],
    ),
    "a cart cancels the search (and fires itself)": (
        events(search(A, 0, "shoes"), search(A, 0.5, "red shoes"), add(A, 1, "p")),
        NO_CATALOG,
        48,
        [("cart_abandoned", A, "p", 2)],
    ),
    "a one-signal customer is not retargeted": (
        events(add(A, 0, "p")),
        NO_CATALOG,
        48,
        [],
    ),
    "replenishment, review (restarted) and win-back after two orders": (
        events(order(A, 0, "p"), order(A, 10, "p", "q")),
        NO_CATALOG,
        2200,
        [
            ("replenishment_due", A, "p", 20),
            ("review_request", A, "p", 178),
            ("win_back", A, None, 2170),
        ],
    ),
    "a timer due after `until` does not fire, even with later events in the stream": (
        events(view(A, 0, "p"), view(A, 0.5, "p"), listing(B, 5)),
        NO_CATALOG,
        1,
        [],
    ),
}


def as_frame(rows) -> pl.DataFrame:
    return pl.DataFrame([(t, who, s, at(h)) for t, who, s, h in rows], schema=OUTPUT, orient="row")


def engine_firings(events: pl.DataFrame, catalog: pl.DataFrame, until: int) -> pl.DataFrame:
    fired = TriggerEngine(Settings().triggers).run(stream(events, catalog), until)
    return pl.DataFrame(
        [(f.trigger, f.customer_id, f.subject, f.fired_at) for f in fired],
        schema=OUTPUT,
        orient="row",
    )


@pytest.mark.parametrize("name", list(CASES))
def test_oracle_by_hand(name):
    rows, updates, until, expected = CASES[name]
    assert expected_firings(rows, updates, at(until)).equals(as_frame(expected))


@pytest.mark.parametrize("name", list(CASES))
def test_engine_by_hand(name):
    rows, updates, until, expected = CASES[name]
    fired = engine_firings(rows, updates, at(until))
    assert sorted(fired.iter_rows()) == sorted(as_frame(expected).iter_rows())


@pytest.fixture(scope="session")
def small_shop(tmp_path_factory) -> tuple[list[str], pl.DataFrame]:
    out = tmp_path_factory.mktemp("oracle") / "shop"
    sendwise = Path(sys.executable).parent / "sendwise"
    subprocess.run(
        [sendwise, "simulate", "--customers", "2000", "--seed", "3", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    customers = pl.read_parquet(out / "customers.parquet")["customer_id"].to_list()
    return customers, pl.read_parquet(out / "products.parquet")


def _differences(engine: pl.DataFrame, oracle: pl.DataFrame, until: int) -> str:
    counts = (
        engine.group_by("trigger")
        .agg(engine=pl.len())
        .join(
            oracle.group_by("trigger").agg(oracle=pl.len()), on="trigger", how="full", coalesce=True
        )
        .fill_null(0)
        .sort("trigger")
    )
    on = list(OUTPUT)
    only_engine = engine.join(oracle, on=on, how="anti", nulls_equal=True)
    only_oracle = oracle.join(engine, on=on, how="anti", nulls_equal=True)
    with pl.Config(tbl_rows=30, tbl_cols=-1, fmt_str_lengths=40):
        return (
            f"per-trigger counts:\n{counts}\n"
            f"engine firings due after `until`: {engine.filter(pl.col('fired_at') > until).height}\n"
            f"only the engine ({only_engine.height}):\n{only_engine.sort('fired_at').head(15)}\n"
            f"only the oracle ({only_oracle.height}):\n{only_oracle.sort('fired_at').head(15)}"
        )


@pytest.mark.parametrize(
    ("seed", "days"),
    [(3, 8), (3, 100), (4, 100), (5, 100)],
    ids=["seed3-week", "seed3-100d", "seed4-100d", "seed5-100d"],
)
def test_engine_matches_oracle_on_a_simulated_week(small_shop, seed, days):
    """Until `days` after the start: a day past the week's last event (the catalog's restocks
    run on past it), or far enough that every timer (win-back included) comes due."""
    customers, products = small_shop
    start = datetime(2025, 7, 1, tzinfo=UTC)
    events, updates = simulate_stream(customers, products, StreamSettings(start, days=7, seed=seed))
    until = micros(start) + days * 24 * HOUR
    assert events["at"].max() <= until
    engine = engine_firings(events, updates, until).sort(list(OUTPUT), nulls_last=True)
    oracle = expected_firings(events, updates, until).sort(list(OUTPUT), nulls_last=True)
    assert oracle.height > 1_000, "the week should fire plenty"
    assert engine.equals(oracle), _differences(engine, oracle, until)
