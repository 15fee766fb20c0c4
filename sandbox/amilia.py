"""Amilia (SmartRec) API v3 emulator: auth exchange, org reads, webhook subscriptions (AM-A1..A14).

Written from Amilia's published v3 reference and the assumed contract, as strict as they allow:
`/authenticate` trades Basic user credentials (or an API key/secret pair) for a JWT that every
org call must carry as `Bearer`; every list is `{"Items", "Paging": {"TotalCount", "Next"}}`
with `Next` the full URL of the next page or `""`; errors are ASP.NET's `{"Message": …}`; each
token gets 10 requests per second and a `429` with `Retry-After` past that. Every request is
counted per endpoint in `request_counts`, keyed by method and the path after the org base with
ids as `{}` (`"GET registrations"`, `"GET persons/{}"`, `"authenticate GET"`), so tests can see
what a client spent.

Changes made "at Amilia" (a person created, an account archived, a registration cancelled) go
through the test API (`create_person`, `archive_account`, …), which also pushes the matching
webhook to every subscription with AM-A11's signature and AM-A13's retry schedule.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from sandbox import webhook_sender
from sandbox.amilia_data import (
    ORG_ID,
    AmiliaData,
    account_count,
    generate_amilia,
    iso,
    offset,
)
from sandbox.emulator import Emulator
from sandbox.generator import SandboxData
from sandbox.httputil import MessageError, basic_credentials, bearer_token, json_object
from sandbox.ratelimit import RateLimiter
from sandbox.webhook_sender import PushesWebhooks, WebhookSender

PREFIX = "/amilia"  # a client's host is `<sandbox>/amilia`; its org base `…/api/v3/en/org/<org>`
ORG_SLUG = "centre-sportif-demo"  # the store slug; the org number ORG_ID works too
AMILIA_USERNAME = "cyberimpact@centre-sportif-demo.qc.ca"
AMILIA_PASSWORD = "demo-amilia-password"
AMILIA_API_KEY = "demo-amilia-api-key"
AMILIA_API_SECRET = "demo-amilia-api-secret"
AMILIA_WEBHOOK_SECRET = "demo-amilia-webhook-secret"
TOKEN_LIFETIME = 365 * 86400.0  # AM-A1: one year
RATE_LIMIT = 10  # AM-A14: requests per second per token
DEFAULT_PER_PAGE = 200  # section 2.3
MAX_PER_PAGE = 2000  # AM-A4
DENIED = "Authorization has been denied for this request."  # AM-A1
# AM-A13: retries 1, 5 and 15 minutes after the failure before them, then hourly while the last
# retry still falls within 72 hours of the first attempt (21 min + 71 h); then Disabled.
RETRY_DELAYS = (60.0, 300.0, 900.0) + (3600.0,) * 71
RETRY_WINDOW = 72 * 3600.0
RETRY_DELAYS_ENV = "SANDBOX_AMILIA_RETRY_DELAYS"  # e.g. "0.05,0.05,0.05" for tests
SECRET_ENV = "AMILIA_WEBHOOK_SECRET"
CONTEXTS = ("Program", "Account", "Person", "Activity", "Registration", "Membership")
ACTIONS = ("Create", "Update", "Delete")
MEMBERSHIP_STATUSES = ("active", "inactive", "expired", "all")

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
Row = dict[str, Any]


class AmiliaError(MessageError):
    """A refused request: AM-A14 status and ASP.NET's `{"Message": …}` body."""

    message_key = "Message"


def _bad(message: str) -> AmiliaError:
    return AmiliaError(400, message)


def _not_found(message: str = "Not found") -> AmiliaError:
    return AmiliaError(404, message)  # AM-A6: `{"Message": "Not found"}`


@dataclass
class Delivery:
    """One webhook sent to one subscription, and what the receiver answered to each attempt."""

    subscription_id: int
    url: str
    body: bytes
    signature: str
    attempts: list[int | str] = field(default_factory=list)  # status codes or transport errors
    outcome: str = "pending"  # pending | delivered | failed (subscription disabled) | skipped

    @property
    def envelope(self) -> Row:
        return json.loads(self.body)


class AmiliaState(PushesWebhooks):
    """One Amilia org: its data, issued tokens, webhook subscriptions and deliveries; thread-safe.

    Settings tests change on a built state: `retry_delays` (seconds between delivery attempts,
    AM-A13 compressed), `webhook_secret` (AM-A11), `loopback_only`, `limiter.clock` (fake clock
    for the 10 req/s window) and `clock` (token expiry). Strictness switches, off by default:
    `archived_accounts_hidden` (GET /accounts/{id} of an archived account is a 404 unless
    `showArchived=true`, as on the list) and `webhook_contexts` (the Contexts a subscription
    may name; one left out is refused with 400, as a server without it would).
    """

    def __init__(self, data: AmiliaData, today: date, rate_limits: bool = True) -> None:
        self.today = today
        self.users = {AMILIA_USERNAME: AMILIA_PASSWORD, AMILIA_API_KEY: AMILIA_API_SECRET}
        self.webhook_secret = AMILIA_WEBHOOK_SECRET
        self.clock: Callable[[], float] = time.time
        # `sleep` (the sender's) is the test clock of AM-A13: every wait between attempts goes
        # through it, so a test can record the schedule without sleeping.
        self.webhooks = WebhookSender(RETRY_DELAYS, "amilia")
        self.limiter = RateLimiter(RATE_LIMIT if rate_limits else None, 1.0)
        self.tokens: dict[str, float] = {}  # jwt -> expiry (epoch seconds)
        self.programs = {p["Id"]: p for p in data.programs}
        self.activities = {a["Id"]: a for a in data.activities}
        self.occurrences = data.occurrences
        self.persons: dict[int, Row] = {p["Id"]: dict(p) for p in data.persons}
        self.accounts: dict[int, Row] = {a["Id"]: dict(a) for a in data.accounts}
        self.registrations: dict[int, Row] = {r["Number"]: dict(r) for r in data.registrations}
        self.memberships = {m["Id"]: m for m in data.memberships}
        self.account_memberships = [dict(m) for m in data.account_memberships]
        self.subscriptions: dict[int, Row] = {}
        self.archived_accounts_hidden = False
        self.webhook_contexts: tuple[str, ...] = CONTEXTS
        self.removed: dict[int, Row] = {}  # deleted persons, still named as an account's owner
        self.deliveries: list[Delivery] = []
        self.request_counts: Counter[str] = Counter()
        self._next = {
            "person": max(self.persons, default=300_000) + 1,
            "account": max(self.accounts, default=700_000) + 1,
            "registration": max(self.registrations, default=10_000) + 1,
            "subscription": 1,
        }
        self._lock = threading.RLock()

    # -- the test and demo API: reads ---------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Record counts for the sandbox summary."""
        with self._lock:
            return {
                "programs": len(self.programs),
                "activities": len(self.activities),
                "accounts": len(self.accounts),
                "persons": len(self.persons),
                "registrations": len(self.registrations),
                "account_memberships": len(self.account_memberships),
                "webhooks": len(self.subscriptions),
                "deliveries": len(self.deliveries),
            }

    def issue_token(self) -> str:
        """A valid JWT without HTTP (tests that do not exercise `/authenticate`)."""
        return self._issue()

    def expire_tokens(self) -> None:
        """Every issued token expires now (the client must re-authenticate on 401)."""
        with self._lock:
            self.tokens = dict.fromkeys(self.tokens, 0.0)

    # -- the test and demo API: changes at Amilia, each pushed as a webhook (AM-A9, A10) --------
    def create_person(self, account_id: int, first: str, last: str, **fields: Any) -> Row:
        """A person added to an account in the Amilia back office: `Person`/`Create`."""
        with self._lock:
            account = self.accounts.get(account_id)
            if account is None:
                raise KeyError(account_id)
            owner = self._owner(account)
            pid = self._take("person")
            person = {
                **{k: v for k, v in owner.items() if k.startswith("AccountOwner")},
                "Id": pid,
                "FirstName": first,
                "LastName": last,
                "FullName": f"{first} {last}",
                "Gender": "NotSpecified",
                "DateOfBirth": None,
                "Email": None,
                "Telephone": None,
                "TelephoneMobile": None,
                "TelephoneWork": None,
                "TelephoneWorkExtension": None,
                "IsChild": False,
                "OrganizationId": ORG_ID,
                "AccountId": account_id,
                "IsArchived": False,
                "Skills": [],
                "Contacts": [],
                "MedicalInformation": None,
                "PictureUrl": None,
                "ExternalId": None,
                "Address": dict(owner.get("Address") or {}),
                "JoinDate": self.today.isoformat(),
                **fields,
            }
            self.persons[pid] = person
            account["MemberIds"].append(pid)
        self._emit("Person", "Create", {**_summary(person), "AccountId": account_id})
        return dict(person)

    def delete_person(self, person_id: int) -> None:
        """A person deleted: gone from the API (404) and `Person`/`Delete` with only `Id`."""
        with self._lock:
            person = self.persons.pop(person_id)
            self.removed[person_id] = person
            self.accounts[person["AccountId"]]["MemberIds"].remove(person_id)
        self._emit("Person", "Delete", {"Id": person_id})

    def archive_account(self, account_id: int) -> None:
        """An account archived (AC3 "account deleted"): it and its persons become IsArchived."""
        with self._lock:
            account = self.accounts[account_id]
            account["IsArchived"] = True
            for pid in account["MemberIds"]:
                self.persons[pid]["IsArchived"] = True
        self._emit("Account", "Delete", {"Id": account_id})

    def register(self, person_id: int, activity_id: int, drop_in: bool = False) -> Row:
        """A new registration (now): `Registration`/`Create` with the full 2.1 object."""
        with self._lock:
            person = self.persons[person_id]
            activity = self.activities[activity_id]
            occurrence = None
            if drop_in or activity["IsDropIn"]:
                upcoming = [
                    o for o in self.occurrences.get(activity_id, []) if o["Date"] >= iso(_now())
                ]
                occurrence = upcoming[0] if upcoming else None
            row = {
                "Number": self._take("registration"),
                "Created": _now(),
                "PersonId": person_id,
                "AccountId": person["AccountId"],
                "ActivityId": activity_id,
                "DropIn": occurrence,
                "IsCancelled": False,
                "Group": activity["Groups"][0] if activity["Groups"] else None,
            }
            self.registrations[row["Number"]] = row
            body = self._registration(row)
        self._emit("Registration", "Create", body)
        return body

    def cancel_registration(self, registration_id: str) -> Row:
        """An unregistration (AC5): the registration is `IsCancelled`; `Registration`/`Update`."""
        with self._lock:
            row = self.registrations[_registration_number(registration_id)]
            row["IsCancelled"] = True
            body = self._registration(row)
        self._emit("Registration", "Update", body)
        return body

    def delete_registration(self, registration_id: str) -> None:
        """A registration removed: 404 afterwards; `Registration`/`Delete` with only `Id`."""
        with self._lock:
            del self.registrations[_registration_number(registration_id)]
        self._emit("Registration", "Delete", {"Id": registration_id})

    def cancel_activity(self, activity_id: int) -> None:
        """An activity cancelled for everyone (AC6): Status `Cancelled`, registrations kept."""
        with self._lock:
            activity = self.activities[activity_id]
            activity["Status"] = "Cancelled"
            body = _activity(activity)
        self._emit("Activity", "Update", body)

    def buy_membership(self, account_id: int, membership_id: int) -> Row:
        """A membership bought for an account's owner: `Membership`/`Create` (AM-A10)."""
        with self._lock:
            account = self.accounts[account_id]
            row = {
                "AccountId": account_id,
                "MembershipId": membership_id,
                "Name": self.memberships[membership_id]["Name"],
                "PersonId": account["OwnerId"],
                "PurchasedDate": iso(_now()),
                "EffectiveDate": self.today.isoformat(),
                "ExpirationDate": (self.today + timedelta(days=365)).isoformat(),
                "Status": "Active",
            }
            row["Id"] = max((m["Id"] for m in self.account_memberships), default=80_000) + 1
            self.account_memberships.append(row)
            body = _membership_payload(row)
        self._emit("Membership", "Create", body)
        return body

    def end_membership(self, purchase_id: int, delete: bool = False) -> None:
        """A membership made Inactive (`Membership`/`Update`) or removed (`Delete`, only `Id`)."""
        with self._lock:
            row = next(m for m in self.account_memberships if m["Id"] == purchase_id)
            if delete:
                self.account_memberships.remove(row)
            else:
                row["Status"] = "Inactive"
        if delete:
            self._emit("Membership", "Delete", {"Id": purchase_id})
        else:
            self._emit("Membership", "Update", _membership_payload(row))

    def update_person(self, person_id: int, **fields: Any) -> Row:
        """A person edited in the back office: `Person`/`Update` with the summary."""
        with self._lock:
            person = self.persons[person_id]
            person.update(fields)
            person["FullName"] = f"{person['FirstName']} {person['LastName']}"
            body = {**_summary(person), "AccountId": person["AccountId"]}
        self._emit("Person", "Update", body)
        return body

    def _take(self, kind: str) -> int:
        value = self._next[kind]
        self._next[kind] = value + 1
        return value

    # -- routes -------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        """One Mount under PREFIX: the auth exchange, then the org API under its base."""
        org = self._org_endpoint
        return [
            Mount(
                PREFIX,
                routes=[
                    # AM-A1: the doc spells it `V3`; [I] the lower-case spelling works too.
                    Route("/api/V3/authenticate", self._authenticate, methods=_ALL),
                    Route("/api/v3/authenticate", self._authenticate, methods=_ALL),
                    Mount(
                        "/api/v3/{language}/org/{org}",
                        routes=[
                            Route("/registrations", org(self._registrations), methods=_ALL),
                            Route(
                                "/registrations/{rid}", org(self._registration_one), methods=_ALL
                            ),
                            Route("/persons", org(self._persons), methods=_ALL),
                            Route(
                                "/persons/external/{xid}", org(self._person_external), methods=_ALL
                            ),
                            Route("/persons/{pid:int}", org(self._person), methods=_ALL),
                            Route(
                                "/persons/{pid:int}/registrations",
                                org(self._person_regs),
                                methods=_ALL,
                            ),
                            Route("/accounts", org(self._accounts), methods=_ALL),
                            Route("/accounts/{aid:int}", org(self._account), methods=_ALL),
                            Route(
                                "/accounts/{aid:int}/contacts", org(self._contacts), methods=_ALL
                            ),
                            Route("/memberships", org(self._memberships), methods=_ALL),
                            Route(
                                "/memberships/{mid:int}/accounts",
                                org(self._membership_accounts),
                                methods=_ALL,
                            ),
                            Route("/programs", org(self._programs), methods=_ALL),
                            Route("/programs/{pid:int}", org(self._program), methods=_ALL),
                            Route(
                                "/programs/{pid:int}/activities",
                                org(self._program_activities),
                                methods=_ALL,
                            ),
                            Route("/activities/{aid:int}", org(self._activity), methods=_ALL),
                            Route(
                                "/activities/{aid:int}/persons",
                                org(self._activity_persons),
                                methods=_ALL,
                            ),
                            Route(
                                "/activities/{aid:int}/occurrences",
                                org(self._occurrences),
                                methods=_ALL,
                            ),
                            Route("/webhooks", org(self._webhooks, "GET", "POST"), methods=_ALL),
                            Route(
                                "/webhooks/{wid}", org(self._webhook, "GET", "DELETE"), methods=_ALL
                            ),
                            Route("/{path:path}", _unknown, methods=_ALL),
                        ],
                    ),
                    Route("/{path:path}", _unknown, methods=_ALL),
                ],
            )
        ]

    # -- auth and limits (AM-A1, A2, A14) -----------------------------------------------------
    async def _authenticate(self, request: Request) -> Response:
        """Basic user:password or key:secret → `{"Token": jwt}`; GET per the doc, POST too."""
        self._count(f"authenticate {request.method}")
        if request.method not in ("GET", "POST"):
            return AmiliaError(405, _method_message(request.method)).response()
        pair = basic_credentials(request)
        if pair is None:
            return AmiliaError(401, DENIED).response()
        user, password = pair
        expected = self.users.get(user)
        if expected is None or not secrets.compare_digest(password.encode(), expected.encode()):
            return AmiliaError(401, DENIED).response()
        return JSONResponse({"Token": self._issue()})

    def _issue(self) -> str:
        """A JWT-shaped opaque token (header.payload.signature), valid one year."""
        now = self.clock()
        payload = {"iss": "amilia", "org": ORG_ID, "iat": int(now), "jti": secrets.token_hex(8)}
        parts = [_b64({"alg": "HS256", "typ": "JWT"}), _b64(payload)]
        parts.append(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="))
        token = ".".join(parts)
        with self._lock:
            self.tokens[token] = now + TOKEN_LIFETIME
        return token

    def _admit(self, request: Request) -> str:
        """Bearer token, then org and language, then the 10 req/s window."""
        token = bearer_token(request)
        with self._lock:
            expiry = self.tokens.get(token or "")
        if token is None or expiry is None or expiry <= self.clock():
            raise AmiliaError(401, DENIED)
        org = request.path_params["org"]
        if org not in (str(ORG_ID), ORG_SLUG):  # [I] the token's person is no admin there
            raise AmiliaError(403, f"You do not have access to organization '{org}'.")
        if request.path_params["language"] not in ("en", "fr"):
            raise _not_found("No HTTP resource was found that matches the request URI.")
        decision = self.limiter.hit(token)  # [I] per token; `/authenticate` is not counted
        if not decision.allowed:
            headers = {"Retry-After": decision.retry_after_header}
            raise AmiliaError(429, "Too many requests", headers)  # AM-A14
        return token

    def _org_endpoint(
        self, handler: OrgHandler, *methods: str
    ) -> Callable[[Request], Awaitable[Response]]:
        """An org-base endpoint: admit, count by route template, dispatch, shape errors."""
        allowed = methods or ("GET",)

        async def endpoint(request: Request) -> Response:
            try:
                self._admit(request)
                template = _template(request)
                self._count(f"{request.method} {template}")
                if request.method not in allowed:
                    raise AmiliaError(405, _method_message(request.method))
                body = await _body(request) if request.method == "POST" else {}
                status, answer = handler(request, body)
                return JSONResponse(answer, status)
            except AmiliaError as error:
                return error.response()

        return endpoint

    def _count(self, key: str) -> None:
        with self._lock:
            self.request_counts[key] += 1

    # -- registrations (AM-A5) ----------------------------------------------------------------
    def _registrations(self, request: Request, body: Row) -> tuple[int, Any]:
        params = request.query_params
        show_ended = _flag(params, "showEnded")
        start, end = _date(params, "from"), _date(params, "to")
        with self._lock:
            rows = []
            for number in sorted(self.registrations):
                row = self.registrations[number]
                day = row["Created"].date()
                if (start and day < start) or (end and day > end):
                    continue
                if not show_ended and self._ended(row):
                    continue
                rows.append({**self._registration(row), "AccountId": row["AccountId"]})
        return 200, _page(request, rows)

    def _ended(self, row: Row) -> bool:
        """[I] A registration has ended when its activity's EndDate is past."""
        end = self.activities[row["ActivityId"]]["EndDate"][:10]
        return end < self.today.isoformat()

    def _registration_one(self, request: Request, body: Row) -> tuple[int, Any]:
        rid = request.path_params["rid"]
        with self._lock:
            row = self.registrations.get(_registration_number(rid, strict=False) or -1)
            if row is None:
                raise _not_found()
            return 200, self._registration(row)

    def _registration(self, row: Row) -> Row:
        """The 2.1 registration object (webhook payload and `GET /registrations/{id}`)."""
        activity = self.activities[row["ActivityId"]]
        person = self.persons.get(row["PersonId"]) or {"Id": row["PersonId"]}
        owner = self.persons.get(person.get("AccountOwnerId", -1), {})
        drop_in = row["DropIn"]
        return {
            "RegistrationId": f"AC-{row['Number']}",
            "Program": {"Id": activity["ProgramId"], "Name": activity["ProgramName"]},
            "Category": {"Id": activity["CategoryId"], "Name": activity["CategoryName"]},
            "SubCategory": {"Id": activity["SubCategoryId"], "Name": activity["SubCategoryName"]},
            "Activity": {"Id": activity["Id"], "Name": activity["Name"]},
            "Group": dict(row["Group"]) if row["Group"] else None,
            "DropIn": {"OccurrenceId": drop_in["Id"], "OccurrenceDate": drop_in["Date"]}
            if drop_in
            else None,
            "DateCreated": iso(row["Created"]),
            "Person": _summary(person),
            # [I] the owner summary's keys; the doc names only the object
            "AccountOwner": {
                k: owner.get(k) for k in ("Id", "FirstName", "LastName", "FullName", "Email")
            },
            "Staff": None,
            "IsCancelled": row["IsCancelled"],
        }

    def _person_row(self, row: Row) -> Row:
        """The flat person-registration row (section 2.1, `/persons/{id}/registrations`)."""
        activity = self.activities[row["ActivityId"]]
        group = row["Group"] or {}
        return {
            "Id": f"AC-{row['Number']}",
            "PersonId": row["PersonId"],
            "ProgramId": activity["ProgramId"],
            "ProgramName": activity["ProgramName"],
            "CategoryId": activity["CategoryId"],
            "CategoryName": activity["CategoryName"],
            "SubCategoryId": activity["SubCategoryId"],
            "SubCategoryName": activity["SubCategoryName"],
            "ActivityId": activity["Id"],
            "ActivityName": activity["Name"],
            "GroupId": group.get("Id"),
            "GroupName": group.get("Name"),
            "DateCreated": iso(row["Created"]),
            "DropInOccurrenceId": row["DropIn"]["Id"] if row["DropIn"] else None,
            "IsCancelled": row["IsCancelled"],
        }

    # -- persons (AM-A6, A7) ------------------------------------------------------------------
    def _persons(self, request: Request, body: Row) -> tuple[int, Any]:
        """[I] query params are unknown; `showArchived` (default false) as on `/accounts`."""
        show_archived = _flag(request.query_params, "showArchived")
        show_skills = _flag(request.query_params, "showSkills")
        with self._lock:
            rows = [
                _detail(p, show_skills)
                for _, p in sorted(self.persons.items())
                if show_archived or not p["IsArchived"]
            ]
        return 200, _page(request, rows)

    def _person(self, request: Request, body: Row) -> tuple[int, Any]:
        with self._lock:
            person = self.persons.get(request.path_params["pid"])
            if person is None:
                raise _not_found()
            return 200, _detail(person, _flag(request.query_params, "showSkills"))

    def _person_external(self, request: Request, body: Row) -> tuple[int, Any]:
        xid = request.path_params["xid"]
        with self._lock:
            found = [p for p in self.persons.values() if p.get("ExternalId") == xid]
            if not found:
                raise _not_found()
            return 200, _detail(found[0], True)

    def _person_regs(self, request: Request, body: Row) -> tuple[int, Any]:
        pid = request.path_params["pid"]
        show_ended = _flag(request.query_params, "showEnded")
        with self._lock:
            if pid not in self.persons:
                raise _not_found()
            rows = [
                self._person_row(r)
                for _, r in sorted(self.registrations.items())
                if r["PersonId"] == pid and (show_ended or not self._ended(r))
            ]
        return 200, _page(request, rows)

    # -- accounts and memberships (AM-A8) -----------------------------------------------------
    def _owner(self, account: Row) -> Row:
        """[I] A deleted owner still names the account (Amilia keeps one owner per account)."""
        found = self.persons.get(account["OwnerId"]) or self.removed.get(account["OwnerId"])
        return found or {}

    def _account_object(self, account: Row) -> Row:
        owner = self._owner(account)
        return {
            "Id": account["Id"],
            "Owners": [
                {
                    "Id": account["OwnerId"],
                    "FirstName": owner.get("FirstName"),
                    "LastName": owner.get("LastName"),
                    "AccountOwnerFullName": owner.get("FullName"),
                    "Email": owner.get("Email"),
                    "TelephoneMobile": owner.get("TelephoneMobile"),
                }
            ],
            "Members": [
                _summary(self.persons[p]) for p in account["MemberIds"] if p in self.persons
            ],
            "Corporate": account["Corporate"],
            "IsArchived": account["IsArchived"],
            "AccountMemberships": [
                _public_membership(m)
                for m in self.account_memberships
                if m["AccountId"] == account["Id"]
            ],
        }

    def _accounts(self, request: Request, body: Row) -> tuple[int, Any]:
        params = request.query_params
        email = params.get("accountOwnerEmail")
        show_archived = _flag(params, "showArchived")
        with self._lock:
            rows = []
            for _, account in sorted(self.accounts.items()):
                if account["IsArchived"] and not show_archived:
                    continue
                owner_email = self._owner(account).get("Email") or ""
                if email and owner_email.lower() != email.strip().lower():
                    continue
                rows.append(self._account_object(account))
        return 200, _page(request, rows)

    def _account(self, request: Request, body: Row) -> tuple[int, Any]:
        with self._lock:
            account = self.accounts.get(request.path_params["aid"])
            hidden = (
                account is not None
                and account["IsArchived"]
                and self.archived_accounts_hidden
                and not _flag(request.query_params, "showArchived")
            )
            if account is None or hidden:
                raise _not_found()
            return 200, self._account_object(account)

    def _contacts(self, request: Request, body: Row) -> tuple[int, Any]:
        """AM-A4: Items/Paging here too (some doc samples show a bare array)."""
        with self._lock:
            account = self.accounts.get(request.path_params["aid"])
            if account is None:
                raise _not_found()
            rows = [
                dict(c)
                for p in account["MemberIds"]
                if p in self.persons
                for c in self.persons[p]["Contacts"]
            ]
        return 200, _page(request, rows)

    def _memberships(self, request: Request, body: Row) -> tuple[int, Any]:
        with self._lock:
            rows = [dict(m) for _, m in sorted(self.memberships.items())]
        return 200, _page(request, rows)

    def _membership_accounts(self, request: Request, body: Row) -> tuple[int, Any]:
        mid = request.path_params["mid"]
        status = request.query_params.get("status", "Active").lower()
        if status not in MEMBERSHIP_STATUSES:
            raise _bad(f"The value '{request.query_params['status']}' is not valid for status.")
        start, end = _date(request.query_params, "from"), _date(request.query_params, "to")
        with self._lock:
            if mid not in self.memberships:
                raise _not_found()
            ids = set()
            for m in self.account_memberships:
                if m["MembershipId"] != mid or (status != "all" and m["Status"].lower() != status):
                    continue
                purchased = m["PurchasedDate"][:10]
                if (start and purchased < start.isoformat()) or (
                    end and purchased > end.isoformat()
                ):  # [I] from/to filter on the purchase date
                    continue
                ids.add(m["AccountId"])
            rows = [self._account_object(self.accounts[a]) for a in sorted(ids)]
        return 200, _page(request, rows)

    # -- programs and activities (section 2.1) ------------------------------------------------
    def _programs(self, request: Request, body: Row) -> tuple[int, Any]:
        show_archived = _flag(request.query_params, "showArchived")
        with self._lock:
            rows = [
                dict(p)
                for _, p in sorted(self.programs.items())
                if show_archived or not p["IsArchived"]
            ]
        return 200, _page(request, rows)

    def _program(self, request: Request, body: Row) -> tuple[int, Any]:
        program = self.programs.get(request.path_params["pid"])
        if program is None:
            raise _not_found()
        return 200, dict(program)

    def _program_activities(self, request: Request, body: Row) -> tuple[int, Any]:
        pid = request.path_params["pid"]
        show_cancelled = _flag(request.query_params, "showCancelled")  # [I] default false
        if pid not in self.programs:
            raise _not_found()
        with self._lock:
            rows = [
                _activity(a)
                for _, a in sorted(self.activities.items())
                if a["ProgramId"] == pid and (show_cancelled or a["Status"] != "Cancelled")
            ]
        return 200, _page(request, rows)

    def _activity(self, request: Request, body: Row) -> tuple[int, Any]:
        with self._lock:
            activity = self.activities.get(request.path_params["aid"])
            if activity is None:
                raise _not_found()
            return 200, _activity(activity)

    def _activity_persons(self, request: Request, body: Row) -> tuple[int, Any]:
        aid = request.path_params["aid"]
        show_cancelled = _flag(request.query_params, "showCancelledRegistrations")
        with self._lock:
            if aid not in self.activities:
                raise _not_found()
            seen: dict[int, Row] = {}
            for _, r in sorted(self.registrations.items()):
                if r["ActivityId"] != aid or (r["IsCancelled"] and not show_cancelled):
                    continue
                if r["PersonId"] in self.persons:
                    seen.setdefault(r["PersonId"], _summary(self.persons[r["PersonId"]]))
        return 200, _page(request, list(seen.values()))

    def _occurrences(self, request: Request, body: Row) -> tuple[int, Any]:
        aid = request.path_params["aid"]
        start, end = _date(request.query_params, "from"), _date(request.query_params, "to")
        if aid not in self.activities:
            raise _not_found()
        rows = [
            dict(o)
            for o in self.occurrences.get(aid, [])
            if (not start or o["Date"][:10] >= start.isoformat())
            and (not end or o["Date"][:10] <= end.isoformat())
        ]
        return 200, _page(request, rows)

    # -- webhook subscriptions (AM-A12) -------------------------------------------------------
    def _webhooks(self, request: Request, body: Row) -> tuple[int, Any]:
        if request.method == "GET":
            with self._lock:
                rows = [_subscription(s) for _, s in sorted(self.subscriptions.items())]
            return 200, _page(request, rows)
        subscription = _subscription_fields(body, self.webhook_contexts)
        with self._lock:
            subscription["Id"] = self._take("subscription")
            self.subscriptions[subscription["Id"]] = subscription
        return 200, {"Id": subscription["Id"]}

    def _webhook(self, request: Request, body: Row) -> tuple[int, Any]:
        raw = request.path_params["wid"]
        with self._lock:
            subscription = self.subscriptions.get(int(raw)) if raw.isdigit() else None
            if subscription is None:
                raise _not_found()
            if request.method == "DELETE":
                del self.subscriptions[subscription["Id"]]
                return 200, {"Id": subscription["Id"]}  # [I] the body of a delete is unknown
            return 200, _subscription(subscription)

    # -- webhook delivery (AM-A11, A13) -------------------------------------------------------
    def _emit(self, context: str, action: str, payload: Row) -> None:
        """Send one envelope to every active subscription for (context, action).

        [I] The envelope's `Name` is the subscription's name (the doc lists the key only)."""
        moment = iso(_now())
        with self._lock:
            for sub in self.subscriptions.values():
                if (sub["Context"], sub["Action"], sub["Status"]) != (context, action, "Active"):
                    continue
                envelope = {
                    "OrganizationId": ORG_ID,
                    "Context": context,
                    "Action": action,
                    "Name": sub["Name"],
                    "EventTime": moment,
                    "Payload": payload,
                }
                raw = json.dumps(envelope, ensure_ascii=False).encode()
                delivery = Delivery(sub["Id"], sub["Url"], raw, self.sign(raw))
                self.deliveries.append(delivery)
                self._send(delivery)

    def sign(self, raw: bytes) -> str:
        """AM-A11: base64(HMAC-SHA256(secret, raw body)), 44 characters."""
        digest = hmac.new(self.webhook_secret.encode(), raw, hashlib.sha256).digest()
        return base64.b64encode(digest).decode()

    def _send(self, delivery: Delivery) -> None:
        """POST until a 200 (Amilia "expects a quick 200"); after the last retry the
        subscription is Disabled (AM-A13)."""
        headers = {"Content-Type": "application/json", "X-Amilia-Signature": delivery.signature}

        def disable() -> None:
            with self._lock:
                sub = self.subscriptions.get(delivery.subscription_id)
                if sub is not None:
                    sub["Status"] = "Disabled"

        self.webhooks.start(
            delivery,
            lambda http: http.post(delivery.url, content=delivery.body, headers=headers),
            accepted=lambda status: status == 200,
            gave_up=disable,
        )


def _now() -> datetime:
    """The org's local wall-clock time (naive), as the generated data keeps it."""
    utc = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    return utc + offset(utc.date()).utcoffset(None)


OrgHandler = Callable[[Request, Row], tuple[int, Any]]
_ALL = ["GET", "POST", "PUT", "DELETE", "PATCH"]


async def _unknown(request: Request) -> Response:
    return _not_found("No HTTP resource was found that matches the request URI.").response()


def _method_message(method: str) -> str:
    return f"The requested resource does not support http method '{method}'."  # ASP.NET


def _template(request: Request) -> str:
    """The path after the org base with ids replaced by `{}`, e.g. `persons/{}/registrations`."""
    tail = request.url.path.split("/org/", 1)[1].split("/", 1)[1]
    return "/".join("{}" if re.fullmatch(r"[0-9]+|AC-[0-9]+", p) else p for p in tail.split("/"))


async def _body(request: Request) -> Row:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        raise _bad("The request is invalid.") from None
    if not isinstance(body, dict):
        raise _bad("The request is invalid.")
    return body


def _b64(value: Row) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _flag(params: Mapping[str, str], name: str) -> bool:
    """An ASP.NET bool: `true`/`false` in any case; anything else is a 400."""
    value = params.get(name)
    if value is None:
        return False
    if value.lower() not in ("true", "false"):
        raise _bad(f"The value '{value}' is not valid for {name}.")
    return value.lower() == "true"


def _date(params: Mapping[str, str], name: str) -> date | None:
    """`from`/`to` as `YYYY-MM-DD` (section 2.3), both inclusive."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if not _DATE.match(value):
        raise _bad(f"The value '{value}' is not valid for {name}.")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _bad(f"The value '{value}' is not valid for {name}.") from None


def _int_param(params: Mapping[str, str], name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if not re.fullmatch(r"\d+", value):
        raise _bad(f"The value '{value}' is not valid for {name}.")
    return int(value)


def _page(request: Request, rows: list[Row]) -> Row:
    """AM-A4: `page` from 1, `perPage` 1..2000 (default 200); `Next` the full next URL or ""."""
    page = _int_param(request.query_params, "page", 1)
    per_page = _int_param(request.query_params, "perPage", DEFAULT_PER_PAGE)
    if page < 1:
        raise _bad("page must be greater than or equal to 1.")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise _bad(f"perPage must be between 1 and {MAX_PER_PAGE}.")
    start = (page - 1) * per_page
    items = rows[start : start + per_page]
    more = start + per_page < len(rows)
    following = str(request.url.include_query_params(page=page + 1)) if more else ""
    return {"Items": items, "Paging": {"TotalCount": len(rows), "Next": following}}


def _summary(person: Row) -> Row:
    """The person summary carried by registrations, accounts and Person webhooks."""
    keys = ("Id", "FirstName", "LastName", "FullName", "DateOfBirth", "Email", "IsChild")
    return {k: person.get(k) for k in keys}


_DETAIL_KEYS = (
    "Id",
    "FirstName",
    "LastName",
    "FullName",
    "Gender",
    "DateOfBirth",
    "Email",
    "Telephone",
    "TelephoneMobile",
    "TelephoneWork",
    "TelephoneWorkExtension",
    "IsChild",
    "Address",
    "OrganizationId",
    "AccountId",
    "AccountOwnerId",
    "AccountOwnerFirstName",
    "AccountOwnerLastName",
    "AccountOwnerFullName",
    "AccountOwnerEmail",
    "AccountOwnerTelephoneMobile",
    "IsArchived",
    "Contacts",
    "JoinDate",
    "PictureUrl",
    "MedicalInformation",
    "ExternalId",
)


def _detail(person: Row, show_skills: bool) -> Row:
    """AM-A6: the person-detail object; `Skills` only with `showSkills=true` ([I] else null)."""
    row = {k: person.get(k) for k in _DETAIL_KEYS}
    row["Address"] = dict(person["Address"]) if person.get("Address") else None
    row["Contacts"] = [dict(c) for c in person.get("Contacts") or []]
    row["Skills"] = [dict(s) for s in person.get("Skills") or []] if show_skills else None
    row["Registrations"] = None  # [I] filled by no endpoint here; see /persons/{id}/registrations
    return row


def _activity(activity: Row) -> Row:
    return {k: (list(v) if isinstance(v, list) else v) for k, v in activity.items()}


def _public_membership(row: Row) -> Row:
    keys = (
        "MembershipId",
        "Name",
        "PersonId",
        "PurchasedDate",
        "EffectiveDate",
        "ExpirationDate",
        "Status",
    )
    return {k: row[k] for k in keys}


def _membership_payload(row: Row) -> Row:
    """AM-A10: `{Id, AccountId, PersonId, MembershipId, Name, PurchasedDate, EffectiveDate,
    ExpirationDate}`."""
    keys = (
        "Id",
        "AccountId",
        "PersonId",
        "MembershipId",
        "Name",
        "PurchasedDate",
        "EffectiveDate",
        "ExpirationDate",
    )
    return {k: row[k] for k in keys}


def _registration_number(rid: str, strict: bool = True) -> int | None:
    match = re.fullmatch(r"AC-(\d+)", rid)
    if match is None:
        if strict:
            raise KeyError(rid)
        return None
    return int(match.group(1))


def _subscription_fields(body: Row, contexts: tuple[str, ...] = CONTEXTS) -> Row:
    """AM-A12: `{Context, Action, Name, Version: "V1", Url}`, every field required."""
    for name in ("Context", "Action", "Name", "Version", "Url"):
        if not isinstance(body.get(name), str) or not body[name].strip():
            raise _bad(f"The {name} field is required.")
    if body["Context"] not in contexts:
        raise _bad(f"The value '{body['Context']}' is not valid for Context.")
    if body["Action"] not in ACTIONS:
        raise _bad(f"The value '{body['Action']}' is not valid for Action.")
    if body["Version"] != "V1":
        raise _bad(f"The value '{body['Version']}' is not valid for Version.")
    parts = urlsplit(body["Url"])
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad(f"The value '{body['Url']}' is not valid for Url.")
    return {k: body[k] for k in ("Context", "Action", "Name", "Url")} | {"Status": "Active"}


def _subscription(sub: Row) -> Row:
    return {k: sub[k] for k in ("Id", "Context", "Action", "Name", "Url", "Status")}


def build(data: SandboxData, rate_limits: bool) -> AmiliaState:
    """The Amilia org of a sandbox, sized to its generated customers; webhook settings from the
    environment (`configure_webhooks`)."""
    count = account_count(len(data.flexpos_customers))
    state = AmiliaState(generate_amilia(data.seed, count, data.today), data.today, rate_limits)
    configure_webhooks(state, os.environ)
    return state


def configure_webhooks(state: AmiliaState, env: Mapping[str, str]) -> None:
    """Apply SECRET_ENV and RETRY_DELAYS_ENV (seconds, comma-separated) from `env`, when set."""
    secret = webhook_sender.configure(state.webhooks, env, RETRY_DELAYS_ENV, SECRET_ENV)
    if secret:
        state.webhook_secret = secret


def seeded_state(
    seed: int = 42, accounts: int = 40, today: date | None = None, rate_limits: bool = True
) -> AmiliaState:
    """A standalone state (no sandbox): for unit tests of the emulator alone."""
    today = today or date.today()
    return AmiliaState(generate_amilia(seed, accounts, today), today, rate_limits)


def control_routes(state: AmiliaState) -> list[BaseRoute]:
    """Changes made at Amilia, for a demo or a test in another process, under `/_sandbox/amilia`;
    each pushes its webhook. Bodies are JSON objects; an unknown id answers 404."""

    def action(change: Callable[[Request, Row], Any]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                result = change(request, await json_object(request))
            except (KeyError, StopIteration, ValueError) as error:
                return JSONResponse({"Message": f"Not found: {error}"}, 404)
            return JSONResponse(result if result is not None else {"ok": True})

        return endpoint

    def num(request: Request, name: str = "id") -> int:
        return int(request.path_params[name])

    changes: dict[str, Callable[[Request, Row], Any]] = {
        "/persons": lambda r, b: state.create_person(
            int(b.pop("AccountId")), b.pop("FirstName"), b.pop("LastName"), **b
        ),
        "/persons/{id}/update": lambda r, b: state.update_person(num(r), **b),
        "/persons/{id}/delete": lambda r, b: state.delete_person(num(r)),
        "/accounts/{id}/archive": lambda r, b: state.archive_account(num(r)),
        "/registrations": lambda r, b: state.register(
            int(b["PersonId"]), int(b["ActivityId"]), bool(b.get("DropIn", False))
        ),
        "/registrations/{id}/cancel": lambda r, b: state.cancel_registration(r.path_params["id"]),
        "/registrations/{id}/delete": lambda r, b: state.delete_registration(r.path_params["id"]),
        "/activities/{id}/cancel": lambda r, b: state.cancel_activity(num(r)),
        "/memberships": lambda r, b: state.buy_membership(
            int(b["AccountId"]), int(b["MembershipId"])
        ),
        "/memberships/{id}/end": lambda r, b: state.end_membership(num(r)),
        "/memberships/{id}/delete": lambda r, b: state.end_membership(num(r), delete=True),
    }
    return [Route(path, action(change), methods=["POST"]) for path, change in changes.items()]


EMULATOR = Emulator(
    name="amilia",
    build=build,
    routes=lambda state: state.routes(),
    credentials={
        "AMILIA_USERNAME": AMILIA_USERNAME,
        "AMILIA_PASSWORD": AMILIA_PASSWORD,
        "AMILIA_API_KEY": AMILIA_API_KEY,
        "AMILIA_API_SECRET": AMILIA_API_SECRET,
        "AMILIA_ORG": ORG_SLUG,
        "AMILIA_WEBHOOK_SECRET": AMILIA_WEBHOOK_SECRET,
    },
    summary=lambda state: state.counts(),
    control_routes=control_routes,
)
