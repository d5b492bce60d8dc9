"""Offers: experiment tables, uplift against planted and real effects, the offer policy, and
the CLI verbs on a real MLflow store."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr

from sendwise.cli.main import main
from sendwise.features.contract import ContractError
from sendwise.features.experiment import (
    Experiment,
    ExperimentSpec,
    campaign_experiment,
    read_experiment,
)
from sendwise.features.shop import read_shop, write_shop
from sendwise.features.simulate import SimulationSettings, simulate
from sendwise.models.uplift import OfferModel, UpliftModel
from sendwise.policy.offers import ArmCost, OfferPolicy
from sendwise.training.offers import arm_shares, evaluate_uplift, fit_offer, policy_evidence, split

HILLSTROM_FLAGS = ["--arm-col", "segment", "--control", "No E-Mail", "--outcome", "visit"]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A 20,000-customer simulated shop's offer campaign, and its planted truth."""
    tables, truth = simulate(SimulationSettings(customers=20_000, seed=3))
    directory = tmp_path_factory.mktemp("campaign") / "shop"
    write_shop(tables, directory)
    return directory, campaign_experiment(read_shop(directory)), truth


# --- experiment tables ----------------------------------------------------------------------


def test_campaign_table_counts_outcomes_after_each_assignment(campaign):
    directory, table, _ = campaign
    shop = read_shop(directory)
    assigned = shop.assignments.collect()
    assert len(table.frame) == len(assigned)
    assert set(table.arm) == {"none", "free_shipping", "10_off"} and table.spec.control == "none"
    # conversion recomputed directly: a purchase within 14 days after assignment
    at = assigned["assigned_at"].min()
    buyers = set(
        shop.orders.filter(
            (pl.col("quantity") > 0)
            & (pl.col("ordered_at") > at)
            & (pl.col("ordered_at") <= at + pl.duration(days=14))
        )
        .select("customer_id")
        .collect()["customer_id"]
    )
    expected = np.array([c in buyers for c in table.frame["customer_id"]])
    assert (table.frame["conversion"].to_numpy() == expected).all()
    assert not {"arm", "conversion", "revenue", "visit", "propensity", "customer_id"} & set(
        table.features.columns
    )


def test_a_leaked_outcome_column_is_refused_and_excluding_it_works(hillstrom, capsys):
    code = main(["train", "offer", "--experiment", str(hillstrom), *HILLSTROM_FLAGS])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "column conversion" in err and "--exclude conversion" in err
    spec = ExperimentSpec("segment", "No E-Mail", "visit", exclude=("conversion", "spend"))
    table = read_experiment(hillstrom, spec)
    assert {"conversion", "spend", "visit", "segment"}.isdisjoint(table.features.columns)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ExperimentSpec("arm", "none", "visit"), "no column arm"),
        (ExperimentSpec("segment", "Nobody", "visit"), "no control value 'Nobody'"),
        (ExperimentSpec("segment", "No E-Mail", "history_segment"), "must be numeric"),
    ],
)
def test_bad_experiment_layouts_are_one_clear_line(hillstrom, spec, message):
    with pytest.raises(ContractError, match=message):
        read_experiment(hillstrom, spec)


# --- uplift quality -------------------------------------------------------------------------


def test_planted_uplift_is_recovered_on_the_simulated_campaign(campaign):
    """Planted uplift is 1-15 points on a 15% base rate, so single outcomes are mostly noise.
    Under no signal, Spearman's rho has a standard deviation of 1/sqrt(n) ~ 0.008 here; 0.08
    is ten of those, and a ranking that good puts visibly more planted uplift in the top
    decile (checked too)."""
    _, table, truth = campaign
    model = UpliftModel().fit(
        table.features, table.arm, table.outcome, table.spec.control, table.propensity
    )
    predicted = model.predict_uplift(table.features)
    planted = table.frame.select("customer_id").join(truth, on="customer_id", how="left")
    for k, arm in enumerate(model.treatments_):
        true = planted[f"true_uplift_{arm}"].to_numpy()
        assert spearmanr(predicted[:, k], true).statistic > 0.08, arm
        top = predicted[:, k] >= np.quantile(predicted[:, k], 0.9)
        assert true[top].mean() > 1.2 * true.mean(), arm


@pytest.mark.slow
def test_hillstrom_visit_beats_the_design_bars(hillstrom):
    spec = ExperimentSpec("segment", "No E-Mail", "visit", exclude=("conversion", "spend"))
    table = read_experiment(hillstrom, spec)
    womens = table.subset(np.flatnonzero(table.arm != "Mens E-Mail"))
    result = evaluate_uplift(womens, learners={"sendwise": UpliftModel})["sendwise"]
    assert result["uplift_at_30"] > 0.071
    assert result["qini_auc"] > 0.057


def test_logged_propensities_weight_the_outcome_models():
    """Arms assigned 90/10 by a covariate: weighting by 1/p keeps the effect estimate right."""
    rng = np.random.default_rng(0)
    n = 20_000
    x = rng.normal(size=n)
    p_treat = np.where(x > 0, 0.9, 0.1)
    treated = rng.random(n) < p_treat
    y = (rng.random(n) < 0.2 + 0.1 * treated).astype(float)
    arm = np.where(treated, "offer", "none")
    propensity = np.where(treated, p_treat, 1 - p_treat)
    model = UpliftModel().fit(pl.DataFrame({"x": x}), arm, y, "none", propensity)
    uplift = model.predict_uplift(pl.DataFrame({"x": x}))[:, 0]
    assert abs(uplift.mean() - 0.1) < 0.03


def test_uplift_model_round_trips(campaign, tmp_path):
    _, table, _ = campaign
    sample = table.subset(np.arange(4_000))
    model = UpliftModel(n_estimators=20).fit(
        sample.features, sample.arm, sample.outcome, "none", sample.propensity
    )
    offer = OfferModel(model, None, {"control": "none"})
    offer.save(tmp_path / "m")
    loaded = OfferModel.load(tmp_path / "m")
    assert np.allclose(
        loaded.outcome.predict_uplift(sample.features), model.predict_uplift(sample.features)
    )
    assert loaded.arms == ["none", "10_off", "free_shipping"]


# --- the policy -----------------------------------------------------------------------------


class FixedUplift(UpliftModel):
    """A fitted-looking model whose answers are given: the policy's arithmetic, isolated."""

    def __init__(self, outcome: np.ndarray, arms: list[str]):
        super().__init__()
        self.fixed, self.control_, self.treatments_ = outcome, arms[0], arms[1:]
        self.outcome_ = self.effect_ = {}

    def predict_outcome(self, X):
        return self.fixed

    def predict_uplift(self, X):
        return self.fixed[:, 1:] - self.fixed[:, :1]


def test_policy_picks_the_most_profitable_arm_net_of_costs():
    arms = ["none", "10_off", "free_shipping"]
    buy = np.array([[0.10, 0.30, 0.12], [0.50, 0.52, 0.51], [0.2, 0.2, 0.2]])
    revenue = buy * 50
    model = OfferModel(FixedUplift(buy, arms), FixedUplift(revenue, arms), {})
    policy = OfferPolicy(margin=0.4, exploration=0.0, holdout=0.0)
    values, cost = policy.expected_values(model, pl.DataFrame({"x": [0, 1, 2]}))
    # customer 0: 10_off moves 20 points: 0.4*10 - 0.1*15 = 2.5; free shipping 0.4 - 0.59
    assert values[0, 1] == pytest.approx(0.4 * 10 - 0.10 * 15)
    assert values[0, 2] == pytest.approx(0.4 * 1 - 4.95 * 0.12)
    decided = policy.decide(model, pl.DataFrame({"x": [0, 1, 2]}), ["a", "b", "c"])
    # customer 1 would buy anyway: every offer loses money; customer 2: nothing moves
    assert decided["offer"].to_list() == ["10_off", "none", "none"]
    assert (decided["probability"] == 1.0).all()


@pytest.mark.parametrize(
    ("planted", "served"),
    [
        ("where x > 0", {"10_off": "x > 0", "none": "x <= 0"}),  # targeting earns more
        ("everywhere", {"10_off": "all"}),  # one offer pays for all: targeting adds nothing
        ("nowhere", {"none": "all"}),  # the offer only gives margin away
    ],
)
def test_targeting_is_served_only_as_far_as_its_held_out_profit_goes(planted, served):
    """A randomised 10_off campaign whose planted uplift (+0.3 conversion on a 50.00 basket)
    is heterogeneous, uniform or absent: the policy serves targeting, one offer for everyone,
    or no offer, by the held-out evidence training stores, with no hint of the truth."""
    n, rng = 30_000, np.random.default_rng(7)
    x = rng.uniform(-1, 1, n)
    arm = np.where(rng.random(n) < 0.5, "10_off", "none")
    lift = {"where x > 0": 0.3 * (x > 0), "everywhere": np.full(n, 0.3), "nowhere": 0.0}[planted]
    bought = rng.random(n) < 0.2 + (arm == "10_off") * lift
    frame = pl.DataFrame({"x": x, "arm": arm, "conversion": bought * 1.0, "revenue": bought * 50.0})
    spec = ExperimentSpec("arm", "none", "conversion", revenue="revenue", propensity_col="p")
    experiment = Experiment(frame, spec, "planted")
    train_rows, test_rows = split(experiment)
    policy = OfferPolicy(exploration=0.0, holdout=0.0)
    model = fit_offer(experiment.subset(train_rows))
    model.evidence = policy_evidence(
        experiment.subset(test_rows), model, policy, arm_shares(experiment)
    )
    X = pl.DataFrame({"x": np.linspace(-0.95, 0.95, 40)})
    offers = np.array(policy.decide(model, X, [f"c{i}" for i in range(40)])["offer"])
    expected = {"x > 0": X["x"] > 0, "x <= 0": X["x"] <= 0, "all": np.ones(40, bool)}
    for arm_served, where in served.items():
        assert (offers[np.asarray(expected[where])] == arm_served).mean() >= 0.9
    gain = model.evidence["gain_over_best_single_arm"]
    assert (gain["low"] > 0) == (planted == "where x > 0")
    # an offer shown to lose money is not even explored; one that pays for some still is
    exploring = OfferPolicy(exploration=0.5, holdout=0.0).decide(
        model, X, [f"e{i}" for i in range(40)]
    )
    assert ("10_off" in set(exploring["offer"])) == (planted != "nowhere")


def test_policy_respects_shares_budget_holdout_and_exploration():
    n, arms = 10_000, ["none", "10_off", "free_shipping"]
    rng = np.random.default_rng(1)
    base = rng.uniform(0.05, 0.2, n)
    buy = np.column_stack([base, base + 0.2, base + 0.1])
    model = OfferModel(FixedUplift(buy, arms), FixedUplift(buy * 40, arms), {})
    ids = [f"c{i}" for i in range(n)]
    X = pl.DataFrame({"x": np.zeros(n)})
    capped = OfferPolicy(
        exploration=0.0, holdout=0.0, max_share={"10_off": 0.25}, costs={"10_off": ArmCost()}
    ).decide(model, X, ids)
    assert (capped["offer"] == "10_off").mean() == pytest.approx(0.25, abs=1e-4)
    assert (capped["offer"] == "free_shipping").mean() > 0.7
    budget = OfferPolicy(exploration=0.0, holdout=0.0, budget=500.0)
    _, cost = budget.expected_values(model, X)
    spent = budget.decide(model, X, ids)
    chosen_cost = cost[np.arange(n), [arms.index(a) for a in spent["offer"]]]
    assert chosen_cost.sum() <= 500.0 and (spent["offer"] == "none").mean() > 0.5
    mixed = OfferPolicy(exploration=0.2, holdout=0.1, campaign="spring").decide(model, X, ids)
    assert mixed["holdout"].mean() == pytest.approx(0.1, abs=0.01)
    assert (mixed.filter("holdout")["offer"] == "none").all()
    assert mixed["exploring"].mean() == pytest.approx(0.9 * 0.2, abs=0.015)
    again = OfferPolicy(exploration=0.2, holdout=0.1, campaign="spring").decide(model, X, ids)
    assert again["offer"].to_list() == mixed["offer"].to_list()  # deterministic per campaign
    # logged probabilities are true: each arm's inverse-probability weights sum to about n
    for arm in arms:
        got = mixed.filter(pl.col("offer") == arm)
        assert (1 / got["probability"]).sum() == pytest.approx(n, rel=0.1)


# --- CLI on a real MLflow store ---------------------------------------------------------------


def test_train_promote_and_score_an_experiment_file(hillstrom, mlflow_home, capsys):
    flags = [*HILLSTROM_FLAGS, "--exclude", "conversion", "--revenue", "spend"]
    assert main(["train", "offer", "--experiment", str(hillstrom), *flags]) == 0
    assert (
        "sendwise.experiments.offer v1 is the challenger (shop experiments;"
        in capsys.readouterr().out
    )
    assert main(["promote", "offer"]) == 0
    out = mlflow_home / "scored.parquet"
    assert main(["score-experiment", "--experiment", str(hillstrom), "--out", str(out)]) == 0
    scored = pl.read_parquet(out)
    assert len(scored) == 64_000
    assert {"uplift_Mens E-Mail", "uplift_Womens E-Mail", "offer", "expected_value"} <= set(
        scored.columns
    )
    assert set(scored["offer"]) <= {"No E-Mail", "Mens E-Mail", "Womens E-Mail"}
    assert 0.03 < scored["holdout"].mean() < 0.07
