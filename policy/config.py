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
from datetime import datetime, timedelta
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

    def since(self, now: datetime) -> datetime | None:
        """How far back the caps look from `now` (the longest window); None: no caps."""
        windows = self.windows()
        return now - timedelta(days=windows[-1]) if windows else None


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
    proof: Share = 0.95  # confidence held-out evidence must give an offer model's targeting
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
            proof=self.proof,
            holdout=holdout,
            campaign=campaign,
        )


class TriggerSettings(Section):
    """One trigger's rules (DESIGN: Events and triggers). Hours are of the event clock; a
    threshold a trigger does not read is left unset."""

    enabled: bool = True
    holdout: Share | None = None  # default: [holdouts] trigger
    wait_hours: float = Field(0.0, ge=0)  # from the (last) entry signal to the firing
    cooldown_hours: float = Field(24.0, ge=0)  # before the same customer and subject again
    lookback_hours: float | None = Field(None, gt=0)  # how far back entry signals count
    min_signals: int | None = Field(None, ge=1)  # browse: views of one product; search
    min_category_views: int | None = Field(None, ge=1)  # browse by category
    drop_share: Share | None = None  # price drop: this far below the price seen
    below: int | None = Field(None, ge=1)  # low stock: stock under this
    min_orders: int | None = Field(None, ge=1)  # win-back: customers with this many orders


DAY, LONG_AGO = 24.0, 100 * 365 * 24.0  # a welcome is sent once
DEFAULT_TRIGGERS = {
    "cart_abandoned": TriggerSettings(wait_hours=1, cooldown_hours=DAY),
    "browse_abandoned": TriggerSettings(
        wait_hours=2,
        cooldown_hours=3 * DAY,
        lookback_hours=DAY,
        min_signals=2,
        min_category_views=3,
    ),
    "search_abandoned": TriggerSettings(
        wait_hours=2, cooldown_hours=3 * DAY, lookback_hours=DAY, min_signals=2
    ),
    "price_drop": TriggerSettings(cooldown_hours=7 * DAY, lookback_hours=30 * DAY, drop_share=0.1),
    "back_in_stock": TriggerSettings(cooldown_hours=7 * DAY, lookback_hours=30 * DAY),
    "low_stock": TriggerSettings(cooldown_hours=7 * DAY, below=5),
    "replenishment_due": TriggerSettings(cooldown_hours=7 * DAY),
    "review_request": TriggerSettings(wait_hours=7 * DAY, cooldown_hours=30 * DAY),
    "welcome": TriggerSettings(cooldown_hours=LONG_AGO),
    "win_back": TriggerSettings(wait_hours=90 * DAY, cooldown_hours=90 * DAY, min_orders=2),
}
PRIORITY = (  # who wins when two are due for one customer; welcome is never blocked
    "cart_abandoned",
    "browse_abandoned",
    "price_drop",
    "back_in_stock",
    "low_stock",
    "search_abandoned",
    "replenishment_due",
    "review_request",
    "win_back",
    "welcome",
)


class TriggersSettings(Section):
    """Rules across triggers, then `[triggers.NAME]` for each (defaults: `DEFAULT_TRIGGERS`;
    a section names only what it changes)."""

    gap_hours: float = Field(16.0, ge=0)  # at most one triggered email per customer this often
    min_signals: int = Field(2, ge=1)  # behaviour in the last 30 days before retargeting
    priority: list[Trigger] = list(PRIORITY)
    cart_abandoned: TriggerSettings = DEFAULT_TRIGGERS["cart_abandoned"]
    browse_abandoned: TriggerSettings = DEFAULT_TRIGGERS["browse_abandoned"]
    search_abandoned: TriggerSettings = DEFAULT_TRIGGERS["search_abandoned"]
    price_drop: TriggerSettings = DEFAULT_TRIGGERS["price_drop"]
    back_in_stock: TriggerSettings = DEFAULT_TRIGGERS["back_in_stock"]
    low_stock: TriggerSettings = DEFAULT_TRIGGERS["low_stock"]
    replenishment_due: TriggerSettings = DEFAULT_TRIGGERS["replenishment_due"]
    review_request: TriggerSettings = DEFAULT_TRIGGERS["review_request"]
    welcome: TriggerSettings = DEFAULT_TRIGGERS["welcome"]
    win_back: TriggerSettings = DEFAULT_TRIGGERS["win_back"]

    @model_validator(mode="before")
    @classmethod
    def over_the_defaults(cls, document: object) -> object:
        """A `[triggers.NAME]` section changes only the keys it names."""
        if not isinstance(document, dict):
            return document
        merged = dict(document)
        for name, default in DEFAULT_TRIGGERS.items():
            given = document.get(name)
            if isinstance(given, dict):
                merged[name] = {**default.model_dump(exclude_none=True), **given}
        return merged

    def of(self, trigger: str) -> TriggerSettings:
        return getattr(self, trigger)


class Settings(Section):
    """Every business rule, by section (`sendwise config show` prints them)."""

    segments: SegmentRules = SegmentRules()
    holdouts: HoldoutSettings = HoldoutSettings()
    caps: CapSettings = CapSettings()
    send_time: SendTimeSettings = SendTimeSettings()
    products: ProductSettings = ProductSettings()
    suppression: SuppressionSettings = SuppressionSettings()
    offers: OfferSettings = OfferSettings()
    triggers: TriggersSettings = TriggersSettings()

    def trigger_holdout(self, trigger: str) -> float:
        found = self.triggers.of(trigger).holdout if trigger in TRIGGERS else None
        return self.holdouts.trigger if found is None else found


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
            common = {k: v for k, v in values.items() if k not in TRIGGERS}
            lines += ["", "[triggers]", *_assignments(common)]
            for name in TRIGGERS:
                read = {k: v for k, v in values[name].items() if v is not None or k == "holdout"}
                lines += ["", f"[triggers.{name}]", *_assignments(read)]
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
