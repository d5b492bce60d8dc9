"""Training: validate out of time, fit on everything known at T, log to MLflow, register.

The validation metrics logged with a model come from a backtest at T - H (fitted only on what
was known then, judged on (T - H, T]); promotion compares those.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sendwise.features.shop import Shop
from sendwise.store import registry

from .backtest import (
    PRIMARY_METRIC,
    backtest_products,
    backtest_propensity,
    backtest_sendtime,
    fit_products,
    fit_propensity,
    fit_sendtime,
    propensity_features,
    select_sendtime,
)

MODELS = ("propensity", "crosssell", "sendtime")


@dataclass(frozen=True)
class TrainResult:
    task: str
    registered: registry.Registered
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]


def code_version() -> str:
    root = Path(__file__).resolve().parents[1]
    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root
    )
    return found.stdout.strip() or "unknown"


def _validate(task: str, shop: Shop, as_of: datetime, horizon_days: int, params: dict):
    cutoff = as_of - timedelta(days=horizon_days)
    if task == "propensity":
        sections = [backtest_propensity(shop, cutoff, horizon_days, **params)]
    elif task == "crosssell":
        sections = backtest_products(shop, cutoff, horizon_days, **params)
    else:
        sections = [backtest_sendtime(shop, cutoff, horizon_days, **params)]
    metrics = {}
    for section in sections:
        prefix = "" if section.task in ("propensity", "sendtime", "products_all") else "new_"
        metrics.update(
            {f"{prefix}{k}": v for k, v in section.rows["sendwise"].items() if k != "customers"}
        )
    baselines = {f"{s.task}/{name}": row for s in sections for name, row in s.rows.items()}
    return metrics, baselines


def train(
    task: str,
    shop: Shop,
    as_of: datetime,
    horizon_days: int,
    params: dict | None = None,
    extra_tags: dict[str, str] | None = None,
) -> TrainResult:
    """Fit one model at `as_of`, log it with its validation metrics, register a challenger."""
    params = dict(params or {})
    if task == "sendtime" and not params:
        params = select_sendtime(shop, as_of, horizon_days)
    metrics, baselines = _validate(task, shop, as_of, horizon_days, params)
    documents: dict[str, object] = {"baselines.json": baselines}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        if task == "propensity":
            model, train_frame = fit_propensity(shop, as_of, horizon_days, **params)
            documents["features.json"] = propensity_features(train_frame)
            documents["feature_importances.json"] = model.feature_importances_
            params = {**model.get_params(), **params}
        elif task == "crosssell":
            model = fit_products(shop, as_of, horizon_days, **params)
            documents["feature_importances.json"] = model.feature_importances_
            params = {**model.get_params(), **params}
        else:
            model = fit_sendtime(shop, as_of, horizon_days, **params)
            params = model.get_params()
        model.save(model_dir)
        tags = {
            "task": task,
            "as_of": as_of.isoformat(),
            "horizon_days": str(horizon_days),
            "data_window": f"..{as_of.isoformat()}",
            "code_version": code_version(),
            "primary_metric": PRIMARY_METRIC[task],
            **(extra_tags or {}),
        }
        registered = registry.log_and_register(task, model_dir, params, metrics, tags, documents)
    return TrainResult(task, registered, metrics, baselines)
