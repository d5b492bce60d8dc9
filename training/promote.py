"""Promotion on equal terms: the challenger and the champion judged on the same validation data.

A model's logged validation figure belongs to its own window and its own data, so two figures
from different trainings are not comparable. `promote` therefore takes the challenger's window
(for shop models the H days before its cut-off, for offer models its held-out 30%) and scores
the champion there too: the champion's recorded settings are validated on that window exactly
as the challenger's were (fitted on what was known before it, so neither saw the answers),
or, for an offer model from other data, the champion itself is scored on the held-out rows.
There an offer model is judged first on what it would earn as served (its targeting, one arm
for everyone or no offer, as the offer policy's evidence gate decides), in held-out profit per
customer over no offer; Qini AUC, which ranks customers but earns nothing by itself, decides
between two that would earn the same (both serving no offer, or the same arm). Both figures
are printed; `champion` moves only when the challenger wins. A model that reads columns the
shop's data do not have is refused before anything is scored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from sendwise.errors import SendwiseError
from sendwise.features import builders
from sendwise.features.experiment import (
    Experiment,
    ExperimentSpec,
    campaign_experiment,
    logged_experiment,
    read_experiment,
)
from sendwise.features.shop import Shop, read_shop
from sendwise.models.base import ModelFitError
from sendwise.models.uplift import OfferModel
from sendwise.policy.offers import OfferPolicy
from sendwise.store import registry
from sendwise.store.decisions import DecisionLog

from .backtest import PRIMARY_METRIC
from .offers import arm_shares, fit_offer, policy_evidence, split, uplift_metrics
from .train import validate

SHOWN_MISSING = 5  # missing columns named in a message
LOGGED = re.compile(r"decision log \((.+)\)")  # the source `logged_experiment` names


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    message: str


def missing_columns(needed: list[str], present: list[str]) -> list[str]:
    have = set(present)
    return [c for c in needed if c not in have]


def describe_missing(missing: list[str]) -> str:
    first = ", ".join(missing[:SHOWN_MISSING])
    more = f" (first {SHOWN_MISSING} of {len(missing)})" if len(missing) > SHOWN_MISSING else ""
    return first + more


def _run_tags(version) -> dict[str, str]:
    return registry.client().get_run(version.run_id).data.tags


def _schema(version) -> list[str] | None:
    document = registry.run_document(version.run_id, "schema.json")
    return None if document is None else list(document.get("customer_features", []))


def shop_data(shop: str, version, given: Shop | None) -> Shop:
    """The shop's data: the directory named on the command line, else the one the version
    was trained on."""
    if given is not None:
        return given
    directory = _run_tags(version).get("shop_dir")
    if directory and Path(directory).is_dir():
        return read_shop(directory)
    raise SendwiseError(
        f"promoting models of shop {shop} scores them on the shop's data: pass --shop DIR"
    )


def _feature_columns(data: Shop, as_of: datetime) -> list[str]:
    return builders.customer_features(data, as_of).collect_schema().names()


def _incompatible(task: str, shop: str, version, columns: list[str]) -> str | None:
    """Why `version` cannot serve data with these columns, or None."""
    needed = _schema(version)
    missing = missing_columns(needed or [], columns)
    if not missing:
        return None
    return (
        f"{registry.label(shop, task)} v{version.version} reads columns the shop's data do not "
        f"have: {describe_missing(missing)}"
    )


def promote(
    task: str,
    shop: str,
    data: Shop | None = None,
    version: str | None = None,
    policy: OfferPolicy | None = None,
) -> Promotion:
    """Make the challenger (or `version`, a deliberate choice) the shop's champion: the
    challenger only if it beats the champion on the challenger's own validation data. Offer
    models are valued at `policy`'s margin and costs (default: the defaults')."""
    if version is not None:
        return choose(task, shop, version, data)
    challenger = registry.alias_version(shop, task, registry.CHALLENGER)
    label = registry.label(shop, task)
    if challenger is None:
        return Promotion(False, f"{label} has no challenger; train one first")
    champion = registry.alias_version(shop, task, registry.CHAMPION)
    if champion is not None and champion.version == challenger.version:
        return Promotion(True, f"{label} v{challenger.version} is already the champion")
    metric = PRIMARY_METRIC[task]
    served = None
    if task == "offer":
        new, old, note, refusal, served = _offer_figures(
            shop, challenger, champion, data, policy or OfferPolicy()
        )
    else:
        new, old, note, refusal = shop_figures(task, shop, challenger, champion, data)
    if refusal:
        return Promotion(False, f"refused: {refusal}")
    c, o = f"v{challenger.version}", f"v{champion.version}" if champion else ""
    if champion is None:
        registry.set_champion(shop, task, challenger.version, "promote", "first champion")
        return Promotion(True, f"promoted {label} {c} ({metric} {new:.4f}); no champion before")
    both = f"challenger {c} {metric} {new:.4f}, champion {o} {_shown(old)} ({note})"
    if served is not None:
        gains = f"{served[0]:+.4f} against {served[1]:+.4f} {served[2]}"
        both = f"as served, challenger {c} earns {gains}; {both}"
        if served[0] > served[1]:
            registry.set_champion(shop, task, challenger.version, "promote", both)
            return Promotion(True, f"promoted {label}: {both}")
        if served[0] < served[1]:
            return Promotion(
                False, f"refused: {label}: {both}; the challenger would earn less as served"
            )
    if old is None or new > old:
        registry.set_champion(shop, task, challenger.version, "promote", both)
        return Promotion(True, f"promoted {label}: {both}")
    if new == old and _newer(challenger, champion):
        registry.set_champion(shop, task, challenger.version, "promote", both + "; newer data")
        tie = "a tie, and the challenger's data are newer"
        return Promotion(True, f"promoted {label}: {both}; {tie}")
    return Promotion(False, f"refused: {label}: {both}; the challenger does not beat the champion")


def _shown(value: float | None) -> str:
    return "cannot be scored" if value is None else f"{value:.4f}"


def _newer(challenger, champion) -> bool:
    def as_of(version) -> str:
        return version.tags.get("as_of") or version.tags.get("trained_at") or ""

    return as_of(challenger) > as_of(champion)


def shop_figures(task: str, shop: str, challenger, champion, given: Shop | None):
    """(challenger's figure, champion's figure on the same window or None, how, refusal)."""
    metric = PRIMARY_METRIC[task]
    tags = _run_tags(challenger)
    as_of = datetime.fromisoformat(tags["as_of"])
    horizon = int(tags["horizon_days"])
    data = shop_data(shop, challenger, given)
    columns = _feature_columns(data, as_of)
    problem = _incompatible(task, shop, challenger, columns)
    if problem:
        return None, None, "", f"{problem}; it cannot serve shop {shop}"
    new = registry.run_metric(challenger.run_id, metric)
    if new is None:
        return None, None, "", f"{registry.label(shop, task)} v{challenger.version} has no {metric}"
    if champion is None:
        return new, None, "", None
    window = f"{as_of - timedelta(days=horizon):%Y-%m-%d}..{as_of:%Y-%m-%d}"
    if _incompatible(task, shop, champion, columns):
        return new, None, "it reads columns the shop's data do not have", None
    champion_tags = _run_tags(champion)
    settings = registry.run_document(champion.run_id, "settings.json")
    same_terms = (
        champion_tags.get("as_of") == tags["as_of"]
        and champion_tags.get("horizon_days") == tags["horizon_days"]
        and champion_tags.get("shop_dir") == tags.get("shop_dir")
        and champion_tags.get("code_version") == tags.get("code_version")
    )
    if same_terms or settings is None:
        old = registry.run_metric(champion.run_id, metric)
        how = "its own validation on the same window"
        if not same_terms:
            how = "its own window: no settings recorded to re-validate"
        return new, old, how, None
    try:
        metrics, _ = validate(task, data, as_of, horizon, settings)
    except ModelFitError as error:
        return new, None, f"its settings cannot be validated here: {error}", None
    return new, metrics[metric], f"its settings re-validated on {window}", None


def _experiment_of(shop: str, version, given: Shop | None) -> Experiment:
    """The experiment a registered offer model was trained on, read again."""
    tags = _run_tags(version)
    spec = registry.run_document(version.run_id, "spec.json") or {}
    spec = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    if tags.get("experiment_file"):
        path = Path(tags["experiment_file"])
        if not path.is_file():
            raise SendwiseError(f"{path}: the offer challenger's experiment file is gone")
        return replace(read_experiment(path, ExperimentSpec(**spec)), shop=shop)
    source = tags.get("experiment", "")
    data = shop_data(shop, version, given)
    window_days, outcome = int(tags.get("window_days", 14)), spec.get("outcome", "conversion")
    if logged := LOGGED.fullmatch(source):  # `train offer --from-log`: the log, read again
        campaigns = logged.group(1).split(", ")
        decisions = DecisionLog().read().filter(pl.col("campaign").is_in(campaigns))
        return logged_experiment(data, decisions, window_days, outcome)
    campaign = source.removeprefix("campaign ")
    return campaign_experiment(data, campaign, window_days, outcome)


def _served_gain(evidence: dict, model: OfferModel, policy: OfferPolicy) -> float:
    """What `model` earns per customer over no offer as the policy serves it (its evidence
    gate; caps, budget, exploration and holdout aside), from `policy_evidence` on held-out
    rows: its targeting's, else that of the one arm it gives everyone (0: none)."""
    arm = policy.served(model)
    earned = evidence["learned_policy"] if arm is None else evidence["single_arm"][arm]
    return earned["value"] - evidence["single_arm"][model.arms[0]]["value"]


def _offer_figures(
    shop: str, challenger, champion, given: Shop | None, policy: OfferPolicy
) -> tuple:
    """The offer challenger's held-out figure and the champion's on the same held-out rows,
    how, a refusal, and (where both can be valued as served on those rows: the champion from
    other data) each one's served gain there with its unit."""
    metric = PRIMARY_METRIC["offer"]
    experiment = _experiment_of(shop, challenger, given)
    problem = _incompatible("offer", shop, challenger, experiment.frame.columns)
    if problem is None and given is not None:
        as_of = given.latest() or datetime.now()
        problem = _incompatible("offer", shop, challenger, _feature_columns(given, as_of))
    if problem:
        return None, None, "", f"{problem}; it cannot serve shop {shop}", None
    new = registry.run_metric(challenger.run_id, metric)
    if champion is None:
        return new, None, "", None, None
    seed = int(_run_tags(challenger).get("seed", 0))
    train_rows, test_rows = split(experiment, seed)
    held_out = experiment.subset(test_rows)
    path, _ = registry.download(shop, "offer", version=champion.version)
    model = OfferModel.load(path)
    if missing_columns(model.feature_names, experiment.frame.columns):
        return new, None, "it reads columns the challenger's data do not have", None, None
    arms = [a for a in model.outcome.treatments_ if a in set(experiment.arm)]
    if not arms:
        return new, None, "none of its arms is in the challenger's data", None, None
    if _run_tags(champion).get("experiment") == experiment.source:
        # trained on these very rows: its settings are fitted again on the challenger's part
        not_features = set(experiment.frame.columns) - set(experiment.features.columns)
        kept = set(model.feature_names) | not_features
        frame = experiment.frame.select([c for c in experiment.frame.columns if c in kept])
        twin = fit_offer(replace(experiment, frame=frame).subset(train_rows), seed)
        uplift = twin.outcome.predict_uplift(held_out.frame.select(twin.feature_names))
        scored = uplift_metrics(held_out, uplift, twin.outcome.treatments_)
        how = "its settings fitted again on the challenger's training part"
        return new, scored[metric], how, None, None
    uplift = model.outcome.predict_uplift(held_out.frame.select(model.feature_names))
    columns = [list(model.outcome.treatments_).index(a) for a in arms]
    scored = uplift_metrics(held_out, np.asarray(uplift)[:, columns], arms)
    how = "scored on the challenger's held-out rows"
    served = _served(shop, challenger, model, held_out, arm_shares(experiment), policy)
    return new, scored[metric], how, None, served


def _served(
    shop: str,
    challenger,
    champion: OfferModel,
    held_out: Experiment,
    shares: dict[str, float],
    policy: OfferPolicy,
) -> tuple[float, float, str] | None:
    """(challenger's, champion's served gain on the challenger's held-out rows, unit), or None
    where the two cannot be valued on the same terms: the champion offers an arm those rows
    lack, or the challenger's evidence (from its training) is not of these very rows at this
    policy's margin and costs (the log or the configuration changed since)."""
    offered = OfferModel.load(registry.download(shop, "offer", version=challenger.version)[0])
    evidence = offered.evidence
    if (
        not evidence
        or not set(champion.arms) <= set(held_out.arm)
        or missing_columns(champion.feature_names, held_out.features.columns)
    ):
        return None
    held = policy_evidence(held_out, champion, policy, shares)
    same_terms = evidence["customers"] == held["customers"] and all(
        np.isclose(evidence["single_arm"][a]["value"], held["single_arm"][a]["value"])
        for a in set(evidence["single_arm"]) & set(held["single_arm"])
    )
    if not same_terms:
        return None
    return (
        _served_gain(evidence, offered, policy),
        _served_gain(held, champion, policy),
        f"{held['unit']} over no offer",
    )


def choose(task: str, shop: str, version: str, given: Shop | None = None) -> Promotion:
    """`promote MODEL --version N`: a deliberate choice, refused only for a model that cannot
    read the shop's data."""
    chosen = registry.model_version(shop, task, version)
    label = registry.label(shop, task)
    current = registry.alias_version(shop, task, registry.CHAMPION)
    if current is not None and current.version == chosen.version:
        return Promotion(True, f"{label} v{chosen.version} is already the champion")
    data = given
    if data is None:
        directory = _run_tags(chosen).get("shop_dir")
        data = read_shop(directory) if directory and Path(directory).is_dir() else None
    if data is not None:
        as_of = data.latest() or datetime.now()
        problem = _incompatible(task, shop, chosen, _feature_columns(data, as_of))
        if problem:
            return Promotion(False, f"refused: {problem}; it cannot serve shop {shop}")
    before = f"v{current.version}" if current else "none"
    registry.set_champion(shop, task, chosen.version, "choose", f"--version, was {before}")
    return Promotion(
        True, f"{label}: champion is now v{chosen.version} (chosen with --version; was {before})"
    )
