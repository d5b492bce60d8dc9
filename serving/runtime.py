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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from sendwise.errors import SendwiseError
from sendwise.features.clock import parse_as_of
from sendwise.features.shop import read_shop
from sendwise.policy.config import Settings, load_settings
from sendwise.policy.decide import Snapshot, decide
from sendwise.store import registry
from sendwise.store.decisions import DecisionLog
from sendwise.store.sends import SendHistory, send_history

from .decide import DecideRequest
from .engine import Champions, build_snapshot

log = logging.getLogger(__name__)

TASKS = ("propensity", "crosssell", "sendtime", "offer")


@dataclass(frozen=True)
class ServeSettings:
    """Read from the environment `sendwise serve` sets for its workers."""

    shop: Path
    as_of: datetime | None = None  # default: the shop's last recorded activity
    reload_seconds: float = 10.0

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
        )


def champion_versions() -> dict[str, str | None]:
    found = {task: registry.alias_version(task, registry.CHAMPION) for task in TASKS}
    return {task: version.version if version else None for task, version in found.items()}


def load_snapshot(serve: ServeSettings, settings: Settings) -> Snapshot:
    """Champions from the registry, scored over the shop at the snapshot time."""
    shop = read_shop(serve.shop)
    as_of = serve.as_of or shop.latest() or datetime.now(UTC)
    return build_snapshot(Champions.load(), shop, as_of, settings)


class Runtime:
    def __init__(
        self,
        settings: ServeSettings,
        decision_log: DecisionLog | None = None,
        history: SendHistory | None = None,
        on_reload: Callable[[], None] = lambda: None,
    ):
        self.settings = settings
        self.rules = load_settings()  # `SENDWISE_CONFIG`, as `sendwise serve --config` sets it
        self.versions = champion_versions()
        self.snapshot = load_snapshot(settings, self.rules)
        self.log = decision_log or DecisionLog()
        self.history = history or send_history(self.log)
        self.on_reload = on_reload
        self._stop = threading.Event()

    def serve(self, request: DecideRequest) -> dict:
        """Decide a batch, log it whole, and record its sends; raises with nothing logged."""
        snapshot = self.snapshot  # one snapshot for the whole batch, even if a reload lands
        context = request.context
        batch_id = uuid.uuid4().hex
        now = context.now or datetime.now(UTC)
        recipients = pl.DataFrame(
            [(r.customer_id, r.timezone, r.opted_out) for r in request.recipients],
            schema={"customer_id": pl.String, "timezone": pl.String, "opted_out": pl.Boolean},
            orient="row",
        )
        sent = None
        windows = self.rules.caps.windows()
        if not context.transactional and windows:
            since = now - timedelta(days=windows[-1])
            sent = self.history.sends(recipients["customer_id"].to_list(), since, context.campaign)
        decisions = decide(snapshot, recipients, context, self.rules, now, sent, batch_id)
        self.log.append(batch_id, now, decisions)
        if not context.transactional:  # a no-op where the log is the history
            sending = decisions.filter("send")["customer_id"].to_list()
            self.history.record_sends(sending, now, context.campaign)
        return {"batch_id": batch_id, "logged": True, "decisions": decisions.to_dicts()}

    def reload_if_promoted(self) -> bool:
        """Swap in a new snapshot if any champion alias moved since the last look."""
        versions = champion_versions()
        if versions == self.versions:
            return False
        log.info("champions moved %s -> %s; rebuilding the snapshot", self.versions, versions)
        self.snapshot = load_snapshot(self.settings, self.rules)
        self.versions = versions
        self.on_reload()
        return True

    def watch(self) -> None:
        """Poll the registry in a daemon thread until `close`."""

        def loop() -> None:
            while not self._stop.wait(self.settings.reload_seconds):
                try:
                    self.reload_if_promoted()
                except Exception:  # keep serving the old models; say why in the log
                    log.exception("reload failed; still serving %s", self.versions)

        threading.Thread(target=loop, name="champion-watcher", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.log.close()
