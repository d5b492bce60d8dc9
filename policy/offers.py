"""The value-aware offer policy: per customer, the arm with the highest expected incremental
profit, under a budget and a maximum share per arm, with exploration and a holdout so the
next campaign is randomised data again.

Incremental profit of arm a against control, for one customer:

    margin * (E[revenue | a] - E[revenue | control]) - cost(a)
    cost(a) = percent(a) * E[revenue | a] + per_order(a) * P(buy | a) + per_send(a)

The cost is paid on every order the offer touches, including those the customer would have
placed anyway: an offer that moves nobody costs money. Without a revenue outcome, the
outcome itself is the value (`value_per_outcome` each).

An offer model is trusted only as far as its held-out evidence goes (`proof`, the confidence
asked for; training stores the evidence, `training.offers.policy_evidence`): its per-customer
targeting is served where it beat the best single arm on held-out profit, else every customer
is valued alike, each arm at the lower bound of its held-out gain over control, so an offer
goes to everyone only once it has been shown to pay, and to no one otherwise. Exploration and
the holdout go on, so the next campaign can prove more, except for an arm shown to lose money
(the upper bound of its gain below 0): it is no longer offered, not even to explore.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from sendwise.models.uplift import OfferModel
from sendwise.policy.randomise import uniform

SHIPPING_COST = 4.95


class ArmCost(BaseModel):
    """What an arm costs (`[offers.costs.ARM]` in the configuration)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    percent: float = Field(0.0, ge=0, le=1)  # share of order value given away (10_off: 0.10)
    per_order: float = Field(0.0, ge=0)  # fixed cost per order under the arm (free shipping)
    per_send: float = Field(0.0, ge=0)  # cost of making the offer at all


def default_cost(arm: str) -> ArmCost:
    """Costs read from conventional arm names: `10_off`, `15pct_off`, `free_shipping`."""
    percent = re.fullmatch(r"(\d+(?:\.\d+)?)(?:pct|_pct|%)?_off", arm)
    if percent:
        return ArmCost(percent=float(percent.group(1)) / 100)
    if arm == "free_shipping":
        return ArmCost(per_order=SHIPPING_COST)
    return ArmCost()


@dataclass(frozen=True)
class OfferPolicy:
    margin: float = 0.4  # gross margin on incremental revenue
    value_per_outcome: float = 1.0  # used when the experiment has no revenue outcome
    costs: dict[str, ArmCost] = field(default_factory=dict)  # by arm; default_cost otherwise
    max_share: dict[str, float] = field(default_factory=dict)  # by arm, of all customers
    budget: float | None = None  # total expected offer cost allowed
    exploration: float = 0.10  # share given a uniformly random arm
    holdout: float = 0.05  # share kept in control, flagged `holdout`
    campaign: str = "default"  # salt: the same customer draws anew in each campaign
    proof: float = 0.95  # confidence held-out evidence must give; 0 serves targeting unjudged

    def cost(self, arm: str) -> ArmCost:
        return self.costs.get(arm, default_cost(arm))

    def realised(
        self, arms: np.ndarray, outcome: np.ndarray, revenue: np.ndarray | None, control: str
    ) -> np.ndarray:
        """What each customer earned the shop under the arm they got, on the terms
        `expected_values` predicts: margin on revenue (or the outcome's value) less the arm's
        cost on what they bought."""
        value = self.margin * revenue if revenue is not None else self.value_per_outcome * outcome
        for arm in np.unique(arms):
            if arm == control:
                continue
            cost = self.cost(arm)
            paid = cost.per_order * outcome + cost.per_send
            if revenue is not None:
                paid = paid + cost.percent * revenue
            value = np.where(arms == arm, value - paid, value)
        return value

    def trusted(self, model: OfferModel) -> np.ndarray | None:
        """None where the model's targeting is to be served; else one row of values for every
        customer: control 0, each arm the lower bound of its held-out gain over control, and
        -inf (not offered, not even to explore) for an arm shown to lose money."""
        evidence = model.evidence
        if not evidence or self.proof <= 0:
            return None
        z = NormalDist().inv_cdf(self.proof)
        targeting = evidence["gain_over_best_single_arm"]
        if targeting["value"] - z * targeting["se"] > 0:
            return None
        values = [0.0]
        for arm in model.arms[1:]:
            found = evidence["arms"].get(arm)
            losing = found is None or found["value"] + z * found["se"] < 0
            values.append(-np.inf if losing else found["value"] - z * found["se"])
        return np.array(values)

    def served(self, model: OfferModel) -> str | None:
        """What the policy serves from `model`: None for its targeting, else the one arm
        every customer gets (control: no offer)."""
        alike = self.trusted(model)
        return None if alike is None else model.arms[int(np.argmax(alike))]

    def expected_values(self, model: OfferModel, X: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(rows, arms) expected incremental profit against control (column 0 is 0) and the
        expected cost of each arm."""
        arms = model.arms
        buy = np.clip(model.outcome.predict_outcome(X), 0, None)
        if model.revenue is not None:
            revenue = np.maximum(model.revenue.predict_outcome(X), 0)
            gain = self.margin * (revenue - revenue[:, :1])
        else:
            revenue = np.zeros_like(buy)
            gain = self.value_per_outcome * (buy - buy[:, :1])
        cost = np.column_stack(
            [
                self.cost(a).percent * revenue[:, k]
                + self.cost(a).per_order * buy[:, k]
                + self.cost(a).per_send
                for k, a in enumerate(arms)
            ]
        )
        cost[:, 0] = 0.0
        alike = self.trusted(model)
        if alike is not None:
            return np.broadcast_to(alike, cost.shape).copy(), cost
        return gain - cost, cost

    def _greedy(self, values: np.ndarray, cost: np.ndarray, arms: list[str]) -> np.ndarray:
        """Best arm per row, most valuable rows first, within each arm's share and the budget."""
        n = len(values)
        capacity = np.array([self.max_share.get(a, 1.0) * n for a in arms])
        capacity[0] = np.inf
        budget = np.inf if self.budget is None else self.budget
        chosen = np.zeros(n, dtype=np.int64)
        unconstrained = not self.max_share and self.budget is None
        best = values.argmax(axis=1)
        if unconstrained:
            return np.where(values[np.arange(n), best] > 0, best, 0)
        preference = np.argsort(-values, axis=1)
        for row in np.argsort(-values.max(axis=1), kind="stable"):
            for arm in preference[row]:
                if values[row, arm] <= 0 or arm == 0:
                    break
                if capacity[arm] >= 1 and cost[row, arm] <= budget:
                    chosen[row] = arm
                    capacity[arm] -= 1
                    budget -= cost[row, arm]
                    break
        return chosen

    def choose(
        self, values: np.ndarray, cost: np.ndarray, ids: Sequence[str] | pl.Series, arms: list[str]
    ) -> OfferChoice:
        """The policy's arm per row, then the holdout and exploration draws (salted by
        campaign); `values` of arms not on offer are -inf (control, column 0, always is)."""
        policy = self._greedy(values, cost, arms)
        n_allowed = np.isfinite(values).sum(axis=1)
        held = uniform(ids, f"{self.campaign}:offer-holdout") < self.holdout
        explore_draw = uniform(ids, f"{self.campaign}:offer-explore")
        exploring = ~held & (explore_draw < self.exploration)
        # the k-th arm on offer, k uniform: a random arm among those allowed
        k = np.minimum(
            (uniform(ids, f"{self.campaign}:offer-arm") * n_allowed).astype(int), n_allowed - 1
        )
        random_arm = np.argmax(np.cumsum(np.isfinite(values), axis=1) > k[:, None], axis=1)
        chosen = np.where(held, 0, np.where(exploring, random_arm, policy))
        # P(arm | customer): holdout and exploration mix with the policy's own choice
        shares = (
            (1 - self.holdout) * self.exploration / n_allowed,
            (1 - self.holdout) * (1 - self.exploration),
            self.holdout,
        )
        return OfferChoice(policy, chosen, held, exploring, shares)

    def decide(self, model: OfferModel, X: pl.DataFrame, ids: list[str]) -> pl.DataFrame:
        """Per customer: chosen arm, its expected incremental profit, whether held out or
        exploring, and the probability the chosen arm had (for causal use of the log)."""
        arms = model.arms
        values, cost = self.expected_values(model, X)
        choice = self.choose(values, cost, ids, arms)
        rows = np.arange(len(ids))
        uplift = model.outcome.predict_uplift(X)
        return pl.DataFrame(
            {
                "customer_id": ids,
                **{f"uplift_{a}": uplift[:, k] for k, a in enumerate(arms[1:])},
                **{f"value_{a}": values[:, k] for k, a in enumerate(arms)},
                "policy_arm": np.array(arms)[choice.policy],
                "offer": np.array(arms)[choice.chosen],
                "expected_value": values[rows, choice.chosen],
                "holdout": choice.held,
                "exploring": choice.exploring,
                "probability": choice.probability,
            }
        )


@dataclass(frozen=True)
class OfferChoice:
    """Arm indices per row: the policy's own, the one given, and how it was drawn."""

    policy: np.ndarray
    chosen: np.ndarray
    held: np.ndarray
    exploring: np.ndarray
    shares: tuple[np.ndarray, float, float]  # each allowed arm's by exploration; policy; holdout

    def probability_of(self, arms: np.ndarray) -> np.ndarray:
        """P(arm | customer) of each row's arm index, over the holdout, exploration and
        policy draws."""
        exploring, policy, held = self.shares
        return exploring + policy * (arms == self.policy) + held * (arms == 0)

    @property
    def probability(self) -> np.ndarray:
        """P(the chosen arm | customer)."""
        return self.probability_of(self.chosen)
