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
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from sendwise.store.files import constant

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
    "offer_probability",
    "products",
    "cross_sell",
    "send_at",
    "best_hours",
    "purchase_propensity",
    "reasons",
    "model_versions",
)


LISTS = ("products", "cross_sell", "best_hours")


@dataclass(frozen=True)
class Snapshot:
    """Model outputs per known customer (`SNAPSHOT_SCHEMA`, plus `value_ARM` and `cost_ARM`
    per offer arm where an offer model is champion), and the shop-wide lists.

    The rules read it as numpy columns (`columns`) with one row more than there are customers:
    the row every new customer gets (a lead, no lists, no hours), so that looking up a batch
    is one gather, whatever its size."""

    frame: pl.DataFrame
    popular: list[str]
    trending: list[str]
    model_versions: str
    arms: tuple[str, ...] = ()  # the offer model's arms, control first; () without one
    index: dict[str, int] = field(init=False, repr=False, compare=False)
    columns: dict[str, np.ndarray] = field(init=False, repr=False, compare=False)
    lists: pl.DataFrame = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        frame, arms = self.frame, list(self.arms)
        ids = frame["customer_id"].to_list()
        hours = frame.select(
            pl.col("best_hours").list.get(k, null_on_oob=True).fill_null(EMPTY).alias(f"h{k}")
            for k in range(3)
        ).to_numpy()
        known = {
            "timezone": _strings(frame["timezone"]),
            "segment": _strings(frame["segment"].fill_null("lead")),
            "unsubscribed": frame["unsubscribed"].fill_null(False).to_numpy(),
            "bounces": frame["bounces"].fill_null(0).to_numpy(),
            "purchase_propensity": frame["purchase_propensity"].cast(pl.Float64).to_numpy(),
            "propensity_reason": _strings(frame["propensity_reason"]),
            "has_products": frame["products"].is_not_null().to_numpy(),
            "hours": hours.reshape(len(frame), 3).astype(np.int64),
            "values": frame.select(pl.col(f"value_{a}").fill_null(0.0) for a in arms)
            .to_numpy()
            .reshape(len(frame), len(arms)),
            "costs": frame.select(pl.col(f"cost_{a}").fill_null(0.0) for a in arms)
            .to_numpy()
            .reshape(len(frame), len(arms)),
        }
        new = {
            "timezone": "",
            "segment": "lead",
            "unsubscribed": False,
            "bounces": 0,
            "purchase_propensity": np.nan,
            "propensity_reason": "",
            "has_products": False,
            "hours": [EMPTY] * 3,
            "values": [0.0] * len(arms),
            "costs": [0.0] * len(arms),
        }
        columns = {
            name: np.concatenate([values, np.array([new[name]], dtype=values.dtype)])
            if values.ndim == 2
            else np.append(values, np.array(new[name], dtype=values.dtype))
            for name, values in known.items()
        }
        # filled once here: new customers and those without personal lists get the shop's
        lists = frame.select(
            pl.col("products").fill_null(pl.lit(self.popular, pl.List(pl.String))),
            pl.col("cross_sell").fill_null(pl.lit(self.trending, pl.List(pl.String))),
            pl.col("best_hours").fill_null(pl.lit([], pl.List(pl.Int64))),
        )
        new_customer = pl.DataFrame(
            {"products": [self.popular], "cross_sell": [self.trending], "best_hours": [[]]},
            schema=lists.schema,
        )
        object.__setattr__(self, "index", dict(zip(ids, range(len(ids)), strict=True)))
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "lists", pl.concat([lists, new_customer]))

    def __len__(self) -> int:
        return len(self.index)

    def positions(self, customer_ids: pl.Series) -> np.ndarray:
        """Each id's row in `columns`; `len(self)`, the new customer's row, for unknown ids."""
        n = len(self)
        if len(customer_ids) == n and customer_ids.equals(self.frame["customer_id"]):
            return np.arange(n)  # a whole-shop batch
        index = self.index
        return np.fromiter(
            (index.get(c, n) for c in customer_ids.to_list()), np.int64, len(customer_ids)
        )


def _strings(column: pl.Series) -> np.ndarray:
    """A string column as a numpy unicode array, "" for null (the rules' "none")."""
    return column.fill_null("").to_numpy().astype(np.str_)


@dataclass
class Batch:
    """One batch while the rules run: a numpy column per decision field, one row per
    recipient in order; each rule step fills or narrows its own. Text is "" where there is
    none, times are µs since the epoch (-1: none), reasons are kept in `REASONS` order."""

    ids: pl.Series
    at: np.ndarray  # the snapshot row (`Snapshot.positions`)
    known: np.ndarray
    timezone: np.ndarray
    segment: np.ndarray
    opted_out: np.ndarray
    send: np.ndarray = field(init=False)
    holdout_kind: np.ndarray = field(init=False)
    probability: np.ndarray = field(init=False)
    offer_holdout_share: np.ndarray = field(init=False)  # P(offer holdout | the feature draw)
    offer_probability: np.ndarray = field(init=False)  # P(offer | customer); NaN: not drawn
    popular_products: np.ndarray = field(init=False)  # no personal lists: popular, trending
    send_hours: np.ndarray = field(init=False)  # (rows, 3) local hours, best first; EMPTY
    offer: np.ndarray = field(init=False)
    offer_value: np.ndarray = field(init=False)
    send_at: np.ndarray = field(init=False)
    reasons: dict[str, np.ndarray] = field(default_factory=dict)
    lead: list[list[str] | None] | None = None  # products first: a trigger's, a live cart
    drop: list[list[str] | None] | None = None  # products just bought: in neither list
    fired_at: np.ndarray | None = None  # when each row's trigger fired (µs), if any

    def __len__(self) -> int:
        return len(self.known)


def decide(
    snapshot: Snapshot,
    recipients: pl.DataFrame,
    context: Context,
    settings: Settings,
    now: datetime,
    sent: pl.DataFrame | None = None,
    batch_id: str = "local",
) -> pl.DataFrame:
    """One decision per row of `recipients` (`customer_id`; optional: `timezone`,
    `opted_out`; what happened since the snapshot: `segment`, `lead` (products first: a
    trigger's subject, a live cart) and `drop` (just bought); for a trigger, when it fired,
    µs, as `fired_at`), in order (`DECISION_COLUMNS`).
    `sent`: earlier marketing sends (`customer_id`, `sent_at`) of other campaigns for the
    frequency caps; None: no caps."""
    now = context.now or now
    batch = recipients_known(snapshot, recipients)
    suppress(batch, snapshot, context, settings)
    draw_holdouts(batch, snapshot, context, settings)
    cap_frequency(batch, context, settings, now, sent)
    choose_offers(batch, snapshot, context, settings)
    schedule(batch, context, settings, now)
    once_per_batch(batch)
    return finish(batch, snapshot, context, batch_id)


def recipients_known(snapshot: Snapshot, recipients: pl.DataFrame) -> Batch:
    """The snapshot's row per recipient; the request's time zone before the shop's, else UTC."""
    ids = recipients["customer_id"]
    at = snapshot.positions(ids)
    columns = snapshot.columns
    timezone = columns["timezone"][at]
    given = recipients.get_column("timezone", default=None)
    if given is not None and given.null_count() < len(given):
        given = _strings(given)
        timezone = np.where(given != "", given, timezone)
    opted_out = recipients.get_column("opted_out", default=None)
    if opted_out is not None and opted_out.null_count():
        opted_out = opted_out.fill_null(False)
    segment = columns["segment"][at]
    if (fresh := recipients.get_column("segment", default=None)) is not None:
        fresh = _strings(fresh)
        segment = np.where(fresh != "", fresh, segment)
    batch = Batch(
        ids=ids,
        at=at,
        known=at < len(snapshot),
        timezone=np.where(timezone != "", timezone, "UTC"),
        segment=segment,
        opted_out=np.zeros(len(ids), bool) if opted_out is None else opted_out.to_numpy(),
    )
    for name in ("lead", "drop"):
        if (given := recipients.get_column(name, default=None)) is not None:
            setattr(batch, name, given.to_list())
    fired_at = recipients.get_column("fired_at", default=None)
    if fired_at is not None:
        batch.fired_at = fired_at.to_numpy()
    reason = columns["propensity_reason"][at]
    batch.reasons.update(
        r_segment=np.char.add("segment_", batch.segment),
        r_known=np.where(batch.known, "", "cold_start_unknown_customer"),
        r_propensity=np.where(reason != "", np.char.add("propensity_", reason), ""),
    )
    return batch


def suppress(batch: Batch, snapshot: Snapshot, context: Context, settings: Settings) -> None:
    """`send` false, with the reason, for who gets no mail of this kind at all."""
    unsubscribed = snapshot.columns["unsubscribed"][batch.at] & (not context.transactional)
    bounced = snapshot.columns["bounces"][batch.at] >= settings.suppression.bounce_limit
    reason = _first(
        (batch.opted_out, "suppressed_opt_out"),
        (unsubscribed, "suppressed_unsubscribed"),
        (bounced, "suppressed_bounced"),
    )
    batch.reasons["r_suppressed"] = reason
    batch.send = reason == ""


def _first(*cases: tuple[np.ndarray, str]) -> np.ndarray:
    """Per row, the text of the first case that holds; "" where none does."""
    return np.select([held for held, _ in cases], [text for _, text in cases], default="")


def draw_holdouts(batch: Batch, snapshot: Snapshot, context: Context, settings: Settings) -> None:
    """Global, then campaign or trigger, then one feature holdout; `probability` so far."""
    shares = settings.holdouts
    ids = batch.ids
    eligible = batch.send & (not context.transactional)
    group, group_share, group_salt = (
        ("trigger", settings.trigger_holdout(context.trigger), f"{context.trigger}:trigger")
        if context.trigger
        else ("campaign", shares.campaign, f"{context.campaign}:campaign")
    )
    in_global = uniform(ids, "global-holdout") < shares.global_
    in_group = uniform(ids, f"{group_salt}-holdout") < group_share
    # feature holdouts share one draw: bands of the shares that apply to each recipient
    has_products = snapshot.columns["has_products"][batch.at]
    hours = snapshot.columns["hours"][batch.at]
    bands = np.column_stack(
        [
            np.where(has_products, shares.products, 0.0),
            np.where((hours[:, 0] != EMPTY) & (not context.trigger), shares.sendtime, 0.0),
            np.where(batch.known & bool(snapshot.arms), shares.offer, 0.0),
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
    # the offer's own randomisation, given where the shared feature draw fell: a recipient in
    # the products or sendtime band cannot be in the offer holdout
    others = bands[:, 0] + bands[:, 1]
    in_other = in_feature & (band < 2)
    offer_share = np.where(in_other, 0.0, bands[:, 2] / np.maximum(1 - others, 1e-12))
    batch.offer_holdout_share = np.where(eligible, offer_share, 0.0)
    batch.holdout_kind = np.where(eligible, kind, "")
    batch.probability = np.where(eligible, probability, 1.0)
    batch.send = batch.send & ~np.isin(batch.holdout_kind, ["global", "campaign", "trigger"])
    batch.reasons["r_holdout"] = np.where(
        batch.holdout_kind != "", np.char.add("holdout_", batch.holdout_kind), ""
    )
    batch.popular_products = ~has_products | (batch.holdout_kind == "products")
    batch.send_hours = np.where((batch.holdout_kind == "sendtime")[:, None], EMPTY, hours)


def cap_frequency(
    batch: Batch,
    context: Context,
    settings: Settings,
    now: datetime,
    sent: pl.DataFrame | None,
) -> None:
    """No more marketing sends than each window's cap, tightened by segment."""
    caps, windows = settings.caps, settings.caps.windows()
    if sent is None or context.transactional or not windows or sent.is_empty():
        batch.reasons["r_cap"] = np.full(len(batch), "")
        return
    rows, sent_at = _sends_of_rows(batch, sent)
    reason = np.full(len(batch), "", dtype=f"<U{len('freq_cap_d') + 6}")
    for days in reversed(windows):  # the shortest window that is full names the reason
        limit = _limit(caps.per_recipient.get(days), caps.per_segment, days, batch.segment)
        if limit is not None:
            since = (now - timedelta(days=days)).timestamp() * 1e6
            counts = np.bincount(rows[sent_at > since], minlength=len(batch))
            reason = np.where(counts >= limit, f"freq_cap_{days}d", reason)
    batch.reasons["r_cap"] = np.where(batch.send, reason, "")
    batch.send = batch.send & (batch.reasons["r_cap"] == "")


def _sends_of_rows(batch: Batch, sent: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The batch row (the first, for an id repeated) and time (µs) of each earlier send to
    one of the batch's recipients: ids matched by binary search over the sorted batch."""
    ids = batch.ids.to_numpy().astype(np.str_)
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    sent_ids = sent["customer_id"].to_numpy().astype(np.str_)
    place = np.minimum(np.searchsorted(ordered, sent_ids), len(ids) - 1)
    mine = ordered[place] == sent_ids
    sent_at = sent["sent_at"].dt.epoch("us").to_numpy()
    return order[place[mine]], sent_at[mine]


def _limit(
    everyone: int | None, per_segment: dict[str, dict[int, int]], days: int, segment: np.ndarray
) -> np.ndarray | None:
    """Each row's cap over `days`: the general one, tightened for its segment (None: no cap)."""
    tightened = {s: caps[days] for s, caps in per_segment.items() if days in caps}
    if everyone is None and not tightened:
        return None
    limit = np.full(len(segment), np.iinfo(np.int64).max if everyone is None else everyone)
    for name, n in tightened.items():
        limit = np.where(segment == name, np.minimum(limit, n), limit)
    return limit


def choose_offers(batch: Batch, snapshot: Snapshot, context: Context, settings: Settings) -> None:
    """`offer`, `offer_value` and the offer's reason; `probability` times the chance of it."""
    offers = settings.offers
    candidates = context.offers if context.offers is not None else offers.arms
    segment = batch.segment
    batch.offer = np.where(
        ~batch.known | (segment == "lead"),
        offers.welcome,
        np.where(segment == "lapsed", offers.lapsed, offers.otherwise),
    )
    batch.offer_value = np.zeros(len(batch))
    batch.offer_probability = np.full(len(batch), np.nan)
    batch.reasons["r_offer"] = np.char.add("offer_rule_", segment)
    if snapshot.arms:
        _model_offers(batch, snapshot, context, settings, candidates)
    outside = np.zeros(len(batch), bool)
    if candidates is not None:
        outside = ~np.isin(batch.offer, [*candidates, CONTROL])
    batch.reasons["r_offer_candidate"] = np.where(
        outside, np.char.add("offer_not_candidate_", batch.offer), ""
    )
    batch.offer = np.where(outside, CONTROL, batch.offer)
    batch.offer_value = np.where(outside, 0.0, batch.offer_value)


def _model_offers(
    batch: Batch,
    snapshot: Snapshot,
    context: Context,
    settings: Settings,
    candidates: list[str] | None,
) -> None:
    """The offer model's arm for known customers (the rule stays for new ones)."""
    arms = np.array(snapshot.arms)
    values = snapshot.columns["values"][batch.at]
    cost = snapshot.columns["costs"][batch.at]
    if candidates is not None:
        offered = np.array([k == 0 or a in candidates for k, a in enumerate(arms)])
        values = np.where(offered, values, -np.inf)
    policy = settings.offers.policy(context.campaign)
    choice = policy.choose(values, cost, batch.ids, list(arms))
    held = batch.holdout_kind == "offer"
    chosen = np.where(held, 0, choice.chosen)
    reason = np.where(
        held,
        "offer_holdout",
        np.where(choice.exploring, "offer_explore", np.char.add("uplift_", arms[chosen])),
    )
    value = values[np.arange(len(batch)), chosen]
    known = batch.known
    batch.offer = np.where(known, arms[chosen], batch.offer)
    batch.offer_value = np.where(known & np.isfinite(value), value, batch.offer_value)
    batch.reasons["r_offer"] = np.where(known, reason, batch.reasons["r_offer"])
    batch.probability = batch.probability * np.where(known & ~held, choice.probability, 1.0)
    # the offer's alone, for learning from the log: held out, or drawn by the policy
    share = batch.offer_holdout_share
    drawn = share * (chosen == 0) + (1 - share) * choice.probability_of(chosen)
    batch.offer_probability = np.where(known, drawn, batch.offer_probability)


def schedule(batch: Batch, context: Context, settings: Settings, now: datetime) -> None:
    """`send_at` for who is sent: see `send_times`."""
    timing = settings.send_time
    start = max(now, context.window_start or now)
    # without a named end, the window is whole hours, so requests within an hour share tables
    end = context.window_end or _next_hour(start) + timedelta(days=timing.window_days)
    quiet = (
        timing.quiet_start if context.quiet_start is None else context.quiet_start,
        timing.quiet_end if context.quiet_end is None else context.quiet_end,
    )
    if context.trigger is None:
        at, personal = send_times(
            batch.timezone, batch.send_hours, start, end, quiet, timing.fallback_hour
        )
        usual = np.where(personal, "sendtime_personal", "sendtime_fallback")
    else:  # a triggered email goes at once, or when the recipient's quiet hours end
        hour = start.replace(minute=0, second=0, microsecond=0)
        none = np.full_like(batch.send_hours, EMPTY)
        at, _ = send_times(batch.timezone, none, hour, end, quiet, EARLIEST)
        # not before each firing: exact while a batch's firings share one clock hour
        fired = batch.fired_at if batch.fired_at is not None else int(start.timestamp() * 1e6)
        at = np.where(at >= 0, np.maximum(at, fired), at)
        usual = "sendtime_first_allowed"
    found = at >= 0
    reason = np.where(~found, "no_time_in_window", usual)
    batch.reasons["r_sendtime"] = np.where(batch.send, reason, "")
    batch.send_at = np.where(batch.send & found, at, -1)
    batch.send = batch.send & found


def send_times(
    zones: np.ndarray,
    hours: np.ndarray,
    start: datetime,
    end: datetime,
    quiet: tuple[int, int],
    fallback: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the UTC time (µs since the epoch; -1: none) of the first of its `hours`
    (local, best first; EMPTY: none) that falls inside [start, end] and outside quiet hours,
    else of the fallback hour, else the first allowed hour; and whether it was a personal
    hour."""
    if not len(zones):
        return np.zeros(0, np.int64), np.zeros(0, bool)
    first = _next_hour(start)
    last = min(end, first + timedelta(hours=HORIZON_HOURS))
    names, code = np.unique(zones, return_inverse=True)
    tables = np.stack([_allowed_hours(str(z), first, last, *quiet) for z in names])
    rows = len(zones)
    options = np.column_stack([hours, np.full(rows, fallback), np.full(rows, EARLIEST)])
    times = tables[code.reshape(-1)[:, None], options]
    pick = np.argmax(times >= 0, axis=1)
    return times[np.arange(rows), pick], pick < hours.shape[1]


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


def once_per_batch(batch: Batch) -> None:
    """A customer repeated in one batch is decided once: the first; the repeats do not send."""
    if batch.ids.n_unique() == len(batch):  # the usual batch: skip the per-row look
        repeat = np.zeros(len(batch), bool)
    else:
        repeat = ~batch.ids.is_first_distinct().to_numpy()
    batch.send = batch.send & ~repeat
    batch.reasons["r_duplicate"] = np.where(repeat, "duplicate_in_batch", "")
    batch.send_at = np.where(repeat, -1, batch.send_at)
    batch.holdout_kind = np.where(repeat, "", batch.holdout_kind)
    batch.probability = np.where(repeat, 1.0, batch.probability)


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


def finish(batch: Batch, snapshot: Snapshot, context: Context, batch_id: str) -> pl.DataFrame:
    """The decision columns, in one frame: lists from the snapshot (the shop's where held out
    of personal products), reasons in rule order."""
    batch.reasons["r_products"] = np.where(
        batch.popular_products, "cold_start_popular", "personal_products"
    )
    lists = snapshot.lists.gather(batch.at)
    held = batch.holdout_kind == "products"
    if held.any():
        lists = lists.with_columns(
            pl.when(pl.Series(held))
            .then(pl.lit(shop, pl.List(pl.String)))
            .otherwise(name)
            .alias(name)
            for name, shop in (("products", snapshot.popular), ("cross_sell", snapshot.trending))
        )
    sending, kind = batch.send, batch.holdout_kind
    if batch.lead is not None or batch.drop is not None:
        lists = _fresh_lists(lists, batch.lead, batch.drop)
    send_at = batch.send_at.astype("datetime64[us]")
    send_at[batch.send_at < 0] = np.datetime64("NaT")
    n = len(batch)
    frame = pl.DataFrame(
        {
            "decision_id": np.arange(n),
            "batch_id": constant(f"{batch_id}-", n, pl.String),
            "customer_id": batch.ids,
            "campaign": constant(context.campaign, n, pl.String),
            "trigger": constant(context.trigger, n, pl.String),
            "transactional": constant(context.transactional, n, pl.Boolean),
            "segment": batch.segment,
            "send": sending,
            "holdout": kind != "",
            "holdout_kind": kind,
            "probability": batch.probability.round(6),
            "offer": np.where(sending, batch.offer, CONTROL),
            "offer_value": np.where(sending, batch.offer_value, 0.0),
            "offer_probability": pl.Series(
                np.where(sending, batch.offer_probability, np.nan).round(6), nan_to_null=True
            ),
            "products": lists["products"],
            "cross_sell": lists["cross_sell"],
            "send_at": send_at,
            "best_hours": lists["best_hours"],
            "purchase_propensity": pl.Series(
                snapshot.columns["purchase_propensity"][batch.at], nan_to_null=True
            ),
            "reasons": _lists_of_present([batch.reasons[name] for name in REASONS]),
            "model_versions": constant(snapshot.model_versions, n, pl.String),
        }
    )
    return frame.select(FINISHED)


# how `finish` reads its frame, built once (building costs more than running, one recipient)
_READ_AS = {
    "decision_id": pl.concat_str("batch_id", pl.col("decision_id").cast(pl.String)),
    "holdout_kind": pl.col("holdout_kind").replace("", None),
    "send_at": pl.col("send_at").dt.replace_time_zone("UTC"),
}
FINISHED = [_READ_AS.get(name, pl.col(name)).alias(name) for name in DECISION_COLUMNS]


def _fresh_lists(
    lists: pl.DataFrame, lead: list[list[str] | None] | None, drop: list[list[str] | None] | None
) -> pl.DataFrame:
    """Products that lead (a trigger's subject, a live cart) come first in `products` and
    leave `cross_sell`; products bought since the snapshot leave both; the lists keep their
    lengths. Per row in Python: only requests with fresh events, or triggers, come here."""
    rows = len(lists)
    lead, drop = lead or [None] * rows, drop or [None] * rows

    def arrange(items: list[str], first: list[str] | None, gone: list[str] | None):
        gone = set(gone or ())
        first = [p for p in dict.fromkeys(first or ()) if p not in gone]
        rest = [p for p in items if p not in gone and p not in first]
        return [*first, *rest][: max(len(items), 1)], rest

    products = list(map(arrange, lists["products"].to_list(), lead, drop))
    cross_sell = [
        [p for p in items if p not in set(first or ()) | set(gone or ())]
        for items, first, gone in zip(lists["cross_sell"].to_list(), lead, drop, strict=True)
    ]
    return lists.with_columns(
        pl.Series("products", [p for p, _ in products], pl.List(pl.String)),
        pl.Series("cross_sell", cross_sell, pl.List(pl.String)),
    )


def _lists_of_present(columns: list[np.ndarray]) -> pl.Series:
    """Per row, the non-empty texts of `columns` in order, as one list column (built through
    Arrow offsets: a list per row without a Python loop)."""
    stacked = np.column_stack(columns)
    present = stacked != ""
    offsets = np.zeros(len(stacked) + 1, np.int32)
    np.cumsum(present.sum(axis=1), out=offsets[1:])
    values = pa.array(stacked[present], pa.string())
    return pl.from_arrow(pa.ListArray.from_arrays(pa.array(offsets), values))
