"""What each logged decision earned: the recipient's orders, revenue, human opens, clicks and
unsubscribes in the `days` after the decision's send time.

Rules (each in one place below):
- **Window.** A decision's outcomes are what its recipient did in (start, start + days], where
  `start` is its `send_at`. A decision that was not sent (a global, campaign or trigger
  holdout, or a recipient a frequency cap stopped) has no `send_at`; its would-be send time is
  `decided_at` rounded up to the next full hour (`store.decisions.would_be_send_time`, the one
  rule the simulated shop's responses use too). The personal hour a held-out recipient would
  have had is not logged (neither is their time zone nor the request's window), so no better
  rule is available from the log alone; the windows of mailed and held-out recipients have the
  same length, which is what an unbiased difference needs.
- **Overlap.** A customer in several decisions whose windows overlap (a campaign and then a
  cart trigger two days later) has each outcome counted once: it belongs to the first
  decision (earliest start; ties: first logged) whose window contains it. A later decision
  owns only what happens after the earlier windows have closed. Done with one forward
  `join_asof` per table, no per-row Python: all windows are `days` long, so the first window
  still open at time t is the first whose start is at or after t - days.
- **What counts.** Orders are purchases (order lines with positive quantity, grouped by
  order; returns are left out), revenue is what the lines were paid after discount
  (`features.expressions.line_value`). Opens are human opens only: machine opens (mail
  privacy pre-fetch) are left out as `features.expressions.human_open` leaves them out of
  features. Email events count whatever campaign they belong to: a holdout gets no mail of
  this campaign, and a comparison of engagement is of all mail in the window.
- **Censoring.** `complete` is false where the window reaches past the shop's last recorded
  activity: its outcomes may still grow.

Nothing here depends on how the outcomes were produced: a decisions export and orders
appended by any tool give the same frame.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from sendwise.features import expressions as fx
from sendwise.features.builders import purchase_orders
from sendwise.features.clock import DAY_US
from sendwise.features.shop import Shop
from sendwise.store.decisions import would_be_send_time

ID = "customer_id"
ROW = "_decision_row"
ENGAGEMENT = ("open", "click", "unsubscribe")
OUTCOME_COLUMNS = {
    "start_at": pl.Datetime("us", "UTC"),
    "orders": pl.UInt32,
    "revenue": pl.Float64,
    "converted": pl.Boolean,
    "days_to_order": pl.Float64,  # from start to the first owned order; null: none
    "opens": pl.UInt32,
    "clicks": pl.UInt32,
    "unsubscribes": pl.UInt32,
    "opened": pl.Boolean,
    "clicked": pl.Boolean,
    "unsubscribed": pl.Boolean,
    "complete": pl.Boolean,
}


def owned_by_first_window(
    events: pl.LazyFrame, at: str, windows: pl.LazyFrame, days: int
) -> pl.LazyFrame:
    """`events` (with `customer_id` and time `at`) that fall in a decision's window, each with
    the `ROW` of the first decision whose window (start_at, start_at + days] contains it.

    `windows` holds one candidate owner per (customer, start_at): the first logged."""
    span = timedelta(days=days)
    return (
        events.with_columns((pl.col(at) - span).alias("_probe"))
        .sort("_probe")
        .join_asof(
            windows.sort("start_at"),
            left_on="_probe",
            right_on="start_at",
            by=ID,
            strategy="forward",  # the first start at or after t - days: t <= start + days
            check_sortedness=False,  # both sorted by their keys just above
        )
        .filter(pl.col(at) > pl.col("start_at"))
    )


def outcomes(decisions: pl.DataFrame, shop: Shop, days: int) -> pl.DataFrame:
    """Each decision (its columns kept, in the order given) with what its recipient did in
    the `days` after its send time: `OUTCOME_COLUMNS`."""
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    decided = (
        decisions.lazy()
        .with_row_index(ROW)
        .with_columns(pl.col(ID).cast(pl.String), would_be_send_time())
    )
    windows = (
        decided.sort("start_at", ROW)
        .filter(pl.struct(ID, "start_at").is_first_distinct())
        .select(ID, "start_at", ROW)
    )
    orders = owned_by_first_window(
        purchase_orders(shop).with_columns(pl.col(ID).cast(pl.String)), "ordered_at", windows, days
    )
    bought = orders.group_by(ROW).agg(
        orders=pl.len(),
        revenue=pl.col("value").sum(),
        days_to_order=(pl.col("ordered_at") - pl.col("start_at")).min().dt.total_microseconds()
        / DAY_US,
    )
    mail = owned_by_first_window(
        shop.email_events.filter(pl.col("event_type").is_in(ENGAGEMENT)).with_columns(
            pl.col(ID).cast(pl.String)
        ),
        "occurred_at",
        windows,
        days,
    )
    engaged = mail.group_by(ROW).agg(
        opens=fx.human_open().sum(),
        clicks=(pl.col("event_type") == "click").sum(),
        unsubscribes=(pl.col("event_type") == "unsubscribe").sum(),
    )
    latest = shop.latest()
    counts = ("orders", "opens", "clicks", "unsubscribes")
    frame = (
        decided.join(bought, on=ROW, how="left")
        .join(engaged, on=ROW, how="left")
        .sort(ROW)
        .with_columns(
            pl.col(*counts).fill_null(0).cast(pl.UInt32),
            pl.col("revenue").fill_null(0.0),
            (
                pl.lit(False)
                if latest is None
                else pl.col("start_at") + timedelta(days=days) <= pl.lit(latest)
            ).alias("complete"),
        )
        .with_columns(
            converted=pl.col("orders") > 0,
            opened=pl.col("opens") > 0,
            clicked=pl.col("clicks") > 0,
            unsubscribed=pl.col("unsubscribes") > 0,
        )
        .drop(ROW)
        .collect()
    )
    return frame.select(
        *(c for c in decisions.columns if c not in OUTCOME_COLUMNS),
        *(pl.col(c).cast(t) for c, t in OUTCOME_COLUMNS.items()),
    )
