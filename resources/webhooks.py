"""The webhook capability of a source: verify a delivery, parse it into events, and say how the
records it names are read again.

The receiver (`memberflow receiver`) is vendor-free: it finds the integration's source, asks its
capability to verify the request (a shared secret, a signature: the vendor's scheme), stores the
parsed events durably, and only then answers 2xx. A sensor turns stored events into a run whose
extract re-reads the named records from the API (`SourceClient.fetch_records`), because a webhook
body is a hint, not the truth; a delete is trusted as it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

# "feedback": a target's feedback (resources/feedback.py) kept in the same kind of store; its
# entity is the feedback kind, its record id the feedback key, its payload Feedback.to_payload().
EventKind = Literal["create", "update", "delete", "feedback"]
# A record id meaning "this entity changed in a way the body does not pin down to one record"
# (e.g. a delete that carries only an id the API cannot be asked about): the run reads the
# entity again the way a regular run does (a full-scan entity is scanned whole).
RESCAN = "*"


class WebhookRefused(ValueError):
    """A delivery that is not accepted; `status` is what the receiver answers (400, 401, 413)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class WebhookEvent:
    """One change a source announced: which record of which entity, and what happened to it."""

    kind: EventKind
    entity: str  # the source entity the record belongs to (members or events)
    record_id: str  # the record to read again, or RESCAN
    payload: Mapping[str, Any] = field(default_factory=dict)  # the record as the body carried it


class WebhookCapability(ABC):
    """How one configured source's webhook deliveries are checked and read."""

    max_body_bytes: ClassVar[int] = 256 * 1024  # larger bodies are refused with 413 unread

    @abstractmethod
    def verify(
        self, headers: Mapping[str, str], body: bytes, query: Mapping[str, str] | None = None
    ) -> None:
        """Raise WebhookRefused(401, ...) unless the delivery proves it comes from the vendor.

        `headers` has lowercase names; `query` is the delivery URL's query string (a vendor
        without signatures may carry a shared secret there). Compare secrets in constant time
        (hmac.compare_digest).
        """

    @abstractmethod
    def parse(self, body: bytes) -> list[WebhookEvent]:
        """The events of a verified body; raise WebhookRefused(400, ...) for one that can't be."""
