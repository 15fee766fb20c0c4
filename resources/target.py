"""The target role: what a list or CRM account can do, and the one way members reach it.

A target declares its capabilities (which match keys it accepts, whether it has an activity feed,
groups, a consent flag, how unsubscribes come back, what taking a member off means) and takes
members in *batches* of changes carrying canonical values: ISO dates, E.164 phones, plain decimal
numbers, booleans, lists. The core plans who changed and records one acknowledgement per member;
the vendor's client chooses its batch calls, bulk or parallel single calls, and its wire formats
(a digits-only mobile, a choice option id, a number format), and keeps its own list, account and
tracking ids in its configuration. Nothing in memberflow's core, assets or pipelines knows them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

from resources.base import (
    CallCounter,
    EventImportResult,
    ListField,
    RemoteMember,
    UpsertFlags,
    VendorError,
)
from resources.feedback import Feedback

MatchKey = Literal["email", "mobile", "external_id"]
ChangeAction = Literal["create", "update", "remove"]
MemberOutcome = Literal[
    "created",  # the target holds the member now, as a new one
    "updated",  # the target holds the member now, an existing one changed
    "removed",  # the member was taken off (deleted or unsubscribed, see `withdrawal`)
    "refused",  # the target judged this member and said no (reason: the target's words)
    "unsubscribed",  # skipped: unsubscribed on the target and the reimport rule keeps it so
    "import_type",  # skipped: the import type (create only / update only) rules it out
    "error",  # no verdict (the host failed after retries): nothing recorded, sent again later
]


@dataclass(frozen=True)
class TargetCapabilities:
    """What a target can do; the core adapts to these instead of to a vendor's endpoints."""

    match_keys: frozenset[str]  # of MatchKey: what the target recognises a member by
    activity_feed: bool = False  # takes tracking events (send_events)
    groups: bool = False  # keeps group memberships (MemberChange.groups*)
    consent: bool = False  # keeps a per-member consent flag
    feedback: Literal["polled", "pushed", "none"] = "none"  # how unsubscribes/bounces come back
    listing: bool = False  # can count and list its members (reconciliation, pull-back)
    # its changed-since listing (iter_members) shows every member changed since, not only
    # feedback, so the core's copy of the list (remote_members) is complete after a pull
    lists_changes: bool = False
    withdrawal: Literal["delete", "unsubscribe"] = "delete"  # what `remove` does on the target
    creates_fields: bool = False  # can add a missing custom field itself (create_fields)


@dataclass(frozen=True)
class WritePolicy:
    """The integration's import rules the client must honour while it writes (C5/C6)."""

    match_on: str  # MatchKey
    import_type: str  # create_only | create_and_update | update_only
    reimport_unsubscribed: bool
    flags: UpsertFlags = UpsertFlags()


@dataclass(frozen=True)
class MemberChange:
    """One member to write: its key, what the core planned, and its values in canonical form.

    `values` maps target field names to canonical values (text, ISO 8601 dates and datetimes with
    offset, E.164 phones, decimal numbers as text or numbers, booleans, lists). A mapped field
    that is empty at the source is there as None: a target whose field can be empty clears it,
    one that can't leaves it as it is; a field not mapped is absent. For a `remove`, `values` may be
    empty and `member_id` names the member. `groups` is every group the member is in now, with
    `groups_added`/`groups_removed` the difference from what the target last acknowledged; None
    when the integration manages no groups. `changed` names the fields whose values differ from
    what the target last acknowledged (a create: every field), so a client can skip a call
    whose inputs did not move (e.g. a consent record); None when the core cannot tell.
    `remote_blank` names the fields the target showed empty for this member at its last read of
    it (the run's pull keeps that current; a field it did not show is not among them), or, for
    a create whose member the core knows the target does not hold, every mapped field; so a
    bulk write may send an empty value for a field the target holds nothing in. None: unknown.
    """

    match_key: str
    action: ChangeAction
    values: Mapping[str, Any] = field(default_factory=dict)
    member_id: str | None = None
    modified: datetime | None = None  # newest source change of the member (reimport rule)
    planned: ChangeAction | None = None  # set when the core re-routed the plan (create -> update)
    groups: tuple[str, ...] | None = None
    groups_added: tuple[str, ...] = ()
    groups_removed: tuple[str, ...] = ()
    changed: frozenset[str] | None = None
    remote_blank: frozenset[str] | None = None


@dataclass(frozen=True)
class MemberAck:
    """The target's answer for one member of a batch; exactly one per MemberChange."""

    match_key: str
    outcome: MemberOutcome
    member_id: str | None = None
    reason: str | None = None  # refusal or error text, the vendor's own words (secrets removed)
    dropped: tuple[tuple[str, str], ...] = ()  # (field, reason): values sent without, row kept
    remote: RemoteMember | None = None  # the member as the target reported it, when read
    checked: bool = False  # a read of this member was spent right before the write


@dataclass(frozen=True)
class RateBudget:
    """Calls a target or source may still spend in its tightest window (for `memberflow check`)."""

    window: str  # e.g. "day": the last 24 hours, a sliding window
    limit: int
    used: int
    by_this_client: int | None = None  # of `used`, the calls this client (one run) let through

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True)
class KeptReads:
    """Members a client's own changed-since reads showed, in the order read (a member read twice
    is there twice, the later state last), and `through`: a changed-since read starting there
    shows every change they do not, because those reads followed on from one another from
    the cursor given to `keep_reads`, each starting no later than where the one before reached.
    None when they did not (the core then keeps its own cursor)."""

    members: list[RemoteMember]
    through: datetime | None


class TargetClient(ABC):
    """A list (or CRM account) where members are kept; its ids come from its own config section."""

    vendor: ClassVar[str]
    capabilities: ClassVar[TargetCapabilities]
    calls: CallCounter
    # Members per write_members call the core hands over; the client may split it further.
    batch_size: ClassVar[int] = 200

    @property
    @abstractmethod
    def label(self) -> str:
        """Where members land, for messages: "heyloyalty list 4711", "axle account acc_demo"."""

    @abstractmethod
    def check_connection(self) -> None:
        """One cheap authenticated call; raises VendorError when credentials or host are wrong."""

    @abstractmethod
    def target_fields(self) -> dict[str, ListField]:
        """The fields a member can carry, by name (C7: every mapped field must be one)."""

    @abstractmethod
    def write_members(
        self, changes: Sequence[MemberChange], policy: WritePolicy
    ) -> Iterator[MemberAck]:
        """Write one batch; yield exactly one MemberAck per change, in any order, as they arrive.

        A refusal of one member is its ack (`refused`), never an exception. A failure that leaves
        members without a verdict yields `error` acks for them. Raises only for a failure of the
        whole batch that no ack can describe (then nothing of it is recorded and it is resent).
        """

    # -- custom fields (capabilities.creates_fields) ---------------------------------------------

    def create_fields(self, fields: Mapping[str, str]) -> list[str]:
        """Create the missing custom fields `fields` (name -> type: text, date, integer,
        decimal); returns the names created. Raises VendorError naming every field that could
        not be made (the account's limit reached), before or after creating the others."""
        raise NotImplementedError(f"{self.vendor} cannot create fields")

    # -- feedback and listing (capabilities.feedback == "polled" / capabilities.listing) --------

    def iter_members(self, changed_since: datetime | None) -> Iterator[RemoteMember]:
        """Every member, or those changed at or after `changed_since` (aware UTC)."""
        raise NotImplementedError(f"{self.vendor} cannot list its members")

    def keep_reads(self, since: datetime | None) -> bool:
        """From now on keep what this client's own changed-since reads of the target show (the
        reads it makes while writing members: a read before a bulk write, a read-back), for
        `take_reads`, and start its next read no later than `since` (the core's cursor: every
        change before it is in the core's copy of the list); None: stop keeping. Returns
        whether it keeps them; a client that reads nothing of its own keeps nothing (the
        default)."""
        return False

    def take_reads(self) -> KeptReads | None:
        """What the client's own reads showed since `keep_reads` or the last call, and how far
        they reach; None when it keeps none. The core stores them as if it had read them, so
        its next changed-since read starts at `KeptReads.through` and need not read them
        again."""
        return None

    def has_member_changes(self, changed_since: datetime | None) -> bool:
        """A one-call probe for the sensor: did any member change on the target since then?"""
        return False

    def member_count(self) -> int | None:
        """How many members the target holds now, in one cheap call; None if it can't say."""
        return None

    def clock_ahead(self) -> timedelta | None:
        """How far the target's clock is ahead of ours at least (negative: behind), measured on
        its answers this run (e.g. their HTTP `Date`); None when it cannot tell. Changed-since
        reads are filtered on the target's clock, so a cursor for the next read is put on it."""
        return None

    # -- activity feed (capabilities.activity_feed) ---------------------------------------------

    max_events_per_call: ClassVar[int] = 50_000
    events_per_batch: int = 1_000

    def send_events(
        self, match_on: str, columns: Sequence[str], rows: list[dict[str, Any]]
    ) -> EventImportResult:
        """Send one batch of tracking events; see memberflow/event_delivery.py for the rules."""
        raise NotImplementedError(f"{self.vendor} has no activity feed")

    def events_present(self, match_on: str, events: dict[str, dict[str, Any]]) -> set[str] | None:
        """Which of `events` (event id -> row as sent) the target holds; None: cannot tell."""
        return None

    # -- feedback (capabilities.feedback == "pushed": webhooks; any target: iter_feedback) ------

    def ensure_webhooks(self, url: str) -> list[str]:
        """Register the target's feedback webhooks (unsubscribes, clicks, bounces) to `url`;
        returns the event kinds newly registered. The receiver checks them with the config
        section's `feedback_webhook()`."""
        raise NotImplementedError(f"{self.vendor} has no webhooks memberflow can register")

    def iter_feedback(self, since: datetime | None) -> Iterator[Feedback]:
        """Feedback the target lets be read rather than pushed (e.g. bounces from a reporting
        API), that occurred at or after `since` (aware UTC; everything it keeps when None)."""
        return iter(())

    # -- budget ----------------------------------------------------------------------------------

    def estimate_calls(self, actions: Mapping[str, int]) -> int | None:
        """About how many calls writing members with these planned actions takes (create,
        update, remove -> count), so a run that would spend more than the month's budget left
        stops before sending; None when the client cannot say."""
        return None

    # -- figures ---------------------------------------------------------------------------------

    def run_figures(self) -> dict[str, int]:
        """Counts of this client's own work in the run, shown beside the delivery figures
        (e.g. consent records sent, bulk jobs polled); keys say what they count."""
        return {}

    def rate_budget(self) -> RateBudget | None:
        """The calls left in the target's tightest capped window, when it has one."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the HTTP connection pool."""


# Statuses that say "try later", not "this member is refused": after the client's retries are
# spent they are transient errors (the member is sent again next run), never a refusal.
_NOT_REFUSALS = frozenset({408, 425, 429})


def is_refusal(exc: VendorError) -> bool:
    """A 4xx that judges the request (bad value, unknown field), not one asking us to wait."""
    return 400 <= exc.status < 500 and exc.status not in _NOT_REFUSALS


def ruled_out(change: MemberChange, import_type: str) -> bool:
    """C5 by the core's plan, for a target whose writes cannot be told "create only" or "update
    only" (an upsert, a bulk job): a create under update_only, an update under create_only."""
    if import_type == "create_only":
        return change.action == "update"
    if import_type == "update_only":
        return change.action == "create"
    return False


def wire_fields_missing(client: TargetClient, fields: Sequence[str]) -> list[str]:
    """Mapped field names the target does not have (C7), in mapping order."""
    known: Mapping[str, ListField] = client.target_fields()
    return [name for name in fields if name not in known]
