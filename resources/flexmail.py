"""Flexmail target client (REST API, two-way): contacts by email, interests as groups, a bulk
import for large first syncs, feedback by webhooks and legacy bounces, and a monthly call budget
(FM-A1..FM-A13).

- FM-A1/§1: HTTP Basic with the account id (a leading `D-` stripped, as FM-formie does) and a
  personal access token; HAL collections, `_embedded` left out when empty.
- FM-A2/FM-A3: `POST /contacts` with a lowercased email; 409 "Contact already exists" is looked
  up by `?email=` and PATCHed (an update); 422 is the member's refusal with its violations.
  A create's id comes from its body, else from the `Location` path, else by `?email=`.
- FM-A4: an unsubscribed contact is blacklisted: it vanishes from listings, and a POST answers
  409 "Contact is blacklisted". Such a member is acked `unsubscribed` and never re-added (no
  import ever sets `resubscribe_blacklisted_contacts`).
- FM-A5: every contact created carries the configured source id.
- FM-A6: custom fields are keyed by placeholder and typed by their field (flexmail_wire).
- FM-A7: a member's groups are interests by name; one POST per interest added (409: already),
  one DELETE per interest removed. A group no interest is named after is dropped with a reason.
- FM-A8: from `bulk_threshold` creates in one call, an import: created with a uuid, records in
  chunks of 1000, started with PATCH status=queued (POST .../start where PATCH is missing),
  polled; ids are looked up only for members with interests or when records were ignored. An
  import the account cannot use falls back to single creates for the rest of the client.
- FM-A9/FM-A12: webhooks registered by `ensure_webhooks` (only hooks to our url are touched);
  legacy bounces read by `iter_feedback` with the legacy headers only.
- FM-A13: the default and mapped languages must be enabled on the account (checked before any
  send, in `check_connection` and `target_fields`).
- A value empty at the source is left out, so Flexmail keeps what it holds (never cleared).
- FM-A10/AF8: every call is counted in the month's ledger and checked against the configured
  budget before it is sent; calls are paced to `requests_per_minute` per account across
  processes; the "Monthly API call limit reached" 429 is final (never retried) and stops the run.
"""

from __future__ import annotations

import base64
import hmac
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import dagster as dg
import httpx
from pydantic import BeforeValidator, ConfigDict, Field

from resources import paging
from resources.base import CallCounter, ListField, RemoteMember, UncertainOutcome, VendorError
from resources.call_ledger import MonthlyBudgetSpent, MonthlyCallLedger
from resources.feedback import Feedback
from resources.flexmail_webhook import (
    EVENTS,
    FlexmailFeedbackWebhook,
    bounce_time,
    feedback_detail,
)
from resources.flexmail_wire import (
    BLACKLISTED_DETAIL,
    EXISTS_DETAIL,
    CustomField,
    LanguageMap,
    WireContact,
    as_int,
    check_languages,
    custom_fields,
    enabled_languages,
    hal_collection,
    is_monthly_cap,
    list_fields,
    location_id,
    parse_contact,
    problem_reason,
    said,
    url_id,
    wire_contact,
)
from resources.http import (
    EnvVarName,
    HttpUrlStr,
    VendorHttp,
    as_utc,
    parse_iso_utc,
    resolve_secret,
    str_id,
)
from resources.rate_budget import SharedRateLimiter, Window
from resources.registry import TargetSectionBase
from resources.target import (
    MemberAck,
    MemberChange,
    RateBudget,
    TargetCapabilities,
    TargetClient,
    WritePolicy,
    is_refusal,
    ruled_out,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.flexmail.eu"
PAGE_SIZE = 500  # §2.4: the largest `limit`
IMPORT_CHUNK = 1000  # FM-A8: records per POST
BULK_THRESHOLD = 500  # FM-A8: creates in one call from which an import is used
POLL_TIMEOUT = 1800.0  # an import still running after this leaves its members without a verdict
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # "everything" for FM-A12's required `since`
POLLS_GUESSED = 3  # estimate_calls: polls of one import
INTEREST_CALLS_PER_CREATE = 1  # estimate_calls: interests a created member is guessed to get
_FINISHED = frozenset({"completed", "failed"})  # FM-A8 import statuses that end the polling
_AUTH_FAILURES = frozenset({401, 403})
SYNTHETIC_ID = "email:"  # FM-A4: a blacklisted contact's id is unseen; it is known by its address
_BLACKLISTED = "blacklisted in Flexmail (unsubscribed): never re-subscribed (FM-A4)"


class FlexmailClient(TargetClient):
    """Not thread-safe (field and interest caches, figures): one client per thread."""

    vendor: ClassVar[str] = "flexmail"
    capabilities: ClassVar[TargetCapabilities] = TargetCapabilities(
        match_keys=frozenset({"email"}),
        groups=True,
        feedback="pushed",
        listing=True,
        withdrawal="delete",
        consent=False,
        activity_feed=False,
        creates_fields=False,
    )
    batch_size: ClassVar[int] = 1000

    def __init__(
        self,
        *,
        base_url: str,
        account: str,
        token: str,
        source_id: int,
        languages: Mapping[str, str] | None = None,
        default_language: str = "nl",
        legacy_token: str | None = None,
        webhook_token: str | None = None,
        requests_per_minute: int | None = 60,
        monthly_call_budget: int | None = None,
        bulk_threshold: int = BULK_THRESHOLD,
        poll_seconds: float = 5.0,
        poll_timeout: float = POLL_TIMEOUT,
        budget_dir: Path | None = None,
        timeout: float | None = None,
        max_tries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,  # wall clock (epoch seconds): the rate window
    ) -> None:
        if not token:
            raise ValueError("flexmail needs a personal access token")
        self._base = base_url.rstrip("/")
        self._account = account
        self._user = account.strip().removeprefix("D-")  # FM-formie
        self._source_id = source_id
        self._languages = LanguageMap(languages or {}, default_language)
        self._legacy_token = legacy_token or None
        self._webhook_token = webhook_token or None
        self._budget = monthly_call_budget
        self._bulk_threshold = max(1, bulk_threshold)
        self._poll_seconds = poll_seconds
        self._poll_timeout = poll_timeout
        self._sleep = sleep
        basic = base64.b64encode(f"{self._user}:{token}".encode()).decode()
        self._auth = {"Authorization": f"Basic {basic}", "Accept": "application/hal+json"}
        self._ledger = MonthlyCallLedger.for_account(self.vendor, self._user, root=budget_dir)
        self.calls = CallCounter(ledger=self._ledger)
        self._http = VendorHttp(
            vendor=self.vendor,
            timeout=timeout,
            max_tries=max_tries,
            transport=transport,
            sleep=sleep,
            calls=self.calls,
            secrets=[s for s in (token, legacy_token, webhook_token, basic) if s],
            classify=_classify,
        )
        self._limiter = (
            SharedRateLimiter(
                self.vendor,
                self._user,  # FM-A10: 60 a minute per account, whichever token calls
                [Window("minute", requests_per_minute, 60.0, wait=True)],
                directory=budget_dir,
                clock=clock,
                sleep=sleep,
                counter=self.calls,  # waits reach the run's metadata
            )
            if requests_per_minute
            else None
        )
        self._custom: dict[str, CustomField] | None = None
        self._interests: dict[str, str] | None = None
        self._languages_checked = False
        self._imports_usable = True  # off once an import could not be used (FM-A8 fallback)
        self._start_by_post = False  # FM-A8: PATCH status=queued answered 404/405
        self._figures = {
            "imports": 0,
            "import_records": 0,
            "imports_abandoned": 0,
            "import_lookups": 0,
            "interest_calls": 0,
            "blacklisted_skips": 0,
            "languages_defaulted": 0,
            "webhooks_registered": 0,
        }

    @property
    def label(self) -> str:
        return f"flexmail account {self._account}"

    # --- TargetClient --------------------------------------------------------------------------

    def check_connection(self) -> None:
        """`GET /sources?limit=1` (FM-posthog's probe): 401/403 means bad credentials. Then the
        languages we would send must be enabled on the account (FM-A13)."""
        self._get("/sources", "sources", params={"limit": 1}, validate=hal_collection)
        self._check_languages()

    def target_fields(self) -> dict[str, ListField]:
        """email, first_name, name, language, and every custom field by placeholder (AF2).
        The core reads these before every send, so the language check (FM-A13) rides along:
        a language the account lacks fails the run before any contact is sent."""
        self._check_languages()
        return list_fields(self._custom_fields(refresh=True))

    def write_members(
        self, changes: Sequence[MemberChange], policy: WritePolicy
    ) -> Iterator[MemberAck]:
        """Updates and removals one call each; creates one by one, or through an import from
        `bulk_threshold` on (FM-A8) when the import type allows both creates and updates (an
        import updates an address that exists). Interests follow each contact write."""
        if policy.match_on != "email":
            raise ValueError(f"flexmail recognises contacts by email, not {policy.match_on!r}")
        single: list[MemberChange] = []
        creates: list[MemberChange] = []
        for change in changes:
            if change.action != "remove" and ruled_out(change, policy.import_type):
                yield MemberAck(change.match_key, "import_type", change.member_id)
            elif change.action == "create":
                creates.append(change)
            else:
                single.append(change)
        bulk = (
            self._imports_usable
            and len(creates) >= self._bulk_threshold
            and policy.import_type == "create_and_update"
        )
        if not bulk:
            single += creates
        yield from self._one_by_one(single, policy)
        if bulk:
            yield from self._imported(creates, policy)

    def iter_members(self, changed_since: datetime | None) -> Iterator[RemoteMember]:
        """Every contact Flexmail lists (blacklisted ones are not listed, FM-A4). Flexmail has
        no modified-since filter (§2.1), so `changed_since` still reads the whole listing."""
        custom = self._custom_fields()
        for raw in self._rows("/contacts", "contacts"):
            yield parse_contact(raw, self._languages, custom)

    def member_count(self) -> int | None:
        """`total` of `GET /contacts?limit=1`."""
        page = self._get("/contacts", "contacts", params={"limit": 1}, validate=hal_collection)
        return page.total

    def ensure_webhooks(self, url: str) -> list[str]:
        """Register FM-A9's three events to `url` with our verification token; returns the
        event names newly registered. Only a webhook to `url` is ours: one that is disabled,
        shows another token, or repeats an event is deleted and made again. A webhook to any
        other url is left alone even when it carries our token (another integration, or another
        memberflow, may share it): a token match alone never deletes anything."""
        if self._webhook_token is None:
            raise ValueError("flexmail webhooks need webhook_token_env (the verification token)")
        present: set[str] = set()
        for hook in self._rows("/webhooks", "webhooks"):
            event = str(hook.get("event_name") or "")
            if event not in EVENTS or str(hook.get("target_url") or "") != url:
                continue  # not ours
            shown = hook.get("verification_token")
            token_ok = shown is None or (  # a token not shown back cannot be judged
                isinstance(shown, str)
                and hmac.compare_digest(shown.encode(), self._webhook_token.encode())
            )
            if token_ok and hook.get("enabled", True) and event not in present:
                present.add(event)
            else:
                self._call("DELETE", f"/webhooks/{hook.get('id')}", "webhooks/delete")
        added = []
        for event in EVENTS:
            if event in present:
                continue
            body = {
                "event_name": event,
                "target_url": url,
                "verification_token": self._webhook_token,
            }
            self._call("POST", "/webhooks", "webhooks/create", json=body)
            added.append(event)
        self._figures["webhooks_registered"] += len(added)
        return added

    def iter_feedback(self, since: datetime | None) -> Iterator[Feedback]:
        """FM-A12 legacy bounces at or after `since` (none without a legacy token)."""
        if self._legacy_token is None:
            return
        params = {"since": as_utc(since or EPOCH).isoformat()}  # FM-A12: `since` is required
        rows = self._call(
            "GET",
            "/legacy/bounces",
            "legacy/bounces",
            params=params,
            validate=_rows,
            headers={"userId": self._user, "userToken": self._legacy_token},
            rest_auth=False,
        )
        for row in rows:
            when = parse_iso_utc(row.get("bounced_at"))
            email = row.get("email")
            if when is None or not isinstance(email, str) or not email.strip():
                continue
            if since is not None and when < as_utc(since):
                continue
            yield Feedback(
                kind="bounced",
                email=email.strip().lower(),
                member_id=None,
                occurred_at=bounce_time(when),
                detail=feedback_detail("bounced", row),
            )

    def estimate_calls(self, actions: Mapping[str, int]) -> int | None:
        """About the calls `write_members` spends, as the core will call it: the reads before
        sending (custom fields, languages, interests), one call per update and removal, and
        creates in batches of `batch_size`. A batch at or over `bulk_threshold` is an import
        (create, records per 1000, start, a few polls, then the id lookup, at most one `limit=1`
        read and the account's listing pages, which grows by each import); any other batch is
        one POST per create (a 409 costs two more, not foreseen).

        Interest calls are one per group joined or left: `actions["group_changes"]` (the core
        counts them when the list keeps groups), else a create is guessed to add
        INTEREST_CALLS_PER_CREATE interests, which errs toward not starting a run the budget may
        not cover."""
        creates = actions.get("create", 0)
        calls = 3 + actions.get("update", 0) + actions.get("remove", 0)
        interests = actions.get("group_changes")
        calls += INTEREST_CALLS_PER_CREATE * creates if interests is None else interests
        lookups = interests is None or interests > 0  # imported contacts with interests
        imported = 0
        for size in _batch_sizes(creates, self.batch_size):
            if self._imports_usable and size >= self._bulk_threshold:
                imported += size
                calls += 2 + math.ceil(size / IMPORT_CHUNK) + POLLS_GUESSED
                calls += 1 + math.ceil(imported / PAGE_SIZE) if lookups else 0
            else:
                calls += size
        return calls

    def rate_budget(self) -> RateBudget | None:
        """The month's calls against `monthly_call_budget` (AF8); None without a budget."""
        if self._budget is None:
            return None
        return RateBudget(
            window="month",
            limit=self._budget,
            used=self._ledger.used(),
            by_this_client=self.calls.total,
        )

    def run_figures(self) -> dict[str, int]:
        """Imports and their records, interest calls, blacklisted members skipped, languages
        sent as the default, webhooks registered."""
        return dict(self._figures)

    def close(self) -> None:
        self._http.close()

    # --- writing one by one --------------------------------------------------------------------

    def _one_by_one(self, changes: list[MemberChange], policy: WritePolicy) -> Iterator[MemberAck]:
        """One verdict per change; once the host failed after its retries the rest get `error`
        acks without a try (sent again next run)."""
        down: VendorError | None = None
        for change in changes:
            if down is not None:
                yield _error(change, down.message)
                continue
            try:
                yield self._write_one(change, policy)
            except VendorError as exc:
                if exc.status == 0 and not isinstance(exc, UncertainOutcome):
                    down = exc
                yield self._failed(change, exc)

    def _write_one(self, change: MemberChange, policy: WritePolicy) -> MemberAck:
        if change.action == "remove":
            return self._remove(change)
        if change.action == "create":
            return self._create_or_update(change, policy)
        contact_id = url_id(change.member_id) or self._find(_email(change))
        if contact_id is not None and self._patch(contact_id, change):
            return self._with_interests(change, "updated", contact_id, created=False)
        if policy.import_type == "update_only":  # gone: deleted, or blacklisted (FM-A4)
            return MemberAck(
                change.match_key, "import_type", change.member_id, reason="not in Flexmail"
            )
        return self._create_or_update(change, policy)

    def _create_or_update(self, change: MemberChange, policy: WritePolicy) -> MemberAck:
        """POST; 409 exists -> look it up and PATCH; 409 blacklisted -> `unsubscribed`."""
        wire = self._wire(change, create=True)
        try:
            answer = self._call(
                "POST", "/contacts", "contacts/create", json=self._create_body(wire), raw=True
            )
        except VendorError as exc:
            if exc.status != 409:
                raise
            if said(exc, BLACKLISTED_DETAIL):
                return self._blacklisted(change)
            if not said(exc, EXISTS_DETAIL):
                raise
            if policy.import_type == "create_only":
                return MemberAck(change.match_key, "import_type", change.member_id)
            contact_id = self._find(wire.email)
            if contact_id is None or not self._patch(contact_id, change):
                return _error(change, "Flexmail says the contact exists but does not list it")
            return self._with_interests(change, "updated", contact_id, created=False)
        contact_id = _created_id(answer)
        if contact_id is None:
            contact_id = self._find(wire.email)  # FM-statik: search again after a bare create
        return self._with_interests(change, "created", contact_id, created=True, wire=wire)

    def _create_body(self, wire: WireContact) -> dict[str, Any]:
        return wire.body(with_email=True) | {"source": self._source_id}  # FM-A5

    def _patch(self, contact_id: str, change: MemberChange) -> bool:
        """`PATCH /contacts/{id}` with what `values` holds; False when the id is gone (404)."""
        wire = self._wire(change, create=False)
        body = wire.body(with_email=False)
        if not body:
            return True  # nothing to change (e.g. only groups moved): no call
        try:
            self._call(
                "PATCH",
                f"/contacts/{contact_id}",
                "contacts/patch",
                json=body,
                idempotent=True,  # partial: the same values however often sent
            )
        except VendorError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _remove(self, change: MemberChange) -> MemberAck:
        """DELETE the contact; not there (404, or not listed: deleted or blacklisted) is gone.
        A member known only by the synthetic `email:` id is blacklisted (FM-A4): nothing to
        take off, so no call (and never a non-numeric id in a URL)."""
        if str(change.member_id or "").startswith(SYNTHETIC_ID):
            return MemberAck(change.match_key, "removed", change.member_id)
        contact_id = url_id(change.member_id) or self._find(_email(change))
        if contact_id is not None:
            try:
                self._call("DELETE", f"/contacts/{contact_id}", "contacts/delete")
            except VendorError as exc:
                if exc.status != 404:
                    raise
        return MemberAck(change.match_key, "removed", change.member_id or contact_id)

    def _blacklisted(self, change: MemberChange) -> MemberAck:
        """FM-A4: acked `unsubscribed` with the member as unsubscribed, so the core skips it
        next time without a call (a blacklisted contact has no id we can see)."""
        self._figures["blacklisted_skips"] += 1
        email = _email(change)
        remote = RemoteMember(
            member_id=change.member_id or f"{SYNTHETIC_ID}{email}",
            email=email,
            mobile=None,
            status="unsubscribed",
            email_status=None,
            unsubscribed_at=None,
            updated_at=None,
        )
        return MemberAck(
            change.match_key,
            "unsubscribed",
            change.member_id,
            reason=_BLACKLISTED,
            remote=remote,
        )

    def _failed(self, change: MemberChange, exc: VendorError) -> MemberAck:
        """A refusal (a 4xx that judges the member) is its ack with the violations; a failed
        host is an `error` (sent again). Credentials and the monthly cap stop the whole run."""
        if _fatal(exc):
            raise exc
        refused = is_refusal(exc) and not isinstance(exc, UncertainOutcome)
        reason = problem_reason(exc) if refused else exc.message
        return MemberAck(
            change.match_key, "refused" if refused else "error", change.member_id, reason=reason
        )

    # --- interests (FM-A7) ---------------------------------------------------------------------

    def _with_interests(
        self,
        change: MemberChange,
        outcome: Literal["created", "updated"],
        contact_id: str | None,
        *,
        created: bool,
        wire: WireContact | None = None,
    ) -> MemberAck:
        """The contact's ack after its interests moved: a created contact gains every group,
        an existing one those added; removals are one DELETE each."""
        wire = wire or self._wire(change, create=False)
        self._figures["languages_defaulted"] += wire.language_defaulted
        dropped = list(wire.dropped)
        if contact_id is not None:
            dropped += self._move_interests(contact_id, change, created)
        elif _has_groups(change, created):
            dropped.append(("groups", "contact id unknown: interests not changed"))
        return MemberAck(
            change.match_key, outcome, contact_id or change.member_id, dropped=tuple(dropped)
        )

    def _move_interests(
        self, contact_id: str, change: MemberChange, created: bool
    ) -> list[tuple[str, str]]:
        gained = _gained(change, created)
        if not gained and not change.groups_removed:
            return []
        known = self._interest_ids()
        dropped: list[tuple[str, str]] = []
        for name in dict.fromkeys(gained):
            interest = known.get(name)
            if interest is None:
                dropped.append(("groups", f"no Flexmail interest named {name!r}: not added"))
                continue
            try:
                self._interest_call("POST", contact_id, interest)
            except VendorError as exc:
                if exc.status == 409:
                    continue  # already subscribed (FM-A7)
                if _fatal(exc) or not is_refusal(exc):
                    raise
                dropped.append(("groups", f"interest {name!r} not added: {problem_reason(exc)}"))
        for name in dict.fromkeys(change.groups_removed):
            interest = known.get(name)
            if interest is None:
                continue  # no such interest: the contact is not in it
            try:
                self._interest_call("DELETE", contact_id, interest)
            except VendorError as exc:
                if exc.status != 404:
                    raise
        return dropped

    def _interest_call(self, method: str, contact_id: str, interest: str) -> None:
        self._figures["interest_calls"] += 1
        base = f"/contacts/{contact_id}/interest-subscriptions"
        if method == "POST":
            body = {"interest_id": interest}
            # 409 means already subscribed (FM-A7), so sending it twice is harmless
            self._call("POST", base, "interest-subscriptions/create", json=body, idempotent=True)
        else:
            self._call("DELETE", f"{base}/{interest}", "interest-subscriptions/delete")

    def _interest_ids(self) -> dict[str, str]:
        """The account's interests by exact name (FM-A7), read once per client."""
        if self._interests is None:
            found: dict[str, str] = {}
            for row in self._rows("/interests", "interests"):
                if row.get("name") is not None and row.get("id") is not None:
                    found.setdefault(str(row["name"]), str(row["id"]))
            self._interests = found
        return self._interests

    # --- bulk import (FM-A8) -------------------------------------------------------------------

    def _imported(self, creates: list[MemberChange], policy: WritePolicy) -> Iterator[MemberAck]:
        """One import for every create of the call. An import the account cannot use (a 4xx
        on create, records or start, or an import that ends `failed`) is given up for this
        client and its members are written one by one, so each gets its own verdict instead of
        an `error` that would come back every run. An import that did not finish in time, or a
        host that failed, leaves its members `error` (sent again next run)."""
        wires = {id(change): self._wire(change, create=True) for change in creates}
        import_id = str(uuid.uuid4())
        try:
            self._submit_import(import_id, [wires[id(c)] for c in creates])
            status, message, report = self._poll_import(import_id)
        except VendorError as exc:
            if _fatal(exc):
                raise
            if _import_refused(exc):
                yield from self._without_imports(creates, policy, f"HTTP {exc.status}")
                return
            yield from (_error(change, exc.message) for change in creates)
            return
        if status == "failed":
            yield from self._without_imports(creates, policy, "it failed")
            return
        if status != "completed":
            why = f"the import {status}" + (f": {message}" if message else "")
            yield from (_error(change, why) for change in creates)
            return
        yield from self._after_import(creates, wires, report, policy)

    def _without_imports(
        self, creates: list[MemberChange], policy: WritePolicy, why: str
    ) -> Iterator[MemberAck]:
        """The FM-A8 fallback: no more imports in this client; these creates one by one (a
        failed import may have added some: their POST answers 409 exists and is PATCHed)."""
        self._imports_usable = False
        self._figures["imports_abandoned"] += 1
        log.warning(
            "flexmail: the bulk import could not be used (%s); %d creates are written one by one",
            why,
            len(creates),
        )
        yield from self._one_by_one(creates, policy)

    def _after_import(
        self,
        creates: list[MemberChange],
        wires: dict[int, WireContact],
        report: dict[str, Any],
        policy: WritePolicy,
    ) -> Iterator[MemberAck]:
        """Acks for a completed import. Ids are looked up only where they are needed: for
        members with interests to add, and for every member when the report says (or may say)
        some records were ignored (blacklisted or refused: a single POST gives their verdict).
        Otherwise no lookup at all: later updates and removals find a contact by email."""
        ignored = as_int(report.get("total_ignored"))
        needed = {id(c) for c in creates if ignored != 0 or _has_groups(c, created=True)}
        emails = [wires[id(c)].email for c in creates if id(c) in needed]
        ids = self._imported_ids(emails) if emails else {}
        missing: list[MemberChange] = []
        for change in creates:
            wire = wires[id(change)]
            contact_id = ids.get(wire.email)
            if contact_id is None and id(change) in needed:
                missing.append(change)
                continue
            try:
                yield self._with_interests(change, "created", contact_id, created=True, wire=wire)
            except VendorError as exc:
                yield self._failed(change, exc)
        yield from self._one_by_one(missing, policy)

    def _imported_ids(self, emails: list[str]) -> dict[str, str]:
        """Contact ids by email: one `?email=` read each when that is fewer calls than
        listing the whole account (its size from one `limit=1` read), else the listing."""
        total = self.member_count()
        pages = math.ceil(total / PAGE_SIZE) if total is not None else None
        if pages is not None and len(emails) <= pages:
            self._figures["import_lookups"] += len(emails)
            found = {email: self._find(email) for email in emails}
            return {email: contact_id for email, contact_id in found.items() if contact_id}
        return {member.email: member.member_id for member in self._listing() if member.email}

    def _submit_import(self, import_id: str, wires: list[WireContact]) -> None:
        self._call(
            "POST",
            "/contacts/imports",
            "imports/create",
            json={"id": import_id, "resubscribe_blacklisted_contacts": False},  # FM-A4
        )
        for start in range(0, len(wires), IMPORT_CHUNK):
            chunk = wires[start : start + IMPORT_CHUNK]
            records = [self._record(wire) for wire in chunk]
            path = f"/contacts/imports/{import_id}/records"
            self._call("POST", path, "imports/records", json=records)
            self._figures["import_records"] += len(records)
        self._start_import(import_id)
        self._figures["imports"] += 1

    def _start_import(self, import_id: str) -> None:
        """FM-A8 step 3 is unresolved (section 2.3): PATCH status=queued (FM-apteco); when
        that route is missing (404/405), POST .../start (FM-mind), remembered for the client."""
        path = f"/contacts/imports/{import_id}"
        if not self._start_by_post:
            try:
                body = {"status": "queued"}
                self._call("PATCH", path, "imports/start", json=body, idempotent=True)
                return
            except VendorError as exc:
                if exc.status not in (404, 405):
                    raise
                self._start_by_post = True
        self._call("POST", f"{path}/start", "imports/start")

    def _record(self, wire: WireContact) -> dict[str, Any]:
        """An import record (FM-A8): the contact, its source, no interest labels or
        preferences (interests follow as single calls, FM-A7). A name empty at the source is
        left out, never sent as null (Flexmail refuses null, as it does in custom fields)."""
        return {
            "email": wire.email,
            **{k: v for k, v in wire.fields.items() if v is not None},
            "custom_fields": dict(wire.custom),
            "sources": [self._source_id],
            "interest_labels": [],
            "preferences": [],
        }

    def _poll_import(self, import_id: str) -> tuple[str, str | None, dict[str, Any]]:
        """Every `poll_seconds` until completed or failed: (status, message, report). Counted
        in polls, not on a clock: after `poll_timeout` seconds' worth it "did not finish"."""
        polls = max(1, math.ceil(self._poll_timeout / max(self._poll_seconds, 1e-9)))
        for _ in range(polls):
            self._sleep(self._poll_seconds)
            body = self._get(
                f"/contacts/imports/{import_id}", "imports/poll", validate=_import_status
            )
            status = body["status"]
            if status in _FINISHED:
                message = body.get("message")
                report = body.get("report")
                return (
                    status,
                    str(message) if message else None,
                    report if isinstance(report, dict) else {},
                )
        return "did not finish in time", None, {}

    # --- reading -------------------------------------------------------------------------------

    def _listing(self) -> Iterator[RemoteMember]:
        return self.iter_members(None)

    def _find(self, email: str) -> str | None:
        """The id of the contact with this email (`?email=` exact), None when not listed."""
        page = self._get(
            "/contacts", "contacts/by-email", params={"email": email}, validate=hal_collection
        )
        for row in page.items:
            if str(row.get("email") or "").lower() == email and row.get("id") is not None:
                return str(row["id"])
        return None

    def _custom_fields(self, refresh: bool = False) -> dict[str, CustomField]:
        """The account's custom fields by placeholder (FM-A6), read once unless `refresh`."""
        if self._custom is None or refresh:
            specs = self._get("/custom-fields", "custom-fields", validate=custom_fields)
            self._custom = {spec.placeholder: spec for spec in specs}
        return self._custom

    def _check_languages(self) -> None:
        """FM-A13: read `/account-contact-languages` once per client and fail (naming them)
        when the default or a mapped language is not enabled on the account."""
        if self._languages_checked:
            return
        enabled = self._get(
            "/account-contact-languages", "account-contact-languages", validate=enabled_languages
        )
        check_languages(self._languages, enabled)
        self._languages_checked = True

    def _wire(self, change: MemberChange, *, create: bool) -> WireContact:
        names = [n for n in change.values if n not in ("email", "first_name", "name", "language")]
        custom = self._custom_fields() if names else {}
        return wire_contact(_email(change), change.values, custom, self._languages, create=create)

    def _rows(self, path: str, endpoint: str, paged: bool = True) -> Iterator[dict[str, Any]]:
        """Every row of a HAL collection: `limit`/`offset` pages until `total` (§2.4), or the
        one answer of a collection that is not paged."""
        if not paged:
            yield from self._get(path, endpoint, validate=hal_collection).items
            return
        pages = paging.offsets(
            lambda offset, limit: self._get(
                path,
                endpoint,
                params={"limit": limit, "offset": offset},
                validate=hal_collection,
            ),
            lambda page: page.items,
            limit=PAGE_SIZE,
            total=lambda page: page.total,
        )
        for rows in pages:
            yield from rows

    # --- plumbing ------------------------------------------------------------------------------

    def _get(self, path: str, endpoint: str, **kwargs: Any) -> Any:
        return self._call("GET", path, endpoint, **kwargs)

    def _call(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        validate: Callable[[Any], Any] | None = None,
        headers: Mapping[str, str] | None = None,
        rest_auth: bool = True,
        raw: bool = False,
        **kwargs: Any,
    ) -> Any:
        """One request, after the month's budget was checked (AF8: stop before sending) and
        with each try paced by the shared per-minute window. Returns the validated JSON when
        `validate` is given (or for a GET), the response itself when `raw`, else the parsed
        body if any. `rest_auth=False` leaves the REST Basic credentials out (FM-A12's legacy
        call carries its own headers)."""
        self._ledger.check(self.vendor, self._budget)
        base = self._auth if rest_auth else {"Accept": self._auth["Accept"]}
        extra = {**base, **(headers or {})}

        def fresh() -> dict[str, str]:
            if self._limiter is not None:
                self._limiter.acquire()  # before every try, retries too
            return dict(extra)

        url = f"{self._base}{path}"
        if not raw and (validate is not None or method == "GET"):
            return self._http.request_json(
                method, url, endpoint=endpoint, validate=validate, headers=fresh, **kwargs
            )
        response = self._http.request(method, url, endpoint=endpoint, headers=fresh, **kwargs)
        return response if raw else _lenient_json(response)


# --- pure helpers --------------------------------------------------------------------------------


def _classify(response: httpx.Response) -> Literal["final"] | None:
    """VendorHttp's hook: the monthly-cap 429 is final (FM-A10), every other 429 is waited out."""
    if response.status_code != 429:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return "final" if is_monthly_cap(429, body) else None


def _fatal(exc: VendorError) -> bool:
    """Failures no member ack describes: bad credentials, or the month's calls spent."""
    if isinstance(exc, MonthlyBudgetSpent) or exc.status in _AUTH_FAILURES:
        return True
    return is_monthly_cap(exc.status, exc.body)


def _batch_sizes(total: int, size: int) -> list[int]:
    """`total` creates as the core hands them over: full batches of `size`, then the rest."""
    full, rest = divmod(max(0, total), max(1, size))
    return [size] * full + ([rest] if rest else [])


def _import_refused(exc: VendorError) -> bool:
    """A 4xx other than 429 on an import step: the account does not take our import requests
    (a missing route, a refused body), so retrying an import next run would fail the same way."""
    return 400 <= exc.status < 500 and exc.status != 429 and not isinstance(exc, UncertainOutcome)


def _email(change: MemberChange) -> str:
    """FM-A3: the member's email, lowercased (the match key, or its `email` value)."""
    value = change.match_key or change.values.get("email") or ""
    return str(value).strip().lower()


def _error(change: MemberChange, reason: str) -> MemberAck:
    return MemberAck(change.match_key, "error", change.member_id, reason=reason)


def _created_id(response: httpx.Response) -> str | None:
    """FM-A2: the body's `{id}`, else the last path segment of `Location` (relative or
    absolute); None when the answer carries neither (the caller looks the email up)."""
    answer = _lenient_json(response)
    found = as_int(answer.get("id")) if isinstance(answer, dict) else None
    if found is not None:
        return str(found)
    return location_id(response.headers.get("Location"))


def _gained(change: MemberChange, created: bool) -> tuple[str, ...]:
    """The groups to add: all of a created contact's, else those added since last time."""
    return change.groups if created and change.groups is not None else change.groups_added


def _has_groups(change: MemberChange, created: bool) -> bool:
    """Does writing this change move any interest (FM-A7)?"""
    return bool(_gained(change, created) or change.groups_removed)


def _lenient_json(response: httpx.Response) -> Any:
    """A write's JSON answer, or None when empty (204) or not JSON: the write is done."""
    if response.status_code == 204 or not response.content.strip():
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _rows(body: Any) -> list[dict[str, Any]]:
    """FM-A12's plain array of bounces (a HAL collection is read too)."""
    if isinstance(body, list):
        return [row for row in body if isinstance(row, dict)]
    return hal_collection(body).items


def _import_status(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not str(body.get("status") or "").strip():
        raise ValueError("import answer without a status")
    body["status"] = str(body["status"]).strip().lower()
    return body


# --- integration file section and Dagster resource ---------------------------------------------


class FlexmailResource(dg.ConfigurableResource):
    """Flexmail settings with the tokens as `dg.EnvVar`, resolved only when a client is built."""

    account: str
    base_url: str
    token: str
    legacy_token: str | None = None
    webhook_token: str | None = None
    source_id: int
    languages: dict[str, str] = {}
    default_language: str = "nl"
    requests_per_minute: int | None = 60
    monthly_call_budget: int | None = None
    bulk_threshold: int = BULK_THRESHOLD
    poll_seconds: float = 5.0
    poll_timeout_seconds: float = POLL_TIMEOUT

    def client(self) -> FlexmailClient:
        return FlexmailClient(
            base_url=self.base_url,
            account=self.account,
            token=resolve_secret(self.token, "flexmail token") or "",
            legacy_token=resolve_secret(self.legacy_token, "flexmail legacy_token"),
            webhook_token=resolve_secret(self.webhook_token, "flexmail webhook_token"),
            source_id=self.source_id,
            languages=self.languages,
            default_language=self.default_language,
            requests_per_minute=self.requests_per_minute,
            monthly_call_budget=self.monthly_call_budget,
            bulk_threshold=self.bulk_threshold,
            poll_seconds=self.poll_seconds,
            poll_timeout=self.poll_timeout_seconds,
        )


class FlexmailTarget(TargetSectionBase):
    """`target:` section with `kind: flexmail`; every secret is an env var name."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["flexmail"]
    # "Id Gebruiker"; a leading D- is stripped to log in; `account: 204518` (a YAML int) too
    account: Annotated[str, BeforeValidator(str_id), Field(min_length=1)]
    base_url: HttpUrlStr = DEFAULT_BASE_URL
    token_env: EnvVarName  # personal access token
    legacy_token_env: EnvVarName | None = None  # FM-A12: legacy bounces
    webhook_token_env: EnvVarName | None = None  # FM-A9: verification token
    source_id: int = Field(ge=1)  # FM-A5
    languages: dict[str, str] = Field(default_factory=dict)  # source value -> ISO (FM-A13)
    default_language: str = Field(default="nl", min_length=2)
    requests_per_minute: int | None = Field(default=60, ge=1)  # FM-A10; null: no pacing
    monthly_call_budget: int | None = Field(default=None, ge=1)  # AF8; null: no budget
    bulk_threshold: int = Field(default=BULK_THRESHOLD, ge=1)  # FM-A8
    poll_seconds: float = Field(default=5.0, gt=0)  # FM-A8
    poll_timeout_seconds: float = Field(default=POLL_TIMEOUT, gt=0)

    @property
    def destination(self) -> str:
        """Flexmail keeps one contact base per account."""
        return self.account

    def env_vars(self) -> list[str]:
        names = [self.token_env, self.legacy_token_env, self.webhook_token_env]
        return [name for name in names if name]

    def feedback_webhook(self) -> FlexmailFeedbackWebhook | None:
        """FM-A9: the verification token's webhook; None when no token is configured."""
        if not self.webhook_token_env:
            return None
        return FlexmailFeedbackWebhook.from_env(self.webhook_token_env)

    def resource(self) -> FlexmailResource:
        return FlexmailResource(
            account=self.account,
            base_url=self.base_url,
            token=dg.EnvVar(self.token_env),
            legacy_token=dg.EnvVar(self.legacy_token_env) if self.legacy_token_env else None,
            webhook_token=dg.EnvVar(self.webhook_token_env) if self.webhook_token_env else None,
            source_id=self.source_id,
            languages=dict(self.languages),
            default_language=self.default_language,
            requests_per_minute=self.requests_per_minute,
            monthly_call_budget=self.monthly_call_budget,
            bulk_threshold=self.bulk_threshold,
            poll_seconds=self.poll_seconds,
            poll_timeout_seconds=self.poll_timeout_seconds,
        )
