"""The whole loop on a simulated shop, checked against its planted truth: does the second
round, decided by an offer model learned from the first round's logged exploration, earn more
than the first round and than the naive policies a shop would otherwise run?

    python experiments/loop.py [--customers 50000] [--seed 0] [--work DIR] [--results loop]

Every step is the real `sendwise` CLI in a child process, in a throw-away home and MLflow
store: `simulate`; `train all` (the offer model from the simulator's randomised campaign) and
`promote all`; round 1: `score --campaign round1` with exploration, `simulate respond`,
`report campaign`, `train offer --from-log`, `promote offer`; round 2, three weeks later:
`score --campaign round2`, `simulate respond`, `report campaign`.

Profit is the shop's: `MARGIN` of an order's full price, less the offer's discount on every
order of the window and free shipping's fee per order (`policy.offers.default_cost`), against
what the recipient would have bought unmailed. Per policy, over the same recipients (round 2's
randomised recipients assigned to mail):
- **planted**: `features.respond.profit_effect`, expected values from the planted truth (no
  draws), so naive policies are valued exactly as sendwise's rounds are;
- **estimate**: realised profit of the mailed minus the global holdout (Welch 95% CI), from
  the log's decisions joined with what followed (`reports.outcomes`, the report's join and
  groups). A naive policy is round 2's batch with its mail changed (every mailed recipient
  gets the shop's best local hour, the popular products round 2 gave its products holdout,
  and one offer), answered by the same customers with the same response seed: the holdout
  and every baseline purchase are shared, so "round 2 minus policy" is also estimated paired,
  row by row, with a far narrower interval.

Writes experiments/results/loop.{json,md} (`--results` names them otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
from bench_features import machine, write_results
from child import run_cli, work_env

from sendwise.features.builders import activity_hours
from sendwise.features.contract import TABLES
from sendwise.features.respond import (
    discount_of,
    expectations,
    profit_effect,
    read_truth,
    respond,
    with_responses,
)
from sendwise.features.shop import Shop, read_shop
from sendwise.policy.offers import default_cost
from sendwise.reports.campaign import assigned_to_mail, randomised
from sendwise.reports.outcomes import outcomes

DAYS = 14
MARGIN = 0.4
ARMS = ("none", "free_shipping", "10_off")
PER_ORDER = {arm: default_cost(arm).per_order for arm in ARMS}
DISCOUNT = {arm: discount_of(arm) for arm in ARMS}
HOLDOUTS = {"global": 0.10, "campaign": 0.0, "products": 0.05, "sendtime": 0.05}
ROUNDS = {  # round 1 explores widely; round 2 runs as a shop would, with the default exploration
    "round1": {"holdouts": {**HOLDOUTS, "offer": 0.10}, "offers": {"exploration": 0.5}},
    "round2": {"holdouts": {**HOLDOUTS, "offer": 0.05}, "offers": {"exploration": 0.1}},
}
ROUND2_AFTER_DAYS = 21  # round 1's windows (send within a day, then DAYS) have closed
QUIET = (21, 8)  # the default quiet hours: the shop's best hour is sought outside them


def toml(settings: dict) -> str:
    return "".join(
        f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
        for section, values in settings.items()
    )


def realised_profit() -> pl.Expr:
    """What each decision's recipient earned the shop in its window (`reports.outcomes`): the
    margin on full price less the discount, less free shipping's fee per order."""
    discount = pl.col("offer").replace_strict(DISCOUNT, default=0.0, return_dtype=pl.Float64)
    discount = pl.when(pl.col("send")).then(discount.fill_null(0.0)).otherwise(0.0)
    fee = pl.col("offer").replace_strict(PER_ORDER, default=0.0, return_dtype=pl.Float64)
    fee = pl.when(pl.col("send")).then(fee.fill_null(0.0)).otherwise(0.0)
    gross = pl.col("revenue") / (1 - discount)
    return ((MARGIN - discount) * gross - fee * pl.col("orders")).alias("profit")


def measured(attributed: pl.DataFrame) -> dict:
    """Mailed minus global holdout, realised profit and revenue per 1,000 recipients, with
    Welch 95% intervals, over the report's randomised recipients."""
    frame = attributed.with_columns(realised_profit()).filter(
        randomised("transactional" in attributed.columns)
    )
    mailed = frame.filter(assigned_to_mail())
    held = frame.filter(pl.col("holdout_kind") == "global")
    found = {"n_mailed": mailed.height, "n_holdout": held.height}
    for column in ("profit", "revenue"):
        a, b = mailed[column].to_numpy(), held[column].to_numpy()
        effect = a.mean() - b.mean()
        half = 1.96 * np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        found[column] = {
            "effect_per_1000": 1000 * effect,
            "ci_low": 1000 * (effect - half),
            "ci_high": 1000 * (effect + half),
        }
    return found


def paired(mine: pl.DataFrame, other: pl.DataFrame) -> dict:
    """Round 2 minus another policy on the same recipients and response draws, per 1,000
    recipients assigned to mail under both, with a paired 95% interval."""
    keep = randomised("transactional" in mine.columns) & assigned_to_mail()
    a, b = (
        frame.with_columns(realised_profit()).filter(keep).select("customer_id", "profit")
        for frame in (mine, other)
    )
    both = a.join(b, on="customer_id", suffix="_other")
    difference = (both["profit"] - both["profit_other"]).to_numpy()
    half = 1.96 * difference.std(ddof=1) / np.sqrt(len(difference))
    mean = difference.mean()
    return {
        "recipients": len(difference),
        "effect_per_1000": 1000 * mean,
        "ci_low": 1000 * (mean - half),
        "ci_high": 1000 * (mean + half),
    }


def best_local_hour(shop: Shop, as_of) -> int:
    """The shop's busiest local hour of activity outside quiet hours: one hour for all."""
    counts = activity_hours(shop, as_of).group_by("local_hour").len().collect()
    allowed = counts.filter((pl.col("local_hour") >= QUIET[1]) & (pl.col("local_hour") < QUIET[0]))
    return int(allowed.sort("len", "local_hour", descending=[True, False])["local_hour"][0])


def at_local_hour(decisions: pl.DataFrame, zones: pl.DataFrame, hour: int) -> pl.Expr:
    """`send_at` for the next `hour` o'clock (local) after each decision, per time zone."""
    found = pl.lit(None, pl.Datetime("us", "UTC"))
    for zone in zones["timezone"].unique().sort():
        local = pl.col("decided_at").dt.convert_time_zone(zone)
        today = local.dt.truncate("1d").dt.replace_time_zone(None) + pl.duration(hours=hour)
        local_send = pl.when(today > local.dt.replace_time_zone(None)).then(today)
        local_send = local_send.otherwise(today + pl.duration(days=1))
        utc = local_send.dt.replace_time_zone(zone).dt.convert_time_zone("UTC")
        found = pl.when(pl.col("timezone") == zone).then(utc).otherwise(found)
    return found.alias("send_at")


def changed(
    decisions: pl.DataFrame,
    shop: Shop,
    hour: int | None = None,
    popular: bool = False,
    offers: pl.Expr | None = None,
) -> pl.DataFrame:
    """Round 2's batch with every mailed recipient given the shop's best `hour`, the `popular`
    products round 2 gave its products holdout, and `offers`, where given; holdouts,
    suppressions and caps as round 2 had them."""
    zones = shop.customers.select("customer_id", "timezone").collect()
    sent = pl.col("send")
    feature = pl.col("holdout_kind").is_in(["products", "sendtime", "offer"]).fill_null(False)
    changes = [pl.when(feature).then(None).otherwise(pl.col("holdout_kind")).alias("holdout_kind")]
    if hour is not None:
        changes += [
            pl.when(sent).then(at_local_hour(decisions, zones, hour)).alias("send_at"),
            pl.lit([], pl.List(pl.Int64)).alias("best_hours"),
        ]
    if popular:
        listed = decisions.filter(pl.col("holdout_kind") == "products")["products"][0]
        listed = pl.lit(listed.to_list(), dtype=pl.List(pl.String))
        changes.append(pl.when(sent).then(listed).otherwise(pl.col("products")).alias("products"))
    if offers is not None:
        changes.append(pl.when(sent).then(offers).otherwise(pl.col("offer")).alias("offer"))
    joined = decisions.join(zones, on="customer_id", how="left")
    return joined.with_columns(changes).drop("timezone")


def random_arm(seed: int) -> pl.Expr:
    """A uniformly random arm per recipient, fixed by `seed`."""
    draw = (pl.col("customer_id").hash(seed) % len(ARMS)).cast(pl.Int64)
    return draw.replace_strict(dict(enumerate(ARMS)), return_dtype=pl.String)


def in_memory(shop: Shop) -> Shop:
    """The shop's tables read now: `simulate respond` rewrites the files under a lazy scan."""
    tables = {name: shop.table(name).collect().lazy() for name in TABLES}
    return replace(shop, **tables)


def decide_logged(
    campaign: str, config: Path, stem: str, shop_dir: Path, as_of: str, work: Path, env: dict
) -> tuple[dict, pl.DataFrame]:
    """`score` the shop as `campaign` under `config` (logged), then export what was logged:
    each step's seconds, and the logged decisions (`work/<stem>-log.parquet`)."""
    steps = {
        "score": ["score", "--shop", str(shop_dir), "--as-of", as_of, "--out",
                  str(work / f"{stem}.parquet"), "--campaign", campaign, "--config", str(config)],
        "export": ["decisions", "export", "--campaign", campaign, "--out",
                   str(work / f"{stem}-log.parquet")],
    }  # fmt: skip
    seconds = {step: run_cli(args, env)["wall_s"] for step, args in steps.items()}
    return seconds, pl.read_parquet(work / f"{stem}-log.parquet")


def run_round(
    name: str, shop_dir: Path, as_of: str, work: Path, env: dict, replay: dict | None = None
) -> dict:
    """Decide (logged), value the decisions on the planted truth, respond, report. Returns the
    logged decisions, the shop they were decided on (in memory), the planted profit, the
    decisions with what followed, and the report's figures. With `replay` (an environment and
    a round's name), that round's policy also decides, in that environment, for the same
    recipients before they respond (its decisions under "replay")."""
    config = work / f"{name}.toml"
    config.write_text(toml(ROUNDS[name]))
    cli = {
        "respond": ["simulate", "respond", "--shop", str(shop_dir), "--campaign", name,
                    "--days", str(DAYS)],
        "report": ["report", "campaign", "--shop", str(shop_dir), "--campaign", name, "--days",
                   str(DAYS), "--out", str(work / f"{name}.html"), "--json",
                   str(work / f"{name}.json")],
    }  # fmt: skip
    seconds, decisions = decide_logged(name, config, name, shop_dir, as_of, work, env)
    replayed = None
    if replay is not None:
        earlier = work / f"{replay['round']}.toml"
        _, replayed = decide_logged(name, earlier, "replay", shop_dir, as_of, work, replay["env"])
    before, truth = in_memory(read_shop(shop_dir)), read_truth(shop_dir)
    expected = expectations(before, truth, decisions, DAYS)
    seconds |= {step: run_cli(cli[step], env)["wall_s"] for step in ("respond", "report")}
    figures = json.loads((work / f"{name}.json").read_text())
    revenue = next(
        c
        for c in figures["comparisons"]
        if (c["name"], c["metric"]) == ("mailed vs global holdout", "revenue_per_recipient")
    )
    attributed = outcomes(decisions, read_shop(shop_dir), DAYS)
    return {
        "decisions": decisions,
        "before": before,
        "truth": truth,
        "attributed": attributed,
        "planted": profit_effect(expected, MARGIN, PER_ORDER),
        "mail": mail_figures(expected, before),
        "measured": measured(attributed),
        "report_revenue": revenue,
        "seconds": seconds,
        "replay": replayed,
    }


def mail_figures(expected: pl.DataFrame, shop: Shop) -> dict:
    """Over the mailed: the planted open and click rates, and the mean price of the first
    listed product (what a click buys in the planted model)."""
    prices = shop.products.select("product_id", "price").collect()
    sent = expected.filter(pl.col("send")).with_columns(product_id=pl.col("products").list.first())
    sent = sent.join(prices, on="product_id", how="left")
    return {
        "open_rate": sent["p_open"].mean(),
        "click_rate": sent["p_click"].mean(),
        "first_product_price": sent["price"].mean(),
    }


def answered(frame: pl.DataFrame, round2: dict) -> dict:
    """Another policy's decisions for round 2's recipients, valued on the planted truth and
    answered by the same customers with round 2's response seed (the CLI's default): planted
    profit, what the report would measure, and round 2 minus it, paired."""
    shop, truth = round2["before"], round2["truth"]
    expected = expectations(shop, truth, frame, DAYS)
    attributed = outcomes(frame, with_responses(shop, respond(shop, truth, frame, DAYS)), DAYS)
    return {
        "planted": profit_effect(expected, MARGIN, PER_ORDER),
        "mail": mail_figures(expected, shop),
        "measured": measured(attributed),
        "round2_minus_this": paired(round2["attributed"], attributed),
    }


def naive_policies(round2: dict, seed: int) -> dict[str, dict]:
    """Each naive policy on round 2's recipients (see `answered`)."""
    decisions, shop = round2["decisions"], round2["before"]
    hour = best_local_hour(shop, decisions["decided_at"].min())
    rows = {"no offer": pl.lit("none"), "random offers": random_arm(seed)}
    rows |= {f"best single offer ({arm})": pl.lit(arm) for arm in ARMS[1:]}
    found = {
        label: {"hour": hour}
        | answered(changed(decisions, shop, hour, popular=True, offers=offers), round2)
        for label, offers in rows.items()
    }
    singles = [k for k in found if k.startswith("best single offer")]
    best = max(singles, key=lambda k: found[k]["planted"]["per_1000"])
    found["best single offer"] = found.pop(best) | {"arm": best.split("(")[1].rstrip(")")}
    for other in singles:
        found.pop(other, None)
    return found


def one_change(round2: dict) -> dict[str, dict]:
    """Round 2 with one of its choices made naively, to show what each choice earned."""
    decisions, shop = round2["decisions"], round2["before"]
    hour = best_local_hour(shop, decisions["decided_at"].min())
    variants = {
        "popular products instead of personal ones": {"popular": True},
        f"the shop's best hour ({hour}:00) instead of personal ones": {"hour": hour},
        "no offer (nor exploration)": {"offers": pl.lit("none")},
    }
    return {
        label: answered(changed(decisions, shop, **change), round2)
        for label, change in variants.items()
    }


def round1_replayed(round2: dict) -> dict:
    """Round 1's policy (its offer champion and settings) decided for round 2's recipients on
    round 2's day, in a copy of the sendwise home taken before round 1's log was learned
    from: the same recipients and draws, so round 2 minus round 1 is estimated paired."""
    replay = round2["replay"]
    order = round2["decisions"].select("customer_id")
    if set(order["customer_id"]) != set(replay["customer_id"]):
        raise SystemExit("round 1's policy, replayed, decided for other recipients than round 2")
    return answered(order.join(replay, on="customer_id", how="left"), round2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="An empty folder to keep every step's files in.")
    parser.add_argument("--results", default="loop", help="Results file name.")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loop-") as tmp:
        work = args.work or Path(tmp)
        env = work_env(work)
        shop_dir = work / "shop"
        run_cli(["simulate", "--customers", str(args.customers), "--seed", str(args.seed),
                 "--out", str(shop_dir)], env)  # fmt: skip
        as_of = read_shop(shop_dir).latest()
        first, second = as_of.date().isoformat(), (as_of + timedelta(days=ROUND2_AFTER_DAYS))
        run_cli(["train", "all", "--shop", str(shop_dir), "--as-of", first], env)
        run_cli(["promote", "all", "--shop", str(shop_dir)], env)
        round1 = run_round("round1", shop_dir, first, work, env)
        # round 1's policy as it stood, kept to decide again for round 2's recipients
        (work / "before").mkdir()
        for kept in ("home", "mlflow.db"):
            copy = shutil.copytree if (work / kept).is_dir() else shutil.copy2
            copy(work / kept, work / "before" / kept)
        before = env | {
            "SENDWISE_HOME": str(work / "before" / "home"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'before' / 'mlflow.db'}",
        }
        trained = run_cli(["train", "offer", "--shop", str(shop_dir), "--from-log",
                           "--campaign", "round1", "--window-days", str(DAYS)], env)  # fmt: skip
        # promoted only if it beats the champion on the log's held-out rows; else round 2
        # decides with the champion it had (a refusal exits 1: an answer, not a failure)
        promoted = run_cli(["promote", "offer", "--shop", str(shop_dir)], env, check=False)
        round2 = run_round(
            "round2", shop_dir, second.date().isoformat(), work, env,
            replay={"env": before, "round": "round1"},
        )  # fmt: skip
        round1["replayed"] = round1_replayed(round2)
        others = naive_policies(round2, args.seed)
        variants = one_change(round2)
    report(args, round1, round2, others, variants, trained, promoted, time.perf_counter() - started)


def round2_offers(promoted: dict) -> str:
    """Whose offers round 2 gave: the model learned from round 1's log where it was promoted,
    else the champion round 1 had (the learned one did not beat it on the log's held-out rows)."""
    if promoted["exit_code"] == 0:
        return "offer model learned from round 1's log"
    return "round 1's offer champion: the model learned from its log was not promoted"


def command(args) -> str:
    named = f" --results {args.results}" if args.results != "loop" else ""
    return f"python experiments/loop.py --customers {args.customers} --seed {args.seed}{named}"


def mail_cells(mail: dict) -> str:
    return f"{mail['open_rate']:.4f} | {mail['click_rate']:.4f} | {mail['first_product_price']:.2f}"


def report(args, round1, round2, others, variants, trained, promoted, seconds: float) -> None:
    """The table, the done-when check (issue 13), and the JSON."""
    replayed = round1.pop("replayed")
    round1["round2_minus_this"] = replayed["round2_minus_this"]
    policies = {
        "sendwise round 1 (exploration 0.5)": round1,
        "sendwise round 1's policy, deciding for round 2's recipients": replayed,
        f"sendwise round 2 ({round2_offers(promoted)})": round2,
        **{f"everyone, best hour, popular products, {k}": v for k, v in others.items()},
    }
    best = others["best single offer"]
    lines = [
        "# The loop: decide, respond, measure, retrain, decide again",
        "",
        f"`{command(args)}` at {machine()['commit']} ({seconds:.0f} s on {os.cpu_count()} cores).",
        "",
        "Incremental profit per 1,000 recipients against not mailing them (margin 0.4 on full "
        "price, less the offer's discount on every order and free shipping's "
        f"{PER_ORDER['free_shipping']} per order): **planted**, expected under the planted "
        "truth; **estimate**, realised, mailed minus the 10% global holdout, 95% CI. Naive "
        f"policies mail round 2's recipients at the shop's best local hour ({best['hour']}:00), "
        f"with popular products; the best single offer is {best['arm']} (the best by planted "
        "profit). The last columns are round 2 minus the row's policy, estimated paired on the "
        "same recipients and response draws: the naive policies and round 1's policy (its "
        "offer champion and settings, from a copy of the sendwise home taken before round 1's "
        "log was learned from) decide for round 2's recipients on round 2's day; round 1's own "
        "row gives its planted margin, with the replay's paired estimate.",
        "",
        "| policy | planted | estimate | 95% CI | round 2 minus this: planted | estimated (95% CI) |",
        "|---|---:|---:|---|---:|---|",
    ]
    checks = {}
    for label, found in policies.items():
        m, versus = found["measured"]["profit"], found.get("round2_minus_this")
        row = (
            f"| {label} | {found['planted']['per_1000']:+,.0f} | {m['effect_per_1000']:+,.0f} "
            f"| [{m['ci_low']:+,.0f}, {m['ci_high']:+,.0f}] |"
        )
        if versus is None:
            lines.append(row + " | |")
            continue
        gap = round2["planted"]["per_1000"] - found["planted"]["per_1000"]
        checks[label] = {"planted_margin": gap, **versus, "beaten": gap > 0 < versus["ci_low"]}
        lines.append(
            row + f" {gap:+,.0f} | {versus['effect_per_1000']:+,.0f} [{versus['ci_low']:+,.0f}, "
            f"{versus['ci_high']:+,.0f}] |"
        )
    beaten = all(c["beaten"] for c in checks.values())
    lines += [
        "",
        f"Round 2 earns more planted profit than every other row by a margin the estimates "
        f"resolve (the interval of round 2 minus it above 0): **{'yes' if beaten else 'no'}**"
        + (
            ""
            if beaten
            else f" (not: {', '.join(k for k, c in checks.items() if not c['beaten'])})"
        )
        + ".",
        "",
        f"Offer model from the log: `{trained['stdout']}`; promotion: `{promoted['stdout']}`.",
        "",
        "What each of round 2's choices earned: round 2 with that one choice made naively, "
        "for the same recipients and draws.",
        "",
        "| round 2 with | planted | round 2 minus it: planted | estimated (95% CI) | open rate "
        "| click rate | first product's mean price |",
        "|---|---:|---:|---|---:|---:|---:|",
        f"| (nothing changed) | {round2['planted']['per_1000']:+,.0f} | | | "
        f"{mail_cells(round2['mail'])} |",
    ]
    for label, found in variants.items():
        versus = found["round2_minus_this"]
        gap = round2["planted"]["per_1000"] - found["planted"]["per_1000"]
        lines.append(
            f"| {label} | {found['planted']['per_1000']:+,.0f} | {gap:+,.0f} | "
            f"{versus['effect_per_1000']:+,.0f} [{versus['ci_low']:+,.0f}, "
            f"{versus['ci_high']:+,.0f}] | {mail_cells(found['mail'])} |"
        )
    result = {
        "machine": machine(),
        "command": command(args),
        "seconds": round(seconds, 1),
        "margin": MARGIN,
        "per_order": PER_ORDER,
        "rounds": {name: ROUNDS[name] for name in ROUNDS},
        "policies": {
            label: {
                "planted": found["planted"],
                "measured": found["measured"],
                **(
                    {"report_revenue": found["report_revenue"]} if "report_revenue" in found else {}
                ),
                **({"round2_minus_this": checks[label]} if label in checks else {}),
            }
            for label, found in policies.items()
        },
        "round2_beats_every_other_row": beaten,
        "train_from_log": trained["stdout"],
        "promote": promoted["stdout"],
        "steps_seconds": {"round1": round1["seconds"], "round2": round2["seconds"]},
        "round2_with_one_change": {
            label: {k: found[k] for k in ("planted", "round2_minus_this", "mail")}
            for label, found in variants.items()
        },
    }
    write_results(args.results, lines, result)


if __name__ == "__main__":
    main()
