"""The synthetic shop: all six tables, with the ground truth that produced them saved beside.

Every customer gets a time zone and a preferred local hour (their purchases, site visits and
human email opens cluster there), a purchase rhythm (gamma-distributed intervals with a
customer-specific regularity, ended by a dropout time), category affinities, sometimes a staple
product bought again on its replenishment cycle, a cart-abandonment habit, an email habit
(open and click rates; some inboxes pre-fetch every mail, the "machine opens"), and a
per-arm uplift for a randomised offer campaign. Everything is vectorised numpy, deterministic
by seed. Customers are simulated PART_CUSTOMERS at a time (`simulate_parts`), each part written
before the next is drawn, so memory stays that of one part however large the shop.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from .contract import TIMESTAMP

ZONES = (  # (country, IANA zone, share of customers)
    ("US", "America/New_York", 0.24),
    ("US", "America/Chicago", 0.10),
    ("US", "America/Los_Angeles", 0.14),
    ("GB", "Europe/London", 0.20),
    ("DE", "Europe/Berlin", 0.12),
    ("FR", "Europe/Paris", 0.08),
    ("AU", "Australia/Sydney", 0.06),
    ("JP", "Asia/Tokyo", 0.06),
)
# (category, replenishment cycle in days or 0 for durables, median price)
CATEGORIES = (
    ("coffee", 30, 14.0),
    ("tea", 45, 9.0),
    ("skincare", 60, 28.0),
    ("haircare", 60, 16.0),
    ("pet_food", 30, 35.0),
    ("vitamins", 90, 22.0),
    ("apparel", 0, 45.0),
    ("shoes", 0, 80.0),
    ("home", 0, 38.0),
    ("kitchen", 0, 30.0),
    ("toys", 0, 25.0),
    ("electronics", 0, 120.0),
)
PREFERRED_HOURS = np.array([7, 8, 9, 12, 13, 18, 19, 20, 21, 22])
PREFERRED_HOUR_WEIGHTS = np.array([6, 8, 6, 8, 6, 10, 14, 16, 14, 8], dtype=float)
ARMS = ("none", "free_shipping", "10_off")
ARM_PROBABILITIES = (0.4, 0.3, 0.3)  # not uniform on purpose: propensities are logged
CAMPAIGN_ID = "offer_test"
OUTCOME_DAYS = 14
EMAIL_EVERY_DAYS = 14
TRACKED_DAYS = 180  # web and email tracking cover only the last months, as in most shops
PART_CUSTOMERS = 250_000  # at a time: `simulate --customers 1000000` peaks at 3.7 GiB


@dataclass(frozen=True)
class SimulationSettings:
    customers: int = 10_000
    seed: int = 0
    end: datetime = datetime(2026, 6, 30, 23, 59, 59, tzinfo=UTC)
    history_days: int = 730

    @property
    def start(self) -> datetime:
        """Midnight UTC, `history_days` before `end`."""
        first = (self.end - timedelta(days=self.history_days)).date()
        return datetime.combine(first, datetime.min.time(), tzinfo=UTC)

    @property
    def campaign_at(self) -> datetime:
        """When the offer campaign is assigned: its outcome window closes a week before `end`."""
        return self.end - timedelta(days=OUTCOME_DAYS + 7)


@dataclass(frozen=True)
class _Catalog:
    """The products: drawn once per shop and shared by every part of its customers."""

    n_products: int
    product_category: np.ndarray
    product_price: np.ndarray
    cum_popularity: np.ndarray
    replenish_days: np.ndarray
    product_ids: pl.Series


class _World:
    """Per-customer and per-product draws shared by the table generators, for the customers
    `first` to `first + count` of the shop (a part; `simulate_parts`). The first part draws
    from the seed as a whole shop does, then the catalogue; every later part draws from the
    seed and its own number, and shares the first part's catalogue. Order and session
    numbers continue from `first_order` and `first_session`."""

    def __init__(
        self,
        settings: SimulationSettings,
        first: int = 0,
        count: int | None = None,
        part: int = 0,
        catalog: _Catalog | None = None,
        first_order: int = 0,
        first_session: int = 0,
    ):
        self.s = settings
        self.first, self.n, self.part = first, settings.customers if count is None else count, part
        self.first_order, self.first_session = first_order, first_session
        self.next_order, self.next_session = first_order, first_session  # once numbered
        self.rng = np.random.default_rng(settings.seed if part == 0 else [settings.seed, part])
        self.days = settings.history_days
        self._customers()
        self.catalog = catalog or self._catalog()
        consumables = np.flatnonzero(~np.isnan(self.catalog.replenish_days))
        has_staple = (self.rng.random(self.n) < 0.45) & ~self.is_lead
        self.staple = np.where(has_staple, self.rng.choice(consumables, self.n), -1)
        self.offsets = _utc_offsets_days([z for _, z, _ in ZONES], settings.start, self.days + 2)

    def _customers(self) -> None:
        rng, n = self.rng, self.n
        shares = np.array([w for *_, w in ZONES])
        self.zone = rng.choice(len(ZONES), n, p=shares / shares.sum())
        self.created = rng.uniform(0, self.days, n)
        self.preferred_hour = rng.choice(
            PREFERRED_HOURS, n, p=PREFERRED_HOUR_WEIGHTS / PREFERRED_HOUR_WEIGHTS.sum()
        )
        self.focus = rng.beta(6, 3, n)  # share of activity at the preferred hour
        self.is_lead = rng.random(n) < 0.2
        self.mean_interval = np.clip(rng.lognormal(np.log(55), 0.7, n), 7, 365)
        self.regularity = rng.uniform(1.0, 6.0, n)  # gamma shape: 1 is Poisson, 6 is clockwork
        self.first_purchase = self.created + rng.exponential(10, n)
        self.dropout = self.first_purchase + rng.exponential(420, n)
        self.affinity = rng.dirichlet(np.full(len(CATEGORIES), 0.35), n)
        self.price_sensitivity = rng.beta(2, 2, n)
        self.return_rate = rng.beta(1, 15, n)
        self.cart_abandon = rng.beta(2, 4, n)
        self.browse_rate = rng.lognormal(np.log(1 / 20), 0.8, n)  # sessions a day
        self.open_prob = rng.beta(2, 5, n)
        self.click_prob = rng.beta(2, 8, n)
        self.machine_opener = rng.random(n) < 0.35
        self.unsubscribe_prob = rng.beta(1, 200, n)
        self.bounces = rng.random(n) < 0.01
        self.opt_in = rng.random(n) < 0.88
        self.ids = (
            pl.int_range(self.first + 1, self.first + n + 1, eager=True)
            .cast(pl.String)
            .str.zfill(7)
            .alias("customer_id")
        )
        self.ids = pl.select(pl.concat_str(pl.lit("c"), self.ids)).to_series()

    def _catalog(self) -> _Catalog:
        rng = self.rng
        n = int(np.clip(self.s.customers // 40, 240, 6000))
        product_category = np.sort(rng.integers(0, len(CATEGORIES), n))
        median = np.array([p for *_, p in CATEGORIES])[product_category]
        product_price = np.round(median * rng.lognormal(0, 0.35, n), 2)
        popularity = rng.zipf(1.6, n).astype(float)
        cum_popularity = np.empty(n)
        for c in range(len(CATEGORIES)):  # within-category CDF, offset by the category index
            members = product_category == c
            weights = popularity[members]
            cum_popularity[members] = c + np.cumsum(weights) / weights.sum()
        cycle = np.array([d for _, d, _ in CATEGORIES])[product_category]
        return _Catalog(
            n_products=n,
            product_category=product_category,
            product_price=product_price,
            cum_popularity=cum_popularity,
            replenish_days=np.where(cycle > 0, cycle * rng.choice([0.75, 1, 1.5], n), np.nan),
            product_ids=pl.Series("product_id", [f"p{i:05d}" for i in range(1, n + 1)]),
        )

    # --- sampling helpers -----------------------------------------------------------------

    def pick_products(self, customer: np.ndarray) -> np.ndarray:
        """A product per row, from the customer's category affinity and product popularity."""
        cum_affinity = np.cumsum(self.affinity[customer], axis=1)
        u = self.rng.random(len(customer))[:, None]
        category = np.minimum((u > cum_affinity).sum(axis=1), len(CATEGORIES) - 1)
        draw = category + self.rng.random(len(customer))
        return np.minimum(
            np.searchsorted(self.catalog.cum_popularity, draw), self.catalog.n_products - 1
        )

    def local_hour(self, customer: np.ndarray) -> np.ndarray:
        """Fractional local hour of day: near the preferred hour with the customer's focus."""
        n = len(customer)
        focused = self.rng.random(n) < self.focus[customer]
        # centred inside the planted hour, so that hour is the mode of what customers do
        near = self.preferred_hour[customer] + 0.5 + self.rng.normal(0, 0.6, n)
        anywhere = self.rng.uniform(7, 24, n)
        return np.mod(np.where(focused, near, anywhere), 24)

    def at_local_hour(self, customer: np.ndarray, day: np.ndarray, hour: np.ndarray) -> np.ndarray:
        """UTC days since start for a local calendar day and local hour."""
        local = np.floor(day) + hour / 24
        return local - self.offset(customer, local)

    def offset(self, customer: np.ndarray, day: np.ndarray) -> np.ndarray:
        index = np.clip(np.floor(day).astype(np.int64), 0, self.offsets.shape[1] - 1)
        return self.offsets[self.zone[customer], index]

    def stamp(self, days: np.ndarray) -> pl.Series:
        start_us = int(self.s.start.timestamp() * 1_000_000)
        micros = start_us + np.round(days * 86_400).astype(np.int64) * 1_000_000
        return pl.Series(micros).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _utc_offsets_days(zones: list[str], start: datetime, days: int) -> np.ndarray:
    """Each zone's UTC offset (in days) at local noon of each day: exact but for DST nights."""
    offsets = np.empty((len(zones), days))
    for z, name in enumerate(zones):
        zone = zoneinfo.ZoneInfo(name)
        for d in range(days):
            noon = (start + timedelta(days=d, hours=12)).astimezone(zone)
            offsets[z, d] = noon.utcoffset().total_seconds() / 86_400
    return offsets


def _ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For per-owner counts: the owner of each item and the item's rank within its owner."""
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    rank = np.arange(owner.size) - np.repeat(starts, counts)
    return owner, rank


def _purchase_times(w: _World) -> tuple[np.ndarray, np.ndarray]:
    """Renewal process per buyer: gamma intervals from the first purchase until dropout."""
    buyers = np.flatnonzero(~w.is_lead & (w.first_purchase < w.days))
    stop = np.minimum(w.dropout[buyers], w.days)
    span = stop - w.first_purchase[buyers]
    cap = np.minimum(np.ceil(span / w.mean_interval[buyers] * 2 + 3), 400).astype(np.int64)
    owner, rank = _ragged(cap)
    customer = buyers[owner]
    shape = w.regularity[customer]
    gaps = w.rng.gamma(shape, w.mean_interval[customer] / shape)
    gaps[rank == 0] = 0.0
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[np.cumsum(cap) - cap], cap)
    day = w.first_purchase[customer] + elapsed
    keep = day < stop[owner]
    customer, day = customer[keep], day[keep]
    return customer, w.at_local_hour(customer, day, w.local_hour(customer))


def _staple_times(w: _World) -> tuple[np.ndarray, np.ndarray]:
    """Re-purchases of each customer's staple on its replenishment cycle."""
    holders = np.flatnonzero(w.staple >= 0)
    cycle = w.catalog.replenish_days[w.staple[holders]]
    begin = w.first_purchase[holders] + w.rng.uniform(0, 1, holders.size) * cycle
    stop = np.minimum(w.dropout[holders], w.days)
    count = np.clip(np.floor((stop - begin) / cycle) + 1, 0, 200).astype(np.int64)
    owner, rank = _ragged(count)
    customer = holders[owner]
    jitter = w.rng.normal(0, 0.06, customer.size) * cycle[owner]
    day = begin[owner] + rank * cycle[owner] + jitter
    keep = (day < stop[owner]) & (day >= 0)
    customer, day = customer[keep], day[keep]
    return customer, w.at_local_hour(customer, day, w.local_hour(customer))


@dataclass
class _Orders:
    customer: np.ndarray  # per order
    time: np.ndarray
    discount: np.ndarray
    staple: np.ndarray  # bool: a replenishment order


def _order_table(w: _World, orders: _Orders) -> pl.DataFrame:
    n_orders = orders.customer.size
    lines_per = np.where(orders.staple, 1, 1 + w.rng.poisson(1.3, n_orders))
    order_of_line, _ = _ragged(lines_per)
    customer = orders.customer[order_of_line]
    product = w.pick_products(customer)
    staple_line = orders.staple[order_of_line]
    product[staple_line] = w.staple[customer[staple_line]]
    quantity = 1 + w.rng.poisson(0.4, customer.size)
    price = w.catalog.product_price[product]
    time = orders.time[order_of_line]
    discount = orders.discount[order_of_line]
    # some lines come back a few days later as negative quantities
    returned = (w.rng.random(customer.size) < w.return_rate[customer]) & ~staple_line
    return_time = time[returned] + w.rng.uniform(3, 20, returned.sum())
    in_window = return_time < w.days
    ret = np.flatnonzero(returned)[in_window]
    order_number = np.concatenate([order_of_line, order_of_line[ret]])
    prefix = np.concatenate([np.zeros(customer.size, bool), np.ones(ret.size, bool)])
    w.next_order = w.first_order + n_orders
    order_id = pl.select(
        pl.concat_str(
            pl.when(pl.Series(prefix)).then(pl.lit("R")).otherwise(pl.lit("O")),
            pl.Series(w.first_order + order_number + 1).cast(pl.String).str.zfill(8),
        )
    ).to_series()
    all_customer = np.concatenate([customer, customer[ret]])
    all_product = np.concatenate([product, product[ret]])
    lines = pl.DataFrame(
        {
            "order_id": order_id,
            "customer_id": w.ids.gather(all_customer),
            "product_id": w.catalog.product_ids.gather(all_product),
            "ordered_at": w.stamp(np.concatenate([time, return_time[in_window]])),
            "quantity": np.concatenate([quantity, -quantity[ret]]),
            "unit_price": np.concatenate([price, price[ret]]),
            "discount": np.concatenate([discount, discount[ret]]),
            "currency": pl.repeat("USD", all_customer.size, eager=True),
        }
    )
    # the same product drawn twice for one order is one line with the summed quantity
    key = [c for c in lines.columns if c != "quantity"]
    return (
        lines.group_by(key)
        .agg(pl.col("quantity").sum())
        .select(lines.columns)
        .sort("ordered_at", "order_id", "product_id")
    )


def _product_table(w: _World) -> pl.DataFrame:
    catalog = w.catalog
    names = np.array([c for c, *_ in CATEGORIES])
    return pl.DataFrame(
        {
            "product_id": catalog.product_ids,
            "title": pl.Series(
                [
                    f"{CATEGORIES[c][0].replace('_', ' ')} item {i + 1}"
                    for i, c in enumerate(catalog.product_category)
                ]
            ),
            "category": pl.Series(names[catalog.product_category]),
            "price": catalog.product_price,
            "margin": np.round(w.rng.uniform(0.2, 0.6, catalog.n_products), 2),
            "in_stock": w.rng.random(catalog.n_products) < 0.95,
            "replenish_days": catalog.replenish_days,
        }
    )


def _campaign(w: _World) -> tuple[pl.DataFrame, _Orders, np.ndarray, np.ndarray]:
    """The randomised offer test: assignments, the extra orders it caused, and the true uplift."""
    n = w.n
    at = (w.s.campaign_at - w.s.start).total_seconds() / 86_400
    eligible = np.flatnonzero(w.opt_in & (w.created < at))
    arm = w.rng.choice(len(ARMS), eligible.size, p=ARM_PROBABILITIES)
    # planted per-customer uplift: discounts move price-sensitive buyers, free shipping moves
    # small baskets (the customer's usual basket, from the categories they favour); leads
    # respond to any welcome incentive; lapsed buyers respond less
    basket = w.affinity @ np.array([p for *_, p in CATEGORIES]) * 1.7
    lapsed = (w.dropout < at) & ~w.is_lead
    uplift_discount = np.where(w.is_lead, 0.05, 0.01 + 0.14 * w.price_sensitivity**2)
    uplift_shipping = np.where(w.is_lead, 0.03, 0.11 / (1 + np.exp((basket - 45) / 12)))
    damp = np.where(lapsed, 0.4, 1.0)
    uplift = np.stack([np.zeros(n), uplift_shipping * damp, uplift_discount * damp], axis=1)
    converted = w.rng.random(eligible.size) < uplift[eligible, arm]
    who = eligible[converted]
    day = at + w.rng.uniform(0, OUTCOME_DAYS, who.size)
    extra = _Orders(
        customer=who,
        time=w.at_local_hour(who, day, w.local_hour(who)),
        discount=np.where(arm[converted] == 2, 0.10, 0.0),
        staple=np.zeros(who.size, bool),
    )
    probability = np.array(ARM_PROBABILITIES)[arm]
    assignments = pl.DataFrame(
        {
            "customer_id": w.ids.gather(eligible),
            "campaign_id": pl.repeat(CAMPAIGN_ID, eligible.size, eager=True),
            "arm": pl.Series(np.array(ARMS)[arm]),
            "assigned_at": w.stamp(np.full(eligible.size, at)),
            "propensity": probability,
        }
    )
    return assignments, extra, uplift_shipping * damp, uplift_discount * damp


def _web_events(w: _World, purchase_customer: np.ndarray, purchase_time: np.ndarray):
    """Browse sessions (views, searches, carts often abandoned) and the session before orders."""
    first_tracked = w.days - TRACKED_DAYS
    active_from = np.maximum(w.created, first_tracked)
    active_to = np.where(w.is_lead, w.days, np.minimum(w.dropout + 30, w.days))
    sessions = w.rng.poisson(w.browse_rate * np.clip(active_to - active_from, 0, None))
    owner, _ = _ragged(sessions)
    day = w.rng.uniform(active_from[owner], np.maximum(active_to[owner], active_from[owner]))
    start = w.at_local_hour(owner, day, w.local_hour(owner))
    views = 1 + w.rng.poisson(1.5, owner.size)
    searched = w.rng.random(owner.size) < 0.3
    carted = w.rng.random(owner.size) < w.cart_abandon[owner]
    # the session before each tracked purchase: view, add to cart, checkout
    tracked = purchase_time >= first_tracked
    buyer = purchase_customer[tracked]
    bought_at = purchase_time[tracked]
    session_customer = np.concatenate([owner, buyer])
    session_start = np.concatenate([start, bought_at - w.rng.uniform(10, 40, buyer.size) / 1440])
    n_browse = owner.size
    per_session = np.concatenate([views + searched + carted, np.full(buyer.size, 3)])
    session_of, rank = _ragged(per_session)
    w.next_session = w.first_session + per_session.size
    customer = session_customer[session_of]
    time = session_start[session_of] + rank * w.rng.uniform(0.5, 3, session_of.size) / 1440
    browse = session_of < n_browse
    kind = np.full(session_of.size, "view", dtype=object)
    first = rank == 0
    kind[browse & first & searched[np.minimum(session_of, n_browse - 1)]] = "search"
    last = rank == per_session[session_of] - 1
    kind[browse & last & carted[np.minimum(session_of, n_browse - 1)]] = "add_to_cart"
    kind[~browse & (rank == 1)] = "add_to_cart"
    kind[~browse & (rank == 2)] = "checkout"
    product = w.pick_products(customer)
    keep = (time >= 0) & (time < w.days)
    return (
        pl.DataFrame(
            {
                "customer_id": w.ids.gather(customer[keep]),
                "occurred_at": w.stamp(time[keep]),
                "event_type": pl.Series(kind[keep].astype(str)),
                "product_id": w.catalog.product_ids.gather(product[keep]),
                "session_id": pl.Series(w.first_session + session_of[keep] + 1).cast(pl.String),
            }
        )
        .with_columns(
            product_id=pl.when(pl.col("event_type") != "search").then(pl.col("product_id"))
        )
        .sort("occurred_at")
    )


def _email_events(w: _World) -> pl.DataFrame:
    """Fortnightly campaigns: sends, human opens at the preferred hour, machine opens, clicks."""
    send_days = np.arange(w.days - TRACKED_DAYS + 1, w.days, EMAIL_EVERY_DAYS) + 14 / 24
    unsubscribe_at = w.rng.geometric(w.unsubscribe_prob)  # the n-th send they unsubscribe at
    nth = np.cumsum(w.created[:, None] < send_days[None, :], axis=1)
    sent = (w.created[:, None] < send_days[None, :]) & w.opt_in[:, None]
    sent &= nth <= unsubscribe_at[:, None]
    sent &= ~w.bounces[:, None] | (nth == 1)
    customer, campaign = np.nonzero(sent)
    send = send_days[campaign]
    size = customer.size
    rng = w.rng
    bounce = w.bounces[customer]
    opened = ~bounce & (rng.random(size) < w.open_prob[customer])
    local = send + w.offset(customer, send)
    hour = w.local_hour(customer[opened])
    at_hour = np.floor(local[opened]) + hour / 24
    at_hour = np.where(at_hour < local[opened], at_hour + 1, at_hour)
    open_time = at_hour - w.offset(customer[opened], at_hour)
    clicked = rng.random(opened.sum()) < w.click_prob[customer[opened]]
    click_time = open_time[clicked] + rng.exponential(4, clicked.sum()) / 1440
    machine = ~bounce & w.machine_opener[customer]
    unsub = ~bounce & (nth[customer, campaign] == unsubscribe_at[customer])
    complaint = ~bounce & (rng.random(size) < 0.0005)
    parts = [
        (customer, send, "send"),
        (customer[opened], open_time, "open"),
        (customer[opened][clicked], click_time, "click"),
        (customer[machine], send[machine] + rng.uniform(5, 120, machine.sum()) / 86_400, "open"),
        (customer[unsub], send[unsub] + 0.05, "unsubscribe"),
        (customer[bounce], send[bounce] + 1 / 1440, "bounce"),
        (customer[complaint], send[complaint] + 0.1, "complaint"),
    ]
    campaign_of = [
        campaign,
        campaign[opened],
        campaign[opened][clicked],
        campaign[machine],
        campaign[unsub],
        campaign[bounce],
        campaign[complaint],
    ]
    machine_flag = [np.zeros(p[0].size, bool) for p in parts]
    machine_flag[3][:] = True
    who = np.concatenate([p[0] for p in parts])
    time = np.concatenate([p[1] for p in parts])
    keep = time < w.days
    return pl.DataFrame(
        {
            "customer_id": w.ids.gather(who[keep]),
            "occurred_at": w.stamp(time[keep]),
            "event_type": pl.Series(
                np.repeat([p[2] for p in parts], [p[0].size for p in parts])[keep]
            ),
            "campaign_id": pl.Series(
                np.char.add(
                    "email_", np.char.zfill(np.concatenate(campaign_of)[keep].astype(str), 3)
                )
            ),
            "machine_open": np.concatenate(machine_flag)[keep],
        }
    ).sort("occurred_at")


def simulate(settings: SimulationSettings) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    """The six tables of a synthetic shop, and the per-customer ground truth."""
    parts = list(simulate_parts(settings))
    tables = {
        name: pl.concat([part[name] for part, _ in parts if name in part]) for name in parts[0][0]
    }
    return tables, pl.concat([truth for _, truth in parts])


def simulate_parts(
    settings: SimulationSettings, part_customers: int = PART_CUSTOMERS
) -> Iterator[tuple[dict[str, pl.DataFrame], pl.DataFrame]]:
    """`simulate`, `part_customers` customers at a time: their tables and ground truth, the
    catalogue (`products`) with the first part only. A shop of up to `part_customers`
    customers is one part; a larger one never needs more memory than a part."""
    catalog, first_order, first_session = None, 0, 0
    for part, first in enumerate(range(0, settings.customers, part_customers)):
        count = min(part_customers, settings.customers - first)
        w = _World(settings, first, count, part, catalog, first_order, first_session)
        tables, truth = _simulate_part(w)
        catalog, first_order, first_session = w.catalog, w.next_order, w.next_session
        yield tables, truth


def _simulate_part(w: _World) -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    regular_customer, regular_time = _purchase_times(w)
    staple_customer, staple_time = _staple_times(w)
    assignments, extra, uplift_shipping, uplift_discount = _campaign(w)
    n_regular = regular_customer.size
    discounted = w.rng.random(n_regular) < 0.04 + 0.35 * w.price_sensitivity[regular_customer]
    orders = _Orders(
        customer=np.concatenate([regular_customer, staple_customer, extra.customer]),
        time=np.concatenate([regular_time, staple_time, extra.time]),
        discount=np.concatenate(
            [
                np.where(discounted, w.rng.choice([0.1, 0.2], n_regular), 0.0),
                np.zeros(staple_customer.size),
                extra.discount,
            ]
        ),
        staple=np.concatenate(
            [np.zeros(n_regular, bool), np.ones(staple_customer.size, bool), extra.staple]
        ),
    )
    keep = (orders.time >= 0) & (orders.time < w.days)
    orders = _Orders(
        *(getattr(orders, f)[keep] for f in ("customer", "time", "discount", "staple"))
    )
    order_table = _order_table(w, orders)
    zone_names = np.array([z for _, z, _ in ZONES])
    countries = np.array([c for c, _, _ in ZONES])
    customers = pl.DataFrame(
        {
            "customer_id": w.ids,
            "created_at": w.stamp(w.created),
            "country": pl.Series(countries[w.zone]),
            "timezone": pl.Series(zone_names[w.zone]),
            "email_opt_in": w.opt_in,
        }
    )
    tables = {"orders": order_table, "customers": customers}
    if w.part == 0:  # the catalogue is the first part's
        tables["products"] = _product_table(w)
    tables |= {
        "events": _web_events(w, regular_customer, regular_time),
        "email_events": _email_events(w),
        "assignments": assignments,
    }
    truth = pl.DataFrame(
        {
            "customer_id": w.ids,
            "timezone": pl.Series(zone_names[w.zone]),
            "preferred_hour": w.preferred_hour,
            "hour_focus": w.focus,
            "is_lead": w.is_lead,
            "mean_interval_days": np.where(w.is_lead, np.nan, w.mean_interval),
            "regularity": w.regularity,
            "dropout_at": w.stamp(np.minimum(w.dropout, 10 * w.days)),
            "top_category": pl.Series(np.array([c for c, *_ in CATEGORIES])[w.affinity.argmax(1)]),
            # each category's share of the customer's draws (see `_World.pick_products`)
            **{f"affinity_{c}": w.affinity[:, k] for k, (c, *_) in enumerate(CATEGORIES)},
            "staple_product_id": w.catalog.product_ids.gather(np.maximum(w.staple, 0)),
            "staple_cycle_days": np.where(
                w.staple >= 0, w.catalog.replenish_days[np.maximum(w.staple, 0)], np.nan
            ),
            "cart_abandon_prob": w.cart_abandon,
            "open_prob": w.open_prob,
            "machine_opener": w.machine_opener,
            "price_sensitivity": w.price_sensitivity,
            "true_uplift_free_shipping": uplift_shipping,
            "true_uplift_10_off": uplift_discount,
        }
    ).with_columns(
        pl.col("dropout_at").cast(TIMESTAMP),
        staple_product_id=pl.when(pl.col("staple_cycle_days").is_not_nan()).then(
            pl.col("staple_product_id")
        ),
    )
    return tables, truth
