"""The uplift report: one self-contained HTML page a marketer can open offline and forward.

`summarise` computes every figure (plain numbers, testable without a browser); `render` lays
them out with inline SVG plots. Predicted uplift is cross-fitted (each half of the customers
is scored by a model trained on the other half), so the report never judges a model on the
rows it learned from. Policy values are inverse-propensity estimates on randomised data.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import polars as pl

from sendwise.features.experiment import Experiment
from sendwise.models.metrics import policy_value, qini_auc, qini_curve
from sendwise.models.uplift import UpliftModel

from .common import Z, head, interval_plot, welch
from .common import figure as _figure
from .common import key as _key
from .common import svg as _svg
from .common import table as _table


@dataclass(frozen=True)
class Effect:
    """An arm's average effect on one outcome against control, per customer, with its CI."""

    arm: str
    outcome: str
    customers: int
    treated_mean: float
    control_mean: float
    effect: float
    low: float
    high: float

    @property
    def incremental(self) -> float:
        """Extra outcomes (conversions, money) the arm caused among its own customers."""
        return self.effect * self.customers


def effect(y: np.ndarray, treated: np.ndarray, arm: str, outcome: str) -> Effect:
    """Difference in means with a Welch (unpooled) standard error."""
    a, b = y[treated], y[~treated]
    diff, se = welch(a, b)
    return Effect(
        arm, outcome, len(a), float(a.mean()), float(b.mean()), diff, diff - Z * se, diff + Z * se
    )


@dataclass(frozen=True)
class PolicyValue:
    name: str
    value: float  # per customer, in the outcome's unit
    low: float
    high: float


@dataclass
class UpliftSummary:
    title: str
    source: str
    customers: int
    control: str
    outcome: str
    revenue: str | None
    effects: list[Effect]  # every arm x (outcome, revenue)
    by_segment: pl.DataFrame  # segment, arm, customers, effect, low, high
    by_decile: pl.DataFrame  # arm, decile (1 = highest predicted), predicted, observed
    qini: dict[str, tuple[np.ndarray, np.ndarray]]  # arm -> curve
    qini_auc: dict[str, float]
    policies: dict[str, list[PolicyValue]]  # outcome -> targeting, best single arm, no one
    generated_at: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds")
    )

    def effect_of(self, arm: str, outcome: str) -> Effect:
        return next(e for e in self.effects if e.arm == arm and e.outcome == outcome)

    @property
    def arms(self) -> list[str]:
        return list(dict.fromkeys(e.arm for e in self.effects))

    def headline(self) -> str:
        """The plain-words summary a marketer can forward."""
        best = max(self.arms, key=lambda a: self.effect_of(a, self.outcome).effect)
        e = self.effect_of(best, self.outcome)
        sure = "a real lift" if e.low > 0 else "not yet distinguishable from no effect"
        words = [
            f"Of {len(self.arms)} offers tested against '{self.control}' on {self.customers:,} "
            f"customers, '{best}' worked best: {self.outcome} rose by {100 * e.effect:.2f} "
            f"points ({100 * e.control_mean:.2f}% to {100 * e.treated_mean:.2f}%, 95% CI "
            f"{100 * e.low:.2f} to {100 * e.high:.2f}), {sure}; about {e.incremental:,.0f} extra "
            f"{self.outcome} events among its {e.customers:,} customers."
        ]
        if self.revenue:
            r = self.effect_of(best, self.revenue)
            words.append(
                f"It brought {r.effect:+.2f} {self.revenue} per customer (95% CI {r.low:+.2f} to "
                f"{r.high:+.2f}), {r.incremental:+,.0f} in all."
            )
        unit = self.revenue or self.outcome
        values = {p.name: p for p in self.policies.get(unit, [])}
        if values:
            words.append(self._targeting(values, unit))
        return " ".join(words)

    def _targeting(self, values: dict[str, PolicyValue], unit: str) -> str:
        """Whether targeting by the model beats the best single offer, said as strongly as
        the evidence allows: a gain only where the intervals part and the model ranks
        customers better than chance (a positive Qini AUC); money to the cent."""

        def number(v: float) -> str:
            return f"{v:,.2f}" if self.revenue else f"{100 * v:.2f}%"

        def amount(v: float) -> str:
            return f"{number(v)} {unit}"

        target, single = values["model targeting"], values["best single arm"]
        spans = {
            name: f"{amount(v.value)} per customer, 95% CI {number(v.low)} to {number(v.high)}"
            for name, v in values.items()
        }
        ranks = max(self.qini_auc.values(), default=0.0) > 0
        if target.low > single.high and ranks:
            return (
                f"Targeting each customer with the model's best offer earns "
                f"{spans['model targeting']}; more than sending everyone the best single offer "
                f"({spans['best single arm']}): a real gain of about "
                f"{amount(target.value - single.value)} per customer."
            )
        reasons = []
        if target.low <= single.high:
            reasons.append("the two intervals overlap")
        if not ranks:
            qini = ", ".join(f"{a} {q:.3f}" for a, q in self.qini_auc.items())
            reasons.append(f"the model ranks customers no better than chance (Qini AUC {qini})")
        why = " and ".join(reasons)
        return (
            f"Targeting each customer with the model's best offer ({spans['model targeting']}) "
            f"is not shown to beat sending everyone the best single offer "
            f"({spans['best single arm']}): {why}. Sending no offer: {spans['no one']}."
        )


def _segments(experiment: Experiment, segment_col: str | None) -> pl.Series | None:
    frame = experiment.frame
    if segment_col:
        return frame[segment_col].cast(pl.String).fill_null("unknown")
    if {"orders_total", "recency_days"} <= set(frame.columns):
        from sendwise.policy.segments import SegmentRules

        return frame.select(SegmentRules().expression())["segment"]
    return None


def cross_fitted_uplift(
    experiment: Experiment, outcome: np.ndarray, folds: int = 2, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """Each row's predicted uplift per arm from a model that never saw it."""
    rng = np.random.default_rng(seed)
    fold = rng.integers(0, folds, len(outcome))
    X, arm = experiment.features, experiment.arm
    predictions, arms = None, []
    for k in range(folds):
        learn = fold != k
        model = UpliftModel(random_state=seed).fit(
            X.filter(pl.Series(learn)),
            arm[learn],
            outcome[learn],
            experiment.spec.control,
            None if experiment.propensity is None else experiment.propensity[learn],
        )
        scored = model.predict_uplift(X.filter(pl.Series(~learn)))
        if predictions is None:
            predictions, arms = np.zeros((len(outcome), scored.shape[1])), model.treatments_
        predictions[~learn] = scored
    return predictions, arms


def summarise(
    experiment: Experiment, segment_col: str | None = None, title: str | None = None
) -> UpliftSummary:
    spec = experiment.spec
    arm, control = experiment.arm, spec.control
    outcomes = {spec.outcome: experiment.outcome}
    if spec.revenue:
        outcomes[spec.revenue] = experiment.frame[spec.revenue].cast(pl.Float64).to_numpy()
    arms = sorted(set(arm) - {control})
    effects = [
        effect(y[(arm == a) | (arm == control)], arm[(arm == a) | (arm == control)] == a, a, name)
        for name, y in outcomes.items()
        for a in arms
    ]
    y = experiment.outcome
    segments = _segments(experiment, segment_col)
    segment_rows = []
    if segments is not None:
        for segment in sorted(set(segments.to_list())):
            inside = (segments == segment).to_numpy()
            for a in arms:
                rows = inside & ((arm == a) | (arm == control))
                if (arm[rows] == a).sum() > 1 and (arm[rows] == control).sum() > 1:
                    e = effect(y[rows], arm[rows] == a, a, spec.outcome)
                    segment_rows.append((segment, a, int(rows.sum()), e.effect, e.low, e.high))
    by_segment = pl.DataFrame(
        segment_rows,
        schema=["segment", "arm", "customers", "effect", "low", "high"],
        orient="row",
    )
    predicted, model_arms = cross_fitted_uplift(experiment, y)
    deciles, qini, qini_scores = [], {}, {}
    for k, a in enumerate(model_arms):
        rows = (arm == a) | (arm == control)
        treated, p, yy = arm[rows] == a, predicted[rows, k], y[rows]
        qini[a] = qini_curve(yy, p, treated)
        qini_scores[a] = qini_auc(yy, p, treated)
        rank = np.argsort(np.argsort(-p, kind="stable"), kind="stable")
        decile = rank * 10 // len(p)
        for d in range(10):
            sel = decile == d
            if treated[sel].any() and (~treated[sel]).any():
                observed = yy[sel][treated[sel]].mean() - yy[sel][~treated[sel]].mean()
                deciles.append((a, d + 1, float(p[sel].mean()), float(observed)))
    by_decile = pl.DataFrame(
        deciles, schema=["arm", "decile", "predicted", "observed"], orient="row"
    )
    probability = experiment.propensity
    if probability is None:
        shares = {a: float(np.mean(arm == a)) for a in set(arm)}
        probability = np.array([shares[a] for a in arm])
    everyone = [control, *model_arms]
    policies = {}
    for name, values in outcomes.items():
        if name != spec.outcome:
            predicted, _ = cross_fitted_uplift(experiment, values)
        best_predicted = np.array(everyone)[np.c_[np.zeros(len(y)), predicted].argmax(1)]
        singles = {a: policy_value(values, arm, np.full(len(y), a), probability) for a in everyone}
        best_single = max(model_arms, key=lambda a: singles[a][0])
        rows = []
        for label, (mean, se) in (
            ("model targeting", policy_value(values, arm, best_predicted, probability)),
            ("best single arm", singles[best_single]),
            ("no one", singles[control]),
        ):
            rows.append(PolicyValue(label, mean, mean - Z * se, mean + Z * se))
        policies[name] = rows
    return UpliftSummary(
        title=title or f"Uplift report: {experiment.source}",
        source=experiment.source,
        customers=len(y),
        control=control,
        outcome=spec.outcome,
        revenue=spec.revenue,
        effects=effects,
        by_segment=by_segment,
        by_decile=by_decile,
        qini=qini,
        qini_auc=qini_scores,
        policies=policies,
    )


# --- rendering ------------------------------------------------------------------------------


def _effects_plot(summary: UpliftSummary, outcome: str) -> str:
    effects = [summary.effect_of(a, outcome) for a in summary.arms]
    return interval_plot(
        [e.arm for e in effects],
        [e.effect for e in effects],
        [e.low for e in effects],
        [e.high for e in effects],
        f"effect on {outcome} per customer vs {summary.control} (95% CI)",
    )


def _curves_plot(summary: UpliftSummary) -> str:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for arm, (x, q) in summary.qini.items():
        share = x / x[-1]
        axes[0].plot(share, q, label=f"{arm} (Qini AUC {summary.qini_auc[arm]:.3f})")
        axes[0].plot([0, 1], [0, q[-1]], ls="--", color="grey", lw=1)
        rows = summary.by_decile.filter(pl.col("arm") == arm)
        axes[1].plot(rows["decile"], rows["observed"], marker="o", label=arm)
    axes[0].set(xlabel="share of customers targeted, best first", ylabel="incremental outcomes")
    axes[0].set_title("Qini curves (dashed: random targeting)")
    axes[1].axhline(0, color="grey", lw=1)
    axes[1].set(xlabel="predicted-uplift decile (1 = highest)", ylabel="observed uplift")
    axes[1].set_title("Observed uplift by predicted decile")
    for axis in axes:
        axis.legend(fontsize=8)
    return _svg(figure)


def render(summary: UpliftSummary) -> str:
    """The whole page: no scripts, no external resources."""
    parts = [
        head(summary.title),
        f"<h1>{html.escape(summary.title)}</h1>",
        f"<p class='muted'>{summary.customers:,} customers; control arm "
        f"'{html.escape(summary.control)}'; generated {summary.generated_at} by sendwise.</p>",
        f"<p class='summary' data-key='headline'>{html.escape(summary.headline())}</p>",
    ]
    for outcome in [summary.outcome, *([summary.revenue] if summary.revenue else [])]:
        money = outcome == summary.revenue
        rows = []
        for arm in summary.arms:
            e = summary.effect_of(arm, outcome)
            k = f"{_key(arm)}_{_key(outcome)}"
            fmt = ".2f" if money else ".4f"
            rows.append(
                [
                    html.escape(arm),
                    f"{e.customers:,}",
                    format(e.treated_mean, fmt),
                    format(e.control_mean, fmt),
                    _figure(f"effect_{k}", e.effect, fmt),
                    f"{format(e.low, fmt)} to {format(e.high, fmt)}",
                    _figure(f"incremental_{k}", e.incremental, ",.1f"),
                ]
            )
        label = "revenue per customer" if money else "rate"
        parts += [
            f"<h2>Average effect on {html.escape(outcome)}</h2>",
            _table(
                [
                    "arm",
                    "customers",
                    f"{label} (arm)",
                    f"{label} (control)",
                    "effect",
                    "95% CI",
                    f"incremental {outcome}",
                ],
                rows,
            ),
            _effects_plot(summary, outcome),
        ]
    parts.append("<h2>What targeting is worth</h2>")
    parts.append(
        "<p class='muted'>Estimated outcome per customer, before offer costs, of each way of "
        "choosing offers: the model's best predicted offer for each customer, the one offer that "
        "is best on average for everyone, or no offer. Estimated from the randomised data "
        "(inverse-propensity weighting; predicted uplift cross-fitted).</p>"
    )
    for outcome, values in summary.policies.items():
        parts.append(
            _table(
                ["policy", f"{outcome} per customer", "95% CI"],
                [
                    [
                        p.name,
                        _figure(f"policy_{_key(p.name)}_{_key(outcome)}", p.value, ".4f"),
                        f"{p.low:.4f} to {p.high:.4f}",
                    ]
                    for p in values
                ],
            )
        )
    parts += ["<h2>Qini and uplift by decile</h2>", _curves_plot(summary)]
    if not summary.by_segment.is_empty():
        parts += [
            f"<h2>Effect on {html.escape(summary.outcome)} by segment</h2>",
            _table(
                ["segment", "arm", "customers", "effect", "95% CI"],
                [
                    [
                        html.escape(s),
                        html.escape(a),
                        f"{n:,}",
                        f"{e:.4f}",
                        f"{lo:.4f} to {hi:.4f}",
                    ]
                    for s, a, n, e, lo, hi in summary.by_segment.iter_rows()
                ],
            ),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)
