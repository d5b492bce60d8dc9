"""Training: validate out of time, fit on everything known at T, log to MLflow, register.

The validation metrics logged with a model come from a backtest at T - H (fitted only on what
was known then, judged on (T - H, T]); promotion compares those.

A shop whose data cannot support a model (one product, no buyers to learn from) still gets
the others: `train_all` skips that one and says why and what decisions do without it.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from sendwise.errors import SendwiseError
from sendwise.features import builders
from sendwise.features.engine import Engine
from sendwise.features.shop import Shop, bucketed_dirs
from sendwise.models.base import ModelFitError
from sendwise.store import registry

from .backtest import (
    PRIMARY_METRIC,
    RFM_FEATURES,
    ProductsFit,
    PropensityFit,
    backtest_products,
    backtest_propensity,
    backtest_sendtime,
    fit_products,
    fit_propensity,
    fit_sendtime,
    select_sendtime,
)
from .distributed import fit_products_on_dask, fit_propensity_on_dask

MODELS = ("propensity", "crosssell", "sendtime")
ON_DASK = ("propensity", "crosssell")  # fitted with `lightgbm.dask` on `--engine dask`
WITHOUT = {  # what decisions do when a model could not be trained
    "propensity": "decisions keep the current propensity champion, if any",
    "crosssell": "decisions will use popular products",
    "sendtime": "decisions keep the current sendtime champion, if any",
}


class CannotTrain(ModelFitError):
    """The shop's data cannot support one model: `train_all` skips it, `train` alone fails."""

    def __init__(self, task: str, reason: str):
        super().__init__(f"cannot train {task}: {reason}")
        self.task = task
        self.reason = reason


@dataclass(frozen=True)
class TrainResult:
    task: str
    registered: registry.Registered
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]


@dataclass(frozen=True)
class Skipped:
    """A model `train_all` left out, why, and what decisions do without it."""

    task: str
    reason: str

    def __str__(self) -> str:
        return f"skipped {self.task}: {self.reason}; {WITHOUT[self.task]}"


def code_version() -> str:
    root = Path(__file__).resolve().parents[1]
    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root
    )
    return found.stdout.strip() or "unknown"


@dataclass(frozen=True)
class Fits:
    """How the models that can learn on a cluster are fitted: by default on this node."""

    propensity: PropensityFit = fit_propensity
    products: ProductsFit = fit_products


def fits(engine: Engine | str, scheduler: str | None = None) -> Fits:
    """On one node (`fit_propensity`, `fit_products`), or on Dask with `lightgbm.dask` from
    a bucketed shop's buckets (see `distributed`)."""
    if Engine(engine) is Engine.local:
        return Fits()

    def propensity(shop: Shop, as_of: datetime, horizon_days: int, **params):
        return fit_propensity_on_dask(
            shop.directory, as_of, horizon_days, scheduler, kept=tuple(RFM_FEATURES), **params
        )

    def products(shop: Shop, as_of: datetime, horizon_days: int, **params):
        return fit_products_on_dask(shop.directory, as_of, horizon_days, scheduler, **params)

    return Fits(propensity, products)


def validate(
    task: str,
    shop: Shop,
    as_of: datetime,
    horizon_days: int,
    params: dict,
    fit: Fits = Fits(),
):
    cutoff = as_of - timedelta(days=horizon_days)
    if task == "propensity":
        sections = [backtest_propensity(shop, cutoff, horizon_days, fit.propensity, **params)]
    elif task == "crosssell":
        sections = backtest_products(shop, cutoff, horizon_days, fit.products, **params)
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


def unsupported(task: str, shop: Shop, as_of: datetime) -> str | None:
    """Why the shop known at `as_of` cannot support `task` at all, before any fitting."""
    if task == "crosssell":
        products = builders.interactions(shop, as_of).select(pl.col("product_id").n_unique())
        count = products.collect().item()
        if count < 2:  # nothing to rank, nothing to cross-sell
            return f"the shop has {count} product{'' if count == 1 else 's'}"
    return None


def train(
    task: str,
    shop: Shop,
    as_of: datetime,
    horizon_days: int,
    params: dict | None = None,
    extra_tags: dict[str, str] | None = None,
    challenger: bool = True,
    engine: Engine | str = Engine.local,
    scheduler: str | None = None,
) -> TrainResult:
    """Fit one model at `as_of`, log it with its validation metrics, register it in the
    shop's registry and (unless told not to) make it the challenger. On `engine` dask the
    propensity model and the product ranker (validation's and the registered one) are
    fitted with `lightgbm.dask`; the others fit on this node.

    Raises `CannotTrain` when the shop's data cannot support the model.
    """
    reason = unsupported(task, shop, as_of)
    if reason:
        raise CannotTrain(task, reason)
    if Engine(engine) is Engine.dask:  # every task, though not every model fits there
        if shop.directory is None:
            raise SendwiseError("--engine dask trains on a bucketed shop's directory")
        bucketed_dirs(shop.directory, "--engine dask trains")
    fit = fits(engine, scheduler)
    fitted_on = str(Engine(engine)) if task in ON_DASK else str(Engine.local)
    tags = {**(extra_tags or {}), "engine": fitted_on}
    try:
        return _fit_and_register(task, shop, as_of, horizon_days, params, tags, challenger, fit)
    except ModelFitError as error:
        raise CannotTrain(task, str(error)) from error


def train_all(
    shop: Shop,
    as_of: datetime,
    horizon_days: int,
    progress: Callable[[str], None] | None = None,
    engine: Engine | str = Engine.local,
    scheduler: str | None = None,
) -> Iterator[TrainResult | Skipped]:
    """Every shop model in turn, each outcome as soon as it is known: a model the shop cannot
    support is skipped, not the end of the others. Fails only when none could be trained."""
    trained = False
    for task in MODELS:
        if progress:
            progress(task)
        try:
            result = train(task, shop, as_of, horizon_days, engine=engine, scheduler=scheduler)
        except CannotTrain as error:
            yield Skipped(task, error.reason)
            continue
        trained = True
        yield result
    if not trained:
        raise ModelFitError("no model could be trained on this shop")


def _fit_and_register(
    task: str,
    shop: Shop,
    as_of: datetime,
    horizon_days: int,
    params: dict | None,
    extra_tags: dict[str, str] | None,
    challenger: bool = True,
    fit: Fits = Fits(),
) -> TrainResult:
    params = dict(params or {})
    if task == "sendtime" and not params:
        params = select_sendtime(shop, as_of, horizon_days)
    metrics, baselines = validate(task, shop, as_of, horizon_days, params, fit)
    documents: dict[str, object] = {"baselines.json": baselines, "settings.json": dict(params)}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        if task == "propensity":
            model, _ = fit.propensity(shop, as_of, horizon_days, **params)
            documents["features.json"] = model.feature_names_
            documents["feature_importances.json"] = model.feature_importances_
            params = {**model.get_params(), **params}
        elif task == "crosssell":
            model = fit.products(shop, as_of, horizon_days, **params)
            documents["feature_importances.json"] = model.feature_importances_
            params = {**model.get_params(), **params}
        else:
            model = fit_sendtime(shop, as_of, horizon_days, **params)
            params = model.get_params()
        model.save(model_dir)
        documents["schema.json"] = {"customer_features": reads_columns(model)}
        cutoff = as_of - timedelta(days=horizon_days)
        window = f"..{as_of:%Y-%m-%d}, validated {cutoff:%Y-%m-%d}..{as_of:%Y-%m-%d}"
        tags = {
            "task": task,
            "as_of": as_of.isoformat(),
            "horizon_days": str(horizon_days),
            "data_window": window,
            "code_version": code_version(),
            "primary_metric": PRIMARY_METRIC[task],
            "validation": f"{metrics.get(PRIMARY_METRIC[task], float('nan')):.6f}",
            **({"shop_dir": str(shop.directory)} if shop.directory else {}),
            **(extra_tags or {}),
        }
        registered = registry.log_and_register(
            shop.name, task, model_dir, params, metrics, tags, documents, challenger
        )
    return TrainResult(task, registered, metrics, baselines)


def reads_columns(model) -> list[str]:
    """The customer-feature columns a fitted model reads (none for models that read a shop's
    tables through the contract: products, send times)."""
    names = getattr(model, "feature_names_", None)
    if names is None:
        names = getattr(model, "feature_names", None)
    return list(names or [])
