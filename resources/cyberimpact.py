"""Cyberimpact target client (v4 API): members by email, static groups, custom fields, consent and
async batches, with unsubscribes and bounces polled back (CI-A1..CI-A13).

- CI-A1: `Authorization: Bearer <token>`; `GET /ping` names the token's account, and the
  connection check fails unless it is the account the integration file names (compared NFC,
  stripped and casefolded).
- CI-A2: pages of `limit=page_size` (default 1000) by `page`, until the rows seen reach
  `totalCount` or a page comes back empty (`totalCount`/`limit` may come as digit strings).
- CI-A3: a member is addressed by its lowercase email, URL-encoded in the path.
- CI-A5: a Cyberimpact unsubscribe is never undone. Before its first write a client reads
  `GET /members/unsubscribed` once; a create or update of such an email is acked `unsubscribed`
  without a call, and a removal of one is skipped (deleting it would erase the unsubscribe).
  A 409 "unsubscribed" on PATCH or POST is acked `unsubscribed` too.
- CI-A4: fewer than `batch_threshold` creates and updates in a call (or an import type other
  than create_and_update, which a batch cannot honour) go one by one: `PATCH /members/{email}`,
  and on 404 `POST /members` (a 409 "already exists" goes back to PATCH). From `batch_threshold`
  on they go as `addMembers` batches of 1000, polled until finished (within `poll_timeout`); a
  batch refused whole (4xx) is written one by one instead. Group additions are additive
  (`POST /members/{email}/groups`, or batch-level groups; the emails-only group batches, each
  with every group its members share, go only after the chunk's own batch finished, for the
  members it accepted); removals are one
  `DELETE /members/{email}/groups/{id}` each. Removing a member deletes it.
- CI-A6: `POST /members` is throttled to 1/s per token: paced here before sending, and a 429's
  Retry-After is honoured all the same (VendorHttp).
- CI-A7: groups are matched by exact title among the static groups; a missing one is created
  static (`isPublic: false`) once and cached; ids may come as numbers or digit strings.
- CI-A8/CI-A9: custom fields are written by id in their type (resources/cyberimpact_wire.py) and
  can be created by `POST /customfields` until the plan's limit.
- CI-A10: after a write, `PUT /members/{email}/consent` when the consent inputs changed; a 422
  (a stronger consent is stored) is logged and counted as success.
- CI-A11: unsubscribes and bounces are read back from their own lists, deduplicated by email.
- CI-A13: a refusal's reason is the vendor's message plus its per-field errors.
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import dagster as dg
import httpx
from pydantic import ConfigDict, Field

from resources import paging
from resources.base import ListField, RemoteMember, UncertainOutcome, VendorError
from resources.cyberimpact_wire import (
    CONSENT_DATE,
    CONSENT_PROOF,
    CUSTOM_TYPES,
    CustomField,
    WireMember,
    bounce_stamp,
    list_fields,
    parse_member,
    parse_stamp,
    wire_member,
)
from resources.http import EnvVarName, HttpUrlStr, VendorHttp, as_utc, resolve_secret
from resources.pacing import Window, requests_per_second_pace, shared_pace
from resources.registry import TargetSectionBase
from resources.target import (
    MemberAck,
    MemberChange,
    TargetCapabilities,
    TargetClient,
    WritePolicy,
    is_refusal,
    ruled_out,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.cyberimpact.com"
PAGE_SIZE = 1000  # CI-A2: the default `limit` asked for (the section's `page_size`)
BATCH_SIZE = 1000  # CI-A4: members per addMembers batch
POST_INTERVAL = 1.0  # CI-A6: seconds between two POST /members of one token
REQUESTS_PER_SECOND = 10.0  # CI-A6: every other call, per token (assumed: numbers unknown)
RELATION_TYPE = "active-clients"  # CI-A10: implied consent of an active client
POLL_TIMEOUT = 1800.0  # a batch still running after this is left without a verdict (error)
_RUNNING = frozenset({"NEW", "PROCESSING"})  # CI-A4: any other batch status is finished
_KEPT_UNSUBSCRIBED = "unsubscribed at Cyberimpact: kept so the unsubscribe stays"
_AUTH_FAILURES = frozenset({401, 403})  # the whole call is wrong, not one member


class AccountMismatch(VendorError):
    """The token works, but opens another Cyberimpact account than the integration file names."""

    def summary(self) -> str:
        return f"{self.vendor}: {self.message}"


@dataclass
class _Write:
    """One create or update on its way: the change, the member as sent, what came back."""

    change: MemberChange
    wire: WireMember
    gained: tuple[str, ...]  # group titles the member must be in after the write
    outcome: str | None = None
    member_id: str | None = None
    reason: str | None = None
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def ack(self) -> MemberAck:
        outcome = self.outcome or "error"
        reason = self.reason or (None if self.outcome else "no verdict from Cyberimpact")
        return MemberAck(
            self.change.match_key,
            outcome,  # type: ignore[arg-type]
            self.member_id or self.change.member_id,
            reason=reason,
            dropped=tuple(self.wire.dropped + self.dropped),
        )


# One submitted batch: its id (None when submitting failed), its members, and why it failed.
_Job = tuple[int | None, list[_Write], str | None]
# One member's verdict in the batches: ("ok" | "refused" | "unsubscribed" | "error", reason, id).
_Verdict = tuple[str, str | None, str | None]


@dataclass(frozen=True)
class _Finished:
    """A batch that is no longer NEW or PROCESSING: its status and its `result`, if any."""

    status: str
    result: dict[str, Any] | None


class CyberimpactClient(TargetClient):
    """Not thread-safe (group and field caches, the POST pacer): one client per thread."""

    vendor: ClassVar[str] = "cyberimpact"
    capabilities: ClassVar[TargetCapabilities] = TargetCapabilities(
        match_keys=frozenset({"email"}),
        groups=True,
        consent=True,
        feedback="polled",
        listing=True,
        withdrawal="delete",
        creates_fields=True,
    )
    batch_size: ClassVar[int] = BATCH_SIZE

    def __init__(
        self,
        *,
        base_url: str,
        api_token: str,
        account: str,
        poll_seconds: float = 5.0,
        batch_threshold: int = 50,
        poll_timeout: float = POLL_TIMEOUT,
        page_size: int | None = None,
        post_interval: float = POST_INTERVAL,
        timeout: float | None = None,
        max_tries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        requests_per_second: float | None = REQUESTS_PER_SECOND,  # 0 or None: no pacing
    ) -> None:
        self._base = base_url.rstrip("/")
        self._account = account
        self._poll_seconds = poll_seconds
        self._batch_threshold = batch_threshold
        self._poll_timeout = poll_timeout
        self._page_size = page_size
        self._sleep, self._clock = sleep, clock
        self._headers = {"Authorization": f"Bearer {api_token}", "Accept": "application/json"}
        self._http = VendorHttp(
            vendor=self.vendor,
            timeout=timeout,
            max_tries=max_tries,
            transport=transport,
            sleep=sleep,
            secrets=[api_token],
            pace=requests_per_second_pace(
                self.vendor,
                f"{self._base}\0{api_token}",
                requests_per_second,
                clock=clock,
                sleep=sleep,
            ),
        )
        self.calls = self._http.calls
        # CI-A6: one POST /members per `post_interval` seconds per token, counted from the
        # previous answer (the server counts a request on arrival, never before our previous
        # answer): a held slot, shared by every client of the token in this process.
        self._pacer = (
            shared_pace(
                self.vendor,
                f"{self._base}\0{api_token}\0members/create",
                [Window("post", 1, post_interval)],
                hold=True,
                across_processes=False,
                margin=0,
                clock=clock,
                sleep=sleep,
            )
            if post_interval > 0
            else None
        )
        self._custom: dict[str, CustomField] | None = None
        self._groups: dict[str, int] | None = None
        self._unsubscribed: dict[str, RemoteMember] | None = None  # CI-A5, by lowercase email
        self._figures = {"consents_sent": 0, "consents_kept_stronger": 0, "batches": 0}

    @property
    def label(self) -> str:
        return f"cyberimpact account {self._account}"

    # --- TargetClient --------------------------------------------------------------------------

    def check_connection(self) -> None:
        """`GET /ping` (CI-A1): the token must work *and* open the configured account."""
        found = self._get("/ping", endpoint="ping", validate=_ping_account)
        if _same_name(found) != _same_name(self._account):
            raise AccountMismatch(
                self.vendor,
                200,
                f"the API token opens cyberimpact account {found!r}, but the integration file "
                f"names account {self._account!r}",
            )

    def target_fields(self) -> dict[str, ListField]:
        """Standard member fields, every custom field by its name (one `GET /customfields`),
        and the consent inputs `consentDate`/`consentProof` (CI-A10)."""
        return list_fields(self._custom_fields(refresh=True))

    def create_fields(self, fields: Mapping[str, str]) -> list[str]:
        """`POST /customfields` per missing name (CI-A8), in the order given; names the account
        has already are skipped. Once the plan's limit answers 422 nothing more is tried, and a
        VendorError names every field not made (after the ones that fitted were created)."""
        existing = self._custom_fields(refresh=True)
        created: list[str] = []
        failed: list[str] = []
        refusal: VendorError | None = None
        for name, kind in fields.items():
            if name in existing:
                continue
            if refusal is not None and refusal.status == 422:
                failed.append(name)
                continue
            if kind not in CUSTOM_TYPES:
                failed.append(f"{name} (type {kind!r} is not one of {', '.join(CUSTOM_TYPES)})")
                continue
            try:
                spec = self._create_field(name, kind)
            except VendorError as exc:
                if not is_refusal(exc) or exc.status in _AUTH_FAILURES:
                    raise
                refusal = exc
                failed.append(name)
                continue
            existing[name] = spec
            created.append(name)
        if failed:
            why = refusal.message if refusal is not None else "refused"
            raise VendorError(
                self.vendor,
                refusal.status if refusal is not None else 400,
                f"{self.label}: {why}; custom fields not created: {', '.join(failed)}"
                + (f" (created: {', '.join(created)})" if created else ""),
            )
        return created

    def write_members(
        self, changes: Sequence[MemberChange], policy: WritePolicy
    ) -> Iterator[MemberAck]:
        """Removals one DELETE each; creates and updates one by one below `batch_threshold`,
        else as addMembers batches (CI-A4). None values are left out on both paths, so
        Cyberimpact keeps what it holds for them (see cyberimpact_wire.wire_member)."""
        if policy.match_on != "email":
            raise ValueError(f"cyberimpact recognises members by email, not {policy.match_on!r}")
        try:
            unsubscribed = self._unsubscribed_emails() if changes else {}
        except VendorError as exc:  # without the list no write is safe (CI-A5)
            if exc.status in _AUTH_FAILURES:
                raise
            yield from (_error(change, exc.message) for change in changes)
            return
        upserts: list[MemberChange] = []
        for change in changes:
            gone = unsubscribed.get(_key(change))
            if change.action == "remove":
                yield self._remove(change) if gone is None else _kept(change)
            elif gone is not None:
                yield _unsubscribed_ack(change, gone)
            elif ruled_out(change, policy.import_type):
                yield MemberAck(change.match_key, "import_type", change.member_id)
            else:
                upserts.append(change)
        if not upserts:
            return
        try:  # the account's custom fields and group ids, read (and made) once for the call
            writes = [self._prepare(change) for change in upserts]
            self._resolve_groups({t for w in writes for t in w.gained})
            self._known_groups({t for w in writes for t in w.change.groups_removed})
        except VendorError as exc:
            if exc.status in _AUTH_FAILURES:
                raise
            yield from (_error(change, exc.message) for change in upserts)
            return
        # An addMembers batch sets a consent on every member it touches (its relation type,
        # dated today by default): a member without a consent date of its own never goes in
        # one, so no consent is made up for it; it is written one by one (PATCH keeps consent).
        batchable = [w for w in writes if CONSENT_DATE in w.wire.consent]
        if len(batchable) < self._batch_threshold or policy.import_type != "create_and_update":
            yield from self._write_one_by_one(writes, policy)
            return
        yield from self._write_in_batches(batchable, policy)
        single = [w for w in writes if CONSENT_DATE not in w.wire.consent]
        if single:
            yield from self._write_one_by_one(single, policy)

    def iter_members(self, changed_since: datetime | None) -> Iterator[RemoteMember]:
        """Unsubscribes, then bounces, since `changed_since` (CI-A11); with None also every
        member as active. One RemoteMember per email: unsubscribed wins over active, and a
        bounce marks the email status of whichever it is. A bounce row says nothing of the
        subscription: a bounced member who unsubscribed before this window is found in the
        account's whole unsubscribed list (read afresh, once a call, only when such a bounce
        comes), so the read never reports them active."""
        found: dict[str, RemoteMember] = {}
        for member in self._unsubscribes(changed_since):
            found.setdefault(member.email or "", member)
        everyone: dict[str, RemoteMember] | None = None  # the whole unsubscribed list
        for member in self._bounces(changed_since):
            key = member.email or ""
            known = found.get(key)
            if known is None and changed_since is not None and member.email:
                if everyone is None:
                    self._unsubscribed = None  # fresher than the copy kept for the writes
                    everyone = self._unsubscribed_emails()
                known = everyone.get(member.email)
            found[key] = member if known is None else _merged(known, member)
        if changed_since is None:
            for raw in self._pages("/members", "members", {"status": "all"}):
                member = parse_member(raw)
                found.setdefault(member.email or "", member)
        yield from found.values()

    def has_member_changes(self, changed_since: datetime | None) -> bool:
        """Any unsubscribe or bounce at or after `changed_since`? The lists filter by whole
        days, so the items' own timestamps are compared: one morning unsubscribe does not make
        every tick of the day start a run, and a row without a timestamp is no change (it would
        be one forever)."""
        if changed_since is None:
            return True
        unsubscribes = self._unsubscribes(changed_since, stamped_only=True)
        return any(True for _ in unsubscribes) or any(
            True for _ in self._bounces(changed_since, stamped_only=True)
        )

    def member_count(self) -> int | None:
        """`totalCount` of a one-member page of `GET /members?status=all`."""
        body = self._get(
            "/members",
            endpoint="members",
            validate=_page("members"),
            params={"limit": 1, "status": "all"},
        )
        return body["totalCount"]

    def run_figures(self) -> dict[str, int]:
        """Consent records sent, those where a stronger consent was kept (422), batches sent."""
        return dict(self._figures)

    def close(self) -> None:
        self._http.close()

    # --- writing: shared -----------------------------------------------------------------------

    def _prepare(self, change: MemberChange) -> _Write:
        names = [n for n in change.values if n not in _KNOWN_WITHOUT_CUSTOM]
        custom = self._custom_fields() if names else {}
        wire = wire_member(_key(change), change.values, custom)
        return _Write(change, wire, _gained(change))

    def _remove(self, change: MemberChange) -> MemberAck:
        """DELETE the member (withdrawal = delete); a 404 means it is gone already."""
        try:
            self._http.request(
                "DELETE", self._member_url(_key(change)), endpoint="members/delete", **self._h()
            )
        except VendorError as exc:
            if exc.status == 404:
                return MemberAck(change.match_key, "removed", change.member_id)
            return self._failed(change, exc)
        return MemberAck(change.match_key, "removed", change.member_id)

    def _failed(self, change: MemberChange, exc: VendorError) -> MemberAck:
        """A refusal is the member's ack (CI-A13); a failed host is an `error` (sent again)."""
        if exc.status in _AUTH_FAILURES:
            raise exc
        refused = is_refusal(exc) and not isinstance(exc, UncertainOutcome)
        outcome = "refused" if refused else "error"
        return MemberAck(change.match_key, outcome, change.member_id, reason=exc.message)

    def _after_write(self, write: _Write, batched: bool = False) -> None:
        """Group removals and the consent call of a member just created or updated. A member
        just created holds no consent of ours yet, whatever the core thought had changed (an
        update whose member was gone is POSTed), so it always gets its consent."""
        for title in write.change.groups_removed:
            group_id = (self._groups or {}).get(title)
            if group_id is not None:
                self._leave_group(write.wire.email, group_id)
        self._send_consent(write, always=batched or write.outcome == "created")

    def _leave_group(self, email: str, group_id: int) -> None:
        """`DELETE /members/{email}/groups/{id}` (CI-A4); not a member of it (404) is fine."""
        try:
            self._http.request(
                "DELETE",
                f"{self._member_url(email)}/groups/{group_id}",
                endpoint="members/groups/delete",
                **self._h(),
            )
        except VendorError as exc:
            if exc.status != 404:
                raise

    def _send_consent(self, write: _Write, always: bool = False) -> None:
        """CI-A10: when `consentDate` is known and the consent inputs changed (or the core can't
        tell), PUT it; a 422 means a stronger consent is stored, which is kept and is success.

        `always` after a batch: an addMembers batch must name a relation type and sets a
        default consent (today) on the members it touches, so each member's own consent is put
        back whether or not its inputs changed."""
        consent, changed = write.wire.consent, write.change.changed
        if CONSENT_DATE not in consent:
            return
        if (
            not always
            and changed is not None
            and not ({CONSENT_DATE, CONSENT_PROOF} & set(changed))
        ):
            return
        body = {
            "relationType": RELATION_TYPE,
            "consentDate": consent[CONSENT_DATE],
            "consentProof": consent.get(CONSENT_PROOF, ""),
        }
        try:
            self._http.request(
                "PUT",
                f"{self._member_url(write.wire.email)}/consent",
                endpoint="members/consent",
                json=body,
                **self._h(),
            )
        except VendorError as exc:
            if exc.status != 422:
                if is_refusal(exc) and exc.status not in _AUTH_FAILURES:
                    write.dropped.append((CONSENT_DATE, f"consent not recorded: {exc.message}"))
                    return
                raise
            self._figures["consents_kept_stronger"] += 1
            log.info("cyberimpact kept a stronger consent for a member: %s", exc.message)
        self._figures["consents_sent"] += 1

    # --- writing: one by one -------------------------------------------------------------------

    def _write_one_by_one(self, writes: list[_Write], policy: WritePolicy) -> Iterator[MemberAck]:
        """CI-A4 below the threshold; once the host failed after its retries, the members left
        get `error` acks without a try (they are sent again next run)."""
        down: VendorError | None = None
        for write in writes:
            if down is not None:
                yield _error(write.change, down.message)
                continue
            try:
                self._write_one(write, policy)
                if write.outcome in ("created", "updated"):
                    self._after_write(write)
            except VendorError as exc:
                if exc.status == 0 and not isinstance(exc, UncertainOutcome):
                    down = exc
                ack = self._failed(write.change, exc)
                write.outcome, write.reason = ack.outcome, ack.reason
            yield write.ack()

    def _write_one(self, write: _Write, policy: WritePolicy) -> None:
        """PATCH, and POST when the member is not there; a create-only import POSTs first."""
        if policy.import_type == "create_only":
            if self._post_member(write) == "exists":
                write.outcome = "import_type"
            return
        if self._patch_member(write):
            return
        if policy.import_type == "update_only":
            write.outcome = "import_type"
        elif self._post_member(write) == "exists" and not self._patch_member(write):
            write.outcome, write.reason = "error", "member neither found nor creatable"

    def _patch_member(self, write: _Write) -> bool:
        """`PATCH /members/{email}`, then the groups it gains; False when it is not there."""
        try:
            answer = self._http.request(
                "PATCH",
                self._member_url(write.wire.email),
                endpoint="members/patch",
                idempotent=True,  # a partial update sets the same values however often sent
                json=write.wire.body(with_email=False),
                **self._h(),
            )
        except VendorError as exc:
            if exc.status == 404:
                return False
            if exc.status == 409 and _is_unsubscribed(exc):  # CI-A5: unsubscribed meanwhile
                write.outcome, write.reason = "unsubscribed", exc.message
                return True
            raise
        ids = self._group_ids(write.gained)
        if ids:
            self._http.request(
                "POST",
                f"{self._member_url(write.wire.email)}/groups",
                endpoint="members/groups",
                idempotent=True,  # additive: adding a group twice leaves it once
                json={"groups": ",".join(map(str, ids))},
                **self._h(),
            )
        write.outcome, write.member_id = "updated", _id_of(_lenient_json(answer))
        return True

    def _post_member(self, write: _Write) -> str:
        """`POST /members` with every group (CSV of ids), paced to 1/s (CI-A6); returns
        "created", "unsubscribed" or "exists" (CI-A5)."""
        body = write.wire.body(with_email=True)
        ids = self._group_ids(write.change.groups or write.gained)
        if ids:
            body["groups"] = ",".join(map(str, ids))
        if self._pacer is not None:
            self._pacer.acquire(self.calls)
        try:
            answer = self._http.request(
                "POST", f"{self._base}/members", endpoint="members/create", json=body, **self._h()
            )
        except VendorError as exc:
            if exc.status == 409:
                if _is_unsubscribed(exc):
                    write.outcome, write.reason = "unsubscribed", exc.message
                    return "unsubscribed"
                return "exists"
            raise
        finally:
            if self._pacer is not None:
                self._pacer.release()
        write.outcome, write.member_id = "created", _id_of(_lenient_json(answer))
        return "created"

    # --- writing: batches ----------------------------------------------------------------------

    def _write_in_batches(self, writes: list[_Write], policy: WritePolicy) -> Iterator[MemberAck]:
        """CI-A4 from the threshold on: per chunk of 1000 one addMembers batch with the fields
        and the groups every member of the chunk gains, all submitted, then polled together.
        Only then, for the members those batches accepted, emails-only batches for the other
        groups gained, each carrying every group its members share (`group_cover`; batch groups
        are batch-level and additive; an emails-only item would create a member its own batch
        refused). Then group removals and consent per member that came through: each member's
        consent date and proof are its own, and a batch's consent is batch-wide (CI-A10). A
        chunk whose batch is refused whole (a 4xx) is written one by one, so each member gets
        its own verdict."""
        mains: list[tuple[_Job, set[str]]] = []  # each chunk's batch, the groups it carried
        one_by_one: list[_Write] = []
        for start in range(0, len(writes), BATCH_SIZE):
            chunk = writes[start : start + BATCH_SIZE]
            common = set.intersection(*(set(w.gained) for w in chunk))
            body = {"members": [w.wire.body(with_email=True) for w in chunk]}
            job = self._submit(chunk, body | {"groups": self._group_ids(sorted(common))})
            if job[0] is None and (job[2] or "").startswith("refused: "):
                one_by_one += chunk
            else:
                mains.append((job, common))
        verdicts = self._verdicts([job for job, _ in mains], {})
        groups: list[_Job] = []
        for (_, members, _), common in mains:
            accepted = [w for w in members if verdicts[id(w)][0] == "ok"]
            groups += self._submit_groups(accepted, common)
        verdicts = self._verdicts(groups, verdicts)
        for _, members, _ in (job for job, _ in mains):
            for write in members:
                yield self._batch_ack(write, *verdicts[id(write)])
        yield from self._write_one_by_one(one_by_one, policy)

    def _verdicts(self, jobs: list[_Job], verdicts: dict[int, _Verdict]) -> dict[int, _Verdict]:
        """Poll `jobs`, then each member's verdict (by id(write)): a member keeps the first
        verdict that is not "ok" (a refused group batch is that member's refusal)."""
        finished = self._poll([job_id for job_id, _, _ in jobs if job_id is not None])
        for job_id, members, why in jobs:
            done = finished.get(job_id) if job_id is not None else None
            for write in members:
                if verdicts.get(id(write), ("ok",))[0] == "ok":
                    verdicts[id(write)] = _batch_verdict(write, done, why)
        return verdicts

    def _submit_groups(self, accepted: list[_Write], common: set[str]) -> list[_Job]:
        """Emails-only addMembers batches for the groups the accepted members gain beyond
        `common` (which their own batch carried): a batch-level `groups` list is additive and
        applies to every member of the batch, so one batch may carry several groups for the
        members who all gain them (see `group_cover`), not one batch per group."""
        needs = [set(w.gained) - common for w in accepted]
        jobs = []
        for members, titles in group_cover(needs):
            gaining = [accepted[n] for n in members]
            body = {"members": [{"email": w.wire.email} for w in gaining]}
            jobs.append(self._submit(gaining, body | {"groups": self._group_ids(titles)}))
        return jobs

    def _batch_ack(
        self, write: _Write, state: str, reason: str | None, member_id: str | None
    ) -> MemberAck:
        if state == "ok":
            write.outcome = "created" if write.change.action == "create" else "updated"
            write.member_id = member_id
            try:
                self._after_write(write, batched=True)
            except VendorError as exc:
                ack = self._failed(write.change, exc)
                write.outcome, write.reason = ack.outcome, ack.reason
        else:
            write.outcome, write.reason = state, reason
        return write.ack()

    def _submit(self, members: list[_Write], body: dict[str, Any]) -> _Job:
        """`POST /batches` addMembers; a failure leaves its members without a verdict."""
        payload = {"batchType": "addMembers", "relationType": RELATION_TYPE, **body}
        if not payload["groups"]:
            del payload["groups"]
        try:
            answer = self._http.request_json(
                "POST",
                f"{self._base}/batches",
                endpoint="batches",
                validate=_new_id,
                json=payload,
                **self._h(),
            )
        except VendorError as exc:
            if exc.status in _AUTH_FAILURES:
                raise
            refused = is_refusal(exc) and not isinstance(exc, UncertainOutcome)
            return None, members, ("refused: " if refused else "error: ") + exc.message
        self._figures["batches"] += 1
        return answer, members, None

    def _poll(self, batch_ids: list[int]) -> dict[int, _Finished]:
        """Every `poll_seconds`, `GET /batches/{id}?showErrorDetails=true` for the batches still
        NEW or PROCESSING, until `poll_timeout` seconds have passed; the finished ones by id
        (any other status is finished, whether or not it carries a result). A batch still
        running at the deadline is left out: its members get `error` acks (sent again)."""
        waiting, finished = list(batch_ids), {}
        deadline = self._clock() + self._poll_timeout
        while waiting and self._clock() < deadline:
            self._sleep(self._poll_seconds)
            for batch_id in list(waiting):
                try:
                    body = self._get(
                        f"/batches/{batch_id}",
                        endpoint="batches/poll",
                        validate=_batch_status,
                        params={"showErrorDetails": "true"},
                    )
                except VendorError as exc:
                    if exc.status in _AUTH_FAILURES:
                        raise
                    if is_refusal(exc):  # e.g. the batch is unknown: its members get no verdict
                        waiting.remove(batch_id)
                    continue  # the host is down for now: try again next round
                status = body["status"].strip().upper()
                if status not in _RUNNING:
                    finished[batch_id] = _Finished(status, _batch_result(body.get("result")))
                    waiting.remove(batch_id)
        return finished

    # --- groups and custom fields --------------------------------------------------------------

    def _known_groups(self, titles: set[str]) -> dict[str, int]:
        """The account's static groups by title, read once per client when `titles` need one
        (a removal needs the id of a group this client may not have made)."""
        if self._groups is None and titles:
            groups: dict[str, int] = {}
            for raw in self._pages("/groups", "groups", {}):
                group_id = _as_id(raw.get("id"))  # a row without a usable id is no target
                if not raw.get("isDynamic") and isinstance(raw.get("title"), str) and group_id:
                    groups.setdefault(raw["title"], group_id)
            self._groups = groups
        return self._groups or {}

    def _resolve_groups(self, titles: set[str]) -> None:
        """Ids for every title; a missing one is created as a static group (CI-A7). After a
        POST whose answer was lost the titles are read again next time (the group may exist
        now, and a second POST would make a duplicate)."""
        if not titles:
            return
        self._known_groups(titles)
        assert self._groups is not None
        for title in sorted(titles - set(self._groups)):
            try:
                answer = self._http.request_json(
                    "POST",
                    f"{self._base}/groups",
                    endpoint="groups/create",
                    validate=_new_id,
                    json={"title": title, "isPublic": False},
                    **self._h(),
                )
            except UncertainOutcome:
                self._groups = None
                raise
            self._groups[title] = answer

    def _group_ids(self, titles: Sequence[str]) -> list[int]:
        groups = self._groups or {}
        return sorted({groups[t] for t in titles if t in groups})

    def _custom_fields(self, refresh: bool = False) -> dict[str, CustomField]:
        """The account's custom fields by name (CI-A8), read once unless `refresh`."""
        if self._custom is None or refresh:
            body = self._get("/customfields", endpoint="customfields", validate=_custom_fields)
            self._custom = {spec.name: spec for spec in body}
        return self._custom

    def _create_field(self, name: str, kind: str) -> CustomField:
        answer = self._http.request_json(
            "POST",
            f"{self._base}/customfields",
            endpoint="customfields/create",
            validate=_new_id,
            json={"name": name, "type": kind},
            **self._h(),
        )
        spec = CustomField(answer, name, kind)
        if self._custom is not None:
            self._custom[name] = spec
        return spec

    # --- reading -------------------------------------------------------------------------------

    def _unsubscribed_emails(self) -> dict[str, RemoteMember]:
        """CI-A5: every unsubscribed email of the account (all pages), read once per client,
        i.e. once per run, before its first write."""
        if self._unsubscribed is None:
            found: dict[str, RemoteMember] = {}
            for member in self._unsubscribes(None):
                if member.email:
                    found.setdefault(member.email, member)
            self._unsubscribed = found
        return self._unsubscribed

    def _unsubscribes(
        self, since: datetime | None, stamped_only: bool = False
    ) -> Iterator[RemoteMember]:
        stamp: Callable[[Mapping[str, Any]], datetime | None] = _unsubscribed_on
        for raw in self._since("/members/unsubscribed", "unsubscribedOn", stamp, since):
            when = stamp(raw)
            if when is not None or not stamped_only:
                yield parse_member(raw, status="unsubscribed", unsubscribed_at=when)

    def _bounces(
        self, since: datetime | None, stamped_only: bool = False
    ) -> Iterator[RemoteMember]:
        for raw in self._since("/members/bounced", "bouncedOn", bounce_stamp, since):
            if not stamped_only or bounce_stamp(raw) is not None:
                yield parse_member(raw, email_status="hard_bounce")

    def _since(
        self,
        path: str,
        fltr: str,
        stamp: Callable[[Mapping[str, Any]], datetime | None],
        since: datetime | None,
    ) -> Iterator[dict[str, Any]]:
        """The list's rows at or after `since` (and those without a timestamp). Its filter
        `<fltr>From` takes a day on the account's own clock, so a day early is asked (no zone
        can then hide a row) and each row's own timestamp decides."""
        params: dict[str, Any] = {}
        if since is not None:
            params[f"{fltr}From"] = _day_before(since).isoformat()
        for raw in self._pages(path, "members", params):
            when = stamp(raw)
            if since is None or when is None or when >= as_utc(since):
                yield raw

    def _pages(self, path: str, items: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """CI-A2: page by page (`limit` = the section's `page_size`) until the rows seen reach
        `totalCount`, or a page is empty (a count that is off never loops forever)."""
        size = self._page_size or PAGE_SIZE
        pages = paging.page_numbers(
            lambda page: self._get(
                path,
                endpoint=path.strip("/"),
                validate=_page(items),
                params={**params, "page": page, "limit": size},
            ),
            lambda body: body[items],
            page_size=size,
            total=lambda body: body["totalCount"],
        )
        for rows in pages:
            yield from rows

    # --- plumbing ------------------------------------------------------------------------------

    def _member_url(self, email: str) -> str:
        """CI-A3: the lowercase email, URL-encoded (`@` too)."""
        return f"{self._base}/members/{quote(email.strip().lower(), safe='')}"

    def _h(self) -> dict[str, Any]:
        return {"headers": self._headers}

    def _get(self, path: str, *, endpoint: str, **kwargs: Any) -> Any:
        return self._http.get_json(
            f"{self._base}{path}", endpoint=endpoint, headers=self._headers, **kwargs
        )


# --- pure helpers --------------------------------------------------------------------------------

_KNOWN_WITHOUT_CUSTOM = frozenset(
    {"email", "firstname", "lastname", "gender", "language", "birthdate", "postalCode", "country",
     "company", "note", CONSENT_DATE, CONSENT_PROOF}
)  # fmt: skip


def _key(change: MemberChange) -> str:
    """CI-A3: the member's email, lowercase (the match key, or its `email` value)."""
    value = change.match_key or change.values.get("email") or ""
    return str(value).strip().lower()


def _gained(change: MemberChange) -> tuple[str, ...]:
    """Group titles a write must add: all current ones for a create, else those added."""
    if change.action == "create" and change.groups is not None:
        return tuple(change.groups)
    return tuple(change.groups_added)


def _error(change: MemberChange, reason: str) -> MemberAck:
    return MemberAck(change.match_key, "error", change.member_id, reason=reason)


def _unsubscribed_ack(change: MemberChange, gone: RemoteMember) -> MemberAck:
    """CI-A5: a create or update of an unsubscribed email, acked without a call."""
    return MemberAck(
        change.match_key,
        "unsubscribed",
        gone.member_id or change.member_id,
        reason="unsubscribed at Cyberimpact",
        remote=gone,
        checked=True,  # the unsubscribed list was read for this run
    )


def _kept(change: MemberChange) -> MemberAck:
    """CI-A5: a removal of an unsubscribed email is skipped: deleting the member would erase
    its unsubscribe, and a later create could then resubscribe it."""
    return MemberAck(change.match_key, "removed", change.member_id, reason=_KEPT_UNSUBSCRIBED)


def _is_unsubscribed(exc: VendorError) -> bool:
    """A 409 that says the email is unsubscribed, in its message or `errors.email` (CI-A5)."""
    errors = exc.body.get("errors") if isinstance(exc.body, dict) else None
    email = errors.get("email") if isinstance(errors, dict) else None
    said = [exc.message, *(email if isinstance(email, list) else [email])]
    return any("unsubscribed" in str(text).lower() for text in said if text)


def _same_name(name: str) -> str:
    """An account name as compared (CI-A1): NFC, stripped, casefolded."""
    return unicodedata.normalize("NFC", name).strip().casefold()


def _lenient_json(response: httpx.Response) -> Any:
    """The JSON body of a write's answer, or None when it is empty (204, an empty 200) or not
    JSON: the write is done either way, and its answer only adds the member id."""
    if response.status_code == 204 or not response.content.strip():
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _merged(known: RemoteMember, bounce: RemoteMember) -> RemoteMember:
    stamps = [s for s in (known.updated_at, bounce.updated_at) if s is not None]
    return RemoteMember(
        member_id=known.member_id or bounce.member_id,
        email=known.email,
        mobile=None,
        status=known.status,
        email_status=bounce.email_status,
        unsubscribed_at=known.unsubscribed_at,
        updated_at=max(stamps) if stamps else None,
        fields=known.fields or bounce.fields,
    )


def group_cover(needs: Sequence[set[str]]) -> list[tuple[list[int], list[str]]]:
    """Batches `(member indexes, group titles)` that together give every member `n` each title
    of `needs[n]` and no other (batch-level groups are additive: a member may be given a group
    twice, never one it does not gain). Greedy: every title proposes the batch of its members
    with the titles all of them gain; the batch giving the most (member, title) pairs not given
    yet is taken, restricted to the members it still gives something, until none is left. Each
    round gives at least one pair (a title's own batch gives its pending pairs), so there are
    at most as many batches as titles; nested groups (activity within its subcategory, category
    and program) then share one batch."""
    pending = [set(need) for need in needs]
    holders: dict[str, list[int]] = {}
    for n, need in enumerate(needs):
        for title in need:
            holders.setdefault(title, []).append(n)
    proposals = {
        title: (members, set.intersection(*(set(needs[n]) for n in members)))
        for title, members in holders.items()
    }
    batches: list[tuple[list[int], list[str]]] = []
    while any(pending):
        gain, title = max(
            (sum(len(pending[n] & titles) for n in members), title)
            for title, (members, titles) in proposals.items()
        )
        members, titles = proposals.pop(title)
        chosen = [n for n in members if pending[n] & titles]
        for n in chosen:
            pending[n] -= titles
        batches.append((chosen, sorted(titles)))
    return batches


def _batch_verdict(write: _Write, done: _Finished | None, why: str | None) -> _Verdict:
    """("ok" | "refused" | "unsubscribed" | "error", reason, member id) of one member in one
    batch's `result: {successes: [{email, id}], errors: [{email, message}]}` (CI-A4). A batch
    not finished, or finished without a result, judged no one: `error` (sent again)."""
    if done is None:
        if why and why.startswith("refused: "):
            return "refused", why.removeprefix("refused: "), None
        reason = why or "error: the batch did not finish in time"
        return "error", reason.removeprefix("error: "), None
    if done.result is None:
        return "error", f"the batch ended {done.status} without a result", None
    email = write.wire.email
    for item in _items(done.result, "errors"):
        if str(item.get("email", "")).lower() == email:
            message = str(item.get("message") or "refused in the batch")
            state = "unsubscribed" if "unsubscribed" in message.lower() else "refused"
            return state, message, None
    for item in _items(done.result, "successes"):
        if str(item.get("email", "")).lower() == email:
            return "ok", None, _id_of(item)
    return "error", "the batch result does not name this member", None


def _items(result: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The objects of `result[key]` when it is a list; nothing otherwise."""
    found = result.get(key)
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


def _batch_result(raw: Any) -> dict[str, Any] | None:
    """A batch's `result` as an object: None when absent; a JSON text is read; anything else
    that is no object is an empty result (which names no member)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) else {}


def _as_id(value: Any) -> int | None:
    """An id sent as a number or as digits (`12` or `"12"`); None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _id_of(body: Any) -> str | None:
    found = _as_id(body.get("id")) if isinstance(body, dict) else None
    return str(found) if found is not None else None


def _unsubscribed_on(raw: Mapping[str, Any]) -> datetime | None:
    return parse_stamp(raw.get("unsubscribedOn"))


def _day_before(moment: datetime) -> date:
    return (as_utc(moment) - timedelta(days=1)).date()


def _ping_account(body: Any) -> str:
    """CI-A1 `{ping: "success", username, email, account}` -> the account name."""
    if not isinstance(body, dict) or body.get("ping") != "success" or not body.get("account"):
        raise ValueError("ping answer without ping=success and an account")
    return str(body["account"])


def _page(items: str) -> Callable[[Any], dict[str, Any]]:
    """CI-A2 `{<items>: [...], totalCount, page, limit}`; anything else is unreadable."""

    def check(body: Any) -> dict[str, Any]:
        ok = isinstance(body, dict) and isinstance(body.get(items), list)
        numbers = {k: _as_id(body.get(k)) for k in ("totalCount", "limit")} if ok else {}
        if not ok or None in numbers.values() or numbers["limit"] < 1:
            raise ValueError(f"page without {items}, totalCount and limit")
        body |= numbers  # digit strings read as numbers
        body[items] = [row for row in body[items] if isinstance(row, dict)]
        return body

    return check


def _new_id(body: Any) -> int:
    """The `id` of a created batch, group or custom field (a number or digits)."""
    found = _as_id(body.get("id")) if isinstance(body, dict) else None
    if found is None:
        raise ValueError("answer without an integer id")
    return found


def _batch_status(body: Any) -> dict[str, Any]:
    """A batch with a `status` text (in any case; see `_poll`)."""
    if not isinstance(body, dict) or not str(body.get("status") or "").strip():
        raise ValueError("batch answer without a status")
    body["status"] = str(body["status"])
    return body


def _custom_fields(body: Any) -> list[CustomField]:
    """CI-A8 `{customFields: [{id, name, type}]}`."""
    rows = body.get("customFields") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        raise ValueError("answer without customFields")
    return [
        CustomField(field_id, str(r["name"]), str(r.get("type") or "text"))
        for r in rows
        if isinstance(r, dict) and (field_id := _as_id(r.get("id"))) is not None and r.get("name")
    ]


# --- integration file section and Dagster resource ---------------------------------------------


class CyberimpactResource(dg.ConfigurableResource):
    """Cyberimpact settings with the token as `dg.EnvVar`, resolved only when a client is built."""

    account: str
    base_url: str
    api_token: str
    poll_seconds: float = 5.0
    batch_threshold: int = 50
    poll_timeout_seconds: float = POLL_TIMEOUT
    page_size: int = PAGE_SIZE
    post_interval_seconds: float = POST_INTERVAL
    requests_per_second: float | None = REQUESTS_PER_SECOND

    def client(self) -> CyberimpactClient:
        return CyberimpactClient(
            base_url=self.base_url,
            account=self.account,
            api_token=resolve_secret(self.api_token, "cyberimpact api_token") or "",
            poll_seconds=self.poll_seconds,
            batch_threshold=self.batch_threshold,
            poll_timeout=self.poll_timeout_seconds,
            page_size=self.page_size,
            post_interval=self.post_interval_seconds,
            requests_per_second=self.requests_per_second,
        )


class CyberimpactTarget(TargetSectionBase):
    """`target:` section with `kind: cyberimpact`; the token is an env var name (CI-A1)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["cyberimpact"]
    account: str = Field(min_length=1)  # the `account` GET /ping reports, checked on ping
    base_url: HttpUrlStr = DEFAULT_BASE_URL
    api_token_env: EnvVarName
    poll_seconds: float = Field(default=5.0, gt=0)  # CI-A4
    batch_threshold: int = Field(default=50, ge=1)  # CI-A4
    poll_timeout_seconds: float = Field(default=POLL_TIMEOUT, gt=0)  # CI-A4: a batch's deadline
    page_size: int = Field(default=PAGE_SIZE, ge=1, le=10_000)  # CI-A2: the `limit` asked for
    # client-side pacing (CI-A6, assumed): 1 POST /members per this many seconds, and this many
    # other calls a second, per token; 0 (or null for the rate) turns each off
    post_interval_seconds: float = Field(default=POST_INTERVAL, ge=0)
    requests_per_second: float | None = Field(default=REQUESTS_PER_SECOND, ge=0)

    @property
    def destination(self) -> str:
        """Cyberimpact keeps one member list per account."""
        return self.account

    def env_vars(self) -> list[str]:
        return [self.api_token_env]

    def resource(self) -> CyberimpactResource:
        return CyberimpactResource(
            account=self.account,
            base_url=self.base_url,
            api_token=dg.EnvVar(self.api_token_env),
            poll_seconds=self.poll_seconds,
            batch_threshold=self.batch_threshold,
            poll_timeout_seconds=self.poll_timeout_seconds,
            page_size=self.page_size,
            post_interval_seconds=self.post_interval_seconds,
            requests_per_second=self.requests_per_second,
        )
