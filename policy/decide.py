"""The one decision policy: what the models say of each customer (a `Snapshot`), a batch of
recipients and a request's context in; one decision per recipient out. Batch scoring, the API
and triggers all call `decide`, so a recipient gets the same answer from each for the same
context and clock.

The rules, in order (each a small step over the whole batch, no per-recipient loop):
1. `recipients_known`: the snapshot's row per recipient; unknown customers start cold (a lead,
   popular products, trending cross-sell, the welcome offer).
2. `suppress`: opted out in the request, unsubscribed or complained, too many bounces.
   Transactional mail ignores unsubscribes (a receipt is not marketing), never bounces.
3. `draw_holdouts`: global, then campaign (or the trigger's own), then at most one feature
   holdout (popular products, the fallback hour, or no offer) from one draw. Each draw is a
   stable hash of the recipient, campaign and purpose; `probability` is that of the whole
   randomised assignment. Transactional mail has no holdouts.
4. `cap_frequency`: marketing sends over rolling days, from the send history (each other
   campaign counts once), tightened by segment.
5. `choose_offers`: the value-aware policy over the offer model's expected values, restricted
   to the candidate arms (exploration included); else the segment rules.
6. `schedule`: the first best local hour inside the window and outside quiet hours, else the
   fallback hour, else the window's first allowed hour.
7. `once_per_batch`: a customer repeated in one batch is decided once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from .config import Settings
from .randomise import uniform

# ids and names as an ESP sends them: printable, no control characters (PostgreSQL refuses NUL)
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]
HORIZON_HOURS = 8 * 24  # how far a window is searched for an allowed hour
CONTROL = "none"


class Context(BaseModel):
    """What a request (or a batch export) says about the send as a whole."""

    model_config = ConfigDict(extra="forbid")

    campaign: Name = Field("default", examples=["june-sale"])
    trigger: Name | None = Field(
        None, description="the trigger that prompted the send", examples=["cart_abandoned"]
    )
    transactional: bool = Field(
        False, description="receipts and the like: exempt from caps, holdouts, unsubscribes"
    )
    offers: list[Name] | None = Field(
        None,
        max_length=64,
        description="candidate offers (default: the configured arms); others become `none`",
        examples=[["none", "free_shipping", "10_off"]],
    )
    window_start: datetime | None = Field(None, description="earliest send time (UTC)")
    window_end: datetime | None = Field(None, description="latest send time (UTC)")
    quiet_start: int | None = Field(
        None, ge=0, le=23, description="local hour quiet hours begin (default: configured, 21)"
    )
    quiet_end: int | None = Field(
        None, ge=0, le=23, description="local hour quiet hours end (default: configured, 8)"
    )
    now: datetime | None = Field(None, description="decision time; default the server clock")

    @model_validator(mode="after")
    def window_in_order(self) -> Context:
        for name in ("window_start", "window_end", "now"):
            value = getattr(self, name)
            if value is None:
                continue
            if not 1970 <= value.year <= 2200:  # also keeps week-long searches off datetime.max
                raise ValueError(f"{name} must fall between 1970 and 2200")
            if value.tzinfo is None:
                setattr(self, name, value.replace(tzinfo=UTC))
        if self.window_start and self.window_end and self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        return self


# one row per known customer: what the models say before any request's context
SNAPSHOT_SCHEMA = {
    "customer_id": pl.String,
    "timezone": pl.String,
    "segment": pl.String,
    "unsubscribed": pl.Boolean,  # unsubscribed or complained
    "bounces": pl.Int64,
    "purchase_propensity": pl.Float64,
    "propensity_reason": pl.String,
    "products": pl.List(pl.String),  # null: no personal list (popular instead)
    "cross_sell": pl.List(pl.String),  # null: no personal list (trending instead)
    "best_hours": pl.List(pl.Int64),  # empty: no usable signal
}

DECISION_COLUMNS = (
    "decision_id",
    "customer_id",
    "campaign",
    "trigger",
    "transactional",
    "segment",
    "send",
    "holdout",
    "holdout_kind",
    "probability",
    "offer",
    "offer_value",
    "products",
    "cross_sell",
    "send_at",
    "best_hours",
    "purchase_propensity",
    "reasons",
    "model_versions",
)


@dataclass(frozen=True)
class Snapshot:
    """Model outputs per known customer (`SNAPSHOT_SCHEMA`, plus `value_ARM` and `cost_ARM`
    per offer arm where an offer model is champion), and the shop-wide lists."""

    frame: pl.DataFrame
    popular: list[str]
    trending: list[str]
    model_versions: str
    arms: tuple[str, ...] = ()  # the offer model's arms, control first; () without one
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = self.frame["customer_id"].to_list()
        object.__setattr__(self, "index", dict(zip(ids, range(len(ids)), strict=True)))

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, customer_ids: list[str]) -> pl.DataFrame:
        """The snapshot row of each id in order, `known` false (and nulls) for new ones."""
        at = [self.index.get(c) for c in customer_ids]
        known = pl.Series("known", [i is not None for i in at])
        rows = self.frame[[0 if i is None else i for i in at]] if len(self) else None
        if rows is None:
            rows = pl.DataFrame(schema=self.frame.schema).clear(len(at))
        return rows.with_columns(
            pl.Series("customer_id", customer_ids, dtype=pl.String), known
        ).with_columns(
            pl.when("known").then(pl.col(c)).alias(c) for c in rows.columns if c != "customer_id"
        )


def decide(
    snapshot: Snapshot,
    recipients: pl.DataFrame,
    context: Context,
    settings: Settings,
    now: datetime,
    sent: pl.DataFrame | None = None,
    batch_id: str = "local",
) -> pl.DataFrame:
    """One decision per row of `recipients` (`customer_id`; optional `timezone` and
    `opted_out`), in order (`DECISION_COLUMNS`). `sent`: earlier marketing sends
    (`customer_id`, `sent_at`) of other campaigns for the frequency caps; None: no caps."""
    now = context.now or now
    frame = recipients_known(snapshot, recipients)
    frame = suppress(frame, context, settings)
    frame = draw_holdouts(frame, snapshot, context, settings)
    frame = cap_frequency(frame, context, settings, now, sent)
    frame = choose_offers(frame, snapshot, context, settings)
    frame = schedule(frame, context, settings, now)
    frame = once_per_batch(frame)
    return finish(frame, snapshot, context, batch_id)


def recipients_known(snapshot: Snapshot, recipients: pl.DataFrame) -> pl.DataFrame:
    ids = recipients["customer_id"].to_list()
    if len(ids) == len(snapshot) and recipients["customer_id"].equals(
        snapshot.frame["customer_id"]
    ):
        frame = snapshot.frame.with_columns(known=pl.lit(True))  # a whole-shop batch
    else:
        frame = snapshot.rows(ids)
    zone = recipients.get_column("timezone", default=None)
    opted_out = recipients.get_column("opted_out", default=None)
    return frame.with_columns(
        timezone=pl.coalesce(
            pl.lit(zone, dtype=pl.String) if zone is not None else pl.lit(None, pl.String),
            "timezone",
            pl.lit("UTC"),
        ),
        opted_out=pl.lit(opted_out, dtype=pl.Boolean).fill_null(False)
        if opted_out is not None
        else pl.lit(False),
        segment=pl.col("segment").fill_null("lead"),
        best_hours=pl.col("best_hours").fill_null(pl.lit([], pl.List(pl.Int64))),
        r_known=pl.when(~pl.col("known")).then(pl.lit("cold_start_unknown_customer")),
        r_segment=pl.concat_str(pl.lit("segment_"), pl.col("segment").fill_null("lead")),
        r_propensity=pl.concat_str(pl.lit("propensity_"), "propensity_reason"),
    )


def suppress(frame: pl.DataFrame, context: Context, settings: Settings) -> pl.DataFrame:
    """`send` false, with the reason, for who gets no mail of this kind at all."""
    unsubscribed = pl.col("unsubscribed").fill_null(False) & (not context.transactional)
    bounced = pl.col("bounces").fill_null(0) >= settings.suppression.bounce_limit
    reason = (
        pl.when("opted_out")
        .then(pl.lit("suppressed_opt_out"))
        .when(unsubscribed)
        .then(pl.lit("suppressed_unsubscribed"))
        .when(bounced)
        .then(pl.lit("suppressed_bounced"))
    )
    return frame.with_columns(r_suppressed=reason).with_columns(
        send=pl.col("r_suppressed").is_null()
    )


def draw_holdouts(
    frame: pl.DataFrame, snapshot: Snapshot, context: Context, settings: Settings
) -> pl.DataFrame:
    """Global, then campaign or trigger, then one feature holdout; `probability` so far."""
    shares = settings.holdouts
    ids = frame["customer_id"].to_list()
    eligible = frame["send"].to_numpy() & (not context.transactional)
    group, group_share, group_salt = (
        ("trigger", settings.trigger_holdout(context.trigger), f"{context.trigger}:trigger")
        if context.trigger
        else ("campaign", shares.campaign, f"{context.campaign}:campaign")
    )
    in_global = uniform(ids, "global-holdout") < shares.global_
    in_group = uniform(ids, f"{group_salt}-holdout") < group_share
    # feature holdouts share one draw: bands of the shares that apply to each recipient
    bands = np.column_stack(
        [
            np.where(frame["products"].is_not_null().to_numpy(), shares.products, 0.0),
            np.where(frame["best_hours"].list.len().to_numpy() > 0, shares.sendtime, 0.0),
            np.where(frame["known"].to_numpy() & bool(snapshot.arms), shares.offer, 0.0),
        ]
    )
    edges = np.cumsum(bands, axis=1)
    feature_draw = uniform(ids, f"{context.campaign}:feature-holdout")
    band = np.argmax(feature_draw[:, None] < edges, axis=1)
    in_feature = feature_draw < edges[:, -1]
    kind = np.where(
        in_global,
        "global",
        np.where(
            in_group,
            group,
            np.where(in_feature, np.array(["products", "sendtime", "offer"])[band], ""),
        ),
    )
    probability = np.where(in_global, shares.global_, 1 - shares.global_)
    probability *= np.where(in_global, 1.0, np.where(in_group, group_share, 1 - group_share))
    feature_p = np.where(in_feature, bands[np.arange(len(ids)), band], 1 - edges[:, -1])
    probability *= np.where(in_global | in_group, 1.0, feature_p)
    kind = np.where(eligible, kind, "")
    probability = np.where(eligible, probability, 1.0)
    kind_col = pl.Series("holdout_kind", kind).replace("", None)
    return frame.with_columns(kind_col, probability=probability).with_columns(
        send=pl.col("send")
        & ~pl.col("holdout_kind").is_in(["global", "campaign", "trigger"]).fill_null(False),
        holdout=pl.col("holdout_kind").is_not_null(),
        r_holdout=pl.concat_str(pl.lit("holdout_"), "holdout_kind"),
        products=pl.when(pl.col("holdout_kind") == "products").then(None).otherwise("products"),
        cross_sell=pl.when(pl.col("holdout_kind") == "products").then(None).otherwise("cross_sell"),
        send_hours=pl.when(pl.col("holdout_kind") == "sendtime")
        .then(pl.lit([], pl.List(pl.Int64)))
        .otherwise("best_hours"),
    )


def cap_frequency(
    frame: pl.DataFrame,
    context: Context,
    settings: Settings,
    now: datetime,
    sent: pl.DataFrame | None,
) -> pl.DataFrame:
    """No more marketing sends than each window's cap, tightened by segment."""
    caps, windows = settings.caps, settings.caps.windows()
    if sent is None or context.transactional or not windows or sent.is_empty():
        return frame.with_columns(r_cap=pl.lit(None, pl.String))
    counts = (
        sent.join(frame.select("customer_id").unique(), on="customer_id", how="semi")
        .group_by("customer_id")
        .agg(
            (pl.col("sent_at") > now - timedelta(days=d)).sum().alias(f"sent_{d}") for d in windows
        )
    )
    frame = frame.join(counts, on="customer_id", how="left", maintain_order="left")
    reason = pl.lit(None, pl.String)
    for days in reversed(windows):  # the shortest window that is full names the reason
        limit = _limit(caps.per_recipient.get(days), caps.per_segment, days)
        if limit is None:
            continue
        full = pl.col(f"sent_{days}").fill_null(0) >= limit
        reason = pl.when(full).then(pl.lit(f"freq_cap_{days}d")).otherwise(reason)
    frame = frame.with_columns(r_cap=pl.when("send").then(reason)).drop(
        f"sent_{d}" for d in windows
    )
    return frame.with_columns(send=pl.col("send") & pl.col("r_cap").is_null())


def _limit(
    everyone: int | None, per_segment: dict[str, dict[int, int]], days: int
) -> pl.Expr | None:
    """Each row's cap over `days`: the general one, tightened for its segment (None: no cap)."""
    tightened = {s: caps[days] for s, caps in per_segment.items() if days in caps}
    if everyone is None and not tightened:
        return None
    limit = pl.lit(everyone if everyone is not None else np.iinfo(np.int64).max, pl.Int64)
    for segment, n in tightened.items():
        limit = (
            pl.when(pl.col("segment") == segment).then(pl.min_horizontal(limit, n)).otherwise(limit)
        )
    return limit


def choose_offers(
    frame: pl.DataFrame, snapshot: Snapshot, context: Context, settings: Settings
) -> pl.DataFrame:
    """`offer`, `offer_value` and the offer's reason; `probability` times the chance of it."""
    offers = settings.offers
    candidates = context.offers if context.offers is not None else offers.arms
    rule = (
        pl.when(~pl.col("known") | (pl.col("segment") == "lead"))
        .then(pl.lit(offers.welcome))
        .when(pl.col("segment") == "lapsed")
        .then(pl.lit(offers.lapsed))
        .otherwise(pl.lit(offers.otherwise))
    )
    frame = frame.with_columns(offer=rule, offer_value=pl.lit(0.0)).with_columns(
        r_offer=pl.concat_str(pl.lit("offer_rule_"), "segment")
    )
    if snapshot.arms:
        frame = _model_offers(frame, snapshot, context, settings, candidates)
    if candidates is not None:
        allowed = [*candidates, CONTROL]
        frame = frame.with_columns(
            r_offer_candidate=pl.when(~pl.col("offer").is_in(allowed)).then(
                pl.concat_str(pl.lit("offer_not_candidate_"), "offer")
            )
        ).with_columns(
            offer=pl.when(pl.col("r_offer_candidate").is_null())
            .then("offer")
            .otherwise(pl.lit(CONTROL)),
            offer_value=pl.when(pl.col("r_offer_candidate").is_null())
            .then("offer_value")
            .otherwise(0.0),
        )
    return frame


def _model_offers(
    frame: pl.DataFrame,
    snapshot: Snapshot,
    context: Context,
    settings: Settings,
    candidates: list[str] | None,
) -> pl.DataFrame:
    """The offer model's arm for known customers (the rule stays for new ones)."""
    arms = list(snapshot.arms)
    values = frame.select(pl.col(f"value_{a}").fill_null(0.0) for a in arms).to_numpy()
    cost = frame.select(pl.col(f"cost_{a}").fill_null(0.0) for a in arms).to_numpy()
    if candidates is not None:
        offered = np.array([k == 0 or a in candidates for k, a in enumerate(arms)])
        values = np.where(offered, values, -np.inf)
    policy = settings.offers.policy(context.campaign)
    choice = policy.choose(values, cost, frame["customer_id"].to_list(), arms)
    held = frame["holdout_kind"].eq_missing("offer").to_numpy()
    chosen = np.where(held, 0, choice.chosen)
    known = frame["known"].to_numpy()
    reason = np.where(
        held,
        "offer_holdout",
        np.where(choice.exploring, "offer_explore", np.char.add("uplift_", np.array(arms)[chosen])),
    )
    value = values[np.arange(len(frame)), chosen]
    return frame.with_columns(
        offer=pl.when("known").then(pl.Series(np.array(arms)[chosen])).otherwise("offer"),
        offer_value=pl.when("known")
        .then(pl.Series(np.where(np.isfinite(value), value, 0.0)))
        .otherwise("offer_value"),
        r_offer=pl.when("known").then(pl.Series(reason)).otherwise("r_offer"),
        probability=pl.col("probability") * np.where(known & ~held, choice.probability, 1.0),
    )


def schedule(
    frame: pl.DataFrame, context: Context, settings: Settings, now: datetime
) -> pl.DataFrame:
    """`send_at` for who is sent: see `send_times`."""
    timing = settings.send_time
    start = max(now, context.window_start or now)
    # without a named end, the window is whole hours, so requests within an hour share tables
    end = context.window_end or _next_hour(start) + timedelta(days=timing.window_days)
    quiet = (
        timing.quiet_start if context.quiet_start is None else context.quiet_start,
        timing.quiet_end if context.quiet_end is None else context.quiet_end,
    )
    at, personal = send_times(frame, start, end, quiet, timing.fallback_hour)
    found = pl.Series(at >= 0)
    reason = (
        pl.when(~found)
        .then(pl.lit("no_time_in_window"))
        .when(pl.Series(personal))
        .then(pl.lit("sendtime_personal"))
        .otherwise(pl.lit("sendtime_fallback"))
    )
    return frame.with_columns(
        send_at=pl.when(pl.col("send") & found).then(
            pl.Series(at).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        ),
        r_sendtime=pl.when("send").then(reason),
        send=pl.col("send") & found,
    )


def send_times(
    frame: pl.DataFrame, start: datetime, end: datetime, quiet: tuple[int, int], fallback: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the UTC time (µs since the epoch; -1: none) of the first of its `send_hours`
    (local, best first) that falls inside [start, end] and outside quiet hours, else of the
    fallback hour, else the first allowed hour; and whether it was a personal hour."""
    first = _next_hour(start)
    last = min(end, first + timedelta(hours=HORIZON_HOURS))
    zones = frame["timezone"]
    names = zones.unique(maintain_order=True)
    tables = np.stack([_allowed_hours(z, first, last, *quiet) for z in names.to_list()])
    code = zones.replace_strict(names, pl.arange(len(names), eager=True)).to_numpy()
    hours = frame.select(
        pl.col("send_hours").list.get(k, null_on_oob=True).fill_null(EMPTY).alias(f"h{k}")
        for k in range(3)
    ).to_numpy()
    options = np.column_stack([hours, np.full(len(frame), fallback), np.full(len(frame), EARLIEST)])
    times = tables[code[:, None], options]
    pick = np.argmax(times >= 0, axis=1)
    at = times[np.arange(len(frame)), pick]
    return at, pick < hours.shape[1]


def _next_hour(t: datetime) -> datetime:
    """`t` if on the hour, else the next full hour."""
    whole = t.replace(minute=0, second=0, microsecond=0)
    return whole if whole == t else whole + timedelta(hours=1)


EARLIEST, EMPTY = 24, 25  # columns of a zone's table after its 24 local hours


@lru_cache(maxsize=4096)
def _allowed_hours(zone: str, first: datetime, last: datetime, quiet_start: int, quiet_end: int):
    """For one zone: the first allowed UTC time (µs) of each local hour in [first, last],
    then the first allowed time at all, then -1 (the slot for an absent hour)."""
    table = np.full(26, -1, dtype=np.int64)
    if last < first:
        return table
    grid = pl.datetime_range(first, last, "1h", time_zone="UTC", eager=True)
    local = grid.dt.convert_time_zone(zone).dt.hour().to_numpy()
    allowed = ~quiet_hours(local, quiet_start, quiet_end)
    stamps = grid.dt.epoch("us").to_numpy()[allowed]
    local = local[allowed]
    if len(stamps):
        table[EARLIEST] = stamps[0]
        hours, position = np.unique(local, return_index=True)  # first occurrence of each hour
        table[hours] = stamps[position]
    return table


def quiet_hours(hours: np.ndarray, start: int, end: int) -> np.ndarray:
    """Whether each local hour falls in quiet hours [start, end), which may wrap midnight."""
    if start > end:
        return (hours >= start) | (hours < end)
    return (hours >= start) & (hours < end)


def once_per_batch(frame: pl.DataFrame) -> pl.DataFrame:
    """A customer repeated in one batch is decided once: the first; the repeats do not send."""
    repeat = ~pl.col("customer_id").is_first_distinct()
    return frame.with_columns(
        send=pl.col("send") & ~repeat,
        r_duplicate=pl.when(repeat).then(pl.lit("duplicate_in_batch")),
        send_at=pl.when(repeat).then(None).otherwise("send_at"),
        holdout=pl.col("holdout") & ~repeat,
        holdout_kind=pl.when(repeat).then(None).otherwise("holdout_kind"),
        probability=pl.when(repeat).then(1.0).otherwise("probability"),
    )


REASONS = (
    "r_segment",
    "r_known",
    "r_products",
    "r_propensity",
    "r_offer",
    "r_offer_candidate",
    "r_suppressed",
    "r_holdout",
    "r_cap",
    "r_sendtime",
    "r_duplicate",
)


def finish(
    frame: pl.DataFrame, snapshot: Snapshot, context: Context, batch_id: str
) -> pl.DataFrame:
    """The decision columns: lists filled from the shop-wide ones, reasons in rule order."""
    personal = pl.col("products").is_not_null()
    frame = frame.with_columns(
        r_products=pl.when(personal)
        .then(pl.lit("personal_products"))
        .otherwise(pl.lit("cold_start_popular")),
        products=pl.col("products").fill_null(pl.lit(snapshot.popular, pl.List(pl.String))),
        cross_sell=pl.col("cross_sell").fill_null(pl.lit(snapshot.trending, pl.List(pl.String))),
        r_offer_candidate=pl.col("r_offer_candidate")
        if "r_offer_candidate" in frame.columns
        else pl.lit(None, pl.String),
    )
    sending = pl.col("send")
    return frame.with_row_index("i").select(
        decision_id=pl.format("{}-{}", pl.lit(batch_id), "i"),
        customer_id="customer_id",
        campaign=pl.lit(context.campaign),
        trigger=pl.lit(context.trigger, pl.String),
        transactional=pl.lit(context.transactional),
        segment="segment",
        send=sending,
        holdout="holdout",
        holdout_kind="holdout_kind",
        probability=pl.col("probability").round(6),
        offer=pl.when(sending).then("offer").otherwise(pl.lit(CONTROL)),
        offer_value=pl.when(sending).then("offer_value").otherwise(0.0),
        products="products",
        cross_sell="cross_sell",
        send_at="send_at",
        best_hours="best_hours",
        purchase_propensity="purchase_propensity",
        reasons=pl.concat_list(REASONS).list.drop_nulls(),
        model_versions=pl.lit(snapshot.model_versions),
    )
