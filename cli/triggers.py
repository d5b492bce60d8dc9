"""The real-time verbs: `sendwise events ingest`, `sendwise triggers replay|run`, and
`sendwise simulate events` (a shop's simulated event stream as the API would receive it)."""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sendwise.errors import SendwiseError
from sendwise.features.clock import parse_as_of
from sendwise.features.shop import read_shop

console = Console(stderr=True)
out = Console(soft_wrap=True)

events_app = typer.Typer(help="Behaviour events and catalog changes.", no_args_is_help=True)
triggers_app = typer.Typer(help="Real-time triggers.", no_args_is_help=True)

EventsFile = Annotated[
    Path, typer.Option("--events", help="Events: JSON lines (API objects) or Parquet.")
]
CatalogFile = Annotated[
    Path | None, typer.Option("--catalog", help="Catalog updates: JSON lines or Parquet.")
]
ShopDir = Annotated[Path, typer.Option("--shop", help="Shop directory (Parquet or CSV tables).")]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config", help="Business rules (TOML); default SENDWISE_CONFIG, else the defaults."
    ),
]


def _is_catalog(path: Path) -> bool:
    """A file of catalog updates (`product_id` and price or stock, no `type`)?"""
    if path.suffix == ".parquet":
        import polars as pl

        names = set(pl.read_parquet_schema(path))
        return "type" not in names and bool({"price", "stock"} & names)
    with path.open(encoding="utf-8") as lines:
        first = next((line for line in lines if line.strip()), "{}")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False  # the reader names the bad line
    return isinstance(record, dict) and "type" not in record and "product_id" in record


@events_app.command("ingest")
def events_ingest(
    file: Annotated[Path, typer.Argument(help="JSON lines (API objects) or Parquet.")],
) -> None:
    """Store a file of events, or of catalog updates, as `POST /events` and `POST /catalog`
    would: checked whole first (the first bad line is named, nothing is stored), then
    idempotent by `message_id`."""
    from sendwise.features.events import (
        CATALOG,
        MAX_EVENTS,
        catalog_rows,
        event_rows,
        read_event_file,
    )
    from sendwise.store.events import EventStore

    if not file.is_file():
        raise SendwiseError(f"{file}: no such file")
    catalog = _is_catalog(file)
    started = time.perf_counter()
    with console.status(f"Checking {file}..."):
        records = read_event_file(file, CATALOG, "catalog update") if catalog else None
        records = records if catalog else read_event_file(file)
    store, accepted = EventStore(), 0
    with console.status(f"Storing {len(records):,} in {store.url.split('://')[0]}..."):
        for start in range(0, len(records), MAX_EVENTS):
            chunk = records[start : start + MAX_EVENTS]
            if catalog:
                accepted += store.add_catalog(catalog_rows(chunk))
            else:
                accepted += store.add_events(event_rows(chunk))
    what = "catalog updates" if catalog else "events"
    repeats = "" if catalog else f", {len(records) - accepted:,} duplicates"
    out.print(
        f"Stored {accepted:,} {what} from {file}{repeats} in {time.perf_counter() - started:.1f}s"
    )


@triggers_app.command("replay")
def triggers_replay(
    events: EventsFile,
    shop: ShopDir,
    until: Annotated[str, typer.Option("--until", help="The clock: fire what is due by then.")],
    out_file: Annotated[Path, typer.Option("--out", help="Firings: .parquet or .csv.")],
    catalog: CatalogFile = None,
    config: ConfigFile = None,
    log: Annotated[
        bool, typer.Option("--log", help="Append the firings' decisions to the decision log.")
    ] = False,
) -> None:
    """What the trigger engine fires on these events up to --until, each firing with its
    decision from the shop's champions (holdouts included). Nothing is sent; with --log (a
    backfill) the decisions join the decision log, as the live engine's would."""
    import polars as pl

    from sendwise.features.events import CATALOG, CATALOG_SCHEMA, catalog_rows, event_rows
    from sendwise.features.events import read_event_file as read
    from sendwise.policy.config import load_settings
    from sendwise.serving.engine import Champions, build_snapshot
    from sendwise.serving.triggers import replay
    from sendwise.store.decisions import DecisionLog
    from sendwise.store.files import lists_as_json, write_frame

    clock, settings = parse_as_of(until), load_settings(config)
    started = time.perf_counter()
    with console.status("Reading events..."):
        stream = event_rows(read(events))
        updates = (
            catalog_rows(read(catalog, CATALOG, "catalog update"))
            if catalog
            else pl.DataFrame(schema=CATALOG_SCHEMA)
        )
    data = read_shop(shop)
    with console.status(f"Scoring shop {data.name} with its champions..."):
        latest = data.latest() or clock
        snapshot = build_snapshot(Champions.load(data.name), data, min(latest, clock), settings)
    with console.status(f"Replaying {len(stream):,} events..."):
        fired = replay(stream, updates, clock, snapshot, settings, DecisionLog() if log else None)
    written = fired if out_file.suffix == ".parquet" else lists_as_json(fired)
    write_frame(written, out_file)
    counts = (
        ", ".join(f"{t} {n:,}" for t, n in fired["trigger"].value_counts(sort=True).iter_rows())
        or "none"
    )
    out.print(
        f"Wrote {out_file}: {len(fired):,} firings in {time.perf_counter() - started:.1f}s "
        f"({counts})" + (", logged" if log else "")
    )


@triggers_app.command("run")
def triggers_run(
    shop: ShopDir,
    config: ConfigFile = None,
    interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between looks at the event store.")
    ] = 0.25,
) -> None:
    """A trigger worker apart from the API: fires from the shared event store (one worker of
    all acts at a time; the others wait to take over), and POSTs the firings to
    SENDWISE_WEBHOOK_URL when it is set (likewise one sender at a time), until interrupted."""
    from urllib.parse import urlsplit

    from sendwise.policy.config import load_settings
    from sendwise.serving.runtime import ServeSettings, load_snapshot
    from sendwise.serving.triggers import TriggerRunner
    from sendwise.serving.webhooks import WebhookSender, WebhookSettings
    from sendwise.store.decisions import DecisionLog
    from sendwise.store.events import EventStore
    from sendwise.store.sends import send_history
    from sendwise.store.webhooks import WebhookStore

    settings, webhooks = load_settings(config), WebhookSettings.from_env()
    with console.status("Loading the champions..."):
        snapshot = load_snapshot(ServeSettings(shop), settings)
    decision_log, store = DecisionLog(), EventStore()
    runner = TriggerRunner(
        store, decision_log, send_history(decision_log), settings, lambda: snapshot, interval
    )
    workers: list[TriggerRunner | WebhookSender] = [runner]
    if webhooks is not None:
        workers.append(WebhookSender(store, WebhookStore(store.url), webhooks))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    hooks = f", webhooks to {urlsplit(webhooks.url).hostname}" if webhooks else ""  # no tokens
    out.print(f"Trigger worker for shop {snapshot.model_versions or shop}{hooks}: Ctrl-C stops it")
    threads = [worker.start() for worker in workers]
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    for worker, thread in zip(workers, threads, strict=True):
        worker.stop()
        thread.join(10)


def simulate_events(
    shop: ShopDir,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the two files.")],
    start: Annotated[
        str | None, typer.Option("--start", help="First day (default: after the shop's last).")
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Days of events.")] = 7,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same stream.")] = 0,
) -> None:
    """A simulated event stream for a shop's customers and products: events.jsonl and
    catalog.jsonl, as `POST /events` and `POST /catalog` take them."""
    from sendwise.features.event_stream import (
        StreamSettings,
        api_catalog,
        api_events,
        simulate_stream,
        write_json_lines,
    )

    data = read_shop(shop)
    first = parse_as_of(start) if start else (data.latest() + timedelta(seconds=1))
    customers = data.customers.select("customer_id").collect().to_series().to_list()
    products = data.products.select("product_id", "category", "price").collect()
    with console.status(f"Simulating {days} days of events..."):
        events, catalog = simulate_stream(
            customers, products, StreamSettings(start=first, days=days, seed=seed)
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_lines(api_events(events), out_dir / "events.jsonl")
    write_json_lines(api_catalog(catalog), out_dir / "catalog.jsonl")
    out.print(
        f"Wrote {out_dir}/events.jsonl ({len(events):,} events) and catalog.jsonl "
        f"({len(catalog):,} updates) from {first:%Y-%m-%d %H:%M} UTC"
    )


def register(app: typer.Typer, simulate_app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")
    app.add_typer(triggers_app, name="triggers")
    simulate_app.command("events")(simulate_events)
