"""What a serving worker holds: the current snapshot, the settings, the decision log and the
send history.

`Runtime.serve` is the whole in-process path of one `/decide` batch (decide through the one
policy, log the batch whole, record sends); the BentoML service is a thin shell around it, and
the benchmarks call it directly to show what HTTP adds. A watcher thread polls the registry's
`champion` aliases; when one moves, a new snapshot is built beside the old one and swapped in
with one assignment, so requests in flight finish on the old models and none fails.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import polars as pl

from sendwise.errors import SendwiseError
from sendwise.features.clock import parse_as_of
from sendwise.features.events import CatalogUpdate, Event, catalog_rows, event_rows, micros
from sendwise.features.shop import read_shop, shop_name
from sendwise.policy.config import Settings, load_settings
from sendwise.policy.decide import Snapshot, decide
from sendwise.policy.fresh import KINDS as FRESH_KINDS
from sendwise.policy.fresh import FreshState
from sendwise.store import registry
from sendwise.store.decisions import DecisionLog
from sendwise.store.events import EventStore
from sendwise.store.sends import SendHistory, send_history
from sendwise.store.webhooks import WebhookStore

from .decide import DecideRequest
from .engine import REQUIRED, ChampionError, Champions, build_snapshot
from .triggers import TriggerRunner
from .webhooks import WebhookSender, WebhookSettings

log = logging.getLogger(__name__)

TASKS = ("propensity", "crosssell", "sendtime", "offer")


@dataclass(frozen=True)
class ServeSettings:
    """Read from the environment `sendwise serve` sets for its workers."""

    shop: Path
    as_of: datetime | None = None  # default: the shop's last recorded activity
    reload_seconds: float = 10.0
    shop_name: str = ""  # whose champions: default the shop's own name (`shop.toml`, else dir)

    @cached_property
    def name(self) -> str:
        """Read once: the shop served, and whose champions, stay the same while serving."""
        return self.shop_name or shop_name(self.shop)

    @classmethod
    def from_env(cls) -> ServeSettings:
        shop = os.environ.get("SENDWISE_SHOP")
        if not shop:
            raise SendwiseError("SENDWISE_SHOP: no shop directory to serve decisions for")
        as_of = os.environ.get("SENDWISE_AS_OF")
        return cls(
            Path(shop),
            parse_as_of(as_of) if as_of else None,
            float(os.environ.get("SENDWISE_RELOAD_SECONDS", "10")),
            os.environ.get("SENDWISE_SHOP_NAME", ""),
        )


def champion_versions(shop: str) -> dict[str, str | None]:
    found = {task: registry.alias_version(shop, task, registry.CHAMPION) for task in TASKS}
    return {task: str(version.version) if version else None for task, version in found.items()}


def load_snapshot(
    serve: ServeSettings, settings: Settings, versions: dict[str, str | None] | None = None
) -> Snapshot:
    """The shop's champions (or these versions of its models), scored over the shop at the
    snapshot time."""
    shop = read_shop(serve.shop)
    as_of = serve.as_of or shop.latest() or datetime.now(UTC)
    return build_snapshot(Champions.load(serve.name, versions), shop, as_of, settings)


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def load_last_good(
    serve: ServeSettings, settings: Settings, versions: dict[str, str | None]
) -> tuple[Snapshot | None, dict[str, str | None], list[str]]:
    """The snapshot of the champions, or, where a champion does not load or fit the shop,
    of the last champion before it that does (an optional model that never did: none).
    Returns the snapshot (None when no valid model set loads), the versions it serves and a
    line for each champion passed over."""
    trying, problems = dict(versions), []
    tried: dict[str, set[str]] = {task: set() for task in TASKS}
    while True:
        try:
            return load_snapshot(serve, settings, trying), trying, problems
        except ChampionError as error:
            problems.append(one_line(error))
            tried[error.task].add(error.version)
            past = registry.champion_stack(registry.champion_log(serve.name, error.task))
            earlier = [v for v in reversed(past) if v not in tried[error.task]]
            if earlier:
                trying[error.task] = earlier[0]
            elif error.task in REQUIRED:
                return None, {}, problems
            else:
                trying[error.task] = None


class Runtime:
    def __init__(
        self,
        settings: ServeSettings,
        decision_log: DecisionLog | None = None,
        history: SendHistory | None = None,
        on_reload: Callable[[], None] = lambda: None,
        on_reload_failure: Callable[[], None] = lambda: None,
    ):
        self.settings = settings
        self.rules = load_settings()  # `SENDWISE_CONFIG`, as `sendwise serve --config` sets it
        self.on_reload = on_reload
        self.on_reload_failure = on_reload_failure
        self.versions = champion_versions(settings.name)  # what the registry said, last look
        # what is served: the champions, or the last good versions where one does not load
        self.snapshot, self.serving, passed_over = load_last_good(
            settings, self.rules, self.versions
        )
        self.problem = "; ".join(passed_over) or None
        for line in passed_over:
            log.warning("champion not loaded: %s", line)
            self.on_reload_failure()
        self.log = decision_log or DecisionLog()
        self.history = history or send_history(self.log)
        self._stop = threading.Event()
        self.trigger_runner: TriggerRunner | None = None
        since = settings.as_of or read_shop(settings.shop).latest() or datetime.now(UTC)
        self.fresh = FreshState(micros(since), self.rules.products.recently_bought_days)
        self._fresh_lock = threading.Lock()
        self._fresh_cursor = 0
        self.webhook_sender: WebhookSender | None = None

    @cached_property
    def events(self) -> EventStore:
        """The event store (`SENDWISE_EVENTS_URL`, else SQLite under the home), opened on
        first use."""
        return EventStore()

    def ingest(self, events: list[Event]) -> dict[str, int]:
        """Store checked events durably: how many were new, how many repeated a message_id."""
        accepted = self.events.add_events(event_rows(events))
        return {"accepted": accepted, "duplicates": len(events) - accepted}

    def ingest_catalog(self, updates: list[CatalogUpdate]) -> dict[str, int]:
        return {"accepted": self.events.add_catalog(catalog_rows(updates))}

    def refresh(self) -> None:
        """Read the orders and cart changes stored since the last look into `fresh`."""
        found = self.events.events_after(self._fresh_cursor, types=FRESH_KINDS)
        if len(found):
            with self._fresh_lock:
                self.fresh.apply(found)
            self._fresh_cursor = found["seq"].max()

    def keep_fresh(self, seconds: float = 0.5) -> None:
        """`refresh` every `seconds` in a daemon thread until `close`."""

        def loop() -> None:
            while not self._stop.wait(seconds):
                try:
                    self.refresh()
                except Exception as error:  # noqa: BLE001 - e.g. the store unreachable a while
                    log.warning("fresh state not refreshed: %s", one_line(error))

        threading.Thread(target=loop, name="fresh-state", daemon=True).start()

    def run_triggers(self) -> None:
        """The trigger engine in this process, in a daemon thread, and the webhook sender
        beside it when `SENDWISE_WEBHOOK_URL` is set (of all processes that share the event
        store, one runner and one sender act: see `TriggerRunner`, `WebhookSender`)."""
        webhooks = WebhookSettings.from_env()  # a bad setting refuses the start, before any thread
        self.trigger_runner = TriggerRunner(
            self.events, self.log, self.history, self.rules, lambda: self.snapshot
        )
        self.trigger_runner.start()
        if webhooks is not None:
            dead_letters = WebhookStore(self.events.url)
            self.webhook_sender = WebhookSender(self.events, dead_letters, webhooks)
            self.webhook_sender.start()

    def health(self) -> tuple[bool, dict]:
        """(ready, what `/readyz` says): degraded while serving other versions than the
        champions, not ready while no valid model set is loaded."""
        status = "ready"
        if self.snapshot is None:
            status = "not ready"
        elif self.problem:
            status = "degraded"
        body = {
            "status": status,
            "shop": self.settings.name,
            "champions": self.versions,
            "serving": self.serving if self.snapshot is not None else None,
        }
        if self.problem:
            body["problem"] = self.problem
        return self.snapshot is not None, body

    def serve(self, request: DecideRequest) -> dict:
        """Decide a batch, log it whole, and record its sends; raises with nothing logged.
        The decisions stay a frame (`DECISION_COLUMNS`): the service writes them as JSON."""
        snapshot = self.snapshot  # one snapshot for the whole batch, even if a reload lands
        context = request.context
        batch_id = uuid.uuid4().hex
        now = context.now or datetime.now(UTC)
        recipients = pl.DataFrame(
            [(r.customer_id, r.timezone, r.opted_out) for r in request.recipients],
            schema={"customer_id": pl.String, "timezone": pl.String, "opted_out": pl.Boolean},
            orient="row",
        )
        sent, since = None, self.rules.caps.since(now)
        if not context.transactional and since is not None:
            sent = self.history.sends(recipients["customer_id"].to_list(), since, context.campaign)
        with self._fresh_lock:
            fresh = self.fresh.columns(recipients["customer_id"], snapshot, micros(now))
        if fresh:
            recipients = recipients.with_columns(**fresh)
        decisions = decide(snapshot, recipients, context, self.rules, now, sent, batch_id)
        self.log.append(batch_id, now, decisions)
        if not context.transactional and self.history is not self.log:  # else the log is it
            sending = decisions.filter("send")["customer_id"].to_list()
            self.history.record_sends(sending, now, context.campaign)
        return {"batch_id": batch_id, "logged": True, "decisions": decisions}

    def reload_if_promoted(self) -> bool:
        """Swap in a new snapshot if any champion alias moved since the last look. Champions
        that do not load are tried once per move, not at every poll: the last good models keep
        serving, with one log line, one count and a degraded `/readyz`."""
        versions = champion_versions(self.settings.name)
        if versions == self.versions:
            return False
        log.info("champions moved %s -> %s; rebuilding the snapshot", self.versions, versions)
        self.versions = versions
        if self.snapshot is not None and versions == self.serving:  # e.g. rolled back
            self.problem = None
            return False
        try:
            snapshot = load_snapshot(self.settings, self.rules, versions)
        except Exception as error:  # noqa: BLE001 - any failure: keep the last good models
            serving = "nothing" if self.snapshot is None else self.serving
            self.problem = f"champions {versions} not loaded: {one_line(error)}"
            log.warning("reload failed, still serving %s: %s", serving, self.problem)
            self.on_reload_failure()
            return False
        self.snapshot, self.serving, self.problem = snapshot, versions, None
        self.on_reload()
        return True

    def watch(self) -> None:
        """Poll the registry in a daemon thread until `close`."""

        def loop() -> None:
            while not self._stop.wait(self.settings.reload_seconds):
                try:
                    self.reload_if_promoted()
                except Exception as error:  # noqa: BLE001 - e.g. the registry unreachable
                    serving, why = self.serving, one_line(error)
                    log.warning("reload failed, still serving %s: %s", serving, why)
                    self.on_reload_failure()

        threading.Thread(target=loop, name="champion-watcher", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        for worker in (self.trigger_runner, self.webhook_sender):
            if worker is not None:
                worker.stop()
        self.log.close()
