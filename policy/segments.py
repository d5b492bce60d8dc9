"""Lifecycle segments: documented rules over point-in-time features, thresholds configurable.

Rules, first match wins:
- `lead`: never bought.
- `cart_abandoner`: abandoned a cart in the last `cart_days` days *and* viewed at least
  `cart_min_views` products in the last 30 days (one stray signal is not enough).
- `new`: first order within the last `new_days` days.
- `lapsed`: no order for `lapsed_days` days, or for `lapsed_cycles` of their usual interval.
- `at_risk`: no order for `at_risk_days` days, or for `at_risk_cycles` of their usual interval.
- `loyal`: at least `loyal_orders` orders, `loyal_recent_orders` of them in the last year.
- `active`: everyone else who bought.
Intervals only count for customers with at least two orders (one purchase is not a rhythm).
"""

from __future__ import annotations

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

SEGMENTS = ("lead", "new", "active", "loyal", "at_risk", "lapsed", "cart_abandoner")


class SegmentRules(BaseModel):
    """The `[segments]` section of the configuration: the thresholds above."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cart_days: float = Field(3.0, ge=0)
    cart_min_views: int = Field(2, ge=0)
    new_days: float = Field(30.0, ge=0)
    at_risk_days: float = Field(120.0, gt=0)
    at_risk_cycles: float = Field(2.0, gt=0)
    lapsed_days: float = Field(240.0, gt=0)
    lapsed_cycles: float = Field(4.0, gt=0)
    loyal_orders: int = Field(5, ge=1)
    loyal_recent_orders: int = Field(2, ge=0)

    def expression(self) -> pl.Expr:
        """The `segment` column, from `customer_features` columns."""
        return (
            pl.when(pl.col("orders_total") == 0)
            .then(pl.lit("lead"))
            .when(
                (pl.col("days_since_abandoned_cart") <= self.cart_days).fill_null(False)
                & (pl.col("views_30d") >= self.cart_min_views)
            )
            .then(pl.lit("cart_abandoner"))
            .when(pl.col("first_order_days") <= self.new_days)
            .then(pl.lit("new"))
            .when(overdue(self.lapsed_days, self.lapsed_cycles))
            .then(pl.lit("lapsed"))
            .when(overdue(self.at_risk_days, self.at_risk_cycles))
            .then(pl.lit("at_risk"))
            .when(
                (pl.col("orders_total") >= self.loyal_orders)
                & (pl.col("orders_365d") >= self.loyal_recent_orders)
            )
            .then(pl.lit("loyal"))
            .otherwise(pl.lit("active"))
            .alias("segment")
        )


def overdue(days: float, cycles: float) -> pl.Expr:
    """No order for `days`, or for `cycles` of the customer's usual interval (2+ orders only)."""
    recency = pl.col("recency_days")
    cycle = pl.when(pl.col("orders_total") >= 2).then(pl.col("ipi_mean_days"))
    return (recency > days) | (recency > cycles * cycle).fill_null(False)
