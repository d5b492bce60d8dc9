"""Tuning: Optuna searches the propensity model's settings on the latest window before T.

Each trial fits on cut-offs whose outcomes end by T - H and is judged (ROC-AUC) on
(T - H, T]; unpromising trials are pruned while boosting. The study lives in SQLite under the
sendwise home unless a storage URL (e.g. PostgreSQL) is given; on `--engine dask` each trial
is a task on a Dask worker, every worker sharing that one study. Each trial is fitted and judged
exactly as `train` validates a model, so the best trial's figure is the one registered. The best
settings are then trained like any model (`train`), logged to MLflow with the trial, and made
the shop's challenger unless the current challenger does better on the same window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import optuna
import polars as pl
from optuna_integration import LightGBMPruningCallback

from sendwise.features.engine import Engine, Progress, run_on_dask
from sendwise.features.shop import Shop
from sendwise.models.metrics import propensity_metrics
from sendwise.models.propensity import PurchasePropensity
from sendwise.store import registry
from sendwise.store.settings import home

from .backtest import propensity_features
from .datasets import CUTOFF_STRIDE_DAYS, TRAINING_CUTOFFS, labelled, training_cutoffs
from .promote import shop_figures
from .train import TrainResult, train


@dataclass(frozen=True)
class TuneResult:
    study_name: str
    storage: str
    best_value: float  # the registered version's validation ROC-AUC
    best_params: dict
    trials: int
    pruned: int
    trained: TrainResult
    search_value: float  # the best trial's own figure (the same computation as best_value)
    kept: str | None = None  # why the current challenger stays, when it does better


def default_storage() -> str:
    home().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home() / 'optuna.db'}"


def suggest(trial: optuna.Trial) -> dict:
    return {
        "num_leaves": trial.suggest_int("num_leaves", 3, 63, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 0.005, 0.1, log=True),
        "n_estimators": trial.suggest_int("n_estimators", 100, 1000, step=50),
        "min_child_samples": trial.suggest_int("min_child_samples", 10, 400, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.3, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30.0, log=True),
    }


@dataclass(frozen=True)
class _Search:
    """What every trial fits and judges on: pickled once to each Dask worker."""

    X: pl.DataFrame
    y: np.ndarray
    X_valid: pl.DataFrame
    y_valid: np.ndarray
    calibration: np.ndarray
    seed: int

    def objective(self, trial: optuna.Trial) -> float:
        # fitted and judged exactly as `train` validates a model, so the best trial's figure
        # is the one its registered version records
        model = PurchasePropensity(random_state=self.seed, **suggest(trial)).fit(
            self.X,
            self.y,
            calibration=self.calibration,
            eval_set=(self.X_valid, self.y_valid),
            callbacks=[LightGBMPruningCallback(trial, "auc")],
        )
        return propensity_metrics(self.y_valid, model.predict_proba(self.X_valid))["roc_auc"]


def _study(name: str, storage: str, seed: int, create: bool = False) -> optuna.Study:
    """The study in `storage`: TPE sampling from `seed`, median pruning."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = {
        "study_name": name,
        "storage": storage,
        "sampler": optuna.samplers.TPESampler(seed=seed),
        "pruner": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=50),
    }
    if create:
        return optuna.create_study(direction="maximize", load_if_exists=True, **settings)
    return optuna.load_study(**settings)


@dataclass(frozen=True)
class _Trials:
    """What a trial on a Dask worker needs: the search and the study every worker shares."""

    search: _Search
    study_name: str
    storage: str


def _trial(number: int, trials: _Trials) -> None:
    """One trial on a Dask worker, in the shared study; each task samples from its own seed,
    so workers starting together do not draw the same settings."""
    from distributed import get_worker

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", get_worker().address)  # where it ran, in the study
        return trials.search.objective(trial)

    seed = trials.search.seed + 1 + number
    _study(trials.study_name, trials.storage, seed).optimize(objective, n_trials=1)


def tune_propensity(
    shop: Shop,
    as_of: datetime,
    horizon_days: int,
    trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    engine: Engine | str = Engine.local,
    scheduler: str | None = None,
) -> TuneResult:
    """Search, then train the best trial's settings and register them. `engine` dask runs
    one task per trial on a Dask cluster, every worker reading and writing the one study in
    `storage` (which every worker must reach: PostgreSQL on a real cluster)."""
    storage = storage or default_storage()
    study_name = study_name or f"propensity-{as_of:%Y%m%d}-h{horizon_days}"
    cutoff = as_of - timedelta(days=horizon_days)
    cutoffs = training_cutoffs(cutoff, horizon_days, TRAINING_CUTOFFS, CUTOFF_STRIDE_DAYS)
    train_frame = labelled(shop, cutoffs, horizon_days, buyers_only=True).frame
    valid = labelled(shop, [cutoff], horizon_days, buyers_only=True).frame
    features = propensity_features(train_frame)
    search = _Search(
        train_frame.select(features),
        train_frame["purchased"].to_numpy(),
        valid.select(features),
        valid["purchased"].to_numpy(),
        (train_frame["cutoff"] == cutoffs[0]).to_numpy(),
        seed,
    )
    study = _study(study_name, storage, seed, create=True)
    tick = progress or (lambda _: None)
    if Engine(engine) is Engine.local:
        study.optimize(search.objective, n_trials=trials, callbacks=[lambda *_: tick(1)])
    else:
        first = len(study.trials)  # a resumed study: new tasks, new seeds
        numbers = range(first, first + trials)
        run_on_dask(_trial, numbers, _Trials(search, study_name, storage), scheduler, tick)
    best = study.best_trial
    trained = train(
        "propensity",
        shop,
        as_of,
        horizon_days,
        params={**best.params, "random_state": seed},
        extra_tags={
            "optuna_study": study_name,
            "optuna_trial": str(best.number),
            "optuna_best_auc": f"{best.value:.4f}",
        },
        challenger=False,
    )
    kept = _challenger_unless_worse(shop, trained)
    states = [t.state for t in study.trials]
    return TuneResult(
        study_name,
        storage,
        trained.metrics["roc_auc"],
        dict(best.params),
        len(states),
        states.count(optuna.trial.TrialState.PRUNED),
        trained,
        best.value,
        kept,
    )


def _challenger_unless_worse(shop: Shop, trained: TrainResult) -> str | None:
    """Make the tuned version the challenger unless the current challenger does better on the
    same validation window; then keep it and say why (the message), else None."""
    current = registry.alias_version(shop.name, "propensity", registry.CHALLENGER)
    tuned = registry.model_version(shop.name, "propensity", trained.registered.version)
    if current is not None:
        new, old, how, _ = shop_figures("propensity", shop.name, tuned, current, shop)
        if old is not None and new is not None and old >= new:
            return (
                f"kept challenger v{current.version} (roc_auc {old:.4f}, {how}): the tuned "
                f"v{tuned.version} ({new:.4f}) does not beat it"
            )
    registry.set_challenger(shop.name, "propensity", tuned.version)
    return None
