"""Cyberimpact v4 emulator: members, static groups, custom fields, consent and async batches
(CI-A1..CI-A13).

It serves memberflow's assumed contract as strictly as it reads: Bearer tokens only, every error
is `{message, errors}`, `limit` is echoed (and refused above 10 000), POST /members is throttled to
1/s per token, an unsubscribe is never undone, and a batch is applied only when it is polled to
completion. Every request is recorded with its route template so tests can count calls per
endpoint. Cyberimpact is a target, so every account starts empty: no members, groups or fields.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from sandbox.emulator import Emulator
from sandbox.generator import SandboxData
from sandbox.httputil import bearer_token, json_object
from sandbox.ratelimit import RateLimiter

PREFIX = "/cyberimpact"  # [I] the sandbox's stand-in for https://api.cyberimpact.com/
CYBERIMPACT_API_TOKEN = "demo-cyberimpact-token"
CYBERIMPACT_OTHER_API_TOKEN = "other-cyberimpact-token"  # a second account proves isolation
ACCOUNTS = {
    CYBERIMPACT_API_TOKEN: ("demo", "demo@example.com", "Centre sportif démo"),
    CYBERIMPACT_OTHER_API_TOKEN: ("other", "other@example.com", "Other account"),
}
POST_RATE = 1  # CI-A6: POST /members and POST /members/optins, per token per second
RATE = 10  # CI-A6: every other request, per token per second
DEFAULT_LIMIT, MAX_LIMIT = 20, 10_000  # CI-A2
MAX_BATCH = 1000  # [I] the size is unknown; CI-A4's chunk size is enforced so chunking is real
CUSTOM_FIELD_LIMIT = 25  # CI-A8 default, configurable
BATCH_POLLS = 1  # [I] a batch reads PROCESSING this many times before it is applied
IMPLIED_MONTHS = 24  # CI-A10
MONTREAL = ZoneInfo("America/Montreal")  # [I] CI-A12 timestamps carry the account's offset
EMPTY = "__EMPTY__"  # batch addMembers: clears a field
GENDERS, LANGUAGES = ("m", "f", "o"), ("en_ca", "fr_ca")
FIELD_TYPES = ("text", "date", "integer", "decimal")
RELATION_TYPES = (
    "express-consent", "active-clients", "information-request", "business-card", "web-contacts",
    "purchased-list", "contest-participants", "mixed-list", "inactive-clients",
    "association-members", "employees", "partners",
)  # fmt: skip
EXPRESS = ("express-consent", "contest-participants", "purchased-list")
TEXT_FIELDS = ("firstname", "lastname", "company", "postalCode", "note")
MEMBER_FIELDS = (
    "email", "gender", "groups", "firstname", "lastname", "company", "language", "birthdate",
    "postalCode", "country", "note", "customFields",
)  # fmt: skip
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SORT = re.compile(r"^(email|language|fullname|date|consent_type|consent_date|updated)_(asc|desc)$")


class CiError(Exception):
    """A refused request: status, message and per-field messages (CI-A13)."""

    def __init__(self, status: int, message: str, errors: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors or {}

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "errors": self.errors}


def _invalid(errors: dict[str, list[str]], message: str = "Invalid data") -> CiError:
    return CiError(400, message, errors)  # [I] a malformed request is a 400


def _not_found(what: str = "Member") -> CiError:
    return CiError(404, f"{what} not found")


@dataclass
class _Member:
    id: int
    email: str
    joined: float
    updated: float
    values: dict[str, Any] = field(default_factory=dict)  # firstname, gender, ...
    custom: dict[str, Any] = field(default_factory=dict)  # field id (str) -> value
    groups: set[int] = field(default_factory=set)
    consent: dict[str, Any] | None = None


@dataclass
class _Batch:
    id: int
    type: str
    body: dict[str, Any]
    created: float
    polls: int = 0
    status: str = "NEW"
    result: dict[str, list[dict[str, Any]]] | None = None


@dataclass
class _Account:
    username: str
    email: str
    name: str
    members: dict[str, _Member] = field(default_factory=dict)  # lowercase email -> member
    groups: dict[int, dict[str, Any]] = field(default_factory=dict)
    fields: dict[int, dict[str, Any]] = field(default_factory=dict)
    unsubscribed: dict[str, float] = field(default_factory=dict)  # email -> when (never undone)
    bounced: dict[str, float] = field(default_factory=dict)
    batches: dict[int, _Batch] = field(default_factory=dict)
    seq: int = 0

    def next_id(self) -> int:
        self.seq += 1
        return self.seq


@dataclass(frozen=True)
class RecordedRequest:
    """One answered request: method, concrete path, route template (e.g. `/members/{key}`)."""

    method: str
    path: str
    route: str
    status: int
    account: str | None


class CyberimpactState:
    """Accounts and recorded traffic; every public method is thread-safe."""

    def __init__(
        self,
        rate_limits: bool = True,
        clock: Callable[[], float] = time.time,
        custom_field_limit: int = CUSTOM_FIELD_LIMIT,
        batch_polls: int = BATCH_POLLS,
    ) -> None:
        self.clock = clock
        self.custom_field_limit = custom_field_limit
        self.batch_polls = batch_polls
        self.accounts = {token: _Account(*values) for token, values in ACCOUNTS.items()}
        self.post_limiter = RateLimiter(POST_RATE if rate_limits else None, 1.0, clock)
        self.limiter = RateLimiter(RATE if rate_limits else None, 1.0, clock)
        self._requests: list[RecordedRequest] = []
        self._lock = threading.RLock()

    # -- inspection and control for tests and demos ---------------------------------------------
    def members(self, token: str = CYBERIMPACT_API_TOKEN) -> list[dict[str, Any]]:
        """Every member (subscribed or not) as the API shows it, in creation order."""
        with self._lock:
            return [self._json(m) for m in self.account(token).members.values()]

    def member(self, email: str, token: str = CYBERIMPACT_API_TOKEN) -> dict[str, Any] | None:
        with self._lock:
            found = self.account(token).members.get(email.lower())
            return self._json(found) if found else None

    def member_groups(self, email: str, token: str = CYBERIMPACT_API_TOKEN) -> set[str]:
        """The titles of a member's groups."""
        with self._lock:
            account = self.account(token)
            return {account.groups[g]["title"] for g in account.members[email.lower()].groups}

    def groups(self, token: str = CYBERIMPACT_API_TOKEN) -> list[dict[str, Any]]:
        with self._lock:
            account = self.account(token)
            return [self._group_json(account, g) for g in account.groups.values()]

    def custom_fields(self, token: str = CYBERIMPACT_API_TOKEN) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(f) for f in self.account(token).fields.values()]

    def add_dynamic_group(self, title: str, token: str = CYBERIMPACT_API_TOKEN) -> int:
        """A dynamic group made in Cyberimpact's UI (the API cannot create one, CI-A7); its id."""
        with self._lock:
            account = self.account(token)
            group = {"id": account.next_id(), "title": title, "isPublic": False}
            account.groups[group["id"]] = group | {"isDynamic": True, "created": self.clock()}
            return group["id"]

    def request_counts(self) -> dict[str, int]:
        """Requests per endpoint, e.g. `{"POST /members": 3}` (for demo summaries)."""
        with self._lock:
            counts: dict[str, int] = {}
            for r in self._requests:
                counts[f"{r.method} {r.route}"] = counts.get(f"{r.method} {r.route}", 0) + 1
            return counts

    def unsubscribe(self, email: str, token: str = CYBERIMPACT_API_TOKEN) -> None:
        """A member clicked unsubscribe in a mailing (or the account did it in the UI)."""
        with self._lock:
            account = self.account(token)
            account.unsubscribed.setdefault(email.lower(), self.clock())
            if found := account.members.get(email.lower()):
                found.updated = self.clock()

    def bounce(self, email: str, token: str = CYBERIMPACT_API_TOKEN) -> None:
        """A mailing to this address bounced."""
        with self._lock:
            self.account(token).bounced.setdefault(email.lower(), self.clock())

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def request_count(self, method: str | None = None, route: str | None = None) -> int:
        """Requests with this method and/or route template below PREFIX (`/members/{key}`)."""
        with self._lock:
            return sum(
                1
                for r in self._requests
                if (method is None or r.method == method) and (route is None or r.route == route)
            )

    def reset(self) -> None:
        """Back to empty accounts, no recorded requests, no counted rate-limit hits."""
        with self._lock:
            self.accounts = {token: _Account(*values) for token, values in ACCOUNTS.items()}
            self._requests.clear()
            self.limiter.reset()
            self.post_limiter.reset()

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {
                a.username: {
                    "members": len(a.members),
                    "groups": len(a.groups),
                    "custom_fields": len(a.fields),
                    "unsubscribed": len(a.unsubscribed),
                    "batches": len(a.batches),
                }
                for a in self.accounts.values()
            } | {"requests": len(self._requests)}

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def account(self, token: str) -> _Account:
        return self.accounts[token]

    # -- members --------------------------------------------------------------------------------
    def find(self, account: _Account, key: str) -> _Member:
        """CI-A3: the key is an email (case-insensitive) or the numeric id."""
        key = unquote(key).strip()
        if key.isdigit():
            for found in account.members.values():
                if found.id == int(key):
                    return found
            raise _not_found()
        found = account.members.get(key.lower())
        if found is None:
            raise _not_found()
        return found

    def create(self, account: _Account, body: dict[str, Any]) -> _Member:
        values, custom, groups = self.validate(account, body, require_email=True)
        email = values.pop("email")
        if email in account.unsubscribed:  # CI-A5: never resubscribed
            raise CiError(409, "Member is unsubscribed", {"email": ["unsubscribed"]})
        if email in account.members:
            raise CiError(409, "Member already exists", {"email": ["exists"]})
        now = self.clock()
        created = _Member(account.next_id(), email, now, now, values, custom, groups)
        account.members[email] = created
        return created

    def update(self, account: _Account, key: str, body: dict[str, Any], replace: bool) -> _Member:
        """PATCH changes what is sent; PUT resets what is not sent to empty (groups are kept)."""
        target = self.find(account, key)
        values, custom, groups = self.validate(account, body, require_email=False)
        email = values.pop("email", target.email)
        if email != target.email:
            if email in account.members:
                raise CiError(409, "Member already exists", {"email": ["exists"]})
            del account.members[target.email]
            target.email = email
            account.members[email] = target
        if replace:
            target.values, target.custom = values, custom
        else:
            target.values.update(values)
            target.custom.update(custom)
        if "groups" in body:
            target.groups = groups if replace else target.groups | groups
        target.updated = self.clock()
        return target

    def delete(self, account: _Account, key: str) -> _Member:
        """The unsubscribe of a deleted member stays: the address is still never resubscribed."""
        target = self.find(account, key)
        del account.members[target.email]
        return target

    def validate(
        self, account: _Account, body: dict[str, Any], require_email: bool, batch: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any], set[int]]:
        """The POST /members field rules; (values, customFields, group ids) or a 400."""
        errors: dict[str, list[str]] = {}
        allowed = MEMBER_FIELDS + (("optinConfirmUrl",) if not batch else ())
        for key in body:
            if key not in allowed:
                errors[key] = ["unknown field"]
        values: dict[str, Any] = {}
        for key, value in body.items():
            if key in ("groups", "customFields") or key not in MEMBER_FIELDS:
                continue
            if batch and value in (None, ""):
                continue  # batch addMembers: an empty value keeps the stored one
            if batch and value == EMPTY:
                values[key] = None
                continue
            if message := _field_error(key, value):
                errors[key] = [message]
            else:
                values[key] = value.strip().lower() if key == "email" else value
        if require_email and "email" not in values:
            errors.setdefault("email", ["required"])
        groups = self._groups(account, body.get("groups"), errors) if "groups" in body else set()
        custom = self._custom(account, body.get("customFields"), errors, batch)
        if errors:
            raise _invalid(errors)
        return values, custom, groups

    def _groups(self, account: _Account, raw: Any, errors: dict[str, list[str]]) -> set[int]:
        """`groups` is a CSV string of ids (a JSON array of ids is accepted too [I])."""
        parts = raw if isinstance(raw, list) else str(raw or "").split(",")
        ids: set[int] = set()
        for part in parts:
            text = str(part).strip()
            if not text:
                continue
            if not text.isdigit() or int(text) not in account.groups:
                errors.setdefault("groups", []).append(f"unknown group {text}")
            elif account.groups[int(text)]["isDynamic"]:
                errors.setdefault("groups", []).append(f"group {text} is dynamic")
            else:
                ids.add(int(text))
        return ids

    def _custom(
        self, account: _Account, raw: Any, errors: dict[str, list[str]], batch: bool
    ) -> dict[str, Any]:
        """CI-A9: keyed by the field id as a string; each value checked against the field type."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            errors["customFields"] = ["must be an object keyed by custom field id"]
            return {}
        custom: dict[str, Any] = {}
        for key, value in raw.items():
            spec = account.fields.get(int(key)) if str(key).isdigit() else None
            if spec is None:
                errors[f"customFields.{key}"] = ["unknown custom field"]
            elif batch and value in (None, ""):
                continue
            elif value is None or value == "" or (batch and value == EMPTY):
                custom[str(key)] = None
            elif message := _typed_error(spec["type"], value):
                errors[f"customFields.{key}"] = [message]
            else:
                custom[str(key)] = value
        return custom

    def list_members(
        self, account: _Account, query: dict[str, Any], group: int | None = None
    ) -> list[_Member]:
        status = query.get("status", "all")
        found = [
            m
            for m in account.members.values()
            if m.email not in account.unsubscribed
            and (group is None or group in m.groups)
            and (status != "active" or m.groups)
            and (status != "orphans" or not m.groups)
            and _in_range(m.joined, query, "joinedOn")
            and _in_range(m.updated, query, "updatedOn")
        ]
        return _sorted(found, query.get("sort"))

    # -- consent (CI-A10) -----------------------------------------------------------------------
    def set_consent(self, member: _Member, body: dict[str, Any]) -> dict[str, Any]:
        errors: dict[str, list[str]] = {}
        relation = body.get("relationType")
        if relation not in RELATION_TYPES:
            errors["relationType"] = [f"must be one of {', '.join(RELATION_TYPES)}"]
        consent_date = body.get("consentDate")
        if _date_error(consent_date):
            errors["consentDate"] = ["must be a date Y-m-d"]
        proof = body.get("consentProof", "")
        if not isinstance(proof, str):
            errors["consentProof"] = ["must be a string"]
        if errors:
            raise _invalid(errors)
        stored = member.consent
        if stored and stored["consentType"] == "express" and relation not in EXPRESS:
            # [I] "a stronger consent is stored": implied never overrides express
            raise CiError(422, "The stored express consent cannot be overridden", {})
        member.consent = _consent(str(relation), str(consent_date), str(proof))
        member.updated = self.clock()
        return dict(member.consent)

    # -- batches (CI-A4) ------------------------------------------------------------------------
    def create_batch(self, account: _Account, body: dict[str, Any]) -> _Batch:
        kind = body.get("batchType")
        if kind == "addMembers":
            items = body.get("members")
            allowed = ("batchType", "relationType", "defaultConsentDate", "defaultConsentProof",
                       "groups", "members")  # fmt: skip
            self._check_batch_consent(body)
        elif kind in ("unsubscribe", "deleteMembers"):
            items, allowed = body.get("ids"), ("batchType", "ids")
        else:
            raise _invalid({"batchType": ["must be addMembers, unsubscribe or deleteMembers"]})
        errors = {key: ["unknown field"] for key in body if key not in allowed}
        name = "members" if kind == "addMembers" else "ids"
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            errors[name] = [f"must be a list of 1 to {MAX_BATCH} items"]
        if kind == "addMembers" and "groups" in body:
            self._groups(account, body["groups"], errors)
        if errors:
            raise _invalid(errors)
        batch = _Batch(account.next_id(), str(kind), body, self.clock())
        account.batches[batch.id] = batch
        return batch

    def _check_batch_consent(self, body: dict[str, Any]) -> None:
        errors: dict[str, list[str]] = {}
        if body.get("relationType") not in RELATION_TYPES:
            errors["relationType"] = [f"must be one of {', '.join(RELATION_TYPES)}"]
        if "defaultConsentDate" in body and _date_error(body["defaultConsentDate"]):
            errors["defaultConsentDate"] = ["must be a date Y-m-d"]
        if errors:
            raise _invalid(errors)

    def poll_batch(self, account: _Account, batch_id: int) -> _Batch:
        """NEW, then PROCESSING for `batch_polls` polls, then applied and COMPLETED [I]."""
        batch = account.batches.get(batch_id)
        if batch is None:
            raise _not_found("Batch")
        if batch.status != "COMPLETED":
            batch.polls += 1
            if batch.polls > self.batch_polls:
                batch.result = self._apply(account, batch)
                batch.status = "COMPLETED"
            else:
                batch.status = "PROCESSING"
        return batch

    def _apply(self, account: _Account, batch: _Batch) -> dict[str, list[dict[str, Any]]]:
        result: dict[str, list[dict[str, Any]]] = {"successes": [], "errors": []}
        items = batch.body["members"] if batch.type == "addMembers" else batch.body["ids"]
        for item in items:
            email = str(item.get("email", "")) if isinstance(item, dict) else str(item)
            try:
                done = self._apply_one(account, batch, item)
            except CiError as error:
                message = error.message + "".join(
                    f"; {k}: {', '.join(v)}" for k, v in error.errors.items()
                )
                result["errors"].append({"email": email.lower(), "message": message})
            else:
                result["successes"].append({"email": done.email, "id": done.id})
        return result

    def _apply_one(self, account: _Account, batch: _Batch, item: Any) -> _Member:
        if batch.type == "unsubscribe":
            target = self.find(account, str(item))
            account.unsubscribed.setdefault(target.email, self.clock())
            target.updated = self.clock()
            return target
        if batch.type == "deleteMembers":
            return self.delete(account, str(item))
        return self._add_member(account, batch.body, item)

    def _add_member(self, account: _Account, body: dict[str, Any], item: Any) -> _Member:
        """addMembers: create or update; empty keeps, `__EMPTY__` clears, groups are additive."""
        if not isinstance(item, dict):
            raise _invalid({"member": ["must be an object"]})
        values, custom, groups = self.validate(account, item, require_email=True, batch=True)
        email = values.pop("email")
        if email in account.unsubscribed:
            raise CiError(409, "Member is unsubscribed", {"email": ["unsubscribed"]})
        groups |= self._groups(account, body.get("groups"), {}) if "groups" in body else set()
        now = self.clock()
        target = account.members.get(email)
        if target is None:
            target = _Member(account.next_id(), email, now, now)
            account.members[email] = target
        target.values.update(values)
        target.custom.update(custom)
        target.groups |= groups
        target.updated = now
        if target.consent is None or target.consent["consentType"] != "express":
            relation = str(body["relationType"])
            when = body.get("defaultConsentDate") or _local(now).date().isoformat()
            target.consent = _consent(relation, when, str(body.get("defaultConsentProof", "")))
        return target

    # -- groups and custom fields ---------------------------------------------------------------
    def create_group(self, account: _Account, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("isDynamic"):  # CI-A7
            raise CiError(422, "Dynamic groups cannot be created through the API",
                          {"isDynamic": ["not allowed"]})  # fmt: skip
        title = body.get("title")
        if not isinstance(title, str) or not title.strip():
            raise _invalid({"title": ["required"]})
        errors = {k: ["unknown field"] for k in body if k not in ("title", "isPublic", "isDynamic")}
        if errors:
            raise _invalid(errors)
        group = {
            "id": account.next_id(),
            "title": title,
            "isPublic": bool(body.get("isPublic", False)),
            "isDynamic": False,
            "created": self.clock(),
        }
        account.groups[group["id"]] = group
        return group

    def group(self, account: _Account, group_id: str) -> dict[str, Any]:
        found = account.groups.get(int(group_id)) if group_id.isdigit() else None
        if found is None:
            raise _not_found("Group")
        return found

    def create_field(self, account: _Account, body: dict[str, Any]) -> dict[str, Any]:
        name, kind = body.get("name"), body.get("type")
        errors: dict[str, list[str]] = {}
        if not isinstance(name, str) or not name.strip():
            errors["name"] = ["required"]
        if kind not in FIELD_TYPES:
            errors["type"] = [f"must be one of {', '.join(FIELD_TYPES)}"]
        if errors:
            raise _invalid(errors)
        if len(account.fields) >= self.custom_field_limit:  # CI-A8
            raise CiError(422, "Custom field limit reached", {})
        spec = {"id": account.next_id(), "name": name, "type": kind}
        account.fields[spec["id"]] = spec
        return dict(spec)

    # -- JSON -----------------------------------------------------------------------------------
    def _json(self, m: _Member) -> dict[str, Any]:
        body: dict[str, Any] = {"id": m.id, "email": m.email}
        for key in ("firstname", "lastname", "company", "gender", "language"):
            body[key] = m.values.get(key) or ""
        body |= {
            "joinedOn": _stamp(m.joined),
            "updatedOn": _stamp(m.updated),
            "consentType": m.consent["consentType"] if m.consent else None,
        }
        for key in ("postalCode", "country", "note", "birthdate"):
            body[key] = m.values.get(key) or ""
        body |= {"mailingsReceived": 0, "mailingsOpened": 0, "mailingsClicked": 0}
        body["customFields"] = {k: v for k, v in m.custom.items() if v is not None}
        return body

    def _group_json(self, account: _Account, group: dict[str, Any]) -> dict[str, Any]:
        count = sum(
            1
            for m in account.members.values()
            if group["id"] in m.groups and m.email not in account.unsubscribed
        )
        return {
            "id": group["id"],
            "title": group["title"],
            "isPublic": group["isPublic"],
            "membersCount": count,
            "mailingsCount": 0,
            "createdOn": _stamp(group["created"]),
            "isDynamic": group["isDynamic"],
        }

    def batch_json(self, batch: _Batch, details: bool) -> dict[str, Any]:
        result = None
        if batch.result is not None:
            errors = batch.result["errors"]
            result = {
                "successes": list(batch.result["successes"]),
                # [I] without showErrorDetails=true an error names the email only
                "errors": errors if details else [{"email": e["email"]} for e in errors],
            }
        return {
            "id": batch.id,
            "batchType": batch.type,
            "batchJson": json.dumps(batch.body),
            "createdOn": _stamp(batch.created),
            "status": batch.status,
            "result": result,
            "successes": len(batch.result["successes"]) if batch.result else 0,
        }


# -- value checks ---------------------------------------------------------------------------------
def _field_error(key: str, value: Any) -> str | None:
    if key == "email":
        ok = isinstance(value, str) and _EMAIL.match(value.strip())
        return None if ok else "must be an email address"
    if value is None:
        return None
    if key == "gender":
        return None if value in GENDERS + ("",) else "must be m, f or o"
    if key == "language":
        return None if value in LANGUAGES + ("",) else "must be en_ca or fr_ca"
    if key == "birthdate":
        return None if value == "" else _date_error(value)
    if key == "country":
        ok = isinstance(value, str) and (value == "" or re.fullmatch(r"[A-Z]{2}", value))
        return None if ok else "must be an ISO 3166 alpha-2 code"
    return None if isinstance(value, str) else "must be a string"


def _date_error(value: Any) -> str | None:
    if not isinstance(value, str) or not _DATE.match(value):
        return "must be a date Y-m-d"
    try:
        date.fromisoformat(value)
    except ValueError:
        return "must be a real date"
    return None


def _typed_error(kind: str, value: Any) -> str | None:
    """CI-A9: date -> Y-m-d, integer -> JSON number, decimal -> number, text -> string."""
    if kind == "date":
        return _date_error(value)
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "must be a JSON integer"
    if kind == "decimal":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "must be a JSON number"
    return None if isinstance(value, str) else "must be a string"


def _consent(relation: str, consent_date: str, proof: str) -> dict[str, Any]:
    express = relation in EXPRESS
    expiry = None if express else _add_months(date.fromisoformat(consent_date), IMPLIED_MONTHS)
    return {
        "consentType": "express" if express else "implied",
        "relationType": relation,
        "consentDate": consent_date,
        "consentExpiration": expiry.isoformat() if expiry else None,
        "consentProof": proof,
    }


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    for candidate in (day.day, 30, 29, 28):  # Feb 29 + 24 months -> Feb 28
        try:
            return date(year, month, min(day.day, candidate))
        except ValueError:
            continue
    raise ValueError(day)


def _local(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, MONTREAL)


def _stamp(epoch: float) -> str:
    return _local(epoch).replace(microsecond=0).isoformat()  # CI-A12


def _in_range(epoch: float, query: dict[str, Any], name: str) -> bool:
    day = _local(epoch).date()
    low, high = query.get(name + "From"), query.get(name + "To")
    return (low is None or day >= low) and (high is None or day <= high)


def _sorted(members: list[_Member], sort: str | None) -> list[_Member]:
    """[I] default order is date_asc (joining order)."""
    field_name, _, direction = (sort or "date_asc").rpartition("_")
    keys: dict[str, Callable[[_Member], Any]] = {
        "email": lambda m: m.email,
        "language": lambda m: m.values.get("language") or "",
        "fullname": lambda m: f"{m.values.get('firstname') or ''} {m.values.get('lastname') or ''}",
        "date": lambda m: (m.joined, m.id),
        "consent_type": lambda m: (m.consent or {}).get("consentType") or "",
        "consent_date": lambda m: (m.consent or {}).get("consentDate") or "",
        "updated": lambda m: (m.updated, m.id),
    }
    return sorted(members, key=keys[field_name], reverse=direction == "desc")


def paging(request: Request, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """CI-A2 page/limit/sort plus the date filters; a bad value is a 400."""
    query = request.query_params
    parsed: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    limit = query.get("limit", str(DEFAULT_LIMIT))
    if not limit.isdigit() or int(limit) < 1:
        errors["limit"] = ["must be a positive integer"]
    elif int(limit) > MAX_LIMIT:
        raise CiError(400, "Invalid limit", {"limit": [f"max {MAX_LIMIT}"]})
    page = query.get("page", "1")
    if not page.isdigit() or int(page) < 1:
        errors["page"] = ["must be a positive integer"]
    sort = query.get("sort")
    if sort is not None and not _SORT.match(sort):
        errors["sort"] = ["unknown sort"]
    status = query.get("status", "all")
    if status not in ("active", "orphans", "all"):
        errors["status"] = ["must be active, orphans or all"]
    for name in ("joinedOnFrom", "joinedOnTo", "updatedOnFrom", "updatedOnTo") + extra:
        if name in query:
            if _date_error(query[name]):
                errors[name] = ["must be a date yyyy-mm-dd"]
            else:
                parsed[name] = date.fromisoformat(query[name])
    if errors:
        raise _invalid(errors, "Invalid parameters")
    return parsed | {"limit": int(limit), "page": int(page), "sort": sort, "status": status}


def page_of(items: list[Any], query: dict[str, Any], name: str) -> dict[str, Any]:
    start = (query["page"] - 1) * query["limit"]
    return {
        name: items[start : start + query["limit"]],
        "totalCount": len(items),
        "page": query["page"],
        "limit": query["limit"],  # CI-A2: echoed
        "sort": query["sort"] or "date_asc",
    }


# -- HTTP -----------------------------------------------------------------------------------------
Handler = Callable[[Request, _Account], Any]
THROTTLED = {("POST", "/members"), ("POST", "/members/optins")}  # CI-A6


class _Handlers:
    """The endpoints; each runs inside `endpoint` (auth, throttle, errors, recording)."""

    def __init__(self, state: CyberimpactState) -> None:
        self.state = state

    def endpoint(self, route: str, **by_method: Handler) -> Route:
        async def answer(request: Request) -> Response:
            token = bearer_token(request)
            known = token in self.state.accounts
            response = await self._answer(request, route, by_method, token if known else None)
            account = self.state.accounts[token].username if known and token else None
            self.state.record(
                RecordedRequest(
                    request.method, request.url.path, route, response.status_code, account
                )
            )
            return response

        return Route(route, answer, methods=list(by_method))

    async def _answer(
        self, request: Request, route: str, by_method: dict[str, Handler], token: str | None
    ) -> Response:
        if token is None:
            return JSONResponse({"message": "Invalid token", "errors": {}}, 401)  # CI-A1
        throttled = (request.method, route) in THROTTLED
        limiter = self.state.post_limiter if throttled else self.state.limiter
        decision = limiter.hit(token)
        if not decision.allowed:  # CI-A6
            headers = {"Retry-After": decision.retry_after_header}
            return JSONResponse(
                {"message": "Too many requests", "errors": {}}, 429, headers=headers
            )
        await request.body()  # read (and cached) before the lock, so no await waits under it
        try:
            with self.state._lock:
                return await by_method[request.method](request, self.state.account(token))
        except CiError as error:
            return JSONResponse(error.body(), error.status)

    # -- handlers ---------------------------------------------------------------------------------
    async def ping(self, request: Request, account: _Account) -> Response:
        return JSONResponse(
            {
                "ping": "success",
                "username": account.username,
                "email": account.email,
                "account": account.name,
            }
        )

    async def list_members(self, request: Request, account: _Account) -> Response:
        query = paging(request)
        found = [self.state._json(m) for m in self.state.list_members(account, query)]
        return JSONResponse(page_of(found, query, "members"))

    async def create_member(self, request: Request, account: _Account) -> Response:
        created = self.state.create(account, await _body(request))
        return JSONResponse(self.state._json(created), 201)

    async def get_member(self, request: Request, account: _Account) -> Response:
        return JSONResponse(self.state._json(self.state.find(account, _key(request))))

    async def put_member(self, request: Request, account: _Account) -> Response:
        changed = self.state.update(account, _key(request), await _body(request), replace=True)
        return JSONResponse(self.state._json(changed))

    async def patch_member(self, request: Request, account: _Account) -> Response:
        changed = self.state.update(account, _key(request), await _body(request), replace=False)
        return JSONResponse(self.state._json(changed))

    async def delete_member(self, request: Request, account: _Account) -> Response:
        return JSONResponse(self.state._json(self.state.delete(account, _key(request))))

    async def member_groups(self, request: Request, account: _Account) -> Response:
        target = self.state.find(account, _key(request))
        if request.method != "GET":
            body = await _body(request)
            errors: dict[str, list[str]] = {}
            ids = self.state._groups(account, body.get("groups"), errors)
            if errors or "groups" not in body:
                raise _invalid(errors or {"groups": ["required"]})
            target.groups = target.groups | ids if request.method == "POST" else ids
            target.updated = self.state.clock()
        groups = [self.state._group_json(account, account.groups[g]) for g in sorted(target.groups)]
        return JSONResponse({"groups": groups})

    async def remove_group(self, request: Request, account: _Account) -> Response:
        target = self.state.find(account, _key(request))
        group = self.state.group(account, request.path_params["group_id"])
        if group["id"] not in target.groups:
            raise _not_found("Group membership")  # [I]
        target.groups.discard(group["id"])
        target.updated = self.state.clock()
        return Response(status_code=204)  # CI-A4

    async def consent(self, request: Request, account: _Account) -> Response:
        target = self.state.find(account, _key(request))
        if request.method == "PUT":
            return JSONResponse(self.state.set_consent(target, await _body(request)))
        if target.consent is None:
            raise _not_found("Consent")  # [I] a member created without consent has none
        return JSONResponse(dict(target.consent))

    async def optin(self, request: Request, account: _Account) -> Response:
        """[I] the opt-in email is not sent; the member is created like POST /members."""
        created = self.state.create(account, await _body(request))
        return JSONResponse(self.state._json(created), 201)

    async def unsubscribed(self, request: Request, account: _Account) -> Response:
        query = paging(request, ("unsubscribedOnFrom", "unsubscribedOnTo"))
        rows = [
            self._address_row(account, email, when, "unsubscribedOn")
            for email, when in account.unsubscribed.items()
            if _in_range(when, query, "unsubscribedOn")
        ]
        return JSONResponse(page_of(rows, query, "members"))

    async def one_unsubscribed(self, request: Request, account: _Account) -> Response:
        email = _key(request).lower()
        if email not in account.unsubscribed:
            raise _not_found()
        return JSONResponse(
            self._address_row(account, email, account.unsubscribed[email], "unsubscribedOn")
        )

    async def unsubscribe(self, request: Request, account: _Account) -> Response:
        target = self.state.find(account, _key(request))
        account.unsubscribed.setdefault(target.email, self.state.clock())
        target.updated = self.state.clock()
        return JSONResponse(self.state._json(target))

    async def bounced(self, request: Request, account: _Account) -> Response:
        query = paging(request, ("bouncedOnFrom", "bouncedOnTo"))
        rows = [
            self._address_row(account, email, when, "bouncedOn")
            for email, when in account.bounced.items()
            if _in_range(when, query, "bouncedOn")
        ]
        return JSONResponse(page_of(rows, query, "members"))

    def _address_row(self, account: _Account, email: str, when: float, name: str) -> dict:
        """[I] the member object when the member still exists, plus when it happened."""
        found = account.members.get(email)
        row = self.state._json(found) if found else {"email": email}
        return row | {name: _stamp(when)}

    async def list_groups(self, request: Request, account: _Account) -> Response:
        query = paging(request)
        rows = [self.state._group_json(account, g) for g in account.groups.values()]
        return JSONResponse(page_of(rows, query, "groups"))

    async def create_group(self, request: Request, account: _Account) -> Response:
        group = self.state.create_group(account, await _body(request))
        return JSONResponse(self.state._group_json(account, group), 201)

    async def one_group(self, request: Request, account: _Account) -> Response:
        group = self.state.group(account, request.path_params["group_id"])
        if request.method != "GET" and group["isDynamic"]:
            raise CiError(422, "Dynamic groups cannot be edited through the API", {})  # CI-A7
        if request.method == "DELETE":
            del account.groups[group["id"]]
            for m in account.members.values():
                m.groups.discard(group["id"])
            return JSONResponse({"id": group["id"]})
        if request.method in ("PUT", "PATCH"):
            body = await _body(request)
            if "title" in body or request.method == "PUT":
                if not isinstance(body.get("title"), str) or not body["title"].strip():
                    raise _invalid({"title": ["required"]})
                group["title"] = body["title"]
            group["isPublic"] = bool(body.get("isPublic", group["isPublic"]))
        return JSONResponse(self.state._group_json(account, group))

    async def group_members(self, request: Request, account: _Account) -> Response:
        group = self.state.group(account, request.path_params["group_id"])
        if request.method == "DELETE":
            if group["isDynamic"]:
                raise CiError(422, "Dynamic groups cannot be edited through the API", {})
            for m in account.members.values():
                m.groups.discard(group["id"])
            return JSONResponse(self.state._group_json(account, group))
        query = paging(request)
        found = self.state.list_members(account, query, group["id"])
        return JSONResponse(page_of([self.state._json(m) for m in found], query, "members"))

    async def list_fields(self, request: Request, account: _Account) -> Response:
        return JSONResponse({"customFields": [dict(f) for f in account.fields.values()]})

    async def create_field(self, request: Request, account: _Account) -> Response:
        return JSONResponse(self.state.create_field(account, await _body(request)), 201)

    async def create_batch(self, request: Request, account: _Account) -> Response:
        batch = self.state.create_batch(account, await _body(request))
        return JSONResponse(self.state.batch_json(batch, False), 201)

    async def get_batch(self, request: Request, account: _Account) -> Response:
        raw = request.path_params["batch_id"]
        if not raw.isdigit():
            raise _not_found("Batch")
        batch = self.state.poll_batch(account, int(raw))
        details = request.query_params.get("showErrorDetails") == "true"
        return JSONResponse(self.state.batch_json(batch, details))

    async def unknown(self, request: Request, account: _Account) -> Response:
        raise _not_found(f"Endpoint {request.method} {request.url.path}")


def _key(request: Request) -> str:
    return unquote(request.path_params["key"])


async def _body(request: Request) -> dict[str, Any]:
    """The JSON object body, or a 400 in the CI-A13 shape."""
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as error:
        raise _invalid({"body": [f"not valid JSON: {error}"]}) from error
    if not isinstance(body, dict):
        raise _invalid({"body": ["must be a JSON object"]})
    return body


ALL = ("GET", "POST", "PUT", "PATCH", "DELETE")


def routes(state: CyberimpactState) -> list[BaseRoute]:
    """Everything under PREFIX; fixed paths come before `{key}` so `unsubscribed` is no key."""
    h = _Handlers(state)
    e = h.endpoint
    member = {"GET": h.get_member, "PUT": h.put_member, "PATCH": h.patch_member}
    return [
        Mount(
            PREFIX,
            routes=[
                e("/ping", GET=h.ping),
                e("/members", GET=h.list_members, POST=h.create_member),
                e("/members/optins", POST=h.optin),
                e("/members/unsubscribed", GET=h.unsubscribed),
                e("/members/unsubscribed/{key}", GET=h.one_unsubscribed, POST=h.unsubscribe),
                e("/members/bounced", GET=h.bounced),
                e("/members/{key}", **member, DELETE=h.delete_member),
                e(
                    "/members/{key}/groups",
                    GET=h.member_groups,
                    POST=h.member_groups,
                    PUT=h.member_groups,
                ),  # fmt: skip
                e("/members/{key}/groups/{group_id}", DELETE=h.remove_group),
                e("/members/{key}/consent", GET=h.consent, PUT=h.consent),
                e("/groups", GET=h.list_groups, POST=h.create_group),
                e(
                    "/groups/{group_id}",
                    GET=h.one_group,
                    PUT=h.one_group,
                    PATCH=h.one_group,
                    DELETE=h.one_group,
                ),  # fmt: skip
                e("/groups/{group_id}/members", GET=h.group_members, DELETE=h.group_members),
                e("/customfields", GET=h.list_fields, POST=h.create_field),
                e("/batches", POST=h.create_batch),
                e("/batches/{batch_id}", GET=h.get_batch),
                e("/{rest:path}", **dict.fromkeys(ALL, h.unknown)),
            ],
        )
    ]


# -- control routes (/_sandbox/cyberimpact) -------------------------------------------------------
def control_routes(state: CyberimpactState) -> list[BaseRoute]:
    """POST /unsubscribe and /bounce `{email, token?}`: what a mailing's recipient does."""

    def action(apply: Callable[[str, str], None]) -> Callable[[Request], Any]:
        async def answer(request: Request) -> Response:
            body = await json_object(request)
            email = body.get("email")
            token = body.get("token", CYBERIMPACT_API_TOKEN)
            if not isinstance(email, str) or token not in state.accounts:
                return JSONResponse({"error": "email (and a known token) required"}, 400)
            apply(email, token)
            return JSONResponse({"ok": True})

        return answer

    return [
        Route("/unsubscribe", action(state.unsubscribe), methods=["POST"]),
        Route("/bounce", action(state.bounce), methods=["POST"]),
    ]


def build(data: SandboxData, rate_limits: bool) -> CyberimpactState:
    """A target: every account starts empty whatever the generated data holds."""
    return CyberimpactState(rate_limits)


EMULATOR = Emulator(
    name="cyberimpact",
    build=build,
    routes=routes,
    credentials={
        "CYBERIMPACT_API_TOKEN": CYBERIMPACT_API_TOKEN,
        "CYBERIMPACT_OTHER_API_TOKEN": CYBERIMPACT_OTHER_API_TOKEN,
    },
    summary=lambda state: state.counts(),
    control_routes=control_routes,
)
