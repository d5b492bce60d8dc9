"""Send history for frequency caps, shared by every worker.

By default the decision log is the history (one query per batch). Where a user names a Redis
with `SENDWISE_CAPS_URL`, each recipient has a sorted set of campaign -> first send time,
trimmed to the longest cap window: cheaper per batch than the log, and still shared.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Protocol

import polars as pl

from .decisions import DecisionLog


class SendHistory(Protocol):
    def sends(
        self, customer_ids: Iterable[str] | None, since: datetime, campaign: str
    ) -> pl.DataFrame: ...

    def record_sends(self, customer_ids: Iterable[str], at: datetime, campaign: str) -> None: ...


class RedisSends:
    """Send times per recipient in Redis sorted sets (`sendwise:sends:<customer_id>`)."""

    PREFIX = "sendwise:sends:"

    def __init__(self, url: str, keep: timedelta = timedelta(days=90)):
        import redis

        self.redis = redis.Redis.from_url(url)
        self.keep = keep

    def sends(self, customer_ids: Iterable[str], since: datetime, campaign: str) -> pl.DataFrame:
        """`customer_id`, `sent_at` of the recipients' sends of other campaigns since `since`."""
        ids = list(dict.fromkeys(customer_ids))
        pipe = self.redis.pipeline(transaction=False)
        for customer in ids:
            pipe.zrangebyscore(self.PREFIX + customer, since.timestamp(), "+inf", withscores=True)
        found = [
            (customer, datetime.fromtimestamp(score, UTC))
            for customer, entries in zip(ids, pipe.execute(), strict=True)
            for member, score in entries
            if member.decode() != campaign
        ]
        schema = {"customer_id": pl.String, "sent_at": pl.Datetime("us", "UTC")}
        return pl.DataFrame(found, schema=schema, orient="row")

    def record_sends(self, customer_ids: Iterable[str], at: datetime, campaign: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        oldest = (at - self.keep).timestamp()
        for customer in dict.fromkeys(customer_ids):
            key = self.PREFIX + customer
            pipe.zadd(key, {campaign: at.timestamp()}, nx=True)  # first send of a campaign counts
            pipe.zremrangebyscore(key, "-inf", oldest)
            pipe.expire(key, int(self.keep.total_seconds()))
        pipe.execute()


def send_history(log: DecisionLog) -> SendHistory:
    """Redis where `SENDWISE_CAPS_URL` names one, else the decision log."""
    url = os.environ.get("SENDWISE_CAPS_URL")
    return RedisSends(url) if url else log
