"""The decision engine: champion models turned into a `Snapshot` of every known customer, and
batch decisions from it through the one policy (`sendwise.policy.decide`).

`Champions.load(shop)` resolves the `champion` alias of each of the shop's models through the
registry room, and a champion that does not fit the data is refused in one line;
`build_snapshot` scores a shop known at T; `score_batch` decides for every customer in it,
exactly as the API would for each of them with the same context and clock.

At scale a batch is a list of parts: what the whole shop contributes (`shop_context`,
`score_job`) is computed once, then each part (a bucket of a partitioned shop, on the engine
seam; or the whole shop) is decided from its own customers' rows alone, so the parts' decisions
are the whole's; `export_batch` streams them into one file and one logged batch.
"""

from __future__ import annotations

import contextvars
import logging
import shutil
import tempfile
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from sendwise.errors import SendwiseError
from sendwise.features import builders
from sendwise.features.engine import Engine, Progress, run_buckets
from sendwise.features.shop import Shop, bucket_dirs, read_bucket
from sendwise.models.base import COMPILE_ROWS, keep_compiled_trees, part_of_batch
from sendwise.models.products import Items, ProductRanker, Ranking
from sendwise.models.propensity import PurchasePropensity
from sendwise.models.sendtime import SendTimeModel
from sendwise.models.uplift import OfferModel
from sendwise.policy.config import Settings
from sendwise.policy.decide import SNAPSHOT_SCHEMA, Context, Snapshot, decide
from sendwise.store import registry
from sendwise.store.decisions import DecisionLog, Segment
from sendwise.store.files import PartWriter, atomic_path, frame_path
from sendwise.store.sends import SendHistory, send_history
from sendwise.store.settings import home

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
        keep_compiled_trees(home() / "compiled-trees")  # compiled once per machine and model
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


@dataclass(frozen=True)
class ShopContext:
    """What a snapshot of some of a shop's customers (a bucket, or all of them) takes from
    the whole shop at `as_of`, computed once: every other input is per customer, so the
    customers' rows come out the same whichever part they are scored in."""

    as_of: datetime
    settings: Settings
    timezone: str  # the fallback zone: the shop's most common
    rows: int  # the shop's customers: sizes tree predictions (`part_of_batch`)
    out_of_stock: list[str]
    popular: list[str]
    trending: list[str]
    items: Items | None  # the product ranker's shop-wide part; None without one


def shop_context(
    champions: Champions, shop: Shop, as_of: datetime, settings: Settings | None = None
) -> ShopContext:
    """The whole shop's part of every snapshot at `as_of` (one read of its purchases)."""
    settings = settings or Settings()
    rules = settings.products
    rows = shop.customers.select(pl.len()).collect().item()
    if rows >= COMPILE_ROWS:
        champions.precompile()
    history = builders.interactions(shop, as_of).collect()
    out_of_stock = (
        shop.products.filter(~pl.col("in_stock").fill_null(True)).collect()["product_id"].to_list()
    )
    popular, trending = popular_and_trending(
        history, as_of, out_of_stock, rules.count, rules.cross_sell, rules.trending_days
    )
    items = None
    if champions.products is not None and not history.is_empty():
        items = champions.products.items(history, as_of)
    timezone = builders.shop_timezone(shop.until(as_of))
    return ShopContext(as_of, settings, timezone, rows, out_of_stock, popular, trending, items)


def build_snapshot(
    champions: Champions, shop: Shop, as_of: datetime, settings: Settings | None = None
) -> Snapshot:
    """What the champions say of every customer known at `as_of`: segment, suppression,
    propensity and its main driver, products, cross-sell, best hours, offer values."""
    return snapshot_of(champions, shop, shop_context(champions, shop, as_of, settings))


def snapshot_of(champions: Champions, shop: Shop, context: ShopContext) -> Snapshot:
    """`build_snapshot` of the customers of `shop` (the whole shop or one bucket of it),
    with the whole shop's `context`."""
    as_of, settings = context.as_of, context.settings
    with part_of_batch(context.rows), ThreadPoolExecutor(1) as beside:
        # the product lists, the costliest part, are ranked beside the rest: the rest is
        # mostly one thread's work, and the lists' chunks fill the other core meanwhile
        lists_ranked = beside.submit(
            contextvars.copy_context().run, _product_lists, champions, shop, context
        )
        activity = builders.activity_hours(shop, as_of, context.timezone).collect()
        features = builders.customer_features(
            shop, as_of, activity.lazy(), context.timezone
        ).collect()
        champions.check(features.columns)
        reasons = champions.propensity.top_reasons(features, k=1, trees=REASON_TREES)[:, 0]
        groups = features.select("customer_id", group=pl.col("timezone"))
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
        arms: tuple[str, ...] = ()
        offer_values = []
        if champions.offer is not None:
            model = champions.offer
            values, cost = settings.offers.policy("snapshot").expected_values(
                model, features.select(model.feature_names)
            )
            arms = tuple(model.arms)
            offer_values = [
                *(pl.Series(f"value_{a}", values[:, k]) for k, a in enumerate(arms)),
                *(pl.Series(f"cost_{a}", cost[:, k]) for k, a in enumerate(arms)),
            ]
        lists = lists_ranked.result()
        frame = frame.join(lists, on="customer_id", how="left", maintain_order="left")
        frame = frame.select(pl.col(c).cast(t) for c, t in SNAPSHOT_SCHEMA.items())
        frame = frame.with_columns(offer_values)
    return Snapshot(frame, context.popular, context.trending, champions.version_label, arms)


def _product_lists(champions: Champions, shop: Shop, context: ShopContext) -> pl.DataFrame:
    """Per buyer `products` (everything, repeat purchases included, not just bought unless
    due) and `cross_sell` (never bought, by the new-item head), both in stock only."""
    rules, as_of = context.settings.products, context.as_of
    empty = pl.DataFrame(schema={"customer_id": pl.String, "products": pl.List(pl.String)})
    model = champions.products
    history = builders.interactions(shop, as_of).collect()
    if model is None or context.items is None or history.is_empty():
        return empty.with_columns(cross_sell=pl.lit(None, pl.List(pl.String)))
    recent = history.filter(
        pl.col("last_ordered_at") > as_of - timedelta(days=rules.recently_bought_days)
    ).select("customer_id", "product_id")
    candidates = model.candidate_context(history, as_of, context.items)
    ranked, new = model.rank_lists(
        candidates,
        [Ranking(rules.count, exclude=recent), Ranking(rules.cross_sell, new_only=True)],
        context.out_of_stock,
    )
    new = new.select("customer_id", cross_sell="products")
    return ranked.select("customer_id", "products").join(
        new, on="customer_id", how="full", coalesce=True
    )


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


@dataclass(frozen=True)
class ScoreJob:
    """A batch's shop-wide part, handed to every bucket: the snapshots' context, whose
    champions (each worker loads them once), the campaign, the earlier marketing sends the
    caps count (read once for every customer), and where each bucket writes its decisions."""

    context: ShopContext
    shop: str
    versions: dict[str, str | None]
    campaign: str
    batch_id: str
    sent: pl.DataFrame | None  # `customer_id`, `sent_at`; None: no caps
    staging: Path | None = None  # a directory every engine's workers can write to


@dataclass(frozen=True)
class Part:
    """One part of a batch as its bucket wrote it: where, and what it holds."""

    path: Path | None  # None: no customers in this part
    rows: int
    sends: int
    holdouts: int


@dataclass(frozen=True)
class Exported:
    """What `export_batch` wrote and logged."""

    batch_id: str
    rows: int
    sends: int
    holdouts: int


_LOADED: dict[tuple[str, str, tuple], Champions] = {}  # per process: once per worker


def _key(shop: str, versions: dict[str, str | None]) -> tuple[str, str, tuple]:
    """Which registry, shop and versions: another store's v1 is another model."""
    return registry.tracking_uri(), shop, tuple(sorted(versions.items()))


def champions_of(shop: str, versions: dict[str, str | None]) -> Champions:
    """The shop's champions of these versions, loaded once per process (a Dask worker loads
    them from the registry on its first bucket)."""
    key = _key(shop, versions)
    if key not in _LOADED:
        _LOADED[key] = Champions.load(shop, versions)
    return _LOADED[key]


def score_job(
    champions: Champions,
    shop: Shop,
    as_of: datetime,
    settings: Settings | None = None,
    campaign: str = "default",
    history: SendHistory | None = None,
    batch_id: str = "batch",
    staging: Path | None = None,
) -> ScoreJob:
    """Everything the whole `shop` contributes to a batch at `as_of`, computed once."""
    context = shop_context(champions, shop, as_of, settings)
    versions = {task: champions.versions.get(task) for task in TASKS}
    _LOADED[_key(champions.shop, versions)] = champions  # this process has them already
    sent, since = None, context.settings.caps.since(as_of)
    if history is not None and since is not None:
        everyone = None  # the decision log answers for every customer at once
        if not isinstance(history, DecisionLog):
            everyone = builders.known_customers(shop.until(as_of)).collect()["customer_id"]
        sent = history.sends(everyone, since, campaign)
    return ScoreJob(context, champions.shop, versions, campaign, batch_id, sent, staging)


def decide_part(champions: Champions, shop: Shop, job: ScoreJob) -> pl.DataFrame:
    """One decision per customer of `shop` (the whole shop, or one bucket of it)."""
    return decide_snapshot(snapshot_of(champions, shop, job.context), job)


def decide_snapshot(snapshot: Snapshot, job: ScoreJob) -> pl.DataFrame:
    """One decision per customer of `snapshot`: the policy's half of `decide_part`."""
    recipients = snapshot.frame.select("customer_id")
    sent = job.sent
    if sent is not None:
        sent = sent.filter(pl.col("customer_id").is_in(recipients["customer_id"].implode()))
    as_of = job.context.as_of
    context = Context(campaign=job.campaign, now=as_of)
    return decide(snapshot, recipients, context, job.context.settings, as_of, sent, job.batch_id)


def score_bucket(bucket: Path, job: ScoreJob) -> Part:
    """Decide for one bucket's customers and write them to the job's staging directory: the
    function the engines run per bucket. The bucket was checked when it was partitioned."""
    champions = champions_of(job.shop, job.versions)
    return write_part(
        decide_part(champions, read_bucket(bucket, validate=False), job), job, bucket.name
    )


def write_part(decisions: pl.DataFrame, job: ScoreJob, name: str) -> Part:
    if job.staging is None:
        raise SendwiseError("a part of a batch needs a staging directory to be written to")
    if decisions.is_empty():
        return Part(None, 0, 0, 0)
    path = job.staging / f"{name}.parquet"
    decisions.write_parquet(path)
    return Part(path, len(decisions), decisions["send"].sum(), decisions["holdout"].sum())


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
    job = score_job(champions, shop, as_of, settings, campaign, history, batch_id)
    return decide_part(champions, shop, job)


def export_batch(
    champions: Champions,
    shop: Shop,
    as_of: datetime,
    out: Path,
    settings: Settings | None = None,
    campaign: str = "default",
    decision_log: DecisionLog | None = None,
    engine: Engine | str = Engine.local,
    scheduler: str | None = None,
    progress: Progress | None = None,
) -> Exported:
    """Batch decisions written to `out` and appended to the decision log, both or neither.

    A bucketed shop is scored bucket by bucket on `engine` (a plain one as one part), each
    bucket's decisions written to a staging directory beside `out` as it finishes and then,
    in the background while later buckets are scored, numbered in order into the staged
    file and encoded for the log (`_Assembly`); the log takes every part in one
    transaction, and only then is the file put in place.
    """
    out = frame_path(out)
    decision_log = decision_log or DecisionLog()
    history = send_history(decision_log)
    batch_id = uuid.uuid4().hex
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.parts.", dir=out.parent))
    try:
        job = score_job(champions, shop, as_of, settings, campaign, history, batch_id, staging)
        buckets = bucket_dirs(shop.directory) if shop.directory is not None else []
        offers = job.context.settings.offers
        if (
            buckets
            and champions.offer is not None
            and (offers.max_share or offers.budget is not None)
        ):
            raise SendwiseError(
                "[offers] max_share and budget hold over the whole batch: score this shop "
                "unpartitioned (bucket by bucket they would hold per bucket)"
            )
        with _Assembly(out, batch_id, as_of) as assembly:
            if buckets:
                parts = run_buckets(
                    score_bucket, buckets, job, engine, scheduler, progress, assembly.add
                )
            else:
                parts = [write_part(decide_part(champions, shop, job), job, "whole")]
                assembly.add(parts[0])
                if progress is not None:
                    progress(1)
            sent = assembly.log(decision_log)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    history.record_sends(sent, as_of, campaign)
    return Exported(
        batch_id,
        sum(p.rows for p in parts),
        sum(p.sends for p in parts),
        sum(p.holdouts for p in parts),
    )


class _Assembly:
    """A batch's parts, numbered in bucket order, into its file and its log segments: each
    part as its bucket finishes, in a background thread, so all but the last are written
    and encoded while later buckets are scored. The log takes them in one transaction
    (`log`), and the file is put in place once it has them; until then a failure leaves
    neither. Memory holds the encoded segments (46 MB for the 1M bench shop) and one part."""

    def __init__(self, out: Path, batch_id: str, as_of: datetime):
        self.batch_id, self.as_of = batch_id, as_of
        self._stack = ExitStack()
        target = self._stack.enter_context(atomic_path(out))
        self._writer = self._stack.enter_context(PartWriter(target, out.suffix))
        self._background = self._stack.enter_context(
            ThreadPoolExecutor(1, thread_name_prefix="sendwise-assembly")
        )
        self._segments: list[Future[Segment]] = []
        self._rows = 0

    def __enter__(self) -> _Assembly:
        return self

    def __exit__(self, *error: object) -> None:
        self._stack.__exit__(*error)

    def add(self, part: Part) -> None:
        """The next part of the batch (in bucket order)."""
        if part.path is None:
            return
        first, self._rows = self._rows, self._rows + part.rows
        self._segments.append(self._background.submit(self._encode, part, first))

    def _encode(self, part: Part, first: int) -> Segment:
        frame = pl.read_parquet(part.path).with_columns(
            decision_id=pl.format(
                "{}-{}", pl.lit(self.batch_id), pl.int_range(first, first + part.rows)
            )
        )
        self._writer.write(frame)
        return DecisionLog.segment(frame, self.batch_id, self.as_of)

    def log(self, decision_log: DecisionLog) -> list[str]:
        """Every part into the log as one batch, once the file is whole; who was sent one."""
        segments = [segment.result() for segment in self._segments]
        self._writer.close()
        decision_log.append_parts(self.batch_id, self.as_of, segments, columnar=True)
        return [customer for segment in segments for customer in segment.sent.to_list()]


def export_decisions(
    champions: Champions,
    shop: Shop,
    as_of: datetime,
    out: Path,
    settings: Settings | None = None,
    campaign: str = "default",
    decision_log: DecisionLog | None = None,
) -> pl.DataFrame:
    """`export_batch` of a shop small enough to hold: the decisions, as written to `out`."""
    export_batch(champions, shop, as_of, out, settings, campaign, decision_log)
    return pl.read_parquet(out) if frame_path(out).suffix == ".parquet" else pl.read_csv(out)
