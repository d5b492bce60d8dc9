"""Triggers live and replayed: the engine of `sendwise.policy.triggers` fed from the event
store (or from files), each firing decided by the one policy and logged before it is offered.

A firing is decided as a `/decide` call would decide its customer with `context.trigger` set
and the subject as the email's first product: the trigger's own holdout is drawn there, and
the send goes at once unless the recipient's quiet hours hold it. Firings of one trigger due
in the same clock hour are decided as one batch, each sent no earlier than it fired (the
send-time grid is hourly, so each gets what it would alone).

`TriggerRunner` is the live worker: it takes a lock (a file beside the SQLite event store, or
a PostgreSQL advisory lock), rebuilds the engine from every stored event, then every
`interval` seconds reads what arrived, advances the engine to the wall clock, and stores the
new firings (`GET /triggers`). A firing's id is a hash of what fired, so a worker that takes
over after a crash re-derives the same firings and stores none twice.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import polars as pl

from sendwise.features.events import as_time, micros
from sendwise.policy.config import Settings
from sendwise.policy.decide import DECISION_COLUMNS, Context, Snapshot, decide
from sendwise.policy.triggers import HOUR, Firing, TriggerEngine
from sendwise.store.database import leader
from sendwise.store.decisions import DecisionLog
from sendwise.store.events import EventStore
from sendwise.store.sends import SendHistory

log = logging.getLogger(__name__)

FIRING_COLUMNS = ("trigger_id", "trigger", "customer_id", "subject", "fired_at")
REPLAY_COLUMNS = (
    *FIRING_COLUMNS,
    "holdout",
    "holdout_kind",
    "probability",
    "send",
    "send_at",
    "offer",
    "products",
    "decision_id",
)


def stream(events: pl.DataFrame, catalog: pl.DataFrame) -> Iterator[tuple[int, str, dict]]:
    """Events and catalog updates as the engine takes them: by time; at one instant,
    catalog changes first, then events, each in the order they came."""
    items = [(row["at"], 1, k, "event", row) for k, row in enumerate(events.iter_rows(named=True))]
    items += [
        (row["at"], 0, k, "catalog", row) for k, row in enumerate(catalog.iter_rows(named=True))
    ]
    items.sort(key=lambda item: item[:3])
    return ((at, kind, row) for at, _, _, kind, row in items)


def decide_firings(
    firings: list[Firing],
    snapshot: Snapshot,
    settings: Settings,
    history: SendHistory | None = None,
    decision_log: DecisionLog | None = None,
) -> pl.DataFrame:
    """The decision of each firing (`REPLAY_COLUMNS` plus the decision's), in firing order;
    logged batch by batch when a log is given (before anything is offered)."""
    if not firings:
        return pl.DataFrame()
    frame = pl.DataFrame(
        [
            (f.trigger_id, f.trigger, f.customer_id, f.subject, f.fired_at, f.product)
            for f in firings
        ],
        schema={
            **dict.fromkeys(FIRING_COLUMNS[:4], pl.String),
            "fired_at": pl.Int64,
            "product": pl.Boolean,
        },
        orient="row",
    ).with_row_index("order")
    decided = []
    for (trigger, _), group in frame.group_by(
        "trigger", pl.col("fired_at") // HOUR, maintain_order=True
    ):
        now = as_time(group["fired_at"].min())
        context = Context(campaign=trigger, trigger=trigger, now=now)
        recipients = group.select(
            "customer_id",
            "fired_at",
            lead=pl.when("product").then(pl.concat_list("subject")).otherwise(None),
        )
        sent, since = None, settings.caps.since(now)
        if history is not None and since is not None:
            sent = history.sends(recipients["customer_id"].to_list(), since, trigger)
        batch_id = uuid.uuid4().hex
        decisions = decide(snapshot, recipients, context, settings, now, sent, batch_id)
        # a firing's decision is known by its trigger id: logged once, however often derived
        decisions = decisions.with_columns(decision_id=group["trigger_id"])
        if decision_log is not None:
            decision_log.append(batch_id, now, decisions)
        decided.append(
            pl.concat([group.drop("customer_id", "trigger"), decisions], how="horizontal")
        )
    return (
        pl.concat(decided)
        .sort("order")
        .with_columns(pl.from_epoch("fired_at", "us").dt.replace_time_zone("UTC"))
        .drop("order", "product")
    )


def replay(
    events: pl.DataFrame,
    catalog: pl.DataFrame,
    until: datetime,
    snapshot: Snapshot,
    settings: Settings,
    decision_log: DecisionLog | None = None,
) -> pl.DataFrame:
    """What the engine fires on these events up to `until`, with each firing's decision
    (`REPLAY_COLUMNS` first): "what would have fired"; a backfill logs the decisions too."""
    engine = TriggerEngine(settings.triggers)
    firings = engine.run(stream(events, catalog), micros(until))
    decided = decide_firings(firings, snapshot, settings, decision_log=decision_log)
    if decided.is_empty():
        return pl.DataFrame(schema={c: pl.String for c in REPLAY_COLUMNS})
    return decided.select(*REPLAY_COLUMNS, pl.exclude(REPLAY_COLUMNS))


class TriggerRunner:
    """The live trigger worker of one shop; only the holder of the lock acts."""

    def __init__(
        self,
        store: EventStore,
        decision_log: DecisionLog,
        history: SendHistory,
        settings: Settings,
        snapshot: Callable[[], Snapshot | None],
        interval: float = 0.25,
        batch: int = 5_000,  # events read a tick at most: a backlog is worked off in steps
    ):
        self.store, self.log, self.history = store, decision_log, history
        self.settings, self.snapshot, self.interval = settings, snapshot, interval
        self.batch = batch
        self.engine: TriggerEngine | None = None
        self.cursors = (0, 0)  # the last event and catalog seq applied
        self._stop = threading.Event()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="trigger-runner", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Wait for the lock, then tick until stopped; a failing tick is logged and retried."""
        with leader(self.store.engine, "trigger", LOCK_KEY) as leading:
            while not self._stop.is_set() and not leading():
                self._stop.wait(1.0)
            while not self._stop.is_set():
                try:
                    self.tick(datetime.now(UTC))
                except Exception:  # noqa: BLE001 - keep firing; the next tick retries
                    log.exception("trigger tick failed; retrying")
                self._stop.wait(self.interval)

    def tick(self, now: datetime) -> int:
        """Apply what arrived, fire what is due by `now`, decide, log and store the new
        firings; how many were stored."""
        snapshot = self.snapshot()
        if snapshot is None:
            return 0
        if self.engine is None:
            self.engine = TriggerEngine(self.settings.triggers)
        events = self.store.events_after(self.cursors[0], self.batch)
        catalog = self.store.catalog_after(self.cursors[1])
        until = micros(now)
        if len(events) == self.batch:  # behind: nothing past what was read may fire yet
            until = events["at"].max() - 1  # items at that instant may come next tick
            later = catalog["at"].gt(until).arg_true().first()
            catalog = catalog if later is None else catalog.head(later)
        firings = self.engine.run(stream(events, catalog), until)
        if len(events):
            self.cursors = (events["seq"].max(), self.cursors[1])
        if len(catalog):
            self.cursors = (self.cursors[0], catalog["seq"].max())
        stored = self.store.fired([f.trigger_id for f in firings])
        new = [f for f in firings if f.trigger_id not in stored]
        # logged but not stored: a crash came between the two; its logged decision stands
        logged = self.log.read(decision_ids=[f.trigger_id for f in new]) if new else None
        decisions = _by_id(logged, "decision_id")
        fresh = [f for f in new if f.trigger_id not in decisions]
        decided = decide_firings(fresh, snapshot, self.settings, self.history, self.log)
        decisions |= _by_id(decided, "trigger_id")
        rows = [
            (f.trigger_id, f.trigger, f.customer_id, f.subject, f.fired_at,
             _decision(decisions[f.trigger_id]))
            for f in new
        ]  # fmt: skip
        self.store.add_firings(rows)
        return len(new)


LOCK_KEY = 0x73656E64  # "send": the trigger workers' advisory lock


def _by_id(frame: pl.DataFrame | None, key: str) -> dict[str, dict]:
    if frame is None or frame.is_empty():
        return {}
    return dict(zip(frame[key], frame.iter_rows(named=True), strict=True))


def _decision(row: dict) -> str:
    """A firing's decision as `/decide` writes it (JSON)."""
    decision = {name: row[name] for name in DECISION_COLUMNS}
    send_at = decision["send_at"]
    decision["send_at"] = None if send_at is None else send_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(decision)
