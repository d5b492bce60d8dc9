"""The BentoML service: `POST /decide` and a per-recipient `GET /connected/decide`
around `Runtime`, behind API keys and a request-size limit.

Started by `sendwise serve`, which passes its settings to the workers through the environment
(`SENDWISE_SHOP`, `SENDWISE_API_KEYS`, ...). Health: `/livez`, `/readyz`; Prometheus: `/metrics`;
OpenAPI: `/docs.json`, browsable at `/`.
"""

from __future__ import annotations

import hmac
import json
import os
from collections import Counter
from typing import Annotated

import bentoml
from prometheus_client import Counter as PrometheusCounter
from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse

from .decide import MAX_RECIPIENTS, Context, DecideRequest, Decision, Recipient
from .runtime import Runtime, ServeSettings

OPEN_PATHS = ("/", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/schema.json")
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # 10,000 recipients take about 0.6 MB


def api_keys() -> frozenset[str]:
    keys = os.environ.get("SENDWISE_API_KEYS", "").split(",")
    return frozenset(k.strip() for k in keys if k.strip())


def insecure_dev() -> bool:
    return os.environ.get("SENDWISE_INSECURE_DEV") == "1"


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="sendwise"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: an API key (`X-API-Key` or `Authorization: Bearer`) on every path but
    health, metrics and docs, and a limit on the request body (413 beyond it)."""

    def __init__(self, app, keys: frozenset[str], max_body_bytes: int, insecure: bool = False):
        if not keys and not insecure:
            raise RuntimeError("no API keys: set SENDWISE_API_KEYS, or pass --insecure-dev")
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.insecure = insecure
        self.max_body_bytes = max_body_bytes

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"x-api-key")
        bearer = headers.get(b"authorization", b"")
        if given is None and bearer[:7].lower() == b"bearer ":
            given = bearer[7:].strip()
        # compare against every key, in constant time each
        return given is not None and any([hmac.compare_digest(given, k) for k in self.keys])

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        guarded = not (self.insecure or path in OPEN_PATHS or path.startswith("/static_content"))
        if guarded and not self._authorised(dict(scope["headers"])):
            return await _refuse(
                send, 401, "missing or unknown API key: send X-API-Key or Authorization: Bearer"
            )
        declared = dict(scope["headers"]).get(b"content-length")
        limit = self.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _refuse(send, 413, f"request body over the limit of {limit:,} bytes")
        # a chunked body is counted as it arrives, and buffered so it can be refused whole
        chunks, size = [], 0
        more = scope["method"] in ("POST", "PUT", "PATCH")
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await _refuse(send, 413, f"request body over the limit of {limit:,} bytes")
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay if chunks else receive, send)


class DecideResponse(BaseModel):
    batch_id: str = Field(description="the decision log's id for this batch")
    logged: bool = Field(description="true: the whole batch is in the decision log")
    decisions: list[Decision]


decisions_served = PrometheusCounter(
    name="sendwise_decisions",
    documentation="Decisions served, by whether they send and whether held out",
    labelnames=["send", "holdout"],
)
model_reloads = PrometheusCounter(
    name="sendwise_model_reloads", documentation="Champion changes picked up without a restart"
)

per_recipient = Starlette()

RecipientList = Annotated[
    list[Recipient],
    Field(
        min_length=1,
        max_length=MAX_RECIPIENTS,
        examples=[[{"customer_id": "17850"}, {"customer_id": "c42", "timezone": "Europe/Berlin"}]],
    ),
]
RequestContext = Annotated[
    Context,
    Field(
        examples=[
            {
                "campaign": "june-sale",
                "offers": ["none", "free_shipping"],
                "window_start": "2026-06-01T08:00:00Z",
                "window_end": "2026-06-02T20:00:00Z",
            }
        ]
    ),
]
CONTEXT_DEFAULT = Context()


@bentoml.service(name="sendwise", traffic={"timeout": 120}, http={"host": "127.0.0.1"})
@bentoml.asgi_app(per_recipient, path="/connected")
class Sendwise:
    """Decisions for an ESP: which offer, which products, when to send, and who is held out."""

    def __init__(self) -> None:
        self.runtime = Runtime(ServeSettings.from_env(), on_reload=model_reloads.inc)
        self.runtime.watch()

    def __is_ready__(self) -> bool:
        """Models loaded (they are, once constructed) and the decision log reachable."""
        return self.runtime.log.ping()

    def _serve(self, request: DecideRequest) -> dict:
        answer = self.runtime.serve(request)
        answer["decisions"] = [Decision.model_construct(**d) for d in answer["decisions"]]
        tally = Counter((d.send, d.holdout) for d in answer["decisions"])
        for (send, holdout), n in tally.items():
            decisions_served.labels(send=send, holdout=holdout).inc(n)
        return answer

    @bentoml.api(route="/decide")
    async def decide(
        self, recipients: RecipientList, context: RequestContext = CONTEXT_DEFAULT
    ) -> DecideResponse:
        """Decisions for 1 to 10,000 recipients, in order; the batch is logged whole first."""
        request = DecideRequest.model_construct(recipients=recipients, context=context)
        return DecideResponse.model_construct(**self._serve(request))

    def recipient(self, customer_id: str, query: dict[str, str]) -> dict:
        """One recipient's decision with the context from query parameters, flattened for an
        ESP template's connected-content call."""
        recipient = {"customer_id": customer_id}
        if "timezone" in query:
            recipient["timezone"] = query["timezone"]
        context = {k: v for k, v in query.items() if k != "timezone"}
        if "offers" in context:
            context["offers"] = context["offers"].split(",")
        request = DecideRequest.model_validate({"recipients": [recipient], "context": context})
        answer = self._serve(request)
        decision = answer["decisions"][0].model_dump(mode="json")
        return {"batch_id": answer["batch_id"], "logged": True, **decision}


async def _recipient_route(request: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    try:
        query = dict(request.query_params)
        body = service.recipient(query.pop("customer_id", ""), query)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return JSONResponse({"error": problems}, status_code=400)
    return JSONResponse(body)


per_recipient.add_route("/decide", _recipient_route, methods=["GET"])

Sendwise.add_asgi_middleware(
    Guard,
    keys=api_keys(),
    max_body_bytes=int(os.environ.get("SENDWISE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
    insecure=insecure_dev(),
)
