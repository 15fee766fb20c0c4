"""Axle-CRM emulator: clients with upsert, batch and delete (AX-A1..AX-A4).

No public Axle API exists, so this serves memberflow's designed contract, as strictly as it reads:
every AX-A2 field is type-checked on write (a mapping mistake surfaces as the 422 a strict server
would give instead of being stored), unknown fields and query parameters are refused, accounts are
isolated by key, and every request is recorded (method, path, status) so tests can count calls.
Axle is a target, so the emulator starts with no clients; nothing here reads the generated data.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from sandbox.emulator import Emulator
from sandbox.generator import SandboxData
from sandbox.httputil import bearer_token, media_type
from sandbox.ratelimit import RateLimiter

PREFIX = "/axle/api/v1"  # AX-A1
AXLE_API_KEY = "demo-axle-key"
AXLE_OTHER_API_KEY = "other-axle-key"  # a second account proves isolation
ACCOUNTS = {
    AXLE_API_KEY: ("acc_demo", "Demo Axle account"),
    AXLE_OTHER_API_KEY: ("acc_other", "Other Axle account"),
}
RATE_LIMIT = 5  # AX-A4: requests per second per key
MAX_LIMIT = 500  # AX-A3: `limit` of GET /clients
MAX_BATCH = 500  # AX-A3: clients per POST /clients/batch
DEFAULT_LIMIT = 100  # [I] not in the contract
MATCH_KEYS = ("phone", "external_id")  # AX-A3
# [I] Axle is a Russian CRM: its own timestamps carry Moscow's offset, so a client that assumes
# UTC or compares the strings instead of the instants is caught here, not in production.
MOSCOW = timezone(timedelta(hours=3))

_PHONE = re.compile(r"^\+(\d{8,15})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
CARD_KEYS = ("source", "user_id", "barcode", "template", "wallet_link")  # AX-A2 `cards`
READ_ONLY = ("id", "created_at", "updated_at")  # AX-A2: set by Axle


class AxleError(Exception):
    """A refused request: AX-A4 status, code, message and optional per-field details."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    @property
    def error(self) -> dict[str, Any]:
        """The inner `{"code", "message", "details"?}` object (also a batch item's `error`)."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = dict(self.details)
        return body


def invalid_request(message: str, details: dict[str, str] | None = None) -> AxleError:
    return AxleError(400, "invalid_request", message, details)


UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "Invalid API key"}}  # AX-A1


# -- AX-A2 field checks: each returns an error message or None ------------------------------------
Check = Callable[[Any], str | None]


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _non_empty_string(value: Any) -> str | None:
    return _string(value) or (None if value.strip() else "must not be empty")


def _phone(value: Any) -> str | None:
    """E.164: `+` and 8-15 digits; a Russian (+7) number has exactly 11 digits."""
    if not isinstance(value, str) or not (matched := _PHONE.match(value)):
        return "must be E.164: '+' followed by 8 to 15 digits"
    if value.startswith("+7") and len(matched.group(1)) != 11:
        return "a +7 number must have exactly 11 digits"
    return None


def _email(value: Any) -> str | None:
    # [I] the contract types email only as a string; an address without `@` and domain is refused
    return _string(value) or (None if _EMAIL.match(value) else "must be an email address")


def _gender(value: Any) -> str | None:
    return None if value in ("m", "f") else "must be 'm', 'f' or null"


def parse_datetime(value: Any) -> datetime | None:
    """An ISO 8601 datetime with an offset (`Z` or `±HH:MM`), or None when it is not one."""
    if not isinstance(value, str) or not _DATETIME.match(value):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _datetime(value: Any) -> str | None:
    if parse_datetime(value) is None:
        return "must be an ISO 8601 datetime with an offset, e.g. 2026-03-18T12:00:00+03:00"
    return None


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be a JSON boolean"


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a JSON number"
    return None if math.isfinite(value) else "must be a finite number"


def _integer(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"


def _tags(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        return "must be an array of strings"
    return None


def _nullable(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _birthday(value: Any, today: date | None = None) -> str | None:
    """AX-A4: a valid `YYYY-MM-DD` date, and not one in the future."""
    if not isinstance(value, str) or not _DATE.match(value):
        return "must be a date as YYYY-MM-DD"
    try:
        born = date.fromisoformat(value)
    except ValueError:
        return "is not a valid calendar date"
    return "is in the future" if born > (today or date.today()) else None


@dataclass(frozen=True)
class FieldSpec:
    """One writable AX-A2 field: how it is checked and what a new client holds when not sent.

    [I] The contract does not say which fields a create needs: only the match key is required;
    the rest start as null, false, 0 or empty, so an unsent consent is never a consent (TX4).
    """

    check: Check
    default: Any = None


FIELDS: dict[str, FieldSpec] = {
    "external_id": FieldSpec(_non_empty_string),
    "phone": FieldSpec(_phone),
    "email": FieldSpec(_nullable(_email)),
    "first_name": FieldSpec(_string),
    "last_name": FieldSpec(_string),
    "middle_name": FieldSpec(_string),
    "gender": FieldSpec(_nullable(_gender)),
    "birthday": FieldSpec(_nullable(_birthday)),  # `validate_client` passes the clock's today
    "card_installed_at": FieldSpec(_nullable(_datetime)),
    "last_visit_at": FieldSpec(_nullable(_datetime)),
    "consent_mailing": FieldSpec(_boolean, False),  # TX4: no consent unless given
    "push_allowed": FieldSpec(_boolean, False),
    "bonus_balance": FieldSpec(_number, 0),
    "discount_percent": FieldSpec(_number, 0),
    "loyalty_level": FieldSpec(_nullable(_string)),
    "visits_total": FieldSpec(_integer, 0),
    "purchases_total": FieldSpec(_number, 0),
    "cards": FieldSpec(lambda value: None, []),  # checked entry by entry in `_check_cards`
    "tags": FieldSpec(_tags, []),
}
CLIENT_KEYS = ("id", *FIELDS, "created_at", "updated_at")  # the order of a client object


def _check_cards(value: Any) -> dict[str, str]:
    """AX-A2 `cards`: objects of exactly CARD_KEYS; one entry per (`source`, `user_id`)."""
    if not isinstance(value, list):
        return {"cards": "must be an array of card objects"}
    problems: dict[str, str] = {}
    seen: set[tuple[str, Any]] = set()
    for index, card in enumerate(value):
        where = f"cards[{index}]"
        if not isinstance(card, dict):
            problems[where] = "must be an object"
            continue
        card_problems = _check_card(where, card)
        problems |= card_problems
        if card_problems:
            continue  # a key of wrong types (say a list) cannot be compared, nor needs to be
        key = card_key(card)
        if key in seen:
            problems[where] = "repeats an earlier card with the same source and user_id"
        seen.add(key)
    return problems


def _check_card(where: str, card: dict[str, Any]) -> dict[str, str]:
    """[I] every entry carries the five keys AX-A2 lists; barcode, template and wallet_link may
    be null (a pass without a wallet link), but a forgotten key is a mapping mistake."""
    problems = {f"{where}.{name}": "unknown field" for name in card if name not in CARD_KEYS}
    problems |= {f"{where}.{name}": "is required" for name in CARD_KEYS if name not in card}
    if "source" in card and (message := _non_empty_string(card["source"])):
        problems[f"{where}.source"] = message
    user_id = card.get("user_id")
    # [I] the contract does not type user_id: Teyca's is an int, other sources may use strings.
    # 17145 and "17145" are different keys here, so a client that mixes them leaves two cards.
    if "user_id" in card and not (
        (isinstance(user_id, int) and not isinstance(user_id, bool))
        or (isinstance(user_id, str) and user_id.strip())
    ):
        problems[f"{where}.user_id"] = "must be an integer or a non-empty string"
    for name in ("barcode", "template", "wallet_link"):
        if name in card and (message := _nullable(_string)(card[name])):
            problems[f"{where}.{name}"] = message
    return problems


def card_key(card: dict[str, Any]) -> tuple[str, Any]:
    """AX-A3: cards are merged by (`source`, `user_id`); the type of user_id counts."""
    user_id = card.get("user_id")
    return (str(card.get("source")), (type(user_id).__name__, user_id))


def validate_client(raw: Any, today: date | None = None) -> dict[str, Any]:
    """The AX-A2 fields of one client as sent: 400 for a wrong shape, 422 for wrong values."""
    if not isinstance(raw, dict):
        raise invalid_request("client must be a JSON object")
    read_only = {name: "is set by Axle and cannot be written" for name in raw if name in READ_ONLY}
    unknown = {
        name: "unknown field" for name in raw if name not in FIELDS and name not in READ_ONLY
    }
    if read_only or unknown:
        raise invalid_request("client has fields Axle does not accept", read_only | unknown)
    problems: dict[str, str] = {}
    for name, value in raw.items():
        if name == "cards":
            problems |= _check_cards(value)
        elif name == "birthday" and value is not None:
            if message := _birthday(value, today):
                problems[name] = message
        elif message := FIELDS[name].check(value):
            problems[name] = message
    if problems:
        raise AxleError(422, "validation_failed", "client has invalid fields", problems)
    return json.loads(json.dumps(raw))  # a deep copy the caller cannot change afterwards


# -- state ----------------------------------------------------------------------------------------
@dataclass
class _Client:
    id: str
    seq: int
    fields: dict[str, Any]
    created: float  # epoch seconds
    updated: float


@dataclass
class _Account:
    id: str
    name: str
    clients: dict[str, _Client] = field(default_factory=dict)
    seq: int = 0


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the emulator answered it, for call counting in tests."""

    method: str
    path: str
    status: int
    account: str | None  # the account id, None when the key was refused


class AxleState:
    """Accounts, their clients and the recorded traffic; every public method is thread-safe."""

    def __init__(
        self, rate_limit: int | None = RATE_LIMIT, clock: Callable[[], float] = time.time
    ) -> None:
        self.clock = clock
        self.accounts = {key: _Account(*account) for key, account in ACCOUNTS.items()}
        self.limiter = RateLimiter(rate_limit, 1.0, clock)  # AX-A4; tests pass a fake clock
        self._requests: list[RecordedRequest] = []
        self._lock = threading.RLock()

    # -- inspection and seeding API for tests ---------------------------------------------------
    def clients(self, api_key: str = AXLE_API_KEY) -> list[dict[str, Any]]:
        """Every client of an account as the API shows it, in creation order."""
        with self._lock:
            return [self._json(c) for c in self._account(api_key).clients.values()]

    def client_by_phone(self, phone: str, api_key: str = AXLE_API_KEY) -> dict[str, Any] | None:
        """The first client with exactly this E.164 phone, or None."""
        return self._first(api_key, "phone", phone)

    def client_by_external_id(
        self, external_id: str, api_key: str = AXLE_API_KEY
    ) -> dict[str, Any] | None:
        """The first client with this external_id, or None."""
        return self._first(api_key, "external_id", external_id)

    def add_client(
        self, fields: dict[str, Any], api_key: str = AXLE_API_KEY, allow_shared_phone: bool = False
    ) -> dict[str, Any]:
        """Create a client directly (validated like the API), e.g. one made in Axle's own UI.

        `allow_shared_phone` seeds a duplicate phone the API itself would refuse, the way a base
        imported before merging would hold one, so the upsert's 409 on two matches can be shown.
        """
        with self._lock:
            account = self._account(api_key)
            values = validate_client(fields, self._today())
            if not allow_shared_phone:
                self._refuse_shared_phone(account, values.get("phone"), None)
            return self._json(self._create(account, values))

    def requests(self) -> list[RecordedRequest]:
        """Every request received, in order."""
        with self._lock:
            return list(self._requests)

    def request_count(self, method: str | None = None, path: str | None = None) -> int:
        """Requests with this method and/or path below PREFIX (e.g. `/clients/batch`)."""
        wanted = None if path is None else PREFIX + path
        with self._lock:
            return sum(
                1
                for r in self._requests
                if (method is None or r.method == method) and (wanted is None or r.path == wanted)
            )

    def reset(self) -> None:
        """Forget every client, recorded request and counted rate-limit hit."""
        with self._lock:
            for account in self.accounts.values():
                account.clients.clear()
            self._requests.clear()
            self.limiter.reset()

    def counts(self) -> dict[str, Any]:
        """Clients per account and requests received (for /_sandbox/summary)."""
        with self._lock:
            return {
                "clients": {a.id: len(a.clients) for a in self.accounts.values()},
                "requests": len(self._requests),
            }

    # -- the operations behind the endpoints ----------------------------------------------------
    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def account_id(self, api_key: str | None) -> str | None:
        """The account a key opens, or None (AX-A1)."""
        account = self.accounts.get(api_key or "")
        return account.id if account else None

    def account(self, api_key: str) -> tuple[str, str]:
        """(id, name) of the key's account, for GET /ping."""
        found = self._account(api_key)
        return found.id, found.name

    def list_clients(
        self, api_key: str, filters: dict[str, Any], limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of the account's clients matching every filter, and the total matching."""
        filters = dict(filters)
        since: datetime | None = filters.pop("updated_since", None)
        with self._lock:
            matching = [
                c
                for c in self._account(api_key).clients.values()
                if all(_matches(c.fields.get(k), k, v) for k, v in filters.items())
                and (since is None or c.updated >= since.timestamp())
            ]
            return [self._json(c) for c in matching[offset : offset + limit]], len(matching)

    def get_client(self, api_key: str, client_id: str) -> dict[str, Any]:
        with self._lock:
            return self._json(self._client(api_key, client_id))

    def delete_client(self, api_key: str, client_id: str) -> None:
        with self._lock:
            self._client(api_key, client_id)
            del self._account(api_key).clients[client_id]

    def upsert(self, api_key: str, match_by: str, raw: Any) -> tuple[str, str]:
        """AX-A3 upsert of one client: (id, "created" | "updated"), or an AxleError."""
        if isinstance(raw, dict) and raw.get(match_by) is None:
            raise invalid_request(
                f"client.{match_by} is required when match_by is {match_by}",
                {match_by: "is required"},
            )
        with self._lock:
            account = self._account(api_key)
            values = validate_client(raw, self._today())
            found = [
                c for c in account.clients.values() if c.fields.get(match_by) == values[match_by]
            ]
            if len(found) > 1:
                raise AxleError(
                    409,
                    "conflict",
                    f"{len(found)} clients match this {match_by}",
                    {match_by: "matches more than one client"},
                )
            existing = found[0] if found else None
            self._refuse_shared_phone(account, values.get("phone"), existing)
            if existing is None:
                return self._create(account, values).id, "created"
            self._update(existing, values)
            return existing.id, "updated"

    # -- internals ------------------------------------------------------------------------------
    def _account(self, api_key: str) -> _Account:
        account = self.accounts.get(api_key)
        if account is None:
            raise KeyError(f"no Axle account for key {api_key[:4]}…")
        return account

    def _client(self, api_key: str, client_id: str) -> _Client:
        found = self._account(api_key).clients.get(client_id)
        if found is None:
            raise AxleError(404, "not_found", f"Client {client_id} not found")
        return found

    def _first(self, api_key: str, name: str, value: str) -> dict[str, Any] | None:
        with self._lock:
            for client in self._account(api_key).clients.values():
                if client.fields.get(name) == value:
                    return self._json(client)
        return None

    def _today(self) -> date:
        return datetime.fromtimestamp(self.clock(), MOSCOW).date()

    def _refuse_shared_phone(
        self, account: _Account, phone: str | None, keep: _Client | None
    ) -> None:
        """Our reading of AX-A4 "409 conflict (two clients match the same phone)": Axle keeps one
        client per phone, so a create or update that would give a second client a phone another
        client already has is refused too, not only an upsert that finds two."""
        if phone is None:
            return
        for client in account.clients.values():
            if client is not keep and client.fields.get("phone") == phone:
                raise AxleError(
                    409,
                    "conflict",
                    "another client already has this phone",
                    {"phone": f"already used by client {client.id}"},
                )

    def _create(self, account: _Account, values: dict[str, Any]) -> _Client:
        account.seq += 1
        now = self.clock()
        fields = {name: json.loads(json.dumps(spec.default)) for name, spec in FIELDS.items()}
        fields |= values
        client = _Client(uuid.uuid4().hex, account.seq, fields, now, now)
        account.clients[client.id] = client
        return client

    def _update(self, client: _Client, values: dict[str, Any]) -> None:
        """AX-A3: fields not sent are kept; `cards` merge by (`source`, `user_id`).

        updated_at moves only when a value changed, so `updated_since` finds real changes.
        """
        merged = dict(client.fields) | values
        if "cards" in values:
            merged["cards"] = merge_cards(client.fields["cards"], values["cards"])
        if merged != client.fields:
            client.fields = merged
            client.updated = self.clock()

    def _json(self, client: _Client) -> dict[str, Any]:
        """The AX-A2 client object, every field present, timestamps with Moscow's offset."""
        body = {"id": client.id, **json.loads(json.dumps(client.fields))}
        body["created_at"] = _stamp(client.created)
        body["updated_at"] = _stamp(client.updated)
        return {name: body[name] for name in CLIENT_KEYS}


def merge_cards(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An incoming card replaces the stored one with its (`source`, `user_id`), in place; cards
    not seen before are appended; stored cards not sent are kept."""
    incoming = {card_key(card): card for card in new}
    merged = [incoming.pop(card_key(card), card) for card in old]
    return merged + list(incoming.values())


def _matches(stored: Any, name: str, wanted: str) -> bool:
    if name == "email":
        return isinstance(stored, str) and stored.lower() == wanted.lower()
    return stored == wanted


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, MOSCOW).isoformat(timespec="milliseconds")


# -- HTTP -----------------------------------------------------------------------------------------
QUERY_KEYS = ("phone", "external_id", "email", "updated_since", "limit", "offset")  # AX-A3
UPSERT_KEYS = ("match_by", "client")
BATCH_KEYS = ("match_by", "clients")
PLUS_HINT = " (a '+' sent unencoded in a query string arrives as a space)"
Handler = Callable[[Request, str], Any]


class _Handlers:
    """AX-A3 endpoints; each runs inside `endpoint` (auth, rate limit, errors, recording)."""

    def __init__(self, state: AxleState) -> None:
        self.state = state

    def endpoint(self, handler: Handler) -> Callable[[Request], Any]:
        async def answer(request: Request) -> Response:
            api_key = bearer_token(request)
            account = self.state.account_id(api_key)
            response = await self._answer(request, handler, api_key if account else None)
            recorded = RecordedRequest(
                request.method, request.url.path, response.status_code, account
            )
            self.state.record(recorded)
            return response

        return answer

    async def _answer(self, request: Request, handler: Handler, api_key: str | None) -> Response:
        if api_key is None:
            return JSONResponse(UNAUTHORIZED, 401)  # AX-A1
        decision = self.state.limiter.hit(api_key)
        if not decision.allowed:  # AX-A4
            message = f"More than {decision.limit} requests per second; retry later"
            body = {"error": {"code": "rate_limited", "message": message}}
            headers = {"Retry-After": decision.retry_after_header}
            return JSONResponse(body, 429, headers=headers)
        try:
            return await handler(request, api_key)
        except AxleError as error:
            return JSONResponse({"error": error.error}, error.status)

    async def ping(self, request: Request, api_key: str) -> Response:
        account_id, name = self.state.account(api_key)
        return JSONResponse({"ok": True, "account": {"id": account_id, "name": name}})

    async def list_clients(self, request: Request, api_key: str) -> Response:
        filters, limit, offset = _list_query(request)
        page, size = self.state.list_clients(api_key, filters, limit, offset)
        meta = {"size": size, "limit": limit, "offset": offset}
        return JSONResponse({"clients": page, "meta": meta})

    async def one_client(self, request: Request, api_key: str) -> Response:
        client_id = request.path_params["client_id"]
        if request.method == "DELETE":
            self.state.delete_client(api_key, client_id)
            return Response(status_code=204)
        return JSONResponse(self.state.get_client(api_key, client_id))

    async def upsert(self, request: Request, api_key: str) -> Response:
        body = await _json_object(request, UPSERT_KEYS)
        match_by = _match_by(body)
        client_id, action = self.state.upsert(api_key, match_by, body.get("client"))
        return JSONResponse({"id": client_id, "action": action})

    async def batch(self, request: Request, api_key: str) -> Response:
        """Each item is an upsert of its own: one bad item never fails the others (AX-A3)."""
        body = await _json_object(request, BATCH_KEYS)
        match_by = _match_by(body)
        clients = body.get("clients")
        if not isinstance(clients, list) or not 1 <= len(clients) <= MAX_BATCH:
            # [I] an empty batch is refused too: "max 500" reads as 1..500 items
            raise invalid_request(
                f"clients must be an array of 1 to {MAX_BATCH} client objects",
                {
                    "clients": f"has {len(clients)} items"
                    if isinstance(clients, list)
                    else "missing"
                },
            )
        return JSONResponse(
            {"results": [self._item(api_key, match_by, i, c) for i, c in enumerate(clients)]}
        )

    def _item(self, api_key: str, match_by: str, index: int, raw: Any) -> dict[str, Any]:
        try:
            client_id, action = self.state.upsert(api_key, match_by, raw)
        except AxleError as error:
            return {"index": index, "error": error.error}
        return {"index": index, "id": client_id, "action": action}

    async def unknown(self, request: Request, api_key: str) -> Response:
        raise AxleError(404, "not_found", f"No endpoint {request.method} {request.url.path}")


async def _json_object(request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object body with no keys but `allowed`, else 400 invalid_request."""
    if media_type(request) != "application/json":
        raise invalid_request("the body must be JSON (Content-Type: application/json)")
    try:
        body = json.loads(await request.body())
    except ValueError as error:
        raise invalid_request(f"the body is not valid JSON: {error}") from error
    if not isinstance(body, dict):
        raise invalid_request("the body must be a JSON object")
    unknown = {key: "unknown field" for key in body if key not in allowed}
    if unknown:
        raise invalid_request("the body has fields Axle does not accept", unknown)
    return body


def _match_by(body: dict[str, Any]) -> str:
    match_by = body.get("match_by")
    if match_by not in MATCH_KEYS:
        raise invalid_request(
            "match_by must be 'phone' or 'external_id'", {"match_by": f"got {match_by!r}"}
        )
    return str(match_by)


def _list_query(request: Request) -> tuple[dict[str, Any], int, int]:
    """AX-A3 filters, limit and offset of GET /clients; anything else is a 400."""
    query = request.query_params
    problems = {key: "unknown query parameter" for key in query if key not in QUERY_KEYS}
    problems |= {key: "given more than once" for key in query if len(query.getlist(key)) > 1}
    filters: dict[str, Any] = {}
    for key in ("external_id", "email"):
        if key in query:
            filters[key] = query[key]
    if "phone" in query:
        filters["phone"] = query["phone"]
        if message := _phone(query["phone"]):
            problems["phone"] = message + PLUS_HINT
    if "updated_since" in query:
        filters["updated_since"] = parse_datetime(query["updated_since"])
        if filters["updated_since"] is None:
            problems["updated_since"] = (_datetime(query["updated_since"]) or "") + PLUS_HINT
    limit = _bounded_int(query.get("limit"), DEFAULT_LIMIT, 1, MAX_LIMIT, "limit", problems)
    offset = _bounded_int(query.get("offset"), 0, 0, None, "offset", problems)
    if problems:
        raise invalid_request("invalid query parameters", problems)
    return filters, limit, offset


def _bounded_int(
    raw: str | None, default: int, low: int, high: int | None, name: str, problems: dict[str, str]
) -> int:
    if raw is None:
        return default
    if not re.fullmatch(r"\d+", raw) or int(raw) < low or (high is not None and int(raw) > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        problems[name] = f"must be an integer {bound}"
        return default
    return int(raw)


def routes(state: AxleState) -> list[BaseRoute]:
    """Everything under PREFIX (AX-A1); an unknown path answers a JSON 404 after auth."""
    h = _Handlers(state)
    return [
        Mount(
            PREFIX,
            routes=[
                Route("/ping", h.endpoint(h.ping), methods=["GET"]),
                Route("/clients", h.endpoint(h.list_clients), methods=["GET"]),
                Route("/clients/upsert", h.endpoint(h.upsert), methods=["POST"]),
                Route("/clients/batch", h.endpoint(h.batch), methods=["POST"]),
                Route("/clients/{client_id}", h.endpoint(h.one_client), methods=["GET", "DELETE"]),
                Route("/{rest:path}", h.endpoint(h.unknown)),
            ],
        )
    ]


def build(data: SandboxData, rate_limits: bool) -> AxleState:
    """Axle is a target: it starts with no clients whatever the generated data holds."""
    return AxleState(RATE_LIMIT if rate_limits else None)


EMULATOR = Emulator(
    name="axle",
    build=build,
    routes=routes,
    credentials={"AXLE_API_KEY": AXLE_API_KEY, "AXLE_OTHER_API_KEY": AXLE_OTHER_API_KEY},
    summary=lambda state: state.counts(),
)
