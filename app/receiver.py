"""`memberflow receiver`: the ASGI app that accepts sources' webhooks (served by uvicorn).

POST /webhooks/<integration> (the source's change webhooks) and POST
/webhooks/<integration>/feedback (the target's feedback: unsubscribes, clicks, bounces) are
answered 200 only once the delivery's events are committed to the integration's store, so a
vendor that got its 2xx never loses an event; every refusal stores nothing. In order: an
integration without a webhook capability is 404, a body over the capability's limit 413 (by
Content-Length, and counted while reading a chunked body), a failed verification 401, an
unreadable body 400; a body stored before (same sha256) is answered 200 `{"stored": 0}`. A
sensor then turns stored events into a run that reads the named records again
(pipelines/webhook_sensor.py), or carries the feedback into the warehouse and the source
(pipelines/feedback_sensor.py); the receiver itself never calls a vendor.

Each delivery logs one line: integration, status, size, event kinds and record ids, never
the headers (secrets) or a payload (member emails and phones).
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from memberflow.config import Integration
from memberflow.masking import mask_text
from memberflow.webhook_store import (
    WebhookStore,
    feedback_events,
    feedback_webhook,
    webhook_capability,
)
from resources.feedback import FeedbackWebhook
from resources.webhooks import WebhookCapability, WebhookEvent, WebhookRefused

log = logging.getLogger("memberflow.receiver")

StoreFor = Callable[[str], WebhookStore]


class _TooLarge(Exception):
    pass


class ReceiverSetupError(RuntimeError):
    """An integration's webhook setting can't be used (the command says which and exits)."""


def capabilities_of(integrations: list[Integration]) -> dict[str, WebhookCapability]:
    """Integration name -> webhook capability, for those whose source has webhooks on."""
    return _hooks_of(integrations, webhook_capability, "webhook setting")


def feedback_hooks_of(integrations: list[Integration]) -> dict[str, FeedbackWebhook]:
    """Integration name -> its target's feedback webhook, for those whose list pushes one."""
    return _hooks_of(integrations, feedback_webhook, "feedback webhook")


def _hooks_of(
    integrations: list[Integration], offer: Callable[[Integration], Any], what: str
) -> dict[str, Any]:
    found = {}
    for integration in integrations:
        try:
            hook = offer(integration)
        except Exception as exc:  # e.g. a secret's env var is missing: say which integration
            raise ReceiverSetupError(f"{integration.name}: {what}: {exc}") from exc
        if hook is not None:
            found[integration.name] = hook
    return found


@dataclass(frozen=True)
class _Door:
    """One kind of delivery the receiver takes: the integrations' hooks (verify, parse,
    max_body_bytes), how a parsed body becomes storable events, and where they are stored."""

    suffix: str  # added to the integration's name in log lines: "" or "/feedback"
    missing: str  # the 404's words
    hooks: Mapping[str, Any]
    to_events: Callable[[Any], list[WebhookEvent]]  # what `parse` returned -> events
    store_for: StoreFor


def build_app(
    capabilities: Mapping[str, WebhookCapability],
    store_for: StoreFor = WebhookStore.for_integration,
    feedback: Mapping[str, FeedbackWebhook] | None = None,
    feedback_store_for: StoreFor = WebhookStore.for_feedback,
) -> Starlette:
    """The receiver for these integrations (name -> capability, name -> feedback webhook);
    tests pass fakes here."""
    feedback = feedback or {}
    changes = _Door("", "no webhook capability for this integration", capabilities, list, store_for)
    lists = _Door(
        "/feedback",
        "no feedback webhook for this integration",
        feedback,
        feedback_events,
        feedback_store_for,
    )

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(
            {"ok": True, "integrations": sorted(capabilities), "feedback": sorted(feedback)}
        )

    return Starlette(
        routes=[
            Route("/webhooks/{integration}/feedback", _endpoint(lists), methods=["POST"]),
            Route("/webhooks/{integration}", _endpoint(changes), methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


def _endpoint(door: _Door) -> Callable[[Request], Awaitable[JSONResponse]]:
    """Verify, parse, store before the 200 (module docstring), for one kind of delivery."""
    stores: dict[str, WebhookStore] = {}

    def store(name: str) -> WebhookStore:
        if name not in stores:
            stores[name] = door.store_for(name)
        return stores[name]

    async def receive(request: Request) -> JSONResponse:
        name = request.path_params["integration"]
        label = f"{name}{door.suffix}"
        hook = door.hooks.get(name)
        if hook is None:
            return _answer(label, 404, door.missing)
        try:
            body = await _read_body(request, hook.max_body_bytes)
        except _TooLarge:
            return _answer(label, 413, f"body over {hook.max_body_bytes} bytes")
        try:
            headers = {k.lower(): v for k, v in request.headers.items()}
            hook.verify(headers, body, dict(request.query_params))
            events = door.to_events(hook.parse(body))
        except WebhookRefused as refused:
            return _answer(label, refused.status, refused.message, size=len(body))
        digest = hashlib.sha256(body).hexdigest()
        stored = await run_in_threadpool(store(name).add, digest, events, datetime.now(UTC))
        if stored is None:
            # Stored before: nothing is stored again. A vendor resends what it thinks failed (a
            # lost 200) and gives up on a subscription after enough non-2xx answers, so the
            # answer is still a 2xx, saying nothing was stored.
            replay = "replay: this body was stored before; nothing stored"
            return _answer(label, 200, replay, size=len(body), stored=0)
        return _answer(label, 200, _describe(events), size=len(body), stored=stored)

    return receive


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused before reading when Content-Length says it is too large, and while
    reading when a chunked (or lying) body passes the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)


def _answer(
    name: str, status: int, detail: str, size: int | None = None, stored: int | None = None
) -> JSONResponse:
    shown = mask_text(detail)
    size_text = "" if size is None else f" {size} bytes"
    log.info("webhook %s: %s%s %s", name, status, size_text, shown)
    if stored is not None:
        return JSONResponse({"stored": stored}, status_code=status)
    return JSONResponse({"error": shown}, status_code=status)


def _describe(events: list[WebhookEvent]) -> str:
    """`stored 2 events: update passes 17145, delete passes 9` (ids only, at most ten; a
    feedback event by its kind and key, never its email)."""
    listed = ", ".join(
        f"{e.entity} {e.record_id}"
        if e.kind == "feedback"
        else f"{e.kind} {e.entity} {e.record_id}"
        for e in events[:10]
    )
    more = f" (+{len(events) - 10} more)" if len(events) > 10 else ""
    return f"stored {len(events)} events: {listed}{more}" if events else "stored 0 events"


def register(integrations: list[Integration], base_url: str) -> list[str]:
    """Ask each webhook-enabled source, and each target with feedback webhooks, to send its
    hooks to this receiver; lines to print."""
    lines = []
    for integration in integrations:
        if feedback_webhook(integration) is not None:
            lines.append(_register_feedback(integration, base_url))
        if webhook_capability(integration) is None:
            continue
        url = f"{base_url.rstrip('/')}/webhooks/{integration.name}"
        client = integration.source.resource().client()
        try:
            added = client.ensure_webhooks(url)
        except NotImplementedError:
            lines.append(f"{integration.name}: register {url} at the vendor by hand")
            continue
        finally:
            client.close()
        kinds = ", ".join(added) if added else "none new"
        lines.append(f"{integration.name}: hooks to {url} ({kinds})")
    return lines


def _register_feedback(integration: Integration, base_url: str) -> str:
    url = f"{base_url.rstrip('/')}/webhooks/{integration.name}/feedback"
    client = integration.target.resource().client()
    try:
        added = client.ensure_webhooks(url)
    except NotImplementedError:
        return f"{integration.name}: register {url} at {integration.target.kind} by hand"
    finally:
        client.close()
    kinds = ", ".join(added) if added else "none new"
    return f"{integration.name}: feedback hooks to {url} ({kinds})"


@contextmanager
def serving(app: Starlette, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` with uvicorn on a free local port in a background thread (the demo's
    receiver, and the tests'); yields its base URL, stops on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
