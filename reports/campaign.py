"""The campaign report: what the logged decisions earned, against their randomised holdouts.

`summarise_campaign` takes `reports.outcomes.outcomes(...)` (each decision with what its
recipient did after it) and computes every figure as plain numbers; `render_campaign` lays them
out as one self-contained HTML page (inline SVG, no scripts, nothing fetched); `to_json` gives
DESIGN's keys.

Who is compared with whom (every comparison is between groups one random draw separated):
- **Randomised recipients** are those the holdout draw applied to: not transactional, not
  suppressed (opt-out, unsubscribed, bounced), not a repeat within a batch.
- **Mailed vs global / campaign / trigger holdout** is intent to treat: every randomised
  recipient drawn into none of those holdouts against the holdout, whether or not a frequency
  cap or an empty send window later stopped the mail (caps run after the draw and holdouts are
  never capped, so comparing only the mailed would compare unlike groups). The campaign
  holdout is compared on campaign decisions, each trigger's holdout on that trigger's.
- **Personal vs popular products**, **personal vs fallback send hour** and **offers vs the
  offer holdout**: among recipients actually sent to (caps and windows do not depend on these
  draws), those who could have fallen in that feature holdout (a personal product list, a
  personal hour, a model-chosen offer) and fell in no holdout, against those in it,
  **post-stratified** by which feature bands applied (`feature_bands`). The three feature
  holdouts share one draw whose bands apply only where the feature does, so the chance of
  falling in none of them is 1 minus the sum of the bands that applied: a recipient with no
  personal products is more likely to be in no holdout, and a plain treated-vs-control
  difference would compare unlike groups (on a 50,000-customer simulated shop it found a
  significant -1.32 points for the personal hour whose like-with-like effect was +0.55).
  Within a stratum (the same bands applied) the draw is a fair coin, so the report takes the
  difference within each stratum and averages them with the stratum's share of the compared
  rows: effect = sum_s (n_s / n) (treated_s - control_s), the variance sum_s (n_s / n)^2
  (Var treated_s + Var control_s). A stratum with fewer than two rows on a side is left out
  (the shares renormed; its rows still count in `n_treated`/`n_control`). The bands are read
  from the log alone: personal products where the row was in the products holdout or has
  reason `personal_products`; a personal hour where `best_hours` is not empty; the offer band
  where the customer was known (no `cold_start_unknown_customer`) and an offer model was
  champion (`offer:` in `model_versions`, or a model's offer reason: `uplift_ARM`,
  `offer_explore`, `offer_holdout`). (Weighting each row by 1 / its logged `probability`
  would remove the same bias, but it weights strata by the whole population rather than by
  the rows compared, and multiplies in the offer policy's own probabilities.)
- **Each offer arm vs `none`**: among recipients sent a model-chosen offer outside every
  holdout, a Hajek (self-normalised) inverse-propensity estimate of each arm's mean, weighted by
  1 / the logged `probability` (the whole assignment's, so the feature draw's band factor,
  which differs by stratum, is weighted out as well), with a sandwich (linearised) variance:
  Var(mean) = n/(n-1) * sum w^2 (y - mean)^2 / (sum w)^2 per arm, the two arms' rows disjoint.
  With w = 1 that is exactly the Welch variance the plain differences in means use.

Intervals (`reports.common`): money (revenue per recipient) is the difference +- 1.96 standard
errors from the variances above. Rates (conversion, opens, clicks, unsubscribes) use
Newcombe's hybrid score interval: each group's Wilson interval, recombined by MOVER, which for
a post-stratified difference takes a pair of Wilson intervals per stratum, and for a weighted
arm takes its effective size (the n at which a plain sample's variance p(1-p)/n equals the
sandwich's, without its n/(n-1); Kish's (sum w)^2 / sum w^2 where the rate is 0 or 1; at most
n). A normal interval collapses to a point for a group with no unsubscribes; these do not.

Metrics per recipient: conversion (any order), revenue per recipient, open rate (any human
open), click rate, unsubscribe rate; each overall and per segment. The KPIs of mailed
recipients are flagged against the usual e-commerce ranges (`USUAL`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import polars as pl

from .common import Z, head, interval_plot, key, rate_difference_interval, svg, table
from .common import figure as number

# metric -> (outcome column, label)
METRICS = {
    "conversion": ("converted", "conversion"),
    "revenue_per_recipient": ("revenue", "revenue per recipient"),
    "open_rate": ("opened", "open rate"),
    "click_rate": ("clicked", "click rate"),
    "unsubscribe_rate": ("unsubscribed", "unsubscribe rate"),
}
MONEY = "revenue_per_recipient"
USUAL = {  # the ranges marketers expect of e-commerce email (low, high)
    "open_rate": (0.20, 0.30),
    "click_rate": (0.02, 0.05),
    "conversion": (0.01, 0.03),
    "unsubscribe_rate": (0.0, 0.01),
}
GROUP_HOLDOUTS = ("global", "campaign", "trigger")
CONTROL_OFFER = "none"
JSON_KEYS = (
    "name",
    "treated",
    "control",
    "metric",
    "effect",
    "ci_low",
    "ci_high",
    "n_treated",
    "n_control",
)
DIFFERENCE = "difference in means; 95% CI: Newcombe (Wilson score) for rates, Welch for money"
STRATIFIED = (
    "difference in means post-stratified by the feature holdouts that applied; 95% CI: "
    "Newcombe-MOVER (Wilson score) for rates, normal for money"
)
IPW = (
    "Hajek inverse-propensity weighting (logged probability); 95% CI: Newcombe-MOVER (Wilson "
    "score at the effective size) for rates, sandwich for money"
)


# --- who is compared: expressions over the outcomes frame ------------------------------------


def _has_reason(prefix: str) -> pl.Expr:
    return pl.col("reasons").list.eval(pl.element().str.starts_with(prefix)).list.any()


def _kind(name: str) -> pl.Expr:
    return (pl.col("holdout_kind") == name).fill_null(False)


def randomised(transactional: bool) -> pl.Expr:
    """Recipients the holdout draw applied to."""
    kept = ~_has_reason("suppressed_") & ~pl.col("reasons").list.contains("duplicate_in_batch")
    return kept & ~pl.col("transactional").fill_null(False) if transactional else kept


def assigned_to_mail() -> pl.Expr:
    """Drawn into none of the holdouts that withhold the mail."""
    return ~pl.col("holdout_kind").is_in(GROUP_HOLDOUTS).fill_null(False)


def model_offer() -> pl.Expr:
    """The offer came from the offer model (exploration included), so it has a probability."""
    return (_has_reason("uplift_") | pl.col("reasons").list.contains("offer_explore")) & ~(
        _has_reason("offer_not_candidate_")
    )


def feature_bands() -> pl.Expr:
    """Which bands of the one feature-holdout draw applied to the row, as a stratum code:
    1 personal products, + 2 personal hours, + 4 the offer model's choice."""
    products = _kind("products") | pl.col("reasons").list.contains("personal_products")
    hours = (pl.col("best_hours").list.len() > 0).fill_null(False)
    champion = pl.col("model_versions").str.contains(r"(^|,)\s*offer:").fill_null(False)
    chosen = _has_reason("uplift_") | pl.col("reasons").list.contains("offer_explore")
    offer = ~pl.col("reasons").list.contains("cold_start_unknown_customer") & (
        champion | chosen | pl.col("reasons").list.contains("offer_holdout")
    )
    return products.cast(pl.Int8) + 2 * hours.cast(pl.Int8) + 4 * offer.cast(pl.Int8)


@dataclass(frozen=True)
class Design:
    """One randomised comparison: which rows, which of them are treated, their weights, and
    the strata within which the draw was fair (None: one stratum)."""

    name: str
    treated: str
    control: str
    rows: pl.Expr
    is_treated: pl.Expr
    weight: pl.Expr
    method: str
    stratum: pl.Expr | None = None


def designs(frame: pl.DataFrame) -> list[Design]:
    """Every comparison the log allows, in the order the report shows them."""
    base = randomised("transactional" in frame.columns)
    kinds = set(frame["holdout_kind"].drop_nulls().to_list())
    mail, sent, none = assigned_to_mail(), pl.col("send"), pl.col("holdout_kind").is_null()
    one = pl.lit(1.0)
    found = []
    if "global" in kinds:
        found.append(
            Design("mailed vs global holdout", "mailed", "global holdout",
                   base & (mail | _kind("global")), mail, one, DIFFERENCE)
        )  # fmt: skip
    campaign = pl.col("trigger").is_null()
    if frame.filter(_kind("campaign") & campaign).height:
        found.append(
            Design("mailed vs campaign holdout", "mailed", "campaign holdout",
                   base & campaign & (mail | _kind("campaign")), mail, one, DIFFERENCE)
        )  # fmt: skip
    triggers = frame.filter(_kind("trigger"))["trigger"].drop_nulls().unique().sort()
    for trigger in triggers:
        this = pl.col("trigger") == trigger
        found.append(
            Design(f"mailed vs trigger holdout ({trigger})", "mailed", f"{trigger} holdout",
                   base & this & (mail | _kind("trigger")), mail, one, DIFFERENCE)
        )  # fmt: skip
    features = [
        ("products", "personal vs popular products", "personal products", "popular products",
         pl.col("reasons").list.contains("personal_products")),
        ("sendtime", "personal vs fallback send hour", "personal hour", "fallback hour",
         pl.col("best_hours").list.len() > 0),
        ("offer", "offers vs offer holdout", "model's offers", "no offer (holdout)",
         model_offer()),
    ]  # fmt: skip
    for kind, name, treated, control, eligible in features:
        if kind in kinds:
            rows = base & sent & ((none & eligible) | _kind(kind))
            found.append(
                Design(name, treated, control, rows, none, one, STRATIFIED, feature_bands())
            )
    offered = base & sent & none & model_offer() & (pl.col("probability") > 0)
    arms = frame.filter(offered)["offer"].unique().sort().to_list()
    if CONTROL_OFFER in arms:
        for arm in (a for a in arms if a != CONTROL_OFFER):
            rows = offered & pl.col("offer").is_in([arm, CONTROL_OFFER])
            found.append(
                Design(f"offer {arm} vs {CONTROL_OFFER}", arm, CONTROL_OFFER, rows,
                       pl.col("offer") == arm, 1.0 / pl.col("probability"), IPW)
            )  # fmt: skip
    return found


# --- the figures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """One metric of one comparison (overall, or within `segment`)."""

    name: str
    treated: str
    control: str
    metric: str
    effect: float
    ci_low: float
    ci_high: float
    n_treated: int
    n_control: int
    treated_value: float
    control_value: float
    method: str
    segment: str | None = None

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def to_json(self) -> dict:
        found = {k: getattr(self, k) for k in JSON_KEYS}
        return found if self.segment is None else {**found, "segment": self.segment}


@dataclass(frozen=True)
class Kpi:
    """A mailed-recipient KPI of one segment (`all` for everyone) against its usual range."""

    segment: str
    recipients: int
    metric: str
    value: float
    flag: str  # "", "low" or "high"


@dataclass
class CampaignSummary:
    title: str
    campaign: str | None
    days: int
    decisions: int
    recipients: int  # distinct customers
    mailed: int
    incomplete: int  # decisions whose window reaches past the shop's data
    comparisons: list[Comparison]
    by_segment: list[Comparison]
    kpis: list[Kpi]
    cumulative: dict[str, list[float]]  # group -> share converted by day 0..days
    generated_at: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds")
    )

    def comparison(self, name: str, metric: str, segment: str | None = None) -> Comparison:
        rows = self.comparisons if segment is None else self.by_segment
        return next(c for c in rows if (c.name, c.metric, c.segment) == (name, metric, segment))

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(c.name for c in self.comparisons))

    def headline(self) -> str:
        """The plain-words summary a marketer can act on."""
        if not self.comparisons:
            return (
                f"{self.decisions:,} decisions, {self.mailed:,} mailed, and no randomised holdout "
                "among them: nothing to measure what the mail earned against."
            )
        primary = next((n for n in self.names if n.startswith("mailed vs")), self.names[0])
        conv, money = (self.comparison(primary, m) for m in ("conversion", MONEY))
        words = [
            f"{conv.treated.capitalize()} ({conv.n_treated:,}) against the {conv.control} "
            f"({conv.n_control:,}) over {self.days} days: conversion "
            f"{_percent(conv.treated_value)} vs {_percent(conv.control_value)}, "
            f"{_points(conv.effect)} (95% CI {_points(conv.ci_low)} to {_points(conv.ci_high)}), "
            f"{_verdict(conv)}; revenue per recipient {money.treated_value:,.2f} vs "
            f"{money.control_value:,.2f}, {money.effect:+,.2f} (95% CI {money.ci_low:+,.2f} to "
            f"{money.ci_high:+,.2f}), {_verdict(money)}."
        ]
        others = [self.comparison(n, "conversion") for n in self.names if n != primary]
        real = [c for c in others if c.significant]
        if real:
            words.append(
                "Also significant: "
                + "; ".join(f"{c.name} {_points(c.effect)} conversion" for c in real)
                + "."
            )
        if len(real) < len(others):
            words.append(
                "Not significant on conversion (could be chance): "
                + ", ".join(c.name for c in others if not c.significant)
                + "."
            )
        flagged = [k for k in self.kpis if k.segment == "all" and k.flag]
        if flagged:
            words.append(
                "Outside the usual range for mailed recipients: "
                + ", ".join(
                    f"{METRICS[k.metric][1]} {_percent(k.value)} ({k.flag}; usual "
                    f"{_usual(k.metric)})"
                    for k in flagged
                )
                + "."
            )
        if self.incomplete:
            words.append(
                f"{self.incomplete:,} decisions' {self.days}-day windows are not over yet: "
                "their outcomes may still grow."
            )
        return " ".join(words)

    def to_json(self) -> dict:
        return {
            "title": self.title,
            "campaign": self.campaign,
            "days": self.days,
            "decisions": self.decisions,
            "recipients": self.recipients,
            "mailed": self.mailed,
            "incomplete": self.incomplete,
            "headline": self.headline(),
            "comparisons": [c.to_json() for c in self.comparisons],
            "by_segment": [c.to_json() for c in self.by_segment],
            "methods": {c.name: c.method for c in self.comparisons},
            "kpis": [
                {
                    "segment": k.segment,
                    "recipients": k.recipients,
                    "metric": k.metric,
                    "value": k.value,
                    "flag": k.flag or None,
                }
                for k in self.kpis
            ],  # fmt: skip
            "cumulative_conversion": self.cumulative,
            "generated_at": self.generated_at,
        }


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def _points(value: float) -> str:
    return f"{100 * value:+.2f} points"


def _usual(metric: str) -> str:
    low, high = USUAL[metric]
    return f"under {100 * high:.0f}%" if low == 0 else f"{100 * low:.0f}-{100 * high:.0f}%"


def _verdict(c: Comparison) -> str:
    if c.ci_low > 0:
        return "a real gain"
    if c.ci_high < 0:
        return "a real loss"
    return "not significant (the difference could be chance)"


def _sums(frame: pl.LazyFrame, by: list[str]) -> pl.DataFrame:
    """Per group and arm (`_t`): what a weighted mean and its sandwich variance need."""
    w = pl.col("_w")
    sums = [pl.len().alias("n"), w.sum().alias("sw"), (w * w).sum().alias("sw2")]
    for metric, (column, _) in METRICS.items():
        y = pl.col(column).cast(pl.Float64)
        sums += [
            (w * y).sum().alias(f"{metric}:wy"),
            (w * w * y).sum().alias(f"{metric}:w2y"),
            (w * w * y * y).sum().alias(f"{metric}:w2y2"),
        ]
    return frame.group_by(*by, "_t").agg(sums).collect()


def _cell(row: dict, metric: str) -> tuple[float, float, float]:
    """One arm of one stratum: its Hajek mean, the mean's sandwich variance (Welch's when
    every weight is 1) and its effective size for a Wilson interval (see the module notes)."""
    n, sw, sw2 = row["n"], row["sw"], row["sw2"]
    mean = row[f"{metric}:wy"] / sw
    squares = max(row[f"{metric}:w2y2"] - 2 * mean * row[f"{metric}:w2y"] + mean * mean * sw2, 0.0)
    size = float(n)
    if not sw == sw2 == n:  # weighted
        plain = squares / sw**2
        size = min(n, mean * (1 - mean) / plain) if plain > 0 and 0 < mean < 1 else sw**2 / sw2
    return mean, squares * n / (n - 1) / sw**2, size


def _compare(design: Design, strata: dict, segment: str | None) -> list[Comparison]:
    """Every metric of the design from its strata's sums ({stratum: {treated?: sums}})."""
    usable = [arms for arms in strata.values() if min(_n(arms, True), _n(arms, False)) >= 2]
    if not usable:
        return []
    sizes = np.array([_n(arms, True) + _n(arms, False) for arms in usable], float)
    share = sizes / sizes.sum()
    n_treated = sum(_n(arms, True) for arms in strata.values())
    n_control = sum(_n(arms, False) for arms in strata.values())
    found = []
    for metric in METRICS:
        # per stratum: (mean, variance, size) of the treated, then of the control
        t, c = (np.array([_cell(arms[side], metric) for arms in usable]) for side in (True, False))
        a, b = float(share @ t[:, 0]), float(share @ c[:, 0])
        if metric == MONEY:
            se = float(np.sqrt(share**2 @ (t[:, 1] + c[:, 1])))
            low, high = a - b - Z * se, a - b + Z * se
        else:
            _, low, high = rate_difference_interval(
                np.concatenate([share, -share]),
                np.concatenate([t[:, 0], c[:, 0]]),
                np.concatenate([t[:, 2], c[:, 2]]),
            )
        found.append(
            Comparison(design.name, design.treated, design.control, metric, a - b, low, high,
                       n_treated, n_control, a, b, design.method, segment)
        )  # fmt: skip
    return found


def _n(arms: dict, side: bool) -> int:
    return arms.get(side, {}).get("n", 0)


def estimate(frame: pl.DataFrame, design: Design) -> tuple[list[Comparison], list[Comparison]]:
    """The design's comparisons overall and per segment (where a stratum has two rows per
    arm)."""
    stratum = pl.lit(0, pl.Int8) if design.stratum is None else design.stratum
    rows = (
        frame.lazy()
        .filter(design.rows)
        .with_columns(_t=design.is_treated, _w=design.weight.cast(pl.Float64), _s=stratum)
    )
    overall, by_segment = [], []
    for by, into in (([], overall), (["segment"], by_segment)):
        groups = {}
        for row in _sums(rows, [*by, "_s"]).iter_rows(named=True):
            groups.setdefault(row.get("segment"), {}).setdefault(row["_s"], {})[row["_t"]] = row
        for segment in sorted(groups, key=str):
            into.extend(_compare(design, groups[segment], segment))
    return overall, by_segment


def kpis(frame: pl.DataFrame) -> list[Kpi]:
    """Mailed recipients' KPIs, everyone (`all`) first, then per segment."""
    mailed = frame.lazy().filter(pl.col("send"))
    means = [pl.col(column).cast(pl.Float64).mean().alias(m) for m, (column, _) in METRICS.items()]
    every = mailed.select(pl.lit("all").alias("segment"), pl.len().alias("n"), *means)
    each = mailed.group_by("segment").agg(pl.len().alias("n"), *means).sort("segment")
    found = []
    for row in (
        pl.concat([every, each.select(every.collect_schema().names())]).collect().rows(named=True)
    ):
        if not row["n"]:
            continue
        for metric in METRICS:
            found.append(
                Kpi(row["segment"], row["n"], metric, row[metric], flag(metric, row[metric]))
            )
    return found


def flag(metric: str, value: float) -> str:
    """`low` or `high` against the usual range (unsubscribes: `high` from 1%), else ""."""
    if metric not in USUAL:
        return ""
    low, high = USUAL[metric]
    if value < low:
        return "low"
    if value > high or (low == 0 and value >= high):
        return "high"
    return ""


def cumulative_conversion(frame: pl.DataFrame, days: int) -> dict[str, list[float]]:
    """Share of each group (mailed and each withholding holdout) converted by day 0..days."""
    base = randomised("transactional" in frame.columns)
    groups = {"mailed": base & assigned_to_mail()}
    for kind in GROUP_HOLDOUTS:
        groups[f"{kind} holdout"] = base & _kind(kind)
    found = {}
    for name, rows in groups.items():
        waited = frame.filter(rows)["days_to_order"].fill_null(np.inf).to_numpy()
        if len(waited):
            edges = np.arange(days + 1)
            found[name] = (
                np.searchsorted(np.sort(waited), edges, side="right") / len(waited)
            ).tolist()
    return found


def summarise_campaign(
    attributed: pl.DataFrame, days: int, campaign: str | None = None, title: str | None = None
) -> CampaignSummary:
    """Every figure of the report, from `outcomes(decisions, shop, days)`."""
    frame = attributed if campaign is None else attributed.filter(pl.col("campaign") == campaign)
    comparisons, by_segment = [], []
    for design in designs(frame):
        overall, segments = estimate(frame, design)
        comparisons += overall
        by_segment += segments
    return CampaignSummary(
        title=title or f"Campaign report: {campaign or 'every logged decision'}",
        campaign=campaign,
        days=days,
        decisions=frame.height,
        recipients=frame["customer_id"].n_unique(),
        mailed=int(frame["send"].sum()),
        incomplete=int((~frame["complete"]).sum()),
        comparisons=comparisons,
        by_segment=by_segment,
        kpis=kpis(frame),
        cumulative=cumulative_conversion(frame, days),
    )


# --- rendering ------------------------------------------------------------------------------


def _value(metric: str, value: float) -> str:
    return f"{value:,.2f}" if metric == MONEY else _percent(value)


def _fmt(metric: str) -> str:
    return ",.2f" if metric == MONEY else ".4f"


def _comparisons_table(rows: list[Comparison], with_segment: bool) -> str:
    body = []
    for c in rows:
        k = f"{key(c.name)}_{c.metric}" + (f"_{key(c.segment)}" if with_segment else "")
        unit = "" if c.metric == MONEY else " (share)"
        n_treated = number(f"n_treated_{k}", c.n_treated, ",")
        n_control = number(f"n_control_{k}", c.n_control, ",")
        body.append(
            [
                html.escape(c.name),
                *([html.escape(c.segment or "")] if with_segment else []),
                html.escape(METRICS[c.metric][1]) + unit,
                f"{_value(c.metric, c.treated_value)} ({n_treated})",
                f"{_value(c.metric, c.control_value)} ({n_control})",
                number(f"effect_{k}", c.effect, _fmt(c.metric)),
                f"{number(f'ci_low_{k}', c.ci_low, _fmt(c.metric))} to "
                f"{number(f'ci_high_{k}', c.ci_high, _fmt(c.metric))}",
                "yes" if c.significant else "no",
            ]
        )  # fmt: skip
    headers = ["comparison", *(["segment"] if with_segment else []), "metric",
               "treated (n)", "control (n)", "effect", "95% CI", "significant"]  # fmt: skip
    return table(headers, body)


def _plot(rows: list[Comparison], label, xlabel: str) -> str:
    return interval_plot(
        [label(c) for c in rows],
        [c.effect for c in rows],
        [c.ci_low for c in rows],
        [c.ci_high for c in rows],
        xlabel,
    )


def _cumulative_plot(summary: CampaignSummary) -> str:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.2))
    for name, shares in summary.cumulative.items():
        axis.step(range(len(shares)), [100 * s for s in shares], where="post", label=name)
    axis.set(xlabel="days after sending (would-be sending for holdouts)",
             ylabel="converted (%)")  # fmt: skip
    axis.legend(fontsize=8)
    return svg(figure)


def render_campaign(summary: CampaignSummary) -> str:
    """The whole page: no scripts, no external resources."""
    s = summary
    parts = [
        head(s.title),
        f"<h1>{html.escape(s.title)}</h1>",
        f"<p class='muted'>{s.decisions:,} decisions for {s.recipients:,} customers, "
        f"{s.mailed:,} mailed; outcomes over the {s.days} days after each send (for holdouts, "
        f"the would-be send); generated {s.generated_at} by sendwise.</p>",
        f"<p class='summary' data-key='headline'>{html.escape(s.headline())}</p>",
    ]
    if s.comparisons:
        parts += [
            "<h2>Randomised comparisons</h2>",
            "<p class='muted'>Effect = treated minus control, per recipient. Holdouts: "
            f"{DIFFERENCE}; feature holdouts: {STRATIFIED}; offer arms: {IPW}.</p>",
            _comparisons_table(s.comparisons, with_segment=False),
        ]
        for metric in ("conversion", MONEY):
            rows = [c for c in s.comparisons if c.metric == metric]
            unit = "conversion (share)" if metric == "conversion" else "revenue per recipient"
            parts.append(_plot(rows, lambda c: c.name, f"effect on {unit} (95% CI)"))
    segments = [c for c in s.by_segment if c.metric == "conversion"]
    if segments:
        parts += [
            "<h2>By segment</h2>",
            _plot(
                segments,
                lambda c: f"{c.name} · {c.segment}",
                "effect on conversion by segment (95% CI)",
            ),  # fmt: skip
            _comparisons_table(
                [c for c in s.by_segment if c.metric in ("conversion", MONEY)], with_segment=True
            ),  # fmt: skip
        ]
    if s.kpis:
        body = []
        for segment in dict.fromkeys(k.segment for k in s.kpis):
            row = [k for k in s.kpis if k.segment == segment]
            cells = [html.escape(segment), f"{row[0].recipients:,}"]
            for k in row:
                text = number(f"kpi_{key(segment)}_{k.metric}", k.value, _fmt(k.metric))
                if k.flag:
                    text += f" <span class='flag'>{k.flag}</span>"
                cells.append(text)
            body.append(cells)
        headers = ["segment", "mailed"] + [
            METRICS[m][1] + (f" (usual {_usual(m)})" if m in USUAL else "") for m in METRICS
        ]
        parts += [
            "<h2>KPIs of mailed recipients</h2>",
            "<p class='muted'>Rates are shares of recipients (0.2500 = 25%); human opens only. "
            "Flagged where outside the usual e-commerce range.</p>",
            table(headers, body),
        ]
    if s.cumulative:
        marks = sorted({int(d) for d in np.linspace(1, s.days, min(s.days, 7)).round()})
        body = [
            [html.escape(name)]
            + [number(f"cumulative_{key(name)}_day{d}", shares[d], ".4f") for d in marks]
            for name, shares in s.cumulative.items()
        ]
        parts += [
            "<h2>Cumulative conversions over the days after sending</h2>",
            _cumulative_plot(s),
            table(["group", *(f"day {d}" for d in marks)], body),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)
