"""What the events said since the snapshot, so `/decide` answers with what happened seconds ago:
a lead who orders is no longer a lead, a product just bought leaves `products` and
`cross_sell` for `[products] recently_bought_days`, and what is in a live cart leads
`products` (most recently added first). The rest of the snapshot stands until the next one.

Pure: the serving worker feeds it the events it reads from the event store (`apply`) and
asks it for the recipients' columns `decide` reads (`columns`).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import polars as pl

from .decide import Snapshot

DAY = 86_400_000_000  # µs
KINDS = ("order_completed", "product_added", "product_removed")


class FreshState:
    def __init__(self, since: int, recently_bought_days: float):
        self.since = since  # µs: events at or before it are in the snapshot's data already
        self.keep = int(recently_bought_days * DAY)
        self.ordered: set[str] = set()
        self.bought: dict[str, dict[str, int]] = {}  # customer: product: last bought (µs)
        self.carts: dict[str, OrderedDict[str, int]] = {}

    def apply(self, events: pl.DataFrame) -> None:
        """Events in arrival order (`sendwise.store.events.EVENT_SCHEMA` rows)."""
        relevant = events.filter(pl.col("type").is_in(KINDS), pl.col("at") > self.since)
        for kind, who, at, product, quantity, products in relevant.select(
            "type", "customer_id", "at", "product_id", "quantity", "products"
        ).iter_rows():
            cart = self.carts.setdefault(who, OrderedDict())
            if kind == "order_completed":
                self.ordered.add(who)
                mine = self.bought.setdefault(who, {})
                for item in products or ():
                    mine[item] = max(at, mine.get(item, at))
                cart.clear()
            elif kind == "product_added":
                cart[product] = cart.pop(product, 0) + (quantity or 1)
            elif product in cart:
                cart[product] -= quantity or 1
                if cart[product] <= 0:
                    del cart[product]

    def columns(self, ids: pl.Series, snapshot: Snapshot, now: int) -> dict[str, pl.Series]:
        """`segment` (a lead who ordered is `new`), `lead` (the live cart, last added first)
        and `drop` (bought within the window) for these recipients; {} when nothing fresh
        concerns them."""
        names = ids.to_list()
        if not any(n in self.carts or n in self.bought for n in names):
            return {}
        segment = snapshot.columns["segment"][snapshot.positions(ids)]
        ordered = np.array([n in self.ordered for n in names], dtype=bool)
        became_new = ordered & (segment == "lead")
        recent = [
            [p for p, at in self.bought.get(n, {}).items() if now - at < self.keep] or None
            for n in names
        ]
        carts = [list(reversed(self.carts[n])) or None if n in self.carts else None for n in names]
        return {
            "segment": pl.Series("segment", np.where(became_new, "new", ""), pl.String),
            "lead": pl.Series("lead", carts, pl.List(pl.String)),
            "drop": pl.Series("drop", recent, pl.List(pl.String)),
        }
