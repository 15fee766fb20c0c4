"""Feedback from a target: what happened to members on the list that the source should hear of.

A target reports unsubscribes, clicks, bounces, and members that exist only on the list, either
by webhooks (`FeedbackWebhook`, checked and parsed by `memberflow receiver`) or by being read
(`TargetClient.iter_feedback`). Each piece is a `Feedback` in canonical form: a lowercased email,
the target's own member id, an aware UTC time, and the details the source needs (a campaign and a
link for a click). Its `key` is the same however often, and by whichever route, the same piece of
feedback is seen, so a click delivered three times creates one record at the source.

The core turns feedback into write-backs for a two-way source (memberflow/write_back.py); nothing
here knows a vendor.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

FeedbackKind = Literal["unsubscribed", "clicked", "bounced", "only_on_target"]
FEEDBACK_KINDS: tuple[str, ...] = ("unsubscribed", "clicked", "bounced", "only_on_target")


@dataclass(frozen=True)
class Feedback:
    """One thing the target reports about one member.

    - unsubscribed: the member left the list (or was blacklisted).
    - clicked: `detail` has campaign_id, campaign_name, link_url.
    - bounced: `detail` has bounce_type ("hard" | "soft") and campaign_id.
    - only_on_target: a member the source never sent; `values` holds its fields by the target's
      field names, in canonical form (ISO dates, plain text), for creating it at the source.
    """

    kind: FeedbackKind
    email: str | None
    member_id: str | None
    occurred_at: datetime
    detail: Mapping[str, Any] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in FEEDBACK_KINDS:
            raise ValueError(f"unknown feedback kind {self.kind!r}; known: {FEEDBACK_KINDS}")
        if self.occurred_at.tzinfo is None:
            raise ValueError("Feedback.occurred_at must be timezone-aware")

    @property
    def key(self) -> str:
        """Stable identity: kind, who, when, and the details (not `values`, which describe the
        member rather than the event). A member only on the target is one piece of feedback
        whenever it is seen, so its key leaves the time out."""
        who = (self.email or "").lower() or f"id:{self.member_id}"
        when = "" if self.kind == "only_on_target" else _utc(self.occurred_at)
        detail = json.dumps(dict(self.detail), sort_keys=True, default=str)
        raw = f"{self.kind}|{who}|{when}|{detail}"
        return f"{self.kind}:{hashlib.sha256(raw.encode()).hexdigest()[:24]}"

    def to_payload(self) -> dict[str, Any]:
        """JSON-safe form, for the webhook store and the warehouse."""
        return {
            "kind": self.kind,
            "email": self.email,
            "member_id": self.member_id,
            "occurred_at": _utc(self.occurred_at),
            "detail": dict(self.detail),
            "values": dict(self.values),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Feedback:
        return cls(
            kind=payload["kind"],
            email=payload.get("email"),
            member_id=payload.get("member_id"),
            occurred_at=datetime.fromisoformat(payload["occurred_at"]),
            detail=dict(payload.get("detail") or {}),
            values=dict(payload.get("values") or {}),
        )


class FeedbackWebhook(ABC):
    """How one configured target's feedback webhooks are checked and read (built from its
    config section alone, so the receiver makes no API call)."""

    max_body_bytes: ClassVar[int] = 256 * 1024  # larger bodies are refused with 413 unread

    @abstractmethod
    def verify(
        self, headers: Mapping[str, str], body: bytes, query: Mapping[str, str] | None = None
    ) -> None:
        """Raise resources.webhooks.WebhookRefused(401, ...) unless the delivery proves it
        comes from the vendor (a verification token, a signature); compare secrets with
        hmac.compare_digest. `headers` has lowercase names."""

    @abstractmethod
    def parse(self, body: bytes) -> list[Feedback]:
        """The feedback of a verified body; an event the integration does not use gives none;
        raise WebhookRefused(400, ...) for a body that cannot be read."""


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()
