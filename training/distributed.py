"""Fitting on Dask (`train propensity --engine dask`): the propensity model learns with
LightGBM's own distributed learner, `lightgbm.dask`, from examples the workers build bucket
by bucket and keep.

A bucket's examples (features at every training cut-off, labels after it) depend on that
bucket's customers and the shop's fallback time zones alone, so they are built where the
task runs and stay there (only the few columns a caller asks to keep come back):
LightGBM's Dask learner fits data parallel over the workers that hold them, agreeing on each
split over the network. It is the regressor with the binary objective, not the classifier:
the classifier encodes labels on each worker apart, so a worker holding only buyers would
learn them as class 0. The Platt map is learned as `PurchasePropensity.fit` learns it: a first
booster, on the earlier cut-offs, scores the latest one out of time.

Features are identical across engines; the fitted trees are not (each worker bins and bags
its own rows, in the order the cluster placed them), so the model is of the same kind, not the
same bits, nor the same bits on a rerun. Prefer one node while the examples fit its memory:
LightGBM there has early stopping for tuning, and no cluster to start or network to cross
every boosting round (README, "Beyond one machine: buckets and Dask", has the figures).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from pathlib import Path

import numpy as np
import polars as pl

from sendwise.features import builders
from sendwise.features.engine import dask_client
from sendwise.features.shop import bucketed_dirs, read_bucket, read_shop
from sendwise.models.base import ModelFitError, matrix
from sendwise.models.propensity import PurchasePropensity, platt_map

from .backtest import propensity_features
from .datasets import CUTOFF_STRIDE_DAYS, TRAINING_CUTOFFS, labelled, training_cutoffs

ORDER = ("cutoff", "customer_id")  # `labelled` sorts by these, the latest cut-off first


@dataclass(frozen=True)
class ExampleJob:
    """What every bucket's examples share: the cut-offs, the horizon, each cut-off's fallback
    time zone (the whole shop's), and the columns sent back for the caller's baselines."""

    cutoffs: list[datetime]
    horizon_days: int
    timezones: dict[datetime, str]
    kept: list[str]


@dataclass(frozen=True)
class Examples:
    """One bucket's examples as LightGBM reads them, with the few columns the caller keeps."""

    features: np.ndarray  # float32, one row per (customer, cut-off)
    bought: np.ndarray  # float32 0/1
    latest: np.ndarray  # bool: of the latest cut-off, the one the Platt map learns on
    names: list[str]
    kept: pl.DataFrame

    def rows(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, bought) of `all` rows, the `earlier` cut-offs' or the `latest`'s."""
        pick = {"all": slice(None), "earlier": ~self.latest, "latest": self.latest}[which]
        return self.features[pick], self.bought[pick]

    def summary(self) -> tuple[dict[str, int], list[str]]:
        """Row counts by kind, and the feature names: what the client plans the fit from."""
        latest = int(self.latest.sum())
        counts = {
            "all": len(self.bought),
            "earlier": len(self.bought) - latest,
            "latest": latest,
            "bought": int(self.bought.sum()),
            "latest_bought": int(self.bought[self.latest].sum()),
        }
        return counts, self.names


def bucket_examples(bucket: Path, job: ExampleJob) -> Examples:
    """The propensity examples of one bucket's buyers: the function each Dask task runs."""
    frame = labelled(
        read_bucket(bucket),
        job.cutoffs,
        job.horizon_days,
        buyers_only=True,
        timezones=job.timezones,
    ).frame
    names = propensity_features(frame)
    return Examples(
        matrix(frame, names),
        frame["purchased"].to_numpy().astype(np.float32),
        (frame["cutoff"] == job.cutoffs[0]).to_numpy(),
        names,
        frame.select(job.kept),
    )


def fit_propensity_on_dask(
    directory: Path,
    as_of: datetime,
    horizon_days: int,
    scheduler: str | None = None,
    kept: tuple[str, ...] = (),
    **params,
) -> tuple[PurchasePropensity, pl.DataFrame]:
    """`fit_propensity` of a bucketed shop on Dask: the model, and the `kept` columns of its
    training rows (with `purchased`), in `labelled`'s order, gathered for baselines that fit
    on a few columns."""
    import dask.array as da
    from dask import delayed
    from lightgbm.dask import DaskLGBMRegressor

    buckets = [path.resolve() for path in bucketed_dirs(directory, "--engine dask trains")]
    cutoffs = training_cutoffs(as_of, horizon_days, TRAINING_CUTOFFS, CUTOFF_STRIDE_DAYS)
    whole = read_shop(directory, validate=False)
    zones = {cutoff: builders.shop_timezone(whole.until(cutoff)) for cutoff in cutoffs}
    job = ExampleJob(
        cutoffs, horizon_days, zones, list(dict.fromkeys([*kept, *ORDER, "purchased"]))
    )
    model = PurchasePropensity(**params)

    with dask_client(scheduler) as client:
        shared = client.scatter(job, broadcast=True)
        parts = client.map(bucket_examples, buckets, job=shared, pure=False)
        counts, every_names = zip(
            *client.gather(client.map(Examples.summary, parts, pure=False)), strict=True
        )
        names = every_names[0]
        if any(other != names for other in every_names):
            raise ModelFitError("the buckets' propensity examples differ in their features")
        total = {key: sum(c[key] for c in counts) for key in counts[0]}
        if total["bought"] in (0, total["all"]):
            raise ModelFitError("purchase propensity needs both buyers and non-buyers to learn")

        def stacked(which: str):
            """The `which` rows of every part as one Dask array each, part by part."""
            features, bought = [], []
            for part, count in zip(parts, counts, strict=True):
                if count[which]:
                    rows = delayed(Examples.rows)(part, which)
                    features.append(
                        da.from_delayed(rows[0], (count[which], len(names)), np.float32)
                    )
                    bought.append(da.from_delayed(rows[1], (count[which],), np.float32))
            return da.concatenate(features), da.concatenate(bought)

        def booster(which: str) -> DaskLGBMRegressor:
            params = model.booster_params()  # the binary objective among them
            del params["num_threads"]  # lightgbm.dask gives each worker its own thread count
            learner = DaskLGBMRegressor(client=client, n_estimators=model.n_estimators, **params)
            return learner.fit(*stacked(which))

        calibration = None
        if total["earlier"] and 0 < total["latest_bought"] < total["latest"]:
            latest, bought = stacked("latest")
            scores = booster("earlier").predict(latest, raw_score=True).compute()
            calibration = platt_map(scores, bought.compute())
        fitted = booster("all").booster_
        kept_rows = pl.concat(client.gather(client.map(attrgetter("kept"), parts, pure=False)))
    order = kept_rows.sort(*ORDER, descending=[True, False])  # `labelled`'s order
    return model.adopt(fitted, names, calibration), order.drop([c for c in ORDER if c not in kept])
