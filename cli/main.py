"""The `sendwise` command: one sub-command per step, one clear line on failure."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import click
import polars as pl
import typer
from rich.console import Console

from sendwise.cli.scale import EngineOption, SchedulerOption, progress_bar, shop_app
from sendwise.errors import SendwiseError
from sendwise.features.clock import parse_as_of
from sendwise.features.engine import Engine
from sendwise.features.shop import (
    EXPERIMENTS,
    bucket_dirs,
    bucketed_dirs,
    check_shop_name,
    read_shop,
    shop_name,
    write_shop,
    write_shop_parts,
)
from sendwise.store.files import write_frame
from sendwise.store.settings import home

from .triggers import register as register_triggers

# Each command imports what only it needs, so that start-up stays short.

app = typer.Typer(
    help="sendwise: which offer, which products and when to send, for every email recipient.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
import_app = typer.Typer(help="Turn published data into a shop directory.", no_args_is_help=True)
features_app = typer.Typer(help="Point-in-time customer features.", no_args_is_help=True)
report_app = typer.Typer(help="Reports for marketers.", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(report_app, name="report")
app.add_typer(features_app, name="features")
app.add_typer(shop_app, name="shop")

console = Console(stderr=True)
out = Console(soft_wrap=True)  # a line a message, even in a narrow terminal or a pipe

ShopDir = Annotated[Path, typer.Option("--shop", help="Shop directory (Parquet or CSV tables).")]
AsOf = Annotated[
    str, typer.Option("--as-of", help="Cut-off: YYYY-MM-DD (end of day, UTC) or ISO timestamp.")
]
ShopNameOption = Annotated[
    str | None,
    typer.Option("--name", help="The shop's name in shop.toml (default: the directory's name)."),
]
ShopName = Annotated[
    str | None,
    typer.Option(
        "--shop-name",
        help=f"Whose models: a shop's name (default for experiment files: {EXPERIMENTS}).",
    ),
]


def _shop_choice(shop: Path | None, name: str | None, default: str | None = EXPERIMENTS):
    """(the shop's name, its data if a directory was named) from --shop DIR / --shop-name."""
    if shop is not None:
        data = read_shop(shop)
        if name is not None and check_shop_name(name) != data.name:
            raise SendwiseError(f"--shop {shop} is shop {data.name}, not --shop-name {name}")
        return data.name, data
    if name is not None:
        return check_shop_name(name), None
    if default is None:
        raise SendwiseError("name the shop: --shop DIR or --shop-name NAME")
    return default, None


@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


simulate_app = typer.Typer(help="The synthetic shop and how its customers respond.")
app.add_typer(simulate_app, name="simulate")


@simulate_app.callback(invoke_without_command=True)
def simulate_command(
    context: typer.Context,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Shop directory to write.")] = None,
    customers: Annotated[int, typer.Option(min=1, help="Number of customers.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same shop.")] = 0,
    end: Annotated[str, typer.Option(help="Last day of the shop's history.")] = "2026-06-30",
    name: ShopNameOption = None,
) -> None:
    """Write a synthetic shop (all six tables) with its ground truth in ground_truth/, and its
    name in shop.toml; `simulate respond` lets its customers answer the logged decisions."""
    if context.invoked_subcommand is not None:
        return
    if out_dir is None:
        raise SendwiseError("simulate needs --out DIR (or: simulate respond --shop DIR)")
    from sendwise.features.simulate import PART_CUSTOMERS, SimulationSettings, simulate_parts

    settings = SimulationSettings(customers=customers, seed=seed, end=parse_as_of(end))
    started = time.perf_counter()
    rows: dict[str, int] = {}
    parts = -(-customers // PART_CUSTOMERS)
    with progress_bar(f"Simulating {customers:,} customers", parts) as tick:

        def counted() -> Iterator[dict[str, pl.DataFrame]]:
            for tables, truth in simulate_parts(settings):
                for table, frame in tables.items():
                    rows[table] = rows.get(table, 0) + len(frame)
                yield {**tables, "ground_truth/customers": truth}
                tick(1)

        write_shop_parts(counted(), out_dir, name)
    counts = ", ".join(f"{table} {count:,}" for table, count in rows.items())
    out.print(
        f"Wrote {out_dir} (shop {shop_name(out_dir)}) in {time.perf_counter() - started:.1f}s: "
        f"{counts}"
    )


@simulate_app.command("respond")
def simulate_respond_command(
    shop_dir: ShopDir,
    days: Annotated[int, typer.Option("--days", min=1, help="Days after each send.")] = 14,
    campaign: Annotated[
        str | None, typer.Option("--campaign", help="Only this campaign's decisions.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the responses.")] = 0,
) -> None:
    """The simulated shop's customers respond to the logged decisions from the planted truth
    (send hour, product affinity, offer uplift and cost, fatigue): their email events and
    orders are appended to the shop, and the planted value of every comparison is written to
    ground_truth/planted.json."""
    from sendwise.features.respond import PLANTED_FILE, append_responses, read_truth, respond
    from sendwise.store.decisions import DecisionLog

    shop, truth = read_shop(shop_dir), read_truth(shop_dir)
    decision_log = DecisionLog()
    decisions = decision_log.read(campaign=campaign).join(
        truth.select("customer_id"), on="customer_id", how="semi"
    )
    if decisions.is_empty():
        raise SendwiseError(
            f"no logged decisions for the customers of {shop_dir} in {decision_log.address}"
        )
    with console.status(f"Responding to {len(decisions):,} decisions..."):
        responses = respond(shop, truth, decisions, days, seed)
        append_responses(shop_dir, responses)
    out.print(
        f"Appended {len(responses.email_events):,} email events and {len(responses.orders):,} "
        f"orders to {shop_dir} ({len(decisions):,} decisions, {days} days); planted values in "
        f"{shop_dir / PLANTED_FILE}"
    )


@import_app.command("online-retail")
def import_online_retail(
    file: Annotated[Path, typer.Argument(help="UCI Online Retail .csv, .csv.gz or .xlsx.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Shop directory to write.")],
    name: ShopNameOption = None,
) -> None:
    """Import the UCI Online Retail data set; prints what was kept and dropped, and why."""
    from sendwise.features import online_retail

    with console.status(f"Reading {file}..."):
        tables, summary = online_retail.convert(file)
        write_shop(tables, out_dir, name)
    for line in summary.lines():
        out.print(line)
    out.print(f"Wrote {out_dir} (shop {shop_name(out_dir)})")


@features_app.command("build")
def features_build(
    shop: ShopDir,
    as_of: AsOf,
    out_file: Annotated[Path, typer.Option("--out", help="Output .parquet or .csv file.")],
    engine: EngineOption = Engine.local,
    scheduler: SchedulerOption = None,
) -> None:
    """One row per customer known on the cut-off; nothing after it is read. A bucketed shop
    is built bucket by bucket on --engine, with the same result."""
    from sendwise.features import builders

    cutoff = parse_as_of(as_of)
    started = time.perf_counter()
    buckets = bucket_dirs(shop)
    if buckets or engine is not Engine.local:
        with progress_bar(f"Building features ({engine})", len(buckets)) as tick:
            frame = builders.features_by_bucket(shop, cutoff, engine, scheduler, tick)
    else:
        with console.status("Building features..."):
            frame = builders.customer_features(read_shop(shop), cutoff).collect()
    write_frame(frame, out_file)
    out.print(
        f"Wrote {out_file}: {len(frame):,} customers x {frame.width - 1} features as of "
        f"{cutoff:%Y-%m-%d %H:%M:%S} UTC in {time.perf_counter() - started:.2f}s"
    )


class Task(StrEnum):
    propensity = "propensity"
    crosssell = "crosssell"
    sendtime = "sendtime"
    offer = "offer"
    all = "all"


Horizon = Annotated[int, typer.Option("--horizon-days", min=1, help="Outcome window H in days.")]
OptionalShop = Annotated[
    Path | None, typer.Option("--shop", help="Shop directory (Parquet or CSV tables).")
]
OptionalAsOf = Annotated[
    str | None,
    typer.Option("--as-of", help="Cut-off: YYYY-MM-DD (end of day, UTC) or ISO timestamp."),
]
ExperimentFile = Annotated[
    Path | None,
    typer.Option("--experiment", help="Experiment table (CSV or Parquet), one row per customer."),
]
ArmCol = Annotated[str | None, typer.Option("--arm-col", help="Column naming each row's arm.")]
Control = Annotated[str | None, typer.Option("--control", help="The control arm's value.")]
Outcome = Annotated[str | None, typer.Option("--outcome", help="Outcome column (e.g. visit).")]
Exclude = Annotated[
    str | None,
    typer.Option("--exclude", help="Post-treatment columns, comma-separated: never features."),
]
Revenue = Annotated[
    str | None, typer.Option("--revenue", help="Revenue column of the experiment file, if any.")
]
Campaign = Annotated[
    str | None, typer.Option("--campaign", help="Campaign in the shop's assignments (latest).")
]
WindowDays = Annotated[
    int, typer.Option("--window-days", min=1, help="Outcome window after assignment, in days.")
]


def _experiment(
    experiment: Path | None,
    shop: Path | None,
    campaign: str | None,
    window_days: int,
    arm_col: str | None,
    control: str | None,
    outcome: str | None,
    exclude: str | None,
    revenue: str | None,
    from_log: bool = False,
):
    """The experiment table named on the command line (a file, a campaign of the shop, or the
    shop's logged decisions)."""
    from sendwise.features.experiment import (
        ExperimentSpec,
        campaign_experiment,
        logged_experiment,
        read_experiment,
    )

    if from_log:
        if shop is None or experiment is not None:
            raise SendwiseError("--from-log learns from a shop's decisions: give --shop DIR only")
        from sendwise.store.decisions import DecisionLog

        data = read_shop(shop)
        logged = DecisionLog().read(campaign=campaign)
        return logged_experiment(data, logged, window_days, outcome or "conversion")

    if experiment is not None:
        defaults = ExperimentSpec()
        spec = ExperimentSpec(
            arm_col=arm_col or defaults.arm_col,
            control=control or defaults.control,
            outcome=outcome or defaults.outcome,
            exclude=tuple(c.strip() for c in (exclude or "").split(",") if c.strip()),
            revenue=revenue,
        )
        return read_experiment(experiment, spec)
    if shop is None:
        raise SendwiseError("name an experiment: --experiment FILE, or --shop DIR [--campaign]")
    return campaign_experiment(read_shop(shop), campaign, window_days, outcome or "conversion")


def _train_offer(experiment_args: tuple, name: str | None = None) -> None:
    from dataclasses import replace

    from sendwise.policy.config import load_settings
    from sendwise.training.offers import train_offer

    with console.status("Reading the experiment..."):
        table = _experiment(*experiment_args)
    tags = {}
    experiment, shop, _, window_days = experiment_args[:4]
    if experiment is None:  # the shop's own campaign: its models are the shop's
        if name is not None and check_shop_name(name) != table.shop:
            raise SendwiseError(f"--shop {shop} is shop {table.shop}, not --shop-name {name}")
        tags = {"shop_dir": str(shop.resolve()), "window_days": str(window_days)}
    else:
        table = replace(table, shop=check_shop_name(name) if name else EXPERIMENTS)
    policy = load_settings().offers.policy("train")  # the margin and costs it is judged at
    with console.status(f"Training offer uplift on {len(table.frame):,} customers..."):
        result = train_offer(table, tags, policy=policy)
    shown = ", ".join(
        f"{k} {v:.4f}" for k, v in result.metrics.items() if k in ("uplift_at_30", "qini_auc")
    )
    out.print(
        f"{_registered(result.registered)} (shop {table.shop}; arms "
        f"{', '.join(result.model.arms)}; held-out 30%: {shown}; {_serves(result.model, policy)})",
        markup=False,
    )


def _serves(model, policy) -> str:
    """What the offer policy will serve from the model, and the held-out profit behind it."""
    import numpy as np

    evidence = model.evidence
    gain = evidence["gain_over_best_single_arm"]
    found = (
        f"targeting earns {gain['value']:+.4f} {evidence['unit']} over "
        f"{evidence['best_single_arm']} for everyone "
        f"(95% CI {gain['low']:+.4f} to {gain['high']:+.4f})"
    )
    alike = policy.trusted(model)
    if alike is None:
        return f"{found}: its targeting is served"
    dropped = [a for a, v in zip(model.arms, alike, strict=True) if v == -np.inf]
    dropped = f"; {', '.join(dropped)} shown to lose money: not even explored" if dropped else ""
    arm = policy.served(model)
    if arm == model.arms[0]:
        return f"{found}: not proven, nor any offer for everyone: no offer but exploration{dropped}"
    return f"{found}: not proven; {arm} has proven to pay and goes to everyone{dropped}"


def _registered(registered) -> str:
    """What really became the challenger: this version, or one another run registered since."""
    if registered.is_challenger:
        return f"{registered.name} v{registered.version} is the challenger"
    if registered.challenger:
        return (
            f"{registered.name} v{registered.version} is registered; the challenger is "
            f"v{registered.challenger}, registered by another run since"
        )
    return f"{registered.name} v{registered.version} is registered"


@app.command("train")
def train_command(
    task: Annotated[Task, typer.Argument(help="Which model to train.")],
    shop: OptionalShop = None,
    as_of: OptionalAsOf = None,
    horizon_days: Horizon = 90,
    experiment: ExperimentFile = None,
    arm_col: ArmCol = None,
    control: Control = None,
    outcome: Outcome = None,
    exclude: Exclude = None,
    revenue: Revenue = None,
    campaign: Campaign = None,
    window_days: WindowDays = 14,
    shop_name_: ShopName = None,
    from_log: Annotated[
        bool,
        typer.Option(
            "--from-log",
            help="offer: learn from the shop's own logged decisions (exploration, offer "
            "holdout), weighted by their logged probabilities; --campaign to pick one.",
        ),
    ] = False,
    engine: EngineOption = Engine.local,
    scheduler: SchedulerOption = None,
) -> None:
    """Validate, fit, log to MLflow and register the model as the shop's `challenger`.

    Shop models validate out of time (the H days before the cut-off); the offer model learns
    from a randomised experiment (a file, the shop's latest campaign, or with --from-log the
    decisions sendwise logged) and validates on a held-out 30%. `all` trains the offer model
    too when the shop has assignments. With --engine dask (a bucketed shop), the propensity
    model and the product ranker (crosssell) are fitted on the Dask cluster with lightgbm.dask;
    the others on this machine.
    """
    from sendwise.training.train import Skipped, train, train_all

    experiment_args = (
        experiment,
        shop,
        campaign,
        window_days,
        arm_col,
        control,
        outcome,
        exclude,
        revenue,
        from_log,
    )
    if task is Task.offer:
        _train_offer(experiment_args, shop_name_)
        return
    if shop is None or as_of is None:
        raise SendwiseError(f"train {task.value} needs --shop and --as-of")
    cutoff, data = parse_as_of(as_of), read_shop(shop)
    with console.status(f"Training {task.value}...") as status:
        if task is Task.all:
            outcomes = train_all(
                data,
                cutoff,
                horizon_days,
                lambda name: status.update(f"Training {name}..."),
                engine,
                scheduler,
            )
        else:
            outcomes = [
                train(task.value, data, cutoff, horizon_days, engine=engine, scheduler=scheduler)
            ]
        for result in outcomes:
            if isinstance(result, Skipped):
                out.print(str(result), markup=False)
                continue
            shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if k != "customers")
            out.print(
                f"{_registered(result.registered)} "
                f"(validation on the {horizon_days} days before the cut-off: {shown})"
            )
    if task is Task.all and "assignments" in data.present:
        _train_offer(experiment_args)


class Tunable(StrEnum):
    propensity = "propensity"


@app.command("tune")
def tune_command(
    task: Annotated[Tunable, typer.Argument(help="Which model to tune.")],
    shop: ShopDir,
    as_of: AsOf,
    trials: Annotated[int, typer.Option(min=1, help="Optuna trials.")] = 30,
    horizon_days: Horizon = 90,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage URL (default: SQLite under .sendwise; or postgresql://...)."
        ),
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name (resumed if it exists).")] = None,
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            help="local: trials one after another here; dask: one task per trial on Dask, "
            "every worker sharing the study in --storage (PostgreSQL on a real cluster).",
        ),
    ] = Engine.local,
    scheduler: SchedulerOption = None,
) -> None:
    """Search the model's settings with Optuna (pruning), then train, log and register the
    best as `challenger`."""
    from rich.progress import Progress

    from sendwise.training.tune import tune_propensity

    cutoff, data = parse_as_of(as_of), read_shop(shop)
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("Tuning propensity", total=trials)
        result = tune_propensity(
            data,
            cutoff,
            horizon_days,
            trials,
            storage,
            study,
            progress=lambda done: progress.advance(bar, done),
            engine=engine,
            scheduler=scheduler,
        )
    registered = result.trained.registered
    out.print(
        f"Study {result.study_name}: {result.trials} trials ({result.pruned} pruned), best "
        f"validation ROC-AUC {result.best_value:.4f} (as registered: v{registered.version}) "
        f"with {result.best_params}"
    )
    if result.kept:
        out.print(f"{registered.name}: {result.kept}")
    else:
        out.print(f"{registered.name} v{registered.version} is the challenger (best trial)")


Version = Annotated[
    str | None, typer.Option("--version", help="Make this version champion (a deliberate choice).")
]


@app.command("promote")
def promote_command(
    task: Annotated[Task, typer.Argument(help="Which model to promote.")],
    shop: OptionalShop = None,
    name: ShopName = None,
    version: Version = None,
) -> None:
    """Make the shop's challenger the champion only if it beats the champion on the same
    validation data (the challenger's window; the champion is scored there too); or, with
    --version N, that version. Exits 1 when refused."""
    from sendwise.policy.config import load_settings
    from sendwise.store import registry
    from sendwise.training.promote import promote
    from sendwise.training.train import MODELS

    owner, data = _shop_choice(shop, name)
    if version is not None and task is Task.all:
        raise SendwiseError("--version names one model's version: promote MODEL --version N")
    refused, tried = False, 0
    names = [*MODELS, "offer"] if task is Task.all else [task.value]
    # the margin and costs offers earn at (a broken configuration stops only offers)
    policy = load_settings().offers.policy("promote") if "offer" in names else None
    with console.status("Scoring challenger and champion on the same data..."):
        for model in names:
            if task is Task.all and not registry.alias_version(owner, model, "challenger"):
                continue
            result = promote(model, owner, data, version, policy)
            out.print(result.message, markup=False, highlight=False)
            refused, tried = refused or not result.promoted, tried + 1
    if not tried:
        out.print(f"shop {owner} has no challenger in {registry.tracking_uri()}; train one first")
    if refused or not tried:
        raise typer.Exit(1)


@app.command("rollback")
def rollback_command(
    task: Annotated[Task, typer.Argument(help="Which model to roll back.")],
    shop: OptionalShop = None,
    name: ShopName = None,
) -> None:
    """Return the shop's champion to the previous champion (as the registry recorded it)."""
    from sendwise.store import registry
    from sendwise.training.train import MODELS

    owner, _ = _shop_choice(shop, name)
    names = [*MODELS, "offer"] if task is Task.all else [task.value]
    for model in names:
        if task is Task.all and not registry.alias_version(owner, model, "champion"):
            continue
        out.print(registry.rollback(owner, model), markup=False, highlight=False)


models_app = typer.Typer(help="The registry's models, per shop.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(
    shop: OptionalShop = None,
    name: ShopName = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Each model's versions of a shop (default: every shop): aliases, validation figure, data
    window, when trained."""
    import json
    from dataclasses import asdict

    from rich.table import Table

    from sendwise.store import registry

    owner = _shop_choice(shop, name, default=None)[0] if shop or name else None
    versions = registry.list_versions(owner)
    if as_json:
        shops: dict[str, dict[str, list]] = {}
        for v in versions:
            row = {k: val for k, val in asdict(v).items() if k not in ("shop", "task")}
            shops.setdefault(v.shop, {}).setdefault(v.task, []).append(row)
        document = {"tracking_uri": registry.tracking_uri(), "shops": shops}
        print(json.dumps(document, indent=2))
        return
    if not versions:
        where = f"shop {owner}" if owner else "any shop"
        out.print(f"No models of {where} in {registry.tracking_uri()}")
        return
    for owner_name in sorted({v.shop for v in versions}):
        table = Table(title=f"shop {owner_name}", title_justify="left")
        for column in ("model", "version", "aliases", "validation", "data window", "trained at"):
            table.add_column(column, overflow="fold")
        for v in (v for v in versions if v.shop == owner_name):
            figure = f"{v.metric} {v.value:.4f}" if v.value is not None else "-"
            trained = (v.trained_at or "-")[:16].replace("T", " ")
            aliases = ", ".join(v.aliases) or "-"
            table.add_row(v.task, v.version, aliases, figure, v.data_window or "-", trained)
        out.print(table)


@app.command("backtest")
def backtest_command(
    shop: ShopDir,
    as_of: AsOf,
    horizon_days: Horizon = 90,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the metrics as JSON here.")
    ] = None,
    task: Annotated[
        list[Task] | None, typer.Option("--task", help="Only these tasks (repeatable).")
    ] = None,
) -> None:
    """Every model next to its baselines on (as_of, as_of + H]."""
    import json

    from rich.table import Table

    from sendwise.store.files import atomic_path
    from sendwise.training.backtest import TASKS, backtest

    cutoff, data = parse_as_of(as_of), read_shop(shop)
    tasks = [t.value for t in task if t is not Task.all] if task else list(TASKS)
    with console.status("Backtesting...") as status:
        sections = backtest(
            data,
            cutoff,
            horizon_days,
            tasks,
            progress=lambda t: status.update(f"Backtesting {t}..."),
        )
    for section in sections:
        columns = [k for k in next(iter(section.rows.values())) if k != "customers"]
        table = Table(
            "model",
            *columns,
            title=f"{section.task} on ({as_of}, +{horizon_days}d]",
            title_justify="left",
        )
        for name, row in section.rows.items():
            table.add_row(name, *(f"{row[c]:.4f}" for c in columns))
        out.print(table)
    if json_file:
        document = {
            "as_of": cutoff.isoformat(),
            "horizon_days": horizon_days,
            "sections": {s.task: s.rows for s in sections},
        }
        with atomic_path(json_file) as staging:
            staging.write_text(json.dumps(document, indent=2) + "\n")
        out.print(f"Wrote {json_file}")


ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config", help="Business rules (TOML); default SENDWISE_CONFIG, else the defaults."
    ),
]


@app.command("score")
def score_command(
    shop: ShopDir,
    as_of: AsOf,
    out_file: Annotated[Path, typer.Option("--out", help="Output .parquet or .csv file.")],
    campaign: Annotated[
        str, typer.Option("--campaign", help="Campaign name: salts holdouts, counts for caps.")
    ] = "default",
    config: ConfigFile = None,
    engine: EngineOption = Engine.local,
    scheduler: SchedulerOption = None,
) -> None:
    """Batch decisions for every customer known on the cut-off, from the champion models,
    through the same policy as the API; the batch is appended to the decision log whole.
    A bucketed shop is scored bucket by bucket on --engine, with the same decisions."""
    from sendwise.policy.config import load_settings
    from sendwise.serving.engine import Champions, export_batch

    cutoff, started = parse_as_of(as_of), time.perf_counter()
    settings = load_settings(config)
    if engine is Engine.local:
        buckets = bucket_dirs(shop)
    else:
        buckets = bucketed_dirs(shop, f"--engine {engine} scores")
    data = read_shop(shop, validate=not buckets)  # buckets were checked when partitioned
    with console.status(f"Loading shop {data.name}'s champions..."):
        champions = Champions.load(data.name)
    with progress_bar(f"Scoring ({engine})", max(len(buckets), 1)) as tick:
        done = export_batch(
            champions, data, cutoff, out_file, settings, campaign, None, engine, scheduler, tick
        )
    out.print(
        f"Wrote {out_file}: {done.rows:,} decisions ({done.sends:,} to send, "
        f"{done.holdouts:,} held out) in {time.perf_counter() - started:.1f}s, logged as "
        f"campaign {campaign!r} (shop {data.name}'s models {champions.version_label})"
    )


config_app = typer.Typer(help="The business rules decisions follow.", no_args_is_help=True)
decisions_app = typer.Typer(help="The decision log.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(decisions_app, name="decisions")


@config_app.command("show")
def config_show(config: ConfigFile = None) -> None:
    """Print the effective settings as TOML (the defaults, overridden by the file)."""
    from sendwise.policy.config import config_path, load_settings, to_toml

    path = config_path(config)
    out.print(f"# effective settings ({path or 'defaults: no --config or SENDWISE_CONFIG'})")
    out.print(to_toml(load_settings(config)), markup=False, highlight=False, end="")


@decisions_app.command("export")
def decisions_export(
    out_file: Annotated[Path, typer.Option("--out", help="Output .parquet or .csv file.")],
    since: Annotated[
        str | None, typer.Option("--since", help="Only decisions from this date (UTC).")
    ] = None,
    campaign: Annotated[str | None, typer.Option("--campaign", help="Only this campaign.")] = None,
) -> None:
    """The decision log as a table, one row per decision, oldest first."""
    from sendwise.store.decisions import DecisionLog

    start = None
    if since:
        start = parse_as_of(since)
        if len(since) == 10:  # a day means from its start
            start -= timedelta(days=1) - timedelta(microseconds=1)
    decision_log = DecisionLog()
    frame = decision_log.read(start, campaign)
    write_frame(frame, out_file)
    out.print(f"Wrote {out_file}: {len(frame):,} decisions from {decision_log.address}")


def _offer_policy(margin: float, exploration: float, holdout: float, max_share: list[str]):
    from sendwise.policy.offers import OfferPolicy

    shares = {}
    for item in max_share:
        arm, _, share = item.partition("=")
        try:
            shares[arm.strip()] = float(share)
        except ValueError:
            raise SendwiseError(
                f"--max-share {item!r}: expected ARM=SHARE, e.g. 10_off=0.3"
            ) from None
    return OfferPolicy(margin=margin, exploration=exploration, holdout=holdout, max_share=shares)


Margin = Annotated[float, typer.Option(min=0.0, max=1.0, help="Gross margin on revenue.")]
Exploration = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Share given a random arm (keeps data causal).")
]
Holdout = Annotated[float, typer.Option(min=0.0, max=1.0, help="Share held out in control.")]
MaxShare = Annotated[
    list[str] | None, typer.Option("--max-share", help="ARM=SHARE cap, e.g. 10_off=0.3.")
]


@app.command("score-experiment")
def score_experiment_command(
    experiment: Annotated[Path, typer.Option("--experiment", help="Customers to score.")],
    out_file: Annotated[Path, typer.Option("--out", help="Output .parquet or .csv file.")],
    margin: Margin = 0.4,
    exploration: Exploration = 0.1,
    holdout: Holdout = 0.05,
    max_share: MaxShare = None,
    arm_col: ArmCol = None,
    control: Control = None,
    outcome: Outcome = None,
    exclude: Exclude = None,
    name: ShopName = None,
) -> None:
    """Per customer: predicted uplift of each arm, expected incremental profit, chosen arm.

    Uses the champion offer model, which remembers its experiment's layout: arm and outcome
    columns in the file are ignored. The layout flags are optional; one that contradicts
    what the model remembers is an error.
    """
    from sendwise.features.experiment import ID, read_table_file
    from sendwise.models.uplift import OfferModel
    from sendwise.store import registry

    owner = check_shop_name(name) if name else EXPERIMENTS
    with console.status("Loading the offer champion..."):
        path, version = registry.download(owner, "offer")
        model = OfferModel.load(path)
    given = {"arm_col": arm_col, "control": control, "outcome": outcome}
    if exclude is not None:
        given["exclude"] = sorted(c.strip() for c in exclude.split(",") if c.strip())
    for key, value in given.items():
        remembered = model.spec.get(key)
        remembered = sorted(remembered) if key == "exclude" else remembered
        if value is not None and value != remembered:
            flag = "--" + key.replace("_", "-")
            shown = ",".join(remembered) if key == "exclude" else remembered
            raise SendwiseError(
                f"{flag} {','.join(value) if key == 'exclude' else value} contradicts the "
                f"offer model v{version}, trained with {flag} {shown}"
            )
    frame = read_table_file(experiment)
    missing = [c for c in model.feature_names if c not in frame.columns]
    if missing:
        raise SendwiseError(
            f"{experiment}: no column {', '.join(missing[:5])} that the offer champion v{version} "
            f"of shop {owner} reads; fix: score a file with its columns, or train and promote "
            f"one on this file: sendwise train offer --experiment {experiment} --shop-name {owner}"
        )
    ids = frame[ID].to_list() if ID in frame.columns else [str(i) for i in range(len(frame))]
    policy = _offer_policy(margin, exploration, holdout, max_share or [])
    decisions = policy.decide(model, frame.select(model.feature_names), ids)
    write_frame(decisions, out_file)
    counts = ", ".join(
        f"{a} {n:,}" for a, n in decisions["offer"].value_counts(sort=True).iter_rows()
    )
    out.print(
        f"Wrote {out_file}: {len(decisions):,} customers (offer v{version}); offers: {counts}; "
        f"expected incremental value {decisions['expected_value'].sum():,.2f}"
    )


@report_app.command("uplift")
def report_uplift_command(
    out_file: Annotated[Path, typer.Option("--out", help="The HTML page to write.")],
    experiment: ExperimentFile = None,
    shop: OptionalShop = None,
    campaign: Campaign = None,
    window_days: WindowDays = 14,
    arm_col: ArmCol = None,
    control: Control = None,
    outcome: Outcome = None,
    exclude: Exclude = None,
    revenue: Revenue = None,
    segment_col: Annotated[
        str | None, typer.Option("--segment-col", help="Column to break effects down by.")
    ] = None,
) -> None:
    """One self-contained HTML page: effects with confidence intervals, incremental outcomes
    and money, effect by segment and predicted-uplift decile, Qini curves, what targeting is
    worth, and a plain-words summary."""
    from sendwise.reports.uplift import render, summarise
    from sendwise.store.files import atomic_path

    table = _experiment(
        experiment, shop, campaign, window_days, arm_col, control, outcome, exclude, revenue
    )
    with console.status("Estimating effects and cross-fitting uplift..."):
        summary = summarise(table, segment_col)
        page = render(summary)
    with atomic_path(out_file) as staging:
        staging.write_text(page, encoding="utf-8")
    out.print(f"Wrote {out_file}")
    out.print(summary.headline())


@report_app.command("campaign")
def report_campaign_command(
    shop: ShopDir,
    out_file: Annotated[Path, typer.Option("--out", help="The HTML page to write.")],
    campaign: Annotated[
        str | None, typer.Option("--campaign", help="Only this campaign's decisions.")
    ] = None,
    days: Annotated[
        int, typer.Option("--days", min=1, help="Days after each send that count.")
    ] = 7,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures as JSON.")
    ] = None,
    decisions_file: Annotated[
        Path | None,
        typer.Option(
            "--decisions", help="A `decisions export` file to report on instead of the log."
        ),
    ] = None,
) -> None:
    """What the logged decisions earned: each randomised comparison (mailed vs holdouts,
    personal vs popular products and vs the fallback hour, each offer arm), with 95% CIs,
    by segment, the usual KPIs, and a plain-words headline; one self-contained HTML page."""
    import polars as pl

    from sendwise.reports.campaign import render_campaign, summarise_campaign
    from sendwise.reports.outcomes import outcomes
    from sendwise.store.decisions import DecisionLog, read_export
    from sendwise.store.files import atomic_path

    if decisions_file is None:
        decision_log = DecisionLog()
        decisions, source = decision_log.read(campaign=campaign), decision_log.address
    else:
        decisions, source = read_export(decisions_file), str(decisions_file)
        if campaign is not None:
            decisions = decisions.filter(pl.col("campaign") == campaign)
    if decisions.is_empty():
        where = f" for campaign {campaign}" if campaign else ""
        raise SendwiseError(f"no decisions{where} in {source}")
    with console.status(f"Joining {len(decisions):,} decisions with what followed..."):
        summary = summarise_campaign(outcomes(decisions, read_shop(shop), days), days, campaign)
        page = render_campaign(summary)
    with atomic_path(out_file) as staging:
        staging.write_text(page, encoding="utf-8")
    if json_file is not None:
        with atomic_path(json_file) as staging:
            staging.write_text(json.dumps(summary.to_json(), indent=2), encoding="utf-8")
    out.print(f"Wrote {out_file}" + (f" and {json_file}" if json_file else ""))
    out.print(summary.headline())


@app.command("serve")
def serve_command(
    shop: Annotated[
        Path | None,
        typer.Option("--shop", help="Shop directory the decisions are for (default: the demo's)."),
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Snapshot time (default: the shop's last activity)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 3000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    reload_seconds: Annotated[
        float, typer.Option(min=0.5, help="How often workers look for a new champion.")
    ] = 10.0,
    insecure_dev: Annotated[
        bool, typer.Option("--insecure-dev", help="Serve without API keys (development only).")
    ] = False,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log a line for every request (BentoML's).")
    ] = False,
    trace_requests: Annotated[
        bool,
        typer.Option(
            "--trace-requests",
            help="OpenTelemetry spans for /decide and the event paths too (BentoML's tracing).",
        ),
    ] = False,
    config: ConfigFile = None,
) -> None:
    """The decision API (BentoML): POST /decide, GET /connected/decide, docs at /, /metrics.

    Without --access-log only client errors are logged (one line each); a line per request
    and spans on the hot paths cost about 2.5 and 2 ms a decision on a 2-core machine."""
    from sendwise.policy.config import config_path, load_settings
    from sendwise.store import registry

    load_settings(config)  # a bad file is one line here, not a failure in every worker
    if config_path(config):
        os.environ["SENDWISE_CONFIG"] = str(config_path(config).resolve())

    shop = shop or home() / "demo" / "shop"
    if not shop.is_dir():
        raise SendwiseError(f"{shop}: no shop directory (pass --shop, or run `sendwise demo`)")
    if as_of:
        parse_as_of(as_of)  # refuse a bad date here, not in every worker
    if not os.environ.get("SENDWISE_API_KEYS", "").strip(",") and not insecure_dev:
        raise SendwiseError(
            "no API keys: set SENDWISE_API_KEYS (comma-separated), or pass --insecure-dev"
        )
    owner = shop_name(shop)
    for task in ("propensity", "sendtime"):
        if registry.alias_version(owner, task, registry.CHAMPION) is None:
            raise SendwiseError(
                f"no champion {task} model of shop {owner}: run `sendwise train all --shop {shop}"
                f" --as-of DATE` and `sendwise promote all --shop {shop}`"
            )
    os.environ.update(
        SENDWISE_SHOP=str(shop.resolve()),
        SENDWISE_RELOAD_SECONDS=str(reload_seconds),
        SENDWISE_INSECURE_DEV="1" if insecure_dev else "0",
        SENDWISE_ACCESS_LOG="1" if access_log else "0",
        SENDWISE_TRACE_REQUESTS="1" if trace_requests else "0",
        MLFLOW_TRACKING_URI=registry.tracking_uri(),
        SENDWISE_HOME=str(home().resolve()),
    )
    if as_of:
        os.environ["SENDWISE_AS_OF"] = as_of
    # each worker its share of the cores: Polars' own pool in every worker oversubscribes
    # them, and a one-recipient decision then waits on thread hand-offs (p50 6 ms, not 10)
    os.environ.setdefault("POLARS_MAX_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    import bentoml

    from sendwise.serving.service import Sendwise

    Sendwise.config["workers"] = workers
    console.print(f"Serving decisions for {shop} on http://{host}:{port} (API docs at /)")
    bentoml.serve(Sendwise, host=host, port=port, blocking=True)


@app.command()
def demo(
    customers: Annotated[int, typer.Option(min=100, help="Customers in the demo shop.")] = 2_000,
    workdir: Annotated[
        Path | None, typer.Option(help="Where to write (default: .sendwise/demo).")
    ] = None,
) -> None:
    """Simulate a shop, build point-in-time features and labels, and check the planted truth."""
    from sendwise.cli.demo import run_demo

    run_demo(workdir or home() / "demo", customers, out)


register_triggers(app, simulate_app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a failure is one line on stderr (a traceback only with --debug)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=argv, prog_name="sendwise", standalone_mode=False)
    except (click.exceptions.Exit, typer.Exit) as done:
        return done.exit_code
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Abort:
        console.print("aborted")
        return 1
    except (SendwiseError, pl.exceptions.PolarsError, OSError) as error:
        return _fail(error, argv)
    except Exception as error:  # noqa: BLE001 - the last line of defence for users
        return _fail(error, argv, unexpected=True)
    return code if isinstance(code, int) else 0  # click returns an Exit's code here


def _fail(error: Exception, argv: list[str], unexpected: bool = False) -> int:
    if "--debug" in argv:
        traceback.print_exc()
    message = " ".join(str(error).split()) or type(error).__name__
    if unexpected or not isinstance(error, SendwiseError):
        message = f"{type(error).__name__}: {message}"
    hint = "" if "--debug" in argv else " (--debug for details)" if unexpected else ""
    print(f"error: {message}{hint}", file=sys.stderr)
    return 1


def entry_point() -> None:
    sys.exit(main())
