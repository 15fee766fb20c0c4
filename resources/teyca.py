"""Teyca source client: loyalty wallet cards ("passes") read whole, re-read by id after a webhook.

Teyca's API needs two credentials: the account's main key, sent raw in `Authorization`, and a
per-integration token in the URL path (`/v1/{token}/...`). memberflow keeps only the main key in
the environment and creates its own path token on first use (TY-A1), stored as a secret outside
git. One token serves one installation (TY-A2: Teyca blocks a token used from several
machines), and every call on it is checked against Teyca's four rate windows before it is sent
(TY-A9), in a budget shared by every run of the integration.

There is no modified-since filter on passes (TY-A4), so the entity is a full scan: nightly when
webhooks announce changes in between, otherwise at every sensor interval, with a warning when
that would spend more calls per day than the cap allows.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import dagster as dg
import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from resources.base import (
    CallCounter,
    EntitySpec,
    RecordMeta,
    SourceClient,
    UncertainOutcome,
    VendorError,
)
from resources.http import EnvVarName, HttpUrlStr, VendorHttp, resolve_secret
from resources.rate_budget import SharedRateLimiter, Window
from resources.record_fields import record_datetime, record_id
from resources.registry import SourceSectionBase
from resources.secret_store import SecretStore
from resources.target import RateBudget
from resources.teyca_webhook import TeycaWebhook

MOSCOW = ZoneInfo("Europe/Moscow")  # TY-A7: created_at and date_last are Moscow wall time
LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_BASE_URL = "https://api.teyca.ru"
PAGE_SIZE = 500  # TY-A3 (the API accepts up to 1000)
MAX_PAGE_SIZE = 1000
DAILY_CAP = 5000
# TY-A9, per path token: wait for room in the short windows, refuse in the long ones.
RATE_WINDOWS = (
    Window("second", 5, 1.0, wait=True),
    Window("minute", 150, 60.0, wait=True),
    Window("hour", 1000, 3600.0, wait=False),
    Window("day", DAILY_CAP, 86400.0, wait=False),
)
HOOK_TYPES = ("CREATE", "UPDATE", "DELETE")  # TY-A4: every card change is announced
DELETED = "_memberflow_deleted"  # a tombstone: the source no longer has this record
DELETED_AT = "_memberflow_deleted_at"  # when memberflow saw it gone (its modified time)
ID_FIELD = "user_id"
# TY-A7: numbers often arrive as text; cast so a balance of "1250" is the number 1250.
NUMBER_FIELDS = frozenset(
    {"bonus", "bonus_last", "write_off_last", "summ", "summ_all", "summ_last", "check_summ"}
)
COUNT_FIELDS = frozenset({"user_id", "visits", "visits_all"})
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
RECORDS_PER_PAGE = 100  # fetch_records yields re-read passes in pages of this many


PASSES = EntitySpec(
    "passes", "members", "Teyca loyalty cards (wallet passes)", full_scan=True, id_field="user_id"
)
OPERATIONS = EntitySpec("operations", "events", "Teyca operations (purchases), TY-A11")
OPERATION_NUMBERS = frozenset({"summ", "bonus"})
OPERATION_IDS = frozenset({"id", "user_id", "store_id"})


class TeycaClient(SourceClient):
    """Reads passes page by page (TY-A3) on the integration's own path token (TY-A1)."""

    vendor: ClassVar[str] = "teyca"
    default_date_format: ClassVar[str] = "%d.%m.%Y"  # TY-A7 birthdays

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        integration: str,
        webhooks_enabled: bool = False,
        full_scan_hours: float = 24,
        scan_interval_minutes: int = 5,
        page_size: int = PAGE_SIZE,
        secrets: SecretStore | None = None,
        budget_dir: Path | None = None,
        timeout: float | None = None,  # None: MEMBERFLOW_HTTP_TIMEOUT or 30 s
        max_tries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,  # wall clock (epoch seconds): the rate budget
    ) -> None:
        if not api_key:
            raise ValueError("teyca needs the main API key")
        self._base = base_url.rstrip("/")
        self._host = urlsplit(self._base).netloc or self._base
        self._key = api_key
        self.identifier = f"memberflow-{integration}"  # TY-A1
        self._secret_name = token_secret_name(self._base, integration)
        self._webhooks = webhooks_enabled
        self._full_scan = timedelta(hours=full_scan_hours)
        self._interval_minutes = max(1, scan_interval_minutes)
        self._page_size = max(1, min(page_size, MAX_PAGE_SIZE))
        self._secrets = secrets or SecretStore()
        self._budget_dir = budget_dir
        self._sleep = sleep
        self._clock = clock
        self.calls = CallCounter()  # every call of both sessions below, for the run's report
        # Token calls log their URL path on retries, and the path holds the token: that session
        # is made once the token is known, so it masks it like the key (never in a log line).
        self._new_http = functools.partial(
            VendorHttp,
            vendor=self.vendor,
            timeout=timeout,
            max_tries=max_tries,
            transport=transport,
            sleep=sleep,
            calls=self.calls,
        )
        self._admin_http = self._new_http(secrets=[api_key])
        self._lock = threading.Lock()
        self._token: str | None = None
        self._http: VendorHttp | None = None
        self._limiter: SharedRateLimiter | None = None
        self._spent_earlier = 0  # budget calls on a token that was replaced (stale)
        self._last_size: int | None = None  # passes seen by the last scan (run_warnings)
        self._scan_whole = False  # the last pass scan read every pass Teyca counted

    # --- SourceClient --------------------------------------------------------------------------

    def entities(self) -> Sequence[EntitySpec]:
        return [PASSES, OPERATIONS]

    def check_connection(self) -> None:
        """TY-A1: `GET /v1/{token}/passes?limit=1` answers 200 with `meta` (token made if new)."""
        self._page(0, 1)

    def iter_changed(
        self, entity: str, since: datetime | str | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """Passes: every one, whatever `since` says (no modified filter, TY-A4). Operations:
        those created at or after `since` (TY-A11)."""
        if self._entity(entity) is OPERATIONS:
            last = _cursor_time(since)
            filters = {"data_since": format_moscow(last)} if last is not None else {}
            return self._operation_pages(filters)
        return self._pass_pages()

    def iter_range(self, entity: str, start: date, end: date) -> Iterator[list[dict[str, Any]]]:
        """Operations whose Moscow date lies in [start, end], both inclusive (TY-A11)."""
        if self._entity(entity) is not OPERATIONS:
            raise ValueError(f"teyca {entity} has no business date; use iter_changed")
        if end < start:
            raise ValueError(f"range end {end} is before its start {start}")
        filters = {
            "data_since": f"{start:%Y-%m-%d} 00:00:00",
            "data_last": f"{end:%Y-%m-%d} 23:59:59",
        }
        return self._operation_pages(filters)

    def has_changes(self, entity: str, since: datetime | str | None) -> bool:
        """Passes: is a scan due? No call is spent: the cursor is the start of the last full scan,
        and a scan is due when it is older than the scan interval (nightly with webhooks, else
        every sensor interval; 10% early, so a sensor tick a little ahead of time still scans).
        Operations: one call, limit 1, for any created since the cursor."""
        last = _cursor_time(since)
        if self._entity(entity) is OPERATIONS:
            since = last + timedelta(seconds=1) if last is not None else None  # after the newest
            filters = {"data_since": format_moscow(since)} if since is not None else {}
            return int(self._operations(filters, 0, 1)["meta"].get("size") or 0) > 0
        if last is None:
            return True
        return datetime.now(UTC) - last >= self.scan_every() * 0.9

    def cursor_after(
        self,
        entity: str,
        previous: str | None,
        high_water: datetime | None,
        started_at: datetime,
    ) -> str | None:
        """Passes: the scan's start (a card changed during the scan is read by the next one).
        Operations: the newest `created_at` landed, as the other sources do."""
        if self._entity(entity) is OPERATIONS:
            return high_water.isoformat() if high_water is not None else previous
        return _aware(started_at).isoformat()

    def record_meta(self, entity: str, record: dict[str, Any]) -> RecordMeta:
        """Passes: id `user_id`; no modified time exists, so `created_at` stands in (staging
        breaks the tie between versions by fetch time); a tombstone's is when it was seen gone.
        Operations: id `id`, business date the Moscow day of `created_at`."""
        if self._entity(entity) is OPERATIONS:
            moment = record_datetime(record, "created_at", parse_moscow)
            return RecordMeta(record_id(record, "id"), moment, moment.astimezone(MOSCOW).date())
        if record.get(DELETED) is True and isinstance(record.get(DELETED_AT), str):
            modified = record_datetime(record, DELETED_AT, _iso_utc)
        elif record.get(DELETED) is True and record.get("created_at") is None:
            modified = datetime.now(UTC)
        else:
            # created_at only stands in for a modified time: one missing or in another shape
            # must not cost the card, so the fetch time stands in for it then
            try:
                modified = record_datetime(record, "created_at", parse_moscow)
            except ValueError:
                modified = datetime.now(UTC)
        return RecordMeta(record_id(record, ID_FIELD), modified, None)

    def fetch_records(self, entity: str, ids: Iterable[str]) -> Iterator[list[dict[str, Any]]]:
        """Re-read passes by id (TY-A5); one gone at Teyca (404) comes back as a tombstone."""
        if self._entity(entity) is not PASSES:
            raise ValueError(f"teyca {entity} cannot be re-read by id")
        page: list[dict[str, Any]] = []
        for user_id in dict.fromkeys(str(i) for i in ids):
            page.append(self._one(user_id))
            if len(page) >= RECORDS_PER_PAGE:
                yield page
                page = []
        if page:
            yield page

    def run_warnings(self) -> list[str]:
        """TY-A4: a warning when the scans alone would pass the daily cap."""
        size = self._last_size
        if size is None:
            size = int(self._page(0, 1)["meta"].get("size") or 0)
        pages = max(1, math.ceil(size / self._page_size))
        scans = timedelta(days=1) / self.scan_every()  # the sensor's probe spends no call
        per_day = math.ceil(pages * scans)
        if per_day <= DAILY_CAP:
            return []
        every = self.scan_every()
        how = (
            f"every {every.total_seconds() / 3600:g} h (webhooks on)"
            if self._webhooks
            else f"every {self._interval_minutes} min (no webhooks)"
        )
        return [
            f"teyca: full scans of {size} passes ({pages} calls each) {how} would spend "
            f"{per_day} calls/day, more than the {DAILY_CAP}/day cap; turn webhooks on or "
            "lengthen the sensor interval"
        ]

    def rate_budget(self) -> RateBudget:
        """The day's calls left on this integration's token, counted across runs (TY-A9), with
        the ones this client spent (token creation on the main key is not in the budget)."""
        return dataclasses.replace(self._budget().budget(), by_this_client=self.budget_spent)

    @property
    def budget_spent(self) -> int:
        """Calls this client (one run) let through the shared budget."""
        current = self._limiter.spent if self._limiter is not None else 0
        return self._spent_earlier + current

    def ensure_webhooks(self, url: str) -> list[str]:
        """Register CREATE, UPDATE and DELETE hooks to `url` where missing (TY-A4); returns the
        kinds newly registered, lower-case. Running it twice registers nothing the second time."""
        hooks = _hook_list(self._call("GET", "webhook", "webhook"))
        if hooks is None:
            raise VendorError(self.vendor, 200, "webhook list: expected a list of hooks")
        present = {
            str(h.get("type")).upper() for h in hooks if isinstance(h, dict) and h.get("url") == url
        }
        added = []
        for hook_type in HOOK_TYPES:
            if hook_type not in present:
                self._call("POST", "webhook", "webhook", json={"type": hook_type, "url": url})
                added.append(hook_type.lower())
        return added

    def close(self) -> None:
        self._admin_http.close()
        if self._http is not None:
            self._http.close()

    def scan_every(self) -> timedelta:
        """Nightly-ish full scans with webhooks, at every sensor interval without (TY-A4)."""
        if self._webhooks:
            return self._full_scan
        return timedelta(minutes=self._interval_minutes)

    # --- token (TY-A1) -------------------------------------------------------------------------

    def token(self) -> str:
        """The integration's path token: stored, or found by its identifier, or created."""
        with self._lock:
            if self._token is None:
                self._token = self._secrets.get(self._secret_name) or self._obtain_token()
            return self._token

    def _obtain_token(self) -> str:
        """Create the integration's token. One that Teyca already lists under our identifier
        but this installation has not stored belongs to another installation (or to a secrets
        directory that was lost): using it from here would get it blocked for both (TY-A2), so
        the user decides. Only the answer to our own creation, if it was lost, is looked up."""
        if self._listed_token() is not None:
            raise VendorError(
                self.vendor,
                409,
                f"a token named {self.identifier!r} exists at {self._host} but is not stored in "
                "this installation's secrets directory; Teyca blocks a token used from two "
                "machines. Copy the secret file from the installation that owns it, or delete "
                "that token at Teyca (DELETE /v1/authorization) so this one creates its own",
            )
        try:
            body = self._admin("POST", json={"identifier": self.identifier})
        except UncertainOutcome:  # our own creation may have happened: look rather than guess
            body = {"token": self._listed_token()}
        token = body.get("token") if isinstance(body, dict) else None
        if not token:
            raise VendorError(self.vendor, 200, "token creation answered without a token")
        self._secrets.put(self._secret_name, str(token))
        return str(token)

    def _listed_token(self) -> str | None:
        listed = self._admin("GET")
        if not isinstance(listed, list):
            raise VendorError(self.vendor, 200, "token list: expected a list")
        for item in listed:
            if isinstance(item, dict) and item.get("identifier") == self.identifier:
                return str(item.get("token") or "") or None
        return None

    def _admin(self, method: str, **kwargs: Any) -> Any:
        """`/v1/authorization` with the main key alone (no token, no rate window)."""
        try:
            return self._admin_http.request_json(
                method,
                f"{self._base}/v1/authorization",
                endpoint="authorization",
                headers={"Authorization": self._key, "Accept": "application/json"},
                **kwargs,
            )
        except VendorError as exc:
            raise self._auth_error(exc, "authorization") from None

    # --- calls on the token path ---------------------------------------------------------------

    def _budget(self) -> SharedRateLimiter:
        return self._session()[1]

    def _session(self) -> tuple[VendorHttp, SharedRateLimiter]:
        """The HTTP session and the shared budget of the token, made on first use."""
        token = self.token()
        with self._lock:
            if self._http is None or self._limiter is None:
                self._http = self._new_http(secrets=[self._key, token])
                self._limiter = SharedRateLimiter(
                    self.vendor,
                    token,
                    RATE_WINDOWS,
                    directory=self._budget_dir,
                    clock=self._clock,
                    sleep=self._sleep,
                    counter=self.calls,  # waits reach the run's metadata
                )
            return self._http, self._limiter

    def _call(self, method: str, path: str, endpoint: str, **kwargs: Any) -> Any:
        """One request on `/v1/{token}/<path>`, each try admitted by the shared budget first.

        A 401 may mean the stored token was deleted at Teyca: if the token list no longer holds
        it, it is forgotten and the request goes once more on a token found or made anew."""
        for attempt in (1, 2):
            token = self.token()
            http, budget = self._session()

            def headers(budget: SharedRateLimiter = budget) -> dict[str, str]:
                budget.acquire()  # called before every try, retries included
                return {"Authorization": self._key, "Accept": "application/json"}

            try:
                return http.request_json(
                    method,
                    f"{self._base}/v1/{token}/{path}",
                    endpoint=endpoint,
                    headers=headers,
                    **kwargs,
                )
            except VendorError as exc:
                if exc.status == 401 and attempt == 1 and self._forget_if_stale(token):
                    continue
                raise self._auth_error(exc, endpoint) from None
        raise AssertionError("unreachable")

    def _forget_if_stale(self, token: str) -> bool:
        """True when Teyca no longer lists `token` as ours: it and its session are dropped."""
        if self._listed_token() == token:  # a refused main key raises here, named as such
            return False
        with self._lock:
            self._secrets.delete(self._secret_name)
            self._token = None
            if self._http is not None:
                self._http.close()
            if self._limiter is not None:
                self._spent_earlier += self._limiter.spent
            self._http = self._limiter = None
        return True

    def _pass_pages(self) -> Iterator[list[dict[str, Any]]]:
        """Every pass, `limit`/`offset` until offset >= meta.size (TY-A3).

        The scan counts as complete only when the total stayed the same from first page to last
        and the passes received add up to it: a server that caps `limit` below ours, or a card
        deleted mid-scan that shifts the pages, must not make a live card look deleted."""
        sizes: set[int] = set()
        received = 0
        self._scan_whole = False
        for body in self._offset_pages(self._page, "passes"):
            self._last_size = _size(body)
            sizes.add(self._last_size)
            received += len(body["passes"])
            if body["passes"]:
                yield [cast_pass(p) for p in body["passes"]]
        self._scan_whole = len(sizes) == 1 and received == self._last_size

    def scan_complete(self, entity: str) -> bool:
        """Passes: the last scan read exactly the total Teyca reported, which did not move."""
        if self._entity(entity) is OPERATIONS:
            return True
        return self._scan_whole

    def _operation_pages(self, filters: dict[str, str]) -> Iterator[list[dict[str, Any]]]:
        fetch = functools.partial(self._operations, filters)
        for body in self._offset_pages(fetch, "operations"):
            if body["operations"]:
                yield [cast_operation(op) for op in body["operations"]]

    def _offset_pages(
        self, fetch: Callable[[int, int], dict[str, Any]], rows: str
    ) -> Iterator[dict[str, Any]]:
        """Envelopes from offset 0 until offset >= meta.size (TY-A3), or an empty page (a total
        that shrank while paging). The offset moves by the rows received: a server that gives
        fewer than `limit` (its own cap is not documented) skips nothing."""
        offset = 0
        while True:
            body = fetch(offset, self._page_size)
            yield body
            offset += len(body[rows])
            if not body[rows] or offset >= _size(body):
                return

    def _page(self, offset: int, limit: int) -> dict[str, Any]:
        params = {"limit": limit, "offset": offset}
        return self._call("GET", "passes", "passes", params=params, validate=_passes_envelope)

    def _operations(self, filters: dict[str, str], offset: int, limit: int) -> dict[str, Any]:
        """`POST /operations` is a read (TY-A11): safe to send again, so retried like a GET."""
        return self._call(
            "POST",
            "operations",
            "operations",
            idempotent=True,
            params={"offset": offset, "limit": limit},
            json={"filters": filters, "order": "desc"},  # the one documented value
            validate=_operations_envelope,
        )

    def _one(self, user_id: str) -> dict[str, Any]:
        try:
            card = self._call("GET", f"passes/userid/{user_id}", "passes/userid")
        except VendorError as exc:
            if exc.status == 404:  # TY-A10: the card is gone
                return tombstone(user_id)
            raise
        if not isinstance(card, dict):
            raise VendorError(self.vendor, 200, "passes/userid: expected a pass object")
        return cast_pass(card)

    def _auth_error(self, exc: VendorError, endpoint: str) -> VendorError:
        """A 401/403 names the host and what to do; other errors pass through unchanged."""
        if exc.status not in (401, 403) or isinstance(exc, UncertainOutcome):
            return exc
        if exc.status == 403:  # TY-A2: the vendor's "Token blocked: ..." kept as it is
            hint = (
                f"the path token {self.identifier} may be used from one installation only; "
                f"delete it at Teyca and the secret {self._secret_name} to start afresh"
            )
        elif endpoint == "authorization":
            hint = "the main API key was refused: check the environment variable it comes from"
        else:
            hint = (
                f"the main key or the stored path token ({self._secret_name}) was refused; if "
                "the token was deleted at Teyca, delete that secret and a new one is created"
            )
        message = f"{exc.message} (on {self._host}: {hint})"
        return VendorError(self.vendor, exc.status, message, exc.body)

    def _entity(self, name: str) -> EntitySpec:
        for spec in (PASSES, OPERATIONS):
            if spec.name == name:
                return spec
        raise ValueError(f"teyca has no entity {name!r}; known: ['operations', 'passes']")


# --- record helpers ----------------------------------------------------------------------------


def _hook_list(body: Any) -> list[Any] | None:
    """The hooks of `GET /webhook`, whose shape is undocumented: a bare list, or an object
    holding one list (e.g. `{"webhooks": [...]}`)."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        lists = [value for value in body.values() if isinstance(value, list)]
        if len(lists) == 1:
            return lists[0]
    return None


def _size(body: dict[str, Any]) -> int:
    """`meta.size` as a count, whether sent as a number or as text ("1200", "1200.0")."""
    try:
        return int(float(body["meta"].get("size") or 0))
    except (TypeError, ValueError):
        return 0


def cast_pass(card: dict[str, Any]) -> dict[str, Any]:
    """Numbers sent as text become numbers (TY-A7); anything unreadable stays as sent, for the
    mapping to judge. Empty text is no number (None)."""
    out = dict(card)
    for name in NUMBER_FIELDS | COUNT_FIELDS:
        if name in out:
            out[name] = _number(out[name], whole=name in COUNT_FIELDS)
    phone = out.get("phone")
    if isinstance(phone, str | int) and re.fullmatch(r"7\d{10}", str(phone).strip()):
        out["phone"] = "+" + str(phone).strip()  # TY-A7: 7XXXXXXXXXX is a Russian number
    return out


def cast_operation(operation: dict[str, Any]) -> dict[str, Any]:
    """Operation amounts sent as text become numbers, like a pass's (TY-A7, TY-A11)."""
    out = dict(operation)
    for name in OPERATION_NUMBERS | OPERATION_IDS:
        if name in out:
            out[name] = _number(out[name], whole=name in OPERATION_IDS)
    return out


def _envelope(body: Any, rows: str) -> dict[str, Any]:
    """`{<rows>: [...], meta: {size, ...}}`; a ValueError makes the HTTP layer read it as a
    garbled answer (retried, then a VendorError)."""
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("meta"), dict)
        or not isinstance(body.get(rows), list)
    ):
        raise ValueError(f"{rows}: expected {{{rows}: [...], meta: {{...}}}}")
    return body


def _passes_envelope(body: Any) -> dict[str, Any]:
    return _envelope(body, "passes")


def _operations_envelope(body: Any) -> dict[str, Any]:
    return _envelope(body, "operations")


def _number(value: Any, *, whole: bool) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    if not _NUMBER.fullmatch(text):
        return value
    number = float(text)
    return int(number) if number.is_integer() and (whole or "." not in text) else number


def tombstone(user_id: str) -> dict[str, Any]:
    """A pass Teyca no longer has: its id, the deleted flag, and when it was seen gone."""
    key: Any = int(user_id) if user_id.isdigit() else user_id
    return {ID_FIELD: key, DELETED: True, DELETED_AT: datetime.now(UTC).isoformat()}


def parse_moscow(value: str) -> datetime:
    """`YYYY-MM-DD HH:MM:SS` Moscow wall time (TY-A7) -> aware UTC."""
    return datetime.strptime(value.strip(), LOCAL_FORMAT).replace(tzinfo=MOSCOW).astimezone(UTC)


def format_moscow(moment: datetime) -> str:
    """Aware (or naive UTC) datetime -> `YYYY-MM-DD HH:MM:SS` Moscow wall time (TY-A11)."""
    return _aware(moment).astimezone(MOSCOW).strftime(LOCAL_FORMAT)


def _iso_utc(value: str) -> datetime:
    return _aware(datetime.fromisoformat(value))


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _cursor_time(cursor: datetime | str | None) -> datetime | None:
    if cursor is None or cursor == "":
        return None
    if isinstance(cursor, datetime):
        return _aware(cursor)
    try:
        return _aware(datetime.fromisoformat(cursor))
    except ValueError:
        return None  # an unreadable cursor: scan now rather than never


def token_secret_name(base_url: str, integration: str) -> str:
    """One secret per integration and Teyca host: a sandbox token never goes to the real API."""
    host = hashlib.sha256(base_url.rstrip("/").encode()).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", integration)[:120] or "default"
    return f"teyca-token-{safe}-{host}"


# --- integration file section and Dagster resource ---------------------------------------------


class TeycaWebhooks(BaseModel):
    """Teyca's webhooks (TY-A4/A5): on, with the secret Teyca sends in `Authorization`."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    secret_env: EnvVarName | None = None

    @model_validator(mode="after")
    def _secret_when_enabled(self) -> TeycaWebhooks:
        if self.enabled and not self.secret_env:
            raise ValueError("webhooks.enabled needs secret_env (the env var holding the secret)")
        return self


class TeycaResource(dg.ConfigurableResource):
    """Teyca settings with the main key as `dg.EnvVar`, resolved only when a client is built."""

    base_url: str
    api_key: str
    integration: str
    webhooks_enabled: bool = False
    full_scan_hours: float = 24
    scan_interval_minutes: int = 5
    page_size: int = PAGE_SIZE

    def client(self) -> TeycaClient:
        return TeycaClient(
            base_url=self.base_url,
            api_key=resolve_secret(self.api_key, "teyca api_key") or "",
            integration=self.integration,
            webhooks_enabled=self.webhooks_enabled,
            full_scan_hours=self.full_scan_hours,
            scan_interval_minutes=self.scan_interval_minutes,
            page_size=self.page_size,
        )


class TeycaSource(SourceSectionBase):
    """`source:` section with `kind: teyca`; the main key is an env var name (TY-A1)."""

    entities: ClassVar[tuple[EntitySpec, ...]] = (PASSES, OPERATIONS)

    kind: Literal["teyca"]
    base_url: HttpUrlStr = DEFAULT_BASE_URL
    api_key_env: EnvVarName
    webhooks: TeycaWebhooks = Field(default_factory=TeycaWebhooks)
    full_scan_hours: float = Field(default=24, gt=0, le=24 * 31)
    consent_field: str = Field(default="key1", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    page_size: int = Field(default=PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)

    def env_vars(self) -> list[str]:
        names = [self.api_key_env]
        if self.webhooks.enabled and self.webhooks.secret_env:
            names.append(self.webhooks.secret_env)
        return names

    def resource(
        self, integration: str | None = None, interval_minutes: int | None = None
    ) -> TeycaResource:
        """The integration's name makes its token identifier (TY-A1); the sensor interval sets
        how often a scan runs without webhooks (TY-A4). Both default to what `bind` recorded."""
        integration = integration or self._integration
        interval_minutes = interval_minutes or self._interval_minutes
        return TeycaResource(
            base_url=self.base_url,
            api_key=dg.EnvVar(self.api_key_env),
            integration=integration,
            webhooks_enabled=self.webhooks.enabled,
            full_scan_hours=self.full_scan_hours,
            scan_interval_minutes=interval_minutes,
            page_size=self.page_size,
        )

    def mapping_overrides(self) -> dict[str, dict[str, Any]]:
        """TY-A6: consent is read from the configured pass field (default `key1`)."""
        if self.consent_field == "key1":
            return {}
        return {"passes": {"consent_mailing": self.consent_field}}

    def webhook(self) -> TeycaWebhook | None:
        """The webhook capability when webhooks are on (secret read from its env var), else None."""
        if not self.webhooks.enabled or not self.webhooks.secret_env:
            return None
        return TeycaWebhook.from_env(self.webhooks.secret_env)
