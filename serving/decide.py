"""Per-recipient decisions for the API, without HTTP.

The batch engine's answers at the snapshot time (`decision_frame`: segment, propensity,
products, best hours, offer, suppression) are held in memory by customer id; a request adds its
context: the send window and quiet hours (in each recipient's own time zone), the campaign
whose randomised holdouts apply, frequency caps over the shared send history, candidate
offers, and opt-outs. Unknown customers get a cold-start decision, never an error.

Order of rules, per recipient: suppression (opt-out, unsubscribed, bounced) -> holdouts
(global, then campaign; products and send time at feature level) -> frequency caps ->
candidate offers -> send time. Transactional mail skips holdouts, caps and unsubscribes
(a receipt is not marketing); bounces and opt-outs still suppress it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, available_timezones

import polars as pl
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from sendwise.policy.randomise import uniform
from sendwise.policy.segments import SegmentOffers
from sendwise.store.sends import SendHistory

ZONES = frozenset(available_timezones())
MAX_RECIPIENTS = 10_000


# ids and names as an ESP sends them: printable, no control characters (PostgreSQL refuses NUL)
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: Name = Field(examples=["c0000042"])
    timezone: str | None = Field(None, description="IANA zone; else the one on file, else UTC")
    opted_out: bool = Field(False, description="unsubscribed or suppressed by the ESP")

    @field_validator("timezone")
    @classmethod
    def known_zone(cls, zone: str | None) -> str | None:
        if zone is not None and zone not in ZONES:
            raise ValueError(f"unknown time zone {zone!r} (expected an IANA name)")
        return zone


class Context(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaign: Name = Field("default", examples=["june-sale"])
    trigger: Name | None = Field(
        None, description="what prompted the send", examples=["cart_abandoned"]
    )
    transactional: bool = Field(
        False, description="receipts and the like: exempt from caps, holdouts, unsubscribes"
    )
    offers: list[Name] | None = Field(
        None,
        max_length=64,
        description="candidate offers; any other offer becomes `none`",
        examples=[["none", "free_shipping", "10_off"]],
    )
    window_start: datetime | None = Field(None, description="earliest send time (UTC)")
    window_end: datetime | None = Field(None, description="latest send time (UTC)")
    quiet_start: int = Field(21, ge=0, le=23, description="local hour quiet hours begin")
    quiet_end: int = Field(8, ge=0, le=23, description="local hour quiet hours end")
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


class DecideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipients: list[Recipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    context: Context = Field(default_factory=Context)


class Decision(BaseModel):
    """One recipient's decision (DESIGN: Outputs, Decision)."""

    decision_id: str
    customer_id: str
    segment: str
    send: bool
    holdout: bool
    probability: float = Field(description="probability of this randomised assignment")
    offer: str
    offer_value: float
    products: list[str]
    send_at: datetime | None
    best_hours: list[int]
    purchase_propensity: float | None
    reasons: list[str]
    model_versions: str


@dataclass(frozen=True)
class Holdouts:
    """Randomised control shares, drawn per recipient and campaign (features: per recipient,
    campaign and feature). Global holdouts get no marketing mail; feature holdouts get the
    email with that feature switched to its default (popular products, the fallback hour)."""

    global_share: float = 0.02
    campaign: float = 0.05
    products: float = 0.05
    sendtime: float = 0.05


@dataclass(frozen=True)
class FrequencyCaps:
    """At most `n` marketing sends in `days` rolling days: `{days: n}` for everyone, tightened
    by segment. A send is a decision with `send` true; each campaign counts once, so asking
    again for the same campaign is not a second send."""

    per_recipient: dict[int, int] = field(default_factory=lambda: {1: 1, 7: 3})
    per_segment: dict[str, dict[int, int]] = field(
        default_factory=lambda: {"lapsed": {7: 1}, "at_risk": {7: 2}}
    )

    def limits(self, segment: str) -> dict[int, int]:
        limits = dict(self.per_recipient)
        for days, n in self.per_segment.get(segment, {}).items():
            limits[days] = min(n, limits.get(days, n))
        return limits

    @property
    def longest_days(self) -> int:
        windows = [*self.per_recipient, *(d for s in self.per_segment.values() for d in s)]
        return max(windows, default=0)


def quiet_hour(hour: int, start: int, end: int) -> bool:
    """Whether a local hour falls in quiet hours [start, end), which may wrap midnight."""
    return (hour >= start or hour < end) if start > end else start <= hour < end


class SendClock:
    """Send times for one request: the window's allowed hours are worked out once per zone."""

    def __init__(self, context: Context, now: datetime, fallback_hour: int):
        self.context = context
        self.start = max(now, context.window_start or now)
        self.end = context.window_end or self.start + timedelta(days=7)
        self.fallback_hour = fallback_hour
        self.zones: dict[str, tuple[dict[int, datetime], datetime | None]] = {}

    def _allowed(self, zone: str) -> tuple[dict[int, datetime], datetime | None]:
        """First allowed UTC time for each local hour, and the first allowed time at all."""
        tz = ZoneInfo(zone)
        first = self.start.replace(minute=0, second=0, microsecond=0)
        if first < self.start:
            first += timedelta(hours=1)
        hours = int(min((self.end - first).total_seconds() // 3600, 8 * 24)) + 1
        by_hour: dict[int, datetime] = {}
        earliest = None
        for h in range(max(hours, 0)):
            t = first + timedelta(hours=h)
            local = t.astimezone(tz).hour
            if t > self.end or quiet_hour(local, self.context.quiet_start, self.context.quiet_end):
                continue
            earliest = earliest or t
            by_hour.setdefault(local, t)
        return by_hour, earliest

    def at(self, best_hours: list[int], zone: str) -> datetime | None:
        """The first best local hour (else the fallback hour) inside the window and outside
        quiet hours (the window searched up to eight days); else the window's first allowed
        hour; None if quiet hours cover the whole window."""
        if zone not in self.zones:
            self.zones[zone] = self._allowed(zone)
        by_hour, earliest = self.zones[zone]
        for hour in [*best_hours, self.fallback_hour]:
            if hour in by_hour:
                return by_hour[hour]
        return earliest


def send_time(
    best_hours: list[int], zone: str, context: Context, now: datetime, fallback_hour: int
) -> datetime | None:
    """`SendClock.at` for one recipient."""
    return SendClock(context, now, fallback_hour).at(best_hours, zone)


def _assignment(p: float, held: bool) -> float:
    return p if held else 1 - p


class Decider:
    """Answers `DecideRequest`s from a snapshot of batch decisions (one row per customer)."""

    KEPT_REASONS = ("segment_", "propensity_", "personal_products", "offer_", "uplift_")

    def __init__(
        self,
        snapshot: pl.DataFrame,
        popular: list[str],
        model_versions: str,
        holdouts: Holdouts | None = None,
        caps: FrequencyCaps | None = None,
        fallback_hour: int = 10,
        cold_start_offer: str = SegmentOffers().lead,
    ):
        frame = snapshot.with_columns(
            reasons=pl.col("reasons").list.eval(
                pl.element().filter(
                    pl.any_horizontal(
                        pl.element().str.starts_with(prefix) for prefix in self.KEPT_REASONS
                    )
                )
            )
        )
        self.index = {c: i for i, c in enumerate(frame["customer_id"].to_list())}
        self.columns = {name: frame[name].to_list() for name in self.SNAPSHOT_COLUMNS}
        self.popular = popular
        self.model_versions = model_versions
        self.holdouts = holdouts or Holdouts()
        self.caps = caps or FrequencyCaps()
        self.fallback_hour = fallback_hour
        self.cold_start_offer = cold_start_offer

    SNAPSHOT_COLUMNS = (
        "segment",
        "timezone",
        "suppression",
        "purchase_propensity",
        "products",
        "personal_products",
        "best_hours",
        "offer",
        "offer_value",
        "offer_probability",
        "holdout",
        "reasons",
    )

    def __len__(self) -> int:
        return len(self.index)

    def decide(
        self,
        request: DecideRequest,
        batch_id: str = "local",
        history: SendHistory | None = None,
        now: datetime | None = None,
    ) -> list[dict]:
        """One decision per recipient, in order. `history` supplies the sends frequency caps
        count (none: caps are not applied)."""
        context = request.context
        now = context.now or now or datetime.now(UTC)
        ids = [r.customer_id for r in request.recipients]
        share = self.holdouts
        draws = {
            name: uniform(ids, salt)
            for name, salt in (
                ("global", "global-holdout"),
                ("campaign", f"{context.campaign}:campaign-holdout"),
                ("products", f"{context.campaign}:products-holdout"),
                ("sendtime", f"{context.campaign}:sendtime-holdout"),
            )
        }
        sent: dict[str, list[datetime]] = {}
        if history is not None and not context.transactional and self.caps.longest_days:
            since = now - timedelta(days=self.caps.longest_days)
            sent = history.sends(ids, since, context.campaign)
        clock = SendClock(context, now, self.fallback_hour)
        candidates = None if context.offers is None else set(context.offers)
        col = self.columns
        decisions = []
        for i, recipient in enumerate(request.recipients):
            customer = recipient.customer_id
            row = self.index.get(customer)
            reasons: list[str] = []
            if row is None:
                segment, hours, products, personal = "lead", [], self.popular, False
                offer, value, offer_p, offer_held = self.cold_start_offer, 0.0, 1.0, False
                propensity, zone_on_file, suppressed = None, None, None
                reasons += ["cold_start_unknown_customer", "cold_start_popular"]
            else:
                segment, hours = col["segment"][row], col["best_hours"][row] or []
                products, personal = col["products"][row] or [], col["personal_products"][row]
                offer, value = col["offer"][row], col["offer_value"][row]
                offer_p, offer_held = col["offer_probability"][row], col["holdout"][row]
                propensity, zone_on_file = col["purchase_propensity"][row], col["timezone"][row]
                suppressed = col["suppression"][row]
                reasons += col["reasons"][row]
            zone = recipient.timezone or zone_on_file or "UTC"
            probability = offer_p
            holdout = bool(offer_held)
            send = True
            if recipient.opted_out:
                send = False
                reasons.append("suppressed_opt_out")
            if suppressed and not (context.transactional and suppressed != "suppressed_bounced"):
                send = False
                reasons.append(suppressed)
            if send and not context.transactional:
                held = draws["global"][i] < share.global_share
                probability *= _assignment(share.global_share, held)
                if held:
                    reasons.append("holdout_global")
                else:
                    held = draws["campaign"][i] < share.campaign
                    probability *= _assignment(share.campaign, held)
                    if held:
                        reasons.append("holdout_campaign")
                if held:
                    send, holdout = False, True
                else:
                    if personal:
                        held = draws["products"][i] < share.products
                        probability *= _assignment(share.products, held)
                        if held:
                            products, holdout = self.popular, True
                            reasons.append("holdout_products")
                    if hours:
                        held = draws["sendtime"][i] < share.sendtime
                        probability *= _assignment(share.sendtime, held)
                        if held:
                            hours, holdout = [], True
                            reasons.append("holdout_sendtime")
            if send and customer in sent:
                for days, limit in sorted(self.caps.limits(segment).items()):
                    since = now - timedelta(days=days)
                    if sum(t > since for t in sent[customer]) >= limit:
                        send = False
                        reasons.append(f"freq_cap_{days}d")
                        break
            if candidates is not None and offer not in candidates:
                reasons.append(f"offer_not_candidate_{offer}")
                offer, value = "none", 0.0
            send_at = clock.at(hours, zone) if send else None
            if send and send_at is None:
                send = False
                reasons.append("no_time_in_window")
            if send:
                reasons.append("sendtime_personal" if hours else "sendtime_fallback")
            decisions.append(
                {
                    "decision_id": f"{batch_id}-{i}",
                    "customer_id": customer,
                    "segment": segment,
                    "send": send,
                    "holdout": holdout,
                    "probability": round(probability, 6),
                    "offer": offer if send else "none",
                    "offer_value": float(value) if send else 0.0,
                    "products": list(products),  # a holdout's too, for audits
                    "send_at": send_at,
                    "best_hours": list(col["best_hours"][row] or []) if row is not None else [],
                    "purchase_propensity": propensity,
                    "reasons": reasons,
                    "model_versions": self.model_versions,
                    "transactional": context.transactional,
                }
            )
        return decisions
