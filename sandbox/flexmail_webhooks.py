"""Flexmail's webhook registrations and deliveries (section 3, FM-A9), apart from the REST
emulator so the event envelope, the retry schedule and the redelivery of one body stay in one
place.

A delivery is `POST target_url` with the JSON body `{event_name, occurred_at, verification_token,
data}`, retried on any non-2xx 1, 5 and 15 minutes later (FM-A9). There is no event id and no
signature in the body: the receiver checks the token and must recognise a repeated body itself,
which is what `redeliver` (a vendor retry of a body that was in fact received) makes testable.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sandbox import webhook_sender
from sandbox.webhook_sender import WebhookSender

# FM-A9: what GET /webhook-events returns; memberflow subscribes to the first three
EVENTS = (
    "contact.unsubscribed",
    "contact.clicked",
    "contact.bounced",
    "contact.created",
    "contact.updated",
)
RETRY_DELAYS = (60.0, 300.0, 900.0)  # FM-A9: three retries, 1, 5 and 15 minutes apart
RETRY_DELAYS_ENV = "SANDBOX_FLEXMAIL_RETRY_DELAYS"  # e.g. "0.05,0.05,0.05" for a demo
TOKEN_ENV = "MEMBERFLOW_FLEXMAIL_WEBHOOK_TOKEN"
FIELDS = ("event_name", "target_url", "verification_token", "enabled")
Row = dict[str, Any]


class WebhookInvalid(Exception):
    """A registration the API refuses with 422: FM-A11 violations `[{propertyPath, message}]`."""

    def __init__(self, violations: list[Row]) -> None:
        super().__init__("; ".join(f"{v['propertyPath']}: {v['message']}" for v in violations))
        self.violations = violations


@dataclass
class Delivery:
    """One body sent to one webhook, and what the receiver answered to each attempt."""

    id: int
    webhook_id: int
    event_name: str
    url: str
    body: bytes
    redelivery_of: int | None = None
    attempts: list[int | str] = field(default_factory=list)  # status codes or transport errors
    outcome: str = "pending"  # pending | delivered | failed | skipped (not a loopback host)

    def summary(self) -> Row:
        """What /_sandbox/flexmail/stats shows: no body, so no email or token."""
        return {
            "id": self.id,
            "webhook_id": self.webhook_id,
            "event_name": self.event_name,
            "attempts": list(self.attempts),
            "outcome": self.outcome,
            "redelivery_of": self.redelivery_of,
        }


class Webhooks:
    """The registrations of one account and every delivery made; callers hold the state's lock."""

    def __init__(self, sender: WebhookSender) -> None:
        self.sender = sender
        self.registrations: dict[int, Row] = {}
        self.deliveries: list[Delivery] = []
        self._next_id = 1

    # -- registrations (section 3) --------------------------------------------------------------
    def create(self, body: Row) -> Row:
        """POST /webhooks: event_name and target_url required; a token is made when none is
        given ([I] the API is said to take it as optional)."""
        _check(body, required=("event_name", "target_url"))
        webhook = {
            "id": self._take_id(),
            "event_name": body["event_name"],
            "target_url": body["target_url"],
            "verification_token": body.get("verification_token") or secrets.token_hex(16),
            "enabled": body.get("enabled", True),
        }
        self.registrations[webhook["id"]] = webhook
        return dict(webhook)

    def get(self, webhook_id: int) -> Row:
        """The registration, or KeyError (a 404 for the API)."""
        return dict(self.registrations[webhook_id])

    def update(self, webhook_id: int, body: Row) -> Row:
        """PATCH: only the fields sent change."""
        webhook = self.registrations[webhook_id]
        _check(body, required=())
        webhook.update({k: body[k] for k in FIELDS if k in body})
        return dict(webhook)

    def delete(self, webhook_id: int) -> None:
        del self.registrations[webhook_id]

    def _take_id(self) -> int:
        taken, self._next_id = self._next_id, self._next_id + 1
        return taken

    # -- deliveries (FM-A9) ---------------------------------------------------------------------
    def emit(self, event_name: str, occurred_at: str, data: Row) -> list[Delivery]:
        """Send the event to every enabled registration for it, each with its own token."""
        sent = []
        for webhook in self.registrations.values():
            if webhook["event_name"] != event_name or not webhook["enabled"]:
                continue
            envelope = {
                "event_name": event_name,
                "occurred_at": occurred_at,
                "verification_token": webhook["verification_token"],
                "data": data,
            }
            raw = json.dumps(envelope, ensure_ascii=False).encode()
            sent.append(self._send(webhook["id"], event_name, webhook["target_url"], raw, None))
        return sent

    def redeliver(self, delivery_id: int | str, times: int) -> list[Delivery]:
        """The same body (same occurred_at and token) sent `times` more times, as a vendor that
        did not see the receiver's 2xx would; `delivery_id` "last" is the newest first send."""
        original = self._find(delivery_id)
        return [
            self._send(original.webhook_id, original.event_name, original.url, original.body,
                       original.id)
            for _ in range(times)
        ]  # fmt: skip

    def _find(self, delivery_id: int | str) -> Delivery:
        firsts = [d for d in self.deliveries if d.redelivery_of is None]
        if delivery_id == "last":
            if not firsts:
                raise KeyError("no delivery yet")
            return firsts[-1]
        for delivery in firsts:
            if delivery.id == delivery_id:
                return delivery
        raise KeyError(delivery_id)

    def _send(
        self, webhook_id: int, event_name: str, url: str, raw: bytes, of: int | None
    ) -> Delivery:
        delivery = Delivery(len(self.deliveries) + 1, webhook_id, event_name, url, raw, of)
        self.deliveries.append(delivery)
        headers = {"Content-Type": "application/json", "User-Agent": "Flexmail-Webhooks"}
        self.sender.start(
            delivery,
            lambda http: http.post(url, content=raw, headers=headers),
            accepted=lambda status: 200 <= status < 300,
        )
        return delivery


def _check(body: Row, required: tuple[str, ...]) -> None:
    """FM-A11 violations for a registration body: known event, http(s) URL, string token."""
    violations = [
        {"propertyPath": key, "message": "This value should not be blank."}
        for key in required
        if body.get(key) in (None, "")
    ]
    violations += [
        {"propertyPath": key, "message": "This field was not expected."}
        for key in body
        if key not in FIELDS
    ]
    if "event_name" in body and body["event_name"] not in EVENTS:
        violations.append(
            {"propertyPath": "event_name", "message": "The value is not a valid event."}
        )
    if "target_url" in body and not _is_url(body["target_url"]):
        violations.append(
            {"propertyPath": "target_url", "message": "This value is not a valid URL."}
        )
    token = body.get("verification_token")
    if token is not None and not isinstance(token, str):
        violations.append(
            {
                "propertyPath": "verification_token",
                "message": "This value should be of type string.",
            }
        )
    if "enabled" in body and not isinstance(body["enabled"], bool):
        violations.append(
            {"propertyPath": "enabled", "message": "This value should be of type bool."}
        )
    if violations:
        raise WebhookInvalid(violations)


def _is_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def new_sender(env: Mapping[str, str]) -> WebhookSender:
    """The sender with FM-A9's schedule, or RETRY_DELAYS_ENV's (seconds, comma-separated)."""
    sender = WebhookSender(RETRY_DELAYS, "flexmail")
    webhook_sender.configure(sender, env, RETRY_DELAYS_ENV, TOKEN_ENV)
    return sender
