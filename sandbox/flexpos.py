"""Amero/FlexPOS emulator: the POS API and the Attractions API.

The contract is designed, not documented (FP-A1..FP-A9), so the emulator is strict about it:
exact parameter names, 1-based paging with a hard pageSize cap, 366-day ranges, per-API tokens
that really expire, and ASP.NET problem details on every error. A client that drifts from the
contract fails here instead of in production.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from sandbox.emulator import Emulator
from sandbox.flexpos_lean import LeanFlexposData
from sandbox.generator import SandboxData
from sandbox.httputil import (
    basic_credentials,
    bearer_token,
    json_object,
    media_type,
    parse_urlencoded,
)
from sandbox.lean_store import LeanCollection
from sandbox.ratelimit import RateLimiter
from sandbox.store import Collection, Record

# FP-A1/FP-A2: one client id/secret pair per API (demo values, exported by `memberflow sandbox`).
FLEXPOS_CLIENT_ID = "demo-pos-client"
FLEXPOS_CLIENT_SECRET = "demo-pos-secret"
FLEXPOS_ATTRACTIONS_CLIENT_ID = "demo-attr-client"
FLEXPOS_ATTRACTIONS_CLIENT_SECRET = "demo-attr-secret"
RATE_LIMIT = 10  # FP-A8: requests per second per client id
POS = "pos"
ATTRACTIONS = "attractions"
PREFIXES = {POS: "/flexpos/pos", ATTRACTIONS: "/flexpos/attractions"}  # FP-A1
# FP-A6/FP-A7: tickets and memberships exist only on the Attractions API; FP-A8 answers 403.
RESOURCES = {POS: ("customers", "journals"), ATTRACTIONS: ("tickets", "memberships")}
COPENHAGEN = ZoneInfo("Europe/Copenhagen")
MAX_PAGE_SIZE = 500  # FP-A3
MAX_RANGE_DAYS = 366  # FP-A3: (toDate - fromDate) may be at most 366 days
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_LOCAL_FORMAT = "%Y-%m-%dT%H:%M:%S"


def now_local() -> str:
    """FP-A3 datetime for "now": Copenhagen local time, no offset, whole seconds."""
    return datetime.now(COPENHAGEN).strftime(_LOCAL_FORMAT)


@dataclass(frozen=True)
class _Token:
    api: str
    client_id: str
    expires_at: float


class FlexposState:
    """Data, issued tokens and counters of both FlexPOS APIs; all methods are thread-safe."""

    def __init__(
        self,
        data: SandboxData,
        token_lifetime: float = 3600,
        rate_limit: int | None = 10,
    ) -> None:
        self.customers: Collection | LeanCollection
        self.journals: Collection | LeanCollection
        self.tickets: Collection | LeanCollection
        if data.lean:  # records made on demand (sandbox.flexpos_lean), for a million customers
            lean = LeanFlexposData(data.seed, data.customer_count, data.days, data.today)
            self.customers, self.journals = lean.customers, lean.journals
            self.tickets, self.memberships = lean.tickets, lean.memberships
        else:
            self.customers = Collection(data.flexpos_customers, "CustomerId", "Modified")
            self.journals = Collection(data.journals, "JournalId", "Modified", "Date")
            self.tickets = Collection(data.tickets, "TicketId", "Modified", "BookingDate")
            self.memberships = Collection(
                data.memberships, "MembershipId", "Modified", "PurchaseDate"
            )
        self.clients: dict[str, tuple[str, str]] = {
            POS: (FLEXPOS_CLIENT_ID, FLEXPOS_CLIENT_SECRET),
            ATTRACTIONS: (FLEXPOS_ATTRACTIONS_CLIENT_ID, FLEXPOS_ATTRACTIONS_CLIENT_SECRET),
        }
        self.token_lifetime = token_lifetime
        self.limiter = RateLimiter(rate_limit)  # FP-A8: 10 requests/s per client id
        self.request_counts: Counter[str] = Counter()
        self.tokens_issued: Counter[str] = Counter()
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.RLock()
        # Tests of hostile data: records served verbatim on page 1 of every listing of a
        # resource, outside the indexed collection (a null id or Modified could not be sorted).
        self.raw_extras: dict[str, list[Record]] = {}

    # -- tokens (FP-A2) ---------------------------------------------------------------------
    def valid_client(self, api: str, client_id: str, client_secret: str) -> bool:
        """True when the pair is this API's own (POS credentials do not open Attractions)."""
        expected_id, expected_secret = self.clients[api]
        ok_id = secrets.compare_digest(client_id.encode(), expected_id.encode())
        return ok_id and secrets.compare_digest(client_secret.encode(), expected_secret.encode())

    def issue_token(self, api: str, client_id: str) -> str:
        """A new bearer token for `api` that expires after `token_lifetime` seconds."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = _Token(api, client_id, time.time() + self.token_lifetime)
            self.tokens_issued[api] += 1
        return token

    def token_client(self, api: str, token: str | None) -> tuple[str | None, str]:
        """(client id, "") for a live token of `api`, else (None, reason)."""
        issued = self._tokens.get(token or "")
        if issued is None or issued.api != api:
            return None, "The access token is invalid"
        if time.time() >= issued.expires_at:
            return None, "The access token expired"
        return issued.client_id, ""

    def expire_tokens(self) -> None:
        """Make every issued token expired now (tests of the client's refresh-on-401)."""
        with self._lock:
            self._tokens = {k: _Token(t.api, t.client_id, 0.0) for k, t in self._tokens.items()}

    # -- mutation API for tests ---------------------------------------------------------------
    def customer(self, customer_id: int) -> Record | None:
        """A copy of one customer, or None."""
        found = self.customers.get(customer_id)
        return dict(found) if found else None

    def upsert_customer(self, customer: Record) -> Record:
        """Create or partially update a customer; `Modified` becomes now (Copenhagen local)."""
        with self._lock:
            customer_id = customer.get("CustomerId") or (self.customers.max_id() or 999) + 1
            old = self.customers.get(customer_id)
            record = dict(old) if old else _new_customer(customer_id)
            record.update(customer)
            record["CustomerId"] = customer_id
            record["Modified"] = now_local()
            self.customers.put(record)
            return dict(record)

    def add_journal(self, journal: Record) -> Record:
        """Add or replace a journal; missing ids, dates and totals are filled in."""
        with self._lock:
            record = _new_record(self.journals, "JournalId", 500_000, journal)
            record.setdefault("JournalNo", f"J{record.get('StoreId') or 1}-{record['JournalId']}")
            record.setdefault("Date", record["Modified"])
            record.setdefault("StoreId", 1)
            record.setdefault("StoreName", "Butik København")
            record.setdefault("CustomerId", None)
            record.setdefault("Lines", [])
            amounts = [line.get("Amount", 0) for line in record["Lines"]]
            record.setdefault("TotalAmount", round(sum(amounts), 2))
            record.setdefault("TotalDiscount", 0.0)
            record.setdefault("Currency", "DKK")
            self.journals.put(record)
            return dict(record)

    def add_ticket(self, ticket: Record) -> Record:
        """Add or replace an Attractions ticket; missing fields get plausible defaults."""
        with self._lock:
            record = _new_record(self.tickets, "TicketId", 800_000, ticket)
            defaults = {
                "OrderId": record["TicketId"],
                "CustomerId": None,
                "EventId": 9999,
                "EventName": "Testforestilling",
                "EventDate": record["Modified"],
                "BookingDate": record["Modified"],
                "Channel": "Online",
                "Status": "Sold",
                "Zone": "Parket",
                "Row": "1",
                "Seat": "1",
                "ProductId": 1,
                "ProductName": "Voksen",
                "Price": 245.0,
            }
            for key, value in defaults.items():
                record.setdefault(key, value)
            self.tickets.put(record)
            return dict(record)

    def add_membership(self, membership: Record) -> Record:
        """Add or replace a membership; missing fields get plausible defaults."""
        with self._lock:
            record = _new_record(self.memberships, "MembershipId", 60_000, membership)
            today = date.today()
            defaults = {
                "CustomerId": None,
                "MembershipTypeId": 1,
                "Name": "Årskort Voksen",
                "Cardnumber": 50_000_000 + record["MembershipId"],
                "PurchaseDate": record["Modified"],
                "ValidFrom": today.isoformat(),
                "ValidTo": today.replace(year=today.year + 1).isoformat(),
                "Price": 795.0,
                "Status": "Active",
            }
            for key, value in defaults.items():
                record.setdefault(key, value)
            self.memberships.put(record)
            return dict(record)

    def counts(self) -> dict[str, int]:
        """Record counts per entity (for /_sandbox/summary)."""
        return {
            "customers": len(self.customers),
            "journals": len(self.journals),
            "tickets": len(self.tickets),
            "memberships": len(self.memberships),
        }

    def routes(self, api: str) -> list[BaseRoute]:
        """Starlette routes of one API, to be mounted at `PREFIXES[api]`."""
        handlers = _Handlers(self, api)
        return [
            Route("/oauth/token", handlers.token, methods=["POST"]),
            Route("/api/v1/customers/{customer_id}", handlers.customer, methods=["GET"]),
            Route("/api/v1/{resource}", handlers.listing, methods=["GET"]),
        ]


def _new_customer(customer_id: int) -> Record:
    now = now_local()
    return {
        "CustomerId": customer_id,
        "CustomerNo": f"K{customer_id:07d}",
        "FirstName": "",
        "LastName": "",
        "Email": None,
        "Mobile": None,
        "Address": "",
        "ZipCode": "",
        "City": "",
        "Country": "DK",
        "BirthDate": None,
        "Gender": None,
        "IsActive": True,
        "IsClubMember": 0,
        "GetsNewsletter": 0,
        "StoreId": 1,
        "Created": now,
        "Modified": now,
        "cards": [],
    }


def _new_record(
    collection: Collection | LeanCollection, id_key: str, first_id: int, given: Record
) -> Record:
    record = dict(given)
    if record.get(id_key) is None:
        record[id_key] = (collection.max_id() or first_id - 1) + 1
    record.setdefault("Modified", now_local())
    return record


# -- HTTP ----------------------------------------------------------------------------------------
def problem(
    status: int,
    title: str,
    detail: str = "",
    errors: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """FP-A8: an ASP.NET Core problem-details response."""
    body: dict[str, Any] = {
        "type": f"https://tools.ietf.org/html/rfc9110#section-15.{5 if status < 500 else 6}",
        "title": title,
        "status": status,
        "detail": detail,
        "traceId": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-00",
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status, headers=headers, media_type="application/problem+json")


class _Handlers:
    """Endpoints of one FlexPOS API bound to the shared state."""

    def __init__(self, state: FlexposState, api: str) -> None:
        self.state = state
        self.api = api

    async def token(self, request: Request) -> Response:
        """FP-A2: client-credentials grant, form body; id/secret may also come as Basic."""
        self.state.request_counts[f"{self.api}:token"] += 1
        if media_type(request) != "application/x-www-form-urlencoded":
            return JSONResponse({"error": "invalid_request"}, 400)
        form = dict(parse_urlencoded(await request.body()))
        basic = basic_credentials(request)
        client_id = form.get("client_id") or (basic[0] if basic else "")
        client_secret = form.get("client_secret") or (basic[1] if basic else "")
        if not form.get("grant_type") or not client_id:
            return JSONResponse({"error": "invalid_request"}, 400)
        if form["grant_type"] != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        if not self.state.valid_client(self.api, client_id, client_secret):
            return JSONResponse({"error": "invalid_client"}, 401)
        limited = self._rate_limited(client_id)
        if limited:
            return limited
        body = {
            "access_token": self.state.issue_token(self.api, client_id),
            "token_type": "Bearer",
            "expires_in": math.ceil(self.state.token_lifetime),
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    def _guard(self, request: Request, resource: str) -> Response | None:
        """401 (FP-A2), 429 (FP-A8) and 403 for resources of the other API (FP-A6/A7)."""
        self.state.request_counts[f"{self.api}:{resource}"] += 1
        client_id, reason = self.state.token_client(self.api, bearer_token(request))
        if client_id is None:
            challenge = f'Bearer error="invalid_token", error_description="{reason}"'
            return problem(401, "Unauthorized", reason, headers={"WWW-Authenticate": challenge})
        limited = self._rate_limited(client_id)
        if limited:
            return limited
        if resource not in RESOURCES[self.api]:
            other = ATTRACTIONS if self.api == POS else POS
            if resource in RESOURCES[other]:
                detail = f"'{resource}' is not licensed on the {self.api} API"
                return problem(403, "Forbidden", detail)
            return problem(404, "Not Found", f"Unknown resource '{resource}'")
        return None

    def _rate_limited(self, client_id: str) -> Response | None:
        decision = self.state.limiter.hit(f"{self.api}:{client_id}")
        if decision.allowed:
            return None
        headers = {"Retry-After": decision.retry_after_header}
        return problem(429, "Too Many Requests", "Rate limit exceeded", headers=headers)

    async def customer(self, request: Request) -> Response:
        """FP-A4: one customer by id."""
        refused = self._guard(request, "customers")
        if refused:
            return refused
        raw = request.path_params["customer_id"]
        found = self.state.customers.get(int(raw)) if raw.isdigit() else None
        if found is None:
            return problem(404, "Not Found", f"Customer {raw} was not found")
        return JSONResponse(found)

    async def listing(self, request: Request) -> Response:
        """FP-A3..FP-A7: a filtered, paged collection in stable id order."""
        resource = request.path_params["resource"]
        refused = self._guard(request, resource)
        if refused:
            return refused
        query = _Query(request)
        page, size = query.paging()
        collection: Collection | LeanCollection = getattr(self.state, resource)
        modified = query.modified_since()
        where, key = _FILTERS[resource](query)
        from_date, to_date = query.date_range() if resource != "customers" else (None, None)
        if query.errors:
            return problem(400, "One or more validation errors occurred.", errors=query.errors)
        cache_key = (key, modified, from_date, to_date)
        rows = collection.select(cache_key, modified, from_date, to_date, where=where)
        items = rows[(page - 1) * size : page * size]
        if page == 1:
            items = items + self.state.raw_extras.get(resource, [])
        envelope = {"Items": items, "Page": page, "PageSize": size, "TotalCount": len(rows)}
        return JSONResponse(envelope)


class _Query:
    """Validates query parameters the ASP.NET way, collecting errors per parameter."""

    def __init__(self, request: Request) -> None:
        self.params = request.query_params
        self.errors: dict[str, list[str]] = {}

    def _error(self, name: str, message: str) -> None:
        self.errors.setdefault(name, []).append(message)

    def integer(self, name: str, default: int | None, low: int, high: int | None = None) -> Any:
        raw = self.params.get(name)
        if raw is None:
            return default
        if not re.fullmatch(r"-?\d+", raw):
            self._error(name, f"The value '{raw}' is not valid.")
            return default
        value = int(raw)
        if value < low or (high is not None and value > high):
            limit = f"between {low} and {high}" if high is not None else f"at least {low}"
            self._error(name, f"The field {name} must be {limit}.")
        return value

    def paging(self) -> tuple[int, int]:
        """FP-A3: `page` 1-based, `pageSize` default 100, max 500."""
        page = self.integer("page", 1, 1)
        size = self.integer("pageSize", 100, 1, MAX_PAGE_SIZE)
        return page, size

    def modified_since(self) -> str | None:
        """FP-A3: compared as Copenhagen local time; an offset, if sent, is converted."""
        raw = self.params.get("modifiedSince")
        if raw is None:
            return None
        try:
            parsed = datetime.fromisoformat(raw.strip())
        except ValueError:
            self._error("modifiedSince", f"The value '{raw}' is not valid.")
            return None
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(COPENHAGEN).replace(tzinfo=None)
        return parsed.strftime(_LOCAL_FORMAT)

    def date_range(self) -> tuple[str | None, str | None]:
        """FP-A3: `fromDate`/`toDate` YYYY-MM-DD, inclusive, at most 366 days apart."""
        start, end = self._date("fromDate"), self._date("toDate")
        if start:  # fromDate alone runs to today, so it too must be within a year
            last = date.fromisoformat(end or datetime.now(COPENHAGEN).date().isoformat())
            span = (last - date.fromisoformat(start)).days
            if span < 0:
                self._error("toDate", "toDate must not be before fromDate.")
            elif span > MAX_RANGE_DAYS:
                self._error("toDate", f"The date range must not exceed {MAX_RANGE_DAYS} days.")
        return start, end

    def _date(self, name: str) -> str | None:
        raw = self.params.get(name)
        if raw is None:
            return None
        try:
            if not _DATE.match(raw):
                raise ValueError(raw)
            date.fromisoformat(raw)
        except ValueError:
            self._error(name, f"The value '{raw}' is not valid; use YYYY-MM-DD.")
            return None
        return raw

    def flag(self, name: str, allowed: dict[str, Any]) -> Any:
        """A switch such as `isActive=true` or `isClubMember=1`; None when not sent."""
        raw = self.params.get(name)
        if raw is None:
            return None
        if raw.lower() not in allowed:
            self._error(name, f"The value '{raw}' is not valid.")
            return None
        return allowed[raw.lower()]


_BOOL = {"true": True, "false": False}
_BIT = {"1": 1, "0": 0}
Where = dict[str, Any]  # field -> the value it must equal


def _customer_filter(query: _Query) -> tuple[Where, tuple[Any, ...]]:
    """FP-A4: `isActive=true`, `isClubMember=1`, `getsNewsletter=1`, combined with AND."""
    wanted = {
        "IsActive": query.flag("isActive", _BOOL),
        "IsClubMember": query.flag("isClubMember", _BIT),
        "GetsNewsletter": query.flag("getsNewsletter", _BIT),
    }
    active = {k: v for k, v in wanted.items() if v is not None}
    return active, ("customers", tuple(sorted(active.items())))


def _id_filter(resource: str, names: tuple[str, ...]) -> Callable[[_Query], Any]:
    """FP-A5..FP-A7: optional `customerId` (and `storeId` on journals)."""

    def build(query: _Query) -> tuple[Where, tuple[Any, ...]]:
        wanted = {name: query.integer(name, None, 0) for name in names}
        active = {name[0].upper() + name[1:]: v for name, v in wanted.items() if v is not None}
        return active, (resource, tuple(sorted(active.items())))

    return build


_FILTERS: dict[str, Callable[[_Query], tuple[Where, tuple[Any, ...]]]] = {
    "customers": _customer_filter,
    "journals": _id_filter("journals", ("customerId", "storeId")),
    "tickets": _id_filter("tickets", ("customerId",)),
    "memberships": _id_filter("memberships", ("customerId",)),
}


def build(data: SandboxData, rate_limits: bool) -> FlexposState:
    """Both FlexPOS APIs over the sandbox's generated customers and sales."""
    return FlexposState(data, rate_limit=RATE_LIMIT if rate_limits else None)


def mounts(state: FlexposState) -> list[BaseRoute]:
    """Each API under its own prefix, as at two hosts."""
    return [Mount(PREFIXES[api], routes=state.routes(api)) for api in (POS, ATTRACTIONS)]


def control_routes(state: FlexposState) -> list[BaseRoute]:
    """`POST /_sandbox/flexpos/customers`: a customer created or changed at the till;
    `POST /_sandbox/flexpos/customers/batch` with `{"customers": [...]}`: many at once (a
    benchmark's 1%-changed run), answered with how many were written."""

    async def upsert_customer(request: Request) -> Response:
        return JSONResponse(state.upsert_customer(await json_object(request)))

    async def upsert_customers(request: Request) -> Response:
        given = (await json_object(request)).get("customers")
        if not isinstance(given, list) or not all(isinstance(c, dict) for c in given):
            return JSONResponse({"error": "customers must be a list of objects"}, status_code=400)
        for customer in given:
            state.upsert_customer(customer)
        return JSONResponse({"upserted": len(given)})

    return [
        Route("/customers", upsert_customer, methods=["POST"]),
        Route("/customers/batch", upsert_customers, methods=["POST"]),
    ]


EMULATOR = Emulator(
    name="flexpos",
    build=build,
    routes=mounts,
    credentials={
        "FLEXPOS_CLIENT_ID": FLEXPOS_CLIENT_ID,
        "FLEXPOS_CLIENT_SECRET": FLEXPOS_CLIENT_SECRET,
        "FLEXPOS_ATTRACTIONS_CLIENT_ID": FLEXPOS_ATTRACTIONS_CLIENT_ID,
        "FLEXPOS_ATTRACTIONS_CLIENT_SECRET": FLEXPOS_ATTRACTIONS_CLIENT_SECRET,
    },
    summary=lambda state: state.counts(),
    control_routes=control_routes,
)
