"""Syneton Admin IS / Admin Consult REST API emulator (AD-A1..AD-A12).

Written from the API file and the assumed contract, as strict as they allow, so a client that
misreads them fails here as it would at an accountancy office's server:

- AD-A1: served under `<sandbox>/admin/api/v1`.
- AD-A2: `GET token/{api_key}` gives `{TokenGuid, TimeToLive}` (ISO, Brussels local time, no
  offset, now + DurationToken: a client reads the server's clock from it); every other call
  needs the `synetonToken` header; a bad key is 401 "Invalid api key",
  a missing, unknown or expired token 401 "Token expired".
- AD-A3: `apisettings`; more than `RateLimit` calls in any 60 s (sliding, token calls not counted
  [I]) is 403 "You are throttling the system".
- AD-A4: lists are plain JSON arrays, `per_page` (default DefaultRecordsPerPage, above
  MaxRecordsPerPage a 400), the next page in `Link: <absolute url>; rel="next"` (the page number
  in `page` [I]; any other query parameter is 400); an empty list is 204 without a body, an
  empty *filtered* list 404 "Nothing found". A URL longer than 2048 characters is 414.
- `Filter=`: the SDK syntax, see `parse_filter`; string comparison is case-insensitive (SQL
  Anywhere's default); an unknown field or a bad expression is 400.
- Customers: GET list/one (no address fields), POST create (201 with the created customer), PUT
  `customers` with `CustomerId` in the body. PUT is a *full* replace of the writable fields [I]
  (the SDK sends them all after a fresh GET): a writable field left out becomes null, except
  `IsCompany` and `Newsletter`, which keep their value; the head-office address fields
  (`Street1, Street2, Nr, Box, Zipcode, City, CountryCode`) are replaced too, so a PUT without
  them wipes the address; `Name` is required. `Newsletter` is accepted on POST and PUT (AD-A7,
  AD-A8); any other field is 400. `POST customers/{id}/activatedeactivate {IsActive,
  DisabledDate?}`.
- Customer addresses (section 2.2, a separate endpoint; path and fields as the SDK's
  CustomerAddressList): `GET customeraddresses?Filter=CustomerId eq <id> and RegisteredOffice eq
  true` gives the head office as `{CustomerAddressId, AddressId, CustomerId, StreetName, Street1
  (street, number and box in one), Street2, HouseNr, HouseBox, ZipCode, City, CountryCode,
  RegisteredOffice, InvoiceAddress, PostalAddress, ExploitationAddress}`.
- AD-A6: every create, update (each PUT, changed or not [I]), delete and (de)activation appends a
  row to `customer/changes` with TableName CUSTOMER; interest links write CUSTOMER_INTEREST rows
  and custom-field edits CUSTOMER_EXTRADATA rows [I] (`Id` the customer, `OwnId` the linked row).
  One call returns at most the first 1000 matching rows (by LogId).
- AD-A9: `POST communications` is 201 with the new communication, each POST a new one, so a
  test sees a double POST. With `dedupe_communications` on, a second POST with the same
  (CustomerId, Date, Description) is 200 with the existing one (nothing new is stored).
- AD-A10: `interests`, `customers/{id}/interests[/{InterestId}]`; linking one twice is 400
  "already linked", removing one that is not linked 400 "does not exist".
- AD-A11: `extradata/{CUSTOMER_TABLE_ID}` gives `[{CustomerId, acc_software, kantoor,
  klant_sinds}]`; another table id is 404 "No extradata found".
- Lists [I]: `customercrmtypes` and `lists/19` (languages) as `[{ListValueId, ListValue, ExtCode,
  LegalForm}]`.
- AD-A12: every refusal is `{"ErrorMessage": "..."}`.

Every request is counted per endpoint in `request_counts` (`"GET customers"`, `"PUT customers"`,
`"GET customers/{}/interests"`, `"GET token/{}"`), refusals per status in `refusals`.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from sandbox.admin_data import (
    CRM_TYPES,
    CUSTOMER_GROUPS,
    LANGUAGES,
    AdminData,
    generate_admin,
    relation_count,
)
from sandbox.emulator import Emulator
from sandbox.generator import SandboxData
from sandbox.httputil import MessageError, json_object
from sandbox.ratelimit import RateLimiter

PREFIX = "/admin"
BASE = "/api/v1"  # AD-A1: a client's base URL is `<sandbox>/admin/api/v1`
ADMIN_API_KEY = "demo-admin-api-key"
API_KEY_ENV = "MEMBERFLOW_ADMIN_API_KEY"
CUSTOMER_TABLE_ID = 1  # AD-A11: the extra table of the CUSTOMER table [I]
LANGUAGE_LIST_ID = 19  # section 2.2: list 19 = languages
CHANGES_CAP = 1000  # AD-A6: the SDK's "technical maximum" per call
MAX_URI = 2048
RATE_WINDOW = 60.0  # AD-A3: seconds
QUERY_PARAMS = {"Filter", "per_page", "page"}  # [I] any other (e.g. `filter`) is a 400
BRUSSELS = ZoneInfo("Europe/Brussels")
DEFAULT_SETTINGS: dict[str, int] = {
    "DefaultRecordsPerPage": 100,
    "MaxRecordsPerPage": 1000,
    "DurationToken": 30,  # minutes
    "RateLimit": 60,  # calls per RATE_WINDOW
}
INVALID_KEY = "Invalid api key"
TOKEN_EXPIRED = "Token expired"
THROTTLED = "You are throttling the system"
NOTHING_FOUND = "Nothing found"

Row = dict[str, Any]
Handler = Callable[[Request, Any], Response]


class AdminError(MessageError):
    """A refused request: AD-A12's `{"ErrorMessage": …}` body."""

    message_key = "ErrorMessage"


def _bad(message: str) -> AdminError:
    return AdminError(400, message)


def brussels_now() -> datetime:
    """The server's local wall-clock time (naive, whole seconds), as Admin writes it."""
    return datetime.now(UTC).astimezone(BRUSSELS).replace(tzinfo=None, microsecond=0)


def stamp(moment: datetime) -> str:
    """AD-A6's `DateAction` and the write format: `YYYY-MM-DD HH:MM:SS`."""
    return moment.strftime("%Y-%m-%d %H:%M:%S")


# -- field types, shared by the filter parser and the body checks ---------------------------------
CUSTOMER_FIELDS: dict[str, str] = {
    "CustomerId": "int",
    "Name": "str",
    "Firstname": "str",
    "CommercialName": "str",
    "IsCompany": "bool",
    "IsActive": "bool",
    "DisabledDate": "datetime",
    "CustCode": "str",
    "CustKind": "str",
    "CustomerCrmType": "int",
    "CustomerGroup": "int",
    "CompanyId": "int",
    "CreationDate": "datetime",
    "Email": "str",
    "Phone": "str",
    "Phone2": "str",
    "Mobile": "str",
    "Fax": "str",
    "Homepage": "str",
    "Language": "str",
    "Newsletter": "bool",
    "DateOfBirth": "datetime",
    "PlaceOfBirth": "str",
    "Nationality": "str",
    "Sex": "str",
    "Title": "str",
    "VATNr": "str",
    "NaceCode": "str",
    "Sector": "str",
    "RPR": "str",
    "Remarks": "str",
}
CHANGE_FIELDS = {
    "LogId": "int",
    "Id": "int",
    "OwnId": "int",
    "TableName": "str",
    "ActionType": "str",
    "DateAction": "datetime",
}
COMMUNICATION_FIELDS = {
    "CommunicationId": "int",
    "CustomerId": "int",
    "Date": "datetime",
    "CommunicationType": "str",
    "Subject": "str",
    "Description": "str",
}
INTEREST_FIELDS = {"InterestId": "int", "Description": "str"}
EXTRADATA_FIELDS = {
    "CustomerId": "int",
    "acc_software": "str",
    "kantoor": "str",
    "klant_sinds": "date",
}
LIST_FIELDS = {"ListValueId": "int", "ListValue": "str", "ExtCode": "str", "LegalForm": "str"}
ADDRESS_PATH = "/customeraddresses"  # SY-sdk customer_address.py: CustomerAddressList
ADDRESS_VIEW_FIELDS = {
    "CustomerAddressId": "int",
    "AddressId": "int",
    "CustomerId": "int",
    "StreetName": "str",
    "Street1": "str",
    "Street2": "str",
    "HouseNr": "str",
    "HouseBox": "str",
    "ZipCode": "str",
    "City": "str",
    "CountryCode": "str",
    "RegisteredOffice": "bool",
    "InvoiceAddress": "bool",
    "PostalAddress": "bool",
    "ExploitationAddress": "bool",
}
# section 2.2's writable fields, plus Newsletter (AD-A7, AD-A8); the address is write-only
WRITABLE: dict[str, str] = {
    k: CUSTOMER_FIELDS[k]
    for k in (
        "Name",
        "CommercialName",  # [S] SY-sdk customer.py maps it on PUT and POST
        "Firstname",
        "Email",
        "Mobile",
        "Phone",
        "Language",
        "IsCompany",
        "CustomerCrmType",
        "CustomerGroup",
        "CustCode",
        "Homepage",
        "Title",
        "VATNr",
        "NaceCode",
        "Remarks",
        "RPR",
        "Newsletter",
    )
}
ADDRESS_FIELDS = ("Street1", "Street2", "Nr", "Box", "Zipcode", "City", "CountryCode")
KEPT_ON_PUT = ("IsCompany", "Newsletter")  # [I] not nulled when a PUT leaves them out
CUSTOM_FIELDS = tuple(k for k in EXTRADATA_FIELDS if k != "CustomerId")


# -- the Filter parser ----------------------------------------------------------------------------
_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>-?\d+(?:\.\d+)?)(?![\w.])"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_.]*)|(?P<punct>[(),]))"
)
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}( \d{2}:\d{2}:\d{2})?$")
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}
_FUNCTIONS: dict[str, Callable[[str, str], bool]] = {
    "startswith": lambda a, b: a.startswith(b),
    "endswith": lambda a, b: a.endswith(b),
    "contains": lambda a, b: b in a,
}
Predicate = Callable[[Row], bool]


def parse_filter(text: str, fields: Mapping[str, str]) -> Predicate:
    """The SDK's `Filter` syntax over `fields` (name -> type), as one predicate on a row.

    `<Field> <op> <value>` joined by `and`; ops `eq ne gt ge lt le`, `in (…)`, `not in (…)`,
    `is null`, `is not null`, and `StartsWith(f,'v')`, `EndsWith(f,'v')`, `Contains(f,'v')`.
    Strings and datetimes are single-quoted (`''` escapes a quote; datetimes `'YYYY-MM-DD
    HH:MM:SS'` or a date), booleans `true`/`false` (or the SDK's 1/0), numbers bare. A field may
    carry a table alias (`l.LogId`). A comparison with a null value is false, as in SQL.
    Raises AdminError(400) for an unknown field or a malformed expression."""
    return _Parser(_tokens(text), fields).parse()


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while text[pos:].strip():
        match = _TOKEN.match(text, pos)
        if match is None or match.lastgroup is None:
            raise _bad(f"Invalid filter near '{text[pos:].strip()[:30]}'")
        tokens.append((match.lastgroup, match.group(match.lastgroup)))
        pos = match.end()
    return tokens


class _Parser:
    """A recursive-descent reading of one Filter; each condition becomes a closure."""

    def __init__(self, tokens: list[tuple[str, str]], fields: Mapping[str, str]) -> None:
        self.tokens, self.fields, self.pos = tokens, fields, 0

    def parse(self) -> Predicate:
        if not self.tokens:
            raise _bad("Invalid filter: empty expression")
        conditions = [self._condition()]
        while self.pos < len(self.tokens):
            word = self._take("word", "'and'").lower()
            if word != "and":
                raise _bad(f"Invalid filter: expected 'and', found '{word}'")
            conditions.append(self._condition())
        return lambda row: all(c(row) for c in conditions)

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, kind: str, what: str) -> str:
        token = self._peek()
        if token is None or token[0] != kind:
            found = token[1] if token else "the end"
            raise _bad(f"Invalid filter: expected {what}, found '{found}'")
        self.pos += 1
        return token[1]

    def _punct(self, char: str) -> None:
        if self._take("punct", f"'{char}'") != char:
            raise _bad(f"Invalid filter: expected '{char}'")

    def _field(self) -> tuple[str, str]:
        raw = self._take("word", "a field name")
        name = raw.rsplit(".", 1)[-1]  # `l.LogId`: a table alias
        kind = self.fields.get(name)
        if kind is None:
            raise _bad(f"Unknown field '{raw}' in Filter")
        return name, kind

    def _condition(self) -> Predicate:
        word = self._take("word", "a condition")
        function = _FUNCTIONS.get(word.lower())
        if function is not None and self._peek() == ("punct", "("):
            return self._function(word, function)
        self.pos -= 1
        name, kind = self._field()
        op = self._take("word", "an operator").lower()
        if op in _COMPARISONS:
            value = self._value(name, kind)
            compare = _COMPARISONS[op]
            return lambda row: _known(row, name, kind, lambda v: compare(v, value))
        if op in ("in", "not"):
            if op == "not" and self._take("word", "'in'").lower() != "in":
                raise _bad("Invalid filter: expected 'not in'")
            values = self._values(name, kind)
            negate = op == "not"
            return lambda row: _known(row, name, kind, lambda v: (v in values) != negate)
        if op == "is":
            word = self._take("word", "'null' or 'not null'").lower()
            negate = word == "not"
            if negate:
                word = self._take("word", "'null'").lower()
            if word != "null":
                raise _bad("Invalid filter: expected 'is null' or 'is not null'")
            return lambda row: (row.get(name) is None) != negate
        raise _bad(f"Invalid filter: unknown operator '{op}'")

    def _function(self, word: str, function: Callable[[str, str], bool]) -> Predicate:
        self._punct("(")
        name, kind = self._field()
        if kind != "str":
            raise _bad(f"Invalid filter: {word} needs a text field, '{name}' is not")
        self._punct(",")
        needle = str(self._value(name, kind))
        self._punct(")")
        return lambda row: _known(row, name, kind, lambda v: function(v, needle))

    def _values(self, name: str, kind: str) -> list[Any]:
        self._punct("(")
        values = [self._value(name, kind)]
        while self._peek() == ("punct", ","):
            self.pos += 1
            values.append(self._value(name, kind))
        self._punct(")")
        return values

    def _value(self, name: str, kind: str) -> Any:
        token = self._peek()
        if token is None:
            raise _bad("Invalid filter: a value is missing")
        self.pos += 1
        token_kind, raw = token
        try:
            return _literal(kind, token_kind, raw)
        except ValueError:
            raise _bad(f"Invalid filter: {raw} is not a valid value for '{name}'") from None


def _literal(kind: str, token_kind: str, raw: str) -> Any:
    """A filter literal as the comparable value of a `kind` field; ValueError if it is not one."""
    if kind == "str" and token_kind == "string":
        return raw[1:-1].replace("''", "'").casefold()
    if kind == "int" and token_kind == "number" and "." not in raw:
        return int(raw)
    if kind == "bool" and token_kind == "word" and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if kind == "bool" and token_kind == "number" and raw in ("0", "1"):
        return raw == "1"
    if kind in ("datetime", "date") and token_kind == "string" and _DATETIME.match(raw[1:-1]):
        moment = datetime.fromisoformat(raw[1:-1])
        return moment if kind == "datetime" else moment.date()
    raise ValueError(raw)


def _comparable(kind: str, value: Any) -> Any:
    """A stored value in the form its literals take (text case-folded, dates parsed)."""
    if kind == "str":
        return str(value).casefold()
    if kind == "datetime":
        return datetime.fromisoformat(str(value))
    if kind == "date":
        return date.fromisoformat(str(value)[:10])
    return value


def _known(row: Row, name: str, kind: str, test: Callable[[Any], bool]) -> bool:
    """SQL's rule: a comparison with null is never true."""
    value = row.get(name)
    return value is not None and test(_comparable(kind, value))


# -- body checks -----------------------------------------------------------------------------------
def _check_value(name: str, kind: str, value: Any) -> None:
    """A written value of a `kind` field: null, or the JSON type that kind needs."""
    if value is None:
        return
    valid = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "datetime": isinstance(value, str) and bool(_DATETIME.match(value)),
        "date": isinstance(value, str) and bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)),
    }[kind]
    if not valid:
        raise _bad(f"The value {json.dumps(value)} is not valid for {name}")


def _only(body: Row, allowed: Mapping[str, str] | tuple[str, ...]) -> None:
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise _bad(f"Field '{unknown[0]}' is not allowed")


@dataclass(frozen=True)
class _Page:
    per_page: int
    page: int


class AdminState:
    """One office's Admin server: relations, change log, communications, interests, custom fields,
    issued tokens and the call counts; thread-safe.

    Settings tests change on a built state: `settings` (apisettings: page sizes, DurationToken,
    RateLimit), `rate_limits` (on/off), `now` (the server's local clock, naive Brussels time;
    token expiry and DateAction follow it), `limiter.clock` (epoch seconds of the 60 s window),
    `token_lifetime` (seconds; overrides DurationToken when set, and apisettings then names it in
    whole minutes, at least 1), `api_key`, `dedupe_communications` (off: each POST is stored).
    """

    def __init__(self, data: AdminData, rate_limits: bool = True) -> None:
        self.api_key = ADMIN_API_KEY
        self.settings: dict[str, int] = dict(DEFAULT_SETTINGS)
        self.rate_limits = rate_limits
        self.now: Callable[[], datetime] = brussels_now
        self.token_lifetime: float | None = None
        self.dedupe_communications = False
        self.limiter = RateLimiter(None, RATE_WINDOW, time.time)
        self.tokens: dict[str, datetime] = {}  # TokenGuid -> TimeToLive (server local)
        self.customers: dict[int, Row] = {c["CustomerId"]: dict(c) for c in data.customers}
        self.addresses: dict[int, Row] = {k: dict(v) for k, v in data.addresses.items()}
        self.interests: dict[int, Row] = {i["InterestId"]: dict(i) for i in data.interests}
        self.links: dict[int, list[int]] = {k: list(v) for k, v in data.customer_interests.items()}
        self.extradata: dict[int, Row] = {k: dict(v) for k, v in data.extradata.items()}
        self.communications: dict[int, Row] = {}
        self.changes: list[Row] = []
        self.request_counts: Counter[str] = Counter()
        self.refusals: Counter[int] = Counter()
        self._lock = threading.RLock()
        self._seed_changes()

    # -- the change log (AD-A6) --------------------------------------------------------------
    def _seed_changes(self) -> None:
        """The history the seed implies: an INSERT at each CreationDate, an UPDATE at each
        DisabledDate, in time order."""
        events = [(c["CreationDate"], cid, "INSERT") for cid, c in self.customers.items()]
        events += [(c["DisabledDate"], cid, "UPDATE") for cid, c in self.customers.items()]
        for moment, cid, action in sorted(e for e in events if e[0]):
            self._log(cid, action, when=datetime.fromisoformat(moment))

    def _log(
        self,
        cid: int,
        action: str,
        table: str = "CUSTOMER",
        own_id: int | None = None,
        when: datetime | None = None,
    ) -> Row:
        row = {
            "LogId": len(self.changes) + 1,
            "Id": cid,
            "OwnId": cid if own_id is None else own_id,
            "TableName": table,
            "ActionType": action,
            "DateAction": stamp(when or self.now()),
        }
        self.changes.append(row)
        return row

    # -- the test and demo API: an office user at work ---------------------------------------
    def counts(self) -> dict[str, int]:
        """For the sandbox banner."""
        with self._lock:
            return {
                "relations": len(self.customers),
                "with_newsletter": sum(
                    1 for c in self.customers.values() if c["IsActive"] and c["Newsletter"]
                ),
                "communications": len(self.communications),
                "changes": len(self.changes),
            }

    def issue_token(self) -> str:
        """A valid TokenGuid without HTTP."""
        return self._issue()["TokenGuid"]

    def expire_tokens(self) -> None:
        """Every issued token expires now (the client must fetch a new one on 401)."""
        with self._lock:
            self.tokens = dict.fromkeys(self.tokens, datetime.min)

    def create_relation(self, fields: Row) -> Row:
        """A relation typed in by the office (or POSTed): validated as POST, logged INSERT."""
        with self._lock:
            _only(fields, {**WRITABLE, **dict.fromkeys(ADDRESS_FIELDS, "str"), "CustomerId": ""})
            if fields.get("CustomerId") is not None:
                raise _bad("CustomerId must be empty when creating a customer")
            self._check_customer_fields(fields)
            cid = max(self.customers, default=10_000) + 1
            customer = {k: None for k in CUSTOMER_FIELDS} | {
                "CustomerId": cid,
                "IsActive": True,
                "IsCompany": False,
                "Newsletter": False,
                "CustKind": "K",
                "CompanyId": 1,
                "CreationDate": self.now().isoformat(timespec="seconds"),
            }
            customer.update({k: fields[k] for k in WRITABLE if k in fields})
            self.customers[cid] = customer
            self.addresses[cid] = {k: fields.get(k) for k in ADDRESS_FIELDS}
            self.extradata[cid] = dict.fromkeys(EXTRADATA_FIELDS) | {"CustomerId": cid}
            self._log(cid, "INSERT")
            return dict(customer)

    def update_relation(self, cid: int, fields: Row, replace: bool = False) -> Row:
        """An edit: `replace` is the API's PUT (writable fields left out become null), without it
        only the named fields change (the office user's edit, which may also set IsActive and the
        custom fields). Logs UPDATE (and CUSTOMER_EXTRADATA for custom fields)."""
        with self._lock:
            customer = self.customers.get(cid)
            if customer is None:
                raise _bad(f"Customer with CustomerId {cid} does not exist")
            extra = {k: fields.pop(k) for k in CUSTOM_FIELDS if k in fields and not replace}
            active = fields.pop("IsActive", None) if not replace else None
            _check_value("IsActive", "bool", active)
            for name, value in extra.items():
                _check_value(name, EXTRADATA_FIELDS[name], value)
            _only(fields, {**WRITABLE, **dict.fromkeys(ADDRESS_FIELDS, "str")})
            self._check_customer_fields(fields, require_name=replace)
            if replace:
                for name in WRITABLE:
                    if name not in KEPT_ON_PUT or name in fields:
                        customer[name] = fields.get(name)
                self.addresses[cid] = {k: fields.get(k) for k in ADDRESS_FIELDS}
            else:
                customer.update({k: fields[k] for k in WRITABLE if k in fields})
                self.addresses[cid].update({k: fields[k] for k in ADDRESS_FIELDS if k in fields})
            if active is not None:
                self._activate(customer, active, None)
            if fields or active is not None or not extra:
                self._log(cid, "UPDATE")
            if extra:
                self.extradata[cid].update(extra)
                self._log(cid, "UPDATE", table="CUSTOMER_EXTRADATA", own_id=cid)
            return dict(customer)

    def delete_relation(self, cid: int) -> None:
        """A relation removed by the office: gone from the API, logged DELETE."""
        with self._lock:
            if self.customers.pop(cid, None) is None:
                raise KeyError(cid)
            self.addresses.pop(cid, None)
            self.links.pop(cid, None)
            self.extradata.pop(cid, None)
            self._log(cid, "DELETE")

    def _activate(self, customer: Row, active: bool, disabled: str | None) -> None:
        customer["IsActive"] = active
        when = datetime.fromisoformat(disabled) if disabled else self.now()
        customer["DisabledDate"] = None if active else when.isoformat(timespec="seconds")

    def _check_customer_fields(self, fields: Row, require_name: bool = True) -> None:
        for name, value in fields.items():
            if name in ADDRESS_FIELDS:
                _check_value(name, "str", value)
            elif name in WRITABLE:
                _check_value(name, WRITABLE[name], value)
        name = fields.get("Name")
        if (require_name or "Name" in fields) and not (isinstance(name, str) and name.strip()):
            raise _bad("Name is required")
        language = fields.get("Language")
        if language is not None and language not in LANGUAGES:
            raise _bad(f"Language '{language}' does not exist")
        crm = fields.get("CustomerCrmType")
        if crm is not None and crm not in CRM_TYPES:
            raise _bad(f"CustomerCrmType {crm} does not exist")
        group = fields.get("CustomerGroup")
        if group is not None and group not in CUSTOMER_GROUPS:
            raise _bad(f"CustomerGroup {group} does not exist")

    # -- routes -------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        """One Mount under PREFIX + BASE; each path dispatches by method to a handler."""
        table: list[tuple[str, dict[str, Handler]]] = [
            ("/token/{key}", {"GET": self._token}),
            ("/apisettings", {"GET": self._settings}),
            (
                "/customers",
                {"GET": self._customers, "POST": self._post_customer, "PUT": self._put_customer},
            ),
            ("/customers/{cid}", {"GET": self._customer}),
            (ADDRESS_PATH, {"GET": self._customer_addresses}),
            ("/customers/{cid}/activatedeactivate", {"POST": self._activatedeactivate}),
            (
                "/customers/{cid}/interests",
                {"GET": self._customer_interests, "POST": self._link_interest},
            ),
            ("/customers/{cid}/interests/{iid}", {"DELETE": self._unlink_interest}),
            ("/customer/changes", {"GET": self._changes}),
            ("/communications", {"GET": self._communications, "POST": self._communicate}),
            ("/interests", {"GET": self._interests}),
            ("/extradata/{table}", {"GET": self._extradata}),
            ("/customercrmtypes", {"GET": self._crm_types}),
            ("/lists/{list_id}", {"GET": self._list}),
        ]
        routes = [Route(path, self._endpoint(handlers), methods=_ALL) for path, handlers in table]
        routes.append(Route("/{path:path}", self._endpoint({}), methods=_ALL))
        return [Mount(PREFIX + BASE, routes=routes)]

    def _endpoint(self, handlers: dict[str, Handler]) -> Callable[[Request], Awaitable[Response]]:
        """Count, refuse a long URI, admit (token, rate limit), read the body, dispatch."""

        async def endpoint(request: Request) -> Response:
            self._count(f"{request.method} {_template(request)}")
            try:
                if len(str(request.url)) > MAX_URI:
                    raise AdminError(414, "Request-URI Too Long")
                handler = handlers.get(request.method)
                if handler is None and not handlers:
                    raise AdminError(404, "No HTTP resource was found that matches the request")
                if handler is None:
                    raise AdminError(405, f"The resource does not support '{request.method}'")
                if handler != self._token:
                    self._admit(request)
                unknown = sorted(set(request.query_params) - QUERY_PARAMS)
                if unknown:
                    raise _bad(f"Unknown query parameter '{unknown[0]}'")
                body = await _body(request) if request.method in ("POST", "PUT") else None
                with self._lock:
                    return handler(request, body)
            except AdminError as error:
                with self._lock:
                    self.refusals[error.status] += 1
                return error.response()

        return endpoint

    def _count(self, key: str) -> None:
        with self._lock:
            self.request_counts[key] += 1

    # -- auth, settings, limits (AD-A2, AD-A3) ------------------------------------------------
    def _issue(self) -> Row:
        lifetime = (
            timedelta(seconds=self.token_lifetime)
            if self.token_lifetime is not None
            else timedelta(minutes=self.settings["DurationToken"])
        )
        guid, expiry = str(uuid.uuid4()), self.now() + lifetime
        with self._lock:
            self.tokens[guid] = expiry
        return {"TokenGuid": guid, "TimeToLive": expiry.isoformat(timespec="seconds")}

    def _token(self, request: Request, body: Any) -> Response:
        key = request.path_params["key"]
        if not secrets.compare_digest(key.encode(), self.api_key.encode()):
            raise AdminError(401, INVALID_KEY)
        return JSONResponse(self._issue())

    def _admit(self, request: Request) -> None:
        token = request.headers.get("synetonToken", "")
        with self._lock:
            expiry = self.tokens.get(token)
        if expiry is None or expiry <= self.now():
            raise AdminError(401, TOKEN_EXPIRED)
        self.limiter.limit = self.settings["RateLimit"] if self.rate_limits else None
        if not self.limiter.hit(self.api_key).allowed:  # [I] one window per api key
            raise AdminError(403, THROTTLED)

    def _settings(self, request: Request, body: Any) -> Response:
        answer = dict(self.settings)
        if self.token_lifetime is not None:  # TimeToLive - DurationToken stays the server's now
            answer["DurationToken"] = max(1, round(self.token_lifetime / 60))
        return JSONResponse(answer)

    # -- paging and filtering (AD-A4) ---------------------------------------------------------
    def _page(self, request: Request) -> _Page:
        params = request.query_params
        per_page = _int_param(params, "per_page", self.settings["DefaultRecordsPerPage"])
        page = _int_param(params, "page", 1)
        if per_page < 1 or page < 1:
            raise _bad("per_page and page must be at least 1")
        if per_page > self.settings["MaxRecordsPerPage"]:
            raise _bad(f"per_page exceeds MaxRecordsPerPage ({self.settings['MaxRecordsPerPage']})")
        return _Page(per_page, page)

    def _listing(self, request: Request, rows: list[Row], fields: Mapping[str, str]) -> Response:
        """Filter, then one page."""
        kept, filtered = self._filtered(request, rows, fields)
        return self._paged(request, kept, filtered)

    def _filtered(
        self, request: Request, rows: list[Row], fields: Mapping[str, str]
    ) -> tuple[list[Row], bool]:
        """The rows `Filter` keeps (all without one), and whether there was a Filter."""
        text = request.query_params.get("Filter")
        if text is None:
            return rows, False
        keep = parse_filter(text, fields)
        return [r for r in rows if keep(r)], True

    def _paged(self, request: Request, rows: list[Row], filtered: bool) -> Response:
        """A plain array with `Link rel="next"` when more follow; 204 when empty, 404 "Nothing
        found" when a Filter found nothing (AD-A4)."""
        page = self._page(request)
        if not rows and filtered:
            raise AdminError(404, NOTHING_FOUND)
        start = (page.page - 1) * page.per_page
        chunk = rows[start : start + page.per_page]
        if not chunk:
            return Response(status_code=204)
        headers = {}
        if start + page.per_page < len(rows):
            following = request.url.include_query_params(page=page.page + 1)
            headers["Link"] = f'<{following}>; rel="next"'
        return JSONResponse(chunk, headers=headers)

    # -- customers (section 2.2) --------------------------------------------------------------
    def _customers(self, request: Request, body: Any) -> Response:
        rows = [dict(c) for _, c in sorted(self.customers.items())]
        return self._listing(request, rows, CUSTOMER_FIELDS)

    def _customer(self, request: Request, body: Any) -> Response:
        customer = self.customers.get(_id(request, "cid"))
        if customer is None:
            raise AdminError(404, NOTHING_FOUND)
        return JSONResponse(dict(customer))

    def _customer_addresses(self, request: Request, body: Any) -> Response:
        rows = [
            _address_view(cid, address)
            for cid, address in sorted(self.addresses.items())
            if any(v is not None for v in address.values())
        ]
        return self._listing(request, rows, ADDRESS_VIEW_FIELDS)

    def _post_customer(self, request: Request, body: Row) -> Response:
        return JSONResponse(self.create_relation(dict(body)), 201)

    def _put_customer(self, request: Request, body: Row) -> Response:
        _only(body, {**WRITABLE, **dict.fromkeys(ADDRESS_FIELDS, "str"), "CustomerId": ""})
        cid = body.get("CustomerId")
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise _bad("CustomerId is required")
        fields = {k: v for k, v in body.items() if k != "CustomerId"}
        return JSONResponse(self.update_relation(cid, fields, replace=True))

    def _activatedeactivate(self, request: Request, body: Row) -> Response:
        cid = _id(request, "cid")
        _only(body, ("CustomerId", "IsActive", "DisabledDate", "ReasonForLeaving"))
        customer = self.customers.get(cid)
        if customer is None:
            raise _bad(f"Customer with CustomerId {cid} does not exist")
        if body.get("CustomerId", cid) != cid:
            raise _bad("CustomerId in the body does not match the path")
        active, disabled = body.get("IsActive"), body.get("DisabledDate")
        _check_value("IsActive", "bool", active)
        _check_value("DisabledDate", "datetime", disabled)
        if active is None:
            raise _bad("IsActive is required")
        self._activate(customer, active, disabled)
        self._log(cid, "UPDATE")
        return JSONResponse(dict(customer))

    def _changes(self, request: Request, body: Any) -> Response:
        """AD-A6: the first CHANGES_CAP matching rows by LogId, paged like any list."""
        rows, filtered = self._filtered(request, self.changes, CHANGE_FIELDS)
        return self._paged(request, [dict(r) for r in rows[:CHANGES_CAP]], filtered)

    # -- communications (AD-A9) ---------------------------------------------------------------
    def _communications(self, request: Request, body: Any) -> Response:
        rows = [dict(c) for _, c in sorted(self.communications.items())]
        return self._listing(request, rows, COMMUNICATION_FIELDS)

    def _communicate(self, request: Request, body: Row) -> Response:
        _only(body, COMMUNICATION_FIELDS)
        for name, kind in COMMUNICATION_FIELDS.items():
            _check_value(name, kind, body.get(name))
        if body.get("CommunicationId") is not None:
            raise _bad("CommunicationId must be empty when creating a communication")
        for name in ("CustomerId", "Date", "Description"):
            if body.get(name) in (None, ""):
                raise _bad(f"{name} is required")
        if body["CustomerId"] not in self.customers:
            raise _bad(f"Customer with CustomerId {body['CustomerId']} does not exist")
        key = (body["CustomerId"], body["Date"], body["Description"])
        for existing in self.communications.values() if self.dedupe_communications else ():
            if (existing["CustomerId"], existing["Date"], existing["Description"]) == key:
                return JSONResponse(dict(existing), 200)  # AD-A9: deduplicated
        cid = max(self.communications, default=500_000) + 1
        row = {k: body.get(k) for k in COMMUNICATION_FIELDS} | {"CommunicationId": cid}
        self.communications[cid] = row
        return JSONResponse(dict(row), 201)

    # -- interests (AD-A10) -------------------------------------------------------------------
    def _interests(self, request: Request, body: Any) -> Response:
        rows = [dict(i) for _, i in sorted(self.interests.items())]
        return self._listing(request, rows, INTEREST_FIELDS)

    def _known_customer(self, request: Request) -> int:
        cid = _id(request, "cid")
        if cid not in self.customers:
            raise AdminError(404, f"Customer with CustomerId {cid} does not exist")
        return cid

    def _customer_interests(self, request: Request, body: Any) -> Response:
        cid = self._known_customer(request)
        rows = [dict(self.interests[i]) for i in self.links.get(cid, [])]
        return self._listing(request, rows, INTEREST_FIELDS)

    def _link_interest(self, request: Request, body: Row) -> Response:
        cid = self._known_customer(request)
        _only(body, ("InterestId", "CustomerId"))
        iid = body.get("InterestId")
        _check_value("InterestId", "int", iid)
        if iid not in self.interests:
            raise _bad(f"Interest with InterestId {iid} does not exist")
        linked = self.links.setdefault(cid, [])
        if iid in linked:
            raise _bad(f"Interest {iid} is already linked to customer {cid}")
        linked.append(iid)
        linked.sort()
        self._log(cid, "INSERT", table="CUSTOMER_INTEREST", own_id=iid)
        return JSONResponse(dict(self.interests[iid]), 201)

    def _unlink_interest(self, request: Request, body: Any) -> Response:
        cid = self._known_customer(request)
        iid = _id(request, "iid")
        linked = self.links.get(cid, [])
        if iid not in linked:
            raise _bad(f"Interest {iid} of customer {cid} does not exist")
        linked.remove(iid)
        self._log(cid, "DELETE", table="CUSTOMER_INTEREST", own_id=iid)
        return JSONResponse(dict(self.interests[iid]))

    # -- custom fields and lists (AD-A11, section 2.2) ----------------------------------------
    def _extradata(self, request: Request, body: Any) -> Response:
        if request.path_params["table"] != str(CUSTOMER_TABLE_ID):
            raise AdminError(404, "No extradata found")
        rows = [dict(r) for _, r in sorted(self.extradata.items())]
        return self._listing(request, rows, EXTRADATA_FIELDS)

    def _crm_types(self, request: Request, body: Any) -> Response:
        return self._listing(request, _list_items(CRM_TYPES), LIST_FIELDS)

    def _list(self, request: Request, body: Any) -> Response:
        if request.path_params["list_id"] != str(LANGUAGE_LIST_ID):
            raise AdminError(404, NOTHING_FOUND)
        items = {i + 1: code for i, code in enumerate(LANGUAGES)}
        rows = _list_items(items)
        for row in rows:
            row["ExtCode"] = {"N": "nl", "F": "fr", "E": "en", "D": "de"}[row["ListValue"]]
        return self._listing(request, rows, LIST_FIELDS)


_ALL = ["GET", "POST", "PUT", "DELETE", "PATCH"]


def _list_items(values: Mapping[int, str]) -> list[Row]:
    """[I] the SDK's list item shape."""
    return [
        {"ListValueId": k, "ListValue": v, "ExtCode": None, "LegalForm": None}
        for k, v in values.items()
    ]


def _address_view(cid: int, address: Row) -> Row:
    """A stored head-office address as GET customeraddresses shows it (SY-sdk names): the street
    alone in StreetName, with number and box in Street1."""
    number = "/".join(str(v) for v in (address.get("Nr"), address.get("Box")) if v)
    line = " ".join(str(v) for v in (address.get("Street1"), number) if v) or None
    return {
        "CustomerAddressId": cid * 10 + 1,
        "AddressId": cid * 10 + 1,
        "CustomerId": cid,
        "StreetName": address.get("Street1"),
        "Street1": line,
        "Street2": address.get("Street2"),
        "HouseNr": address.get("Nr"),
        "HouseBox": address.get("Box"),
        "ZipCode": address.get("Zipcode"),
        "City": address.get("City"),
        "CountryCode": address.get("CountryCode"),
        "RegisteredOffice": True,
        "InvoiceAddress": True,
        "PostalAddress": True,
        "ExploitationAddress": False,
    }


def _template(request: Request) -> str:
    """The path after the base with ids as `{}`: `customers/{}/interests`, `token/{}`."""
    tail = request.url.path.split(BASE, 1)[-1].strip("/")
    parts = tail.split("/")
    if parts[0] == "token" and len(parts) > 1:
        return "token/{}"
    return "/".join("{}" if p.isdigit() else p for p in parts)


def _id(request: Request, name: str) -> int:
    raw = request.path_params[name]
    if not raw.isdigit():
        raise _bad(f"The value '{raw}' is not valid for {name}")
    return int(raw)


def _int_param(params: Mapping[str, str], name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if not re.fullmatch(r"\d+", value):
        raise _bad(f"The value '{value}' is not valid for {name}")
    return int(value)


async def _body(request: Request) -> Row:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        raise _bad("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object")
    return body


def build(data: SandboxData, rate_limits: bool) -> AdminState:
    """The office of a sandbox, sized to its generated customers."""
    relations = relation_count(len(data.flexpos_customers))
    return AdminState(generate_admin(data.seed, relations, data.today), rate_limits)


def seeded_state(
    seed: int = 42, relations: int = 40, today: date | None = None, rate_limits: bool = True
) -> AdminState:
    """A standalone state (no sandbox): for unit tests of the emulator alone."""
    return AdminState(generate_admin(seed, relations, today or date.today()), rate_limits)


def control_routes(state: AdminState) -> list[BaseRoute]:
    """An office user at work, under `/_sandbox/admin`, each change logged like the API's:
    `POST /relations` (create), `POST /relations/{id}` (edit the named fields; also IsActive and
    the custom fields), `DELETE /relations/{id}`; `POST /settings` (merge into apisettings),
    `POST /tokens/expire`; `POST /communications/dedupe {"on": bool}` (AD-A9's dedupe, off by
    default); `GET /stats` (calls per endpoint, refusals, counts)."""

    def action(
        change: Callable[[Request, Row], Any], status: int = 200
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                result = change(request, await json_object(request))
            except KeyError as error:
                return JSONResponse({"ErrorMessage": f"Not found: {error}"}, 404)
            except AdminError as error:
                return error.response()
            return JSONResponse(result if result is not None else {"ok": True}, status)

        return endpoint

    def num(request: Request) -> int:
        return int(request.path_params["id"])

    def edit(request: Request, body: Row) -> Row:
        if num(request) not in state.customers:
            raise KeyError(num(request))
        return state.update_relation(num(request), body)

    def settings(request: Request, body: Row) -> Row:
        unknown = [k for k in body if k not in DEFAULT_SETTINGS]
        if unknown or not all(isinstance(v, int) for v in body.values()):
            raise _bad(f"Unknown or non-integer settings: {unknown or list(body)}")
        with state._lock:
            state.settings.update(body)
            return dict(state.settings)

    def dedupe(request: Request, body: Row) -> Row:
        if not isinstance(body.get("on"), bool):
            raise _bad("'on' must be true or false")
        with state._lock:
            state.dedupe_communications = body["on"]
        return {"dedupe_communications": body["on"]}

    def stats(request: Request, body: Row) -> Row:
        with state._lock:
            return {
                "calls": dict(state.request_counts),
                "refusals": {str(k): v for k, v in state.refusals.items()},
                **state.counts(),
            }

    return [
        Route("/relations", action(lambda r, b: state.create_relation(b), 201), methods=["POST"]),
        Route("/relations/{id:int}", action(edit), methods=["POST"]),
        Route(
            "/relations/{id:int}",
            action(lambda r, b: state.delete_relation(num(r))),
            methods=["DELETE"],
        ),
        Route("/settings", action(settings), methods=["POST"]),
        Route("/tokens/expire", action(lambda r, b: state.expire_tokens()), methods=["POST"]),
        Route("/communications/dedupe", action(dedupe), methods=["POST"]),
        Route("/stats", action(stats), methods=["GET"]),
    ]


EMULATOR = Emulator(
    name="admin",
    build=build,
    routes=lambda state: state.routes(),
    credentials={API_KEY_ENV: ADMIN_API_KEY},
    summary=lambda state: state.counts(),
    control_routes=control_routes,
)
