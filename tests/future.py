"""Arbitrary rows dated after a cut-off, for the point-in-time tests."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl

from sendwise.features.contract import EMAIL_EVENT_TYPES, TABLES, WEB_EVENT_TYPES


def future_rows(tables: dict[str, pl.DataFrame], as_of: datetime, n: int = 500, seed: int = 0):
    """Every table with `n` random rows appended that happen after `as_of`.

    Rows reuse existing customers and products (the dangerous case) as well as new ones.
    """
    rng = np.random.default_rng(seed)
    customers = pl.concat(
        [tables["orders"]["customer_id"].unique(), pl.Series([f"new{i}" for i in range(20)])]
    ).to_numpy()
    products = tables["orders"]["product_id"].unique().to_numpy()

    def pick(values, size=n):
        return pl.Series(rng.choice(values, size)).cast(pl.String)

    def after(size=n):
        seconds = rng.integers(1, 400 * 86_400, size)
        return pl.Series([as_of + timedelta(seconds=int(s)) for s in seconds])

    new = {
        "orders": pl.DataFrame(
            {
                "order_id": [f"future{i}" for i in range(n)],
                "customer_id": pick(customers),
                "product_id": pick(products),
                "ordered_at": after(),
                "quantity": rng.integers(-3, 20, n),
                "unit_price": rng.uniform(0, 500, n),
            }
        ),
        "customers": pl.DataFrame(
            {"customer_id": [f"later{i}" for i in range(n)], "created_at": after()}
        ),
        "products": pl.DataFrame(
            {"product_id": [f"newp{i}" for i in range(n)], "category": pick(["a", "b"])}
        ),
        "events": pl.DataFrame(
            {
                "customer_id": pick(customers),
                "occurred_at": after(),
                "event_type": pick(WEB_EVENT_TYPES),
                "product_id": pick(products),
            }
        ),
        "email_events": pl.DataFrame(
            {
                "customer_id": pick(customers),
                "occurred_at": after(),
                "event_type": pick(EMAIL_EVENT_TYPES),
                "machine_open": rng.random(n) < 0.5,
            }
        ),
        "assignments": pl.DataFrame(
            {
                "customer_id": [f"later{i}" for i in range(n)],
                "campaign_id": "future_campaign",
                "arm": pick(["none", "10_off"]),
                "assigned_at": after(),
            }
        ),
    }
    out = {}
    for name in TABLES:
        old = tables.get(name)
        extra = new[name].with_columns(
            pl.col(c).cast(pl.Datetime("us", "UTC"))
            for c in new[name].columns
            if new[name].schema[c] == pl.Datetime("us")
            or isinstance(new[name].schema[c], pl.Datetime)
        )
        out[name] = extra if old is None else pl.concat([old, extra], how="diagonal_relaxed")
    return out
