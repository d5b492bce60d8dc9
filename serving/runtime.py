"""What a serving worker holds: the current decider, the decision log and the send history.

`Runtime.serve` is the whole in-process path of one `/decide` batch (decide, log the batch
whole, record sends); the BentoML service is a thin shell around it, and the benchmarks call
it directly to show what HTTP adds. A watcher thread polls the registry's `champion` aliases;
when one moves, a new decider is built beside the old one and swapped in with one assignment,
so requests in flight finish on the old models and none fails.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sendwise.errors import SendwiseError
from sendwise.features.clock import parse_as_of
from sendwise.features.shop import read_shop
from sendwise.store import registry
from sendwise.store.decisions import DecisionLog
from sendwise.store.sends import SendHistory, send_history

from .decide import Decider, DecideRequest
from .engine import Champions, decision_frame

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


def build_decider(settings: ServeSettings) -> Decider:
    """Champions from the registry, scored over the shop at the snapshot time."""
    shop = read_shop(settings.shop)
    as_of = settings.as_of or shop.latest() or datetime.now(UTC)
    champions = Champions.load()
    frame, popular = decision_frame(champions, shop, as_of)
    return Decider(frame, popular, champions.version_label)


class Runtime:
    def __init__(
        self,
        settings: ServeSettings,
        decision_log: DecisionLog | None = None,
        history: SendHistory | None = None,
        on_reload: Callable[[], None] = lambda: None,
    ):
        self.settings = settings
        self.versions = champion_versions()
        self.decider = build_decider(settings)
        self.log = decision_log or DecisionLog()
        self.history = history or send_history(self.log)
        self.on_reload = on_reload
        self._stop = threading.Event()

    def serve(self, request: DecideRequest) -> dict:
        """Decide a batch, log it whole, and record its sends; raises with nothing logged."""
        decider = self.decider  # one snapshot for the whole batch, even if a reload lands
        batch_id = uuid.uuid4().hex
        now = request.context.now or datetime.now(UTC)
        decisions = decider.decide(request, batch_id, self.history, now)
        self.log.append(batch_id, now, request.context.campaign, decisions)
        if not request.context.transactional:  # a no-op where the log is the history
            sent = [d["customer_id"] for d in decisions if d["send"]]
            self.history.record_sends(sent, now, request.context.campaign)
        return {"batch_id": batch_id, "logged": True, "decisions": decisions}

    def reload_if_promoted(self) -> bool:
        """Swap in a new decider if any champion alias moved since the last look."""
        versions = champion_versions()
        if versions == self.versions:
            return False
        log.info("champions moved %s -> %s; rebuilding the decider", self.versions, versions)
        self.decider = build_decider(self.settings)
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
