"""Amilia (SmartRec) API v3 source client: persons, registrations and memberships of one org.

Amilia trades user credentials (or an API key/secret pair) for a JWT (AM-A1/A2) that every org
call carries as `Bearer`; the token lives a year, so it is fetched once and replaced once after
a 401. Every list is `{Items, Paging: {TotalCount, Next}}` with `Next` a full URL (AM-A4).

- `persons` have no modified filter: they are read whole every `full_scan_minutes` (deletions
  are found by the pipeline's tombstones), and re-read by id when a webhook names one. Children
  are never handed out (AC2): their registrations reach the account owner instead.
- `registrations` are events filtered on `DateCreated` (AM-A5): backfills read calendar months
  (AC1), incremental reads start at the newest one landed.
- `memberships` are read whole too (the active purchases now, AM-A8): a membership webhook only
  asks for a new scan, since its Delete carries an id no read resolves (AM-A10).

Webhooks are subscribed through the org's `/webhooks` API (AM-A12); the capability that
verifies and parses deliveries is `resources.amilia_webhook`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import dagster as dg
import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from resources.amilia_webhook import AmiliaWebhook
from resources.auth import CachedToken, basic, bearer
from resources.base import CallCounter, EntitySpec, RecordMeta, SourceClient, VendorError
from resources.http import (
    EnvVarName,
    HttpUrlStr,
    VendorHttp,
    redact_query_secrets,
    resolve_secret,
)
from resources.record_fields import record_datetime, record_id
from resources.registry import SourceSectionBase

DEFAULT_BASE_URL = "https://app.amilia.com"
ORIGIN = "memberflow"  # AM-A3: X-Amilia-Origin
PAGE_SIZE = 1000  # AM-A4
MAX_PAGE_SIZE = 2000
TOKEN_LIFETIME = 365 * 86400.0  # AM-A1
RECORDS_PER_PAGE = 100  # fetch_records yields re-read records in pages of this many
ACCOUNT_PREFIX = "account:"  # a persons id meaning "every person of this account" (AC3/AC4)
# AM-A9: the (Context, Action) pairs memberflow subscribes to.
HOOKS = (
    ("Person", "Create"),
    ("Person", "Delete"),
    ("Account", "Delete"),
    ("Registration", "Create"),
    ("Registration", "Update"),
    ("Registration", "Delete"),
    ("Membership", "Create"),
    ("Membership", "Update"),
    ("Membership", "Delete"),
)

PERSONS = EntitySpec(
    "persons", "members", "Amilia persons (adults; children reach their owner)", "Id", True
)
REGISTRATIONS = EntitySpec(
    "registrations", "events", "Amilia registrations to activities (AM-A5)", "RegistrationId"
)
MEMBERSHIPS = EntitySpec(
    "memberships", "events", "Amilia membership purchases, active now (AM-A8)", "Key", True
)
ENTITIES = (PERSONS, REGISTRATIONS, MEMBERSHIPS)

Row = dict[str, Any]


class AmiliaClient(SourceClient):
    """Reads one Amilia org's persons, registrations and memberships over the v3 API."""

    vendor: ClassVar[str] = "amilia"
    default_date_format: ClassVar[str] = "%Y-%m-%d"  # AM-A15: DateOfBirth and membership dates

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        org: str,
        username: str,
        password: str,
        language: str = "en",
        integration: str = "default",
        webhook_token: str | None = None,
        full_scan_minutes: int = 60,
        page_size: int = PAGE_SIZE,
        timeout: float | None = None,
        max_tries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        today: Callable[[], date] = date.today,
    ) -> None:
        if not username or not password:
            raise ValueError("amilia needs a username and password (or an API key and secret)")
        self._host_url = base_url.rstrip("/")
        self._host = urlsplit(self._host_url).netloc or self._host_url
        self._org_base = f"{self._host_url}/api/v3/{language}/org/{org}"
        self._credentials = (username, password)
        self.integration = integration
        self._webhook_token = webhook_token or None
        self._scan_every = timedelta(minutes=max(1, full_scan_minutes))
        self._page_size = max(1, min(page_size, MAX_PAGE_SIZE))
        self._today = today
        self.calls = CallCounter()
        secrets = [password] + ([webhook_token] if webhook_token else [])
        self._http = VendorHttp(
            vendor=self.vendor,
            timeout=timeout,
            max_tries=max_tries,
            transport=transport,
            sleep=sleep,
            calls=self.calls,
            secrets=secrets,
        )
        self._token = CachedToken(self._authenticate, margin=0.0)
        self._lock = threading.Lock()
        self._complete: dict[str, bool] = {}  # entity -> did its last scan read every page?
        self._last_whole = False  # did the last `_pages` walk reach its TotalCount?

    # --- SourceClient --------------------------------------------------------------------------

    def entities(self) -> Sequence[EntitySpec]:
        return ENTITIES

    def check_connection(self) -> None:
        """AM-A1 then one org read of a single person: credentials, host and org are right."""
        self._get("persons", "persons", params={"perPage": 1})

    def record_meta(self, entity: str, record: Row) -> RecordMeta:
        """Persons: id `Id`, JoinDate standing in for a modified time (none exists; staging
        breaks ties by fetch time). Registrations: DateCreated, on its local calendar date.
        Memberships: PurchasedDate, on its local calendar date (AM-A15)."""
        spec = self._entity(entity)
        if spec is PERSONS:
            try:
                modified = record_datetime(record, "JoinDate", parse_moment)
            except ValueError:
                modified = datetime.now(UTC)
            return RecordMeta(record_id(record, "Id"), modified, None)
        field = "DateCreated" if spec is REGISTRATIONS else "PurchasedDate"
        moment = record_datetime(record, field, parse_moment)
        day = record_datetime(record, field, _local_midnight).date()
        return RecordMeta(record_id(record, spec.id_field or ""), moment, day)

    def iter_changed(self, entity: str, cursor: str | datetime | None) -> Iterator[list[Row]]:
        """Persons and memberships: everything, whatever the cursor (read whole).
        Registrations: those created at or after the cursor (the newest DateCreated landed)."""
        spec = self._entity(entity)
        if spec is PERSONS:
            return self._person_pages()
        if spec is MEMBERSHIPS:
            return self._membership_pages(None, None)
        since = _cursor_time(cursor)
        return self._registrations_since(since)

    def iter_range(self, entity: str, start: date, end: date) -> Iterator[list[Row]]:
        """Registrations in calendar-month windows (AC1: a 24-month first sync is 24-25 calls
        at least, never one huge read); memberships read whole, purchases in [start, end] kept."""
        if end < start:
            raise ValueError(f"range end {end} is before its start {start}")
        spec = self._entity(entity)
        if spec is PERSONS:
            raise ValueError("amilia persons have no business date; use iter_changed")
        if spec is MEMBERSHIPS:
            return self._membership_pages(start, end)
        return self._registration_months(start, end)

    def has_changes(self, entity: str, cursor: str | datetime | None) -> bool:
        """Persons and memberships: no call; a scan is due once the last one (the cursor is its
        start) is older than `full_scan_minutes` (10% early, so a sensor tick a little ahead of
        time still scans). Registrations: one call for any created after the cursor."""
        since = _cursor_time(cursor)
        if since is None:
            return True
        if self._entity(entity) is not REGISTRATIONS:
            return datetime.now(UTC) - since >= self._scan_every * 0.9
        body = self._get(
            "registrations",
            "registrations",
            params={"from": _from_day(since), "showEnded": "true", "perPage": self._page_size},
            validate=_list_envelope,
        )
        items = _items(body)
        if any(_created(item) > since for item in items):
            return True
        return bool(body["Paging"].get("Next"))  # more than a page to look at: read it

    def scan_complete(self, entity: str) -> bool:
        """Did the last whole read of `entity` reach TotalCount on every list it walked?"""
        return self._complete.get(entity, False)

    def fetch_records(self, entity: str, ids: Iterable[str]) -> Iterator[list[Row]]:
        """Re-read records named by webhooks; one gone at Amilia (404) comes back a tombstone.

        Persons: `account:<Id>` re-reads the account's owner and every member (an archived
        account's persons come back IsArchived, AC4). Children are skipped here too (AC2)."""
        spec = self._entity(entity)
        if spec is MEMBERSHIPS:
            raise ValueError("amilia memberships are read whole; they cannot be re-read by id")
        read = self._persons_by_id if spec is PERSONS else self._registration_by_id
        page: list[Row] = []
        for record_id_ in dict.fromkeys(str(i) for i in ids):
            for record in read(record_id_):
                page.append(record)
                if len(page) >= RECORDS_PER_PAGE:
                    yield page
                    page = []
        if page:
            yield page

    def ensure_webhooks(self, url: str) -> list[str]:
        """Subscribe AM-A9's pairs to `url` where missing (AM-A12); returns those added, e.g.
        "Person/Create". A Disabled subscription to our url (AM-A13) is deleted and added again:
        that is how a user turns deliveries back on once the receiver is fixed. One of ours (by
        name) to another url is deleted: the receiver moved, and the old one would get (or
        fail, and be disabled for) every change twice."""
        target = self._hook_url(url)
        ours = f"memberflow-{self.integration}-"
        present: set[tuple[str, str]] = set()
        for hook in self._subscriptions():
            if hook.get("Url") != target:
                if str(hook.get("Name", "")).startswith(ours):
                    self._call("DELETE", f"webhooks/{hook['Id']}", "webhooks/{id}")
                continue
            pair = (str(hook.get("Context")), str(hook.get("Action")))
            if hook.get("Status") == "Disabled":
                self._call("DELETE", f"webhooks/{hook['Id']}", "webhooks/{id}")
            else:
                present.add(pair)
        added = []
        for context, action in HOOKS:
            if (context, action) in present:
                continue
            body = {
                "Context": context,
                "Action": action,
                "Name": f"memberflow-{self.integration}-{context}-{action}",
                "Version": "V1",
                "Url": target,
            }
            # Not idempotent (a second POST is a second subscription): never retried blindly.
            self._call("POST", "webhooks", "webhooks", json=body)
            added.append(f"{context}/{action}")
        return added

    def webhook_problems(self) -> list[str]:
        """One line per subscription of this integration that Amilia disabled (AM-A13)."""
        prefix = f"memberflow-{self.integration}-"
        lines = []
        for hook in self._subscriptions():
            if not str(hook.get("Name", "")).startswith(prefix) or hook.get("Status") != "Disabled":
                continue
            url = _shown_url(str(hook.get("Url", "")))
            lines.append(
                f"amilia: the {hook.get('Context')}/{hook.get('Action')} webhook to {url} is "
                "Disabled: Amilia gave up after 72 h of failed deliveries and dropped them; fix "
                f"the receiver, then run `memberflow receiver --register-url "
                f"{_receiver_base(url, self.integration)}` to register it again (the next full "
                "scan catches up what was missed)"
            )
        return lines

    def close(self) -> None:
        self._http.close()

    # --- persons -------------------------------------------------------------------------------

    def _person_pages(self) -> Iterator[list[Row]]:
        """Every person, archived ones too (AM-A6); children left out (AC2)."""
        params = {"showArchived": "true", "showSkills": "true"}
        for page in self._pages("persons", "persons", params, entity="persons"):
            adults = [with_skill_names(p) for p in page if p.get("IsChild") is not True]
            if adults:
                yield adults

    def _persons_by_id(self, record_id_: str) -> list[Row]:
        if record_id_.startswith(ACCOUNT_PREFIX):
            return self._account_persons(record_id_[len(ACCOUNT_PREFIX) :])
        person = self._person(record_id_)
        return [] if person is None else [person]

    def _person(self, person_id: str) -> Row | None:
        """One person by id; a tombstone when gone (404); None for a child (AC2)."""
        if not person_id.isdigit():
            raise ValueError(f"amilia person id {person_id!r} is not a number")
        try:
            body = self._get(f"persons/{person_id}", "persons/{id}", params={"showSkills": "true"})
        except VendorError as exc:
            if exc.status == 404:  # AM-A6: a deleted person
                return self.tombstone("persons", person_id)
            raise
        if not isinstance(body, dict):
            raise VendorError(self.vendor, 200, f"persons/{{id}} on {self._host}: not an object")
        return None if body.get("IsChild") is True else with_skill_names(body)

    def _account_persons(self, account_id: str) -> list[Row]:
        """The owner and every member of an account, each read again (AC3/AC4)."""
        if not account_id.isdigit():
            raise ValueError(f"amilia account id {account_id!r} is not a number")
        try:
            account = self._get(f"accounts/{account_id}", "accounts/{id}")
        except VendorError as exc:
            if exc.status == 404:
                return []  # no account, no persons to name: the next full scan settles them
            raise
        people = [*(account.get("Owners") or []), *(account.get("Members") or [])]
        ids = dict.fromkeys(str(p["Id"]) for p in people if isinstance(p, dict) and p.get("Id"))
        found = (self._person(pid) for pid in ids)
        return [person for person in found if person is not None]

    # --- registrations -------------------------------------------------------------------------

    def _registration_months(self, start: date, end: date) -> Iterator[list[Row]]:
        for first, last in month_windows(start, end):
            params = {"from": first.isoformat(), "to": last.isoformat(), "showEnded": "true"}
            for page in self._pages("registrations", "registrations", params):
                kept = [
                    with_owner_id(r) for r in page if first <= _local_day(r, "DateCreated") <= last
                ]
                if kept:
                    yield kept

    def _registrations_since(self, since: datetime | None) -> Iterator[list[Row]]:
        """From the day before the cursor's UTC date (so the org's own calendar day of the
        cursor is covered whatever its offset), keeping what was created at or after it. A
        cursor far back (the first sync reads from the history start) is read month by month
        like a backfill (AC1); the last window is open-ended, so nothing created since is
        missed."""
        if since is None:
            windows: list[dict[str, str]] = [{}]
        else:
            start = date.fromisoformat(_from_day(since))
            months = month_windows(start, max(start, datetime.now(UTC).date()))
            windows = [{"from": a.isoformat(), "to": b.isoformat()} for a, b in months]
            windows[-1].pop("to")
        for window in windows:
            params = {**window, "showEnded": "true"}
            for page in self._pages("registrations", "registrations", params):
                kept = [with_owner_id(r) for r in page if since is None or _created(r) >= since]
                if kept:
                    yield kept

    def _registration_by_id(self, registration_id: str) -> list[Row]:
        path = f"registrations/{registration_id}"
        try:
            body = self._get(path, "registrations/{id}")
        except VendorError as exc:
            if exc.status == 404:
                return [self.tombstone("registrations", registration_id)]
            raise
        if not isinstance(body, dict):
            raise VendorError(
                self.vendor, 200, f"registrations/{{id}} on {self._host}: not an object"
            )
        return [with_owner_id(body)]

    # --- memberships (AM-A8) -------------------------------------------------------------------

    def _membership_pages(self, start: date | None, end: date | None) -> Iterator[list[Row]]:
        """Every active purchase: each membership's accounts, their purchases of it. Complete
        only when every list was read to its TotalCount."""
        self._complete["memberships"] = False
        whole = True
        purchases: dict[str, Row] = {}
        memberships = [m for page in self._pages("memberships", "memberships", {}) for m in page]
        whole = whole and self._last_whole
        for membership in memberships:
            mid = membership.get("Id")
            pages = self._pages(
                f"memberships/{mid}/accounts", "memberships/{id}/accounts", {"status": "Active"}
            )
            for page in pages:
                for account in page:
                    for row in account_purchases(account, mid, self._today()):
                        known = purchases.get(row["Key"])
                        if known is None or _purchase_order(row) > _purchase_order(known):
                            purchases[row["Key"]] = row
            whole = whole and self._last_whole
        rows = [
            r
            for r in purchases.values()
            if start is None or end is None or start <= _local_day(r, "PurchasedDate") <= end
        ]
        for i in range(0, len(rows), self._page_size):
            yield rows[i : i + self._page_size]
        self._complete["memberships"] = whole

    # --- HTTP ----------------------------------------------------------------------------------

    def _authenticate(self) -> tuple[str, float | None]:
        """AM-A1/A2: GET /api/V3/authenticate with Basic -> {"Token"} (or a bare JSON string)."""
        try:
            body = self._http.get_json(
                f"{self._host_url}/api/V3/authenticate",
                endpoint="authenticate",
                headers={**basic(*self._credentials), "X-Amilia-Origin": ORIGIN},
                validate=_token_of,
            )
        except VendorError as exc:
            if exc.status in (401, 403):
                raise VendorError(
                    self.vendor,
                    exc.status,
                    f"{_message(exc)} (on {self._host}: the username/password or API key/secret "
                    "was refused; check the environment variables they come from)",
                    exc.body,
                ) from None
            raise self._named(exc) from None
        return body, TOKEN_LIFETIME

    def _call(self, method: str, path: str, endpoint: str, **kwargs: Any) -> Any:
        """One org call (or a full `Next` URL) with the Bearer token; one re-auth on a 401."""
        url = path if path.startswith("http") else f"{self._org_base}/{path}"
        for attempt in (1, 2):
            token = self._token.token()
            try:
                return self._http.request_json(
                    method,
                    url,
                    endpoint=endpoint,
                    headers={**bearer(token), "X-Amilia-Origin": ORIGIN},
                    **kwargs,
                )
            except VendorError as exc:
                if exc.status == 401 and attempt == 1:
                    self._token.invalidate(token)  # AM-A1: expired or revoked, fetch anew
                    continue
                raise self._named(exc) from None
        raise AssertionError("unreachable")

    def _get(self, path: str, endpoint: str, **kwargs: Any) -> Any:
        return self._call("GET", path, endpoint, **kwargs)

    def _pages(
        self, path: str, endpoint: str, params: dict[str, Any], entity: str | None = None
    ) -> Iterator[list[Row]]:
        """AM-A4: perPage=page_size, then each full-URL `Paging.Next` while non-empty, stopping
        once TotalCount items are in (a guard against a server that keeps linking on).
        `self._last_whole` (and, with `entity`, its scan_complete) says if it got them all."""
        self._last_whole = False
        if entity is not None:
            self._complete[entity] = False
        body = self._get(
            path, endpoint, params={**params, "perPage": self._page_size}, validate=_list_envelope
        )
        seen = 0
        while True:
            items = _items(body)
            total = _total(body)
            seen += len(items)
            if items:
                yield items
            link = str(body["Paging"].get("Next") or "")
            if not link or not items or seen >= total:
                break
            body = self._get(self._same_host(link), endpoint, validate=_list_envelope)
        self._last_whole = seen >= total
        if entity is not None:
            self._complete[entity] = self._last_whole

    def _same_host(self, link: str) -> str:
        """A `Next` link must stay on the configured host: the Bearer token goes with it."""
        if urlsplit(link).netloc != urlsplit(self._host_url).netloc:
            raise VendorError(
                self.vendor, 200, f"a page link on {self._host} leads to another host"
            )
        return link

    def _subscriptions(self) -> list[Row]:
        return [hook for page in self._pages("webhooks", "webhooks", {}) for hook in page]

    def _hook_url(self, url: str) -> str:
        """AM-A11: without signatures, the shared secret rides in the url as `?token=`."""
        if not self._webhook_token:
            return url
        parts = urlsplit(url)
        query = f"{parts.query}&" if parts.query else ""
        query += urlencode({"token": self._webhook_token})
        return urlunsplit(parts._replace(query=query))

    def _named(self, exc: VendorError) -> VendorError:
        """The vendor's `{Message}` (AM-A14) with the host named."""
        if self._host in exc.message:
            return exc
        return VendorError(self.vendor, exc.status, f"{_message(exc)} (on {self._host})", exc.body)

    def _entity(self, name: str) -> EntitySpec:
        for spec in ENTITIES:
            if spec.name == name:
                return spec
        raise ValueError(f"amilia has no entity {name!r}; known: {[s.name for s in ENTITIES]}")


# --- record helpers ----------------------------------------------------------------------------


def with_skill_names(person: Row) -> Row:
    """`SkillNames`: the Skills' names joined with ", " (AM-A6), text a target field can take."""
    skills = person.get("Skills") or []
    names = [str(s["Name"]) for s in skills if isinstance(s, dict) and s.get("Name")]
    return {**person, "SkillNames": ", ".join(names)}


def with_owner_id(registration: Row) -> Row:
    """`AccountOwnerId` = AccountOwner.Id, a flat key for the mapping's customer list, and
    `DateCreatedLocal`, the org's calendar date of DateCreated as written (AM-A15)."""
    owner = registration.get("AccountOwner")
    out = dict(registration)
    if isinstance(owner, dict) and owner.get("Id") is not None:
        out["AccountOwnerId"] = owner["Id"]
    out["DateCreatedLocal"] = _date_part(registration.get("DateCreated"))
    return out


def account_purchases(account: Row, membership_id: Any, today: date) -> list[Row]:
    """One record per purchase of `membership_id` in an Account's AccountMemberships (AM-A8),
    keyed `<AccountId>-<MembershipId>-<PersonId>`; `Ended` when not Active or expired."""
    owners = account.get("Owners") or []
    owner_id = owners[0].get("Id") if owners and isinstance(owners[0], dict) else None
    rows = []
    for entry in account.get("AccountMemberships") or []:
        if not isinstance(entry, dict) or entry.get("MembershipId") != membership_id:
            continue
        row = {
            **entry,
            "AccountId": account.get("Id"),
            "AccountOwnerId": owner_id,
            "Key": f"{account.get('Id')}-{entry.get('MembershipId')}-{entry.get('PersonId')}",
            "PurchasedDateLocal": _date_part(entry.get("PurchasedDate")),
        }
        row["Ended"] = _ended(entry, today)
        rows.append(row)
    return rows


def _ended(entry: Row, today: date) -> bool:
    if str(entry.get("Status", "")).lower() != "active":
        return True
    expires = _date_part(entry.get("ExpirationDate"))
    return expires is not None and expires < today.isoformat()


def _purchase_order(row: Row) -> tuple[bool, str]:
    """Of two purchases with one Key (a renewal), the live one, then the newest, wins."""
    return (not row["Ended"], str(row.get("PurchasedDate") or ""))


def month_windows(start: date, end: date) -> Iterator[tuple[date, date]]:
    """[start, end] cut at calendar-month ends, both bounds inclusive (AM-A5)."""
    first = start
    while first <= end:
        next_month = (first.replace(day=1) + timedelta(days=32)).replace(day=1)
        last = min(end, next_month - timedelta(days=1))
        yield first, last
        first = last + timedelta(days=1)


def parse_moment(text: str) -> datetime:
    """AM-A15: ISO 8601 with an offset (or a bare date, read as UTC midnight) -> aware UTC."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _local_midnight(text: str) -> datetime:
    """The calendar date as written (before any offset is applied), as a naive datetime."""
    return datetime.fromisoformat(text.strip()[:10])


def _local_day(record: Row, field: str) -> date:
    text = record.get(field)
    return date.fromisoformat(str(text)[:10]) if isinstance(text, str) else date.min


def _date_part(value: Any) -> str | None:
    """`YYYY-MM-DD` of a date or ISO datetime text as written; None when it is not one."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10]).isoformat()
    except ValueError:
        return None


def _created(record: Row) -> datetime:
    try:
        return parse_moment(str(record.get("DateCreated")))
    except ValueError:
        return datetime.max.replace(tzinfo=UTC)  # unreadable: kept, landing quarantines it


def _from_day(since: datetime) -> str:
    """The `from` day covering the org's calendar day of `since` whatever its UTC offset."""
    return (since.astimezone(UTC).date() - timedelta(days=1)).isoformat()


def _cursor_time(cursor: str | datetime | None) -> datetime | None:
    if cursor is None or cursor == "":
        return None
    try:
        moment = cursor if isinstance(cursor, datetime) else datetime.fromisoformat(cursor)
    except ValueError:
        return None  # an unreadable cursor: read everything rather than nothing
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _items(body: Any) -> list[Row]:
    return body["Items"]


def _total(body: Any) -> int:
    try:
        return int(body["Paging"].get("TotalCount") or 0)
    except (TypeError, ValueError):
        return 0


def _list_envelope(body: Any) -> Any:
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("Items"), list)
        or not isinstance(body.get("Paging"), dict)
    ):
        raise ValueError("expected {Items: [...], Paging: {...}}")
    return body


def _token_of(body: Any) -> str:
    """AM-A1: `{"Token": "..."}`, or the token as a bare JSON string."""
    token = body.get("Token") if isinstance(body, dict) else body
    if not isinstance(token, str) or not token.strip():
        raise ValueError("authenticate answered without a token")
    return token.strip()


def _message(exc: VendorError) -> str:
    """AM-A14's `{"Message": ...}` text, else what VendorHttp made of the answer."""
    if isinstance(exc.body, dict) and isinstance(exc.body.get("Message"), str):
        return exc.body["Message"]
    return exc.message


def _shown_url(url: str) -> str:
    """A subscription url fit for a log line: a `?token=` secret masked."""
    return redact_query_secrets(url)


def _receiver_base(url: str, integration: str) -> str:
    path = urlsplit(url)._replace(query="", fragment="")
    tail = f"/webhooks/{integration}"
    if path.path.endswith(tail):
        return urlunsplit(path._replace(path=path.path[: -len(tail)]))
    return "<the receiver's public base URL>"


# --- integration file section and Dagster resource ---------------------------------------------


class AmiliaWebhooks(BaseModel):
    """AM-A11: a signing secret (X-Amilia-Signature) or a shared `?token=` secret, one of them."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    secret_env: EnvVarName | None = None
    token_env: EnvVarName | None = None

    @model_validator(mode="after")
    def _one_secret_when_enabled(self) -> AmiliaWebhooks:
        if self.enabled and bool(self.secret_env) == bool(self.token_env):
            raise ValueError(
                "webhooks.enabled needs exactly one of secret_env (the signing secret) or "
                "token_env (the ?token= shared secret)"
            )
        return self


class AmiliaResource(dg.ConfigurableResource):
    """Amilia settings with credentials as `dg.EnvVar`, resolved only when a client is built."""

    base_url: str
    language: str = "en"
    org: str
    username: str
    password: str
    integration: str = "default"
    webhook_token: str | None = None
    full_scan_minutes: int = 60
    page_size: int = PAGE_SIZE

    def client(self) -> AmiliaClient:
        token = resolve_secret(self.webhook_token, "amilia webhooks.token_env")
        return AmiliaClient(
            base_url=self.base_url,
            org=self.org,
            language=self.language,
            username=resolve_secret(self.username, "amilia username") or "",
            password=resolve_secret(self.password, "amilia password") or "",
            integration=self.integration,
            webhook_token=token,
            full_scan_minutes=self.full_scan_minutes,
            page_size=self.page_size,
        )


class AmiliaSource(SourceSectionBase):
    """`source:` section with `kind: amilia`: user credentials (AM-A1) or an API key/secret pair
    (AM-A2), exactly one, each as the names of environment variables."""

    entities: ClassVar[tuple[EntitySpec, ...]] = ENTITIES

    kind: Literal["amilia"]
    base_url: HttpUrlStr = DEFAULT_BASE_URL
    language: Literal["en", "fr"] = "en"
    org: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    username_env: EnvVarName | None = None
    password_env: EnvVarName | None = None
    api_key_env: EnvVarName | None = None
    api_secret_env: EnvVarName | None = None
    webhooks: AmiliaWebhooks = Field(default_factory=AmiliaWebhooks)
    full_scan_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)
    page_size: int = Field(default=PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)

    @model_validator(mode="before")
    @classmethod
    def _org_as_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("org"), int):
            return {**data, "org": str(data["org"])}
        return data

    @model_validator(mode="after")
    def _one_credential_pair(self) -> AmiliaSource:
        user = (self.username_env, self.password_env)
        key = (self.api_key_env, self.api_secret_env)
        for pair, names in (
            (user, "username_env/password_env"),
            (key, "api_key_env/api_secret_env"),
        ):
            if any(pair) and not all(pair):
                raise ValueError(f"amilia: {names} must be given together")
        if all(user) == all(key):
            raise ValueError(
                "amilia: give exactly one credential pair: username_env + password_env (a user, "
                "AM-A1) or api_key_env + api_secret_env (an API key, AM-A2)"
            )
        return self

    def _pair(self) -> tuple[str, str]:
        if self.username_env and self.password_env:
            return self.username_env, self.password_env
        return self.api_key_env or "", self.api_secret_env or ""

    def env_vars(self) -> list[str]:
        names = list(self._pair())
        if self.webhooks.enabled:
            names += [n for n in (self.webhooks.secret_env, self.webhooks.token_env) if n]
        return names

    def resource(self, integration: str | None = None) -> AmiliaResource:
        user_env, secret_env = self._pair()
        token_env = self.webhooks.token_env if self.webhooks.enabled else None
        return AmiliaResource(
            base_url=self.base_url,
            language=self.language,
            org=self.org,
            username=dg.EnvVar(user_env),
            password=dg.EnvVar(secret_env),
            integration=integration or self._integration,
            webhook_token=dg.EnvVar(token_env) if token_env else None,
            full_scan_minutes=self.full_scan_minutes,
            page_size=self.page_size,
        )

    def webhook(self) -> AmiliaWebhook | None:
        """The webhook capability when webhooks are on (secret read from its env var)."""
        if not self.webhooks.enabled:
            return None
        return AmiliaWebhook.from_env(
            secret_env=self.webhooks.secret_env, token_env=self.webhooks.token_env
        )
