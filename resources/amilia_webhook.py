"""Amilia's webhook deliveries (AM-A9..A11): verified by signature or by a shared secret in the
URL, read as an envelope `{Context, Action, Name, EventTime, Payload}`.

Amilia's signing is not documented: deliveries carry `X-Amilia-Signature`, taken to be
base64(HMAC-SHA256(secret, raw body)) (AM-A11). An installation that has no signing secret
registers its receiver with `?token=<shared secret>` and the token is checked instead.

Each body is only a hint (the extract reads the record again), except a delete. A Membership
event of any kind asks for a new scan of memberships: its Delete carries only the purchase id,
which no read resolves, and the entity is read whole cheaply. Program and Activity events are
accepted without events: an activity cancelled keeps its registrations (AC6).
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping
from typing import Any

from resources.auth import HmacSigner
from resources.http import MissingEnvVarError
from resources.webhooks import RESCAN, EventKind, WebhookCapability, WebhookEvent, WebhookRefused

SIGNATURE_HEADER = "x-amilia-signature"
KINDS: dict[str, EventKind] = {"create": "create", "update": "update", "delete": "delete"}
IGNORED_CONTEXTS = frozenset({"program", "activity"})
ACCOUNT_PREFIX = "account:"


class AmiliaWebhook(WebhookCapability):
    """Verify and parse one Amilia delivery (bodies over the default 256 KiB are refused)."""

    def __init__(self, *, secret: str | None = None, token: str | None = None) -> None:
        if bool(secret) == bool(token):
            raise ValueError("an Amilia webhook needs exactly one of a signing secret or a token")
        self._signer = HmacSigner(secret, encoding="base64") if secret else None
        self._token = token or ""

    @classmethod
    def from_env(
        cls, *, secret_env: str | None = None, token_env: str | None = None
    ) -> AmiliaWebhook:
        """The secret from its environment variable (named in the error, never its value)."""
        name, setting = (
            (secret_env, "webhooks.secret_env") if secret_env else (token_env, "webhooks.token_env")
        )
        value = os.environ.get(name or "", "")
        if not name or not value:
            raise MissingEnvVarError(
                f"environment variable {name} (amilia {setting}) is not set or empty"
            )
        return cls(secret=value) if secret_env else cls(token=value)

    def verify(
        self, headers: Mapping[str, str], body: bytes, query: Mapping[str, str] | None = None
    ) -> None:
        """AM-A11: the signature of the raw body when a signing secret is set, else `?token=`;
        both compared in constant time."""
        if self._signer is not None:
            given = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER), None)
            if not given:
                raise WebhookRefused(401, "missing X-Amilia-Signature header")
            if not self._signer.verify(body, given):
                raise WebhookRefused(401, "X-Amilia-Signature does not match the body")
            return
        given_token = (query or {}).get("token")
        if not given_token:
            raise WebhookRefused(401, "missing token query parameter")
        if not _same(given_token, self._token):
            raise WebhookRefused(401, "token does not match the webhook secret")

    def parse(self, body: bytes) -> list[WebhookEvent]:
        envelope = _envelope(body)
        context = envelope["Context"].lower()
        kind = KINDS[envelope["Action"].lower()]
        payload: dict[str, Any] = envelope["Payload"]
        if context in IGNORED_CONTEXTS:
            return []
        if context == "person":
            return [WebhookEvent(kind, "persons", _id(payload, "Id"), payload)]
        if context == "account":  # a Delete is an archive (AC3): its persons are read again
            record = f"{ACCOUNT_PREFIX}{_id(payload, 'Id')}"
            return [WebhookEvent("update", "persons", record, payload)]
        if context == "registration":
            if kind == "delete":  # AM-A10: a Delete carries only Id
                return [WebhookEvent(kind, "registrations", _id(payload, "Id"), payload)]
            return [WebhookEvent(kind, "registrations", _id(payload, "RegistrationId"), payload)]
        if context == "membership":
            return [WebhookEvent("update", "memberships", RESCAN, payload)]
        raise WebhookRefused(400, f"unknown Context {envelope['Context']!r}")


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _envelope(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRefused(400, "body is not JSON") from None
    if not isinstance(data, dict):
        raise WebhookRefused(400, "body must be an object {Context, Action, Payload, ...}")
    for key in ("Context", "Action"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise WebhookRefused(400, f"{key} is missing or not text")
    if data["Action"].lower() not in KINDS:
        raise WebhookRefused(400, "Action must be Create, Update or Delete")
    if not isinstance(data.get("Payload"), dict):
        raise WebhookRefused(400, "Payload must be an object")
    return data


def _id(payload: Mapping[str, Any], key: str) -> str:
    """An id that goes into a URL path when the record is read again: digits, or letters,
    digits and dashes (a registration's `AC-123`); nothing else is taken."""
    value = payload.get(key)
    text = (
        str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    )
    if not text or len(text) > 64 or not all(c.isalnum() or c == "-" for c in text):
        raise WebhookRefused(400, f"Payload.{key} is missing or not an id")
    if not text.isascii():
        raise WebhookRefused(400, f"Payload.{key} is missing or not an id")
    return text
