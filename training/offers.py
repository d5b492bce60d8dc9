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
    experiment: Experiment,
    tags: dict[str, str] | None = None,
    seed: int = 0,
    policy: OfferPolicy | None = None,
) -> OfferTrainResult:
    """Validate on a held-out 30% (stratified by arm and outcome), refit on all, register.
    The held-out profit of the validation model's targeting, at `policy`'s margin and costs,
    is kept with the model as the evidence the offer policy serves it by."""
    from .train import code_version

    train_rows, test_rows = split(experiment, seed)
    held_out = experiment.subset(test_rows)
    validation_model = fit_offer(experiment.subset(train_rows), seed)
    metrics = uplift_metrics(
        held_out,
        validation_model.outcome.predict_uplift(held_out.features),
        validation_model.outcome.treatments_,
    )
    evidence = policy_evidence(
        held_out, validation_model, policy or OfferPolicy(), arm_shares(experiment)
    )
    gain = evidence["gain_over_best_single_arm"]
    metrics |= {"targeting_gain": gain["value"], "targeting_gain_low": gain["low"]}
    model = fit_offer(experiment, seed)
    model.evidence = evidence
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
            "evidence.json": evidence,
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


def _interval(terms: np.ndarray) -> dict:
    mean, se = float(terms.mean()), float(terms.std(ddof=1) / np.sqrt(len(terms)))
    return {"value": mean, "se": se, "low": mean - 1.96 * se, "high": mean + 1.96 * se}


def policy_evidence(
    held_out: Experiment, model: OfferModel, policy: OfferPolicy, shares: dict[str, float]
) -> dict:
    """Profit per customer on held-out rows, by inverse propensity weighting (the logged
    probabilities, else the arms' `shares`): of the model's targeting (each customer's best
    arm by `policy`'s values) and of every single arm; the targeting's gain over the best
    single arm and each arm's gain over control, paired (the same customers), with standard
    errors. The offer policy serves targeting only as far as this evidence goes."""
    spec = held_out.spec
    values, _ = policy.expected_values(model, held_out.features)
    arms = model.arms
    targeted = np.array(arms)[values.argmax(axis=1)]
    revenue = (
        held_out.frame[spec.revenue].cast(pl.Float64).fill_null(0.0).to_numpy()
        if spec.revenue
        else None
    )
    profit = policy.realised(held_out.arm, held_out.outcome, revenue, spec.control)
    probability = held_out.propensity
    if probability is None:
        probability = np.array([shares[a] for a in held_out.arm])

    def terms(chosen: np.ndarray) -> np.ndarray:
        return profit * (held_out.arm == chosen) / probability

    singles = {a: terms(np.full(len(profit), a)) for a in arms}
    best = max(singles, key=lambda a: singles[a].mean())
    learned = terms(targeted)
    gains = {a: _interval(singles[a] - singles[spec.control]) for a in arms if a != spec.control}
    return {
        "unit": f"profit per customer ({spec.revenue or spec.outcome})",
        "customers": len(profit),
        "learned_policy": _interval(learned),
        "single_arm": {a: _interval(t) for a, t in singles.items()},
        "best_single_arm": best,
        "gain_over_best_single_arm": _interval(learned - singles[best]),
        "arms": gains,  # each arm's gain over control
        "chosen_shares": {a: float(np.mean(targeted == a)) for a in arms},
    }


def arm_shares(experiment: Experiment) -> dict[str, float]:
    arms, counts = np.unique(experiment.arm, return_counts=True)
    return dict(zip(arms.tolist(), (counts / counts.sum()).tolist(), strict=True))


def evaluate_policy(experiment: Experiment, policy: OfferPolicy, seed: int = 0) -> dict:
    """`policy_evidence` of a model fitted on 70% of `experiment`, on the other 30%."""
    train_rows, test_rows = split(experiment, seed)
    model = fit_offer(experiment.subset(train_rows), seed)
    return policy_evidence(experiment.subset(test_rows), model, policy, arm_shares(experiment))
