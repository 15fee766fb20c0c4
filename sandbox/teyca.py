"""Teyca emulator: path tokens, passes, bonuses, operations, webhooks (TY-A1..A11).

Written from Teyca's published API alone and as strict as it allows, so a client that misreads
the contract fails here as it would at api.teyca.ru: the main key is sent raw (no `Bearer`), every
`/v1/{token}/…` call needs that key *and* a known token, a token used from a second address is
blocked when `strict_instances` is on (TY-A2), all four rate windows are enforced per token
(TY-A9), and errors are `{"message": …}` with the TY-A10 statuses. Card changes are pushed to the
registered webhooks from a background thread with retries (TY-A5), and every delivery is recorded
so tests can see what the receiver was sent.

Where Teyca leaves a detail undocumented the emulator picks one answer and documents it beside
the code (success bodies of token deletion, pass deletion, bonuses and webhook management).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from sandbox import webhook_sender
from sandbox.emulator import Emulator
from sandbox.generator import SandboxData
from sandbox.httputil import MessageError
from sandbox.ratelimit import MultiWindowLimiter
from sandbox.teyca_data import MOSCOW, TeycaData, generate_teyca, moscow, pass_count
from sandbox.webhook_sender import PushesWebhooks, WebhookSender

PREFIX = "/teyca"  # a client's base URL is `<sandbox>/teyca`
TEYCA_API_KEY = "demo-teyca-main-key"  # TY-A1: the main key ("Основной ключ авторизации")
TEYCA_WEBHOOK_SECRET = "demo-teyca-webhook-secret"  # TY-A5: set in the Teyca UI, not the API
RATE_WINDOWS = [(5, 1.0), (150, 60.0), (1000, 3600.0), (5000, 86400.0)]  # TY-A9, per token
MAX_LIMIT = 1000  # TY-A3
PASSES_DEFAULT_LIMIT = 25  # as in Teyca's published request examples
OPERATIONS_DEFAULT_LIMIT = 100
RETRY_DELAYS = (60.0, 300.0, 900.0)  # TY-A5: three retries after 1, 5 and 15 minutes
# Emulator settings read from the environment when the sandbox starts, so a demo or a test that
# runs the sandbox in another process can match its receiver: the secret sent in `Authorization`
# (the env var the integration file names too) and, for test speed, the retry delays in seconds
# ("0.05,0.05,0.05"). Unset means the demo secret and the TY-A5 delays.
SECRET_ENV = "TEYCA_WEBHOOK_SECRET"
RETRY_DELAYS_ENV = "SANDBOX_TEYCA_RETRY_DELAYS"
HOOK_TYPES = ("CREATE", "UPDATE", "DELETE")  # the events Teyca pushes
BLOCKED = "Token blocked: used from several instances"  # TY-A2

_HOOK_ID = re.compile(r"^[0-9a-f]{32}$")
_CUSTOM_KEY = re.compile(r"^key[1-9]\d*$")  # custom fields key1 … keyN
_PHONE = re.compile(r"^7\d{10}$")  # TY-A7
_BIRTHDAY = re.compile(r"^\d{2}\.\d{2}\.\d{4}$")  # TY-A7
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_DISCOUNT = re.compile(r"^\d+(\.\d+)?%?$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")  # TY-A11
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

TEXT_FIELDS = {
    "template",
    "first_name",
    "last_name",
    "pat_name",
    "loyalty_level",
    "city",
    "car_number",
    "referal",
}
NUMBER_FIELDS = {"bonus", "summ", "summ_all", "summ_last", "check_summ"}  # kept as strings
COUNT_FIELDS = {"visits", "visits_all"}
WRITABLE = TEXT_FIELDS | NUMBER_FIELDS | COUNT_FIELDS
WRITABLE |= {"phone", "email", "birthday", "gender", "barcode", "discount", "tags"}
# Set by Teyca itself (the wallet, the SMS check, the register); a client may not write them.
READ_ONLY = {
    "user_id",
    "fio",
    "created_at",
    "date_last",
    "link",
    "o_s",
    "telegram",
    "sms_verify",
    "bonus_last",
    "write_off_last",
}
PASS_FIELDS = WRITABLE | READ_ONLY
OPERATION_FIELDS = ("id", "user_id", "operation_type", "summ", "bonus", "store_id", "created_at")
OPERATION_FILTERS = {
    "operation_ids",
    "data_since",
    "data_last",
    "integration",
    "operation_type",
    "user_ids",
    "promotion_uuids",
    "store_ids",
}

Row = dict[str, Any]


class TeycaError(MessageError):
    """A refused request: TY-A10 status and `{"message": …}` body."""

    message_key = "message"


def _bad(message: str) -> TeycaError:
    return TeycaError(400, message)


@dataclass
class Token:
    """One path token (TY-A1) and the instance that first used it (TY-A2)."""

    identifier: str
    token: str
    created_at: str
    address: str | None = None  # client address of the first `/v1/{token}/…` call
    addresses: set[str] = field(default_factory=set)  # every address seen (strict or not)
    blocked: bool = False

    def public(self) -> Row:
        return {"identifier": self.identifier, "token": self.token, "created_at": self.created_at}


@dataclass
class Delivery:
    """One webhook event sent to one hook, and what the receiver answered to each attempt."""

    hook_id: str
    url: str
    type: str
    user_id: int
    body: Row
    attempts: list[int | str] = field(default_factory=list)  # status codes or transport errors
    outcome: str = "pending"  # pending | delivered | failed | skipped (not loopback)


class TeycaState(PushesWebhooks):
    """One Teyca account: tokens, passes, bonuses, operations, webhooks; thread-safe.

    Settings tests change on a built state: `strict_instances` (TY-A2), `webhook_secret`,
    `retry_delays` (seconds between delivery attempts), `loopback_only` (deliver only to
    loopback hosts) and `limiter.clock` (a fake clock for the TY-A9 windows). A sandbox reads
    the first two from its environment at start (`configure_webhooks`).
    """

    def __init__(self, data: TeycaData, rate_limits: bool = True) -> None:
        self.main_key = TEYCA_API_KEY
        self.webhook_secret = TEYCA_WEBHOOK_SECRET
        self.strict_instances = False
        self.webhooks = WebhookSender(RETRY_DELAYS, "teyca")
        self.limiter = MultiWindowLimiter(RATE_WINDOWS if rate_limits else None)
        self.tokens: dict[str, Token] = {}
        self.passes: dict[int, Row] = {p["user_id"]: dict(p) for p in data.passes}
        self.telegram_chats: dict[str, int] = {
            str(500_000_000 + user_id): user_id
            for user_id, p in self.passes.items()
            if p.get("telegram")
        }
        self.bonuses: dict[int, list[Row]] = {}
        self.operations: list[Row] = list(data.operations)
        self.hooks: dict[str, Row] = {}  # hook_id -> {id, type, url, token}
        self.deliveries: list[Delivery] = []
        self.request_counts: Counter[str] = Counter()
        self._next_user_id = max(self.passes, default=100_000) + 1
        self._lock = threading.RLock()

    # -- the test and demo API ----------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Record counts for the sandbox summary."""
        with self._lock:
            return {
                "passes": len(self.passes),
                "operations": len(self.operations),
                "tokens": len(self.tokens),
                "webhooks": len(self.hooks),
                "deliveries": len(self.deliveries),
            }

    def get_pass(self, user_id: int) -> Row | None:
        """A copy of one pass, or None."""
        with self._lock:
            found = self.passes.get(user_id)
            return dict(found) if found else None

    def create_token(self, identifier: str) -> Row:
        """TY-A1 token creation without HTTP (for tests that need a token quickly)."""
        with self._lock:
            if any(t.identifier == identifier for t in self.tokens.values()):
                raise _bad(f"identifier already exists: {identifier}")
            token = Token(identifier, secrets.token_hex(16), moscow(datetime.now(MOSCOW)))
            self.tokens[token.token] = token
            return {"identifier": identifier, "token": token.token}

    def register_card(self, fields: Row) -> Row:
        """A card registered in the Teyca UI or the wallet: stored, then CREATE is pushed.

        Unlike the API, read-only fields (`o_s`, `date_last`, …) may be given here."""
        card = self._create(fields, allow_read_only=True)
        self._emit("CREATE", card)
        return card

    def change_card(self, user_id: int, fields: Row) -> Row:
        """A card changed at Teyca (a visit, the wallet installed): stored, UPDATE pushed."""
        card = self._update(user_id, fields, allow_read_only=True)
        self._emit("UPDATE", card)
        return card

    def remove_card(self, user_id: int) -> Row:
        """A card deleted at Teyca: removed, DELETE pushed with the card as it was."""
        card = self._delete(user_id)
        self._emit("DELETE", card)
        return card

    # -- routes -------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        """One Mount under PREFIX; unknown paths and methods answer in the TY-A10 shape."""
        token = self._token_endpoint
        return [
            Mount(
                PREFIX,
                routes=[
                    Route("/v1/authorization", self._tokens_endpoint, methods=_ALL),
                    Route("/v1/{token}/passes", token(passes=self._passes), methods=_ALL),
                    Route(
                        "/v1/{token}/passes/userid/{user_id}",
                        token(one=self._pass_by_user_id),
                        methods=_ALL,
                    ),
                    Route(
                        "/v1/{token}/passes/barcode/{barcode}",
                        token(one=self._pass_by_barcode),
                        methods=_ALL,
                    ),
                    Route(
                        "/v1/{token}/passes/telegram_chat_id/{chat_id}",
                        token(one=self._pass_by_chat),
                        methods=_ALL,
                    ),
                    Route("/v1/{token}/passes/{user_id}", token(card=self._card), methods=_ALL),
                    Route(
                        "/v1/{token}/passes/{user_id}/bonuses",
                        token(bonuses=self._bonuses),
                        methods=_ALL,
                    ),
                    Route(
                        "/v1/{token}/operations", token(operations=self._operations), methods=_ALL
                    ),
                    Route("/v1/{token}/webhook", token(hooks=self._hooks), methods=_ALL),
                    Route("/v1/{token}/webhook/{hook_id}", token(hook=self._hook), methods=_ALL),
                    Route("/{path:path}", _not_found, methods=_ALL),
                ],
            )
        ]

    # -- auth, instances, limits (TY-A1, A2, A9) ----------------------------------------------
    def _check_key(self, request: Request) -> None:
        """TY-A1: the main key, raw in `Authorization` (a `Bearer <key>` is a wrong key)."""
        key = request.headers.get("authorization")
        if not key:
            raise TeycaError(401, "Authorization header required")
        if not secrets.compare_digest(key.encode(), self.main_key.encode()):
            raise TeycaError(401, "Invalid API key")

    def _admit(self, request: Request) -> Token:
        """Key, then token, then instance, then rate: the order a client meets them in."""
        self._check_key(request)
        address = request.client.host if request.client else "unknown"
        with self._lock:
            token = self.tokens.get(request.path_params["token"])
            if token is None:
                raise TeycaError(401, "Invalid token")
            token.addresses.add(address)
            if token.address is None:
                token.address = address
            elif token.address != address and self.strict_instances:
                token.blocked = True  # TY-A2: once blocked, blocked for every instance
            if token.blocked:
                raise TeycaError(403, BLOCKED)
        decision = self.limiter.hit(token.token)
        if not decision.allowed:
            headers = {"Retry-After": decision.retry_after_header}
            raise TeycaError(429, "Too Many Requests", headers)  # TY-A9
        return token

    async def _tokens_endpoint(self, request: Request) -> Response:
        """`/v1/authorization` (TY-A1): main key only, no token, no rate window."""
        try:
            self._check_key(request)
            self._count(f"authorization {request.method}")
            if request.method == "GET":
                with self._lock:
                    return JSONResponse([t.public() for t in self.tokens.values()])
            if request.method == "POST":
                identifier = _identifier(await _body(request))
                return JSONResponse(self.create_token(identifier))
            if request.method == "DELETE":
                identifier = _identifier(await _body(request))
                return JSONResponse(self._delete_token(identifier))
            raise TeycaError(405, "Method Not Allowed")
        except TeycaError as error:
            return error.response()

    def _delete_token(self, identifier: str) -> Row:
        """Unknown response body: `{"identifier": …}`; the token's webhooks go with it."""
        with self._lock:
            found = [t for t in self.tokens.values() if t.identifier == identifier]
            if not found:
                raise TeycaError(404, f"identifier not found: {identifier}")
            del self.tokens[found[0].token]
            for hook_id in [h for h, hook in self.hooks.items() if hook["token"] == found[0].token]:
                del self.hooks[hook_id]
            return {"identifier": identifier}

    def _token_endpoint(self, **handlers: Handler) -> Callable[[Request], Awaitable[Response]]:
        """An endpoint for a `/v1/{token}/…` path: admit, parse, dispatch by method."""
        ((kind, handler),) = handlers.items()

        async def endpoint(request: Request) -> Response:
            try:
                token = self._admit(request)
                self._count(f"{kind} {request.method}")
                body = await _body(request) if request.method in ("POST", "PUT") else {}
                status, payload, events = handler(token, request, body)
            except TeycaError as error:
                return error.response()
            for event, card in events:
                self._emit(event, card)
            return JSONResponse(payload, status)

        return endpoint

    def _count(self, kind: str) -> None:
        with self._lock:
            self.request_counts[kind] += 1

    # -- passes (TY-A3) -----------------------------------------------------------------
    def _passes(self, token: Token, request: Request, body: Row) -> Answer:
        if request.method == "GET":
            params = _query(request, {"search", "limit", "offset"})
            limit, offset = _paging(params, PASSES_DEFAULT_LIMIT)
            wanted = _search(params.get("search", ""))
            with self._lock:
                found = [
                    p for p in self.passes.values() if all(_text(p.get(k)) == v for k, v in wanted)
                ]
                page = [_public(p) for p in found[offset : offset + limit]]
            meta = {"size": len(found), "limit": limit, "offset": offset}
            return 200, {"passes": page, "meta": meta}, []
        if request.method == "POST":
            card = self._create(body)
            return 200, card, [("CREATE", card)]  # Unknown status: 200 with the new pass
        raise TeycaError(405, "Method Not Allowed")

    def _pass_by_user_id(self, token: Token, request: Request, body: Row) -> Answer:
        _only(request, "GET")
        return 200, self._found(_user_id(request.path_params["user_id"])), []

    def _pass_by_barcode(self, token: Token, request: Request, body: Row) -> Answer:
        _only(request, "GET")
        barcode = request.path_params["barcode"]
        with self._lock:
            for card in self.passes.values():
                if card.get("barcode") == barcode:
                    return 200, _public(card), []
        raise TeycaError(404, f"pass not found: barcode {barcode}")

    def _pass_by_chat(self, token: Token, request: Request, body: Row) -> Answer:
        _only(request, "GET")
        chat_id = request.path_params["chat_id"]
        with self._lock:
            user_id = self.telegram_chats.get(chat_id)
            card = self.passes.get(user_id) if user_id is not None else None
            if card is None:
                raise TeycaError(404, f"pass not found: telegram_chat_id {chat_id}")
            return 200, _public(card), []

    def _card(self, token: Token, request: Request, body: Row) -> Answer:
        user_id = _user_id(request.path_params["user_id"])
        if request.method == "PUT":
            card = self._update(user_id, body)
            return 200, card, [("UPDATE", card)]
        if request.method == "DELETE":
            card = self._delete(user_id)
            return 200, {"user_id": user_id}, [("DELETE", card)]  # Unknown body: the id
        raise TeycaError(405, "Method Not Allowed")

    def _found(self, user_id: int) -> Row:
        with self._lock:
            card = self.passes.get(user_id)
            if card is None:
                raise TeycaError(404, f"pass not found: user_id {user_id}")  # TY-A10
            return _public(card)

    def _create(self, fields: Row, allow_read_only: bool = False) -> Row:
        changes = _validated(fields, allow_read_only)
        if not changes.get("template"):
            raise _bad("template is required")
        with self._lock:
            self._check_barcode(changes.get("barcode"), None)
            user_id = self._next_user_id
            self._next_user_id += 1
            card: Row = {
                "user_id": user_id,
                "first_name": "",
                "last_name": "",
                "pat_name": "",
                "phone": "",
                "sms_verify": False,
                "email": None,
                "birthday": "",
                "gender": "",
                "discount": "0%",
                "bonus": "0",
                "bonus_last": "0",
                "write_off_last": "0",
                "loyalty_level": "",
                "summ": "0",
                "summ_all": "0",
                "summ_last": "0",
                "check_summ": "0",
                "visits": 0,
                "visits_all": 0,
                "date_last": None,
                "tags": [],
                "barcode": f"{2_000_000_000_000 + user_id * 37:013d}",
                "link": f"https://cards.teyca.ru/download/{secrets.token_hex(5)}",
                "o_s": "",
                "telegram": False,
                "created_at": moscow(datetime.now(MOSCOW)),
            }
            card.update(changes)
            card["fio"] = _fio(card)
            self.passes[user_id] = card
            return dict(card)

    def _update(self, user_id: int, fields: Row, allow_read_only: bool = False) -> Row:
        """Partial update: fields not sent are kept; `bonus` overwrites the balance."""
        changes = _validated(fields, allow_read_only)
        if "user_id" in changes:
            raise _bad("user_id cannot be changed")
        with self._lock:
            card = self.passes.get(user_id)
            if card is None:
                raise TeycaError(404, f"pass not found: user_id {user_id}")
            self._check_barcode(changes.get("barcode"), user_id)
            updated = {**card, **changes}
            updated["fio"] = _fio(updated)
            self.passes[user_id] = updated
            return dict(updated)

    def _delete(self, user_id: int) -> Row:
        with self._lock:
            card = self.passes.pop(user_id, None)
            if card is None:
                raise TeycaError(404, f"pass not found: user_id {user_id}")
            self.bonuses.pop(user_id, None)
            return dict(card)

    def _check_barcode(self, barcode: str | None, owner: int | None) -> None:
        if barcode is None:
            return
        for card in self.passes.values():
            if card.get("barcode") == barcode and card["user_id"] != owner:
                raise _bad(f"barcode already exists: {barcode}")

    # -- bonuses ------------------------------------------------------------------------------
    def _bonuses(self, token: Token, request: Request, body: Row) -> Answer:
        user_id = _user_id(request.path_params["user_id"])
        self._found(user_id)
        if request.method == "GET":
            with self._lock:
                history = [dict(b) for b in self.bonuses.get(user_id, [])]
            return 200, {"bonuses": history}, []  # Unknown shape: the accruals, oldest first
        if request.method == "POST":
            accruals = _accruals(body)
            with self._lock:
                card = self.passes[user_id]
                balance = float(card.get("bonus") or 0) + sum(float(a["value"]) for a in accruals)
                card = {**card, "bonus": _number_text(balance), "bonus_last": accruals[-1]["value"]}
                self.passes[user_id] = card
                self.bonuses.setdefault(user_id, []).extend(accruals)
            return 200, {"bonus": accruals}, [("UPDATE", dict(card))]
        raise TeycaError(405, "Method Not Allowed")

    # -- operations (TY-A11) ------------------------------------------------------------
    def _operations(self, token: Token, request: Request, body: Row) -> Answer:
        _only(request, "POST")
        limit, offset = _paging(_query(request, {"limit", "offset"}), OPERATIONS_DEFAULT_LIMIT)
        unknown = set(body) - {"filters", "order"}
        if unknown:
            raise _bad(f"unknown body field: {sorted(unknown)[0]}")
        filters = body.get("filters") or {}
        if not isinstance(filters, dict):
            raise _bad("filters must be an object")
        match = _operation_filter(filters)
        order = body.get("order", "asc")  # Unknown default: oldest first, stable while paging
        if order not in ("asc", "desc"):
            raise _bad("order must be asc or desc")
        with self._lock:
            found = [op for op in self.operations if match(op)]
        if order == "desc":
            found.reverse()
        page = [{k: op[k] for k in OPERATION_FIELDS} for op in found[offset : offset + limit]]
        meta = {"size": len(found), "limit": limit, "offset": offset}
        return 200, {"operations": page, "meta": meta}, []

    # -- webhooks (TY-A5) -----------------------------------------------------------------
    def _hooks(self, token: Token, request: Request, body: Row) -> Answer:
        if request.method == "GET":
            with self._lock:
                mine = [_hook_public(h) for h in self.hooks.values() if h["token"] == token.token]
            return 200, mine, []  # Unknown shape: a bare list, like GET /v1/authorization
        if request.method == "POST":
            hook_type, url = _hook_fields(body, partial=False)
            hook = {"id": secrets.token_hex(16), "type": hook_type, "url": url}
            with self._lock:
                self.hooks[hook["id"]] = {**hook, "token": token.token}
            return 200, hook, []
        raise TeycaError(405, "Method Not Allowed")

    def _hook(self, token: Token, request: Request, body: Row) -> Answer:
        hook_id = request.path_params["hook_id"]
        with self._lock:
            hook = self.hooks.get(hook_id) if _HOOK_ID.match(hook_id) else None
            if hook is None or hook["token"] != token.token:
                raise TeycaError(404, f"webhook not found: {hook_id}")
            if request.method == "GET":
                return 200, _hook_public(hook), []
            if request.method == "PUT":
                hook_type, url = _hook_fields(body, partial=True)
                hook = {**hook, "type": hook_type or hook["type"], "url": url or hook["url"]}
                self.hooks[hook_id] = hook
                return 200, _hook_public(hook), []
            if request.method == "DELETE":
                del self.hooks[hook_id]
                return 200, {"id": hook_id}, []
        raise TeycaError(405, "Method Not Allowed")

    def _emit(self, event: str, card: Row) -> None:
        """Push `{type, pass}` to every hook of this type with the secret in `Authorization`,
        any 2xx accepted, non-2xx and transport errors retried (TY-A5)."""
        body = {"type": event, "pass": _public(card)}
        headers = {"Authorization": self.webhook_secret}
        with self._lock:
            targets = [h for h in self.hooks.values() if h["type"] == event]
            for hook in targets:
                delivery = Delivery(hook["id"], hook["url"], event, card["user_id"], body)
                self.deliveries.append(delivery)
                self.webhooks.start(
                    delivery,
                    lambda http, d=delivery: http.post(d.url, json=d.body, headers=headers),
                    accepted=lambda status: 200 <= status < 300,
                )


Answer = tuple[int, Any, list[tuple[str, Row]]]  # status, JSON body, webhook events to push
Handler = Callable[[Token, Request, Row], Answer]
_ALL = ["GET", "POST", "PUT", "DELETE", "PATCH"]


async def _not_found(request: Request) -> Response:
    return TeycaError(404, "Not Found").response()


async def _body(request: Request) -> Row:
    """The JSON object body; anything else is a 400."""
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise _bad("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _bad("body must be a JSON object")
    return body


def _only(request: Request, method: str) -> None:
    if request.method != method:
        raise TeycaError(405, "Method Not Allowed")


def _identifier(body: Row) -> str:
    identifier = body.get("identifier")
    if not isinstance(identifier, str) or not identifier.strip():
        raise _bad("identifier is required")
    return identifier


def _query(request: Request, allowed: set[str]) -> dict[str, str]:
    """Query parameters; an unknown one is a 400 (a misspelt `limit` must not pass silently)."""
    params = dict(request.query_params)
    unknown = set(params) - allowed
    if unknown:
        raise _bad(f"unknown query parameter: {sorted(unknown)[0]}")
    return params


def _paging(params: dict[str, str], default_limit: int) -> tuple[int, int]:
    """TY-A3: `limit` 1..1000, `offset` >= 0."""
    limit = _integer(params.get("limit", str(default_limit)), "limit")
    offset = _integer(params.get("offset", "0"), "offset")
    if limit > MAX_LIMIT:
        raise _bad(f"limit must be <= {MAX_LIMIT}")
    if limit < 1:
        raise _bad("limit must be >= 1")
    if offset < 0:
        raise _bad("offset must be >= 0")
    return limit, offset


def _integer(value: str, name: str) -> int:
    if not re.fullmatch(r"-?\d+", value.strip()):
        raise _bad(f"{name} must be an integer")
    return int(value)


def _search(raw: str) -> list[tuple[str, str]]:
    """`field=value` pairs joined by commas; every pair must match (exact text)."""
    pairs: list[tuple[str, str]] = []
    for part in raw.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise _bad(f"search: expected field=value, got {part.strip()!r}")
        if name not in PASS_FIELDS and not _CUSTOM_KEY.match(name):
            raise _bad(f"search: unknown field {name!r}")
        pairs.append((name, value.strip()))
    return pairs


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _public(card: Row) -> Row:
    return dict(card)


def _fio(card: Row) -> str:
    parts = (card.get("last_name"), card.get("first_name"), card.get("pat_name"))
    return " ".join(str(p) for p in parts if p)


def _user_id(raw: str) -> int:
    if not raw.isdigit():
        raise _bad(f"user_id must be an integer, got {raw!r}")
    return int(raw)


def _validated(fields: Row, allow_read_only: bool) -> Row:
    """A pass write checked field by field (TY-A7 formats); numbers are stored as strings."""
    clean: Row = {}
    for name, value in fields.items():
        if name in READ_ONLY and not allow_read_only:
            raise _bad(f"{name} is read-only")
        if name not in PASS_FIELDS and not _CUSTOM_KEY.match(name):
            raise _bad(f"unknown field: {name}")
        clean[name] = _field_value(name, value)
    return clean


def _field_value(name: str, value: Any) -> Any:  # noqa: C901 - one branch per field kind
    if name in NUMBER_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise _bad(f"{name} must be a number")
        text = _number_text(value) if not isinstance(value, str) else value.strip()
        if not _NUMBER.match(text):
            raise _bad(f"{name} must be a number, got {value!r}")
        return text
    if name in COUNT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(f"{name} must be an integer")
        return value
    if name == "phone":
        if not isinstance(value, str) or not _PHONE.match(value):
            raise _bad(f"phone must be 11 digits starting with 7 (7XXXXXXXXXX), got {value!r}")
        return value
    if name == "email":
        if value in (None, ""):
            return value
        if not isinstance(value, str) or not _EMAIL.match(value):
            raise _bad(f"email is not valid: {value!r}")
        return value
    if name == "birthday":
        return _birthday(value)
    if name == "gender":
        if value not in ("м", "ж", ""):
            raise _bad(f"gender must be м or ж, got {value!r}")
        return value
    if name == "discount":
        text = _number_text(value) if isinstance(value, int | float) else value
        if not isinstance(text, str) or not _DISCOUNT.match(text):
            raise _bad(f"discount must look like 10%, got {value!r}")
        return text
    if name == "tags":
        if not isinstance(value, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in value
        ):
            raise _bad("tags must be a list of integers")
        return list(value)
    if name == "barcode":
        if not isinstance(value, str) or not value.strip():
            raise _bad("barcode must be a non-empty string")
        return value
    if name in READ_ONLY:  # only through the test API
        return value
    if value is not None and not isinstance(value, str):
        raise _bad(f"{name} must be a string")
    return value


def _birthday(value: Any) -> str:
    """TY-A7: `DD.MM.YYYY` (a real date), or empty."""
    if value == "":
        return value
    if not isinstance(value, str) or not _BIRTHDAY.match(value):
        raise _bad(f"birthday must be DD.MM.YYYY, got {value!r}")
    try:
        datetime.strptime(value, "%d.%m.%Y")
    except ValueError:
        raise _bad(f"birthday is not a date: {value!r}") from None
    return value


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _accruals(body: Row) -> list[Row]:
    """`{bonus: [{value: "500.0", active_from?, expires_at?}]}` (ISO 8601 dates)."""
    if set(body) != {"bonus"} or not isinstance(body["bonus"], list) or not body["bonus"]:
        raise _bad("body must be {bonus: [{value, active_from, expires_at}]}")
    accruals: list[Row] = []
    for index, item in enumerate(body["bonus"]):
        if not isinstance(item, dict) or "value" not in item:
            raise _bad(f"bonus[{index}]: value is required")
        unknown = set(item) - {"value", "active_from", "expires_at"}
        if unknown:
            raise _bad(f"bonus[{index}]: unknown field {sorted(unknown)[0]}")
        value = item["value"]
        text = value if isinstance(value, str) else _number_text(value)
        if isinstance(value, bool) or not _NUMBER.match(str(text)) or float(text) <= 0:
            raise _bad(f"bonus[{index}]: value must be a positive number, got {value!r}")
        accrual: Row = {"value": text}
        for name in ("active_from", "expires_at"):
            if name in item:
                accrual[name] = _iso(item[name], f"bonus[{index}].{name}")
        accrual["created_at"] = moscow(datetime.now(MOSCOW))
        accruals.append(accrual)
    return accruals


def _iso(value: Any, where: str) -> str:
    try:
        datetime.fromisoformat(str(value))
    except ValueError:
        raise _bad(f"{where} must be ISO 8601, got {value!r}") from None
    return str(value)


def _operation_filter(filters: Row) -> Callable[[Row], bool]:
    """TY-A11 filters as one predicate; every given filter must hold."""
    unknown = set(filters) - OPERATION_FILTERS
    if unknown:
        raise _bad(f"unknown filter: {sorted(unknown)[0]}")
    checks: list[Callable[[Row], bool]] = []
    for name, key in (("operation_ids", "id"), ("user_ids", "user_id"), ("store_ids", "store_id")):
        if name in filters:
            wanted = _id_set(filters[name], name)
            checks.append(lambda op, k=key, w=wanted: op[k] in w)
    if "promotion_uuids" in filters:
        promos = filters["promotion_uuids"]
        if not isinstance(promos, list) or not all(isinstance(p, str) for p in promos):
            raise _bad("promotion_uuids must be a list of strings")
        checks.append(lambda op, w=set(promos): op.get("promotion_uuid") in w)
    for name in ("integration", "operation_type"):
        if name in filters:
            if not isinstance(filters[name], str):
                raise _bad(f"{name} must be a string")
            checks.append(lambda op, k=name, w=filters[name]: op.get(k) == w)
    for name, after in (("data_since", True), ("data_last", False)):
        if name in filters:
            bound = filters[name]
            if not isinstance(bound, str) or not _DATETIME.match(bound):
                raise _bad(f"{name} must be YYYY-MM-DD HH:MM:SS, got {bound!r}")
            if after:
                checks.append(lambda op, b=bound: op["created_at"] >= b)
            else:
                checks.append(lambda op, b=bound: op["created_at"] <= b)
    return lambda op: all(check(op) for check in checks)


def _id_set(value: Any, name: str) -> set[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise _bad(f"{name} must be a list of integers")
    return set(value)


def _hook_fields(body: Row, partial: bool) -> tuple[str | None, str | None]:
    unknown = set(body) - {"type", "url"}
    if unknown:
        raise _bad(f"unknown field: {sorted(unknown)[0]}")
    hook_type, url = body.get("type"), body.get("url")
    if hook_type is not None or not partial:
        if hook_type not in HOOK_TYPES:
            raise _bad(f"type must be one of CREATE, UPDATE, DELETE, got {hook_type!r}")
    if url is not None or not partial:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise _bad(f"url must be an http(s) URL, got {url!r}")
    return hook_type, url


def _hook_public(hook: Row) -> Row:
    return {"id": hook["id"], "type": hook["type"], "url": hook["url"]}


def build(data: SandboxData, rate_limits: bool) -> TeycaState:
    """The Teyca account of a sandbox: passes sized to its generated customers, webhook settings
    from the environment (`configure_webhooks`)."""
    count = pass_count(len(data.flexpos_customers))
    state = TeycaState(generate_teyca(data.seed, count, data.today), rate_limits)
    configure_webhooks(state, os.environ)
    return state


def configure_webhooks(state: TeycaState, env: Mapping[str, str]) -> None:
    """Apply SECRET_ENV and RETRY_DELAYS_ENV from `env` to `state`, when set."""
    secret = webhook_sender.configure(state.webhooks, env, RETRY_DELAYS_ENV, SECRET_ENV)
    if secret:
        state.webhook_secret = secret


def seeded_state(
    seed: int = 42, passes: int = 40, today: date | None = None, rate_limits: bool = True
) -> TeycaState:
    """A standalone state (no sandbox): for unit tests of the emulator alone."""
    return TeycaState(generate_teyca(seed, passes, today or date.today()), rate_limits)


EMULATOR = Emulator(
    name="teyca",
    build=build,
    routes=lambda state: state.routes(),
    credentials={
        "TEYCA_API_KEY": TEYCA_API_KEY,
        "TEYCA_WEBHOOK_SECRET": TEYCA_WEBHOOK_SECRET,
    },
    summary=lambda state: state.counts(),
)
