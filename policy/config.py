"""Business rules are the user's: every threshold has a documented default here and can be
changed in a TOML file (`--config FILE` or `SENDWISE_CONFIG`), read by batch scoring, the API
and triggers alike. An unknown key or a bad value is one line naming it.

```toml
[holdouts]      # shares of eligible recipients, drawn per recipient and campaign
global = 0.02
campaign = 0.05
products = 0.05   # popular instead of personal products
sendtime = 0.05   # the fallback hour instead of the personal one
offer = 0.05      # no offer instead of the chosen one (with an offer model)
trigger = 0.10    # per trigger, unless [triggers.NAME] holdout says otherwise
[caps]          # marketing sends per recipient over rolling days
per_recipient = { 1 = 1, 7 = 3 }
[send_time]
quiet_start = 21
quiet_end = 8
fallback_hour = 10
```
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sendwise.errors import SendwiseError

from .offers import ArmCost, OfferPolicy
from .segments import SEGMENTS, SegmentRules

Share = Annotated[float, Field(ge=0, le=1)]
Hour = Annotated[int, Field(ge=0, le=23)]
Segment = Literal[SEGMENTS]
TRIGGERS = (
    "cart_abandoned",
    "browse_abandoned",
    "search_abandoned",
    "price_drop",
    "back_in_stock",
    "low_stock",
    "replenishment_due",
    "review_request",
    "welcome",
    "win_back",
)
Trigger = Literal[TRIGGERS]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class HoldoutSettings(Section):
    """Randomised control shares. Global and campaign (or trigger) holdouts get no marketing
    mail; feature holdouts (products, send time, offer: one draw, so at most one each) get
    the email with that feature at its default."""

    global_: Share = Field(0.02, alias="global")
    campaign: Share = 0.05
    products: Share = 0.05
    sendtime: Share = 0.05
    offer: Share = 0.05
    trigger: Share = 0.10

    @model_validator(mode="after")
    def features_fit_one_draw(self) -> HoldoutSettings:
        if self.products + self.sendtime + self.offer > 1:
            raise ValueError("products + sendtime + offer must not exceed 1 (one draw)")
        return self


class CapSettings(Section):
    """At most n marketing sends in d rolling days (`{d = n}`), for everyone and tightened
    by segment. A campaign counts once however often it asks; transactional mail is exempt."""

    per_recipient: dict[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=0)]] = {1: 1, 7: 3}
    per_segment: dict[Segment, dict[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=0)]]] = {
        "lapsed": {7: 1},
        "at_risk": {7: 2},
    }

    def windows(self) -> list[int]:
        """Every window (days) any cap counts over, shortest first."""
        days = {*self.per_recipient, *(d for caps in self.per_segment.values() for d in caps)}
        return sorted(days)


class SendTimeSettings(Section):
    """Local quiet hours [quiet_start, quiet_end) (may wrap midnight), the hour for
    recipients without a usable signal, and the window searched when a request names none."""

    quiet_start: Hour = 21
    quiet_end: Hour = 8
    fallback_hour: Hour = 10
    window_days: int = Field(7, ge=1, le=8)


class ProductSettings(Section):
    """List lengths, and the business rules on what is shown."""

    count: int = Field(10, ge=1, le=100)  # `products`
    cross_sell: int = Field(10, ge=1, le=100)  # `cross_sell`
    recently_bought_days: float = Field(14.0, ge=0)  # not re-offered so soon unless due
    trending_days: int = Field(30, ge=1)  # popularity window for cold start and holdouts


class SuppressionSettings(Section):
    bounce_limit: int = Field(2, ge=1)  # suppressed from this many bounces (one may be soft)


class OfferSettings(Section):
    """The value-aware policy's economics (with a champion offer model), and the segment
    rules until there is one. First contact is conservative: leads and unknown recipients
    get the broadly welcome incentive."""

    arms: list[str] | None = None  # offered to everyone; default: all the model knows
    margin: Share = 0.4
    exploration: Share = 0.10
    value_per_outcome: float = Field(1.0, ge=0)
    costs: dict[str, ArmCost] = {}  # default: read from the arm's name (10_off, free_shipping)
    max_share: dict[str, Share] = {}
    budget: float | None = Field(None, ge=0)
    welcome: str = "free_shipping"  # leads and unknown recipients, without an offer model
    lapsed: str = "10_off"
    otherwise: str = "none"

    def policy(self, campaign: str, holdout: float = 0.0) -> OfferPolicy:
        return OfferPolicy(
            margin=self.margin,
            value_per_outcome=self.value_per_outcome,
            costs=dict(self.costs),
            max_share=dict(self.max_share),
            budget=self.budget,
            exploration=self.exploration,
            holdout=holdout,
            campaign=campaign,
        )


class TriggerSettings(Section):
    holdout: Share | None = None  # default: [holdouts] trigger


class Settings(Section):
    """Every business rule, by section (`sendwise config show` prints them)."""

    segments: SegmentRules = SegmentRules()
    holdouts: HoldoutSettings = HoldoutSettings()
    caps: CapSettings = CapSettings()
    send_time: SendTimeSettings = SendTimeSettings()
    products: ProductSettings = ProductSettings()
    suppression: SuppressionSettings = SuppressionSettings()
    offers: OfferSettings = OfferSettings()
    triggers: dict[Trigger, TriggerSettings] = {}

    def trigger_holdout(self, trigger: str) -> float:
        found = self.triggers.get(trigger)
        return self.holdouts.trigger if found is None or found.holdout is None else found.holdout


def config_path(path: Path | None = None) -> Path | None:
    """The file named on the command line, else `SENDWISE_CONFIG`, else none (defaults)."""
    named = path or os.environ.get("SENDWISE_CONFIG")
    return Path(named) if named else None


def load_settings(path: Path | None = None) -> Settings:
    """The effective settings: the defaults, overridden by the configuration file if any."""
    path = config_path(path)
    if path is None:
        return Settings()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SendwiseError(f"{path}: cannot read the configuration: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SendwiseError(f"{path}: not valid TOML: {error}") from None
    try:
        return Settings.model_validate(document)
    except ValidationError as error:
        raise SendwiseError(f"{path}: {_first_problem(error)}") from None


def _first_problem(error: ValidationError) -> str:
    problem = error.errors()[0]
    parts = [str(part) for part in problem["loc"] if part != "[key]"]
    key = ".".join(parts).replace("global_", "global") or "(top level)"
    if problem["type"] == "extra_forbidden":
        return f"unknown key {key}"
    if problem["type"] == "literal_error":
        return f"{key}: unknown name ({problem['msg'].removeprefix('Input should be ')})"
    shown = problem.get("input")
    got = "" if isinstance(shown, dict) else f" (got {shown!r})"
    return f"{key}: {problem['msg'][0].lower()}{problem['msg'][1:]}{got}"


def to_toml(settings: Settings) -> str:
    """The settings as a TOML document that `load_settings` reads back to the same values."""
    lines: list[str] = []
    document = settings.model_dump(by_alias=True)
    for section, values in document.items():
        if section == "triggers":
            for name, trigger in values.items():
                lines += ["", f"[triggers.{name}]", *_assignments(trigger)]
            continue
        lines += ["", f"[{section}]", *_assignments(values)]
    return "\n".join(lines).lstrip() + "\n"


def _assignments(values: dict) -> list[str]:
    return [f"{key} = {_value(v)}" for key, v in values.items() if v is not None] + [
        f"# {key} is not set" for key, v in values.items() if v is None
    ]


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    return repr(value)


def _key(key: object) -> str:
    text = str(key)
    return text if text.replace("_", "").replace("-", "").isalnum() else _value(text)
