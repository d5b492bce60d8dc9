"""Experiment tables: one row per customer with pre-treatment features, the arm and outcomes.

Two sources: a file in any layout (Hillstrom's works as is) described by an `ExperimentSpec`,
or a shop's `assignments` joined to what happened in a window after each assignment
(`visit` from web events, `conversion` and `revenue` from orders), with point-in-time customer
features as of the campaign's start.

Arm, outcome, randomisation probability and the named post-treatment columns are never
features; a column that is non-zero only where the outcome is (a post-treatment column the
user forgot to name) is refused, because a model reading it reads the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl

from sendwise.store.decisions import would_be_send_time

from . import expressions as fx
from .builders import customer_features, purchase_lines
from .contract import ContractError
from .shop import EXPERIMENTS, Shop

ID = "customer_id"
SHOP_OUTCOMES = ("visit", "conversion", "revenue")
LEAK_MIN_ROWS = 30  # a column must be non-zero on this many rows before it can look leaked


@dataclass(frozen=True)
class ExperimentSpec:
    """How to read an experiment table: which column is the arm, which value is control, which
    column is the outcome, and which other columns are post-treatment (never features)."""

    arm_col: str = "arm"
    control: str = "none"
    outcome: str = "conversion"
    exclude: tuple[str, ...] = ()
    propensity_col: str = "propensity"  # logged P(assigned arm); used where present
    revenue: str | None = None  # a revenue outcome besides `outcome`, if the table has one

    def not_features(self, columns: list[str]) -> set[str]:
        named = {ID, self.arm_col, self.outcome, self.propensity_col, self.revenue, *self.exclude}
        return named & set(columns)


@dataclass(frozen=True)
class Experiment:
    frame: pl.DataFrame
    spec: ExperimentSpec
    source: str
    outcomes: tuple[str, ...] = field(default=())  # every outcome column the table carries
    shop: str = EXPERIMENTS  # whose models: a shop's campaign, or `--shop-name` for a file

    @property
    def features(self) -> pl.DataFrame:
        dropped = self.spec.not_features(self.frame.columns) | set(self.outcomes)
        return self.frame.drop(sorted(dropped))

    @property
    def arm(self) -> np.ndarray:
        return self.frame[self.spec.arm_col].cast(pl.String).to_numpy()

    @property
    def outcome(self) -> np.ndarray:
        return self.frame[self.spec.outcome].cast(pl.Float64).to_numpy()

    @property
    def propensity(self) -> np.ndarray | None:
        column = self.spec.propensity_col
        return self.frame[column].to_numpy() if column in self.frame.columns else None

    @property
    def treated(self) -> np.ndarray:
        return self.arm != self.spec.control

    def subset(self, rows: np.ndarray) -> Experiment:
        return Experiment(self.frame[rows], self.spec, self.source, self.outcomes, self.shop)


def _fail(source: str, message: str) -> ContractError:
    return ContractError(f"{source}: {message}")


def check_experiment(experiment: Experiment, *, leak_check: bool = True) -> Experiment:
    """Every rule an experiment table must meet, each failure one line naming the column."""
    frame, spec, source = experiment.frame, experiment.spec, experiment.source
    named = (spec.arm_col, spec.outcome, *spec.exclude, *([spec.revenue] if spec.revenue else []))
    missing = [c for c in named if c not in frame.columns]
    if missing:
        raise _fail(source, f"no column {', '.join(missing)} (columns: {', '.join(frame.columns)})")
    arms = frame[spec.arm_col].cast(pl.String)
    if arms.null_count():
        rows = arms.is_null().arg_true().head(3).to_list()
        raise _fail(source, f"column {spec.arm_col} is empty on rows {rows}")
    if spec.control not in set(arms.to_list()):
        raise _fail(
            source,
            f"column {spec.arm_col} has no control value {spec.control!r} "
            f"(values: {', '.join(sorted(set(arms.to_list()))[:10])})",
        )
    if arms.n_unique() < 2:
        raise _fail(source, f"column {spec.arm_col} has only the control arm")
    outcome = frame[spec.outcome].cast(pl.Float64, strict=False)
    bad = (outcome.is_null() | outcome.is_nan()).arg_true().head(3).to_list()
    if bad:
        values = frame[spec.outcome].gather(bad).to_list()
        raise _fail(
            source, f"column {spec.outcome} must be numeric on every row; rows {bad}: {values}"
        )
    if leak_check:
        _refuse_leaks(experiment.features, outcome.to_numpy(), spec.outcome, source)
    return experiment


def _refuse_leaks(features: pl.DataFrame, outcome: np.ndarray, name: str, source: str) -> None:
    """A numeric column non-zero only on rows where the outcome is non-zero is post-treatment."""
    positive = outcome != 0
    for column in features.columns:
        if not features[column].dtype.is_numeric() and features[column].dtype != pl.Boolean:
            continue
        values = features[column].cast(pl.Float64).fill_null(0.0).fill_nan(0.0).to_numpy()
        active = values != 0
        if active.sum() >= LEAK_MIN_ROWS and not active.all() and not (active & ~positive).any():
            raise _fail(
                source,
                f"column {column} is non-zero only where the outcome {name} is: it is an "
                f"outcome too, not a feature; name it with --exclude {column}",
            )


def read_experiment(path: str | Path, spec: ExperimentSpec) -> Experiment:
    """An experiment file (CSV, .csv.gz or Parquet), checked against `spec`."""
    return check_experiment(Experiment(read_table_file(path), spec, str(path)))


def read_table_file(path: str | Path) -> pl.DataFrame:
    """A CSV, .csv.gz or Parquet table with at least one row; `customer_id` read as text."""
    path = Path(path)
    if not path.is_file():
        raise ContractError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ContractError(f"{path}: file is empty")
    try:
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
        else:
            frame = pl.read_csv(path, infer_schema_length=None)
    except pl.exceptions.PolarsError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ContractError(f"{path}: cannot be read as an experiment table: {first}") from error
    if frame.is_empty():
        raise ContractError(f"{path}: no rows")
    if ID in frame.columns:
        frame = frame.with_columns(pl.col(ID).cast(pl.String))
    return frame


def campaign_experiment(
    shop: Shop, campaign_id: str | None = None, window_days: int = 14, outcome: str = "conversion"
) -> Experiment:
    """The experiment table of one campaign in `shop.assignments` (the latest if unnamed).

    Features are the customer features at the campaign's first assignment; outcomes count
    from each customer's own assignment time to `window_days` after it.
    """
    assignments = shop.assignments.collect()
    campaigns = sorted(assignments["campaign_id"].unique().to_list())
    if not campaigns:
        raise ContractError("the shop has no assignments: no campaign to learn offers from")
    if campaign_id is None:
        campaign_id = assignments.sort("assigned_at")["campaign_id"][-1]
    if campaign_id not in campaigns:
        raise ContractError(f"no campaign {campaign_id!r} in assignments (have {campaigns})")
    assigned = assignments.filter(pl.col("campaign_id") == campaign_id)
    return _from_assignments(shop, assigned, f"campaign {campaign_id}", window_days, outcome)


# reasons of a decision whose offer the offer policy drew: chosen, explored or held out
OFFER_DRAWN = r"^(uplift_|offer_explore$|offer_holdout$)"


def logged_experiment(
    shop: Shop, decisions: pl.DataFrame, window_days: int = 14, outcome: str = "conversion"
) -> Experiment:
    """The offer experiment sendwise ran itself, read from its decision log: every sent
    decision whose offer the offer policy drew (the model's choice, exploration or the offer
    holdout), its arm, the probability of that arm from the offer's own draws
    (`offer_probability`), and what followed in `window_days` from its send. A customer in
    several such decisions counts once, at the first."""
    drawn = decisions.filter(
        pl.col("send")
        & pl.col("reasons").list.eval(pl.element().str.contains(OFFER_DRAWN)).list.any()
    )
    if drawn.is_empty():
        raise ContractError(
            "the decision log holds no decision whose offer the offer policy drew "
            "(an offer model must be champion, with exploration or an offer holdout)"
        )
    assigned = (
        drawn.with_columns(would_be_send_time())
        .sort("start_at", "decision_id")
        .unique(ID, keep="first", maintain_order=True)
        .select(ID, arm="offer", assigned_at="start_at", propensity=_offer_propensity(drawn))
    )
    campaigns = ", ".join(sorted(drawn["campaign"].unique().to_list()))
    return _from_assignments(shop, assigned, f"decision log ({campaigns})", window_days, outcome)


def _offer_propensity(decisions: pl.DataFrame) -> pl.Expr:
    """P(the logged offer | customer) from the offer's own draws (holdout, exploration,
    policy): `offer_probability`. A log written before it was kept has only `probability`, that
    of the whole assignment, whose other holdouts' shares would weight the offer's arms."""
    if "offer_probability" in decisions.columns:
        return pl.coalesce("offer_probability", "probability")
    return pl.col("probability")


def _from_assignments(
    shop: Shop, assigned: pl.DataFrame, source: str, window_days: int, outcome: str
) -> Experiment:
    """Features at the first assignment, outcomes from each customer's own assignment time to
    `window_days` after it."""
    start, last = assigned["assigned_at"].min(), assigned["assigned_at"].max()
    window = timedelta(days=window_days)
    horizon = shop.until(last + window)

    def within(frame: pl.LazyFrame, stamp: str) -> pl.LazyFrame:
        return frame.join(assigned.lazy().select(ID, "assigned_at"), on=ID).filter(
            (pl.col(stamp) > pl.col("assigned_at"))
            & (pl.col(stamp) <= pl.col("assigned_at") + window)
        )

    bought = (
        within(purchase_lines(horizon), "ordered_at")
        .group_by(ID)
        .agg(revenue=fx.line_value().sum(), conversion=pl.lit(1.0))
    )
    visited = within(horizon.events, "occurred_at").group_by(ID).agg(visit=pl.lit(1.0))
    outcomes = (
        assigned.lazy()
        .select(ID, "arm", pl.col("propensity").fill_null(0.0))
        .join(bought, on=ID, how="left")
        .join(visited, on=ID, how="left")
        .with_columns(
            pl.max_horizontal("visit", "conversion").fill_null(0.0).alias("visit"),
            pl.col("conversion", "revenue").fill_null(0.0),
        )
    )
    features = customer_features(shop, start).drop("timezone")
    frame = outcomes.join(features, on=ID, how="left").sort(ID).collect()
    if (frame["propensity"] <= 0).any():
        frame = frame.drop("propensity")  # not logged: the learner assumes the observed shares
    spec = ExperimentSpec(control=_control_arm(frame["arm"]), outcome=outcome, revenue="revenue")
    return check_experiment(
        Experiment(frame, spec, source, outcomes=SHOP_OUTCOMES, shop=shop.name),
        leak_check=False,
    )


def _control_arm(arms: pl.Series) -> str:
    values = set(arms.to_list())
    for name in ("none", "control", "holdout"):
        if name in values:
            return name
    raise ContractError(
        f"assignments name no control arm (one of none, control, holdout); arms: {sorted(values)}"
    )
