"""The `/decide` request and answer, as the API documents them; the rules live in
`sendwise.policy.decide`, which batch scoring and triggers call too."""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import available_timezones

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sendwise.policy.decide import Context, Name

ZONES = frozenset(available_timezones())
MAX_RECIPIENTS = 10_000

__all__ = ["MAX_RECIPIENTS", "Context", "DecideRequest", "Decision", "Recipient", "answer_json"]


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


class DecideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipients: list[Recipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    context: Context = Field(default_factory=Context)


class Decision(BaseModel):
    """One recipient's decision (DESIGN: Outputs, Decision)."""

    decision_id: str
    customer_id: str
    campaign: str
    trigger: str | None = Field(description="the trigger that prompted it; null for campaigns")
    transactional: bool
    segment: str
    send: bool
    holdout: bool
    holdout_kind: str | None = Field(
        description="global, campaign, trigger, products, sendtime or offer; null if none"
    )
    probability: float = Field(description="probability of this randomised assignment")
    offer: str
    offer_value: float = Field(description="expected incremental profit of the offer")
    offer_probability: float | None = Field(
        description="probability of this offer from the offer's own draws (holdout, "
        "exploration, the policy's choice); null where no offer model drew it"
    )
    products: list[str] = Field(description="recommended for you: repeat purchases included")
    cross_sell: list[str] = Field(description="you may also like: never bought before")
    send_at: datetime | None
    best_hours: list[int]
    purchase_propensity: float | None
    reasons: list[str]
    model_versions: str


def answer_json(batch_id: str, decisions: pl.DataFrame) -> bytes:
    """The `/decide` answer (`batch_id`, `logged`, `decisions` as `Decision`s), written by
    Polars: no Python object per field, times in ISO 8601 UTC as pydantic writes them."""
    rows = decisions.with_columns(pl.col("send_at").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    head = json.dumps({"batch_id": batch_id, "logged": True})[:-1]
    return f'{head}, "decisions": {rows.write_json()}}}'.encode()
