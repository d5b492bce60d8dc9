"""Offer models: learn uplift from a randomised experiment, judge it on a held-out share,
refit on everything, log to MLflow and register a challenger."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.model_selection import train_test_split

from sendwise.features.experiment import Experiment
from sendwise.models.metrics import qini_auc, uplift_at_k
from sendwise.models.uplift import (
    ClassTransformationUplift,
    OfferModel,
    TwoModelUplift,
    UpliftModel,
)
from sendwise.policy.offers import OfferPolicy
from sendwise.store import registry

VALIDATION_SHARE = 0.3


def split(experiment: Experiment, seed: int = 0, test_share: float = VALIDATION_SHARE):
    """Row indices of a train/test split stratified by arm and by whether the outcome happened."""
    strata = np.char.add(experiment.arm.astype(str), (experiment.outcome > 0).astype(str))
    rows = np.arange(len(strata))
    return train_test_split(rows, test_size=test_share, random_state=seed, stratify=strata)


def fit_offer(experiment: Experiment, seed: int = 0, **params) -> OfferModel:
    """Uplift of every arm on the outcome and, where the experiment has one, on revenue."""
    spec = asdict(experiment.spec)
    revenue = experiment.spec.revenue
    X, control = experiment.features, experiment.spec.control
    outcome = UpliftModel(random_state=seed, **params).fit(
        X, experiment.arm, experiment.outcome, control, experiment.propensity
    )
    revenue_model = None
    if revenue is not None:
        y = experiment.frame[revenue].cast(float).fill_null(0.0).to_numpy()
        revenue_model = UpliftModel(random_state=seed, **params).fit(
            X, experiment.arm, y, control, experiment.propensity
        )
    return OfferModel(outcome, revenue_model, spec)


def uplift_metrics(experiment: Experiment, uplift: np.ndarray, arms: list[str]) -> dict:
    """uplift@30% and Qini AUC of each arm against control, and their means over arms."""
    metrics: dict[str, float] = {}
    control = experiment.arm == experiment.spec.control
    for k, name in enumerate(arms):
        rows = control | (experiment.arm == name)
        y, treated = experiment.outcome[rows], ~control[rows]
        metrics[f"uplift_at_30_{name}"] = uplift_at_k(y, uplift[rows, k], treated)
        metrics[f"qini_auc_{name}"] = qini_auc(y, uplift[rows, k], treated)
    metrics["uplift_at_30"] = float(np.mean([metrics[f"uplift_at_30_{a}"] for a in arms]))
    metrics["qini_auc"] = float(np.mean([metrics[f"qini_auc_{a}"] for a in arms]))
    return metrics


@dataclass(frozen=True)
class OfferTrainResult:
    registered: registry.Registered
    metrics: dict[str, float]
    model: OfferModel


def train_offer(
    experiment: Experiment, tags: dict[str, str] | None = None, seed: int = 0
) -> OfferTrainResult:
    """Validate on a held-out 30% (stratified by arm and outcome), refit on all, register."""
    from .train import code_version

    train_rows, test_rows = split(experiment, seed)
    held_out = experiment.subset(test_rows)
    validation_model = fit_offer(experiment.subset(train_rows), seed)
    metrics = uplift_metrics(
        held_out,
        validation_model.outcome.predict_uplift(held_out.features),
        validation_model.outcome.treatments_,
    )
    model = fit_offer(experiment, seed)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        model.save(model_dir)
        source = Path(experiment.source)
        all_tags = {
            "task": "offer",
            "experiment": experiment.source,
            "outcome": experiment.spec.outcome,
            "code_version": code_version(),
            "primary_metric": "qini_auc",
            "validation": f"{metrics['qini_auc']:.6f}",
            "seed": str(seed),
            "data_window": f"{experiment.source}, {len(experiment.frame):,} rows",
            **({"experiment_file": str(source.resolve())} if source.is_file() else {}),
            **(tags or {}),
        }
        documents = {
            "spec.json": model.spec,
            "features.json": model.feature_names,
            "schema.json": {"customer_features": model.feature_names},
            "settings.json": {"seed": seed},
        }
        params = {**model.outcome.get_params(), "arms": ",".join(model.arms)}
        registered = registry.log_and_register(
            experiment.shop, "offer", model_dir, params, metrics, all_tags, documents
        )
    return OfferTrainResult(registered, metrics, model)


UPLIFT_LEARNERS = {
    "sendwise": UpliftModel,
    "two_models": TwoModelUplift,
    "class_transformation": ClassTransformationUplift,
}


def evaluate_uplift(
    experiment: Experiment, seeds: Iterable[int] = range(5), learners: dict | None = None
) -> dict[str, dict]:
    """Each learner's held-out uplift@30% and Qini AUC (stratified 70/30 splits), per seed
    and their means: the protocol of DESIGN.md's Hillstrom bars."""
    learners = learners or UPLIFT_LEARNERS
    runs: dict[str, list[dict]] = {name: [] for name in learners}
    for seed in seeds:
        train_rows, test_rows = split(experiment, seed)
        learn, test = experiment.subset(train_rows), experiment.subset(test_rows)
        for name, learner in learners.items():
            model = learner(random_state=seed).fit(
                learn.features, learn.arm, learn.outcome, learn.spec.control, learn.propensity
            )
            runs[name].append(
                uplift_metrics(test, model.predict_uplift(test.features), model.treatments_)
            )
    return {
        name: {
            "uplift_at_30": float(np.mean([r["uplift_at_30"] for r in rows])),
            "qini_auc": float(np.mean([r["qini_auc"] for r in rows])),
            "per_seed": rows,
        }
        for name, rows in runs.items()
    }


def evaluate_policy(experiment: Experiment, policy: OfferPolicy, seed: int = 0) -> dict:
    """The learned policy's value per customer on a held-out 30%, against every single-arm
    policy, by inverse propensity weighting, with 95% intervals; also its gain over the best
    single arm (a paired interval: both estimates use the same customers)."""
    train_rows, test_rows = split(experiment, seed)
    test = experiment.subset(test_rows)
    model = fit_offer(experiment.subset(train_rows), seed)
    values, _ = policy.expected_values(model, test.features)
    chosen = np.array(model.arms)[values.argmax(axis=1)]
    money = test.frame[test.spec.revenue] if test.spec.revenue else test.frame[test.spec.outcome]
    outcome = money.cast(pl.Float64).to_numpy()
    probability = test.propensity
    if probability is None:
        shares = {a: float(np.mean(experiment.arm == a)) for a in model.arms}
        probability = np.array([shares[a] for a in test.arm])

    def terms(policy_arms: np.ndarray) -> np.ndarray:
        return outcome * (test.arm == policy_arms) / probability

    def interval(t: np.ndarray) -> dict:
        mean, se = t.mean(), t.std(ddof=1) / np.sqrt(len(t))
        return {
            "value": float(mean),
            "low": float(mean - 1.96 * se),
            "high": float(mean + 1.96 * se),
        }

    learned = terms(chosen)
    singles = {a: terms(np.full(len(outcome), a)) for a in model.arms}
    best = max(singles, key=lambda a: singles[a].mean())
    return {
        "unit": test.spec.revenue or test.spec.outcome,
        "customers": len(outcome),
        "learned_policy": interval(learned),
        "single_arm": {a: interval(t) for a, t in singles.items()},
        "best_single_arm": best,
        "gain_over_best_single_arm": interval(learned - singles[best]),
        "chosen_shares": {a: float(np.mean(chosen == a)) for a in model.arms},
    }
