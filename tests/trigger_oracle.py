"""An independent oracle for the real-time triggers (DESIGN: Events and triggers).

Written from the trigger spec alone, not from the engine (`policy/triggers.py`,
`serving/triggers.py`): the timers each trigger starts, restarts and cancels are derived with
Polars joins, group-bys and window functions over the whole stream; a timer survives when the
next start or cancel of its key comes after its due time. Only what is sequential by nature
(cooldowns and the gap, which depend on earlier firings) walks the small frame of due timers
in firing order.

Processing order: items (events and catalog updates) by (at, catalog before event at one
instant, row order in their own frame) -- `pos` below. A timer due at d fires after every
item stamped at or before d; `fire_pos` is the last such item's `pos`.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from sendwise.policy.config import Settings

HOUR = 3_600_000_000  # µs
SIGNAL_WINDOW = 720 * HOUR  # behaviour counted before retargeting
BEHAVIOUR = ("product_viewed", "product_list_viewed", "products_searched", "product_added")
RETARGETING = frozenset(
    {
        "cart_abandoned",
        "browse_abandoned",
        "search_abandoned",
        "price_drop",
        "back_in_stock",
        "low_stock",
    }
)
NONE_KEY = ""  # the key subject of a customer's single timer (cart, search, welcome, win-back)
C = "customer_id"
OUTPUT = {"trigger": pl.String, C: pl.String, "subject": pl.String, "fired_at": pl.Int64}
# one start (or cancel) of a timer
ACTION = {
    C: pl.String,
    "trigger": pl.String,
    "key": pl.String,  # the timer's key subject (NONE_KEY for a single timer)
    "subject": pl.String,  # the firing's subject when known at start
    "pos": pl.Int64,  # the item that started it
    "sub": pl.Int64,  # order of starts within one item
    "at": pl.Int64,
    "due": pl.Int64,  # null: a cancel
}


def us(hours: float) -> int:
    return int(round(hours * HOUR))


def expected_firings(
    events: pl.DataFrame, catalog: pl.DataFrame, until: int, rules=None
) -> pl.DataFrame:
    """What the spec says fires by `until`: trigger, customer_id, subject, fired_at (µs),
    sorted by (fired_at, priority, start order)."""
    rules = rules if rules is not None else Settings().triggers
    ev, cat, stamps = _in_order(events, catalog)
    cart = _Cart(ev)
    orders = ev.filter(pl.col("type") == "order_completed")
    items = (
        orders.select(C, "pos", "at", "products")
        .with_columns(idx=pl.int_ranges(pl.col("products").list.len()))
        .explode("products", "idx")
        .rename({"products": "product_id"})
        .drop_nulls("product_id")
    )
    makers = {
        "cart_abandoned": lambda s: _cart_actions(ev, cart, s),
        "browse_abandoned": lambda s: _browse_actions(ev, s),
        "search_abandoned": lambda s: _search_actions(ev, s),
        "price_drop": lambda s: _price_drop_actions(ev, cat, items, s),
        "back_in_stock": lambda s: _back_in_stock_actions(ev, cat, items, s),
        "low_stock": lambda s: _low_stock_actions(cat, cart, s),
        "replenishment_due": lambda s: _replenishment_actions(items),
        "review_request": lambda s: _review_actions(orders, s),
        "welcome": lambda s: _welcome_actions(ev),
        "win_back": lambda s: _win_back_actions(orders, s),
    }
    actions = [
        _as_actions(make(rules.of(name)), name)
        for name, make in makers.items()
        if rules.of(name).enabled
    ]
    timers = _surviving(pl.concat(actions, how="vertical"), until)
    timers = timers.with_columns(
        fire_pos=pl.Series(np.searchsorted(stamps, timers["due"].to_numpy(), "right") - 1)
    )
    timers = _fire_checks(timers, ev, cart, rules)
    return _cooldowns_and_gap(timers, rules)


def _as_actions(frame: pl.DataFrame, trigger: str) -> pl.DataFrame:
    missing = [pl.lit(None, dtype).alias(n) for n, dtype in ACTION.items() if n not in frame]
    return (
        frame.with_columns(*missing)
        .with_columns(trigger=pl.lit(trigger))
        .select(list(ACTION))
        .cast(ACTION)
    )


def _in_order(events: pl.DataFrame, catalog: pl.DataFrame):
    """Events and catalog with their processing position `pos`, and every item's `at` in
    processing order."""
    cat = catalog.with_row_index("row").with_columns(kind=pl.lit(0))
    ev = events.with_row_index("row").with_columns(kind=pl.lit(1))
    order = (
        pl.concat([cat.select("at", "kind", "row"), ev.select("at", "kind", "row")])
        .sort("at", "kind", "row")
        .with_row_index("pos")
        .with_columns(pl.col("pos").cast(pl.Int64))
    )
    cat = cat.join(order.filter(pl.col("kind") == 0).select("row", "pos"), on="row")
    ev = ev.join(order.filter(pl.col("kind") == 1).select("row", "pos"), on="row")
    return ev.sort("pos"), cat.sort("pos"), order["at"].to_numpy()


class _Cart:
    """Cart contents at any position: per (customer, product) the running quantity (added
    minus removed) since the customer's last order, and the position of its last add."""

    def __init__(self, ev: pl.DataFrame):
        rows = ev.filter(
            pl.col("type").is_in(["product_added", "product_removed", "order_completed"])
        ).with_columns(seg=(pl.col("type") == "order_completed").cast(pl.Int64).cum_sum().over(C))
        self.orders = rows.filter(pl.col("type") == "order_completed").select(
            C, opos="pos", oseg="seg"
        )
        quantity = pl.col("quantity").fill_null(1)
        self.changes = (
            rows.filter(pl.col("type") != "order_completed")
            .with_columns(
                signed=pl.when(pl.col("type") == "product_added")
                .then(quantity)
                .otherwise(-quantity)
            )
            .with_columns(
                qty=pl.col("signed").cum_sum().over(C, "product_id", "seg"),
                last_add=pl.when(pl.col("type") == "product_added")
                .then(pl.col("pos"))
                .forward_fill()
                .over(C, "product_id"),
            )
        )

    def contents(self, queries: pl.DataFrame) -> pl.DataFrame:
        """For queries (qid, customer_id, at_pos): the products in that customer's cart after
        every item up to `at_pos`: qid, product_id, qty, last_add."""
        products = self.changes.select(C, "product_id").unique()
        state = (
            queries.select("qid", C, "at_pos")
            .join(products, on=C)
            .sort("at_pos")
            .join_asof(
                self.changes.select(C, "product_id", "pos", "seg", "qty", "last_add").sort("pos"),
                left_on="at_pos",
                right_on="pos",
                by=[C, "product_id"],
                strategy="backward",
                check_sortedness=False,
            )
            .sort("at_pos")
            .join_asof(
                self.orders.sort("opos"),
                left_on="at_pos",
                right_on="opos",
                by=C,
                strategy="backward",
                check_sortedness=False,
            )
        )
        return state.filter(
            (pl.col("seg") == pl.col("oseg").fill_null(0)) & (pl.col("qty") > 0)
        ).select("qid", "product_id", "qty", "last_add")


def _windowed_counts(rows: pl.DataFrame, lookback: int, counts: dict) -> pl.DataFrame:
    """For each row (by `pos`): aggregates over the same customer's rows processed so far with
    at in (at - lookback, at]; `counts` maps a name to an expression over the joined rows
    (the earlier row's columns suffixed `_w`)."""
    pairs = rows.join(rows, on=C, suffix="_w").filter(
        (pl.col("pos_w") <= pl.col("pos")) & (pl.col("at_w") > pl.col("at") - lookback)
    )
    return rows.join(pairs.group_by("pos").agg(**counts), on="pos", how="left")


def _cart_actions(ev: pl.DataFrame, cart: _Cart, rules) -> pl.DataFrame:
    """One timer a customer; its subject (the newest carted product) is read at fire time."""
    changes = ev.filter(pl.col("type").is_in(["product_added", "product_removed"]))
    inside = cart.contents(changes.select(C, qid="pos", at_pos="pos"))
    sizes = inside.group_by("qid").agg(size=pl.len())
    changes = changes.join(sizes, left_on="pos", right_on="qid", how="left").with_columns(
        due=pl.when(pl.col("size").fill_null(0) > 0).then(pl.col("at") + us(rules.wait_hours))
    )  # a change leaving the cart empty cancels
    orders = ev.filter(pl.col("type") == "order_completed").with_columns(
        due=pl.lit(None, pl.Int64)
    )  # an order cancels
    return pl.concat([changes.select(C, "pos", "at", "due"), orders.select(C, "pos", "at", "due")])


def _browse_actions(ev: pl.DataFrame, rules) -> pl.DataFrame:
    views = ev.filter(pl.col("type") == "product_viewed").select(
        C, "pos", "at", "product_id", "category"
    )
    counted = _windowed_counts(
        views,
        us(rules.lookback_hours),
        {
            "of_product": (pl.col("product_id_w") == pl.col("product_id")).sum(),
            "of_category": (pl.col("category_w") == pl.col("category")).sum(),
        },
    )
    by_category = (
        pl.col("category").is_not_null() & (pl.col("of_category") >= rules.min_category_views)
        if rules.min_category_views is not None
        else pl.lit(False)
    )
    key = (
        pl.when(pl.col("of_product") >= rules.min_signals)
        .then(pl.col("product_id"))
        .when(by_category)
        .then(pl.col("category"))
    )
    return (
        counted.with_columns(key=key)
        .drop_nulls("key")
        .with_columns(subject=pl.col("key"), due=pl.col("at") + us(rules.wait_hours))
    )


def _search_actions(ev: pl.DataFrame, rules) -> pl.DataFrame:
    searches = ev.filter(pl.col("type") == "products_searched").select(C, "pos", "at")
    counted = _windowed_counts(searches, us(rules.lookback_hours), {"n": pl.len()})
    return counted.filter(pl.col("n") >= rules.min_signals).with_columns(
        due=pl.col("at") + us(rules.wait_hours)
    )


def _last_views(ev: pl.DataFrame, updates: pl.DataFrame, types: list[str]) -> pl.DataFrame:
    """For each catalog update (upos, product_id, ...): every customer who did one of `types`
    on the product before it, with the last such event (vpos, vat, vprice)."""
    seen = ev.filter(pl.col("type").is_in(types)).select(
        C, "product_id", vpos="pos", vat="at", vprice="price", vtype="type"
    )
    return (
        updates.join(seen, on="product_id")
        .filter(pl.col("vpos") < pl.col("upos"))
        .sort("vpos")
        .group_by("upos", C, maintain_order=True)
        .last()
    )


def _bought_since(candidates: pl.DataFrame, items: pl.DataFrame, since: str) -> pl.DataFrame:
    """Candidates (upos, customer_id, product_id, `since`) less those with an order of the
    product stamped after `since` and processed before the update."""
    bought = (
        candidates.join(items.select(C, "product_id", opos="pos", oat="at"), on=[C, "product_id"])
        .filter((pl.col("oat") > pl.col(since)) & (pl.col("opos") < pl.col("upos")))
        .select("upos", C)
        .unique()
    )
    return candidates.join(bought, on=["upos", C], how="anti")


def _price_drop_actions(ev, cat, items, rules) -> pl.DataFrame:
    prices = cat.filter(pl.col("price").is_not_null())
    updates = prices.select("product_id", upos="pos", uat="at", new="price")
    views = _last_views(ev, updates, ["product_viewed"])
    in_effect = prices.select("product_id", cpos="pos", cprice="price").sort("cpos")
    views = (
        views.sort("vpos")
        .join_asof(
            in_effect,
            left_on="vpos",
            right_on="cpos",
            by="product_id",
            strategy="backward",
            check_sortedness=False,
        )
        .with_columns(seen=pl.coalesce("vprice", "cprice"))
        .filter(
            pl.col("seen").is_not_null()
            & (pl.col("vat") > pl.col("uat") - us(rules.lookback_hours))
            & (pl.col("new") <= pl.col("seen") * (1 - rules.drop_share))
        )
    )
    return (
        _bought_since(views, items, "vat")
        .rename({"upos": "pos", "uat": "at"})
        .with_columns(key=pl.col("product_id"), subject=pl.col("product_id"), due=pl.col("at"))
    )


def _stock_updates(cat: pl.DataFrame) -> pl.DataFrame:
    return (
        cat.filter(pl.col("stock").is_not_null())
        .with_columns(previous=pl.col("stock").shift(1).over("product_id"))
        .select("product_id", "stock", "previous", upos="pos", uat="at")
    )


def _back_in_stock_actions(ev, cat, items, rules) -> pl.DataFrame:
    updates = _stock_updates(cat).filter((pl.col("previous") == 0) & (pl.col("stock") > 0))
    last = _last_views(ev, updates, ["product_viewed", "product_added"])
    last = last.filter(pl.col("vat") > pl.col("uat") - us(rules.lookback_hours))
    return (
        _bought_since(last, items, "vat")
        .rename({"upos": "pos", "uat": "at"})
        .with_columns(
            key=pl.col("product_id"), subject=pl.col("product_id"), due=pl.col("at"), sub=1
        )
    )


def _low_stock_actions(cat, cart: _Cart, rules) -> pl.DataFrame:
    updates = _stock_updates(cat).filter(
        (pl.col("stock") > 0)
        & (pl.col("stock") < rules.below)
        & (pl.col("previous").is_null() | (pl.col("previous") >= rules.below))
    )
    holders = updates.join(cart.changes.select(C, "product_id").unique(), on="product_id")
    queries = holders.with_row_index("qid").with_columns(at_pos=pl.col("upos"))
    inside = cart.contents(queries).select("qid", held="product_id")
    return (
        queries.join(inside, on="qid")
        .filter(pl.col("held") == pl.col("product_id"))
        .rename({"upos": "pos", "uat": "at"})
        .with_columns(
            key=pl.col("product_id"), subject=pl.col("product_id"), due=pl.col("at"), sub=1
        )
    )


def _replenishment_actions(items: pl.DataFrame) -> pl.DataFrame:
    # an order counts once for a product, however many lines carry it
    orders = (
        items.select(C, "product_id", "pos", "at")
        .unique(maintain_order=True)
        .sort("pos")
        .with_columns(
            n=pl.int_range(pl.len()).over(C, "product_id") + 1,
            first=pl.col("at").first().over(C, "product_id"),
        )
        .with_columns(interval=(pl.col("at") - pl.col("first")) // (pl.col("n") - 1))
    )
    return (
        items.join(
            orders.select(C, "product_id", "pos", "n", "interval"), on=[C, "product_id", "pos"]
        )
        .filter((pl.col("n") >= 2) & (pl.col("interval") > 0))
        .with_columns(
            key=pl.col("product_id"),
            subject=pl.col("product_id"),
            sub=pl.col("idx"),
            due=pl.col("at") + pl.col("interval"),
        )
    )


def _review_actions(orders: pl.DataFrame, rules) -> pl.DataFrame:
    first = pl.col("products").list.first()
    return orders.filter(first.is_not_null()).with_columns(
        key=first, subject=first, due=pl.col("at") + us(rules.wait_hours)
    )


def _welcome_actions(ev: pl.DataFrame) -> pl.DataFrame:
    return ev.filter(pl.col("type") == "signed_up").with_columns(due=pl.col("at"))


def _win_back_actions(orders: pl.DataFrame, rules) -> pl.DataFrame:
    return (
        orders.with_columns(n=pl.int_range(pl.len()).over(C) + 1)
        .filter(pl.col("n") >= rules.min_orders)
        .with_columns(due=pl.col("at") + us(rules.wait_hours))
    )


def _surviving(actions: pl.DataFrame, until: int) -> pl.DataFrame:
    """Starts whose key is not started again or cancelled by an item stamped at or before
    their due time, and due by `until`."""
    key = [C, "trigger", "key"]
    return (
        actions.with_columns(pl.col("key").fill_null(NONE_KEY), pl.col("sub").fill_null(0))
        .sort("pos", "sub")
        .with_columns(next_at=pl.col("at").shift(-1).over(key))
        .filter(
            pl.col("due").is_not_null()
            & (pl.col("due") <= until)
            & (pl.col("next_at").is_null() | (pl.col("next_at") > pl.col("due")))
        )
        .with_row_index("tid")
    )


def _fire_checks(timers: pl.DataFrame, ev: pl.DataFrame, cart: _Cart, rules) -> pl.DataFrame:
    """Drop what the checks at fire time drop: unsubscribed, the trigger's own exits, and the
    retargeting triggers' minimum behaviour; fill the subjects known only at fire time."""
    trigger = pl.col("trigger")
    by = ev.select(C, "type", eat="at", epos="pos", equery="query")

    def having(kinds, condition) -> pl.DataFrame:  # the timers with such an event
        joined = timers.join(by.filter(pl.col("type").is_in(kinds)), on=C)
        return joined.filter(condition).select("tid").unique()

    gone = [having(["unsubscribed"], pl.col("eat") <= pl.col("due"))]
    for name in ("browse_abandoned", "search_abandoned"):
        s = rules.of(name)
        window = us(s.wait_hours + s.lookback_hours)
        gone.append(
            having(
                ["product_added", "order_completed"],
                (trigger == name)
                & (pl.col("eat") <= pl.col("due"))
                & (pl.col("eat") > pl.col("due") - window),
            )
        )
    signals = (
        timers.filter(trigger.is_in(list(RETARGETING)))
        .join(by.filter(pl.col("type").is_in(BEHAVIOUR)), on=C)
        .filter((pl.col("eat") <= pl.col("due")) & (pl.col("eat") > pl.col("due") - SIGNAL_WINDOW))
        .group_by("tid")
        .agg(n=pl.len())
    )
    few = (
        timers.filter(trigger.is_in(list(RETARGETING)))
        .join(signals, on="tid", how="left")
        .filter(pl.col("n").fill_null(0) < rules.min_signals)
        .select("tid")
    )
    gone.append(few)

    # carts at fire time: the cart must hold something (cart) or the product (low stock)
    carted = timers.filter(trigger.is_in(["cart_abandoned", "low_stock"]))
    inside = cart.contents(carted.select(C, qid="tid", at_pos="fire_pos"))
    newest = inside.sort("last_add").group_by("qid").agg(newest=pl.col("product_id").last())
    low = carted.join(inside, left_on=["tid", "subject"], right_on=["qid", "product_id"])
    kept_carts = pl.concat(
        [
            carted.filter(trigger == "cart_abandoned")
            .join(newest, left_on="tid", right_on="qid")
            .select("tid"),
            low.filter(trigger == "low_stock").select("tid"),
        ]
    )
    gone.append(carted.join(kept_carts, on="tid", how="anti").select("tid"))

    # search: the subject is the customer's last query at fire time
    last_query = (
        timers.filter(trigger == "search_abandoned")
        .join(by.filter(pl.col("type") == "products_searched"), on=C)
        .filter(pl.col("epos") <= pl.col("fire_pos"))
        .sort("epos")
        .group_by("tid")
        .agg(query=pl.col("equery").last())
    )
    return (
        timers.join(pl.concat(gone).unique(), on="tid", how="anti")
        .join(newest, left_on="tid", right_on="qid", how="left")
        .join(last_query, on="tid", how="left")
        .with_columns(
            subject=pl.when(trigger == "cart_abandoned")
            .then(pl.col("newest"))
            .when(trigger == "search_abandoned")
            .then(pl.col("query"))
            .otherwise(pl.col("subject"))
        )
    )


def _cooldowns_and_gap(timers: pl.DataFrame, rules) -> pl.DataFrame:
    """Walk the due timers in firing order: a firing within its key's cooldown, or (but for
    welcome) within the gap after the customer's last firing, is dropped and counts for
    nothing."""
    rank = {name: k for k, name in enumerate(rules.priority)}
    ordered = timers.with_columns(
        rank=pl.col("trigger").replace_strict(rank, return_dtype=pl.Int64, default=len(rank))
    ).sort("due", "rank", "pos", "sub")
    gap = rules.gap_hours * HOUR
    cooldown = {name: rules.of(name).cooldown_hours * HOUR for name in rank}
    last_fired: dict[tuple, int] = {}
    last_gapped: dict[str, int] = {}
    fired = []
    for trigger, who, subject, due in ordered.select("trigger", C, "subject", "due").iter_rows():
        key = (who, trigger, subject)
        if key in last_fired and due - last_fired[key] < cooldown[trigger]:
            continue
        if trigger != "welcome":
            if who in last_gapped and due - last_gapped[who] < gap:
                continue
            last_gapped[who] = due
        last_fired[key] = due
        fired.append((trigger, who, subject, due))
    return pl.DataFrame(fired, schema=OUTPUT, orient="row")
