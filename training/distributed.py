"""Fitting on Dask (`train propensity|crosssell --engine dask`): the propensity model and the
product ranker learn with LightGBM's own distributed learner, `lightgbm.dask`, from examples
the workers build bucket by bucket and keep.

A bucket's propensity examples (features at every training cut-off, labels after it) depend on
that bucket's customers and the shop's fallback time zones alone; its ranker examples (each
customer's candidate products at every cut-off, labelled bought or not) on its customers and
the shop-wide part of candidate generation at each cut-off (`ProductRanker.items`: neighbours,
item statistics, ALS item factors), computed once here and sent to every worker. So they are
built where the task runs and stay there (only the few columns a caller asks to keep come
back): LightGBM's Dask learner fits data parallel over the workers that hold them, agreeing
on each split over the network. Propensity fits the regressor with the binary objective, not
the classifier: the classifier encodes labels on each worker apart, so a worker holding only
buyers would learn them as class 0. Its Platt map is learned as `PurchasePropensity.fit` learns
it: a first booster, on the earlier cut-offs, scores the latest one out of time. The ranker
fits LambdaRank with `DaskLGBMRanker`, each bucket's groups (a customer's candidates) whole in
its own part.

Examples are identical across engines; the fitted trees are not (each worker bins and bags
its own rows, in the order the cluster placed them), so the model is of the same kind, not the
same bits, nor the same bits on a rerun. Prefer one node while the examples fit its memory:
LightGBM there has early stopping for tuning, and no cluster to start or network to cross
every boosting round (README, "Beyond one machine: buckets and Dask", has the figures).
"""

from __future__ import annotations

from collections.abc import Callable
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
from sendwise.models.products import NOTHING_BOUGHT, PAIR_FEATURES, Items, ProductRanker
from sendwise.models.propensity import PurchasePropensity, platt_map

from .backtest import product_cutoffs, product_example, propensity_features
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

    def __sizeof__(self) -> int:
        """What a worker holds (Dask sizes results by it, to know when to spill)."""
        arrays = (self.features, self.bought, self.latest)
        return sum(array.nbytes for array in arrays) + int(self.kept.estimated_size())

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
            shapes = [((count[which], len(names)), (count[which],)) for count in counts]
            return on_workers(parts, shapes, Examples.rows, (which,))

        def booster(which: str) -> DaskLGBMRegressor:
            params = on_cluster(model.booster_params())  # the binary objective among them
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


HEADS = ("all", "new")  # the ranker's boosters: every product; products new to the customer


@dataclass(frozen=True)
class PairJob:
    """What every bucket's ranker examples share: the ranker's settings, the horizon, and
    the shop-wide part of candidate generation at each cut-off, the latest first."""

    ranker: ProductRanker
    horizon_days: int
    items: dict[datetime, Items]


@dataclass(frozen=True)
class RankerExamples:
    """One bucket's LambdaRank examples for each head: features, bought, group sizes."""

    heads: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]

    def arrays(self, head: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.heads[head]

    def __sizeof__(self) -> int:
        """What a worker holds (Dask sizes results by it, to know when to spill)."""
        return sum(array.nbytes for arrays in self.heads.values() for array in arrays)

    def summary(self) -> dict[str, tuple[int, int]]:
        """Per head, rows and groups: what the client plans the fit from."""
        return {
            head: (len(bought), len(groups)) for head, (_, bought, groups) in self.heads.items()
        }


def bucket_pairs(bucket: Path, job: PairJob) -> RankerExamples:
    """The ranker's examples of one bucket's customers: the function each Dask task runs.
    `ProductRanker.fit` learns from the same rows of every bucket together."""
    shop = read_bucket(bucket)
    frames = []
    for cutoff, items in job.items.items():
        history, _, bought = product_example(shop, cutoff, job.horizon_days)
        if not history.is_empty():  # else none of this bucket's customers had bought yet
            frames.append(job.ranker.labelled_pairs(history, cutoff, bought, items))
    if not frames:
        width = len(PAIR_FEATURES)
        none = (np.empty((0, width), np.float32), np.empty(0, np.float32), np.empty(0, np.int64))
        return RankerExamples(dict.fromkeys(HEADS, none))
    train = ProductRanker.stack(frames)
    return RankerExamples(
        {head: job.ranker.teaching(train, new_only=head == "new") for head in HEADS}
    )


def fit_products_on_dask(
    directory: Path, as_of: datetime, horizon_days: int, scheduler: str | None = None, **params
) -> ProductRanker:
    """`fit_products` of a bucketed shop on Dask: the shop-wide part of each cut-off's
    candidates here, once; every bucket's examples on the workers; LambdaRank there."""
    from lightgbm.dask import DaskLGBMRanker

    buckets = [path.resolve() for path in bucketed_dirs(directory, "--engine dask trains")]
    whole = read_shop(directory, validate=False)
    ranker = ProductRanker(**params)
    items = {
        cutoff: ranker.items(builders.interactions(whole, cutoff).collect(), cutoff)
        for cutoff in product_cutoffs(as_of, horizon_days)
    }
    boosters = []
    with dask_client(scheduler) as client:
        shared = client.scatter(PairJob(ranker, horizon_days, items), broadcast=True)
        parts = client.map(bucket_pairs, buckets, job=shared, pure=False)
        counts = client.gather(client.map(RankerExamples.summary, parts, pure=False))
        if not all(sum(count[head][1] for count in counts) for head in HEADS):
            raise ModelFitError(NOTHING_BOUGHT)  # checked before either head is fitted
        for head in HEADS:
            shapes = [
                ((rows, len(PAIR_FEATURES)), (rows,), (groups,))
                for rows, groups in (count[head] for count in counts)
            ]
            features, bought, groups = on_workers(
                parts, shapes, RankerExamples.arrays, (head,), (np.float32, np.float32, np.int64)
            )
            params = on_cluster(ranker.booster_params())
            learner = DaskLGBMRanker(client=client, n_estimators=ranker.n_estimators, **params)
            boosters.append(learner.fit(features, bought, group=groups).booster_)
    return ranker.adopt(*boosters)


def on_cluster(params: dict) -> dict:
    """A booster's parameters for `lightgbm.dask`, which gives each worker its own thread
    count."""
    return {name: value for name, value in params.items() if name != "num_threads"}


def on_workers(
    parts: list,
    shapes: list[tuple[tuple[int, ...], ...]],
    pick: Callable,
    args: tuple,
    dtypes: tuple[type, ...] = (np.float32, np.float32),
) -> list:
    """The arrays `pick(part, *args)` gives of each part the workers hold, each array
    concatenated over the parts into one Dask array without coming here; `shapes[k]` are
    part k's arrays' shapes (a part with no rows is left out), `dtypes` the arrays' types (by
    default features and labels)."""
    import dask.array as da
    from dask import delayed

    columns = []
    for part, part_shapes in zip(parts, shapes, strict=True):
        if not part_shapes[0][0]:
            continue
        arrays = delayed(pick, nout=len(dtypes))(part, *args)
        columns.append(
            [
                da.from_delayed(array, shape, dtype)
                for array, shape, dtype in zip(arrays, part_shapes, dtypes, strict=True)
            ]
        )
    return [da.concatenate(column) for column in zip(*columns, strict=True)]
