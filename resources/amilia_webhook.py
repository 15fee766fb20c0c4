"""Amilia's webhook deliveries (AM-A9..A11): verified by signature or by a shared secret in the
URL, read as an envelope `{Context, Action, Name, EventTime, Payload}`.

Amilia's signing is not documented: deliveries carry `X-Amilia-Signature`, taken to be
base64(HMAC-SHA256(secret, raw body)) (AM-A11). An installation that has no signing secret
registers its receiver with `?token=<shared secret>` and the token is checked instead.

Each body is only a hint (the extract reads the record again), except a delete. A Membership
event of any kind asks for a new scan of memberships: its Delete carries only the purchase id,
which no read resolves, and the entity is read whole cheaply. Program and Activity events are
accepted without events: an activity cancelled keeps its registrations (AC6).

A delivery that is well-formed but not for us (an unknown Context or Action, a Person or Account
id that is not digits, a registration id that is no id) is accepted without events and logged:
a 400 would make Amilia retry it for 72 h and then disable the whole subscription (AM-A13), and
a poison id must never block the runs that read records again.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from resources.auth import HmacSigner
from resources.http import MissingEnvVarError
from resources.webhooks import RESCAN, EventKind, WebhookCapability, WebhookEvent, WebhookRefused

SIGNATURE_HEADER = "x-amilia-signature"
KINDS: dict[str, EventKind] = {"create": "create", "update": "update", "delete": "delete"}
IGNORED_CONTEXTS = frozenset({"program", "activity"})
KNOWN_CONTEXTS = IGNORED_CONTEXTS | {"person", "account", "registration", "membership"}
ACCOUNT_PREFIX = "account:"
log = logging.getLogger(__name__)


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
        context = envelope["Context"].strip().lower()
        kind = KINDS.get(envelope["Action"].strip().lower())
        payload: dict[str, Any] = envelope["Payload"]
        if kind is None or context not in KNOWN_CONTEXTS:
            log.warning(
                "amilia webhook %r/%r is not one memberflow reads: accepted, no events",
                envelope["Context"][:40],
                envelope["Action"][:40],
            )
            return []
        if context in IGNORED_CONTEXTS:
            return []
        if context == "membership":
            return [WebhookEvent("update", "memberships", RESCAN, payload)]
        if context in ("person", "account"):
            number = _digits(payload, "Id", context)
            if number is None:
                return []
            if context == "person":
                return [WebhookEvent(kind, "persons", number, payload)]
            # an Account event (a Delete is an archive, AC3): its persons are read again
            return [WebhookEvent("update", "persons", f"{ACCOUNT_PREFIX}{number}", payload)]
        # AM-A10: a Delete carries only Id; other events RegistrationId (Id when it is missing)
        key = "RegistrationId" if payload.get("RegistrationId") is not None else "Id"
        registration = _id(payload, key)
        if registration is None:
            return []
        return [WebhookEvent(kind, "registrations", registration, payload)]


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
    if not isinstance(data.get("Payload"), dict):
        raise WebhookRefused(400, "Payload must be an object")
    return data


def _id(payload: Mapping[str, Any], key: str) -> str | None:
    """An id that goes into a URL path when the record is read again: digits, or ASCII letters,
    digits and dashes (a registration's `AC-123`); None (logged) for anything else."""
    value = payload.get(key)
    text = (
        str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    )
    if not text or len(text) > 64 or not text.isascii():
        text = ""
    if not text or not all(c.isalnum() or c == "-" for c in text):
        log.warning("amilia webhook: Payload.%s is missing or not an id: no events", key)
        return None
    return text


def _digits(payload: Mapping[str, Any], key: str, context: str) -> str | None:
    """A Person or Account id: digits only (AM-A6), else None (logged)."""
    text = _id(payload, key)
    if text is not None and not text.isdigit():
        log.warning("amilia webhook: a %s Payload.%s is not a number: no events", context, key)
        return None
    return text
