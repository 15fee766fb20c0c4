"""Flexmail's feedback webhooks (FM-A9): a verification token in the body, one event per delivery.

Flexmail signs nothing we know of: the `verification_token` a webhook was registered with comes
back inside every delivery's JSON body, so verifying is a constant-time comparison of that field
with the configured token. The events memberflow subscribes to become Feedback for the source
(an unsubscribe, a click, a bounce); an event it does not use (`contact.created`, ...) is accepted
without feedback, so Flexmail does not retry it and then give up on the webhook.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from resources.feedback import Feedback, FeedbackWebhook
from resources.flexmail_wire import id_text
from resources.http import MissingEnvVarError, parse_iso_utc
from resources.webhooks import WebhookRefused

# FM-A9: the events memberflow registers, and the feedback kind each becomes.
EVENTS: dict[str, str] = {
    "contact.unsubscribed": "unsubscribed",
    "contact.clicked": "clicked",
    "contact.bounced": "bounced",
}


class FlexmailFeedbackWebhook(FeedbackWebhook):
    """Verify and parse one Flexmail delivery."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("a Flexmail webhook verification token must not be empty")
        self._token = token.encode()

    @classmethod
    def from_env(cls, token_env: str) -> FlexmailFeedbackWebhook:
        """The token from its environment variable (named in the error, never its value)."""
        token = os.environ.get(token_env, "")
        if not token:
            raise MissingEnvVarError(
                f"environment variable {token_env} (flexmail webhook_token_env) is not set or empty"
            )
        return cls(token)

    def verify(
        self, headers: Mapping[str, str], body: bytes, query: Mapping[str, str] | None = None
    ) -> None:
        """FM-A9: the body's `verification_token` equals ours (constant time)."""
        given = _body(body).get("verification_token")
        if not isinstance(given, str) or not given:
            raise WebhookRefused(401, "missing verification_token")
        if not hmac.compare_digest(given.encode(), self._token):
            raise WebhookRefused(401, "verification_token does not match")

    def parse(self, body: bytes) -> list[Feedback]:
        """One Feedback for a subscribed event; none for any other event name."""
        data = _body(body)
        kind = EVENTS.get(str(data.get("event_name") or ""))
        if kind is None:
            return []
        occurred = parse_iso_utc(data.get("occurred_at"))
        if occurred is None:
            raise WebhookRefused(400, "occurred_at is missing or not an ISO 8601 time")
        event = data.get("data")
        if not isinstance(event, dict):
            raise WebhookRefused(400, "data must be an object")
        email = event.get("email")
        email = email.strip().lower() if isinstance(email, str) and email.strip() else None
        member_id = id_text(event.get("contact_id"))
        if email is None and member_id is None:
            raise WebhookRefused(400, "data names no contact (email or contact_id)")
        return [
            Feedback(
                kind=kind,  # type: ignore[arg-type]
                email=email,
                member_id=member_id,
                occurred_at=bounce_time(occurred) if kind == "bounced" else occurred,
                detail=feedback_detail(kind, event),
            )
        ]


def feedback_detail(kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The details a source needs, ids as text (a webhook and a legacy bounce give one key)."""
    if kind == "clicked":
        return {
            "campaign_id": id_text(data.get("campaign_id")),
            "campaign_name": data.get("campaign_name"),
            "link_url": data.get("link_url"),
        }
    if kind == "bounced":
        bounce = str(data.get("bounce_type") or "").strip().lower() or None
        return {"bounce_type": bounce, "campaign_id": id_text(data.get("campaign_id"))}
    return {}


def bounce_time(moment: datetime) -> datetime:
    """A bounce's time to the whole second: the legacy read (FM-A12) stamps bounces in seconds
    while a webhook may carry milliseconds, and one bounce must give one Feedback key whichever
    route brought it (two bounces of one address and campaign in one second are one)."""
    return moment.replace(microsecond=0)


def _body(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRefused(400, "body is not JSON") from None
    if not isinstance(data, dict):
        raise WebhookRefused(400, "body must be an object {event_name, occurred_at, data}")
    return data
