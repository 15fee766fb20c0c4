"""Ticketmaster client-data emulator (TM-A1..TM-A5).

The contract borrows Ticketmaster's public conventions (apikey query parameter, HAL paging,
Apigee-style faults and quota headers); the emulator enforces them exactly, including the
order of the auth checks, so a client that mixes them up is caught in tests.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
from collections import Counter
from datetime import UTC, date, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from sandbox.emulator import Emulator
from sandbox.generator import SandboxData
from sandbox.httputil import basic_credentials, json_object
from sandbox.ratelimit import Decision, RateLimiter
from sandbox.store import Collection, Record

# TM-A1: apikey + username/password (demo values), granted one market.
TICKETMASTER_APIKEY = "demo-tm-key"
TICKETMASTER_USERNAME = "demo-tm-user"
TICKETMASTER_PASSWORD = "demo-tm-pass"
TM_MARKET = "TM_DK"
RATE_LIMIT = 5  # TM-A2: requests per second per apikey
DAILY_QUOTA = 5000  # TM-A2: calls per day per apikey
PREFIX = "/ticketmaster"  # TM-A1
MAX_SIZE = 500  # TM-A2
MAX_RANGE_DAYS = 366  # TM-A2: (toDate - fromDate) may be at most 366 days
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
INVALID_APIKEY = {
    "fault": {"faultstring": "Invalid ApiKey", "detail": {"errorcode": "oauth.v2.InvalidApiKey"}}
}
QUOTA_VIOLATION = {
    "fault": {
        "faultstring": "Rate limit quota violation. Quota limit exceeded.",
        "detail": {"errorcode": "policies.ratelimit.QuotaViolation"},
    }
}
BAD_RANGE = {
    "errors": [
        {
            "code": "INVALID_DATE_RANGE",
            "detail": "Date range must not exceed one year",
            "status": "400",
        }
    ]
}


def now_utc() -> str:
    """TM-A2 datetime for "now": ISO 8601 UTC with `Z`, whole seconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error_body(status: int, code: str, detail: str) -> dict[str, Any]:
    """TM-A5: `{"errors": [{"code", "detail", "status"}]}`."""
    return {"errors": [{"code": code, "detail": detail, "status": str(status)}]}


class TicketmasterError(Exception):
    """A refused request with its status and JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


def _invalid(detail: str) -> TicketmasterError:
    return TicketmasterError(400, error_body(400, "INVALID_PARAMETER", detail))


class TicketmasterState:
    """Customers, orders, credentials and quotas of one Ticketmaster account; thread-safe."""

    def __init__(
        self,
        data: SandboxData,
        rate_limit: int | None = 5,
        daily_quota: int | None = 5000,
    ) -> None:
        self.customers = Collection(data.tm_customers, "customerId", "modifiedDate", "modifiedDate")
        self.orders = Collection(data.tm_orders, "orderId", "modifiedDate", "orderDate")
        self.apikey = TICKETMASTER_APIKEY
        self.username = TICKETMASTER_USERNAME
        self.password = TICKETMASTER_PASSWORD
        self.markets = {TM_MARKET}
        self.limiter = RateLimiter(rate_limit, 1.0)  # TM-A2: 5 req/s per apikey
        self.quota = RateLimiter(daily_quota, 86400.0)  # TM-A2: 5000 calls/day per apikey
        self.request_counts: Counter[str] = Counter()
        self._lock = threading.RLock()

    # -- mutation API for tests ----------------------------------------------------------------
    def customer(self, customer_id: str) -> Record | None:
        """A copy of one customer, or None."""
        found = self.customers.get(customer_id)
        return dict(found) if found else None

    def upsert_customer(self, customer: Record) -> Record:
        """Create or partially update a customer; bumps modifiedDate (and consent date)."""
        with self._lock:
            customer_id = customer.get("customerId") or _next_id(self.customers, "TMC", 100_001)
            old = self.customers.get(customer_id)
            now = now_utc()
            record = dict(old) if old else _new_customer(customer_id, now)
            consent_changed = "marketingConsent" in customer and customer[
                "marketingConsent"
            ] != record.get("marketingConsent")
            record.update(customer)
            record["customerId"] = customer_id
            if consent_changed and "marketingConsentDate" not in customer:
                record["marketingConsentDate"] = now
            record["modifiedDate"] = now
            self.customers.put(record)
            return dict(record)

    def withdraw_consent(self, customer_id: str) -> Record:
        """TM-A3: marketingConsent false; marketingConsentDate and modifiedDate become now."""
        with self._lock:
            if self.customers.get(customer_id) is None:
                raise KeyError(customer_id)
            now = now_utc()
            change = {
                "customerId": customer_id,
                "marketingConsent": False,
                "marketingConsentDate": now,
            }
            return self.upsert_customer(change)

    def add_order(self, order: Record) -> Record:
        """Add or replace an order; missing ids, dates and totals are filled in."""
        with self._lock:
            record = dict(order)
            if not record.get("orderId"):
                record["orderId"] = _next_id(self.orders, "ORD", 3_000_001)
            now = now_utc()
            customer = self.customers.get(record.get("customerId"))
            tickets = record.setdefault("tickets", [])
            defaults = {
                "customerId": None,
                "email": customer["email"] if customer else None,
                "orderDate": now,
                "channel": "web",
                "currency": "DKK",
                "totalAmount": round(sum(t.get("price", 0) for t in tickets), 2),
                "status": "completed",
                "modifiedDate": now,
            }
            for key, value in defaults.items():
                record.setdefault(key, value)
            self.orders.put(record)
            return dict(record)

    def counts(self) -> dict[str, int]:
        """Record counts (for /_sandbox/summary)."""
        return {"customers": len(self.customers), "orders": len(self.orders)}

    def routes(self) -> list[BaseRoute]:
        """Routes to mount at PREFIX."""
        h = _Handlers(self)
        base = "/client-data/v1/{market}"
        return [
            Route(base + "/customers", h.wrap("customers", h.customers), methods=["GET"]),
            Route(base + "/customers/{customer_id}", h.wrap("customer", h.one), methods=["GET"]),
            Route(base + "/orders", h.wrap("orders", h.orders), methods=["GET"]),
        ]


def _next_id(collection: Collection, prefix: str, first: int) -> str:
    highest = collection.max_id()
    digits = str(highest)[len(prefix) :] if highest else ""
    number = int(digits) + 1 if digits.isdigit() else first + len(collection)
    return f"{prefix}{number}"


def _new_customer(customer_id: str, now: str) -> Record:
    return {
        "customerId": customer_id,
        "email": None,
        "mobile": None,
        "firstName": "",
        "lastName": "",
        "birthDate": None,
        "gender": "U",
        "address": {"line1": "", "postalCode": "", "city": "", "country": "DK"},
        "language": "da",
        "marketingConsent": False,
        "marketingConsentDate": None,
        "smsConsent": False,
        "createdDate": now,
        "modifiedDate": now,
    }


class _Handlers:
    """Endpoints; `wrap` applies TM-A1 auth and TM-A2 quota in the documented order."""

    def __init__(self, state: TicketmasterState) -> None:
        self.state = state

    def wrap(self, kind: str, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            self.state.request_counts[kind] += 1
            apikey = request.query_params.get("apikey", "")
            if not secrets.compare_digest(apikey.encode(), self.state.apikey.encode()):
                return JSONResponse(INVALID_APIKEY, 401)
            headers, refused = self._quota(apikey)
            if refused is not None:
                return refused
            try:
                self._check_login(request)
                if request.path_params["market"] not in self.state.markets:
                    body = error_body(403, "FORBIDDEN", "Market not allowed")
                    raise TicketmasterError(403, body)
                response = await handler(request)
            except TicketmasterError as error:
                response = JSONResponse(error.body, error.status)
            response.headers.update(headers)
            return response

        return endpoint

    def _quota(self, apikey: str) -> tuple[dict[str, str], Response | None]:
        """TM-A2: 5/s and 5000/day; Rate-Limit headers on every answer, 429 when over."""
        second = self.state.limiter.hit(apikey)
        daily = self.state.quota.hit(apikey) if second.allowed else None
        headers = _quota_headers(daily or second, self.state.quota.limit)
        refused = second if not second.allowed else daily if not daily.allowed else None
        if refused is None:
            return headers, None
        headers["Rate-Limit-Reset"] = str(int(refused.reset_at * 1000))
        headers["Retry-After"] = refused.retry_after_header
        return headers, JSONResponse(QUOTA_VIOLATION, 429, headers=headers)

    def _check_login(self, request: Request) -> None:
        creds = basic_credentials(request)
        user_ok = creds is not None and secrets.compare_digest(
            creds[0].encode(), self.state.username.encode()
        )
        if not (
            user_ok and secrets.compare_digest(creds[1].encode(), self.state.password.encode())
        ):
            body = error_body(401, "UNAUTHORIZED", "Invalid credentials")
            raise TicketmasterError(401, body)

    async def customers(self, request: Request) -> Response:
        """TM-A3: consented/changed customers, HAL-paged."""
        query = _Query(request)
        page, size = query.paging()
        modified = query.modified_since()
        start, end = query.date_range()
        consent = query.params.get("consent")
        if consent not in (None, "true", "false"):
            raise _invalid("consent must be true or false")
        email = (query.params.get("email") or "").strip().lower() or None

        def keep(record: Record) -> bool:
            if consent is not None and record.get("marketingConsent") != (consent == "true"):
                return False
            return email is None or (record.get("email") or "").lower() == email

        key = ("customers", consent, email, modified, start, end)
        rows = self.state.customers.select(key, modified, start, end, keep)
        return _hal(request, "customers", rows, page, size)

    async def orders(self, request: Request) -> Response:
        """TM-A4: orders by orderDate range or modifiedSince, optional customerId."""
        query = _Query(request)
        page, size = query.paging()
        modified = query.modified_since()
        start, end = query.date_range()
        customer_id = query.params.get("customerId")

        def keep(record: Record) -> bool:
            return customer_id is None or record.get("customerId") == customer_id

        key = ("orders", customer_id, modified, start, end)
        rows = self.state.orders.select(key, modified, start, end, keep)
        return _hal(request, "orders", rows, page, size)

    async def one(self, request: Request) -> Response:
        """TM-A3: one customer by id."""
        customer_id = request.path_params["customer_id"]
        found = self.state.customers.get(customer_id)
        if found is None:
            detail = f"Customer {customer_id} not found"
            raise TicketmasterError(404, error_body(404, "NOT_FOUND", detail))
        return JSONResponse(found)


def _quota_headers(decision: Decision, daily_limit: int | None) -> dict[str, str]:
    if daily_limit is None or decision.limit is None:
        return {}
    remaining = decision.remaining if decision.limit == daily_limit else None
    return {
        "Rate-Limit": str(daily_limit),
        "Rate-Limit-Available": str(remaining if remaining is not None else 0),
        "Rate-Limit-Reset": str(int(decision.reset_at * 1000)),
    }


def _hal(request: Request, collection: str, rows: list[Record], page: int, size: int) -> Response:
    """TM-A2: `_embedded`, `_links` (next only when another page exists) and `page`."""
    items = rows[page * size : (page + 1) * size]
    links: dict[str, Any] = {"self": {"href": str(request.url)}}
    if (page + 1) * size < len(rows):
        links["next"] = {"href": str(request.url.include_query_params(page=page + 1))}
    if page > 0:
        links["prev"] = {"href": str(request.url.include_query_params(page=page - 1))}
    body = {
        "_embedded": {collection: items},
        "_links": links,
        "page": {
            "size": size,
            "totalElements": len(rows),
            "totalPages": math.ceil(len(rows) / size),
            "number": page,
        },
    }
    return JSONResponse(body)


class _Query:
    """TM-A2 parameter validation."""

    def __init__(self, request: Request) -> None:
        self.params = request.query_params

    def _int(self, name: str, default: int, low: int, high: int | None = None) -> int:
        raw = self.params.get(name)
        if raw is None:
            return default
        if not re.fullmatch(r"-?\d+", raw):
            raise _invalid(f"{name} must be an integer")
        value = int(raw)
        if value < low or (high is not None and value > high):
            raise _invalid(
                f"{name} must be between {low} and {high}" if high else f"{name} < {low}"
            )
        return value

    def paging(self) -> tuple[int, int]:
        """`page` 0-based, `size` default 100, max 500."""
        return self._int("page", 0, 0), self._int("size", 100, 1, MAX_SIZE)

    def modified_since(self) -> str | None:
        """ISO 8601 with `Z` or an offset; a value without a zone is refused (TM-A2)."""
        raw = self.params.get("modifiedSince")
        if raw is None:
            return None
        try:
            parsed = datetime.fromisoformat(raw.strip())
        except ValueError as error:
            raise _invalid(f"modifiedSince is not ISO 8601: {raw}") from error
        if parsed.tzinfo is None:
            raise _invalid("modifiedSince must be UTC, e.g. 2024-05-01T10:00:00Z")
        return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def date_range(self) -> tuple[str | None, str | None]:
        """`fromDate`/`toDate` inclusive; fromDate <= toDate and at most 366 days apart."""
        start, end = self._date("fromDate"), self._date("toDate")
        if start:
            last = date.fromisoformat(end) if end else datetime.now(UTC).date()
            span = (last - date.fromisoformat(start)).days
            if span < 0 or span > MAX_RANGE_DAYS:
                raise TicketmasterError(400, BAD_RANGE)
        return start, end

    def _date(self, name: str) -> str | None:
        raw = self.params.get(name)
        if raw is None:
            return None
        try:
            if not _DATE.match(raw):
                raise ValueError(raw)
            date.fromisoformat(raw)
        except ValueError as error:
            raise _invalid(f"{name} must be YYYY-MM-DD") from error
        return raw


def build(data: SandboxData, rate_limits: bool) -> TicketmasterState:
    """One account over the sandbox's generated ticket customers and orders."""
    if not rate_limits:
        return TicketmasterState(data, None, None)
    return TicketmasterState(data, RATE_LIMIT, DAILY_QUOTA)


def control_routes(state: TicketmasterState) -> list[BaseRoute]:
    """`POST /_sandbox/ticketmaster/withdraw-consent {customer_id}`: the customer withdrew
    marketing consent (TM-A3); 404 for an unknown customer."""

    async def withdraw(request: Request) -> Response:
        body = await json_object(request)
        try:
            customer = state.withdraw_consent(str(body["customer_id"]))
        except KeyError as error:
            return JSONResponse({"error": f"unknown customer {error}"}, 404)
        return JSONResponse(customer)

    return [Route("/withdraw-consent", withdraw, methods=["POST"])]


EMULATOR = Emulator(
    name="ticketmaster",
    build=build,
    routes=lambda state: [Mount(PREFIX, routes=state.routes())],
    credentials={
        "TICKETMASTER_APIKEY": TICKETMASTER_APIKEY,
        "TICKETMASTER_USERNAME": TICKETMASTER_USERNAME,
        "TICKETMASTER_PASSWORD": TICKETMASTER_PASSWORD,
    },
    summary=lambda state: state.counts(),
    control_routes=control_routes,
)
