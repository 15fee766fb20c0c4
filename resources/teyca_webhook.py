"""Teyca's webhook deliveries (TY-A5): a static secret in `Authorization`, a body `{type, pass}`.

Teyca signs nothing: the secret set in its UI comes back verbatim in the `Authorization` header of
every delivery, so verifying is a constant-time comparison. The body names one card and what
happened to it; the pass it carries is only a hint (the extract reads the card again), except for
a deletion, which is trusted as it is.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping
from typing import Any

from resources.http import MissingEnvVarError
from resources.webhooks import WebhookCapability, WebhookEvent, WebhookRefused

ENTITY = "passes"
KINDS = {"CREATE": "create", "UPDATE": "update", "DELETE": "delete"}


class TeycaWebhook(WebhookCapability):
    """Verify and parse one Teyca delivery."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a Teyca webhook secret must not be empty")
        self._secret = secret.encode()

    @classmethod
    def from_env(cls, secret_env: str) -> TeycaWebhook:
        """The secret from its environment variable (named in the error, never its value)."""
        secret = os.environ.get(secret_env, "")
        if not secret:
            raise MissingEnvVarError(
                f"environment variable {secret_env} (teyca webhooks.secret_env) is not set or empty"
            )
        return cls(secret)

    def verify(
        self, headers: Mapping[str, str], body: bytes, query: Mapping[str, str] | None = None
    ) -> None:
        given = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        if given is None:
            raise WebhookRefused(401, "missing Authorization header")
        if not hmac.compare_digest(given.encode(), self._secret):
            raise WebhookRefused(401, "Authorization does not match the webhook secret")

    def parse(self, body: bytes) -> list[WebhookEvent]:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise WebhookRefused(400, "body is not JSON") from None
        if not isinstance(data, dict):
            raise WebhookRefused(400, "body must be an object {type, pass}")
        kind = (
            KINDS.get(str(data.get("type", "")).upper())
            if isinstance(data.get("type"), str)
            else None
        )
        if kind is None:
            raise WebhookRefused(400, "type must be CREATE, UPDATE or DELETE")
        card = data.get("pass")
        if not isinstance(card, dict):
            raise WebhookRefused(400, "pass must be an object")
        user_id = _user_id(card.get("user_id"))
        return [WebhookEvent(kind=kind, entity=ENTITY, record_id=user_id, payload=card)]


def _user_id(value: Any) -> str:
    """Teyca's user_id is an integer (a number, or its digits as text): it goes into a URL path
    when the card is re-read, so nothing else is taken."""
    readable = isinstance(value, int | str) and not isinstance(value, bool)
    text = str(value).strip() if readable else ""
    if not text.isdigit():
        raise WebhookRefused(400, "pass.user_id is missing or not an id")
    return str(int(text))
