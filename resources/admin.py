"""Syneton Admin IS / Admin Consult source client, two-way: relations and CRM interests read,
Flexmail's feedback written back (resources/admin_write_back.py).

Admin is self-hosted (AD-A1); the token, pacing, paging and error answers are the session's
(resources/admin_session.py), filters and server-local times resources/admin_filter.py's.

- `customers` (members): the first read is the selection, active relations with the newsletter
  box (AD-A5); later reads follow the change log of relations and their custom fields (AD-A6)
  and re-read the changed ids without the selection filter, so a relation that left it comes
  back with `InNewsletterSelection` false and is withdrawn; a deleted one is a tombstone.
  Custom fields of `extradata/{table}` are joined in (AD-A11). The cursor is the highest LogId
  read (`l.LogId gt <n>`, the API file's LogId range), so neither our clock, a wrong zone, a
  DST fall-back nor 1000 changes in one second lose a change; right after a full read, and for
  a cursor of the older text format, it is a server-local moment read with an overlap
  (resources/admin_filter.py ChangeCursor).
- `interests` (events, read whole, AD-A10): one call per selected relation, so it is an optional
  entity unless `crm_interests` is on (AF6).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg
import httpx
from pydantic import BeforeValidator, Field, field_validator

from resources.admin_filter import (
    CUSTOMER_TABLE,
    SELECTION,
    ChangeCursor,
    changes_filter,
    chunks,
    halves,
    local_iso,
    local_text,
    one_of,
    parse_local,
)
from resources.admin_session import CLOCK_TOLERANCE_SECONDS, THROTTLE_WAIT_SECONDS, AdminSession
from resources.admin_write_back import AdminWriteBack, admin_message, truthy
from resources.base import CallCounter, EntitySpec, RecordMeta, SourceClient, VendorError
from resources.http import (
    EnvVarName,
    HttpUrlStr,
    resolve_secret,
    str_id,
)
from resources.record_fields import record_id
from resources.registry import SourceSectionBase
from resources.source import WriteBack, WriteBackResult

DEFAULT_TIMEZONE = "Europe/Brussels"
IDS_PER_CALL = 100  # AD-A6: `CustomerId in (...)` stays short of a 414
CHANGES_CAP = 1000  # AD-A6: a change-log call returns at most this many rows
RECORDS_PER_PAGE = 500  # interests are handed out in pages of this many
CHANGED_AT = "ChangedAt"  # added to every customer: when its state was read (see record_meta)
IN_SELECTION = "InNewsletterSelection"  # added: IsActive and Newsletter (the consent flag)

CUSTOMERS = EntitySpec(
    "customers", "members", "Admin relations with the newsletter box (AD-A5)", "CustomerId"
)
INTERESTS = EntitySpec(
    "interests", "events", "CRM interests of selected relations (AD-A10)", "Id", True
)
ENTITIES = (CUSTOMERS, INTERESTS)

Row = dict[str, Any]


class AdminClient(SourceClient):
    """Reads one Admin office's relations and interests and writes feedback back to it."""

    vendor: ClassVar[str] = "admin"
    default_date_format: ClassVar[str] = "%Y-%m-%d"
    write_back_actions: ClassVar[frozenset[str]] = frozenset(
        {"unsubscribe", "record_click", "create"}
    )

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        timezone: str = DEFAULT_TIMEZONE,
        crm_type: str | None = None,
        custom_fields_table: int = 1,
        crm_interests: bool = False,
        language_default: str | None = "N",
        interests_every_minutes: int = 60,
        pace: bool = True,
        budget_dir: Path | None = None,
        throttle_seconds: float = THROTTLE_WAIT_SECONDS,
        timeout: float | None = None,
        max_tries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,  # wall clock, epoch seconds
    ) -> None:
        self._zone = ZoneInfo(timezone)
        self._table = custom_fields_table
        self._crm_interests = crm_interests
        self._interests_every = timedelta(minutes=max(1, interests_every_minutes))
        self.calls = CallCounter()
        self._api = AdminSession(
            base_url=base_url,
            api_key=api_key,
            zone=self._zone,
            calls=self.calls,
            pace=pace,
            budget_dir=budget_dir,
            throttle_seconds=throttle_seconds,
            timeout=timeout,
            max_tries=max_tries,
            transport=transport,
            sleep=sleep,
            clock=clock,
        )
        self._next_cursor: dict[str, ChangeCursor] = {}  # entity -> where the next read starts
        self._complete: dict[str, bool] = {}
        self._warnings: list[str] = []
        self._writer = AdminWriteBack(
            self._api, zone=self._zone, crm_type=crm_type, language_default=language_default
        )

    # --- SourceClient --------------------------------------------------------------------------

    def entities(self) -> Sequence[EntitySpec]:
        return ENTITIES

    def optional_entities(self) -> frozenset[str]:
        """AF6: interests cost a call per relation; read only when on, or when a run asks."""
        return frozenset() if self._crm_interests else frozenset({INTERESTS.name})

    def check_connection(self) -> None:
        """A token (the key is right) and `apisettings` (the host answers it). The server's clock
        is not held against ours: reads follow its own (see `_server_text`)."""
        self._api.settings(refresh=True)

    def record_meta(self, entity: str, record: Row) -> RecordMeta:
        """Customers have no modified field. `ChangedAt` stands in: the moment the read started,
        in the server's zone with its offset. Its state was known then, and reads follow each
        other, so versions stay in order, also in a DST fall-back's repeated hour (a DateAction
        there would rank a later change below an earlier one; CreationDate would rank a full
        re-read below older changes). Interests: the moment and the local day they were read
        (they have no date of their own)."""
        if self._entity(entity) is INTERESTS:
            moment = self._moment(record.get("ReadAt"))
            return RecordMeta(record_id(record, "Id"), moment, moment.astimezone(self._zone).date())
        return RecordMeta(
            record_id(record, "CustomerId"), self._moment(record.get(CHANGED_AT)), None
        )

    def iter_changed(self, entity: str, cursor: str | datetime | None) -> Iterator[list[Row]]:
        """Customers: the selection when there is no cursor, else what the change log names
        since it. Interests: every selected relation's, whatever the cursor."""
        if self._entity(entity) is INTERESTS:
            return self._interest_pages()
        started = self._now()
        since = self._cursor(cursor)
        if since is None:
            self._next_cursor[entity] = ChangeCursor(self._server_text(started))
            return self._selection_pages(local_iso(started, self._zone))
        return self._changed_pages(entity, since, started)

    def _server_text(self, moment: datetime) -> str:
        """`moment` as the server's clock reads it (TimeToLive - DurationToken tells how far it is
        from ours in the configured zone): the change log's DateAction is server time, so a
        cursor that is read by time must be too. A difference over two minutes (a skewed clock,
        or `timezone` not the server's zone) is followed, and said in the run's warnings."""
        offset = self._api.clock_offset() or 0.0
        if abs(offset) > CLOCK_TOLERANCE_SECONDS:
            warning = (
                f"Admin's clock on {self._api.host} is {offset / 60:+.0f} min from ours in "
                f"{self._zone.key}: change-log times are read in the server's time; check the "
                "integration's `timezone` and both clocks"
            )
            if warning not in self._warnings:
                self._warnings.append(warning)
        return local_text(moment + timedelta(seconds=offset), self._zone)

    def has_changes(self, entity: str, cursor: str | datetime | None) -> bool:
        """Customers: one change-log call for any row since the cursor. Interests: no call; a
        scan is due once the last one is older than `interests_every_minutes` (10% early)."""
        if self._entity(entity) is INTERESTS:
            since = _aware(cursor)
            return since is None or self._now() - since >= self._interests_every * 0.9
        since = self._cursor(cursor)
        if since is None:
            return True
        window = changes_filter(since.probe_since(), since.log_id)
        first = self._api.list_rows("customer/changes", "customer/changes", window, per_page=1)
        return bool(next(first, []))

    def cursor_after(
        self, entity: str, previous: str | None, high_water: datetime | None, started_at: datetime
    ) -> str | None:
        """Customers: after the highest LogId just landed (ChangeCursor's text)."""
        if self._entity(entity) is INTERESTS:
            return super().cursor_after(entity, previous, high_water, started_at)
        following = self._next_cursor.get(entity)
        return previous if following is None else following.text()

    def scan_complete(self, entity: str) -> bool:
        return self._complete.get(entity, False)

    def fetch_records(self, entity: str, ids: Iterable[str]) -> Iterator[list[Row]]:
        """Customers read again by id (100 a call); one not returned is a tombstone."""
        if self._entity(entity) is INTERESTS:
            raise ValueError("admin interests are read whole; they cannot be re-read by id")
        wanted = list(dict.fromkeys(str(i) for i in ids))
        return self._customers_by_id(wanted, local_iso(self._now(), self._zone))

    def run_warnings(self) -> list[str]:
        return [*self._api.warnings, *self._warnings]

    def write_back(
        self, changes: Sequence[WriteBack]
    ) -> Iterator[tuple[WriteBack, WriteBackResult]]:
        """AF3-AF5, one result per change as it is known (resources/admin_write_back.py)."""
        if changes:
            self._api.settings()  # paced from the first write on
        for change in changes:
            yield change, self._writer.apply(change)

    def close(self) -> None:
        self._api.close()

    # --- customers -----------------------------------------------------------------------------

    def _selection_pages(self, read_at: str) -> Iterator[list[Row]]:
        """AD-A5's selection with the whole custom-field table joined in."""
        extra = self._custom_fields(None)
        for page in self._api.list_rows("customers", "customers", SELECTION):
            yield [self._customer_row(c, extra, read_at) for c in page]

    def _changed_pages(
        self, entity: str, since: ChangeCursor, started: datetime
    ) -> Iterator[list[Row]]:
        """AD-A6: the ids the change log names after the cursor, their last action deciding: a
        DELETE of the relation (not of one of its custom-field rows) is a tombstone, anything
        else is read again. The next cursor is the highest LogId read (the old one when none)."""
        rows = self._change_rows(since, self._server_text(started))
        latest: dict[str, str] = {}  # id -> ActionType
        for row in sorted(rows, key=_log_id):
            if row.get("Id") is not None and str(row["Id"]).strip():
                action = str(row.get("ActionType") or "").upper()
                if str(row.get("TableName") or CUSTOMER_TABLE).upper() != CUSTOMER_TABLE:
                    action = "UPDATE"
                latest[str(row["Id"])] = action
        self._next_cursor[entity] = _following(since, rows, self._server_text(started))
        deleted = [cid for cid, action in latest.items() if action == "DELETE"]
        if deleted:
            yield [self.tombstone(CUSTOMERS.name, cid) for cid in deleted]
        alive = [cid for cid, action in latest.items() if action != "DELETE"]
        yield from self._customers_by_id(alive, local_iso(started, self._zone))

    def _change_rows(self, cursor: ChangeCursor, until: str) -> list[Row]:
        """The change-log rows after the cursor. A call that returns the 1000-row cap goes on
        after the highest LogId it returned, so a burst (1000 rows in one second) is read whole;
        a server whose rows carry no LogId is read by AD-A6's time windows up to `until` (the
        server's now), each halved while it hits the cap."""
        since, after = cursor.since(self._zone), cursor.log_id
        rows: list[Row] = []
        while True:
            found = self._change_call(changes_filter(since, after))
            rows.extend(found)
            highest = max((_log_id(r) for r in found), default=0)
            if len(found) < CHANGES_CAP:
                return rows
            if not highest and since is not None:
                return self._time_window_rows(since, until)
            if not highest or (after is not None and highest <= after):
                self._warnings.append(
                    f"admin: {len(found)} change rows without a usable LogId after "
                    f"{cursor.text()}: some changes may be missed"
                )
                return rows
            after = highest

    def _change_call(self, filter_: str) -> list[Row]:
        pages = self._api.list_rows("customer/changes", "customer/changes", filter_)
        return [row for page in pages for row in page]

    def _time_window_rows(self, since: str, until: str) -> list[Row]:
        """AD-A6 for rows without LogIds: [since, until), halved while a call hits the cap."""
        found = self._change_call(changes_filter(since, None, until))
        if len(found) < CHANGES_CAP:
            return found
        split = halves(since, until, self._zone)
        if split is None:
            self._warnings.append(
                f"admin: over {CHANGES_CAP} changes in the second from {since}: some may be "
                "missed until the next full read"
            )
            return found
        first, middle = split
        return self._time_window_rows(first, middle) + self._time_window_rows(middle, until)

    def _customers_by_id(self, ids: list[str], changed_at: str) -> Iterator[list[Row]]:
        """`CustomerId in (...)` 100 at a time, without the selection filter (a relation that
        left it must come back); an id not returned is a tombstone."""
        for chunk in chunks(ids, IDS_PER_CALL):
            found = [
                c
                for page in self._api.list_rows(
                    "customers", "customers", one_of("CustomerId", chunk)
                )
                for c in page
            ]
            extra = self._custom_fields(chunk)
            page_out = [self._customer_row(c, extra, changed_at) for c in found]
            returned = {str(c.get("CustomerId")) for c in found}
            page_out += [
                self.tombstone(CUSTOMERS.name, cid) for cid in chunk if cid not in returned
            ]
            if page_out:
                yield page_out

    def _custom_fields(self, ids: Sequence[str] | None) -> dict[str, Row]:
        """AD-A11: custom-field values by CustomerId, the whole table or these ids. A 404 "No
        extradata found" is none; a key not permitted the endpoint (403 "no valid configuration
        for token") hands the relations without custom fields, with a warning, once a run."""
        filter_ = None if ids is None else one_of("CustomerId", ids)
        path = f"extradata/{self._table}"
        joined: dict[str, Row] = {}
        try:
            for page in self._api.list_rows(path, "extradata/{table}", filter_):
                for row in page:
                    if row.get("CustomerId") is None:
                        continue
                    values = {k: v for k, v in row.items() if k != "CustomerId"}
                    joined.setdefault(str(row["CustomerId"]), {}).update(values)
        except VendorError as exc:
            if not _no_custom_fields(exc):
                raise
            if exc.status == 403:
                self._warn_once(
                    f"admin: custom fields not read ({admin_message(exc)}): the API key is not "
                    f"permitted {path}; relations are handed without them"
                )
        return joined

    def _customer_row(self, customer: Row, extra: dict[str, Row], changed_at: str) -> Row:
        """The customer with its custom fields (never over one of its own fields), the consent
        flag and when its state was read."""
        fields = extra.get(str(customer.get("CustomerId")), {})
        row = {**{k: v for k, v in fields.items() if k not in customer}, **customer}
        row[IN_SELECTION] = truthy(customer.get("IsActive")) and truthy(customer.get("Newsletter"))
        row[CHANGED_AT] = changed_at or local_iso(self._now(), self._zone)
        return row

    def _warn_once(self, message: str) -> None:
        if message not in self._warnings:
            self._warnings.append(message)

    # --- interests (AD-A10) --------------------------------------------------------------------

    def _interest_pages(self) -> Iterator[list[Row]]:
        """`{Id: <CustomerId>-<InterestId>, CustomerId, InterestId, Description, ReadAt, ReadOn}`
        for
        every selected relation; complete once every relation was read."""
        self._complete[INTERESTS.name] = False
        now = self._now()
        read_at, read_on = now.isoformat(), now.astimezone(self._zone).date().isoformat()
        ids = [
            c["CustomerId"]
            for page in self._api.list_rows("customers", "customers", SELECTION)
            for c in page
            if c.get("CustomerId") is not None
        ]
        out: list[Row] = []
        for customer_id in ids:
            path = f"customers/{customer_id}/interests"
            out += [
                _interest_row(customer_id, i, read_at, read_on) for i in self._interests_of(path)
            ]
            if len(out) >= RECORDS_PER_PAGE:
                yield out
                out = []
        if out:
            yield out
        self._complete[INTERESTS.name] = True

    def _interests_of(self, path: str) -> list[Row]:
        """One relation's interests; none when it is gone since the selection was read."""
        try:
            return [
                i
                for page in self._api.list_rows(path, "customers/{id}/interests", None)
                for i in page
            ]
        except VendorError as exc:
            if exc.status == 404:
                return []
            raise

    # --- helpers -------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self._api.now()

    def _moment(self, value: Any) -> datetime:
        """A server-local (or ISO) text as aware UTC; now when it is missing or unreadable."""
        try:
            return parse_local(str(value), self._zone)
        except ValueError:
            return self._now()

    def _cursor(self, cursor: str | datetime | None) -> ChangeCursor | None:
        """The stored cursor; None (a full read) when absent or unreadable."""
        if cursor is None or cursor == "":
            return None
        try:
            if isinstance(cursor, datetime):
                return ChangeCursor(local_text(cursor, self._zone))
            return ChangeCursor.read(cursor, self._zone)
        except ValueError:
            return None

    def _entity(self, name: str) -> EntitySpec:
        for spec in ENTITIES:
            if spec.name == name:
                return spec
        raise ValueError(f"admin has no entity {name!r}; known: {[s.name for s in ENTITIES]}")


def _interest_row(customer_id: Any, interest: Row, read_at: str, read_on: str) -> Row:
    return {
        "Id": f"{customer_id}-{interest.get('InterestId')}",
        "CustomerId": customer_id,
        "InterestId": interest.get("InterestId"),
        "Description": interest.get("Description"),
        "ReadAt": read_at,
        "ReadOn": read_on,
    }


def _log_id(row: Row) -> int:
    """A change-log row's LogId (the order rows were written in); 0 when it has none."""
    try:
        return int(row.get("LogId") or 0)
    except (TypeError, ValueError):
        return 0


def _following(cursor: ChangeCursor, rows: list[Row], started: str) -> ChangeCursor:
    """The cursor after a read: the highest LogId found; without one (a server whose rows carry
    none) the read's start, read next time with ChangeCursor's overlap; the old cursor when the
    read found nothing."""
    highest = max((_log_id(r) for r in rows), default=0)
    if highest:
        return ChangeCursor(started, highest)
    if rows and cursor.log_id is None:
        return ChangeCursor(started)
    return cursor


def _no_custom_fields(exc: VendorError) -> bool:
    """An extradata answer that means "no custom fields to join" rather than a failed read."""
    message = admin_message(exc).lower()
    if exc.status == 404:
        return "no extradata" in message or "nothing found" in message
    return exc.status == 403 and "no valid configuration" in message


def _aware(cursor: str | datetime | None) -> datetime | None:
    if cursor is None or cursor == "":
        return None
    try:
        moment = cursor if isinstance(cursor, datetime) else datetime.fromisoformat(cursor)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# --- integration file section and Dagster resource ---------------------------------------------


class AdminResource(dg.ConfigurableResource):
    """Admin settings with the API key as `dg.EnvVar`, resolved only when a client is built."""

    base_url: str
    api_key: str
    timezone: str = DEFAULT_TIMEZONE
    crm_type: str | None = None
    custom_fields_table: int = 1
    crm_interests: bool = False
    language_default: str | None = "N"
    interests_every_minutes: int = 60

    def client(self) -> AdminClient:
        return AdminClient(
            base_url=self.base_url,
            api_key=resolve_secret(self.api_key, "admin api_key") or "",
            timezone=self.timezone,
            crm_type=self.crm_type,
            custom_fields_table=self.custom_fields_table,
            crm_interests=self.crm_interests,
            language_default=self.language_default,
            interests_every_minutes=self.interests_every_minutes,
        )


class AdminSource(SourceSectionBase):
    """`source:` section with `kind: admin`; the API key is an env var name (AD-A2)."""

    entities: ClassVar[tuple[EntitySpec, ...]] = ENTITIES

    kind: Literal["admin"]
    base_url: HttpUrlStr  # AD-A1: https://{host}:{port}/api/v1, self-hosted
    api_key_env: EnvVarName
    timezone: str = DEFAULT_TIMEZONE  # the server's local time (DateAction, communications)
    crm_type: Annotated[str | None, BeforeValidator(str_id)] = None  # AD-A8
    custom_fields_table: int = Field(default=1, ge=1)  # AD-A11: extradata table of CUSTOMER
    crm_interests: bool = False  # AF6
    language_default: str | None = "N"  # Admin's Language code for a created relation
    # interests are read whole at most this often (a call per relation)
    interests_every_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name)") from None
        return value

    def env_vars(self) -> list[str]:
        return [self.api_key_env]

    def resource(self, integration: str | None = None) -> AdminResource:
        return AdminResource(
            base_url=self.base_url,
            api_key=dg.EnvVar(self.api_key_env),
            timezone=self.timezone,
            crm_type=self.crm_type,
            custom_fields_table=self.custom_fields_table,
            crm_interests=self.crm_interests,
            language_default=self.language_default,
            interests_every_minutes=self.interests_every_minutes,
        )
