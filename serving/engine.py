"""The decision engine: champion models turned into a `Snapshot` of every known customer, and
batch decisions from it through the one policy (`sendwise.policy.decide`).

`Champions.load(shop)` resolves the `champion` alias of each of the shop's models through the
registry room, and a champion that does not fit the data is refused in one line;
`build_snapshot` scores a shop known at T; `score_batch` decides for every customer in it,
exactly as the API would for each of them with the same context and clock.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from sendwise.errors import SendwiseError
from sendwise.features import builders
from sendwise.features.shop import Shop
from sendwise.models.base import COMPILE_ROWS
from sendwise.models.products import ProductRanker
from sendwise.models.propensity import PurchasePropensity
from sendwise.models.sendtime import SendTimeModel
from sendwise.models.uplift import OfferModel
from sendwise.policy.config import Settings
from sendwise.policy.decide import SNAPSHOT_SCHEMA, Context, Snapshot, decide
from sendwise.store import registry
from sendwise.store.decisions import DecisionLog
from sendwise.store.files import atomic_path, frame_path, write_frame_to
from sendwise.store.sends import SendHistory, send_history

log = logging.getLogger(__name__)

REASON_TREES = 20  # propensity reasons from the first trees' SHAP values: the coarse effects
TASKS = {
    "propensity": PurchasePropensity,
    "sendtime": SendTimeModel,
    "crosssell": ProductRanker,
    "offer": OfferModel,
}
REQUIRED = ("propensity", "sendtime")  # decisions need these; the others are optional


class ChampionError(SendwiseError):
    """A shop's champion that cannot serve: its files do not load, or it reads columns the
    data do not have. Names the model and version, so a server can fall back from it."""

    def __init__(self, message: str, shop: str, task: str, version: str):
        super().__init__(message)
        self.shop, self.task, self.version = shop, task, version


def fix_hint(shop: str, task: str) -> str:
    return (
        f"fix: sendwise rollback {task} --shop-name {shop}, or train one on this shop's data "
        f"and promote it (sendwise train {task} --shop DIR; sendwise promote {task} --shop DIR)"
    )


@dataclass(frozen=True)
class Champions:
    propensity: PurchasePropensity
    sendtime: SendTimeModel
    versions: dict[str, str]
    products: ProductRanker | None = None  # none trained (one product): popular products
    offer: OfferModel | None = None  # until one is champion, offers follow segment rules
    shop: str = "shop"

    @property
    def version_label(self) -> str:
        """`task:version` of every champion, as decisions carry it (`model_versions`)."""
        return ",".join(f"{k}:{v}" for k, v in sorted(self.versions.items()))

    def precompile(self) -> None:
        """Start compiling the trees a large batch runs, while its features are being built."""
        for model in (self.propensity, self.products, self.offer):
            if model is not None:
                model.precompile()

    @classmethod
    def load(cls, shop: str, versions: dict[str, str | None] | None = None) -> Champions:
        """The shop's champions, or the given versions of its models (a `None` optional
        model: none). A model whose files do not load is a `ChampionError` naming it."""
        if versions is None:
            versions = {}
            for task in TASKS:
                found = registry.alias_version(shop, task, registry.CHAMPION)
                versions[task] = found.version if found else None
        loaded, kept = {}, {}
        for task, kind in TASKS.items():
            version = versions.get(task)
            if version is None and task in REQUIRED:
                registry.download(shop, task)  # the registry's "no champion ..." error
            if version is None:
                continue
            try:
                path, kept[task] = registry.download(shop, task, version=version)
                loaded[task] = kind.load(path)
            except SendwiseError:
                raise
            except Exception as error:  # noqa: BLE001 - any failure to load is this model's
                first = " ".join(str(error).split())[:200] or type(error).__name__
                raise ChampionError(
                    f"{registry.label(shop, task)} v{version} does not load: {first}; "
                    + fix_hint(shop, task),
                    shop,
                    task,
                    str(version),
                ) from error
        return cls(
            loaded["propensity"],
            loaded["sendtime"],
            kept,
            loaded.get("crosssell"),
            loaded.get("offer"),
            shop,
        )

    def check(self, columns: list[str]) -> None:
        """Refuse, in one line, a champion that reads columns the data do not have."""
        have = set(columns)
        for task, model in (("propensity", self.propensity), ("offer", self.offer)):
            if model is None:
                continue
            needed = model.feature_names_ if task == "propensity" else model.feature_names
            missing = [c for c in needed if c not in have]
            if missing:
                shown = ", ".join(missing[:5])
                if len(missing) > 5:
                    shown += f" (first 5 of {len(missing)})"
                version = self.versions[task]
                raise ChampionError(
                    f"champion {registry.label(self.shop, task)} v{version} does not fit this "
                    f"data: it reads columns the shop's features do not have: {shown}; "
                    + fix_hint(self.shop, task),
                    self.shop,
                    task,
                    version,
                )


def build_snapshot(
    champions: Champions, shop: Shop, as_of: datetime, settings: Settings | None = None
) -> Snapshot:
    """What the champions say of every customer known at `as_of`: segment, suppression,
    propensity and its main driver, products, cross-sell, best hours, offer values."""
    settings = settings or Settings()
    if shop.customers.select(pl.len()).collect().item() >= COMPILE_ROWS:
        champions.precompile()
    activity = builders.activity_hours(shop, as_of).collect()
    features = builders.customer_features(shop, as_of, activity.lazy()).collect()
    champions.check(features.columns)
    reasons = champions.propensity.top_reasons(features, k=1, trees=REASON_TREES)[:, 0]
    groups = features.select("customer_id", group=pl.col("timezone"))
    lists, popular, trending = _product_lists(champions, shop, as_of, settings)
    frame = features.select(
        "customer_id",
        "timezone",
        settings.segments.expression(),
        unsubscribed=(pl.col("unsubscribes_total") > 0) | (pl.col("complaints_total") > 0),
        bounces=pl.col("bounces_total").cast(pl.Int64),
        purchase_propensity=pl.Series(champions.propensity.predict_proba(features)),
        propensity_reason=pl.Series(reasons.tolist(), dtype=pl.String).fill_null("base"),
        best_hours=pl.Series(champions.sendtime.best_hours(activity, groups, k=3)).cast(
            pl.List(pl.Int64)
        ),
    )
    frame = frame.join(lists, on="customer_id", how="left", maintain_order="left")
    frame = frame.select(pl.col(c).cast(t) for c, t in SNAPSHOT_SCHEMA.items())
    arms: tuple[str, ...] = ()
    if champions.offer is not None:
        model = champions.offer
        values, cost = settings.offers.policy("snapshot").expected_values(
            model, features.select(model.feature_names)
        )
        arms = tuple(model.arms)
        frame = frame.with_columns(
            *(pl.Series(f"value_{a}", values[:, k]) for k, a in enumerate(arms)),
            *(pl.Series(f"cost_{a}", cost[:, k]) for k, a in enumerate(arms)),
        )
    return Snapshot(frame, popular, trending, champions.version_label, arms)


def _product_lists(
    champions: Champions, shop: Shop, as_of: datetime, settings: Settings
) -> tuple[pl.DataFrame, list[str], list[str]]:
    """Per buyer `products` (everything, repeat purchases included, not just bought unless
    due) and `cross_sell` (never bought, by the new-item head), both in stock only; and the
    popular and trending lists cold starts and holdouts get."""
    rules = settings.products
    history = builders.interactions(shop, as_of).collect()
    out_of_stock = (
        shop.products.filter(~pl.col("in_stock").fill_null(True)).collect()["product_id"].to_list()
    )
    popular, trending = popular_and_trending(
        history, as_of, out_of_stock, rules.count, rules.cross_sell, rules.trending_days
    )
    empty = pl.DataFrame(schema={"customer_id": pl.String, "products": pl.List(pl.String)})
    model = champions.products
    if model is None or history.is_empty():
        return empty.with_columns(cross_sell=pl.lit(None, pl.List(pl.String))), popular, trending
    recent = history.filter(
        pl.col("last_ordered_at") > as_of - timedelta(days=rules.recently_bought_days)
    ).select("customer_id", "product_id")
    ranked = model.rank(history, as_of, n=rules.count, exclude=recent, unavailable=out_of_stock)
    new = model.rank(
        history, as_of, n=rules.cross_sell, new_only=True, unavailable=out_of_stock
    ).select("customer_id", cross_sell="products")
    lists = ranked.select("customer_id", "products").join(
        new, on="customer_id", how="full", coalesce=True
    )
    return lists, popular, trending


def popular_and_trending(
    history: pl.DataFrame,
    as_of: datetime,
    unavailable: list[str],
    n_popular: int,
    n_trending: int,
    days: int,
) -> tuple[list[str], list[str]]:
    """Most bought in the last `days` days; and the fastest growing against the `days`
    before (at least two buyers now), not already popular, filled up by popularity."""
    recent = pl.col("last_ordered_at") > as_of - timedelta(days=days)
    before = pl.col("last_ordered_at").is_between(
        as_of - timedelta(days=2 * days), as_of - timedelta(days=days), closed="right"
    )
    counts = (
        history.filter(~pl.col("product_id").is_in(unavailable))
        .group_by("product_id")
        .agg(now=recent.sum(), before=before.sum())
        .filter(pl.col("now") > 0)
        .sort(["now", "product_id"], descending=[True, False])
    )
    popular = counts["product_id"].head(n_popular).to_list()
    growth = (pl.col("now") / (pl.col("before") + 1)).alias("growth")
    rising = (
        counts.filter(~pl.col("product_id").is_in(popular) & (pl.col("now") >= 2))
        .with_columns(growth)
        .sort(["growth", "now", "product_id"], descending=[True, True, False])["product_id"]
        .head(n_trending)
        .to_list()
    )
    fill = [p for p in counts["product_id"].to_list() if p not in popular and p not in rising]
    return popular, (rising + fill)[:n_trending]


def score_batch(
    champions: Champions,
    shop: Shop,
    as_of: datetime,
    settings: Settings | None = None,
    campaign: str = "default",
    history: SendHistory | None = None,
    batch_id: str = "batch",
) -> pl.DataFrame:
    """One decision per customer known at `as_of`, decided at `as_of` for `campaign`;
    frequency caps count the sends in `history` (none: no caps)."""
    settings = settings or Settings()
    snapshot = build_snapshot(champions, shop, as_of, settings)
    recipients = snapshot.frame.select("customer_id")
    sent = None
    windows = settings.caps.windows()
    if history is not None and windows:
        since = as_of - timedelta(days=windows[-1])
        sent = history.sends(recipients["customer_id"].to_list(), since, campaign)
    context = Context(campaign=campaign, now=as_of)
    return decide(snapshot, recipients, context, settings, as_of, sent, batch_id)


def export_decisions(
    champions: Champions,
    shop: Shop,
    as_of: datetime,
    out: Path,
    settings: Settings | None = None,
    campaign: str = "default",
    decision_log: DecisionLog | None = None,
) -> pl.DataFrame:
    """Batch decisions written to `out` and appended to the decision log, both or neither:
    the file is staged, the batch logged whole, and only then the file put in place."""
    out = frame_path(out)
    decision_log = decision_log or DecisionLog()
    history = send_history(decision_log)
    batch_id = uuid.uuid4().hex
    decisions = score_batch(champions, shop, as_of, settings, campaign, history, batch_id)
    with atomic_path(out) as staging:
        write_frame_to(decisions, staging, out.suffix)
        decision_log.append(batch_id, as_of, decisions)
    history.record_sends(decisions.filter("send")["customer_id"].to_list(), as_of, campaign)
    return decisions
