"""Small feature expressions, composed by the builders in one `agg` so they run in parallel.

Each takes the cut-off `as_of` where it needs one; none filters on it: the builders hand them
frames already limited to what was known at `as_of` (see `Shop.until`).
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from .clock import DAY_US, days_since, within_days

WINDOWS = (30, 90, 180, 365)
SEASON_DAYS = 90
WEB_COUNTS = {
    "view": "views",
    "add_to_cart": "carts",
    "search": "searches",
    "checkout": "checkouts",
}


def line_value() -> pl.Expr:
    """What an order line was paid: quantity x price, less its discount."""
    return pl.col("quantity") * pl.col("unit_price") * (1 - pl.col("discount").fill_null(0.0))


def orders_in_window(as_of: datetime, days: float, end_days: float = 0) -> pl.Expr:
    return within_days(as_of, pl.col("ordered_at"), days, end_days).sum()


def revenue_in_window(as_of: datetime, days: float, end_days: float = 0) -> pl.Expr:
    return pl.col("value").filter(within_days(as_of, pl.col("ordered_at"), days, end_days)).sum()


def purchase_gaps() -> pl.Expr:
    """Days since the customer's previous order, on order rows sorted by time."""
    return pl.col("ordered_at").diff().dt.total_microseconds().over("customer_id") / DAY_US


def rfm(as_of: datetime) -> list[pl.Expr]:
    """Recency, frequency and monetary value over several windows, on order-level rows."""
    return [
        *[orders_in_window(as_of, w).alias(f"orders_{w}d") for w in WINDOWS],
        *[revenue_in_window(as_of, w).alias(f"revenue_{w}d") for w in WINDOWS],
        pl.len().alias("orders_total"),
        pl.col("value").sum().alias("revenue_total"),
        days_since(as_of, pl.col("ordered_at").max()).alias("recency_days"),
        days_since(as_of, pl.col("ordered_at").min()).alias("first_order_days"),
        pl.col("value").mean().alias("avg_order_value"),
        pl.col("items").mean().alias("avg_items_per_order"),
        pl.col("lines").mean().alias("avg_lines_per_order"),
        pl.col("discounted").mean().alias("discounted_order_share"),
    ]


def rhythm(as_of: datetime) -> list[pl.Expr]:
    """Inter-purchase intervals (`gap_days`, from `purchase_gaps`), their regularity, and how due
    the next order is."""
    gaps = pl.col("gap_days")
    return [
        gaps.mean().alias("ipi_mean_days"),
        gaps.std().alias("ipi_std_days"),
        (gaps.std() / gaps.mean()).alias("ipi_cv"),
        gaps.last().alias("ipi_last_days"),
        (days_since(as_of, pl.col("ordered_at").max()) / gaps.mean()).alias("due_ratio"),
    ]


def trend_and_season(as_of: datetime) -> list[pl.Expr]:
    """Change against the previous quarter, and the coming season as it went a year ago."""
    return [
        (orders_in_window(as_of, 90) - orders_in_window(as_of, 180, 90)).alias("orders_trend_90d"),
        (revenue_in_window(as_of, 90) - revenue_in_window(as_of, 180, 90)).alias(
            "revenue_trend_90d"
        ),
        orders_in_window(as_of, 365, 365 - SEASON_DAYS).alias("orders_same_season_last_year"),
        revenue_in_window(as_of, 365, 365 - SEASON_DAYS).alias("revenue_same_season_last_year"),
    ]


def settled_sum(values: pl.Expr) -> pl.Expr:
    """A group's sum, the same to the last bit however its rows arrive: added in value order.
    A group-by hands rows over in whatever order its threads meet them, and a plain sum of
    a customer's return lines differed in its last bits between builds (201 of 59,894
    customers of a bench bucket). `sort().sum()` would be optimised back to `sum()`."""
    return values.sort().cum_sum().last().fill_null(0.0)


def breadth_and_returns() -> list[pl.Expr]:
    """On order lines: product and category breadth of purchases, and returns."""
    bought = pl.col("quantity") > 0
    returned = pl.col("quantity") < 0
    units = pl.col("quantity").filter(bought).sum()
    returned_units = -pl.col("quantity").filter(returned).sum()
    return [
        pl.col("product_id").filter(bought).n_unique().alias("distinct_products"),
        pl.col("category").filter(bought).drop_nulls().n_unique().alias("distinct_categories"),
        returned.sum().alias("return_lines"),
        returned_units.alias("returned_units"),
        (returned_units / units).alias("return_rate"),
        settled_sum(line_value().filter(returned)).abs().alias("returned_value"),
    ]


def count_of(event_type: str, as_of: datetime | None = None, days: float | None = None) -> pl.Expr:
    """How many events of one type, over all time or the last `days`."""
    hit = pl.col("event_type") == event_type
    if days is not None:
        hit = hit & within_days(as_of, pl.col("occurred_at"), days)
    return hit.sum()


def days_since_last(event_type: str, as_of: datetime) -> pl.Expr:
    return days_since(as_of, pl.col("occurred_at").filter(pl.col("event_type") == event_type).max())


def web_behaviour(as_of: datetime) -> list[pl.Expr]:
    return [
        *[
            count_of(kind, as_of, days).alias(f"{name}_{label}")
            for kind, name in WEB_COUNTS.items()
            for days, label in ((30, "30d"), (None, "total"))
        ],
        pl.col("product_id")
        .filter((pl.col("event_type") == "view") & within_days(as_of, pl.col("occurred_at"), 30))
        .n_unique()
        .alias("distinct_viewed_products_30d"),
        days_since_last("view", as_of).alias("days_since_view"),
        days_since_last("add_to_cart", as_of).alias("days_since_cart"),
        pl.col("abandoned").sum().alias("abandoned_carts_total"),
        (pl.col("abandoned") & within_days(as_of, pl.col("occurred_at"), 30))
        .sum()
        .alias("abandoned_carts_30d"),
        days_since(as_of, pl.col("occurred_at").filter(pl.col("abandoned")).max()).alias(
            "days_since_abandoned_cart"
        ),
    ]


def human_open() -> pl.Expr:
    """Opens a person made: machine opens (mail privacy pre-fetch) are left out."""
    return (pl.col("event_type") == "open") & ~pl.col("machine_open").fill_null(False)


def email_engagement(as_of: datetime) -> list[pl.Expr]:
    recent = within_days(as_of, pl.col("occurred_at"), 90)
    sends_90d = count_of("send", as_of, 90)
    opens_90d = (human_open() & recent).sum()
    clicks_90d = count_of("click", as_of, 90)
    return [
        sends_90d.alias("sends_90d"),
        count_of("send").alias("sends_total"),
        opens_90d.alias("opens_90d"),
        human_open().sum().alias("opens_total"),
        ((pl.col("event_type") == "open") & pl.col("machine_open").fill_null(False))
        .sum()
        .alias("machine_opens_total"),
        clicks_90d.alias("clicks_90d"),
        count_of("click").alias("clicks_total"),
        count_of("unsubscribe").alias("unsubscribes_total"),
        count_of("bounce").alias("bounces_total"),
        count_of("complaint").alias("complaints_total"),
        (opens_90d / sends_90d).alias("open_rate_90d"),
        (clicks_90d / sends_90d).alias("click_rate_90d"),
        days_since_last("send", as_of).alias("days_since_send"),
        days_since(as_of, pl.col("occurred_at").filter(human_open()).max()).alias(
            "days_since_open"
        ),
        days_since_last("click", as_of).alias("days_since_click"),
    ]
