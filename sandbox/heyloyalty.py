"""Heyloyalty emulator: loyalty v1 lists/members and the BI tracking import (HL-A1..HL-A12).

Built from the documented behaviour plus the assumed contract HL-A1..HL-A13: HMAC-over-timestamp
auth, per-account list isolation, strict field validation on upsert (so a mapping error surfaces
as the 400 production would give), reactivation of unsubscribed members, and a recorder of what
the client sent (flags, events, request counts) for the end-to-end tests to assert on.
Every answer carries a `Date` header from the list's clock, which a test may set ahead of or
behind the machine's (`set_clock_ahead`), and `filter[email|mobile][eq|in][]` reads use the
list's indexes (HL-A14).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import re
import threading
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from sandbox.emulator import Emulator
from sandbox.generator import SandboxData
from sandbox.heyloyalty_import import ImportRefused, RowLoss, import_members
from sandbox.httputil import (
    basic_credentials,
    json_object,
    media_type,
    parse_multipart,
    parse_urlencoded,
)
from sandbox.ratelimit import RateLimiter

# HL-A1: API key + secret (demo values); a second account proves list isolation.
HEYLOYALTY_API_KEY = "demo-hl-key"
HEYLOYALTY_API_SECRET = "demo-hl-secret"
HEYLOYALTY_OTHER_API_KEY = "other-hl-key"
HEYLOYALTY_OTHER_API_SECRET = "other-hl-secret"
RATE_LIMIT = 20  # HL-A12: requests per second per API key
LOYALTY_PREFIX = "/heyloyalty/loyalty/v1"
BI_PREFIX = "/heyloyalty/bi/api"
CLOCK_SKEW = timedelta(minutes=15)  # HL-A1
MAX_PERPAGE = 5000  # HL-A4
MAX_BI_ROWS = 50_000  # HL-A10
# Danish labels, as on a real Danish list: only the option ids of `sex` are documented (1 = male,
# 2 = female), so a client that resolves options by an English label fails here as it would there.
SEX_OPTIONS = {"1": "Mand", "2": "Kvinde"}
COUNTRY_OPTIONS = {"1": "Danmark", "2": "Sverige", "3": "Norge", "4": "Tyskland", "5": "Finland"}
# Fixed fields of every list, as Heyloyalty documents them; `country` is a choice there, so here.
FIXED_FIELDS: list[tuple[str, str, dict[str, str] | None]] = [
    ("firstname", "text", None),
    ("lastname", "text", None),
    ("email", "text", None),
    ("mobile", "number", None),
    ("sex", "choice", SEX_OPTIONS),
    ("birthdate", "date", None),
    ("address", "text", None),
    ("postalcode", "number", None),
    ("city", "text", None),
    ("country", "choice", COUNTRY_OPTIONS),
]
CUSTOM_FIELDS = [
    ("cardnumber", "text", None),
    ("customer_no", "text", None),
    ("language", "text", None),
]
ACCOUNTS: dict[str, tuple[str, list[tuple[int, str, bool]]]] = {
    HEYLOYALTY_API_KEY: (
        HEYLOYALTY_API_SECRET,
        [(4711, "Demo medlemmer", True), (4712, "Demo nyhedsbrev", False)],
    ),
    HEYLOYALTY_OTHER_API_KEY: (
        HEYLOYALTY_OTHER_API_SECRET,
        [(5001, "Andet medlemsregister", True)],
    ),
}
TRACKING_IDS = {99: 4711, 98: 4712, 501: 5001}  # HL-A10: tracking id -> list id
CONTROL_KEYS = {
    "skipOptIn",
    "trigger_autoresponder",
    "trigger_webhooks",
    "obscureMemberData",
    "sendErrorsTo",
    "search_temporary",
}
META_FILTER_FIELDS = {"id", "created_at", "updated_at", "unsubscribed_at", "status"}
_FILTER = re.compile(r"^filter\[(\w+)\]\[(\w+)\](\[\d*\])?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}( \d{2}:\d{2}:\d{2})?$")
_PHP_DATE = {"Y": "%Y", "m": "%m", "d": "%d", "H": "%H", "i": "%M", "s": "%S", "y": "%y"}


# How far the emulated list's clock is ahead of the machine's (tests set it through
# HeyloyaltyState.set_clock_ahead; one per process, reset by every new state).
_CLOCK_AHEAD = [timedelta(0)]


def clock_now() -> datetime:
    """The emulated list's clock: its stamps, its `Date` header and its auth window."""
    return datetime.now(UTC) + _CLOCK_AHEAD[0]


def now_utc() -> str:
    """HL-A3 datetime: `YYYY-MM-DD HH:MM:SS` UTC."""
    return clock_now().strftime("%Y-%m-%d %H:%M:%S")


def _shift(stamp: str, seconds: float) -> str:
    moved = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S") + timedelta(seconds=seconds)
    return moved.strftime("%Y-%m-%d %H:%M:%S")


class HeyloyaltyError(Exception):
    """A request the emulator refuses; carries the HTTP status and the JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


def _bad(message: str) -> HeyloyaltyError:
    return HeyloyaltyError(400, {"error": message})


NOT_FOUND = {"message": "Not Found", "code": 404}
UNAUTHORIZED = {"message": "Unauthorized", "code": 401}


@dataclass
class _List:
    id: int
    name: str
    api_key: str
    created_at: str
    fields: dict[str, dict[str, Any]]
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_email: dict[str, set[str]] = field(default_factory=dict)
    by_mobile: dict[str, set[str]] = field(default_factory=dict)
    seq: int = 0
    version: int = 0  # bumped on every write; keys the listing cache
    cache: dict[Any, list[dict[str, Any]]] = field(default_factory=dict)

    def touch(self) -> None:
        """Record a write so cached member listings are recomputed."""
        self.version += 1
        self.cache.clear()


class _EventLog:
    """One tracking id's stored events, an import at a time, its rows compressed (a million
    customers' six million events would be ~6 GB as dicts; this is ~30 bytes an event)."""

    def __init__(self) -> None:
        self._imports: list[tuple[tuple[str, ...], bytes, list[str], int, str]] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(
        self,
        columns: list[str],
        rows: list[list[str]],
        member_ids: list[str],
        list_id: int,
        imported_at: str,
    ) -> None:
        """Keep the accepted rows of one import (`member_ids[i]` is row i's member)."""
        if rows:
            blob = zlib.compress(json.dumps(rows, ensure_ascii=False).encode(), 1)
            self._imports.append((tuple(columns), blob, member_ids, list_id, imported_at))
            self._count += len(rows)

    def events(self) -> list[dict[str, Any]]:
        """Every stored event as a dict of its columns plus member_id, list_id, imported_at."""
        found: list[dict[str, Any]] = []
        for columns, blob, member_ids, list_id, imported_at in self._imports:
            rows = json.loads(zlib.decompress(blob))
            for row, member_id in zip(rows, member_ids, strict=True):
                event: dict[str, Any] = dict(zip(columns, row, strict=True))
                event.update(member_id=member_id, list_id=list_id, imported_at=imported_at)
                found.append(event)
        return found


def _field_def(field_id: int, name: str, fmt: str, kind: str, options: Any) -> dict[str, Any]:
    definition = {
        "id": field_id,
        "type": kind,
        "type_id": 1 if kind == "fixed" else 2,
        "format": fmt,
        "name": name,
        "label": name.capitalize(),
    }
    if options is not None:
        definition["options"] = dict(options)
    return definition


def _new_list(list_id: int, name: str, api_key: str, custom: bool) -> _List:
    specs = [(n, f, o, "fixed") for n, f, o in FIXED_FIELDS]
    if custom:
        specs += [(n, f, o, "custom") for n, f, o in CUSTOM_FIELDS]
    fields = {n: _field_def(list_id * 100 + i, n, f, k, o) for i, (n, f, o, k) in enumerate(specs)}
    return _List(list_id, name, api_key, now_utc(), fields)


class HeyloyaltyState:
    """Accounts, lists, members and recorded traffic; every public method is thread-safe."""

    def __init__(self, rate_limit: int | None = 20) -> None:
        self.secrets = {key: secret for key, (secret, _) in ACCOUNTS.items()}
        self.lists: dict[int, _List] = {}
        for key, (_, lists) in ACCOUNTS.items():
            for list_id, name, custom in lists:
                self.lists[list_id] = _new_list(list_id, name, key, custom)
        self.tracking = dict(TRACKING_IDS)
        self.limiter = RateLimiter(rate_limit)  # HL-A12: 20 requests/s per API key
        self.upserts: list[dict[str, Any]] = []
        self.imports: list[dict[str, Any]] = []
        self.member_imports: list[dict[str, Any]] = []  # HL-A11, one entry per member import
        self.import_row_loss = RowLoss()
        # The shape of the member import's 2xx answer (HL-A11 is our assumption, so tests vary
        # it): "detailed" (counts and failed[]), "minimal" ({status, message}), "empty" (204),
        # "other" (JSON of another shape).
        self.member_import_answer = "detailed"
        self.member_import_first_row = 1  # the number failed[] gives the file's first data row
        self.import_refused_empty: set[str] = set()  # see refuse_empty_import_cells
        self._events: dict[int, _EventLog] = {t: _EventLog() for t in self.tracking}
        self._counts: Counter[str] = Counter()
        self._lock = threading.RLock()
        _CLOCK_AHEAD[0] = timedelta(0)

    # -- auth (HL-A1) -----------------------------------------------------------------------------
    def authenticate(self, request: Request) -> str | None:
        """The API key when Basic key:signature matches X-Request-Timestamp, else None."""
        creds = basic_credentials(request)
        stamp = request.headers.get("x-request-timestamp")
        if creds is None or stamp is None or creds[0] not in self.secrets:
            return None
        sent = _parse_timestamp(stamp)
        if sent is None or abs(clock_now() - sent) > CLOCK_SKEW:
            return None
        expected = signature(self.secrets[creds[0]], stamp)
        return creds[0] if hmac.compare_digest(expected.encode(), creds[1].encode()) else None

    # -- inspection and mutation API for tests ----------------------------------------------------
    @property
    def request_counts(self) -> dict[str, int]:
        """Requests received per kind (lists, list, members, member, create, upsert, ...)."""
        with self._lock:
            return dict(self._counts)

    def count(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def reset_counts(self) -> None:
        """Forget request counts, upsert log and import logs (not members or events)."""
        with self._lock:
            self._counts.clear()
            self.upserts.clear()
            self.imports.clear()
            self.member_imports.clear()

    def lose_import_rows(self, *values: str) -> None:
        """The next member import answers these rows (emails or mobiles) as imported but never
        stores them: a client must find out by reading the list back (HL-A11)."""
        self.import_row_loss.arm(set(values))

    def answer_imports_with(self, shape: str) -> None:
        """Member imports from now on answer in this shape (see `member_import_answer`)."""
        if shape not in ("detailed", "minimal", "empty", "other"):
            raise ValueError(f"unknown import answer shape: {shape}")
        self.member_import_answer = shape

    def number_import_rows_from(self, first: int) -> None:
        """failed[] of member imports numbers the first data row `first` (e.g. 2: the header
        line counted, 0: zero-based) - a vendor numbering rows other than HL-A11 assumes."""
        self.member_import_first_row = first

    def set_clock_ahead(self, seconds: float) -> None:
        """Run the list's clock `seconds` ahead of the machine's (negative: behind): every stamp
        it writes, its `Date` header and its timestamp check move with it."""
        _CLOCK_AHEAD[0] = timedelta(seconds=seconds)

    def edit_member(self, list_id: int, email: str, fields: dict[str, Any]) -> None:
        """Change a member's fields as someone editing it on the list would (its updated_at
        moves; its subscription state does not)."""
        with self._lock:
            target = self._list(list_id)
            member = self._one(list_id, email, None)
            self._set_fields(target, member, self._validate(target, fields))
            member["updated_at"] = now_utc()
            target.touch()

    def refuse_empty_import_cells(self, *fields: str) -> None:
        """Member imports from now on refuse a row with an empty cell in one of these fields
        (a list stricter than HL-A11 assumes about empty cells in typed columns)."""
        self.import_refused_empty |= set(fields)

    def backdate(self, list_id: int, email: str, seconds: float) -> None:
        """Move a member's updated_at (and unsubscribed_at, if set) `seconds` into the past."""
        with self._lock:
            member = self._one(list_id, email, None)
            for name in ("updated_at", "unsubscribed_at"):
                if member.get(name):
                    member[name] = _shift(member[name], -seconds)
            self._list(list_id).touch()

    def members(self, list_id: int) -> list[dict[str, Any]]:
        """Every member of a list, flat, in creation order."""
        with self._lock:
            return [_flat(m) for m in self._list(list_id).members.values()]

    def member_by_email(self, list_id: int, email: str) -> dict[str, Any] | None:
        """The first member whose email matches case-insensitively, flat, or None."""
        with self._lock:
            found = self._find(self._list(list_id), "email", email)
            return _flat(found[0]) if found else None

    def member_by_mobile(self, list_id: int, mobile: str) -> dict[str, Any] | None:
        """The first member with exactly this stored mobile (digits), flat, or None."""
        with self._lock:
            found = self._find(self._list(list_id), "mobile", mobile)
            return _flat(found[0]) if found else None

    def add_member(self, list_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        """Create a member directly (validated like the API), e.g. to seed a list in a test."""
        with self._lock:
            target = self._list(list_id)
            return _flat(self._create(target, self._validate(target, fields)))

    def unsubscribe(
        self, list_id: int, email: str | None = None, mobile: str | None = None
    ) -> dict[str, Any]:
        """Unsubscribe a member as if they clicked the link; bumps updated_at (HL-A5)."""
        with self._lock:
            member = self._one(list_id, email, mobile)
            now = now_utc()
            member.update(status="unsubscribed", unsubscribed_at=now, updated_at=now)
            self._list(list_id).touch()
            return _flat(member)

    def hard_bounce(self, list_id: int, email: str) -> dict[str, Any]:
        """Mark a member's email as hard-bounced (status.email = hard_bounce)."""
        with self._lock:
            member = self._one(list_id, email, None)
            member.update(email_status="hard_bounce", updated_at=now_utc())
            self._list(list_id).touch()
            return _flat(member)

    def events(self, tracking_id: int) -> list[dict[str, Any]]:
        """Tracking events stored by BI imports for one tracking id (HL-A10)."""
        with self._lock:
            found = self._events.get(tracking_id)
            return found.events() if found else []

    def upsert_flags(self, list_id: int, email: str) -> list[dict[str, Any]]:
        """The skipOptIn/trigger_autoresponder/trigger_webhooks flags of each upsert (HL-A7)."""
        wanted = email.lower()
        with self._lock:
            return [
                {
                    k: u[k]
                    for k in ("type", "skipOptIn", "trigger_autoresponder", "trigger_webhooks")
                }
                for u in self.upserts
                if u["list_id"] == list_id and (u["email"] or "").lower() == wanted
            ]

    def add_field(
        self, list_id: int, name: str, format: str, options: dict[str, str] | None = None
    ) -> None:
        """Add a custom field to a list (mapping-check tests, HL-A9)."""
        with self._lock:
            target = self._list(list_id)
            field_id = list_id * 100 + 50 + len(target.fields)
            target.fields[name] = _field_def(field_id, name, format, "custom", options)

    def remove_field(self, list_id: int, name: str) -> None:
        """Remove a field and its values (mapping-check tests, HL-A9)."""
        with self._lock:
            target = self._list(list_id)
            target.fields.pop(name, None)
            target.touch()
            for member in target.members.values():
                member["fields"].pop(name, None)

    def counts(self) -> dict[str, Any]:
        """Members per list and events per tracking id (for /_sandbox/summary)."""
        with self._lock:
            return {
                "members": {str(i): len(lst.members) for i, lst in self.lists.items()},
                "events": {str(t): len(e) for t, e in self._events.items()},
            }

    # -- internals --------------------------------------------------------------------------------
    def _list(self, list_id: int, api_key: str | None = None) -> _List:
        found = self.lists.get(int(list_id))
        if found is None or (api_key is not None and found.api_key != api_key):
            raise HeyloyaltyError(404, NOT_FOUND)
        return found

    def _find(self, target: _List, unique: str, value: Any) -> list[dict[str, Any]]:
        if value in (None, ""):
            return []
        index = target.by_email if unique == "email" else target.by_mobile
        key = str(value).lower() if unique == "email" else str(value)
        return [target.members[i] for i in sorted(index.get(key, ()))]

    def _one(self, list_id: int, email: str | None, mobile: str | None) -> dict[str, Any]:
        target = self._list(list_id)
        found = (
            self._find(target, "email", email) if email else self._find(target, "mobile", mobile)
        )
        if not found:
            raise KeyError(f"no member {email or mobile!r} on list {list_id}")
        return found[0]

    def _validate(self, target: _List, values: dict[str, Any]) -> dict[str, Any]:
        """HL-A8/HL-A9: known fields only, values in each field's format."""
        clean: dict[str, Any] = {}
        for name, value in values.items():
            definition = target.fields.get(name)
            if definition is None:
                raise _bad(f"Unknown field: {name}")
            clean[name] = _check_value(name, definition, value)
        return clean

    def _set_fields(self, target: _List, member: dict[str, Any], values: dict[str, Any]) -> None:
        old_email, old_mobile = member["fields"].get("email"), member["fields"].get("mobile")
        member["fields"].update(values)
        target.touch()
        _unindex(target.by_email, (old_email or "").lower(), member["id"])
        _unindex(target.by_mobile, old_mobile or "", member["id"])
        if member["fields"].get("email"):
            target.by_email.setdefault(member["fields"]["email"].lower(), set()).add(member["id"])
        if member["fields"].get("mobile"):
            target.by_mobile.setdefault(member["fields"]["mobile"], set()).add(member["id"])

    def _create(self, target: _List, values: dict[str, Any]) -> dict[str, Any]:
        if not values.get("email") and not values.get("mobile"):
            raise _bad("email or mobile is required")
        now = now_utc()
        target.seq += 1
        member = {
            "id": str(uuid.uuid4()),
            "list_id": target.id,
            "seq": target.seq,
            "fields": {},
            "status": "active",
            "email_status": "active",
            "created_at": now,
            "updated_at": now,
            "unsubscribed_at": None,
        }
        target.members[member["id"]] = member
        self._set_fields(target, member, values)
        return member

    def _update(self, target: _List, member: dict[str, Any], values: dict[str, Any]) -> None:
        """Apply values; per the HL-php comment, updating an unsubscribed member reactivates it."""
        self._set_fields(target, member, values)
        member["updated_at"] = now_utc()
        if member["status"] == "unsubscribed":
            member.update(status="active", unsubscribed_at=None)

    def _delete(self, target: _List, member: dict[str, Any]) -> None:
        self._set_fields(target, member, {"email": None, "mobile": None})
        del target.members[member["id"]]

    def routes(self) -> list[BaseRoute]:
        """Loyalty v1 routes, mounted at LOYALTY_PREFIX."""
        h = _Handlers(self)
        members = "/lists/{list_id:int}/members"
        return [
            Route("/lists", h.wrap("lists", h.get_lists), methods=["GET"]),
            Route("/lists/{list_id:int}", h.wrap("list", h.get_list), methods=["GET"]),
            Route(members, h.wrap("members", h.members), methods=["GET", "POST"]),
            Route(members + "/upsert", h.wrap("upsert", h.upsert), methods=["POST"]),
            Route(
                members + "/{member_id}",
                h.wrap("member", h.member),
                methods=["GET", "PUT", "PATCH", "DELETE"],
            ),
            Route(
                "/lists/{list_id:int}/import", h.wrap("import", h.member_import), methods=["POST"]
            ),
        ]

    def bi_routes(self) -> list[BaseRoute]:
        """BI tracking import, mounted at BI_PREFIX (HL-A10)."""
        h = _Handlers(self)
        return [
            Route(
                "/transaction/import/{tracking_id:int}",
                h.wrap("bi_import", h.bi_import),
                methods=["POST"],
            )
        ]


def signature(secret: str, timestamp: str) -> str:
    """HL-A1: base64 of the lowercase hex HMAC-SHA256 of the exact timestamp string."""
    digest = hmac.new(secret.encode(), timestamp.encode(), hashlib.sha256).hexdigest()
    return base64.b64encode(digest.encode()).decode()


def _parse_timestamp(raw: str) -> datetime | None:
    """RFC 1123 or ISO 8601; a naive value is taken as UTC."""
    parsed: datetime | None
    try:
        parsed = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        try:
            parsed = datetime.fromisoformat(raw.strip())
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _unindex(index: dict[str, set[str]], key: str, member_id: str) -> None:
    ids = index.get(key)
    if ids:
        ids.discard(member_id)
        if not ids:
            del index[key]


def _check_value(name: str, definition: dict[str, Any], value: Any) -> Any:
    """One field value in its format; None or "" clears the field."""
    if value is None or value == "":
        return None
    if isinstance(value, (dict, list)) and definition["format"] != "multi":
        raise _bad(f"Invalid value for field {name}")
    text = str(value).strip() if not isinstance(value, bool) else str(int(value))
    if name == "email" and "@" not in text:
        raise _bad("Invalid email")
    if name == "mobile" and not text.isdigit():
        raise _bad("Invalid mobile")  # HL-A8: digits with country code, no "+"
    return _check_format(name, definition, value, text)


def _check_format(name: str, definition: dict[str, Any], value: Any, text: str) -> Any:
    fmt = definition["format"]
    options = definition.get("options") or {}
    if fmt == "choice" and text not in options:
        raise _bad(f"Invalid option for field {name}: {text}")
    if fmt == "multi":
        chosen = [str(v) for v in (value if isinstance(value, list) else [value])]
        if any(v not in options for v in chosen):
            raise _bad(f"Invalid option for field {name}")
        return chosen
    if fmt == "date" and not _valid_date(text):
        raise _bad(f"Invalid date for field {name}: {text}")
    if fmt == "number" and not re.fullmatch(r"-?\d+", text):
        raise _bad(f"Invalid number for field {name}: {text}")
    if fmt == "boolean":
        if text.lower() not in {"1", "0", "true", "false"}:
            raise _bad(f"Invalid boolean for field {name}: {text}")
        return "1" if text.lower() in {"1", "true"} else "0"
    if len(text) > 255:
        raise _bad(f"Value too long for field {name}")
    return text


def _valid_date(text: str) -> bool:
    if not _DATE.match(text):
        return False
    try:
        datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def _flat(member: dict[str, Any]) -> dict[str, Any]:
    """The inspection shape for tests."""
    return {
        "id": member["id"],
        "email": member["fields"].get("email"),
        "mobile": member["fields"].get("mobile"),
        "status": member["status"],
        "email_status": member["email_status"],
        "fields": dict(member["fields"]),
        "created_at": member["created_at"],
        "updated_at": member["updated_at"],
        "unsubscribed_at": member["unsubscribed_at"],
    }


def _member_json(target: _List, member: dict[str, Any]) -> dict[str, Any]:
    """HL-A3: the NP-BC member shape, every list field present."""
    fields: dict[str, Any] = {}
    for name, definition in target.fields.items():
        entry: dict[str, Any] = {"value": member["fields"].get(name)}
        if definition["format"] in ("choice", "multi"):
            entry["options"] = dict(definition.get("options") or {})
        fields[name] = entry
    has_email = bool(member["fields"].get("email"))
    status = {
        "status": member["status"],
        "email": member["email_status"] if has_email else None,
        "mobile": "active" if member["fields"].get("mobile") else None,
    }
    return {
        "id": member["id"],
        "created_at": member["created_at"],
        "updated_at": member["updated_at"],
        "unsubscribed_at": member["unsubscribed_at"],
        "status": status,
        "fields": fields,
    }


def _flag(value: Any) -> int | None:
    """0/1 flags may arrive as bools, ints or strings; None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        return 1 if value.strip().lower() in {"1", "true", "yes"} else 0
    return 1 if value else 0


class _Handlers:
    """HTTP endpoints; each runs inside `wrap` (count, auth, rate limit, error mapping)."""

    def __init__(self, state: HeyloyaltyState) -> None:
        self.state = state

    def wrap(self, kind: str, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            response = await answer(request)
            # RFC 9110 6.6.1: a server with a clock sends Date, here the list's own clock
            response.headers["date"] = format_datetime(clock_now(), usegmt=True)
            return response

        async def answer(request: Request) -> Response:
            self.state.count(kind)
            api_key = self.state.authenticate(request)
            if api_key is None:
                return JSONResponse(UNAUTHORIZED, 401)
            decision = self.state.limiter.hit(api_key)
            if not decision.allowed:  # HL-A12
                body = {"message": "Too Many Requests", "code": 429}
                return JSONResponse(body, 429, headers={"Retry-After": "1"})
            try:
                return await handler(request, api_key)
            except HeyloyaltyError as error:
                return JSONResponse(error.body, error.status)

        return endpoint

    async def _params(self, request: Request) -> dict[str, Any]:
        """HL-A2: query, form and JSON merged; the body wins."""
        merged: dict[str, Any] = dict(request.query_params)
        body = await request.body()
        kind = media_type(request)
        if not body:
            return merged
        if kind == "application/json":
            try:
                parsed = json.loads(body)
            except ValueError as error:
                raise _bad("Invalid JSON body") from error
            if not isinstance(parsed, dict):
                raise _bad("JSON body must be an object")
            merged.update(parsed)
        elif kind == "application/x-www-form-urlencoded":
            merged.update(parse_urlencoded(body))
        elif kind == "multipart/form-data":
            merged.update(self._multipart(request, body).fields)
        return merged

    def _multipart(self, request: Request, body: bytes) -> Any:
        try:
            return parse_multipart(request.headers.get("content-type", ""), body)
        except ValueError as error:
            raise _bad(str(error)) from error

    async def get_lists(self, request: Request, api_key: str) -> Response:
        with self.state._lock:
            lists = [
                {
                    "id": lst.id,
                    "name": lst.name,
                    "created_at": lst.created_at,
                    "members": len(lst.members),
                    "open_rate": 0,
                    "click_rate": 0,
                }
                for lst in self.state.lists.values()
                if lst.api_key == api_key
            ]
        return JSONResponse(lists)

    async def get_list(self, request: Request, api_key: str) -> Response:
        with self.state._lock:
            target = self.state._list(request.path_params["list_id"], api_key)
            body = {
                "id": target.id,
                "name": target.name,
                "created_at": target.created_at,
                "country_id": 1,
                "duplicates": "allow",
                "date_format": "Y-m-d",
                "fields": json.loads(json.dumps(target.fields)),
            }
        return JSONResponse(body)

    async def members(self, request: Request, api_key: str) -> Response:
        if request.method == "POST":
            return await self.create_member(request, api_key)
        query = request.query_params
        page, perpage = _int(query.get("page"), 1), _int(query.get("perpage"), 50)
        if perpage > MAX_PERPAGE:
            raise _bad(f"perpage must be <= {MAX_PERPAGE}")  # HL-A4
        if page < 1 or perpage < 1:
            raise _bad("page and perpage must be positive")
        with self.state._lock:
            target = self.state._list(request.path_params["list_id"], api_key)
            key = tuple(
                sorted(kv for kv in query.multi_items() if kv[0] not in ("page", "perpage"))
            )
            rows = target.cache.get(key)
            if rows is None:
                rows = target.cache[key] = _filtered(target, query)
            chosen = rows[(page - 1) * perpage : page * perpage]
            return JSONResponse({"members": [_member_json(target, m) for m in chosen]})

    async def create_member(self, request: Request, api_key: str) -> Response:
        params = await self._params(request)
        with self.state._lock:
            target = self.state._list(request.path_params["list_id"], api_key)
            values = {k: v for k, v in params.items() if k not in CONTROL_KEYS}
            member = self.state._create(target, self.state._validate(target, values))
        return JSONResponse({"id": member["id"]}, 201)

    async def member(self, request: Request, api_key: str) -> Response:
        params = await self._params(request) if request.method != "GET" else {}
        with self.state._lock:
            target = self.state._list(request.path_params["list_id"], api_key)
            member = target.members.get(request.path_params["member_id"])
            if member is None:
                raise HeyloyaltyError(404, NOT_FOUND)
            if request.method == "GET":
                return JSONResponse(_member_json(target, member))
            if request.method == "DELETE":
                self._delete(target, member, _flag(params.get("obscureMemberData")) == 1)
                return Response(status_code=204)
            values = self.state._validate(
                target, {k: v for k, v in params.items() if k not in CONTROL_KEYS}
            )
            if request.method == "PUT":  # full replace: fields not sent are erased
                values = {name: values.get(name) for name in target.fields}
            self.state._update(target, member, values)
        return Response(status_code=204)

    def _delete(self, target: _List, member: dict[str, Any], obscure: bool) -> None:
        if not obscure:
            self.state._delete(target, member)
            return
        self.state._set_fields(target, member, {name: None for name in target.fields})
        now = now_utc()
        member.update(status="unsubscribed", unsubscribed_at=now, updated_at=now)
        target.touch()

    async def upsert(self, request: Request, api_key: str) -> Response:
        """HL-A6/HL-A7/HL-A9: raw JSON upsert on email or mobile."""
        if media_type(request) != "application/json":
            raise _bad("Upsert requires a raw JSON body")
        body = await self._params(request)
        unique = body.get("unique_field")
        member_values = body.get("member")
        if unique not in ("email", "mobile"):
            raise _bad("unique_field must be email or mobile")
        if not isinstance(member_values, dict):
            raise _bad("member must be an object")
        with self.state._lock:
            target = self.state._list(request.path_params["list_id"], api_key)
            values = self.state._validate(target, member_values)
            if not values.get(unique):
                raise _bad(f"member.{unique} is required when unique_field is {unique}")
            found = self.state._find(target, unique, values[unique])
            if len(found) > 1:
                raise _bad("Multiple members match")
            if found:
                member, kind = found[0], "update"
                self.state._update(target, member, values)
            else:
                member, kind = self.state._create(target, values), "create"
            self._record_upsert(target, member, kind, unique, body)
        return JSONResponse({"type": kind, "member_id": member["id"]})

    def _record_upsert(
        self, target: _List, member: dict[str, Any], kind: str, unique: str, body: dict[str, Any]
    ) -> None:
        self.state.upserts.append(
            {
                "list_id": target.id,
                "member_id": member["id"],
                "type": kind,
                "unique_field": unique,
                "email": member["fields"].get("email"),
                "mobile": member["fields"].get("mobile"),
                "skipOptIn": _flag(body.get("skipOptIn")),
                "trigger_autoresponder": _flag(body.get("trigger_autoresponder")),
                "trigger_webhooks": _flag(body.get("trigger_webhooks")),
                "at": now_utc(),
            }
        )

    async def member_import(self, request: Request, api_key: str) -> Response:
        """HL 2.4 / HL-A11: the CSV member import (see sandbox/heyloyalty_import.py)."""
        form = self._form(request, await request.body())
        params = {
            name: form.get(name)
            for name in (
                "duplicate_field",
                "handle_existing",
                "date_format",
                "trigger_autoresponder",
                "sendErrorsTo",
            )
        }
        if not form.get_all("fields_selected[]"):
            raise _bad("fields_selected[] is required: the file's columns, in order")
        if not params["date_format"]:  # every documented caller sends it (HL 2.4)
            raise _bad("date_format is required")
        trigger = params["trigger_autoresponder"]
        if trigger is not None and trigger.strip() not in ("0", "1"):
            raise _bad("trigger_autoresponder must be 0 or 1")
        sender = params["sendErrorsTo"]
        if sender is not None and "@" not in sender:
            raise _bad("sendErrorsTo must be an email address")
        with self.state._lock:
            target = self.state._list(request.path_params["list_id"], api_key)
            columns, rows = _csv_rows(form)
            try:
                body = import_members(self.state, target, params, columns, rows)
            except ImportRefused as error:
                raise HeyloyaltyError(error.status, error.body) from None
            shape = self.state.member_import_answer
        if shape == "minimal":
            return JSONResponse({"status": "success", "message": body["message"]})
        if shape == "empty":
            return Response(status_code=204)
        if shape == "other":
            return JSONResponse({"message": "Import queued", "id": len(self.state.member_imports)})
        return JSONResponse(body)

    def _form(self, request: Request, body: bytes) -> Any:
        if media_type(request) != "multipart/form-data":
            raise HeyloyaltyError(400, {"status": "error", "message": "multipart body required"})
        try:
            return parse_multipart(request.headers.get("content-type", ""), body)
        except ValueError as error:
            raise HeyloyaltyError(400, {"status": "error", "message": str(error)}) from error

    async def bi_import(self, request: Request, api_key: str) -> Response:
        """HL-A10: one CSV of tracking events per call; rows are matched to list members."""
        tracking_id = request.path_params["tracking_id"]
        list_id = self.state.tracking.get(tracking_id)
        form = self._form(request, await request.body())
        with self.state._lock:
            if list_id is None:
                raise HeyloyaltyError(404, NOT_FOUND)
            target = self.state._list(list_id, api_key)
            columns, rows = _csv_rows(form)
            if len(rows) > MAX_BI_ROWS:
                message = f"Too many rows: {len(rows)} (max {MAX_BI_ROWS} per file)"
                raise HeyloyaltyError(400, {"status": "error", "message": message})
            match = "email" if "email" in columns else "mobile" if "mobile" in columns else None
            if match is None:
                message = "The file needs an email or mobile column"
                raise HeyloyaltyError(400, {"status": "error", "message": message})
            date_format = form.get("date_format") or "Y-m-d H:i:s"
            failed, stored = self._store_events(
                target, tracking_id, columns, rows, match, date_format
            )
            self.state.imports.append(
                {
                    "tracking_id": tracking_id,
                    "rows": len(rows),
                    "imported": stored,
                    "failed": failed,
                    "columns": columns,
                    "date_format": date_format,
                }
            )
        body = {
            "status": "success",
            "message": f"{stored} rows imported",
            "imported": stored,
            "failed": failed,
        }
        return JSONResponse(body)

    def _store_events(
        self,
        target: _List,
        tracking_id: int,
        columns: list[str],
        rows: list[list[str]],
        match: str,
        date_format: str,
    ) -> tuple[list[dict[str, Any]], int]:
        failed: list[dict[str, Any]] = []
        kept: list[list[str]] = []
        member_ids: list[str] = []
        for number, row in enumerate(rows, start=1):
            error, member = _event_problem(self.state, target, columns, row, match, date_format)
            if error:
                failed.append({"row": number, "error": error})
                continue
            kept.append(row)
            member_ids.append(member["id"])
        log = self.state._events.setdefault(tracking_id, _EventLog())
        log.add(columns, kept, member_ids, target.id, now_utc())
        return failed, len(kept)


def _event_problem(
    state: HeyloyaltyState,
    target: _List,
    columns: list[str],
    row: list[str],
    match: str,
    date_format: str,
) -> tuple[str | None, dict[str, Any] | None]:
    """Why a BI row cannot be stored (None if it can), and the member it belongs to."""
    if not row:
        return "Empty row", None
    values = dict(zip(columns, row, strict=True))
    if "date" in values and not _valid_datetime(values["date"], date_format):
        return f"Invalid date '{values['date']}' for date_format {date_format}", None
    found = state._find(target, match, values[match].strip())
    if not found:
        return f"No member with {match} '{values[match]}' on list {target.id}", None
    return None, found[0]


def _valid_datetime(value: str, php_format: str) -> bool:
    try:
        if php_format.lower() in ("iso8601", "iso", "c"):
            datetime.fromisoformat(value)
        else:
            pattern = "".join(_PHP_DATE.get(ch, ch) for ch in php_format)
            datetime.strptime(value, pattern)
    except ValueError:
        return False
    return True


DELIMITERS = (",", ";", "\t")  # one character; no named aliases (HL 2.4 names the parameter only)


def _csv_rows(form: Any) -> tuple[list[str], list[list[str]]]:
    """Column names (`fields_selected[]`, else the header line) and data rows. The first line is
    skipped only when `skip_header_line` is 1; a blank line is a row (empty: refused by the
    import), never dropped, so row numbers count every line after the header."""
    file_part = form.files.get("file")
    if file_part is None:
        raise HeyloyaltyError(400, {"status": "error", "message": "file part is required"})
    if form.file_types.get("file", "text/csv") != "text/csv":  # HL 2.4: the file part as text/csv
        raise HeyloyaltyError(400, {"status": "error", "message": "file part must be text/csv"})
    delimiter = form.get("delimiter") or ","
    if delimiter not in DELIMITERS:
        raise HeyloyaltyError(400, {"status": "error", "message": "Invalid delimiter"})
    skip = form.get("skip_header_line")
    if skip is not None and skip.strip() not in ("0", "1"):
        message = "skip_header_line must be 0 or 1"
        raise HeyloyaltyError(400, {"status": "error", "message": message})
    try:
        text = file_part[1].decode("utf-8-sig")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        message = f"Malformed file, nothing imported: {error}"
        raise HeyloyaltyError(400, {"status": "error", "message": message}) from error
    selected = form.get_all("fields_selected[]")
    if not selected:
        if not rows:
            return [], []
        columns, rows = [c.strip() for c in rows[0]], rows[1:]
    else:
        columns = selected
        if rows and skip is not None and skip.strip() == "1":
            rows = rows[1:]
    _check_shape(columns, rows)
    return columns, rows


def _check_shape(columns: list[str], rows: list[list[str]]) -> None:
    """HL-A10 is one file per call: a row with a different number of columns means the file is
    broken (cut off, or a delimiter inside an unquoted value), so nothing of it is stored."""
    for number, row in enumerate(rows, start=1):
        if row and len(row) != len(columns):  # a blank line is a row of its own, refused
            message = (
                f"Malformed file, nothing imported: row {number} has {len(row)} columns, "
                f"expected {len(columns)}"
            )
            raise HeyloyaltyError(400, {"status": "error", "message": message})


def _int(raw: str | None, default: int) -> int:
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as error:
        raise _bad(f"Invalid integer: {raw}") from error


def _filtered(target: _List, query: Any) -> list[dict[str, Any]]:
    """HL-A4/HL-A5: `filter[<field>][<op>][]=<value>` with `logic` and/or, then ordering."""
    conditions: list[tuple[str, str, list[str]]] = []
    for key in dict.fromkeys(query.keys()):
        matched = _FILTER.match(key)
        if matched:
            name, op = matched.group(1), matched.group(2)
            if name not in target.fields and name not in META_FILTER_FIELDS:
                raise _bad(f"Unknown field: {name}")
            conditions.append((name, op, query.getlist(key)))
    logic = query.get("logic", "and")
    combine = any if logic == "or" else all
    members = list(target.members.values())
    if len(conditions) == 1 and conditions[0][:2] == ("updated_at", "gte"):
        # The changed-since read (HL-A5) is asked before every chunk of sends: a plain string
        # comparison (both sides `YYYY-MM-DD HH:MM:SS`, which sorts as time), same result as
        # the general path below without its per-member cost on a 100k list.
        low = min(_normal("updated_at", w) for w in conditions[0][2])
        members = [m for m in members if m.get("updated_at") and m["updated_at"] >= low]
    elif len(conditions) == 1 and conditions[0][:2] in (("email", "eq"), ("email", "in")):
        # The read of members right before their updates (one, or a chunk, HL-A14): the list's
        # email index, same result as the general path below without a scan of a 100k list.
        ids = {i for w in conditions[0][2] for i in target.by_email.get(_normal("email", w), ())}
        members = [target.members[i] for i in ids]
    elif len(conditions) == 1 and conditions[0][:2] in (("mobile", "eq"), ("mobile", "in")):
        ids = {i for w in conditions[0][2] for i in target.by_mobile.get(_normal("mobile", w), ())}
        members = [target.members[i] for i in ids]
    elif conditions:
        members = [m for m in members if combine(_test(m, *c) for c in conditions)]
    order_by = query.get("orderby", "created_at")
    reverse = query.get("order") in ("-1", "desc")
    members.sort(key=lambda m: (str(_value(m, order_by) or ""), m["seq"]), reverse=reverse)
    return members


def _value(member: dict[str, Any], name: str) -> Any:
    if name in META_FILTER_FIELDS:
        return member["status"] if name == "status" else member.get(name)
    return member["fields"].get(name)


def _normal(name: str, value: Any) -> str:
    text = "" if value is None else str(value)
    if name == "email":
        return text.lower()
    if name in ("created_at", "updated_at", "unsubscribed_at") and text:
        text = text.replace("T", " ").removesuffix("Z")[:19]
        if not _DATETIME.match(text):
            raise _bad(f"Invalid datetime for filter {name}: {value}")
    return text


def _test(member: dict[str, Any], name: str, op: str, wanted: list[str]) -> bool:
    actual = _normal(name, _value(member, name))
    targets = [_normal(name, w) for w in wanted]
    checks = {
        "eq": lambda: actual in targets,
        "in": lambda: actual in targets,
        "neq": lambda: actual not in targets,
        "nin": lambda: actual not in targets,
        "gt": lambda: bool(actual) and any(_cmp(actual, t) > 0 for t in targets),
        "gte": lambda: bool(actual) and any(_cmp(actual, t) >= 0 for t in targets),
        "lt": lambda: bool(actual) and any(_cmp(actual, t) < 0 for t in targets),
        "lte": lambda: bool(actual) and any(_cmp(actual, t) <= 0 for t in targets),
        "ct": lambda: any(t in actual for t in targets),
        "nct": lambda: all(t not in actual for t in targets),
        "sw": lambda: any(actual.startswith(t) for t in targets),
        "ew": lambda: any(actual.endswith(t) for t in targets),
        "ie": lambda: actual == "",
        "nie": lambda: actual != "",
    }
    if op not in checks:
        raise _bad(f"Unknown filter operator: {op}")
    return checks[op]()


def _cmp(left: str, right: str) -> int:
    """Numeric when both sides are numbers, else string order (dates sort as strings)."""
    if re.fullmatch(r"-?\d+", left) and re.fullmatch(r"-?\d+", right):
        a, b = int(left), int(right)
    else:
        a, b = left, right  # type: ignore[assignment]
    return (a > b) - (a < b)


def build(data: SandboxData, rate_limits: bool) -> HeyloyaltyState:
    """The two demo accounts with their empty lists (the pipelines fill them)."""
    return HeyloyaltyState(RATE_LIMIT if rate_limits else None)


def mounts(state: HeyloyaltyState) -> list[BaseRoute]:
    """The loyalty API and the BI import API, each under its own prefix."""
    return [
        Mount(LOYALTY_PREFIX, routes=state.routes()),
        Mount(BI_PREFIX, routes=state.bi_routes()),
    ]


def control_routes(state: HeyloyaltyState) -> list[BaseRoute]:
    """`POST /_sandbox/heyloyalty/unsubscribe {list_id, email | mobile}`: a member clicked the
    unsubscribe link; 404 when the list or the member is unknown."""

    async def unsubscribe(request: Request) -> Response:
        body = await json_object(request)
        try:
            member = state.unsubscribe(
                int(body["list_id"]), email=body.get("email"), mobile=body.get("mobile")
            )
        except (KeyError, ValueError, TypeError, HeyloyaltyError) as error:
            return JSONResponse({"error": str(error)}, 404)
        return JSONResponse(member)

    return [Route("/unsubscribe", unsubscribe, methods=["POST"])]


EMULATOR = Emulator(
    name="heyloyalty",
    build=build,
    routes=mounts,
    credentials={
        "HEYLOYALTY_API_KEY": HEYLOYALTY_API_KEY,
        "HEYLOYALTY_API_SECRET": HEYLOYALTY_API_SECRET,
        "HEYLOYALTY_OTHER_API_KEY": HEYLOYALTY_OTHER_API_KEY,
        "HEYLOYALTY_OTHER_API_SECRET": HEYLOYALTY_OTHER_API_SECRET,
    },
    summary=lambda state: state.counts(),
    control_routes=control_routes,
)
