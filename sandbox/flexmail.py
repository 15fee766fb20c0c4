"""Flexmail REST emulator (api.flexmail.eu): contacts, custom fields, interests, sources, bulk
imports, webhooks, the legacy bounce read and the account's limits (FM-A1..FM-A13).

It serves memberflow's assumed contract as strictly as the API file reads, so the client written
from the same file fails here where it would fail at Flexmail:

- HTTP Basic with the account id and a personal access token; a `D-` prefixed id is refused
  ([I] FM-formie strips it before calling).
- HAL collections `{total, _embedded: {item}, _links: {self}}`, `_embedded` left out when empty
  (FM-A1); `limit` 1..500 and a 0-based `offset`; hrefs and `Location` are paths below the API
  root (`/contacts/12`, FM-A2).
- problem+json errors, 422 with `violations` (FM-A11); a body field the endpoint does not take is
  a violation too ([I] so `last_name` for `name` cannot be lost silently).
- Unsubscribing blacklists the address: the contact vanishes from every read, and only an import
  with `resubscribe_blacklisted_contacts` brings it back (FM-A4).
- 60 calls a minute and a monthly cap per account, both 429 (FM-A10); every request is counted
  per endpoint template (`GET /contacts/{id}`) for tests and the demo.

Webhook registrations and deliveries live in `sandbox.flexmail_webhooks`.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from sandbox.emulator import Emulator
from sandbox.flexmail_webhooks import EVENTS, Delivery, WebhookInvalid, Webhooks, new_sender
from sandbox.generator import SandboxData
from sandbox.httputil import basic_credentials, json_object, media_type
from sandbox.ratelimit import RateLimiter
from sandbox.webhook_sender import PushesWebhooks

PREFIX = "/flexmail"  # the sandbox's stand-in for https://api.flexmail.eu
FLEXMAIL_ACCOUNT_ID = "204518"
FLEXMAIL_TOKEN = "demo-flexmail-personal-access-token"
FLEXMAIL_LEGACY_TOKEN = "demo-flexmail-legacy-token"
FLEXMAIL_WEBHOOK_TOKEN = "demo-flexmail-webhook-token"
LANGUAGES = ("nl", "fr", "en", "de")  # FM-A13: the account's contact languages
PER_MINUTE = 60  # FM-A10
MONTHLY_CAP = 100_000  # FM-A10 default
MONTHLY_DETAIL = "Monthly API call limit reached"
DEFAULT_LIMIT, MAX_LIMIT = 20, 500  # [I] the default page size is unknown; 500 is the max
MAX_IMPORT_RECORDS = 1000  # FM-A8: records per POST
IMPORT_DELAY = 6.0  # [I] seconds from queued to completed: about two polls at FM-A8's 5 s
IMPORT_DELAY_ENV = "SANDBOX_FLEXMAIL_IMPORT_DELAY"  # e.g. "0" for end-to-end tests
ACCEPTED_MEDIA = ("application/json", "application/hal+json")  # FM-A1
FIELD_TYPES = ("free_text", "numeric", "date", "multiple_choice")
SOURCES = {1: "Admin"}  # FM-A5
ALL = ["GET", "POST", "PUT", "PATCH", "DELETE"]
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
Row = dict[str, Any]

CUSTOM_FIELDS = (  # (id, name, placeholder, type): ids are strings (section 2.2)
    ("cf-7d1e4a", "Boekhoudpakket", "acc_software", "free_text"),
    ("cf-2b9c10", "Kantoor", "kantoor", "free_text"),
    ("cf-5f0a83", "Klant sinds", "klant_sinds", "date"),
    ("cf-9e61c4", "Aantal werknemers", "aantal_werknemers", "numeric"),
    ("cf-3c7d25", "Diensten", "diensten", "multiple_choice"),
)
INTERESTS = (  # (id, name): Belgian accountancy newsletters (FM-A7 maps by name)
    ("int-01", "Fiscaliteit", "Nieuws over belastingen en aangiftes"),
    ("int-02", "Vennootschapsrecht", "Wijzigingen in het WVV"),
    ("int-03", "Successieplanning", "Schenken, erven en estate planning"),
    ("int-04", "Btw", "Btw-tarieven, aangiftes en e-facturatie"),
    ("int-05", "Sociaal recht", "Loonadministratie en arbeidsrecht"),
)
SEED_CONTACTS = (  # contacts that exist only in Flexmail (e.g. signed up through a form)
    ("an.peeters@kantoorpeeters.be", "An", "Peeters", "nl", {"kantoor": "Gent"}),
    ("sophie.dubois@fiduciaire-dubois.be", "Sophie", "Dubois", "fr", {"kantoor": "Namur"}),
    ("jan.vermeulen@vermeulen-bouw.be", "Jan", "Vermeulen", "nl", {"aantal_werknemers": 12}),
    ("marie.lambert@lambert-conseil.be", "Marie", "Lambert", "fr", {}),
)
SEED_BLACKLISTED = ("pieter.janssens@janssens-transport.be", "Pieter", "Janssens", "nl")


class Problem(Exception):
    """A refused request as problem+json `{type, title, status, detail}` (FM-A11)."""

    def __init__(
        self,
        status: int,
        detail: str,
        violations: list[Row] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail
        self.violations, self.headers = violations, headers or {}

    def body(self) -> Row:
        body: Row = {
            "type": "about:blank",  # [I] no problem type URIs are documented
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
        }
        if self.violations is not None:
            body["violations"] = self.violations
        return body

    def response(self) -> Response:
        return JSONResponse(
            self.body(), self.status, self.headers, media_type="application/problem+json"
        )


def invalid(violations: list[Row]) -> Problem:
    """A 422 whose detail lists every violation, as API Platform phrases it."""
    detail = "\n".join(f"{v['propertyPath']}: {v['message']}" for v in violations)
    return Problem(422, detail, violations)


def violation(path: str, message: str) -> Row:
    return {"propertyPath": path, "message": message}


def not_found(what: str) -> Problem:
    return Problem(404, f"{what} not found")


@dataclass
class Contact:
    id: int
    email: str
    language: str
    first_name: str | None = None
    name: str | None = None
    custom_fields: Row = field(default_factory=dict)
    sources: list[int] = field(default_factory=list)
    interests: list[str] = field(default_factory=list)  # interest ids, in subscription order


@dataclass
class Import:
    id: str
    resubscribe: bool
    records: list[Any] = field(default_factory=list)
    status: str = "idle"  # idle | queued | completed | failed
    queued_at: float = 0.0
    message: str = ""
    report: dict[str, int] = field(
        default_factory=lambda: {"total_added": 0, "total_updated": 0, "total_ignored": 0}
    )


class FlexmailState(PushesWebhooks):
    """One Flexmail account: contacts, blacklist, imports, webhooks, limits; thread-safe.

    Settings tests change on a built state: `import_delay` (seconds from queued to completed),
    `import_start` ("both", or only "patch" / "post": FM-A8's unresolved start), `import_outcome`
    ("completed" or "failed"), `create_empty_body` (a create answers 201 with only `Location`),
    `set_per_minute`, `set_monthly`, `retry_delays` / `sleep` / `loopback_only` (deliveries) and
    `clock`.
    """

    def __init__(
        self,
        rate_limits: bool = True,
        clock: Callable[[], float] = time.time,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.clock = clock
        self.default_import_delay = float(env.get(IMPORT_DELAY_ENV, "").strip() or IMPORT_DELAY)
        self.import_delay = self.default_import_delay
        self._default_variants()
        self.default_per_minute = PER_MINUTE if rate_limits else None
        self.limiter = RateLimiter(self.default_per_minute, 60.0, clock)
        self.monthly_cap = MONTHLY_CAP
        self.monthly_used: Counter[str] = Counter()  # "YYYY-MM" -> calls; kept across reset()
        self.webhooks = new_sender(env)
        self.custom_fields = {
            placeholder: {"id": fid, "name": name, "placeholder": placeholder, "type": kind}
            for fid, name, placeholder, kind in CUSTOM_FIELDS
        }
        self.interests = {
            iid: {
                "id": iid,
                "name": name,
                "label": name,
                "description": text,
                "visibility": "public",
            }
            for iid, name, text in INTERESTS
        }
        self._lock = threading.RLock()
        self._seed()

    def _seed(self) -> None:
        self.contacts: dict[int, Contact] = {}
        self.by_email: dict[str, int] = {}
        self.blacklist: dict[str, float] = {}  # address -> when
        self.bounces: list[Row] = []  # FM-A12 legacy records
        self.imports: dict[str, Import] = {}
        self.hooks = Webhooks(self.webhooks)
        self.requests: Counter[str] = Counter()  # "GET /contacts/{id}" -> requests
        self._next_id = 310_001
        for email, first, last, language, custom in SEED_CONTACTS:
            self._add(_seed_values(email, first, last, language, custom), [])
        email, first, last, language = SEED_BLACKLISTED
        self._add(_seed_values(email, first, last, language, {}), [])
        self.blacklist[email] = self.clock() - 40 * 86400
        self.bounces.append(
            {
                "email": SEED_CONTACTS[3][0],
                "bounce_type": "soft",
                "bounced_at": _iso(self.clock() - 10 * 86400),
                "campaign_id": 5101,
            }
        )

    def _default_variants(self) -> None:
        """The answers the API file leaves open, as FM-A2/FM-A8 assume them."""
        self.import_start = "both"  # "patch" | "post" | "both"
        self.import_outcome = "completed"  # "completed" | "failed"
        self.create_empty_body = False

    def set_variants(self, body: Row) -> None:
        """The open answers (see `_default_variants`), each only when sent; checked here."""
        with self._lock:
            if "import_start" in body:
                if body["import_start"] not in ("patch", "post", "both"):
                    raise ValueError("import_start must be patch, post or both")
                self.import_start = body["import_start"]
            if "import_outcome" in body:
                if body["import_outcome"] not in ("completed", "failed"):
                    raise ValueError("import_outcome must be completed or failed")
                self.import_outcome = body["import_outcome"]
            if "create_empty_body" in body:
                self.create_empty_body = bool(body["create_empty_body"])

    @property
    def deliveries(self) -> list[Delivery]:  # type: ignore[override]
        return self.hooks.deliveries

    # -- inspection for tests and the demo ------------------------------------------------------
    def visible(self) -> list[Contact]:
        """Contacts the API lists: every one whose address is not blacklisted (FM-A4)."""
        return [c for c in self.contacts.values() if c.email not in self.blacklist]

    def contact(self, email: str) -> Row | None:
        """A visible contact as the API shows it, by email."""
        with self._lock:
            found = self._by_email(email)
            return contact_json(found) if found and found.email not in self.blacklist else None

    def interest_names(self, email: str) -> set[str]:
        with self._lock:
            found = self._by_email(email)
            return {self.interests[i]["name"] for i in found.interests} if found else set()

    def month(self) -> str:
        return datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m")

    def counts(self) -> Row:
        """The sandbox banner's line."""
        with self._lock:
            return {
                "contacts": len(self.visible()),
                "blacklisted": len(self.blacklist),
                "imports": len(self.imports),
                "webhooks": len(self.hooks.registrations),
                "deliveries": len(self.hooks.deliveries),
                "bounces": len(self.bounces),
                "calls_this_month": self.monthly_used[self.month()],
            }

    def stats(self) -> Row:
        """Calls per endpoint, records, deliveries with their attempts (GET /_sandbox/.../stats)."""
        with self._lock:
            return self.counts() | {
                "requests": dict(sorted(self.requests.items())),
                "monthly_cap": self.monthly_cap,
                "per_minute": self.limiter.limit,
                "deliveries": [d.summary() for d in self.hooks.deliveries],
            }

    def request_count(self, endpoint: str) -> int:
        """Requests to one endpoint template, e.g. `request_count("POST /contacts")`."""
        with self._lock:
            return self.requests[endpoint]

    # -- settings for tests and the demo --------------------------------------------------------
    def set_per_minute(self, limit: int | None) -> None:
        """The per-minute limit (None: off); counted calls are forgotten."""
        with self._lock:
            self.limiter.limit = limit
            self.limiter.reset()

    def set_monthly(self, cap: int | None = None, used: int | None = None) -> None:
        """The monthly cap and/or this month's used count."""
        with self._lock:
            if cap is not None:
                self.monthly_cap = cap
            if used is not None:
                self.monthly_used[self.month()] = used

    def reset(self, monthly: bool = False) -> None:
        """Back to the seeded account; the month's call count stays unless `monthly`."""
        with self._lock:
            self.webhooks.wait(5.0)
            self._seed()
            self.limiter.limit = self.default_per_minute
            self.limiter.reset()
            self.import_delay = self.default_import_delay
            self._default_variants()
            if monthly:
                self.monthly_cap = MONTHLY_CAP
                self.monthly_used.clear()

    # -- what a subscriber does on Flexmail's side (control routes) -----------------------------
    def unsubscribe(self, email: str) -> Contact:
        """A recipient clicked unsubscribe: blacklisted, and `contact.unsubscribed` is sent."""
        with self._lock:
            found = self._visible_by_email(email)
            self._blacklist(found)
            return found

    def click(self, email: str, campaign_id: int, campaign_name: str, link_url: str) -> Contact:
        """A recipient clicked a link in a campaign: `contact.clicked`."""
        with self._lock:
            found = self._visible_by_email(email)
            self.emit(
                "contact.clicked",
                found,
                campaign_id=campaign_id,
                campaign_name=campaign_name,
                link_url=link_url,
            )
            return found

    def bounce(self, email: str, bounce_type: str, campaign_id: int) -> Contact:
        """A campaign bounced: a legacy bounce record (FM-A12) and `contact.bounced`."""
        if bounce_type not in ("hard", "soft"):
            raise ValueError("bounce_type must be hard or soft")
        with self._lock:
            found = self._visible_by_email(email)
            stamp = _iso(self.clock())
            self.bounces.append(
                {
                    "email": found.email,
                    "bounce_type": bounce_type,
                    "bounced_at": stamp,
                    "campaign_id": campaign_id,
                }
            )
            self.emit("contact.bounced", found, bounce_type=bounce_type, campaign_id=campaign_id)
            return found

    def create_on_flexmail(self, body: Row) -> Contact:
        """A contact made at Flexmail only (a sign-up form): no source, `contact.created`."""
        with self._lock:
            values = contact_values(
                self,
                body,
                allowed=("email", "first_name", "name", "language"),
                required=("email", "language"),
            )
            self._check_free(values["email"])
            made = self._add(values, [])
            self.emit("contact.created", made)
            return made

    def blacklist_address(self, email: str) -> None:
        """Blacklist an address without a webhook (an unsubscribe from before memberflow)."""
        with self._lock:
            self.blacklist.setdefault(email.lower(), self.clock())

    def redeliver(self, delivery_id: int | str, times: int) -> list[Delivery]:
        with self._lock:
            return self.hooks.redeliver(delivery_id, times)

    def emit(self, event_name: str, contact: Contact, **extra: Any) -> None:
        """FM-A9 data: `{contact_id, email}` plus the event's own fields."""
        data = {"contact_id": contact.id, "email": contact.email} | extra
        # [I] milliseconds: two real clicks in one second are two bodies, a redelivery is one
        self.hooks.emit(event_name, _iso(self.clock(), "milliseconds"), data)

    # -- limits (FM-A10) ------------------------------------------------------------------------
    def admit(self, account: str) -> None:
        """Count one call against the month and the minute, or refuse it with a 429."""
        with self._lock:
            month = self.month()
            if self.monthly_used[month] >= self.monthly_cap:
                # [I] no Retry-After: waiting minutes does not help, the client must stop
                raise Problem(429, MONTHLY_DETAIL)
            decision = self.limiter.hit(account)
            if not decision.allowed:
                raise Problem(
                    429,
                    f"Rate limit of {decision.limit} requests per minute exceeded",
                    headers={"Retry-After": decision.retry_after_header},
                )
            self.monthly_used[month] += 1

    def record(self, endpoint: str) -> None:
        with self._lock:
            self.requests[endpoint] += 1

    # -- contacts (section 2.1, FM-A2..A4) -------------------------------------------------------
    def find(self, raw_id: str) -> Contact:
        """A visible contact by its numeric id, or 404 (a blacklisted one too, FM-A4)."""
        found = self.contacts.get(int(raw_id)) if raw_id.isdigit() else None
        if found is None or found.email in self.blacklist:
            raise not_found("Contact")
        return found

    def create(self, body: Row) -> Contact:
        values = contact_values(
            self,
            body,
            allowed=("email", "first_name", "name", "language", "source", "custom_fields"),
            required=("email", "language", "source"),
        )
        self._check_free(values["email"])
        made = self._add(values, [values["source"]])
        self.emit("contact.created", made)
        return made

    def change(self, target: Contact, body: Row, replace: bool) -> Contact:
        """PUT replaces email, names and language (custom fields only when sent, [I]); PATCH
        changes what is sent and never the email (section 2.1 lists its fields)."""
        scalars = ("first_name", "name", "language")
        allowed = ("email", *scalars, "custom_fields") if replace else (*scalars, "custom_fields")
        required = ("email", *scalars) if replace else ()
        values = contact_values(self, body, allowed, required)
        if replace and values["email"] != target.email:
            self._check_free(values["email"])
            del self.by_email[target.email]
            target.email = values["email"]
            self.by_email[target.email] = target.id
        for key in scalars:
            if key in values:
                setattr(target, key, values[key])
        if "custom_fields" in values:
            target.custom_fields.update(values["custom_fields"])
        self.emit("contact.updated", target)
        return target

    def delete(self, target: Contact) -> None:
        del self.contacts[target.id]
        del self.by_email[target.email]

    def api_unsubscribe(self, target: Contact) -> None:
        """POST /contacts/{id}/unsubscribe: blacklisted like a recipient's click ([I] and the
        webhook is sent too; the receiver must not loop it back)."""
        self._blacklist(target)

    def subscribe_interest(self, target: Contact, body: Row) -> str:
        violations = [
            violation(k, "This field was not expected.") for k in body if k != "interest_id"
        ]
        interest_id = body.get("interest_id")
        if not isinstance(interest_id, str):
            violations.append(violation("interest_id", "This value should be of type string."))
        elif interest_id not in self.interests:
            violations.append(violation("interest_id", "Interest not found."))
        if violations:
            raise invalid(violations)
        if interest_id in target.interests:
            raise Problem(409, "Contact is already subscribed to this interest")
        target.interests.append(str(interest_id))
        return str(interest_id)

    def unsubscribe_interest(self, target: Contact, interest_id: str) -> None:
        if interest_id not in target.interests:
            raise not_found("Interest subscription")
        target.interests.remove(interest_id)

    def _check_free(self, email: str) -> None:
        """FM-A4 before FM-A2: a blacklisted address is refused as blacklisted."""
        if email in self.blacklist:
            raise Problem(409, "Contact is blacklisted")
        if email in self.by_email:
            raise Problem(409, "Contact already exists")

    def _add(self, values: Row, sources: list[int]) -> Contact:
        """A new contact from checked `contact_values`, with the next numeric id."""
        made = Contact(
            self._next_id,
            values["email"],
            values["language"],
            values.get("first_name"),
            values.get("name"),
            dict(values.get("custom_fields", {})),
            list(sources),
        )
        self._next_id += 1
        self.contacts[made.id] = made
        self.by_email[made.email] = made.id
        return made

    def _by_email(self, email: str) -> Contact | None:
        found = self.by_email.get(email.strip().lower())
        return self.contacts[found] if found is not None else None

    def _visible_by_email(self, email: str) -> Contact:
        found = self._by_email(email)
        if found is None or found.email in self.blacklist:
            raise KeyError(f"no contact with that email{' (blacklisted)' if found else ''}")
        return found

    def _blacklist(self, target: Contact) -> None:
        self.blacklist[target.email] = self.clock()
        self.emit("contact.unsubscribed", target)

    # -- bulk imports (FM-A8) -------------------------------------------------------------------
    def create_import(self, body: Row) -> Import:
        violations = [
            violation(k, "This field was not expected.")
            for k in body
            if k not in ("id", "resubscribe_blacklisted_contacts")
        ]
        if not isinstance(body.get("id"), str) or not body["id"].strip():
            violations.append(violation("id", "This value should not be blank."))
        resubscribe = body.get("resubscribe_blacklisted_contacts", False)
        if not isinstance(resubscribe, bool):
            violations.append(
                violation("resubscribe_blacklisted_contacts", "This value should be of type bool.")
            )
        if violations:
            raise invalid(violations)
        if body["id"] in self.imports:
            raise Problem(409, "Import already exists")
        made = Import(body["id"], resubscribe)
        self.imports[made.id] = made
        return made

    def find_import(self, import_id: str) -> Import:
        found = self.imports.get(import_id)
        if found is None:
            raise not_found("Import")
        return found

    def add_records(self, target: Import, records: Any) -> int:
        if not isinstance(records, list):
            raise Problem(400, "The body must be a JSON array of records")
        if not 1 <= len(records) <= MAX_IMPORT_RECORDS:
            raise invalid(
                [
                    violation(
                        "", f"This collection should contain 1 to {MAX_IMPORT_RECORDS} elements."
                    )
                ]
            )
        if target.status != "idle":
            raise Problem(409, f"Import is {target.status}; records can only be added while idle")
        target.records.extend(records)
        return len(target.records)

    def start_import(self, target: Import) -> None:
        if target.status != "idle":
            raise Problem(409, f"Import is already {target.status}")
        target.status, target.queued_at = "queued", self.clock()

    def advance_imports(self) -> None:
        """Apply every queued import whose delay has passed (done before each call)."""
        for pending in self.imports.values():
            if pending.status == "queued" and self.clock() >= pending.queued_at + self.import_delay:
                self._apply(pending)

    def _apply(self, pending: Import) -> None:
        if self.import_outcome == "failed":  # nothing applied ([I] a failed import is whole)
            pending.records, pending.status = [], "failed"
            pending.message = "Import failed: the file could not be processed"
            return
        for record in pending.records:
            outcome = self._import_one(record, pending.resubscribe)
            pending.report[f"total_{outcome}"] += 1
        pending.records = []
        pending.status = "completed"
        r = pending.report
        pending.message = (
            f"{r['total_added']} added, {r['total_updated']} updated, {r['total_ignored']} ignored"
        )

    def _import_one(self, record: Any, resubscribe: bool) -> str:
        """added | updated | ignored: invalid records and blacklisted addresses are ignored."""
        if not isinstance(record, dict):
            return "ignored"
        allowed = (
            "email",
            "first_name",
            "name",
            "language",
            "custom_fields",
            "sources",
            "interest_labels",
            "preferences",
        )
        try:
            values = contact_values(self, record, allowed, required=("email", "language"))
        except Problem:
            return "ignored"
        email = values["email"]
        if email in self.blacklist:
            if not resubscribe:
                return "ignored"
            del self.blacklist[email]
        found = self._by_email(email)
        if found is None:
            made = self._add(values, values.get("sources", []))
            self.emit("contact.created", made)
            return "added"
        for key in ("first_name", "name", "language"):
            if key in values:
                setattr(found, key, values[key])
        found.custom_fields.update(values.get("custom_fields", {}))
        found.sources += [s for s in values.get("sources", []) if s not in found.sources]
        self.emit("contact.updated", found)
        return "updated"


def _seed_values(email: str, first: str, last: str, language: str, custom: Row) -> Row:
    return {
        "email": email,
        "first_name": first,
        "name": last,
        "language": language,
        "custom_fields": custom,
    }


# -- validation ----------------------------------------------------------------------------------
def contact_values(
    state: FlexmailState, body: Row, allowed: tuple[str, ...], required: tuple[str, ...]
) -> Row:
    """The checked fields of a contact body, or a 422 listing every violation (FM-A11)."""
    violations = [violation(k, "This field was not expected.") for k in body if k not in allowed]
    violations += [
        violation(k, "This value should not be blank.") for k in required if body.get(k) is None
    ]
    checks: dict[str, Callable[[Any], str | None]] = {
        "email": _email_error,
        "language": lambda v: None if v in LANGUAGES else "The value is not a valid language.",
        "first_name": _string_error,
        "name": _string_error,
        "source": lambda v: None if _is_int(v) and v in SOURCES else "Source not found.",
        "sources": _sources_error,
        "interest_labels": _list_error,
        "preferences": _list_error,
    }
    values: Row = {}
    for key, check in checks.items():
        if key in allowed and key in body and body[key] is None and key not in required:
            # [I] null refused like a null custom field (FM-A6): leave a field out instead
            violations.append(violation(key, "This value should not be null."))
        if key in allowed and body.get(key) is not None:
            if message := check(body[key]):
                violations.append(violation(key, message))
            else:
                values[key] = body[key]
    if "custom_fields" in allowed and "custom_fields" in body:
        values["custom_fields"] = _custom_fields(state, body["custom_fields"], violations)
    if violations:
        raise invalid(violations)
    return values


def _email_error(value: Any) -> str | None:
    if not isinstance(value, str) or not _EMAIL.match(value):
        return "This value is not a valid email address."
    if value != value.lower():
        return "This value should be lowercase."  # FM-A3
    return None


def _sources_error(value: Any) -> str | None:
    ok = isinstance(value, list) and all(_is_int(s) and s in SOURCES for s in value)
    return None if ok else "Every source must be a known source id."


def _list_error(value: Any) -> str | None:
    """FM-A8's deprecated `interest_labels` and `preferences`: taken as lists, not applied."""
    return None if isinstance(value, list) else "This value should be of type array."


def _string_error(value: Any) -> str | None:
    return None if isinstance(value, str) else "This value should be of type string."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _custom_fields(state: FlexmailState, raw: Any, violations: list[Row]) -> Row:
    """FM-A6: keyed by placeholder; date YYYY-MM-DD, numeric a number, multiple_choice a list of
    strings, free_text a string. [I] null is refused (the opt-in endpoint is known to)."""
    if not isinstance(raw, dict):
        violations.append(violation("custom_fields", "This value should be of type object."))
        return {}
    checked: Row = {}
    for key, value in raw.items():
        spec = state.custom_fields.get(key)
        message = "Custom field not found." if spec is None else _typed_error(spec["type"], value)
        if message:
            violations.append(violation(f"custom_fields.{key}", message))
        else:
            checked[key] = value
    return checked


def _typed_error(kind: str, value: Any) -> str | None:
    if value is None:
        return "This value should not be null."
    if kind == "numeric":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "This value should be of type number."
    if kind == "date":
        if not isinstance(value, str) or not _DATE.match(value):
            return "This value is not a valid date (YYYY-MM-DD)."
        try:
            date.fromisoformat(value)
        except ValueError:
            return "This value is not a valid date (YYYY-MM-DD)."
        return None
    if kind == "multiple_choice":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return None if ok else "This value should be a list of strings."
    return _string_error(value)


# -- JSON ------------------------------------------------------------------------------------------
def contact_json(c: Contact) -> Row:
    return {
        "id": c.id,
        "email": c.email,
        "first_name": c.first_name,
        "name": c.name,
        "language": c.language,
        "custom_fields": dict(c.custom_fields),
        "_links": {
            "self": {"href": f"/contacts/{c.id}"},
            "sources": {"href": f"/contacts/{c.id}/sources"},
        },
    }


def import_json(i: Import) -> Row:
    return {
        "id": i.id,
        "status": i.status,
        "message": i.message,
        "report": dict(i.report),
        "_links": {"self": {"href": f"/contacts/imports/{i.id}"}},
    }


def linked(row: Row, href: str) -> Row:
    return row | {"_links": {"self": {"href": href}}}


def _iso(epoch: float, timespec: str = "seconds") -> str:
    """UTC ISO 8601 with `Z`."""
    moment = datetime.fromtimestamp(epoch, UTC).isoformat(timespec=timespec)
    return moment.replace("+00:00", "Z")


def _parse_since(raw: str | None) -> datetime:
    """FM-A12 `since`: ISO 8601; [I] a time without offset is UTC."""
    if not raw:
        raise Problem(400, "Query parameter since is required")
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise Problem(400, "Query parameter since must be an ISO 8601 date-time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- HTTP ------------------------------------------------------------------------------------------
Handler = Callable[[Request, Any], Response]


def paging(request: Request) -> tuple[int, int]:
    """`limit` 1..500 and a 0-based `offset` (section 2.4): not a number is 400, out of range
    422."""
    raw_limit = request.query_params.get("limit", str(DEFAULT_LIMIT))
    raw_offset = request.query_params.get("offset", "0")
    if not raw_limit.lstrip("-").isdigit() or not raw_offset.lstrip("-").isdigit():
        raise Problem(400, "limit and offset must be integers")
    limit, offset = int(raw_limit), int(raw_offset)
    violations = []
    if not 1 <= limit <= MAX_LIMIT:
        violations.append(violation("limit", f"This value should be between 1 and {MAX_LIMIT}."))
    if offset < 0:
        violations.append(violation("offset", "This value should be 0 or more."))
    if violations:
        raise invalid(violations)
    return limit, offset


def collection(request: Request, items: list[Row], paged: bool = True) -> Row:
    """FM-A1: `{total, _embedded: {item}, _links: {self}}`, `_embedded` only when not empty."""
    page = items
    links: Row = {"self": {"href": _href(request)}}
    if paged:
        limit, offset = paging(request)
        page = items[offset : offset + limit]
        if offset + limit < len(items):
            query = dict(request.query_params) | {"limit": limit, "offset": offset + limit}
            links["next"] = {"href": f"{_path(request)}?{urlencode(query)}"}
    body: Row = {"total": len(items)}
    if page:
        body["_embedded"] = {"item": page}
    return body | {"_links": links}


def _path(request: Request) -> str:
    return request.url.path.removeprefix(PREFIX) or "/"


def _href(request: Request) -> str:
    query = request.url.query
    return f"{_path(request)}?{query}" if query else _path(request)


def _accepts(request: Request) -> bool:
    """FM-A1: JSON or HAL JSON (or anything); an Accept of only other types is a 406."""
    header = request.headers.get("accept", "")
    if not header.strip():
        return True
    kinds = {part.split(";")[0].strip().lower() for part in header.split(",")}
    return bool(kinds & {*ACCEPTED_MEDIA, "application/problem+json", "application/*", "*/*"})


def hal(request: Request, body: Any, status: int = 200, headers: dict | None = None) -> Response:
    """The body as HAL JSON when the client asked for it (FM-A1), else as plain JSON."""
    asked = "hal+json" in request.headers.get("accept", "")
    kind = "application/hal+json" if asked else "application/json"
    return JSONResponse(body, status, headers, media_type=kind)


async def read_body(request: Request) -> Any:
    """The JSON body (None when empty); a body of another media type is 415, bad JSON 400."""
    raw = await request.body()
    if not raw.strip():
        return None
    if media_type(request) not in ACCEPTED_MEDIA:
        raise Problem(415, f"Content-Type must be one of {', '.join(ACCEPTED_MEDIA)}")
    try:
        return json.loads(raw)
    except ValueError as error:
        raise Problem(400, f"Syntax error: {error}") from None


def an_object(body: Any) -> Row:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise Problem(400, "The body must be a JSON object")
    return body


class Handlers:
    """The endpoints; each runs inside `endpoint` (auth, limits, negotiation, recording)."""

    def __init__(self, state: FlexmailState) -> None:
        self.state = state

    def endpoint(self, route: str, legacy: bool = False, **by_method: Handler) -> Route:
        async def answer(request: Request) -> Response:
            try:
                response = await self._answer(request, legacy, by_method)
            except Problem as problem:
                response = problem.response()
            self.state.record(f"{request.method} {route}")
            return response

        return Route(route, answer, methods=ALL)

    async def _answer(
        self, request: Request, legacy: bool, by_method: dict[str, Handler]
    ) -> Response:
        account = self._legacy_account(request) if legacy else self._account(request)
        self.state.admit(account)
        if not _accepts(request):
            raise Problem(406, "Accept must allow application/json or application/hal+json")
        if request.method not in by_method:
            raise Problem(405, f"Method {request.method} is not allowed here")
        body = await read_body(request)  # read before the lock: no await waits under it
        with self.state._lock:
            self.state.advance_imports()
            return by_method[request.method](request, body)

    def _account(self, request: Request) -> str:
        credentials = basic_credentials(request)
        if credentials != (FLEXMAIL_ACCOUNT_ID, FLEXMAIL_TOKEN):
            raise Problem(401, "Invalid credentials", headers={"WWW-Authenticate": "Basic"})
        return FLEXMAIL_ACCOUNT_ID

    def _legacy_account(self, request: Request) -> str:
        """FM-A12: the SOAP API's `userId` / `userToken` headers, with the legacy token."""
        pair = (request.headers.get("userid"), request.headers.get("usertoken"))
        if pair != (FLEXMAIL_ACCOUNT_ID, FLEXMAIL_LEGACY_TOKEN):
            raise Problem(401, "Invalid userId or userToken")
        return FLEXMAIL_ACCOUNT_ID

    # -- account and reference data ---------------------------------------------------------------
    def account(self, request: Request, body: Any) -> Response:
        user = {
            "id": int(FLEXMAIL_ACCOUNT_ID),
            "email": "els.wouters@boekhouding-wouters.be",
            "first_name": "Els",
            "name": "Wouters",
        }
        account = {"id": int(FLEXMAIL_ACCOUNT_ID), "name": "Boekhoudkantoor Wouters BV"}
        return hal(request, {"user": user, "account": account, "_links": {"self": {"href": "/"}}})

    def sources(self, request: Request, body: Any) -> Response:
        rows = [linked({"id": i, "name": n}, f"/sources/{i}") for i, n in SOURCES.items()]
        return hal(request, collection(request, rows))

    def languages(self, request: Request, body: Any) -> Response:
        return hal(request, {"languages": list(LANGUAGES)})

    def custom_fields(self, request: Request, body: Any) -> Response:
        rows = [
            linked(dict(f), f"/custom-fields/{f['id']}") for f in self.state.custom_fields.values()
        ]
        return hal(request, collection(request, rows, paged=False))

    def interests(self, request: Request, body: Any) -> Response:
        rows = [linked(dict(i), f"/interests/{i['id']}") for i in self.state.interests.values()]
        return hal(request, collection(request, rows))

    def segments(self, request: Request, body: Any) -> Response:
        row = {"id": 1, "name": "Alle contacten", "number_of_contacts": len(self.state.visible())}
        return hal(request, collection(request, [linked(row, "/segments/1")], paged=False))

    def opt_in_forms(self, request: Request, body: Any) -> Response:
        row = linked({"id": 1, "name": "Inschrijving nieuwsbrief"}, "/opt-in-forms/1")
        return hal(request, collection(request, [row], paged=False))

    # -- contacts ---------------------------------------------------------------------------------
    def list_contacts(self, request: Request, body: Any) -> Response:
        email = request.query_params.get("email")
        rows = [contact_json(c) for c in self.state.visible() if email is None or c.email == email]
        return hal(request, collection(request, rows))

    def create_contact(self, request: Request, body: Any) -> Response:
        made = self.state.create(an_object(body))
        location = {"Location": f"/contacts/{made.id}"}
        if self.state.create_empty_body:  # the setting: FM-A2's id only in the Location
            return Response(status_code=201, headers=location)
        return hal(request, {"id": made.id}, 201, location)

    def get_contact(self, request: Request, body: Any) -> Response:
        return hal(request, contact_json(self._contact(request)))

    def put_contact(self, request: Request, body: Any) -> Response:
        changed = self.state.change(self._contact(request), an_object(body), replace=True)
        return hal(request, contact_json(changed))

    def patch_contact(self, request: Request, body: Any) -> Response:
        changed = self.state.change(self._contact(request), an_object(body), replace=False)
        return hal(request, contact_json(changed))

    def delete_contact(self, request: Request, body: Any) -> Response:
        self.state.delete(self._contact(request))
        return Response(status_code=204)

    def unsubscribe(self, request: Request, body: Any) -> Response:
        self.state.api_unsubscribe(self._contact(request))
        return Response(status_code=204)

    def interest_subscriptions(self, request: Request, body: Any) -> Response:
        target = self._contact(request)
        base = f"/contacts/{target.id}/interest-subscriptions"
        if request.method == "POST":
            interest_id = self.state.subscribe_interest(target, an_object(body))
            row = linked({"interest_id": interest_id}, f"{base}/{interest_id}")
            return hal(request, row, 201, {"Location": f"{base}/{interest_id}"})
        rows = [
            linked({"interest_id": i, "name": self.state.interests[i]["name"]}, f"{base}/{i}")
            for i in target.interests
        ]
        return hal(request, collection(request, rows, paged=False))

    def interest_subscription(self, request: Request, body: Any) -> Response:
        target = self._contact(request)
        self.state.unsubscribe_interest(target, request.path_params["interest_id"])
        return Response(status_code=204)

    def contact_sources(self, request: Request, body: Any) -> Response:
        target = self._contact(request)
        rows = [linked({"id": s, "name": SOURCES[s]}, f"/sources/{s}") for s in target.sources]
        return hal(request, collection(request, rows, paged=False))

    def _contact(self, request: Request) -> Contact:
        return self.state.find(request.path_params["id"])

    # -- imports ----------------------------------------------------------------------------------
    def create_import(self, request: Request, body: Any) -> Response:
        made = self.state.create_import(an_object(body))
        href = f"/contacts/imports/{made.id}"
        return hal(request, import_json(made), 201, {"Location": href})

    def get_import(self, request: Request, body: Any) -> Response:
        return hal(request, import_json(self._import(request)))

    def patch_import(self, request: Request, body: Any) -> Response:
        """FM-A8: `{"status": "queued"}` starts it; nothing else may be changed ([I])."""
        found = self._import(request)
        if self.state.import_start == "post":
            raise Problem(405, "Method PATCH is not allowed here")
        body = an_object(body)
        if body != {"status": "queued"}:
            raise invalid([violation("status", 'Only {"status": "queued"} is accepted.')])
        self.state.start_import(found)
        return hal(request, import_json(found))

    def import_records(self, request: Request, body: Any) -> Response:
        total = self.state.add_records(self._import(request), body)
        return hal(request, {"records": total}, 201)

    def start_import(self, request: Request, body: Any) -> Response:
        if self.state.import_start == "patch":
            return self.unknown(request, body)
        found = self._import(request)
        self.state.start_import(found)
        return hal(request, import_json(found))

    def _import(self, request: Request) -> Import:
        return self.state.find_import(request.path_params["import_id"])

    # -- webhooks (section 3) ---------------------------------------------------------------------
    def webhook_events(self, request: Request, body: Any) -> Response:
        return hal(request, {"events": list(EVENTS)})

    def webhooks(self, request: Request, body: Any) -> Response:
        hooks = self.state.hooks
        if request.method == "POST":
            made = self._valid(lambda: hooks.create(an_object(body)))
            href = f"/webhooks/{made['id']}"
            return hal(request, linked(made, href), 201, {"Location": href})
        rows = [linked(dict(w), f"/webhooks/{w['id']}") for w in hooks.registrations.values()]
        return hal(request, collection(request, rows))

    def webhook(self, request: Request, body: Any) -> Response:
        hooks, raw = self.state.hooks, request.path_params["webhook_id"]
        webhook_id = int(raw) if raw.isdigit() else -1
        if webhook_id not in hooks.registrations:
            raise not_found("Webhook")
        if request.method == "DELETE":
            hooks.delete(webhook_id)
            return Response(status_code=204)
        if request.method == "PATCH":
            changed = self._valid(lambda: hooks.update(webhook_id, an_object(body)))
            return hal(request, linked(changed, f"/webhooks/{webhook_id}"))
        return hal(request, linked(hooks.get(webhook_id), f"/webhooks/{webhook_id}"))

    @staticmethod
    def _valid(change: Callable[[], Row]) -> Row:
        try:
            return change()
        except WebhookInvalid as error:
            raise invalid(error.violations) from None

    # -- legacy bounces (FM-A12) ------------------------------------------------------------------
    def legacy_bounces(self, request: Request, body: Any) -> Response:
        since = _parse_since(request.query_params.get("since"))
        rows = [
            dict(b)
            for b in self.state.bounces
            if datetime.fromisoformat(b["bounced_at"].replace("Z", "+00:00")) >= since
        ]
        return JSONResponse(rows)

    def unknown(self, request: Request, body: Any) -> Response:
        raise not_found(f"Route {request.method} {_path(request)}")


def routes(state: FlexmailState) -> list[BaseRoute]:
    """Everything under PREFIX; `/contacts/imports` comes before `/contacts/{id}`."""
    h = Handlers(state)
    e = h.endpoint
    unknown = dict.fromkeys(ALL, h.unknown)
    subscriptions = {"GET": h.interest_subscriptions, "POST": h.interest_subscriptions}
    return [
        Mount(
            PREFIX,
            routes=[
                e("/", GET=h.account),
                e("/sources", GET=h.sources),
                e("/account-contact-languages", GET=h.languages),
                e("/custom-fields", GET=h.custom_fields),
                e("/interests", GET=h.interests),
                e("/segments", GET=h.segments),
                e("/opt-in-forms", GET=h.opt_in_forms),
                e("/contacts", GET=h.list_contacts, POST=h.create_contact),
                e("/contacts/imports", POST=h.create_import),
                e("/contacts/imports/{import_id}", GET=h.get_import, PATCH=h.patch_import),
                e("/contacts/imports/{import_id}/records", POST=h.import_records),
                e("/contacts/imports/{import_id}/start", POST=h.start_import),
                e(
                    "/contacts/{id}",
                    GET=h.get_contact,
                    PUT=h.put_contact,
                    PATCH=h.patch_contact,
                    DELETE=h.delete_contact,
                ),
                e("/contacts/{id}/unsubscribe", POST=h.unsubscribe),
                e("/contacts/{id}/interest-subscriptions", **subscriptions),
                e(
                    "/contacts/{id}/interest-subscriptions/{interest_id}",
                    DELETE=h.interest_subscription,
                ),
                e("/contacts/{id}/sources", GET=h.contact_sources),
                e("/webhook-events", GET=h.webhook_events),
                e("/webhooks", GET=h.webhooks, POST=h.webhooks),
                e("/webhooks/{webhook_id}", GET=h.webhook, PATCH=h.webhook, DELETE=h.webhook),
                e("/legacy/bounces", legacy=True, GET=h.legacy_bounces),
                e("/{rest:path}", **unknown),
            ],
        )
    ]


# -- control routes (/_sandbox/flexmail) ---------------------------------------------------------
def control_routes(state: FlexmailState) -> list[BaseRoute]:
    """What a subscriber (or the account) does on Flexmail's side, for demos and tests in another
    process; each answers `{ok, contact_id}` or `{error}` with 400/404."""

    def action(change: Callable[[Row], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            body = await json_object(request)
            try:
                result = change(body)
            except KeyError as error:
                return JSONResponse({"error": f"not found: {error.args[0]}"}, 404)
            except (ValueError, TypeError) as error:
                return JSONResponse({"error": str(error)}, 400)
            except Problem as problem:
                return JSONResponse({"error": problem.detail, "status": problem.status}, 400)
            return JSONResponse({"ok": True} | (result or {}))

        return endpoint

    def email(body: Row) -> str:
        if not isinstance(body.get("email"), str):
            raise ValueError("email required")
        return body["email"]

    def made(contact: Contact) -> Row:
        return {"contact_id": contact.id}

    def redeliver(body: Row) -> Row:
        which = body.get("delivery_id", "last")
        times = int(body.get("times", 1))
        if times < 1:
            raise ValueError("times must be 1 or more")
        sent = state.redeliver(which if which == "last" else int(which), times)
        return {"deliveries": [d.id for d in sent]}

    def settings(body: Row) -> Row:
        """FM-A10's limits, the import delay and the open answers (`import_start`,
        `import_outcome`, `create_empty_body`), each only when sent; per_minute null is off."""
        state.set_variants(body)
        if "import_delay" in body:
            state.import_delay = float(body["import_delay"])
        if "per_minute" in body:
            state.set_per_minute(None if body["per_minute"] is None else int(body["per_minute"]))
        cap, used = body.get("monthly_cap"), body.get("monthly_used")
        state.set_monthly(None if cap is None else int(cap), None if used is None else int(used))
        return {}

    changes: dict[str, Callable[[Row], Any]] = {
        "/unsubscribe": lambda b: made(state.unsubscribe(email(b))),
        "/click": lambda b: made(
            state.click(
                email(b),
                b.get("campaign_id", 5102),
                b.get("campaign_name", "Nieuwsbrief"),
                b.get("link_url", "https://www.boekhouding-wouters.be/nieuws"),
            )
        ),
        "/bounce": lambda b: made(
            state.bounce(email(b), b.get("bounce_type", "hard"), b.get("campaign_id", 5102))
        ),
        "/contacts": lambda b: made(state.create_on_flexmail(b)),
        "/redeliver": redeliver,
        "/settings": settings,
        "/reset": lambda b: state.reset(monthly=bool(b.get("monthly", False))),
    }

    async def stats(request: Request) -> Response:
        return JSONResponse(state.stats())

    return [Route(path, action(change), methods=["POST"]) for path, change in changes.items()] + [
        Route("/stats", stats, methods=["GET"])
    ]


def build(data: SandboxData, rate_limits: bool) -> FlexmailState:
    """A target with its own seed: the generated source data does not reach Flexmail."""
    return FlexmailState(rate_limits)


EMULATOR = Emulator(
    name="flexmail",
    build=build,
    routes=routes,
    credentials={
        "MEMBERFLOW_FLEXMAIL_ACCOUNT_ID": FLEXMAIL_ACCOUNT_ID,
        "MEMBERFLOW_FLEXMAIL_TOKEN": FLEXMAIL_TOKEN,
        "MEMBERFLOW_FLEXMAIL_LEGACY_TOKEN": FLEXMAIL_LEGACY_TOKEN,
        "MEMBERFLOW_FLEXMAIL_WEBHOOK_TOKEN": FLEXMAIL_WEBHOOK_TOKEN,
    },
    summary=lambda state: state.counts(),
    control_routes=control_routes,
)
