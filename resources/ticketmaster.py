"""Ticketmaster client-data source client: consented customers (TM2) and orders with their ticket
lines (TM3).

The product behind "apikey + market code + username + password" is not publicly documented:
the wire format is memberflow's designed contract, the labelled assumptions TM-A* (summarised in
the README) that this client and the emulator in sandbox/ both implement.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Literal

import dagster as dg
import httpx
from pydantic import AfterValidator, Field

from resources import paging
from resources.auth import basic
from resources.base import VendorError
from resources.http import (
    EnvVarName,
    HttpUrlStr,
    VendorHttp,
    as_utc,
    date_windows,
    resolve_secret,
)
from resources.pacing import PER_SECOND_MARGIN_SECONDS, Pace, Window, shared_pace
from resources.pacing import per_second as per_second_windows
from resources.record_fields import record_datetime, record_id
from resources.registry import SourceSectionBase
from resources.source import EntitySpec, RecordMeta, SourceClient
from resources.target import RateBudget

UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # TM-A2
MAX_PAGE_SIZE = 500  # TM-A2
REQUESTS_PER_SECOND = 5.0  # TM-A2: per apikey
CALLS_PER_DAY = 5000  # TM-A2: per apikey, counted by memberflow across runs and processes


# The one declaration of Ticketmaster's entities (the section's ClassVar below reads it).
ENTITIES = (
    EntitySpec("customers", "members", "Customers (TM-A3)", id_field="customerId"),
    EntitySpec("orders", "events", "Orders (TM-A4)", id_field="orderId"),
)
_DATE_FIELDS: dict[str, str | None] = {"customers": None, "orders": "orderDate"}


@dataclass(frozen=True)
class _Entity:
    path: str
    id_field: str
    date_field: str | None
    spec: EntitySpec


_ENTITIES: dict[str, _Entity] = {
    spec.name: _Entity(spec.name, str(spec.id_field), _DATE_FIELDS[spec.name], spec)
    for spec in ENTITIES
}


class TicketmasterClient(SourceClient):
    """Reads Ticketmaster customers and orders by following HAL `next` links (TM-A2)."""

    vendor: ClassVar[str] = "ticketmaster"
    default_date_format: ClassVar[str] = UTC_FORMAT

    def __init__(
        self,
        *,
        base_url: str,
        apikey: str,
        market_code: str,
        username: str,
        password: str,
        page_size: int = 500,
        timeout: float | None = None,  # None: MEMBERFLOW_HTTP_TIMEOUT or 30 s
        max_tries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        requests_per_second: float | None = REQUESTS_PER_SECOND,  # 0 or None: no pacing
        calls_per_day: int | None = CALLS_PER_DAY,  # 0 or None: the day is not counted
    ) -> None:
        self._pace = _pace(apikey, requests_per_second, calls_per_day)
        self._http = VendorHttp(
            vendor=self.vendor,
            timeout=timeout,
            max_tries=max_tries,
            transport=transport,
            sleep=sleep,
            throttle_wait=rate_limit_reset_wait,
            secrets=[apikey, password],
            pace=self._pace,
        )
        self.calls = self._http.calls
        self._root = f"{base_url.rstrip('/')}/client-data/v1/{market_code}"
        self._apikey = apikey
        self._headers = {  # TM-A1: Basic auth beside the apikey query parameter
            **basic(username, password),
            "Accept": "application/hal+json, application/json",
        }
        self._page_size = max(1, min(page_size, MAX_PAGE_SIZE))

    # --- SourceClient --------------------------------------------------------------------------

    def entities(self) -> Sequence[EntitySpec]:
        return [e.spec for e in _ENTITIES.values()]

    def rate_budget(self) -> RateBudget | None:
        """The apikey's calls left today (TM-A2), counted across runs, when the day is paced."""
        if self._pace is None or self._pace.windows[-1].name != "day":
            return None
        return self._pace.budget()

    def check_connection(self) -> None:
        """`GET …/customers?size=1` (TM-A1)."""
        self._get(_ENTITIES["customers"], self._url("customers"), {"size": 1})

    def iter_modified(self, entity: str, since: datetime | None) -> Iterator[list[dict[str, Any]]]:
        spec = self._entity(entity)
        return self._pages(spec, self._changed_params(spec, since))

    def iter_range(self, entity: str, start: date, end: date) -> Iterator[list[dict[str, Any]]]:
        """Orders by orderDate, customers by modifiedDate (with consent), ≤366-day windows (TM4)."""
        spec = self._entity(entity)
        for window_start, window_end in date_windows(start, end):
            params: dict[str, Any] = {
                "fromDate": window_start.isoformat(),
                "toDate": window_end.isoformat(),
            }
            if spec.path == "customers":
                params["consent"] = "true"
            yield from self._pages(spec, params)

    def has_modified(self, entity: str, since: datetime | None) -> bool:
        """One call with size=1: `page.totalElements > 0` (same filters as iter_changed)."""
        spec = self._entity(entity)
        params = {**self._changed_params(spec, since), "page": 0, "size": 1}
        body = self._get(spec, self._url(spec.path), params)
        total = (body.get("page") or {}).get("totalElements")
        if total is not None:
            return int(total) > 0
        return bool(_items(body, spec.path))

    def record_meta(self, entity: str, record: dict[str, Any]) -> RecordMeta:
        """Id, modification time and business date; a ValueError naming the field when a record
        lacks one or it is not a date, so landing can quarantine just that record."""
        spec = self._entity(entity)
        business = None
        if spec.date_field is not None:
            # The vendor filters fromDate/toDate on the date of this UTC datetime (TM-A4), so the
            # partition uses the same day, keeping backfill windows and partitions aligned.
            business = record_datetime(record, spec.date_field, parse_utc).date()
        return RecordMeta(
            record_id=record_id(record, spec.id_field),
            modified=record_datetime(record, "modifiedDate", parse_utc),
            business_date=business,
        )

    def close(self) -> None:
        self._http.close()

    # --- internals -----------------------------------------------------------------------------

    def _entity(self, name: str) -> _Entity:
        spec = _ENTITIES.get(name)
        if spec is None:
            raise ValueError(f"ticketmaster has no entity {name!r}; known: {sorted(_ENTITIES)}")
        return spec

    def _url(self, path: str) -> str:
        return f"{self._root}/{path}"

    def _changed_params(self, spec: _Entity, since: datetime | None) -> dict[str, Any]:
        """TM-A3: a full customer load asks for consented customers only; an incremental one sends
        only modifiedSince so withdrawals (marketingConsent false) are seen and acted on."""
        if since is not None:
            return {"modifiedSince": format_utc(since)}
        if spec.path == "customers":
            return {"consent": "true"}
        return {}

    def _pages(self, spec: _Entity, params: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        """First page from params, then follow `_links.next.href` until absent (TM-A2)."""
        first = self._url(spec.path)
        query = {**params, "page": 0, "size": self._page_size}
        previous = [httpx.URL(first)]  # a relative href resolves against the page it came from

        def fetch(href: str | None) -> dict[str, Any]:
            if href is None:
                return self._get(spec, first, query)
            previous[0] = previous[0].join(href)
            return self._get(spec, previous[0], None)

        return paging.next_links(
            fetch,
            lambda body: _items(body, spec.path),
            lambda body: ((body.get("_links") or {}).get("next") or {}).get("href"),
        )

    def _get(
        self, spec: _Entity, url: httpx.URL | str, params: dict[str, Any] | None
    ) -> dict[str, Any]:
        """GET with apikey query (TM-A1); a `next` href keeps its own query, plus the apikey."""
        url = httpx.URL(str(url))
        if params is None:
            url = url.copy_set_param("apikey", self._apikey)
        else:
            params = {**params, "apikey": self._apikey}
        body = self._http.get_json(
            url,
            endpoint=spec.path,
            params=params,
            headers=self._headers,
        )
        if not isinstance(body, dict):
            raise VendorError(self.vendor, 200, f"{spec.path}: expected a HAL page")
        return body


def _items(body: dict[str, Any], collection: str) -> list[dict[str, Any]]:
    return list((body.get("_embedded") or {}).get(collection) or [])


def _pace(apikey: str, per_second: float | None, per_day: int | None) -> Pace | None:
    """The apikey's client-side limit (TM-A2), shared by every client of it in this process; the
    day across processes too (`<data dir>/rate_budget`): a spent day raises BudgetExhausted."""
    if not per_second:
        return None
    windows = list(per_second_windows(per_second))
    if per_day:
        windows.append(Window("day", per_day, 86400.0, wait=False))
    return shared_pace("ticketmaster", apikey, windows, margin=PER_SECOND_MARGIN_SECONDS)


def rate_limit_reset_wait(
    response: httpx.Response, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds until `Rate-Limit-Reset` (epoch milliseconds) on a 429 (TM-A2), else None."""
    if response.status_code != 429:
        return None
    raw = response.headers.get("Rate-Limit-Reset")
    try:
        reset_ms = float(raw) if raw else None
    except ValueError:
        return None
    if reset_ms is None:
        return None
    return max(reset_ms / 1000.0 - now(), 0.0)


def format_utc(moment: datetime) -> str:
    """ISO 8601 UTC with Z (TM-A2)."""
    return as_utc(moment).strftime(UTC_FORMAT)


def parse_utc(value: str) -> datetime:
    """Ticketmaster datetime text -> aware UTC; a value without offset is taken as UTC (TM-A2)."""
    return as_utc(datetime.fromisoformat(str(value)))


# --- integration file section and Dagster resource ---------------------------------------------


def _check_market_code(value: str) -> str:
    # It goes into the URL path (TM-A1), so keep it to letters, digits and underscores.
    if not value or not all(ch.isascii() and (ch.isalnum() or ch == "_") for ch in value):
        raise ValueError("expected a market code such as TM_DK (letters, digits and _)")
    return value


MarketCode = Annotated[str, AfterValidator(_check_market_code)]


class TicketmasterResource(dg.ConfigurableResource):
    """Ticketmaster settings with secrets as `dg.EnvVar`, resolved only when a client is built."""

    base_url: str
    market_code: str
    apikey: str
    username: str
    password: str
    page_size: int = 500
    requests_per_second: float | None = REQUESTS_PER_SECOND
    calls_per_day: int | None = CALLS_PER_DAY

    def client(self) -> TicketmasterClient:
        return TicketmasterClient(
            base_url=self.base_url,
            market_code=self.market_code,
            apikey=resolve_secret(self.apikey, "ticketmaster apikey") or "",
            username=resolve_secret(self.username, "ticketmaster username") or "",
            password=resolve_secret(self.password, "ticketmaster password") or "",
            page_size=self.page_size,
            requests_per_second=self.requests_per_second,
            calls_per_day=self.calls_per_day,
        )


class TicketmasterSource(SourceSectionBase):
    """`source:` section with `kind: ticketmaster`; credentials are env var names (TM-A1)."""

    entities: ClassVar[tuple[EntitySpec, ...]] = ENTITIES

    kind: Literal["ticketmaster"]
    base_url: HttpUrlStr
    market_code: MarketCode
    apikey_env: EnvVarName
    username_env: EnvVarName
    password_env: EnvVarName
    # client-side pacing per apikey (TM-A2: 5 requests/s and 5000 calls/day, counted across
    # runs); 0 or null turns each off (no per-second limit: no pacing at all)
    requests_per_second: float | None = Field(default=REQUESTS_PER_SECOND, ge=0)
    calls_per_day: int | None = Field(default=CALLS_PER_DAY, ge=0)

    def env_vars(self) -> list[str]:
        return [self.apikey_env, self.username_env, self.password_env]

    def resource(self) -> TicketmasterResource:
        return TicketmasterResource(
            base_url=self.base_url,
            market_code=self.market_code,
            apikey=dg.EnvVar(self.apikey_env),
            username=dg.EnvVar(self.username_env),
            password=dg.EnvVar(self.password_env),
            requests_per_second=self.requests_per_second,
            calls_per_day=self.calls_per_day,
        )
