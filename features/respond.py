"""The simulated shop answers its mail: how its customers respond to logged decisions, from the
truth planted in it, and what each randomised comparison of the campaign report should find.

Inputs are public only: the shop's tables (product categories and prices, earlier sends), the
truth file the simulator wrote beside the shop (`ground_truth/customers.parquet`) and the
decisions (the log's export columns). Nothing of the simulator's private state is read.

The planted model (`ResponseModel` holds the constants), per decision of customer i, its
window being (start, start + days] with start = `send_at`, else `decided_at` rounded up to the
next full hour (the report's would-be send time):
- **Baseline purchase** (mailed or not): b = 1 - exp(-days / interval), interval = the planted
  mean interval between orders (`lapsed_slowdown` times longer after the planted dropout;
  `lead_interval_days` for leads). A baseline order is one product drawn uniformly from the
  customer's planted top category, so its expected value is that category's mean price.
- **Human open** (sent only): o = open_prob * (1 - focus * (1 - k)), k = exp(-h^2 / (2 w^2)),
  h = hours (circular) between the local send time and the planted preferred hour, w =
  `hour_width`, focus = the planted `hour_focus`. It follows `send_at` by minutes when the
  customer is at their inbox (chance k), else it waits for the next preferred local hour.
- **Machine open** (sent only, Apple MPP style): every send to a planted `machine_opener` gets
  one `open` with `machine_open` true within two minutes, whatever was sent.
- **Affinity** of customer i for a product: the planted share of i's purchases drawn from the
  product's category (`affinity_<category>` in the truth) over that of i's top category, so 1
  for the top category and less for the others (a truth without those columns: 1 for the top
  category, 0 for the others).
- **Click**: c = o * min(1, click_base * (1 + affinity_lift * m)), m = the mean affinity of
  the first `top_k` of the decision's `products`.
- **Mail-driven purchase**: e = c * buy_after_click * f^buy_affinity, one unit of the first
  listed product, f = its affinity: a click is a look, and people buy what they like. A
  decision without a first product the catalogue knows buys a basket of the top category
  (f = 1).
- **Offer-driven purchase** (sent only): u = the planted `true_uplift_<offer>` (0 for `none`
  and for arms the truth does not know), a basket like the baseline's.
- **Trigger pull** (sent triggered mail only): t = o * `trigger_pull[trigger]`, one unit of
  the first listed product, which for a trigger is its subject (the carted, the viewed, the
  product back in stock): the intent behind the trigger, so what each trigger earns differs
  and each trigger holdout has its own planted value.
- **Offer cost**: an `N_off` offer takes N% off every order the recipient places in the window,
  including those they would have placed anyway (free shipping costs the shop, not the
  order's value).
- **Unsubscribe** (sent only): min(unsubscribe_max, unsubscribe_base + unsubscribe_per_send *
  r), r = the customer's sends in the `fatigue_days` before this one (the shop's and the
  decisions').
The four purchase routes are independent draws, each its own order, so P(convert) = 1 - (1 -
b)(1 - e)(1 - u)(1 - t) and E[revenue] = (1 - discount) (b basket + (e + t) price + u basket)
exactly.

**Planted values.** For every comparison the campaign report makes, the expected value of its
estimate given who fell in which group, computed from the probabilities above, not from draws.
`effect` is the plain difference: the (weighted) mean expected outcome of the treated rows
minus that of the control rows. `stratified` compares like with like, and is what the report
estimates (its 95% interval should cover it about 19 times in 20): for the three feature
holdouts, the difference within each stratum of their eligibility (personal products, a
personal hour, the offer band), averaged by the stratum's share of rows (strata with fewer
than two rows on a side left out); for every other comparison, one stratum, so `effect`
itself. The feature holdouts share one draw, so the chance of falling in none of them (the
treated group) depends on how many apply to a recipient; a plain difference then mixes strata
in different proportions on each side, and `effect` carries that mix while `stratified` does
not. With small groups both carry the chance imbalance of who would have bought anyway;
`lift` is the plain difference of what the mail added to each row (its expected outcome less
its unmailed one; opens, clicks and unsubscribes have no unmailed part), the planted effect
of the treatment itself, whose sign is the one the comparison is about.
The groups are written here from DESIGN's definitions, not imported from the report: a check
of the report against its own code would prove nothing.

Overlapping windows of one customer (a campaign, then a trigger two days later) each get their
own responses; the report gives a later window's outcomes to the first, so planted values are
exact only where a customer's windows do not overlap (`planted["overlapping"]` counts those).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from sendwise.errors import SendwiseError
from sendwise.store.decisions import would_be_send_time
from sendwise.store.files import atomic_path

from .clock import DAY_US, with_local_time
from .contract import TABLES, dtype_of
from .shop import Shop, read_shop, read_table, table_file

log = logging.getLogger(__name__)

HOUR_US = 3_600_000_000
SECOND_US = 1_000_000
PLANTED_FILE = "ground_truth/planted.json"
TRUTH_FILE = "ground_truth/customers.parquet"
CONTROL = "none"
GROUP_HOLDOUTS = ("global", "campaign", "trigger")
METRICS = {  # the report's metric names -> expected-outcome column
    "conversion": "expected_conversion",
    "revenue_per_recipient": "expected_revenue",
    "open_rate": "p_open",
    "click_rate": "p_click",
    "unsubscribe_rate": "p_unsubscribe",
}


@dataclass(frozen=True)
class ResponseModel:
    """The planted response model's constants; the truth file gives each customer's part."""

    hour_width: float = 1.5  # hours: width of the preferred-hour kernel
    click_base: float = 0.10  # P(click | human open) for products of no affinity
    affinity_lift: float = 2.0  # click rate x (1 + lift x the first products' mean affinity)
    top_k: int = 3  # the first products of `products` that the affinity is read from
    buy_after_click: float = 0.30  # P(buy the first product | click), of the top category
    buy_affinity: float = 1.0  # P(buy | click) goes with the first product's affinity to this
    lead_interval_days: float = 400.0  # a lead's mean days between orders
    lapsed_slowdown: float = 6.0  # after the planted dropout, orders this many times rarer
    unsubscribe_base: float = 0.002
    unsubscribe_per_send: float = 0.004  # more per send in the last `fatigue_days`
    unsubscribe_max: float = 0.5
    fatigue_days: int = 7
    # P(buy the trigger's subject | human open of its mail), by trigger: a cart pulls hardest,
    # a welcome or a win-back least
    trigger_pull: dict[str, float] = field(
        default_factory=lambda: {
            "cart_abandoned": 0.20,
            "browse_abandoned": 0.06,
            "search_abandoned": 0.04,
            "price_drop": 0.10,
            "back_in_stock": 0.15,
            "low_stock": 0.08,
            "replenishment_due": 0.12,
            "review_request": 0.0,
            "welcome": 0.03,
            "win_back": 0.02,
        }
    )

    def without_affinity(self) -> ResponseModel:
        """This model with products making no difference to clicks or to buying after one:
        an A/A test of personal against popular products."""
        return replace(self, affinity_lift=0.0, buy_affinity=0.0)


@dataclass(frozen=True)
class Responses:
    """New rows for the shop's `email_events` and `orders`, each decision's expected outcomes
    under the planted model (`expected`, in the decisions' order), and the planted values."""

    email_events: pl.DataFrame
    orders: pl.DataFrame
    expected: pl.DataFrame
    planted: dict


def discount_of(arm: str) -> float:
    """The share an arm takes off the order: `10_off` (or `10pct_off`) is 0.10, else 0."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(?:pct|_pct|%)?_off", arm)
    return float(found.group(1)) / 100 if found else 0.0


# --- the planted probabilities: small expressions over decisions joined with truth ----------


def hour_distance() -> pl.Expr:
    """Hours (circular, 0..12) between the local send time and the planted preferred hour."""
    local = pl.col("local_at")
    hours = local.dt.hour() + local.dt.minute() / 60 - pl.col("preferred_hour")
    return pl.min_horizontal(hours.mod(24), (-hours).mod(24)).alias("hour_distance")


def hour_kernel(model: ResponseModel) -> pl.Expr:
    return (-(pl.col("hour_distance") ** 2) / (2 * model.hour_width**2)).exp().alias("hour_kernel")


def baseline_probability(days: int, model: ResponseModel) -> pl.Expr:
    """P(an order of the customer's own in the window), mailed or not."""
    interval = (
        pl.when(pl.col("is_lead") | pl.col("mean_interval_days").is_nan())
        .then(model.lead_interval_days)
        .when(pl.col("dropout_at") <= pl.col("start_at"))
        .then(pl.col("mean_interval_days") * model.lapsed_slowdown)
        .otherwise(pl.col("mean_interval_days"))
    )
    return (1 - (-days / interval).exp()).fill_null(0.0).alias("p_baseline")


def open_probability() -> pl.Expr:
    fit = 1 - pl.col("hour_focus") * (1 - pl.col("hour_kernel"))
    return pl.when(pl.col("send")).then(pl.col("open_prob") * fit).otherwise(0.0).fill_null(0.0)


def click_probability(model: ResponseModel) -> pl.Expr:
    rate = (model.click_base * (1 + model.affinity_lift * pl.col("affinity_match"))).clip(0, 1)
    return pl.col("p_open") * rate


def unsubscribe_probability(model: ResponseModel) -> pl.Expr:
    chance = model.unsubscribe_base + model.unsubscribe_per_send * pl.col("recent_sends")
    return pl.when(pl.col("send") & pl.col("known")).then(chance.clip(0, model.unsubscribe_max))


def trigger_pull(decisions: pl.DataFrame, model: ResponseModel) -> pl.Expr:
    """P(buying the trigger's subject) of a sent triggered mail; 0 for a campaign's."""
    if "trigger" not in decisions.columns:
        return pl.lit(0.0)
    pull = (
        pl.col("trigger")
        .cast(pl.String)
        .replace_strict(model.trigger_pull, default=0.0, return_dtype=pl.Float64)
    )
    return (
        pl.when(pl.col("send") & pl.col("known"))
        .then(pl.col("p_open") * pull)
        .otherwise(0.0)
        .fill_null(0.0)
    )


PURCHASES = ["p_baseline", "p_mail_buy", "p_offer_buy", "p_trigger_buy"]


def gross_revenue() -> pl.Expr:
    """Expected revenue at full price: baskets for the own and the offer's orders, the first
    listed product for those the mail or the trigger brought."""
    basket = (pl.col("p_baseline") + pl.col("p_offer_buy")) * pl.col("basket_value")
    return basket + (pl.col("p_mail_buy") + pl.col("p_trigger_buy")) * pl.col("first_price")


def conversion(buy: list[str]) -> pl.Expr:
    miss = pl.lit(1.0)
    for column in buy:
        miss = miss * (1 - pl.col(column))
    return 1 - miss


# --- joining what the probabilities need ------------------------------------------------------


def _affinities(truth: pl.DataFrame) -> pl.LazyFrame:
    """`customer_id, category, affinity`: each customer's affinity for each category (see the
    module notes), long."""
    shares = [c for c in truth.columns if c.startswith("affinity_")]
    if not shares:
        return (
            truth.lazy()
            .select(pl.col("customer_id").cast(pl.String), "top_category", affinity=pl.lit(1.0))
            .rename({"top_category": "category"})
        )
    return (
        truth.lazy()
        .select(
            pl.col("customer_id").cast(pl.String),
            *(pl.col(c) / pl.max_horizontal(shares) for c in shares),
        )
        .unpivot(index="customer_id", variable_name="category", value_name="affinity")
        .with_columns(pl.col("category").str.strip_prefix("affinity_"))
    )


def _first_products(
    decided: pl.LazyFrame, products: pl.LazyFrame, truth: pl.DataFrame, k: int
) -> pl.LazyFrame:
    """Per decision row: the mean affinity of its first `k` products and the first product's
    id, price and affinity."""
    listed = (
        decided.select("_row", "customer_id", pl.col("products").list.head(k))
        .explode("products")
        .with_columns(_rank=pl.int_range(pl.len()).over("_row"))
        .join(
            products.select(pl.col("product_id").alias("products"), "category", "price"),
            on="products",
            how="left",
        )
        .join(_affinities(truth), on=["customer_id", "category"], how="left")
        .with_columns(
            pl.col("affinity").fill_null(pl.when(pl.col("category").is_not_null()).then(0.0))
        )
    )
    return listed.group_by("_row").agg(
        affinity_match=pl.col("affinity").fill_null(0.0).mean().fill_null(0.0),
        first_product=pl.col("products").sort_by("_rank").first(),
        first_price=pl.col("price").sort_by("_rank").first(),
        first_affinity=pl.col("affinity").sort_by("_rank").first(),
    )


def _recent_sends(decided: pl.LazyFrame, shop: Shop, days: int) -> pl.LazyFrame:
    """Per sent decision row: the customer's sends in the `days` before its `send_at`."""
    mine = decided.filter(pl.col("send") & pl.col("send_at").is_not_null())
    earlier = pl.concat(
        [
            shop.email_events.filter(pl.col("event_type") == "send").select(
                pl.col("customer_id").cast(pl.String), pl.col("occurred_at").alias("_at")
            ),
            mine.select("customer_id", pl.col("send_at").alias("_at")),
        ]
    )
    span = pl.duration(days=days)
    return (
        mine.select("_row", "customer_id", "send_at")
        .join(earlier, on="customer_id")
        .filter((pl.col("_at") < pl.col("send_at")) & (pl.col("_at") >= pl.col("send_at") - span))
        .group_by("_row")
        .agg(recent_sends=pl.len())
    )


def _baskets(products: pl.LazyFrame) -> pl.LazyFrame:
    """Mean price per category: a baseline order's expected value."""
    return products.group_by("category").agg(basket_value=pl.col("price").mean())


def expectations(
    shop: Shop,
    truth: pl.DataFrame,
    decisions: pl.DataFrame,
    days: int,
    model: ResponseModel | None = None,
) -> pl.DataFrame:
    """Each decision (its columns, in order) with its planted probabilities and expected
    outcomes: `p_open`, `p_click`, `p_unsubscribe`, `p_baseline`, `p_mail_buy` (with
    `first_affinity` and `p_buy_after_click`), `p_offer_buy`, `p_trigger_buy`,
    `expected_conversion`, `expected_revenue`, the same two had it not been mailed
    (`unmailed_conversion`, `unmailed_revenue`), and what the mail added per report metric
    (`lift_<metric>`)."""
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    model = model or ResponseModel()
    arms = [c.removeprefix("true_uplift_") for c in truth.columns if c.startswith("true_uplift_")]
    products = shop.products.select(
        pl.col("product_id").cast(pl.String), "category", pl.col("price").cast(pl.Float64)
    )
    known_ids = truth.select(pl.col("customer_id").cast(pl.String), known=pl.lit(True))
    decided = (
        decisions.lazy()
        .with_row_index("_row")
        .with_columns(pl.col("customer_id").cast(pl.String), would_be_send_time())
        .join(known_ids.lazy(), on="customer_id", how="left")
        .join(
            truth.lazy()
            .select(
                pl.col("customer_id").cast(pl.String),
                pl.col("timezone").alias("_zone"),
                "preferred_hour",
                "hour_focus",
                "is_lead",
                "mean_interval_days",
                "dropout_at",
                "top_category",
                "open_prob",
                "machine_opener",
                *(pl.col(f"true_uplift_{a}") for a in arms),
            )
            .with_columns(pl.col("preferred_hour").cast(pl.Float64)),
            on="customer_id",
            how="left",
        )
        .with_columns(
            pl.col("known").fill_null(False),
            pl.col("send") & pl.col("send_at").is_not_null(),
        )
    )
    zones = truth["timezone"].drop_nulls().unique().sort().to_list()
    local = with_local_time(
        decided.select("_row", "send_at", "_zone").filter(pl.col("_zone").is_not_null()),
        zones,
        stamp="send_at",
        zone="_zone",
    ).select("_row", "local_at")
    average_price = products.select(pl.col("price").mean()).collect().item() or 0.0
    uplift = pl.lit(0.0)
    for arm in arms:
        uplift = (
            pl.when(pl.col("offer") == arm).then(pl.col(f"true_uplift_{arm}")).otherwise(uplift)
        )
    frame = (
        decided.join(local, on="_row", how="left")
        .join(_first_products(decided, products, truth, model.top_k), on="_row", how="left")
        .join(_recent_sends(decided, shop, model.fatigue_days), on="_row", how="left")
        .join(_baskets(products), left_on="top_category", right_on="category", how="left")
        .with_columns(
            hour_distance(),
            pl.col("affinity_match").fill_null(0.0),
            pl.col("recent_sends").fill_null(0).cast(pl.Int64),
            pl.col("basket_value").fill_null(pl.lit(average_price)),
            discount=pl.when(pl.col("send")).then(_discount_expr(decisions)).otherwise(0.0),
        )
        .with_columns(hour_kernel(model), baseline_probability(days, model))
        .with_columns(
            p_open=open_probability(),
            p_offer_buy=pl.when(pl.col("send") & pl.col("known"))
            .then(uplift.fill_null(0.0))
            .otherwise(0.0),
        )
        .with_columns(
            p_click=click_probability(model), p_trigger_buy=trigger_pull(decisions, model)
        )
        .with_columns(
            # no first product: a basket of the top category, as its price says
            p_buy_after_click=model.buy_after_click
            * pl.col("first_affinity").fill_null(1.0).pow(model.buy_affinity),
            first_price=pl.coalesce("first_price", "basket_value"),
            p_unsubscribe=unsubscribe_probability(model).fill_null(0.0),
            p_baseline=pl.when(pl.col("known")).then(pl.col("p_baseline")).otherwise(0.0),
        )
        .with_columns(p_mail_buy=(pl.col("p_click") * pl.col("p_buy_after_click")).fill_null(0.0))
        .with_columns(
            expected_conversion=conversion(PURCHASES),
            expected_revenue=(1 - pl.col("discount")) * gross_revenue(),
            unmailed_conversion=pl.col("p_baseline"),
            unmailed_revenue=pl.col("p_baseline") * pl.col("basket_value"),
        )
        .with_columns(
            (pl.col(c) - pl.col(f"unmailed_{c.removeprefix('expected_')}")).alias(f"lift_{m}")
            for m, c in METRICS.items()
            if c.startswith("expected_")
        )
        .with_columns(
            pl.col(c).alias(f"lift_{m}") for m, c in METRICS.items() if c.startswith("p_")
        )
        .sort("_row")
        .collect()
    )
    return frame


def _discount_expr(decisions: pl.DataFrame) -> pl.Expr:
    """Each offer's discount, from a small table of the offers present (no per-row Python)."""
    offers = decisions["offer"].drop_nulls().unique().to_list() if len(decisions) else []
    found = pl.lit(0.0)
    for arm in offers:
        share = discount_of(arm)
        if share:
            found = pl.when(pl.col("offer") == arm).then(share).otherwise(found)
    return found


# --- drawing the responses -------------------------------------------------------------------


def _category_picks(products: pl.DataFrame, category: pl.Series, u: np.ndarray) -> np.ndarray:
    """Per row, the index in `products` (sorted by category) of a product drawn uniformly from
    the row's category (from all products where the category has none)."""
    names, starts, counts = (
        products.group_by("category", maintain_order=True)
        .agg(start=pl.first("_index"), count=pl.len())
        .get_columns()
    )
    names = names.to_numpy().astype(str)
    code = np.searchsorted(names, category.fill_null("").to_numpy().astype(str))
    code = np.minimum(code, len(names) - 1)
    found = names[code] == category.fill_null("").to_numpy().astype(str)
    start = np.where(found, starts.to_numpy()[code], 0)
    count = np.where(found, counts.to_numpy()[code], len(products))
    return start + np.minimum((u * count).astype(np.int64), count - 1)


def _after(at: np.ndarray, hours: np.ndarray) -> np.ndarray:
    return at + (hours * HOUR_US).astype(np.int64)


def _stamps(micros: np.ndarray) -> pl.Series:
    return pl.Series(micros.astype(np.int64)).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def respond(
    shop: Shop,
    truth: pl.DataFrame,
    decisions: pl.DataFrame,
    days: int = 14,
    seed: int = 0,
    model: ResponseModel | None = None,
) -> Responses:
    """How the shop's customers respond to `decisions` over the `days` after each send (see
    the module notes): new `email_events` and `orders` rows, seeded, and the planted values."""
    model = model or ResponseModel()
    frame = expectations(shop, truth, decisions, days, model)
    rng = np.random.default_rng(seed)
    n = frame.height
    u = rng.random((n, 16))
    pulled = rng.random((n, 2))  # drawn after `u`, so its draws stay those of shops without

    def column(name: str) -> np.ndarray:
        return frame[name].fill_null(0).to_numpy()

    known, sent = column("known").astype(bool), column("send").astype(bool)
    sent &= known
    start = frame["start_at"].dt.epoch("us").to_numpy()
    end = start + days * DAY_US
    send_at = frame["send_at"].dt.epoch("us").fill_null(0).to_numpy()
    p_open, p_click = column("p_open"), column("p_click")
    opened = sent & (u[:, 0] < p_open)
    clicked = opened & (u[:, 1] * p_open < p_click)  # P(click | open) = p_click / p_open
    mail_buy = clicked & (u[:, 2] < column("p_buy_after_click"))
    base_buy = known & (u[:, 3] < column("p_baseline"))
    offer_buy = sent & (u[:, 4] < column("p_offer_buy"))
    trigger_buy = opened & (pulled[:, 0] * p_open < column("p_trigger_buy"))
    unsubscribed = sent & (u[:, 5] < column("p_unsubscribe"))
    machine = sent & column("machine_opener").astype(bool)

    # at the inbox when it lands (the hour kernel's chance), else at the next preferred hour
    local_at = frame["local_at"]
    local_hour = (local_at.dt.hour() + local_at.dt.minute() / 60).fill_null(0).to_numpy()
    soon = u[:, 6] < column("hour_kernel")
    wait = np.where(
        soon,
        np.minimum(-np.log1p(-u[:, 7]) * 0.5, 3.0),
        np.mod(column("preferred_hour") + u[:, 7] - local_hour, 24),
    )
    times = {
        "open": _after(send_at, wait) + 30 * SECOND_US,
        "machine": send_at + ((5 + 115 * u[:, 8]) * SECOND_US).astype(np.int64),
        "unsubscribe": _after(send_at, 1 + 47 * u[:, 9]),
        "baseline": start + SECOND_US + (u[:, 10] * (days * DAY_US - SECOND_US)).astype(np.int64),
        "offer": start + SECOND_US + (u[:, 11] * (days * DAY_US - SECOND_US)).astype(np.int64),
    }
    times["click"] = _after(times["open"], -np.log1p(-u[:, 12]) * 3 / 60) + 10 * SECOND_US
    times["mail"] = _after(times["click"], (2 + 58 * u[:, 13]) / 60)
    times["trigger"] = _after(times["open"], (2 + 118 * pulled[:, 1]) / 60)
    times = {k: np.minimum(v, end) for k, v in times.items()}

    ids = frame["customer_id"]
    campaign = frame["campaign"] if "campaign" in frame.columns else pl.repeat(None, n)
    parts = [
        (sent, send_at, "send", False),
        (machine, times["machine"], "open", True),
        (opened, times["open"], "open", False),
        (clicked, times["click"], "click", False),
        (unsubscribed, times["unsubscribe"], "unsubscribe", False),
    ]
    rows = np.concatenate([np.flatnonzero(p[0]) for p in parts])
    email_events = pl.DataFrame(
        {
            "customer_id": ids.gather(rows),
            "occurred_at": _stamps(np.concatenate([p[1][p[0]] for p in parts])),
            "event_type": np.repeat([p[2] for p in parts], [p[0].sum() for p in parts]),
            "campaign_id": pl.Series(campaign).cast(pl.String).gather(rows),
            "machine_open": np.repeat([p[3] for p in parts], [p[0].sum() for p in parts]),
        }
    ).sort("occurred_at", "customer_id", maintain_order=True)

    catalogue = (
        shop.products.select(
            pl.col("product_id").cast(pl.String), "category", pl.col("price").cast(pl.Float64)
        )
        .sort("category", "product_id")
        .collect()
        .with_row_index("_index")
    )
    category = frame["top_category"]
    picks = {
        "b": _category_picks(catalogue, category, u[:, 14]),
        "o": _category_picks(catalogue, category, u[:, 15]),
    }
    decision_ids = (
        frame["decision_id"].cast(pl.String)
        if "decision_id" in frame.columns
        else pl.Series(np.arange(n).astype(str))
    )
    buys = [  # (bought, route, time, product ids, prices)
        (base_buy, "b", times["baseline"], catalogue["product_id"].gather(picks["b"]),
         catalogue["price"].to_numpy()[picks["b"]]),
        (mail_buy, "m", times["mail"], frame["first_product"].cast(pl.String),
         column("first_price")),
        (offer_buy, "o", times["offer"], catalogue["product_id"].gather(picks["o"]),
         catalogue["price"].to_numpy()[picks["o"]]),
        (trigger_buy, "t", times["trigger"], frame["first_product"].cast(pl.String),
         column("first_price")),
    ]  # fmt: skip
    discount = column("discount")
    orders = pl.concat(
        [
            pl.DataFrame(
                {
                    "order_id": ("resp-" + decision_ids.filter(pl.Series(bought)) + f"-{route}"),
                    "customer_id": ids.filter(pl.Series(bought)),
                    "product_id": product.filter(pl.Series(bought)),
                    "ordered_at": _stamps(at[bought]),
                    "quantity": np.ones(bought.sum(), np.int64),
                    "unit_price": price[bought].astype(np.float64),
                    "discount": discount[bought].astype(np.float64),
                    "currency": pl.repeat("USD", int(bought.sum()), eager=True),
                }
            )
            for bought, route, at, product, price in buys
        ]
    ).sort("ordered_at", "order_id")
    counts = {
        "sends": int(sent.sum()),
        "human_opens": int(opened.sum()),
        "machine_opens": int(machine.sum()),
        "clicks": int(clicked.sum()),
        "unsubscribes": int(unsubscribed.sum()),
        "orders": orders.height,
        "mail_orders": int(mail_buy.sum()),
        "offer_orders": int(offer_buy.sum()),
        "trigger_orders": int(trigger_buy.sum()),
        "baseline_orders": int(base_buy.sum()),
    }
    expected = frame.drop("_row", "_zone")
    planted = {
        "days": days,
        "seed": seed,
        "model": asdict(model),
        "decisions": n,
        "unknown_customers": int((~known).sum()),
        "overlapping": overlapping(frame, days),
        "responses": counts,
        "comparisons": planted_comparisons(expected),
        "mailing_effect": mailing_effect(expected),
    }
    return Responses(email_events, orders, expected, planted)


def overlapping(frame: pl.DataFrame, days: int) -> int:
    """Decisions whose window opens before the same customer's previous window closed."""
    return int(
        frame.sort("customer_id", "start_at")
        .select(
            (
                pl.col("start_at")
                < pl.col("start_at").shift(1).over("customer_id") + pl.duration(days=days)
            )
            .fill_null(False)
            .sum()
        )
        .item()
    )


# --- the planted value of each comparison ----------------------------------------------------


def _has_reason(prefix: str) -> pl.Expr:
    return pl.col("reasons").list.eval(pl.element().str.starts_with(prefix)).list.any()


def _kind(name: str) -> pl.Expr:
    return (pl.col("holdout_kind") == name).fill_null(False)


def _randomised(frame: pl.DataFrame) -> pl.Expr:
    """Rows the holdout draw applied to: not suppressed, not a repeat, not transactional."""
    kept = ~_has_reason("suppressed_") & ~pl.col("reasons").list.contains("duplicate_in_batch")
    if "transactional" in frame.columns:
        kept = kept & ~pl.col("transactional").fill_null(False)
    return kept


def _assigned_to_mail() -> pl.Expr:
    return ~pl.col("holdout_kind").is_in(GROUP_HOLDOUTS).fill_null(False)


def _model_offer() -> pl.Expr:
    chosen = _has_reason("uplift_") | pl.col("reasons").list.contains("offer_explore")
    return chosen & ~_has_reason("offer_not_candidate_")


Group = tuple[str, str, str, pl.Expr, pl.Expr, pl.Expr, pl.Expr]


def comparison_groups(frame: pl.DataFrame) -> list[Group]:
    """(name, treated, control, rows, is_treated, weight, stratum) of every randomised
    comparison in DESIGN ("Decision log and what decisions earned"), written from its words.
    `stratum` is constant except for the feature holdouts, whose shared draw is fair only
    among recipients to whom the same bands applied (`_stratum`)."""
    base = _randomised(frame)
    mail, sent, none = _assigned_to_mail(), pl.col("send"), pl.col("holdout_kind").is_null()
    kinds = set(frame["holdout_kind"].drop_nulls().to_list())
    one, whole = pl.lit(1.0), pl.lit(0)
    groups = []
    if "global" in kinds:
        groups.append(("mailed vs global holdout", "mailed", "global holdout",
                       base & (mail | _kind("global")), mail, one, whole))  # fmt: skip
    campaign = pl.col("trigger").is_null()
    if frame.filter(_kind("campaign") & campaign).height:
        groups.append(("mailed vs campaign holdout", "mailed", "campaign holdout",
                       base & campaign & (mail | _kind("campaign")), mail, one, whole))  # fmt: skip
    for trigger in frame.filter(_kind("trigger"))["trigger"].drop_nulls().unique().sort():
        this = pl.col("trigger") == trigger
        groups.append((f"mailed vs trigger holdout ({trigger})", "mailed", f"{trigger} holdout",
                       base & this & (mail | _kind("trigger")), mail, one, whole))  # fmt: skip
    features = (
        ("products", "personal vs popular products", "personal products", "popular products",
         pl.col("reasons").list.contains("personal_products")),
        ("sendtime", "personal vs fallback send hour", "personal hour", "fallback hour",
         pl.col("best_hours").list.len() > 0),
        ("offer", "offers vs offer holdout", "model's offers", "no offer (holdout)",
         _model_offer()),
    )  # fmt: skip
    for kind, name, treated, control, eligible in features:
        if kind in kinds:
            rows = base & sent & ((none & eligible) | _kind(kind))
            groups.append((name, treated, control, rows, none, one, _stratum()))
    offered = base & sent & none & _model_offer() & (pl.col("probability") > 0)
    arms = frame.filter(offered)["offer"].unique().sort().to_list()
    if CONTROL in arms:
        for arm in (a for a in arms if a != CONTROL):
            rows = offered & pl.col("offer").is_in([arm, CONTROL])
            groups.append((f"offer {arm} vs {CONTROL}", arm, CONTROL, rows,
                           pl.col("offer") == arm, 1.0 / pl.col("probability"), whole))  # fmt: skip
    return groups


def planted_comparisons(expected: pl.DataFrame) -> list[dict]:
    """Per comparison and metric: the expected estimate (`effect`: treated minus control),
    the planted effect of the treatment itself (`lift`), each group's (weighted) mean
    expected outcome and size, and the like-with-like difference within strata (`stratified`,
    see `_stratified`; `effect` itself where a comparison has one stratum). A comparison with
    no stratum of two rows a side is left out, as the report leaves it out."""
    found = []
    for name, treated, control, rows, is_treated, weight, stratum in comparison_groups(expected):
        chosen = expected.filter(rows).select(
            pl.col(*METRICS.values()),
            pl.col(f"lift_{m}" for m in METRICS),
            _t=is_treated,
            _w=weight.cast(pl.Float64),
            _s=stratum,
        )
        stratified = _stratified(chosen)
        arms = {}
        for side in (True, False):
            part = chosen.filter(pl.col("_t") == side)
            w = part["_w"].to_numpy()
            columns = [*METRICS.values(), *(f"lift_{m}" for m in METRICS)]
            arms[side] = {"n": part.height} | {
                c: _weighted_mean(w, part[c].to_numpy()) if part.height else 0.0 for c in columns
            }
        if stratified is None:
            continue
        for metric, column in METRICS.items():
            a, b = arms[True][column], arms[False][column]
            lift = arms[True][f"lift_{metric}"] - arms[False][f"lift_{metric}"]
            found.append(
                {
                    "name": name,
                    "treated": treated,
                    "control": control,
                    "metric": metric,
                    "effect": a - b,
                    "lift": lift,
                    "stratified": stratified[column],
                    "treated_value": a,
                    "control_value": b,
                    "n_treated": arms[True]["n"],
                    "n_control": arms[False]["n"],
                }
            )
    return found


def _weighted_mean(weights: np.ndarray, values: np.ndarray) -> float:
    """Exactly rounded sums (`math.fsum`): the same decisions give the same figures, bit for
    bit, whatever the rows' order or the arrays' alignment (a BLAS dot product varies with
    both in the last bit)."""
    return math.fsum(weights * values) / math.fsum(weights)


def _stratum() -> pl.Expr:
    """Which feature holdouts could have drawn the row: the one draw's bands, so the chance of
    falling in none of them, depend on it. Personal products: held out of them, or given
    them; a personal hour: best hours logged; the offer band: a known customer while an offer
    model was champion (its arm, exploration or holdout is in the reasons)."""
    model = (
        _has_reason("uplift_")
        | pl.col("reasons").list.contains("offer_explore")
        | pl.col("reasons").list.contains("offer_holdout")
    )
    return pl.struct(
        products=pl.col("reasons").list.contains("personal_products") | _kind("products"),
        hours=(pl.col("best_hours").list.len() > 0).fill_null(False),
        offer=model & ~pl.col("reasons").list.contains("cold_start_unknown_customer"),
    )


def _stratified(chosen: pl.DataFrame) -> dict[str, float] | None:
    """Per metric column: the treated-minus-control difference within each stratum, averaged
    with the stratum's share of rows (strata with fewer than two rows on a side left out, the
    shares renormed, as the report does): what a comparison of like with like would find.
    None where no stratum is left."""
    found, total = dict.fromkeys(METRICS.values(), 0.0), 0
    for _, part in chosen.sort("_s").group_by("_s", maintain_order=True):
        treated, control = part.filter(pl.col("_t")), part.filter(~pl.col("_t"))
        if min(treated.height, control.height) < 2:
            continue
        total += part.height
        for column in found:
            tw, cw = treated["_w"].to_numpy(), control["_w"].to_numpy()
            difference = _weighted_mean(tw, treated[column].to_numpy()) - _weighted_mean(
                cw, control[column].to_numpy()
            )
            found[column] += part.height * difference
    return {c: v / total for c, v in found.items()} if total else None


def mailing_effect(expected: pl.DataFrame) -> dict:
    """What mailing earned the randomised recipients assigned to mail, against their own
    unmailed selves (every counterfactual is known here): per recipient and per 1,000."""
    mailed = expected.filter(_randomised(expected) & _assigned_to_mail())
    if not mailed.height:
        return {"recipients": 0}
    conversion = float(
        np.mean(mailed["expected_conversion"].to_numpy() - mailed["unmailed_conversion"].to_numpy())
    )
    revenue = float(
        np.mean(mailed["expected_revenue"].to_numpy() - mailed["unmailed_revenue"].to_numpy())
    )
    return {
        "recipients": mailed.height,
        "conversion": conversion,
        "revenue_per_recipient": revenue,
        "revenue_per_1000": 1000 * revenue,
    }


def planted_profit(expected: pl.DataFrame, margin: float, per_order: dict[str, float]) -> pl.Series:
    """Each decision's planted incremental profit against its unmailed self, from
    `expectations`: what a policy earns, so any decisions (a naive policy's too) are valued
    on the planted truth without drawing responses. The shop keeps `margin` of an order's
    full price, gives the offer's discount off every order in the window (those it would
    have had anyway included) and pays `per_order[offer]` (free shipping) per order."""
    gross = gross_revenue()
    orders = pl.sum_horizontal(PURCHASES)
    fee = pl.col("offer").replace_strict(per_order, default=0.0, return_dtype=pl.Float64)
    paid = pl.when(pl.col("send")).then(fee.fill_null(0.0) * orders).otherwise(0.0)
    profit = (margin - pl.col("discount")) * gross - paid - margin * pl.col("unmailed_revenue")
    return expected.select(profit.alias("planted_profit")).to_series()


def profit_effect(expected: pl.DataFrame, margin: float, per_order: dict[str, float]) -> dict:
    """`planted_profit` over the randomised recipients assigned to mail (as `mailing_effect`
    counts them): per recipient and per 1,000."""
    profit = planted_profit(expected, margin, per_order).filter(
        expected.select(_randomised(expected) & _assigned_to_mail()).to_series()
    )
    mean = float(np.mean(profit.to_numpy())) if len(profit) else 0.0
    return {"recipients": len(profit), "per_recipient": mean, "per_1000": 1000 * mean}


def planted_value(planted: dict, name: str, metric: str) -> dict:
    """One comparison's planted entry, by the report's name and metric."""
    return next(c for c in planted["comparisons"] if (c["name"], c["metric"]) == (name, metric))


# --- into the shop ---------------------------------------------------------------------------


def _conform(rows: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """`rows` with exactly `schema`'s columns and types (absent ones null)."""
    return rows.select(
        (pl.col(c) if c in rows.columns else pl.lit(None)).cast(t).alias(c)
        for c, t in schema.items()
    )


def with_responses(shop: Shop, responses: Responses) -> Shop:
    """The shop with the responses' rows appended, in memory (nothing is written)."""
    added = {}
    for name in ("email_events", "orders"):
        table = shop.table(name)
        schema = table.collect_schema()
        added[name] = pl.concat([table, _conform(getattr(responses, name), schema).lazy()])
    return replace(shop, present=shop.present | set(added), **added)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def append_responses(directory: str | Path, responses: Responses) -> Path:
    """Append the responses to the shop in `directory` and write the planted values to
    `ground_truth/planted.json`, all at once or not at all. Tables are rewritten as Parquet
    (a CSV table becomes `<name>.parquet`); a response already appended is refused."""
    directory = Path(directory)
    shop = read_shop(directory, validate=False)
    taken = (
        shop.orders.select(pl.col("order_id").cast(pl.String))
        .join(responses.orders.lazy().select("order_id"), on="order_id", how="semi")
        .select(pl.len())
        .collect()
        .item()
    )
    if taken:
        raise SendwiseError(
            f"{directory}: {taken} of these responses' orders are in the shop already "
            "(these decisions were responded to before)"
        )
    merged = {}
    for name in ("email_events", "orders"):
        path = table_file(directory, name)
        existing = (
            read_table(path, TABLES[name], validate=False)
            if path
            else pl.LazyFrame(schema={c.name: dtype_of(c.kind) for c in TABLES[name].columns})
        )
        new = _conform(getattr(responses, name), existing.collect_schema())
        merged[name] = (path, pl.concat([existing, new.lazy()]).collect())
    with atomic_path(directory, directory=True) as staging:
        # unchanged files are hard links: nothing is copied, and nothing written touches them
        shutil.copytree(directory, staging, copy_function=_link_or_copy, dirs_exist_ok=True)
        for name, (path, frame) in merged.items():
            if path is not None:
                (staging / path.name).unlink()
            frame.write_parquet(staging / f"{name}.parquet")
        planted = staging / PLANTED_FILE
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.unlink(missing_ok=True)
        planted.write_text(json.dumps(responses.planted, indent=2) + "\n", encoding="utf-8")
    log.info(
        "appended %d email events and %d orders to %s",
        responses.email_events.height,
        responses.orders.height,
        directory,
    )
    return directory


def read_truth(directory: str | Path) -> pl.DataFrame:
    """The per-customer truth the simulator wrote beside the shop."""
    path = Path(directory) / TRUTH_FILE
    if not path.is_file():
        raise SendwiseError(f"{directory}: no {TRUTH_FILE} (only a simulated shop can respond)")
    return pl.read_parquet(path)
