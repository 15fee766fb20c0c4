"""Heyloyalty target client: list fields, member upserts, CSV member imports and read-back, and BI
tracking imports.

Auth (HMAC over a timestamp) and the endpoints follow Heyloyalty's published API; where it is
silent, this client follows one labelled assumption (HL-A*, summarised in the README) that the
emulator in sandbox/ implements too.

HL-A14 (assumed; HL 2.3 documents the `in` operator and that a filter value may be repeated):
`GET /lists/{id}/members?filter[email][in][]=a&filter[email][in][]=b` (or `mobile`) answers the
members whose email is any of the values, paged as any listing. The client reads the members of a
chunk of updates this way right before their upserts (find_members); an answer holding a member
not asked for means the list did not apply the filter, and the client then reads members one by
one for the rest of the run; a member the answer leaves out is looked up alone. The list's clock
is read from the HTTP `Date` header of its answers (RFC 9110), for changed-since cursors.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from typing import Annotated, Any, ClassVar, Literal

import dagster as dg
import httpx
from pydantic import BeforeValidator, ConfigDict, Field, model_validator

from resources.base import (
    EventImportResult,
    ListField,
    RemoteMember,
    UpsertFlags,
    VendorError,
)
from resources.heyloyalty_import import (
    BULK_BATCH,
    IMPORT_DATE_FORMAT,
    ImportAnswer,
    Listed,
    listed_key,
    parse_answer,
    write_members_bulk,
)
from resources.heyloyalty_members import WIRE_DATETIME, write_batch
from resources.http import (
    EnvVarName,
    HttpUrlStr,
    VendorHttp,
    as_utc,
    resolve_secret,
    str_id,
)
from resources.pacing import requests_per_second_pace
from resources.registry import TargetSectionBase
from resources.target import (
    KeptReads,
    MemberAck,
    MemberChange,
    TargetCapabilities,
    TargetClient,
    WritePolicy,
)

log = logging.getLogger(__name__)
MEMBERS_PER_PAGE = 1000  # HL-A4
BULK_PER_PAGE = 5000  # HL-A4's maximum: our page size for listings when the bulk path is on
BULK_THRESHOLD = 500  # our setting: creates + updates in a batch from which it goes as one import
# A listing read covers the list up to the moment it began (on the list's clock, from its `Date`;
# else up to its newest `updated_at`); the next changed-since read starts this much before that,
# for writes stamped in the same second (HL-A3: whole seconds).
LISTING_OVERLAP = timedelta(seconds=1)
# A complete listing read begun at most this long ago stands for the read right before a member
# import (heyloyalty_import.py): the core's pull or refresh, or the previous import's read-back.
FRESH_READ_SECONDS = 1.0
REQUESTS_PER_SECOND = 20.0  # HL-A12 (assumed): per API key, the client paces itself to it
BI_DATE_FORMAT = "Y-m-d H:i:s"  # HL-A10, PHP date() notation of WIRE_DATETIME
_EMPTY_DATES = ("", "0000-00-00", "0000-00-00 00:00:00")
# Keys of the flat HL-mind member shape that are not list fields (HL-A3).
_FLAT_META = {
    "id",
    "status",
    "created_at",
    "updated_at",
    "unsubscribed_at",
    "sent_mail",
    "sent_sms",
    "open_rate",
    "click_rate",
    "imported",
    "data",
    "fields",
}


def sign(api_secret: str, timestamp: str) -> str:
    """HL-A1 / section 1: base64 of the lowercase HEX text of HMAC-SHA256(secret, timestamp)."""
    digest = hmac.new(api_secret.encode(), timestamp.encode(), hashlib.sha256).hexdigest()
    return base64.b64encode(digest.encode("ascii")).decode("ascii")


def auth_headers(api_key: str, api_secret: str, now: datetime) -> dict[str, str]:
    """The two headers of one signed request: RFC 1123 timestamp and Basic key:signature."""
    timestamp = format_datetime(as_utc(now), usegmt=True)
    basic = base64.b64encode(f"{api_key}:{sign(api_secret, timestamp)}".encode()).decode()
    return {"X-Request-Timestamp": timestamp, "Authorization": f"Basic {basic}"}


@dataclass(frozen=True)
class UpsertResult:
    """HL-A6's answer to one upsert: whether the list created or updated the member."""

    action: Literal["create", "update"]
    member_id: str


class HeyloyaltyClient(TargetClient):
    """One Heyloyalty list (and its BI tracking id), as a target.

    Its upserts run on a thread pool (heyloyalty_members.py), sharing only the VendorHttp
    (signing is per request); the listing reads, the import and the state they keep (what
    the reads showed, the cursor, the kept reads) belong to the calling thread.
    """

    vendor: ClassVar[str] = "heyloyalty"
    capabilities: ClassVar[TargetCapabilities] = TargetCapabilities(
        match_keys=frozenset({"email", "mobile"}),  # C3
        activity_feed=True,  # BI transaction import (HL-A10), with a tracking id
        groups=False,
        consent=False,
        feedback="polled",  # unsubscribes and bounces are read back (HL-A5)
        listing=True,  # GET /lists counts, GET members pages (HL-A4)
        lists_changes=True,  # filter[updated_at][gte] lists every member changed (HL-A5)
        withdrawal="delete",
    )
    single_batch_size: ClassVar[int] = 200  # members between two changed-since reads of the list
    # At most this many updates' members are read together (one call) right before their upserts
    # go out; a chunk is also at most one wave of the pool (`concurrency`), so the window an
    # unsubscribe can fall into stays about one round trip (heyloyalty_members).
    guard_batch: ClassVar[int] = 50
    max_events_per_call: ClassVar[int] = 50_000  # HL-A10

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        api_secret: str,
        list_id: str = "",
        tracking_id: str | None = None,
        bi_base_url: str | None = None,
        concurrency: int = 8,
        timeout: float | None = None,  # None: MEMBERFLOW_HTTP_TIMEOUT or 30 s
        max_tries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] | None = None,
        events_per_batch: int = 1_000,
        bulk_threshold: int = 0,  # 0: never import (the integration file's default is 500)
        requests_per_second: float | None = REQUESTS_PER_SECOND,  # 0 or None: no pacing
    ) -> None:
        if not 1 <= events_per_batch <= self.max_events_per_call:
            raise ValueError(f"events_per_batch must be 1..{self.max_events_per_call}")
        self.events_per_batch = events_per_batch
        self.list_id = str(list_id)
        self.tracking_id = str(tracking_id) if tracking_id is not None else None
        self.concurrency = concurrency
        if bulk_threshold < 0:
            raise ValueError("bulk_threshold must be >= 0 (0: never import)")
        self.bulk_threshold = bulk_threshold
        self.bulk_figures: Counter[str] = Counter()
        # reads of members right before their updates: batched (find_members) and single; the
        # single ones are counted from the upsert threads (count_guard)
        self.guard_figures: Counter[str] = Counter()
        self._guard_lock = threading.Lock()
        self.batch_guard = True  # False once a batched read answered against HL-A14
        self._bulk_refusal: str | None = None
        self._per_page = BULK_PER_PAGE if bulk_threshold else MEMBERS_PER_PAGE
        # Where the list's changes are known up to (its clock): set by every complete listing
        # read of this client (HL-A5); the guard read before an import starts here.
        self._read_known = False
        self._read_since: datetime | None = None
        # when (time.monotonic) the latest complete listing read began; how old it may be to
        # stand for the read right before an import (tests set 0 to force that read)
        self._read_began: float | None = None
        self.fresh_read_seconds = FRESH_READ_SECONDS
        # keep_reads: the members this client's own reads (read_changes) showed, for the core
        # (take_reads), and how far the reads since keep_reads reach (None: they broke off)
        self._kept: list[RemoteMember] | None = None
        self._reach: datetime | None = None
        # What the listing reads and lookups of this client showed, per match key (email
        # lower-case, mobile digits): that a read showed the member (`seen`) and which of its
        # fields it showed empty (`blank`, so an import file may carry an empty cell only where
        # the list holds nothing), and the newest state of each member whose newest state is
        # not active (`listed`), so no import row reactivates an unsubscribed member. An active
        # member is kept as a hash of its key and a shared set of field names only: a read of a
        # million members must not stay in memory as a million objects.
        self._seen: dict[int, frozenset[str]] = {}
        self._field_sets: dict[frozenset[str], frozenset[str]] = {}  # one object per set
        self._listed: dict[tuple[str, str], RemoteMember] = {}
        if self.tracking_id is None:  # no tracking id configured: this list takes no events
            self.capabilities = replace(self.capabilities, activity_feed=False)  # type: ignore[misc]
        self._fields: dict[str, ListField] | None = None
        self._http = VendorHttp(
            vendor=self.vendor,
            timeout=timeout,
            max_tries=max_tries,
            transport=transport,
            sleep=sleep,
            secrets=[api_secret, api_key],
            pace=requests_per_second_pace(  # per key on this host (the BI API counts too)
                self.vendor, f"{base_url.rstrip('/')}\0{api_key}", requests_per_second
            ),
        )
        self.calls = self._http.calls
        self._base = base_url.rstrip("/")
        self._bi_base = bi_base_url.rstrip("/") if bi_base_url else None
        self._api_key = api_key
        self._api_secret = api_secret
        self._clock = clock or (lambda: datetime.now(UTC))

    # --- TargetClient --------------------------------------------------------------------------

    @property  # type: ignore[override]
    def batch_size(self) -> int:
        """Members per write_members call: one import's worth (BULK_BATCH) when the bulk path is
        on, else `single_batch_size`, the members between two changed-since reads of the list."""
        return BULK_BATCH if self.bulk_threshold else self.single_batch_size

    @property
    def label(self) -> str:
        return f"heyloyalty list {self.list_id}"

    def check_connection(self) -> None:
        """`GET /lists`: cheap, and a wrong key or secret answers 401 (HL-A1)."""
        self._call("GET", f"{self._base}/lists", endpoint="lists")

    def target_fields(self) -> dict[str, ListField]:
        """`GET /lists/{id}` fields by name, with choice options id -> label (HL 2.2, HL-A9).

        Kept for this client's life (one run): the batches reuse it for choice option ids."""
        with self.calls.purpose("fields"):
            body = self._json("GET", self._list_url(), endpoint="lists/{id}")
        raw = body.get("fields") if isinstance(body, dict) else None
        named = raw.items() if isinstance(raw, dict) else ((None, e) for e in raw or [])
        fields = [_list_field(key, entry) for key, entry in named if isinstance(entry, dict)]
        self._fields = {f.name: f for f in fields if f.name}
        return dict(self._fields)

    def write_members(
        self, changes: Sequence[MemberChange], policy: WritePolicy
    ) -> Iterator[MemberAck]:
        """A CSV import for a large batch when the bulk path is on (resources/heyloyalty_import.py),
        else single calls by `concurrency` threads (resources/heyloyalty_members.py)."""
        if policy.match_on not in self.capabilities.match_keys:
            raise ValueError(f"{self.label} recognises members by email or mobile only")
        fields = self._fields if self._fields is not None else self.target_fields()
        if self.bulk_threshold:
            return write_members_bulk(self, changes, policy, fields)
        return write_batch(self, changes, policy, fields, self.concurrency)

    def iter_members(self, changed_since: datetime | None) -> Iterator[RemoteMember]:
        """Pages of perpage=1000 (5000 with the bulk path on) until a short page (HL-A4),
        optionally changed since (HL-A5)."""
        for member, _ in self._listing(changed_since):
            yield member

    def read_changes(self, changed_since: datetime | None) -> list[Listed]:
        """Members changed since then (all when None), each with its `created_at`: this
        client's own reads (before a file, a read-back), kept for the core (keep_reads)."""
        listed = list(self._listing(changed_since))
        if self._kept is not None:
            self._kept.extend(member for member, _ in listed)
        return listed

    def keep_reads(self, since: datetime | None) -> bool:
        """Keep what `read_changes` shows from now on (the reads before and after the member
        imports, heyloyalty_import.py, and between chunks of single creates, `write_single`),
        and start the next read no later than `since`; None: keep nothing any more. The core
        stores its own reads (`iter_members`) itself; they count in how far the reads reach."""
        if since is None:
            self._kept = self._reach = None
            return False
        self._kept, self._reach = [], as_utc(since)
        if self._read_known and self._read_since is not None:
            self._read_since = min(as_utc(self._read_since), self._reach)
        return True

    def take_reads(self) -> KeptReads | None:
        if self._kept is None:
            return None
        kept, self._kept = self._kept, []
        return KeptReads(kept, self._reach)

    def changes_since_last_read(self) -> list[Listed] | None:
        """The list's changes since this client's last complete listing read, or None when it
        has made none (then nothing is known to start from)."""
        if not self._read_known:
            return None
        return self.read_changes(self._read_since)

    def read_age(self) -> float | None:
        """Seconds since the latest complete listing read of this client began (None: none)."""
        if not self._read_known or self._read_began is None:
            return None
        return time.monotonic() - self._read_began

    def seen(self, match_on: str, key: str) -> bool:
        """A listing read or lookup of this client showed the member with this match key (wire
        form) this run. Kept as a hash of the key: a collision (about 1 in 10^13 at a million
        members) can only make a create go as a checked update, or a created member count as
        updated; never a send that would otherwise not happen."""
        return hash((match_on, key)) in self._seen

    def blank(self, match_on: str, key: str) -> frozenset[str] | None:
        """The fields the latest read of this run to show the member with this match key (wire
        form) showed empty (a field it did not show is not among them); None when no read of
        the run showed it. Unlike `seen`, a hash collision here (about 1 in 10^13 at a million
        members) could let an empty cell reach a field another member's read showed empty."""
        return self._seen.get(hash((match_on, key)))

    def listed(self, match_on: str, key: str) -> RemoteMember | None:
        """The state of the member with this match key (wire form) as the latest listing read or
        lookup of this client to show it showed it this run, when that state is not active
        (unsubscribed); None when it was active or no read showed it (see `seen`)."""
        return self._listed.get((match_on, key))

    def _note_member(self, member: RemoteMember) -> None:
        """Reads are sequential, so the latest read to show a member shows its newest state."""
        names = frozenset(name for name, value in member.fields.items() if _empty(value))
        names = self._field_sets.setdefault(names, names)
        for match_on, value in (("email", member.email), ("mobile", member.mobile)):
            key = listed_key(value, match_on)
            if key:
                self._seen[hash((match_on, key))] = names
                if member.status == "active":
                    self._listed.pop((match_on, key), None)
                else:
                    self._listed[(match_on, key)] = member

    @property
    def listing_cursor(self) -> datetime | None:
        """Where the next changed-since read starts (None: the whole list)."""
        return self._read_since

    @property
    def bulk_usable(self) -> bool:
        """False once the list refused an import file this run (the single way goes on)."""
        return self._bulk_refusal is None

    def bulk_refused(self, reason: str) -> None:
        self._bulk_refusal = reason
        log.warning("heyloyalty: the list refused a member import (%s); single calls go on", reason)

    def now(self) -> datetime:
        return as_utc(self._clock())

    def redact(self, text: str) -> str:
        return self._http.redact(text)

    def import_members(
        self, policy: WritePolicy, columns: Sequence[str], data: bytes
    ) -> ImportAnswer | None:
        """One CSV member import (HL 2.4). A clear `status: error` (or a 4xx) raises: the file
        was refused. Any other 2xx answer is read as HL-A11 assumes, and when it has another
        shape (or no body) it is None, "answer unknown": never sent again, the read-back decides.

        Idempotent with handle_existing=update (the same file leaves the same members), so a
        lost answer (5xx, timeout) is retried, and after the tries is a VendorError (status 0).
        """
        form = {
            "duplicate_field": policy.match_on,
            "handle_existing": "update",
            "date_format": IMPORT_DATE_FORMAT,
            "skip_header_line": "1",
            "delimiter": ",",
            "trigger_autoresponder": str(int(policy.flags.send_automations)),
            "fields_selected[]": list(columns),
        }
        with self.calls.purpose("import"):
            response = self._call(
                "POST",
                f"{self._list_url()}/import",
                endpoint="members/import",
                idempotent=True,
                data=form,
                files={"file": ("members.csv", data, "text/csv")},
            )
        try:
            body: Any = response.json() if response.content.strip() else None
        except ValueError:
            body = None
        answer = parse_answer(body)
        if isinstance(answer, dict):  # a clear `status: error`: nothing imported
            text = self._http.redact(str(answer.get("message") or answer))
            raise VendorError(self.vendor, 400, text, answer)
        return answer

    def _listing(self, changed_since: datetime | None) -> Iterator[Listed]:
        newest: datetime | None = None
        began = time.monotonic()
        began_at = datetime.now(UTC)  # our clock; on the list's once an answer gave its Date
        ahead: timedelta | None = None  # the least the list's clock was ahead over the read
        page = 1
        while True:
            with self.calls.purpose("listing"):  # the callers name theirs (pull, read-back)
                raw = self._members_page(changed_since, page, self._per_page)
            answered = self.clock_ahead()
            if answered is not None:
                ahead = answered if ahead is None else min(ahead, answered)
            for entry in raw:
                member = parse_member(entry)
                self._note_member(member)
                if member.updated_at is not None and (newest is None or member.updated_at > newest):
                    newest = member.updated_at
                yield member, parse_wire_datetime(entry.get("created_at"))
            if len(raw) < self._per_page:
                break
            page += 1
        self._note_read(changed_since, newest, began, None if ahead is None else began_at + ahead)

    def _note_read(
        self,
        since: datetime | None,
        newest: datetime | None,
        began: float,
        began_there: datetime | None = None,
    ) -> None:
        """A complete read of changes since `since`, begun at `began` (time.monotonic), on the
        list's clock at `began_there` or later (from its `Date`, a lower bound; None: no Date).

        The read showed every change made before it began, so the next changed-since read
        starts at `began_there` less LISTING_OVERLAP (stamps are whole seconds): any change
        after the read began is stamped at or after that, including one to a member on a page
        already read while later pages were read. Not at the newest change the read saw: right
        after a member import that is the file's own stamps, so the next read would take in
        the whole file again. Without a `Date` (the list's clock unknown), the newest change
        less the overlap."""
        if began_there is not None:
            start: datetime | None = began_there - LISTING_OVERLAP
        else:
            start = None if newest is None else newest - LISTING_OVERLAP
        reached = since if start is None else start if since is None else max(as_utc(since), start)
        self._note_reach(since, reached if began_there is not None else None)
        self._read_since = reached
        self._read_known = True
        self._read_began = began

    def _note_reach(self, read_from: datetime | None, reached: datetime | None) -> None:
        """After keep_reads: a complete read that started no later than where the reads since
        reach extends them to where it reaches; one that started later, or one whose reach is
        not known from the list's clock (`reached` None: no `Date`, so its newest change
        stands in, which a change on an earlier page can predate), breaks them off: the core
        must read from its own cursor, `take_reads` vouches for nothing."""
        if self._reach is None:
            return
        if reached is None or (read_from is not None and as_utc(read_from) > self._reach):
            self._reach = None
        else:
            self._reach = max(self._reach, as_utc(reached))

    def has_member_changes(self, changed_since: datetime | None) -> bool:
        """A perpage=1 probe with the HL-A5 filter."""
        with self.calls.purpose("probe"):
            return bool(self._members_page(changed_since, 1, 1))

    def member_count(self) -> int | None:
        """`members` of the list's entry in `GET /lists` (HL 2.2); None if the list is absent."""
        body = self._json("GET", f"{self._base}/lists", endpoint="lists")
        for entry in body if isinstance(body, list) else []:
            if isinstance(entry, dict) and str(entry.get("id")) == self.list_id:
                count = entry.get("members")
                return int(count) if isinstance(count, int | str) and str(count).isdigit() else None
        return None

    def clock_ahead(self) -> timedelta | None:
        """From the HTTP `Date` of the list's latest answer (resources/http.py)."""
        return self._http.server_clock_ahead()

    def find_member(self, match_field: str, value: str) -> RemoteMember | None:
        """The member whose `match_field` (email or mobile, wire format) equals `value`."""
        return self.lookup_member(match_field, value)

    def find_members(
        self, match_field: str, values: Sequence[str]
    ) -> dict[str, RemoteMember] | None:
        """The members whose `match_field` (wire format) is one of `values`, by listed_key, read
        together (HL-A14: `filter[<field>][in][]` repeated, one page per GUARD_BATCH values);
        the first listed per key, as `lookup_member` takes it. A key absent from the answer is
        left out (the caller looks it up alone). None when the answer holds a member not asked
        for: the list did not apply the filter as HL-A14 assumes."""
        wanted = list(dict.fromkeys(v for v in values if v))
        found: dict[str, RemoteMember] = {}
        if not wanted:
            return found
        asked = {listed_key(v, match_field) for v in wanted}
        perpage = min(BULK_PER_PAGE, 2 * len(wanted))
        page = 1
        while True:
            params: list[tuple[str, Any]] = [(f"filter[{match_field}][in][]", v) for v in wanted]
            params += [("page", page), ("perpage", perpage)]
            with self.calls.purpose("guard read"):
                body = self._json("GET", self._members_url(), endpoint="members", params=params)
            raw = _members_of(body)
            for entry in raw:
                member = parse_member(entry)
                value = member.email if match_field == "email" else member.mobile
                key = listed_key(value, match_field)
                if key not in asked:
                    return None
                self._note_member(member)
                found.setdefault(key, member)
            if len(raw) < perpage:
                return found
            page += 1

    def upsert_member(
        self, match_field: str, fields: dict[str, Any], flags: UpsertFlags
    ) -> UpsertResult:
        """POST /members/upsert as raw JSON (HL-A6) with the C5/C6 switches (HL-A7).

        The upsert is idempotent (HL-A6: the same member ends in the same state however often it
        is sent), so a lost, cut-off or unexpected answer is retried, and after the tries it is a
        transient VendorError (status 0), never a refusal.
        """
        payload = {
            "unique_field": match_field,
            "member": fields,
            "skipOptIn": 0 if flags.send_optin else 1,
            "trigger_autoresponder": int(flags.send_automations),
            "trigger_webhooks": int(flags.send_webhooks),
        }
        url = f"{self._list_url()}/members/upsert"
        return self._json(
            "POST",
            url,
            endpoint="members/upsert",
            idempotent=True,
            validate=_upsert_result,
            json=payload,
        )

    def remove_member(self, member_id: str) -> None:
        """DELETE the member (HL 2.3). A 404 means it is already gone, which is the goal."""
        url = f"{self._list_url()}/members/{member_id}"
        try:
            self._call("DELETE", url, endpoint="members/delete")
        except VendorError as exc:
            if exc.status != 404:
                raise

    def send_events(
        self, match_on: str, columns: Sequence[str], rows: list[dict[str, Any]]
    ) -> EventImportResult:
        """One BI CSV import (HL-A10); a `status: error` answer raises VendorError.

        Not idempotent: every accepted row is appended to the activity feed. It is retried only
        when it certainly did not reach Heyloyalty's logic (no connection, 429, 503); a lost or
        unreadable answer raises UncertainOutcome.
        """
        if not rows:
            return EventImportResult(imported=0, failed=[])
        self._check_batch(match_on, columns, rows)
        if self.tracking_id is None:
            raise ValueError(f"{self.label} has no tracking_id configured; cannot send events")
        if match_on == "mobile":  # HL-A8: the match column as digits only
            rows = [{**row, "mobile": str(row.get("mobile") or "").lstrip("+")} for row in rows]
        url = f"{self._bi_url()}/transaction/import/{self.tracking_id}"
        form = {
            "date_format": BI_DATE_FORMAT,
            "delimiter": ",",
            "skip_header_line": "1",
            "fields_selected[]": list(columns),
        }
        files = {"file": ("events.csv", events_csv(columns, rows), "text/csv")}
        body = self._json(
            "POST",
            url,
            endpoint="transaction/import",
            idempotent=False,
            validate=_import_answer,
            data=form,
            files=files,
        )
        if body.get("status") == "error":  # a clear answer: the file was refused, nothing stored
            text = self._http.redact(str(body.get("message") or body))
            raise VendorError(self.vendor, 200, text, body)
        failed = [_failed_row(item) for item in body.get("failed") or []]
        imported = body.get("imported")
        return EventImportResult(
            imported=int(imported) if imported is not None else len(rows) - len(failed),
            failed=failed,
        )

    def events_present(self, match_on: str, events: dict[str, dict[str, Any]]) -> set[str] | None:
        """Cannot tell: Heyloyalty documents no way to read the activity feed back (2.5)."""
        return None

    def count_guard(self, figure: str) -> None:
        """One more guard read (`guard_reads`, `guard_lookups`); safe from the upsert threads."""
        with self._guard_lock:
            self.guard_figures[figure] += 1

    def run_figures(self) -> dict[str, int]:
        """With the bulk path on: imports sent, rows sent and confirmed by the read-back, single
        lookups of rows missing from it, unsubscribed members kept out of a file, imports that
        needed no read of their own (and how old the read they relied on was), rows sent singly
        instead because of an empty cell."""
        guard = {key: self.guard_figures[key] for key in ("guard_reads", "guard_lookups")}
        if not self.bulk_threshold:
            return guard
        keys = (
            "bulk_imports",
            "bulk_rows_sent",
            "bulk_rows_confirmed",
            "bulk_lookups",
            "bulk_unsubscribed_kept_out",
            "bulk_guard_reads_saved",  # imports whose read right before was a fresh earlier read
            "bulk_guard_age_ms_max",  # the oldest such read, when its import went out
            "bulk_rows_diverted",  # left out of a file: the list now holds a field they'd empty
            "bulk_refused_with_empty_cells",  # refused in a file with an empty cell: sent singly
        )
        return {**{key: self.bulk_figures[key] for key in keys}, **guard}

    def close(self) -> None:
        self._http.close()

    # --- helpers -------------------------------------------------------------------------------

    def lookup_member(self, field: str, value: str) -> RemoteMember | None:
        """The member whose `field` equals `value` (filter eq, HL 2.3), or None.

        Used before an upsert to respect "do not re-create previously unsubscribed" (HL-A6).
        """
        params = {f"filter[{field}][eq][]": value, "page": 1, "perpage": 1}
        with self.calls.purpose("lookup"):
            body = self._json("GET", self._members_url(), endpoint="members", params=params)
        members = _members_of(body)
        if not members:
            return None
        member = parse_member(members[0])
        self._note_member(member)
        return member

    def _members_page(
        self, changed_since: datetime | None, page: int, perpage: int
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"page": page, "perpage": perpage}
        if changed_since is not None:
            params["filter[updated_at][gte][]"] = as_utc(changed_since).strftime(WIRE_DATETIME)
        body = self._json("GET", self._members_url(), endpoint="members", params=params)
        return _members_of(body)

    def _call(self, method: str, url: str, *, endpoint: str, **kwargs: Any) -> httpx.Response:
        """Every call signed afresh, also on retries (HL-A1)."""
        return self._http.request(method, url, endpoint=endpoint, headers=self._sign, **kwargs)

    def _json(self, method: str, url: str, *, endpoint: str, **kwargs: Any) -> Any:
        """A signed call whose JSON answer is parsed (and validated) inside the retry loop."""
        return self._http.request_json(method, url, endpoint=endpoint, headers=self._sign, **kwargs)

    def _sign(self) -> Mapping[str, str]:
        headers = auth_headers(self._api_key, self._api_secret, self._clock())
        return {**headers, "Accept": "application/json"}

    def _list_url(self) -> str:
        if not self.list_id:
            raise ValueError("heyloyalty list_id is not configured")
        return f"{self._base}/lists/{self.list_id}"

    def _members_url(self) -> str:
        return f"{self._list_url()}/members"

    def _bi_url(self) -> str:
        if self._bi_base is None:
            raise ValueError("heyloyalty bi_base_url is not configured; cannot send events")
        return self._bi_base

    def _check_batch(self, match_field: str, columns: Sequence[str], rows: list[Any]) -> None:
        if match_field not in columns:
            raise ValueError(f"match field {match_field!r} is not among the event columns")
        if len(rows) > self.max_events_per_call:
            raise ValueError(f"{len(rows)} events exceed {self.max_events_per_call} per call")


def events_csv(columns: Sequence[str], rows: list[dict[str, Any]]) -> bytes:
    """The BI CSV: a header line of `columns`, then one line per row, csv-module quoting."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(column)) for column in columns])
    return buffer.getvalue().encode("utf-8")


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return as_utc(value).strftime(WIRE_DATETIME)  # date_format=Y-m-d H:i:s (HL-A10)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _upsert_result(body: Any) -> UpsertResult:
    """HL-A6 `{type: create|update, member_id}`; anything else is an unreadable answer."""
    action = str(body.get("type", "")).lower() if isinstance(body, dict) else ""
    member_id = (body.get("member_id") or body.get("id")) if isinstance(body, dict) else None
    if action not in ("create", "update") or not member_id:
        raise ValueError("upsert answer without type create/update and member_id")
    return UpsertResult(action=action, member_id=str(member_id))  # type: ignore[arg-type]


def _import_answer(body: Any) -> dict[str, Any]:
    """HL-A10 `{status, message, imported, failed}`; anything else is an unreadable answer."""
    if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
        raise ValueError("BI import answer without status success/error")
    if body["status"] == "success":
        imported, failed = body.get("imported"), body.get("failed") or []
        if (imported is not None and not isinstance(imported, int)) or not isinstance(failed, list):
            raise ValueError("BI import answer with unreadable imported/failed")
        if not all(_readable_failure(item) for item in failed):
            # The list stored the file and then said something we can't map to rows: an
            # uncertain outcome (held), never "nothing stored" (which would resend the batch).
            raise ValueError("BI import answer with an unreadable failed[] row")
    return body


def _readable_failure(item: Any) -> bool:
    """A `failed[]` entry names its row as a whole number (HL-A10)."""
    if not isinstance(item, dict):
        return False
    row = item.get("row")
    return (
        isinstance(row, int)
        and not isinstance(row, bool)
        or (isinstance(row, str) and row.strip().isdigit())
    )


def _failed_row(item: Any) -> tuple[int, str]:
    """HL-A10 `failed: [{"row": i, "error": "..."}]`, `row` counting data rows from 1 as CSV
    row numbers are read by people (assumption kept here); returned as the 0-based batch index."""
    row = int(str(item["row"]).strip()) - 1  # checked by _readable_failure inside the retry
    return row, str(item.get("error") or item.get("message") or "")


def _members_of(body: Any) -> list[dict[str, Any]]:
    """HL-A4: `{"members": [...]}`; tolerate a bare array."""
    members = body.get("members") if isinstance(body, dict) else body
    return [m for m in members or [] if isinstance(m, dict)]


def _list_field(key: str | None, entry: dict[str, Any]) -> ListField:
    """One entry of `fields` in GET /lists/{id}; the dict key is the name when `name` is absent."""
    options = entry.get("options") or {}
    if isinstance(options, list):  # [{id, label}] as some clients send them
        options = {o.get("id"): o.get("label") for o in options if isinstance(o, dict)}
    return ListField(
        name=str(entry.get("name") or key or ""),
        format=str(entry.get("format") or "text"),
        options={str(k): str(v) for k, v in options.items()},
    )


def parse_member(raw: dict[str, Any]) -> RemoteMember:
    """Either member shape of HL-A3: NP-BC `fields.<name>.value` or flat HL-mind (`data[...]`)."""
    fields = _member_fields(raw)
    status = raw.get("status")
    status = status if isinstance(status, dict) else {"status": status}
    return RemoteMember(
        member_id=str(raw.get("id") or ""),
        email=_text(fields.get("email")),
        mobile=_text(fields.get("mobile")),
        status=str(status.get("status") or "active"),
        email_status=_text(status.get("email")),
        unsubscribed_at=parse_wire_datetime(raw.get("unsubscribed_at")),
        updated_at=parse_wire_datetime(raw.get("updated_at")),
        fields=fields,
    )


def _member_fields(raw: dict[str, Any]) -> dict[str, Any]:
    nested = raw.get("fields")
    if isinstance(nested, dict):
        return {
            name: (value.get("value") if isinstance(value, dict) else value)
            for name, value in nested.items()
        }
    data = raw.get("data")
    if isinstance(data, dict):
        return dict(data)
    return {key: value for key, value in raw.items() if key not in _FLAT_META}


def _empty(value: Any) -> bool:
    """A listed field value that holds nothing: none, blank, or an empty date (HL-A3)."""
    return value is None or (isinstance(value, str) and value.strip() in _EMPTY_DATES)


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def parse_wire_datetime(value: Any) -> datetime | None:
    """HL-A3 datetimes: `YYYY-MM-DD HH:MM:SS` UTC (or ISO); `0000-00-00` means empty."""
    if value is None or str(value).strip() in _EMPTY_DATES:
        return None
    try:
        return as_utc(datetime.fromisoformat(str(value).strip()))
    except ValueError:
        return None


# --- integration file section and Dagster resource ---------------------------------------------

StrId = Annotated[str, BeforeValidator(str_id), Field(min_length=1)]


class HeyloyaltyResource(dg.ConfigurableResource):
    """Heyloyalty settings with secrets as `dg.EnvVar`, resolved only when a client is built."""

    account: str
    base_url: str
    bi_base_url: str | None = None
    api_key: str
    api_secret: str
    list_id: str
    tracking_id: str | None = None
    events_per_batch: int = 1_000
    bulk_threshold: int = BULK_THRESHOLD
    requests_per_second: float | None = REQUESTS_PER_SECOND

    def client(self) -> HeyloyaltyClient:
        return HeyloyaltyClient(
            base_url=self.base_url,
            bi_base_url=self.bi_base_url,
            list_id=self.list_id,
            tracking_id=self.tracking_id,
            events_per_batch=self.events_per_batch,
            bulk_threshold=self.bulk_threshold,
            requests_per_second=self.requests_per_second,
            api_key=resolve_secret(self.api_key, "heyloyalty api_key") or "",
            api_secret=resolve_secret(self.api_secret, "heyloyalty api_secret") or "",
        )


class HeyloyaltyTarget(TargetSectionBase):
    """`target:` section with `kind: heyloyalty`; credentials are env var names (HL-A1)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["heyloyalty"]
    account: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    base_url: HttpUrlStr
    bi_base_url: HttpUrlStr | None = None
    api_key_env: EnvVarName
    api_secret_env: EnvVarName
    list_id: StrId
    tracking_id: StrId | None = None
    # Rows per BI import: the most a lost answer can leave uncertain (HL-A10 allows 50,000).
    events_per_batch: int = Field(1_000, ge=1, le=HeyloyaltyClient.max_events_per_call)
    # A batch with at least this many creates + updates goes as one CSV import (HL-A11); 0 never.
    bulk_threshold: int = Field(BULK_THRESHOLD, ge=0)
    # client-side pacing per API key (HL-A12: 20 requests/s assumed); 0 or null: off
    requests_per_second: float | None = Field(default=REQUESTS_PER_SECOND, ge=0)

    @model_validator(mode="after")
    def _tracking_needs_bi(self) -> HeyloyaltyTarget:
        if self.tracking_id is not None and self.bi_base_url is None:
            raise ValueError("tracking_id needs bi_base_url: tracking events go to the BI API")
        return self

    @property
    def destination(self) -> str:
        return self.list_id

    def env_vars(self) -> list[str]:
        return [self.api_key_env, self.api_secret_env]

    def resource(self) -> HeyloyaltyResource:
        return HeyloyaltyResource(
            account=self.account,
            base_url=self.base_url,
            bi_base_url=self.bi_base_url,
            api_key=dg.EnvVar(self.api_key_env),
            api_secret=dg.EnvVar(self.api_secret_env),
            list_id=self.list_id,
            tracking_id=self.tracking_id,
            events_per_batch=self.events_per_batch,
            bulk_threshold=self.bulk_threshold,
            requests_per_second=self.requests_per_second,
        )
