"""The trigger rules: small state machines over one shop's event stream, pure (no clock, no
I/O), so the live server, separate workers and `sendwise triggers replay` run the very same
code against whatever clock they are given.

Feed events and catalog updates in time order (`TriggerEngine.run`); each may start, restart
or cancel a timer keyed by (customer, trigger, subject); `advance(t)` fires the timers due by
`t`, after every event stamped at or before their due time, each re-checked then; nothing due
after the clock a run is given fires, whatever the items stamped later:

- `cart_abandoned`: `wait_hours` after the last cart change (an add or a removal restarts
  the wait) while the cart holds something (a removal takes away at most what it holds);
  an order empties the cart. Subject: the product
  added last that is still in the cart.
- `browse_abandoned`: a view that makes `min_signals` views of one product (subject: the
  product), else `min_category_views` product views in one category (subject: the category),
  within `lookback_hours`; fires `wait_hours` after the last such view (a new one restarts
  it) unless the customer added to a cart or ordered in the lookback and wait before firing.
- `search_abandoned`: `min_signals` searches within `lookback_hours`, then as browse; the
  subject is the last query.
- `price_drop`: a catalog price at least `drop_share` below the price a customer saw on
  their last view of the product within `lookback_hours` (the view's `price`, else the
  catalog's then), not bought since that view. Fires at the update.
- `back_in_stock`: stock 0 -> above 0 for a product the customer viewed or carted within
  `lookback_hours` and has not bought since. Fires at the update.
- `low_stock`: stock falls under `below` (from at least `below`, or unknown) and above 0
  for a product in the customer's cart. Fires at the update.
- `replenishment_due`: a product the customer bought twice or more is due at the last
  purchase plus the customer's own mean interval between purchases of it.
- `review_request`: `wait_hours` after an order; subject: the order's first product.
- `welcome`: at `signed_up`.
- `win_back`: `wait_hours` after the last order of a customer with `min_orders` orders.

At fire time, across triggers: nothing for an unsubscribed customer; retargeting triggers
(cart, browse, search, price drop, back in stock, low stock) need `min_signals` behavioural
events (views, list views, searches, adds) in the 30 days before; the same customer, trigger
and subject not within `cooldown_hours`; and at most one triggered email per customer per
`gap_hours` (holdouts count: they would have been sent), by `priority` among firings due at
the same moment; welcome is never blocked and never blocks.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .config import TriggersSettings

HOUR = 3_600_000_000  # µs
SIGNAL_DAYS = 30  # also the longest lookback a default rule uses
PRUNE_AFTER = 256  # signals a customer keeps before older ones are forgotten
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
BEHAVIOUR = frozenset(
    {"product_viewed", "product_list_viewed", "products_searched", "product_added"}
)


@dataclass(frozen=True)
class Firing:
    trigger: str
    customer_id: str
    subject: str | None
    fired_at: int  # µs since the epoch, UTC
    product: bool = False  # the subject is a product id (it leads the email's products)

    @property
    def trigger_id(self) -> str:
        """The same firing always has the same id, so a re-derived one is never stored twice."""
        key = f"{self.customer_id}\x1f{self.trigger}\x1f{self.subject}\x1f{self.fired_at}"
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


@dataclass
class Customer:
    cart: OrderedDict[str, int] = field(default_factory=OrderedDict)  # last added last
    cart_changed: int = 0
    views: list[tuple[int, str, str | None]] = field(default_factory=list)  # at, product, cat
    seen: dict[str, tuple[int, float | None]] = field(default_factory=dict)  # last view, price
    carted: dict[str, int] = field(default_factory=dict)  # product: last added
    searches: list[tuple[int, str]] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)
    last_add: int | None = None
    last_order: int | None = None
    orders: int = 0
    bought: dict[str, list[int]] = field(default_factory=dict)  # product: purchase times
    unsubscribed: bool = False
    last_gap_firing: int | None = None
    fired: dict[tuple[str, str | None], int] = field(default_factory=dict)

    def forget(self, before: int) -> None:
        """Drop behaviour older than every lookback, so a busy customer's state stays small."""
        self.signals = [t for t in self.signals if t > before]
        self.views = [v for v in self.views if v[0] > before]
        self.searches = [s for s in self.searches if s[0] > before]


@dataclass
class Product:
    price: float | None = None
    stock: int | None = None
    interested: set[str] = field(default_factory=set)  # viewed or carted it
    carted_by: set[str] = field(default_factory=set)


class TriggerEngine:
    """Every trigger of one shop. Feed it with `run`; it returns the firings in order."""

    def __init__(self, rules: TriggersSettings):
        self.rules = rules
        self.rank = {name: k for k, name in enumerate(rules.priority)}
        self.customers: dict[str, Customer] = {}
        self.products: dict[str, Product] = {}
        self.timers: list[tuple[int, int, int, str, str, str | None, bool]] = []
        self.live: dict[tuple[str, str, str | None], int] = {}  # the one timer a key keeps
        self.count = 0
        self.clock = 0
        lookbacks = [rules.of(t).lookback_hours or 0 for t in rules.priority]
        self.memory = int(max(SIGNAL_DAYS * 24, *lookbacks) * HOUR)  # µs of behaviour kept

    # -- feeding -----------------------------------------------------------------------------

    def run(self, items: Iterable[tuple[int, str, dict]], until: int) -> list[Firing]:
        """Apply `(at, kind, row)` items ("event" or "catalog") in time order, firing what
        falls due between them, then fire what is due by `until`."""
        fired: list[Firing] = []
        for at, kind, row in items:
            fired += self.advance(min(at - 1, until))  # never past the clock
            self.clock = max(self.clock, at)
            if kind == "event":
                self.event(row)
            else:
                self.catalog(row)
        return fired + self.advance(until)

    def event(self, e: dict) -> None:
        kind, at, who = e["type"], e["at"], e["customer_id"]
        c = self.customers.setdefault(who, Customer())
        if kind in BEHAVIOUR:
            c.signals.append(at)
            if len(c.signals) > PRUNE_AFTER:
                c.forget(at - self.memory)
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(who, c, e, at)

    def catalog(self, u: dict) -> None:
        p = self.products.setdefault(u["product_id"], Product())
        at, product = u["at"], u["product_id"]
        if u.get("price") is not None:
            self._price_changed(product, p, u["price"], at)
            p.price = u["price"]
        if u.get("stock") is not None:
            self._stock_changed(product, p, u["stock"], at)
            p.stock = u["stock"]

    # -- events ------------------------------------------------------------------------------

    def _on_product_viewed(self, who: str, c: Customer, e: dict, at: int) -> None:
        product, category = e["product_id"], e.get("category")
        p = self.products.setdefault(product, Product())
        c.views.append((at, product, category))
        price = e.get("price") if e.get("price") is not None else p.price
        c.seen[product] = (at, price)
        p.interested.add(who)
        rules = self.rules.browse_abandoned
        if not rules.enabled:
            return
        since = at - rules.lookback_hours * HOUR
        recent = [(v_product, v_category) for t, v_product, v_category in c.views if t > since]
        if sum(v == product for v, _ in recent) >= rules.min_signals:
            self._start(who, "browse_abandoned", ("product", product), at + rules.wait_hours * HOUR)
        elif category is not None and sum(v == category for _, v in recent) >= (
            rules.min_category_views
        ):
            self._start(
                who, "browse_abandoned", ("category", category), at + rules.wait_hours * HOUR
            )

    def _on_products_searched(self, who: str, c: Customer, e: dict, at: int) -> None:
        c.searches.append((at, e["query"]))
        rules = self.rules.search_abandoned
        since = at - rules.lookback_hours * HOUR
        if rules.enabled and sum(t > since for t, _ in c.searches) >= rules.min_signals:
            self._start(who, "search_abandoned", None, at + rules.wait_hours * HOUR)

    def _on_product_added(self, who: str, c: Customer, e: dict, at: int) -> None:
        product = e["product_id"]
        p = self.products.setdefault(product, Product())
        c.cart[product] = c.cart.pop(product, 0) + (e.get("quantity") or 1)
        c.carted[product] = at
        c.last_add = at
        p.interested.add(who)
        p.carted_by.add(who)
        self._cart_changed(who, c, at)

    def _on_product_removed(self, who: str, c: Customer, e: dict, at: int) -> None:
        product = e["product_id"]
        if product in c.cart:
            c.cart[product] -= e.get("quantity") or 1
            if c.cart[product] <= 0:
                del c.cart[product]
                self.products[product].carted_by.discard(who)
        self._cart_changed(who, c, at)

    def _cart_changed(self, who: str, c: Customer, at: int) -> None:
        c.cart_changed = at
        rules = self.rules.cart_abandoned
        if c.cart and rules.enabled:
            self._start(who, "cart_abandoned", None, at + rules.wait_hours * HOUR)
        else:
            self._stop(who, "cart_abandoned", None)

    def _on_order_completed(self, who: str, c: Customer, e: dict, at: int) -> None:
        products = e.get("products") or []
        for product in c.cart:
            self.products[product].carted_by.discard(who)
        c.cart.clear()
        self._stop(who, "cart_abandoned", None)
        c.last_order, c.orders = at, c.orders + 1
        for product in products:
            times = c.bought.setdefault(product, [])
            times.append(at)
            rules = self.rules.replenishment_due
            if len(times) >= 2 and rules.enabled:
                interval = (times[-1] - times[0]) // (len(times) - 1)
                if interval > 0:
                    self._start(who, "replenishment_due", ("product", product), at + interval)
        review = self.rules.review_request
        if products and review.enabled:
            self._start(
                who, "review_request", ("product", products[0]), at + review.wait_hours * HOUR
            )
        win_back = self.rules.win_back
        if win_back.enabled and c.orders >= win_back.min_orders:
            self._start(who, "win_back", None, at + win_back.wait_hours * HOUR)

    def _on_signed_up(self, who: str, c: Customer, e: dict, at: int) -> None:
        if self.rules.welcome.enabled:
            self._start(who, "welcome", None, at)

    def _on_unsubscribed(self, who: str, c: Customer, e: dict, at: int) -> None:
        c.unsubscribed = True

    # -- catalog -----------------------------------------------------------------------------

    def _price_changed(self, product: str, p: Product, price: float, at: int) -> None:
        rules = self.rules.price_drop
        if not rules.enabled:
            return
        since = at - rules.lookback_hours * HOUR
        for who in sorted(p.interested):
            c = self.customers[who]
            seen_at, seen_price = c.seen.get(product, (0, None))
            if seen_price is None or seen_at <= since or _bought_since(c, product, seen_at):
                continue
            if price <= seen_price * (1 - rules.drop_share):
                self._start(who, "price_drop", ("product", product), at)

    def _stock_changed(self, product: str, p: Product, stock: int, at: int) -> None:
        back, low = self.rules.back_in_stock, self.rules.low_stock
        if back.enabled and p.stock == 0 and stock > 0:
            since = at - back.lookback_hours * HOUR
            for who in sorted(p.interested):
                c = self.customers[who]
                last = max(c.seen.get(product, (0, None))[0], c.carted.get(product, 0))
                if last > since and not _bought_since(c, product, last):
                    self._start(who, "back_in_stock", ("product", product), at)
        if low.enabled and 0 < stock < low.below and (p.stock is None or p.stock >= low.below):
            for who in sorted(p.carted_by):
                self._start(who, "low_stock", ("product", product), at)

    # -- timers ------------------------------------------------------------------------------

    def _start(self, who: str, trigger: str, subject: tuple[str, str] | None, due: int) -> None:
        """(Re)start the key's timer: an earlier one for the same key no longer fires."""
        self.count += 1
        key = (who, trigger, None if subject is None else subject[1])
        self.live[key] = self.count
        product = subject is not None and subject[0] == "product"
        heapq.heappush(self.timers, (int(due), self.rank[trigger], self.count, *key, product))

    def _stop(self, who: str, trigger: str, subject: str | None) -> None:
        self.live.pop((who, trigger, subject), None)

    def advance(self, until: int) -> list[Firing]:
        """Fire every live timer due by `until`, in (due, priority) order."""
        fired = []
        while self.timers and self.timers[0][0] <= until:
            due, _, token, who, trigger, subject, product = heapq.heappop(self.timers)
            if self.live.get((who, trigger, subject)) != token:
                continue  # restarted or cancelled since
            del self.live[(who, trigger, subject)]
            self.clock = max(self.clock, due)
            firing = self._check(who, trigger, subject, product, due)
            if firing is not None:
                fired.append(firing)
        return fired

    def _check(
        self, who: str, trigger: str, subject: str | None, product: bool, due: int
    ) -> Firing | None:
        """The firing if its exit conditions and the rules across triggers allow it."""
        c, rules = self.customers[who], self.rules
        if c.unsubscribed:
            return None
        if trigger == "cart_abandoned":
            if not c.cart:
                return None
            subject, product = next(reversed(c.cart)), True
        elif trigger in ("browse_abandoned", "search_abandoned"):
            own = rules.of(trigger)
            since = due - (own.wait_hours + own.lookback_hours) * HOUR
            if any(t is not None and t > since for t in (c.last_add, c.last_order)):
                return None
            if trigger == "search_abandoned":
                subject = c.searches[-1][1]
        elif trigger == "low_stock" and subject not in c.cart:
            return None
        if trigger in RETARGETING:
            since = due - SIGNAL_DAYS * 24 * HOUR
            if sum(t > since for t in c.signals) < rules.min_signals:
                return None
        last = c.fired.get((trigger, subject))
        if last is not None and due - last < rules.of(trigger).cooldown_hours * HOUR:
            return None
        gapped = trigger != "welcome"
        last_gap = c.last_gap_firing
        if gapped and last_gap is not None and due - last_gap < rules.gap_hours * HOUR:
            return None
        c.fired[(trigger, subject)] = due
        if gapped:
            c.last_gap_firing = due
        return Firing(trigger, who, subject, due, product)


def _bought_since(c: Customer, product: str, since: int) -> bool:
    return any(t > since for t in c.bought.get(product, ()))
