"""Per-recipient decisions for the API, without HTTP.

The batch engine's answers at the snapshot time (`score_batch`: segment, propensity, products,
best hours, offer) are held in memory by customer id; a request adds its context: the send
window and quiet hours (in each recipient's own time zone), the campaign whose randomised
holdouts apply, the candidate offers, and suppression of opted-out recipients. Unknown
customers get a cold-start decision, never an error.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, available_timezones

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .randomise import uniform

ZONES = frozenset(available_timezones())
MAX_RECIPIENTS = 10_000


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(min_length=1, max_length=128, examples=["c0000042"])
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

    campaign: str = Field("default", min_length=1, max_length=128)
    offers: list[str] | None = Field(None, description="candidate offers; others are not used")
    window_start: datetime | None = Field(None, description="earliest send time (UTC)")
    window_end: datetime | None = Field(None, description="latest send time (UTC)")
    quiet_start: int = Field(21, ge=0, le=23, description="local hour quiet hours begin")
    quiet_end: int = Field(8, ge=0, le=23, description="local hour quiet hours end")
    now: datetime | None = None

    @model_validator(mode="after")
    def window_in_order(self) -> Context:
        for name in ("window_start", "window_end", "now"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                setattr(self, name, value.replace(tzinfo=UTC))
        if self.window_start and self.window_end and self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        return self


class DecideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipients: list[Recipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    context: Context = Field(default_factory=Context)


def _quiet(hour: int, start: int, end: int) -> bool:
    return (hour >= start or hour < end) if start > end else start <= hour < end


def send_time(
    best_hours: list[int], zone: str, context: Context, now: datetime, fallback_hour: int
) -> datetime | None:
    """The first best local hour (else the fallback hour) inside the window and outside quiet
    hours, searched hour by hour over the window (at most eight days); None if none fits."""
    start = max(now, context.window_start or now)
    end = context.window_end or start + timedelta(days=7)
    tz = ZoneInfo(zone)
    first = start.replace(minute=0, second=0, microsecond=0)
    if first < start:
        first += timedelta(hours=1)
    hours = int(min((end - first).total_seconds() // 3600, 8 * 24)) + 1
    candidates = [first + timedelta(hours=h) for h in range(max(hours, 0))]
    allowed = [
        t
        for t in candidates
        if t <= end and not _quiet(t.astimezone(tz).hour, context.quiet_start, context.quiet_end)
    ]
    for hour in [*best_hours, fallback_hour]:
        for t in allowed:
            if t.astimezone(tz).hour == hour:
                return t
    return allowed[0] if allowed else None


class Decider:
    """Answers `DecideRequest`s from a snapshot of batch decisions (one row per customer)."""

    def __init__(
        self,
        snapshot: pl.DataFrame,
        model_versions: str,
        popular: list[str],
        timezones: dict[str, str],
        global_holdout: float = 0.02,
        campaign_holdout: float = 0.05,
        fallback_hour: int = 10,
    ):
        self.rows = {row["customer_id"]: row for row in snapshot.iter_rows(named=True)}
        self.model_versions = model_versions
        self.popular = popular
        self.timezones = timezones
        self.global_holdout = global_holdout
        self.campaign_holdout = campaign_holdout
        self.fallback_hour = fallback_hour

    def decide(self, request: DecideRequest) -> list[dict]:
        context = request.context
        now = context.now or datetime.now(UTC)
        ids = [r.customer_id for r in request.recipients]
        global_draw = uniform(ids, "global-holdout")
        campaign_draw = uniform(ids, f"{context.campaign}:campaign-holdout")
        decisions = []
        for i, recipient in enumerate(request.recipients):
            known = self.rows.get(recipient.customer_id)
            reasons = []
            zone = recipient.timezone or self.timezones.get(recipient.customer_id) or "UTC"
            if known is None:
                reasons.append("cold_start_unknown_customer")
                segment, hours, products, offer, value, propensity = (
                    "lead",
                    [],
                    self.popular,
                    "none",
                    0.0,
                    None,
                )
            else:
                segment, hours, products = known["segment"], known["best_hours"], known["products"]
                offer, value = known["offer"], known["offer_value"]
                propensity = known["purchase_propensity"]
                reasons += [r for r in known["reasons"] if not r.startswith("sendtime")]
            if context.offers is not None and offer not in context.offers:
                reasons.append(f"offer_not_candidate_{offer}")
                offer, value = "none", 0.0
            held_global = global_draw[i] < self.global_holdout
            held_campaign = campaign_draw[i] < self.campaign_holdout
            holdout = bool(held_global or held_campaign)
            probability = (
                self.global_holdout
                if held_global
                else (1 - self.global_holdout)
                * (self.campaign_holdout if held_campaign else 1 - self.campaign_holdout)
            )
            send_at = send_time(hours or [], zone, context, now, self.fallback_hour)
            reasons.append("sendtime_personal" if hours else "sendtime_fallback")
            send = not (holdout or recipient.opted_out or send_at is None)
            if held_global:
                reasons.append("holdout_global")
            elif held_campaign:
                reasons.append("holdout_campaign")
            if recipient.opted_out:
                reasons.append("suppressed_opt_out")
            if send_at is None:
                reasons.append("no_time_in_window")
            decisions.append(
                {
                    "decision_id": f"{recipient.customer_id}:{context.campaign}:{now.isoformat()}",
                    "customer_id": recipient.customer_id,
                    "segment": segment,
                    "send": send,
                    "holdout": holdout,
                    "probability": float(np.round(probability, 6)),
                    "offer": offer if send else "none",
                    "offer_value": float(value) if send else 0.0,
                    "products": list(products or []),
                    "send_at": send_at.isoformat() if send_at and send else None,
                    "best_hours": list(hours or []),
                    "purchase_propensity": propensity,
                    "reasons": reasons,
                    "model_versions": self.model_versions,
                }
            )
        return decisions
