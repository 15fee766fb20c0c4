"""Amilia (SmartRec) API v3 source client: persons, registrations and memberships of one org.

Amilia trades user credentials (or an API key/secret pair) for a JWT (AM-A1/A2) that every org
call carries as `Bearer`; the token lives a year, so it is fetched once and replaced once after
a 401. Every list is `{Items, Paging: {TotalCount, Next}}`, read while `Next` is non-empty
(AM-A4); a `Next` is only ever followed on the configured host and scheme.

- `persons` have no modified filter: they are read whole every `full_scan_minutes` (deletions
  are found by the pipeline's tombstones), and re-read by id when a webhook names one. Children
  are never handed out (AC2): their registrations reach the account owner instead.
- `registrations` are events filtered on `DateCreated` (AM-A5): backfills read calendar months
  (AC1), incremental reads start an hour before the newest one landed (late commits).
- `memberships` are read whole too (the active purchases now, AM-A8): a membership webhook only
  asks for a new scan, since its Delete carries an id no read resolves (AM-A10).

Webhooks are subscribed through the org's `/webhooks` API (AM-A12); the capability that
verifies and parses deliveries is `resources.amilia_webhook`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import dagster as dg
import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from resources.amilia_webhook import AmiliaWebhook
from resources.auth import CachedToken, basic, bearer, share_key
from resources.base import CallCounter, EntitySpec, RecordMeta, SourceClient, VendorError
from resources.http import (
    EnvVarName,
    HttpUrlStr,
    VendorHttp,
    redact_query_secrets,
    resolve_secret,
)
from resources.pacing import requests_per_second_pace
from resources.record_fields import record_datetime, record_id
from resources.registry import SourceSectionBase

DEFAULT_BASE_URL = "https://app.amilia.com"
ORIGIN = "memberflow"  # AM-A3: X-Amilia-Origin
RECHECK_DAYS = 90  # registrations read again at every full scan interval (AC5 without webhooks)
PAGE_SIZE = 1000  # AM-A4
# AM-A14 (assumed, Amilia publishes none): 10 requests/s per token. A token belongs to one user
# (or key) of one organisation, so the client paces per credential: a fresh token keeps the count.
REQUESTS_PER_SECOND = 10.0
MAX_PAGE_SIZE = 2000
TOKEN_LIFETIME = 365 * 86400.0  # AM-A1
RECORDS_PER_PAGE = 100  # fetch_records yields re-read records in pages of this many
ACCOUNT_PREFIX = "account:"  # a persons id meaning "every person of this account" (AC3/AC4)
# AM-A14: ASP.NET's 404 for a URL no route matches (a wrong base URL, org or language): an
# error, never a record gone.
NO_ROUTE = "No HTTP resource was found that matches the request URI."
LATE_COMMIT = timedelta(hours=1)  # incremental registration reads look back this far (see below)
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


@dataclass
class PageWalk:
    """What one `_pages` read found: `complete` once its last page said there was no next."""

    complete: bool = False


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
        recheck_days: int = RECHECK_DAYS,
        page_size: int = PAGE_SIZE,
        timeout: float | None = None,
        max_tries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        today: Callable[[], date] = date.today,
        requests_per_second: float | None = REQUESTS_PER_SECOND,  # 0 or None: no pacing
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
        self._recheck = timedelta(days=max(0, recheck_days))
        self._rechecked_at: datetime | None = None  # set by a read that re-read recent ones
        self._page_size = max(1, min(page_size, MAX_PAGE_SIZE))
        self._today = today
        self.calls = CallCounter()
        # In API-key mode (AM-A2) the "username" is the key itself: masked like the password.
        secrets = [username, password] + ([webhook_token] if webhook_token else [])
        self._http = VendorHttp(
            vendor=self.vendor,
            timeout=timeout,
            max_tries=max_tries,
            transport=transport,
            sleep=sleep,
            calls=self.calls,
            secrets=secrets,
            pace=requests_per_second_pace(
                self.vendor, f"{self._org_base}\0{username}", requests_per_second
            ),
        )
        # kept for the process per credential: the next client (sensor tick) reuses it (AM-A1)
        self._token = CachedToken(
            self._authenticate,
            margin=0.0,
            share_key=share_key("amilia", self._host_url, username, password),
        )
        self._lock = threading.Lock()
        self._complete: dict[str, bool] = {}  # entity -> did its last scan read every page?

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
        created, rechecked = _split_cursor(cursor)
        if created is not None and self._recheck_due(rechecked):
            # Unregistrations change no creation date: every full_scan_minutes the last
            # `recheck_days` are read again, so a cancellation is seen without webhooks (AC5).
            self._rechecked_at = datetime.now(UTC)
            return self._registrations_since(min(created, self._rechecked_at - self._recheck))
        return self._registrations_since(created)

    def cursor_after(
        self,
        entity: str,
        previous: str | None,
        high_water: datetime | None,
        started_at: datetime,
    ) -> str | None:
        """Registrations: `<newest DateCreated>|<when recent ones were last read again>`;
        persons and memberships: the whole read's start."""
        if self._entity(entity) is not REGISTRATIONS:
            return super().cursor_after(entity, previous, high_water, started_at)
        created, rechecked = _split_cursor(previous)
        newest = max((m for m in (created, high_water) if m is not None), default=None)
        if newest is None:
            return previous
        again = self._rechecked_at or rechecked
        return newest.isoformat() + (f"|{again.isoformat()}" if again else "")

    def _recheck_due(self, rechecked: datetime | None) -> bool:
        if not self._recheck:
            return False
        return rechecked is None or datetime.now(UTC) - rechecked >= self._scan_every * 0.9

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
        since, rechecked = _split_cursor(cursor)
        if since is None:
            return True
        if self._entity(entity) is not REGISTRATIONS:
            return datetime.now(UTC) - since >= self._scan_every * 0.9
        if self._recheck_due(rechecked):
            return True  # recent registrations are due to be read again (unregistrations)
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
        """Did the last whole read of `entity` read every list it walked to its last page?"""
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
        "Person/Create", and one "Membership/Create: not supported (<message>)" line per pair
        the server refused with a 4xx (a context it does not know), the others still added.

        A Disabled subscription to our url (AM-A13) is deleted and added again: that is how a
        user turns deliveries back on once the receiver is fixed. One of ours (by exact name)
        to another url is deleted: the receiver moved, and the old one would get (or fail,
        and be disabled for) every change twice. Context, Action and Status are compared
        case-insensitively and urls with their scheme and host lower-cased."""
        target = self._hook_url(url)
        ours = self._hook_names()
        present: set[tuple[str, str]] = set()
        for hook in self._subscriptions():
            if _normal_url(str(hook.get("Url", ""))) != _normal_url(target):
                if hook.get("Name") in ours:
                    self._call("DELETE", f"webhooks/{hook['Id']}", "webhooks/{id}")
                continue
            if _lower(hook.get("Status")) == "disabled":
                self._call("DELETE", f"webhooks/{hook['Id']}", "webhooks/{id}")
            else:
                present.add((_lower(hook.get("Context")), _lower(hook.get("Action"))))
        return [
            self._subscribe(context, action, target)
            for context, action in HOOKS
            if (context.lower(), action.lower()) not in present
        ]

    def _subscribe(self, context: str, action: str, target: str) -> str:
        """One POST /webhooks; a 4xx refusal (other than auth or throttling) is reported, not
        raised, so one context the server lacks does not stop the others."""
        body = {
            "Context": context,
            "Action": action,
            "Name": _hook_name(self.integration, context, action),
            "Version": "V1",
            "Url": target,
        }
        try:
            # Not idempotent (a second POST is a second subscription): never retried blindly.
            self._call("POST", "webhooks", "webhooks", json=body)
        except VendorError as exc:
            if 400 <= exc.status < 500 and exc.status not in (401, 403, 429):
                return f"{context}/{action}: not supported ({_message(exc)})"
            raise
        return f"{context}/{action}"

    def webhook_problems(self) -> list[str]:
        """One line per subscription of this integration that Amilia disabled (AM-A13)."""
        ours = self._hook_names()
        lines = []
        for hook in self._subscriptions():
            if hook.get("Name") not in ours or _lower(hook.get("Status")) != "disabled":
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

    def _hook_names(self) -> set[str]:
        """Exactly our subscription names: another integration's `memberflow-<name>-…` (one
        whose name starts with ours) is never taken for ours."""
        return {_hook_name(self.integration, c, a) for c, a in HOOKS}

    def close(self) -> None:
        self._http.close()

    # --- persons -------------------------------------------------------------------------------

    def _person_pages(self) -> Iterator[list[Row]]:
        """Every person, archived ones too (AM-A6); children left out (AC2)."""
        self._complete["persons"] = False
        walk = PageWalk()
        params = {"showArchived": "true", "showSkills": "true"}
        for page in self._pages("persons", "persons", params, walk):
            adults = [person_row(p) for p in page if p.get("IsChild") is not True]
            if adults:
                yield adults
        self._complete["persons"] = walk.complete

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
            if _gone(exc):  # AM-A6: a deleted person
                return self.tombstone("persons", person_id)
            raise
        if not isinstance(body, dict):
            raise VendorError(self.vendor, 200, f"persons/{{id}} on {self._host}: not an object")
        return None if body.get("IsChild") is True else person_row(body)

    def _account_persons(self, account_id: str) -> list[Row]:
        """The owner and every member of an account, each read again (AC3/AC4). The account is
        asked for with showArchived=true: an Account/Delete is an archive, and an archived
        account hidden by default would leave its persons unread."""
        if not account_id.isdigit():
            raise ValueError(f"amilia account id {account_id!r} is not a number")
        try:
            account = self._get(
                f"accounts/{account_id}", "accounts/{id}", params={"showArchived": "true"}
            )
        except VendorError as exc:
            if _gone(exc):
                return []  # no account, no persons to name: the next full scan settles them
            raise
        if not isinstance(account, dict):
            raise VendorError(self.vendor, 200, f"accounts/{{id}} on {self._host}: not an object")
        people = [*(account.get("Owners") or []), *(account.get("Members") or [])]
        ids = dict.fromkeys(str(p["Id"]) for p in people if isinstance(p, dict) and p.get("Id"))
        found = (self._person(pid) for pid in ids)
        return [person for person in found if person is not None]

    # --- registrations -------------------------------------------------------------------------

    def _registration_months(self, start: date, end: date) -> Iterator[list[Row]]:
        """Each month asked a day wider on both sides (`from` = first - 1, `to` = last + 1: the
        day the server filters on, UTC or the org's, is unknown), then cut back to the org's own
        calendar days of the month, so each registration comes once. One whose DateCreated is
        unreadable is kept (once): record_meta quarantines it."""
        seen: set[str] = set()
        for first, last in month_windows(start, end):
            params = {
                "from": (first - timedelta(days=1)).isoformat(),
                "to": (last + timedelta(days=1)).isoformat(),
                "showEnded": "true",
            }
            for page in self._pages("registrations", "registrations", params):
                kept = [
                    with_owner_id(r)
                    for r in page
                    if _in_days(_local_day(r, "DateCreated"), first, last) and _first_time(seen, r)
                ]
                if kept:
                    yield kept

    def _registrations_since(self, since: datetime | None) -> Iterator[list[Row]]:
        """From the day before the cursor's UTC date (so the org's own calendar day of the
        cursor is covered whatever its offset), keeping what was created at or after an hour
        before it: a registration committed late (DateCreated older than one already read) is
        still caught, and landing dedupes what is read twice by its version. A cursor far back
        (the first sync reads from the history start) is read month by month like a backfill
        (AC1), each window's `to` a day wider (the server's date basis is unknown) and the
        last one open-ended, so nothing created since is missed. A RegistrationId met twice
        (windows overlap) is handed out once."""
        if since is None:
            windows: list[dict[str, str]] = [{}]
        else:
            start = date.fromisoformat(_from_day(since - LATE_COMMIT))
            months = month_windows(start, max(start, datetime.now(UTC).date()))
            windows = [
                {"from": a.isoformat(), "to": (b + timedelta(days=1)).isoformat()}
                for a, b in months
            ]
            windows[-1].pop("to")
        floor = None if since is None else since - LATE_COMMIT
        seen: set[str] = set()
        for window in windows:
            params = {**window, "showEnded": "true"}
            for page in self._pages("registrations", "registrations", params):
                kept = [
                    with_owner_id(r)
                    for r in page
                    if (floor is None or _created(r) >= floor) and _first_time(seen, r)
                ]
                if kept:
                    yield kept

    def _registration_by_id(self, registration_id: str) -> list[Row]:
        path = f"registrations/{registration_id}"
        try:
            body = self._get(path, "registrations/{id}")
        except VendorError as exc:
            if _gone(exc):
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
        only when every list was read to its end. A membership without an Id is skipped (there
        is no list of its accounts to read). A purchase whose PurchasedDate is unreadable is
        kept in any range: record_meta quarantines it."""
        self._complete["memberships"] = False
        walks = [PageWalk()]
        purchases: dict[str, Row] = {}
        memberships = [
            m for page in self._pages("memberships", "memberships", {}, walks[0]) for m in page
        ]
        for membership in memberships:
            mid = membership.get("Id")
            if mid is None or str(mid).strip() == "":
                continue
            walks.append(PageWalk())
            pages = self._pages(
                f"memberships/{mid}/accounts",
                "memberships/{id}/accounts",
                {"status": "Active"},
                walks[-1],
            )
            for page in pages:
                for account in page:
                    for row in account_purchases(account, mid, self._today()):
                        known = purchases.get(row["Key"])
                        if known is None or _purchase_order(row) > _purchase_order(known):
                            purchases[row["Key"]] = row
        rows = [
            r
            for r in purchases.values()
            if start is None or end is None or _in_days(_local_day(r, "PurchasedDate"), start, end)
        ]
        for i in range(0, len(rows), self._page_size):
            yield rows[i : i + self._page_size]
        self._complete["memberships"] = all(walk.complete for walk in walks)

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
        url = path if "://" in path else f"{self._org_base}/{path}"
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
        self, path: str, endpoint: str, params: dict[str, Any], walk: PageWalk | None = None
    ) -> Iterator[list[Row]]:
        """AM-A4: perPage=page_size, then each `Paging.Next` while it is non-empty.

        `walk.complete` is set once the last page had an empty Next (and, when TotalCount is a
        number, at least that many items came): a missing, null or unreadable TotalCount never
        ends the read early nor makes it complete. TotalCount only guards against a server that
        links on forever: the read stops, incomplete, after ceil(total / page size) + 1 pages,
        on a Next seen before, or on an empty page that still links on."""
        walk = walk if walk is not None else PageWalk()
        walk.complete = False
        url = f"{self._org_base}/{path}"
        body = self._get(
            url, endpoint, params={**params, "perPage": self._page_size}, validate=_list_envelope
        )
        seen, pages, per_page = 0, 1, 0
        followed: set[str] = set()
        while True:
            items, total = _items(body), _total(body)
            seen += len(items)
            per_page = per_page or len(items)  # the server's own page size, should it cap ours
            if items:
                yield items
            link = str(body["Paging"].get("Next") or "").strip()
            if not link:
                walk.complete = total is None or seen >= total
                return
            if not items or _too_many(pages, total, per_page or self._page_size):
                return
            url = self._next_url(link, url)
            if url in followed:
                return
            followed.add(url)
            pages += 1
            body = self._get(url, endpoint, validate=_list_envelope)

    def _next_url(self, link: str, current: str) -> str:
        """A `Next` link resolved against the page it came on, kept on our own host and scheme:
        the Bearer token goes with it. One on our host but another scheme (http from behind a
        TLS proxy) is rebuilt on ours; one to another host is refused."""
        parts = urlsplit(urljoin(current, link))
        ours = urlsplit(self._host_url)
        if not _same_host(parts, ours):
            shown = parts.hostname or "?"
            raise VendorError(
                self.vendor,
                0,
                f"a page link on {self._host} leads to another host ({shown}); not followed, "
                "so the token never leaves the configured host",
            )
        return urlunsplit(parts._replace(scheme=ours.scheme, netloc=ours.netloc, fragment=""))

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


def person_row(person: Row) -> Row:
    """A person as handed out: `SkillNames`, plus `DateOfBirthLocal` and `JoinDateLocal`, the
    date part as written (AM-A15: a date, or an ISO datetime whose UTC date may be another)."""
    return {
        **with_skill_names(person),
        "DateOfBirthLocal": _date_part(person.get("DateOfBirth")),
        "JoinDateLocal": _date_part(person.get("JoinDate")),
    }


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
    keyed `<AccountId>-<MembershipId>-<PersonId>`; `Ended` when not Active or expired; the
    dates' own calendar days as `PurchasedDateLocal`, `EffectiveDateLocal` and
    `ExpirationDateLocal`. Ids are compared as text (one side may be a number, the other not)."""
    owners = account.get("Owners") or []
    owner_id = owners[0].get("Id") if owners and isinstance(owners[0], dict) else None
    rows = []
    for entry in account.get("AccountMemberships") or []:
        if not isinstance(entry, dict) or str(entry.get("MembershipId")) != str(membership_id):
            continue
        row = {
            **entry,
            "AccountId": account.get("Id"),
            "AccountOwnerId": owner_id,
            "Key": f"{account.get('Id')}-{entry.get('MembershipId')}-{entry.get('PersonId')}",
            "PurchasedDateLocal": _date_part(entry.get("PurchasedDate")),
            "EffectiveDateLocal": _date_part(entry.get("EffectiveDate")),
            "ExpirationDateLocal": _date_part(entry.get("ExpirationDate")),
        }
        row["Ended"] = _ended(entry, today)
        rows.append(row)
    return rows


def _ended(entry: Row, today: date) -> bool:
    """Ended when a Status is given and is not Active (any case), or the purchase expired; a
    missing Status says nothing (the list asked for Active ones)."""
    status = _lower(entry.get("Status"))
    if status and status != "active":
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


def _local_day(record: Row, field: str) -> date | None:
    """The calendar day of `field` as written; None when it is not a readable date."""
    day = _date_part(record.get(field))
    return None if day is None else date.fromisoformat(day)


def _in_days(day: date | None, first: date, last: date) -> bool:
    """In [first, last], or unreadable (kept: record_meta quarantines it, nothing is lost)."""
    return day is None or first <= day <= last


def _first_time(seen: set[str], record: Row) -> bool:
    """False for a RegistrationId already handed out by this read (windows overlap)."""
    rid = record.get("RegistrationId")
    if rid is None:
        return True
    key = str(rid)
    if key in seen:
        return False
    seen.add(key)
    return True


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


def _split_cursor(cursor: str | datetime | None) -> tuple[datetime | None, datetime | None]:
    """A registrations cursor is `<created>|<rechecked>`; a plain datetime is `<created>`."""
    if isinstance(cursor, str) and "|" in cursor:
        created, rechecked = cursor.split("|", 1)
        return _cursor_time(created), _cursor_time(rechecked)
    return _cursor_time(cursor), None


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


def _total(body: Any) -> int | None:
    """Paging.TotalCount as a number; None when missing, null or not a number."""
    value = body["Paging"].get("TotalCount")
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _too_many(pages: int, total: int | None, per_page: int) -> bool:
    """A guard only: `pages` read already fill TotalCount with one to spare, so another would
    be past ceil(total / per_page) + 1."""
    return total is not None and pages >= math.ceil(total / max(1, per_page)) + 1


def _same_host(link: Any, ours: Any) -> bool:
    """Same host name, and the same port unless the link's is its scheme's default (an http
    link from behind a TLS proxy names no port, or 80)."""
    if (link.hostname or "").lower() != (ours.hostname or "").lower() or not link.hostname:
        return False
    defaults = {"http": 80, "https": 443}
    port = link.port
    return port is None or port == ours.port or port == defaults.get(link.scheme.lower())


def _gone(exc: VendorError) -> bool:
    """A 404 for the record (AM-A6), not ASP.NET's no-route 404 (a wrong URL: an error)."""
    return exc.status == 404 and _message(exc).strip() != NO_ROUTE


def _lower(value: Any) -> str:
    return str(value).strip().lower() if value is not None else ""


def _normal_url(url: str) -> str:
    """A url with its scheme and host lower-cased, to compare with another."""
    parts = urlsplit(url.strip())
    return urlunsplit(parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower()))


def _hook_name(integration: str, context: str, action: str) -> str:
    return f"memberflow-{integration}-{context}-{action}"


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
    recheck_days: int = RECHECK_DAYS
    page_size: int = PAGE_SIZE
    requests_per_second: float | None = REQUESTS_PER_SECOND

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
            recheck_days=self.recheck_days,
            page_size=self.page_size,
            requests_per_second=self.requests_per_second,
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
    # registrations created in the last N days are read again every full_scan_minutes, so an
    # unregistration (which changes no creation date) is seen without webhooks; 0: never
    recheck_days: int = Field(default=RECHECK_DAYS, ge=0, le=3660)
    page_size: int = Field(default=PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    # client-side pacing per credential (AM-A14: 10 requests/s assumed); 0 or null: off
    requests_per_second: float | None = Field(default=REQUESTS_PER_SECOND, ge=0)

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
            recheck_days=self.recheck_days,
            page_size=self.page_size,
            requests_per_second=self.requests_per_second,
        )

    def webhook(self) -> AmiliaWebhook | None:
        """The webhook capability when webhooks are on (secret read from its env var)."""
        if not self.webhooks.enabled:
            return None
        return AmiliaWebhook.from_env(
            secret_env=self.webhooks.secret_env, token_env=self.webhooks.token_env
        )
