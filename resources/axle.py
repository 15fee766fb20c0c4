"""Axle-CRM target client: clients upserted in batches, deleted by id, listed back (AX-A1..AX-A4).

No public Axle API exists, so this follows memberflow's designed contract, labelled AX-A*:

- AX-A1: `Authorization: Bearer <key>`, a long-lived key; `GET /ping` names the key's account,
  and the connection check fails unless it is the account the integration file names.
- AX-A2: the client object; values are turned from canonical form into Axle's wire form in
  resources/axle_wire.py (E.164 phone as is, `YYYY-MM-DD` birthday, ISO datetimes with offset,
  JSON numbers and booleans). Groups become the client's `tags`, all of them on every write.
- AX-A3: `POST /clients/batch` (at most 500 clients, one result per item) matched by `phone`
  (canonical `mobile`) or `external_id`; fields not sent are kept. An upsert ends in the same
  state however often it is sent, so a batch whose answer was lost is simply sent again.
  `DELETE /clients/{id}` takes a client off (withdrawal = delete; 404 means already gone).
  `GET /clients` with `updated_since`/`limit`/`offset` and a `meta.size` total lists them back.
- AX-A4: errors as `{"error": {code, message, details}}`; 5 requests per second per key, kept
  *before* sending (resources/axle_pace.py), and a 429's Retry-After honoured all the same.

Known limitation (AX-A3): `cards` are merged by (`source`, `user_id`), so an upsert can add or
change a card but never take one off a client. A card deleted at the source therefore stays on
its client until the client itself goes: the core removes (deletes) a client when it holds no
other card, which is the only case the contract allows for.

A 409 (another client already has this phone) on a client matched by `external_id` is resolved by
sending that client once more without `phone`: the client is kept, and its ack names the dropped
phone and why. Matched *by* phone, a 409 is a refusal (two clients hold the phone already).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import dagster as dg
import httpx
from pydantic import ConfigDict, Field

from resources import paging
from resources.axle_pace import shared_pacer
from resources.axle_wire import WRITABLE_FIELDS, parse_client, wire_client
from resources.base import ListField, RemoteMember, VendorError
from resources.http import EnvVarName, HttpUrlStr, VendorHttp, as_utc, resolve_secret
from resources.pacing import Pace
from resources.registry import TargetSectionBase
from resources.target import (
    MemberAck,
    MemberChange,
    TargetCapabilities,
    TargetClient,
    WritePolicy,
    ruled_out,
)

MAX_BATCH = 500  # AX-A3: clients per POST /clients/batch
PAGE_SIZE = 500  # AX-A3: the largest `limit` of GET /clients
REQUESTS_PER_SECOND = 5  # AX-A4, per key
MATCH_BY = {"mobile": "phone", "external_id": "external_id"}  # canonical match_on -> AX-A3
CLIENT_BASE = "clients"  # Axle keeps one client base per account (see AxleTarget.list_id)
_TRANSIENT = frozenset({0, 429})  # besides 5xx: no verdict, the members are sent again later


class AccountMismatch(VendorError):
    """The key works, but opens another Axle account than the integration file names."""

    def summary(self) -> str:
        return f"{self.vendor}: {self.message}"


@dataclass
class _Pending:
    """One upsert on its way: the change, the client as sent, and fields left out so far."""

    change: MemberChange
    client: dict[str, Any]
    dropped: list[tuple[str, str]]


class AxleClient(TargetClient):
    """Thread-safe: the only shared state is the VendorHttp and the per-key pacer."""

    vendor: ClassVar[str] = "axle"
    capabilities: ClassVar[TargetCapabilities] = TargetCapabilities(
        match_keys=frozenset({"mobile", "external_id"}),
        activity_feed=False,
        groups=True,  # as the client's `tags`
        consent=True,  # `consent_mailing`
        feedback="none",
        listing=True,
        withdrawal="delete",
    )
    batch_size: ClassVar[int] = MAX_BATCH

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        account: str,
        timeout: float | None = None,  # None: MEMBERFLOW_HTTP_TIMEOUT or 30 s
        max_tries: int = 5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        pacer: Pace | None | Literal["shared"] = "shared",  # None: no pacing (tests of 429)
        requests_per_second: float | None = REQUESTS_PER_SECOND,  # "shared" pacer's rate; 0: off
    ) -> None:
        self._base = base_url.rstrip("/")
        self._account = account
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        if pacer == "shared":
            rate = requests_per_second
            pacer = shared_pacer(self._base, api_key, rate) if rate else None
        self._http = VendorHttp(
            vendor=self.vendor,
            timeout=timeout,
            max_tries=max_tries,
            transport=transport,
            sleep=sleep,
            secrets=[api_key],
            pace=pacer,
        )
        self.calls = self._http.calls

    @property
    def label(self) -> str:
        return f"axle account {self._account}"

    # --- TargetClient --------------------------------------------------------------------------

    def check_connection(self) -> None:
        """`GET /ping` (AX-A1): the key must work *and* open the configured account."""
        body = self._get("/ping", endpoint="ping", validate=_ping_account)
        if body != self._account:
            raise AccountMismatch(
                self.vendor,
                200,
                f"the API key opens axle account {body!r}, but the integration file names "
                f"account {self._account!r}",
            )

    def target_fields(self) -> dict[str, ListField]:
        """The writable AX-A2 fields; Axle has no endpoint that lists them (the contract fixes
        them), so this spends no call."""
        return dict(WRITABLE_FIELDS)

    def write_members(
        self, changes: Sequence[MemberChange], policy: WritePolicy
    ) -> Iterator[MemberAck]:
        """Removals one DELETE each; upserts in batches of at most 500 (AX-A3)."""
        match_by = _match_by(policy.match_on)
        upserts: list[_Pending] = []
        for change in changes:
            if change.action == "remove":
                yield self._remove(change, match_by)
            elif ruled_out(change, policy.import_type):
                yield MemberAck(change.match_key, "import_type", change.member_id)
            else:
                upserts.append(_pending(change, match_by))
        for start in range(0, len(upserts), MAX_BATCH):
            yield from self._upsert_batch(upserts[start : start + MAX_BATCH], match_by)

    def iter_members(self, changed_since: datetime | None) -> Iterator[RemoteMember]:
        """Pages of 500 by offset until `meta.size` is reached (AX-A3)."""
        pages = paging.offsets(
            lambda offset, limit: self._clients_page(changed_since, limit, offset),
            lambda page: page[0],
            limit=PAGE_SIZE,
            total=lambda page: page[1],
        )
        for clients in pages:
            yield from (parse_client(raw) for raw in clients)

    def has_member_changes(self, changed_since: datetime | None) -> bool:
        return self._clients_page(changed_since, 1, 0)[1] > 0

    def member_count(self) -> int | None:
        """`meta.size` of a one-client page."""
        return self._clients_page(None, 1, 0)[1]

    def close(self) -> None:
        self._http.close()

    # --- writing -------------------------------------------------------------------------------

    def _upsert_batch(
        self, batch: list[_Pending], match_by: str, resend_without_phone: bool = True
    ) -> Iterator[MemberAck]:
        """One batch call; clients refused only for their phone go once more without it (and
        whatever that resend answers is final)."""
        try:
            results = self._post_batch(match_by, [p.client for p in batch])
        except VendorError as exc:
            if not _transient(exc):
                raise
            yield from (_error_ack(p, exc.message) for p in batch)
            return
        retry: list[_Pending] = []
        for index, pending in enumerate(batch):
            result = results.get(index)
            taken = result is not None and _phone_taken(result, match_by, pending.client)
            if resend_without_phone and taken:
                retry.append(_without_phone(pending, self._reason(result)))
            else:
                yield self._ack(pending, result)
        if retry:
            yield from self._upsert_batch(retry, match_by, resend_without_phone=False)

    def _post_batch(self, match_by: str, clients: list[dict[str, Any]]) -> dict[int, dict]:
        """`POST /clients/batch`; an upsert, so idempotent: a lost answer is sent again."""
        return self._http.request_json(
            "POST",
            f"{self._base}/clients/batch",
            endpoint="clients/batch",
            idempotent=True,
            validate=_batch_results,
            headers=self._headers,
            json={"match_by": match_by, "clients": clients},
        )

    def _ack(self, pending: _Pending, result: dict[str, Any] | None) -> MemberAck:
        key, dropped = pending.change.match_key, tuple(pending.dropped)
        if result is None:
            return MemberAck(key, "error", reason="the batch answer has no result for this client")
        if "error" in result:
            return MemberAck(key, "refused", reason=self._reason(result), dropped=dropped)
        return MemberAck(key, result["action"], str(result["id"]), dropped=dropped)

    def _reason(self, result: dict[str, Any]) -> str:
        """The vendor's words for one refused item: message, then each field's detail."""
        error = result.get("error")
        if not isinstance(error, dict):
            return self._http.redact(str(error))
        text = str(error.get("message") or error.get("code") or "refused")
        details = error.get("details")
        if isinstance(details, dict) and details:
            text += " (" + "; ".join(f"{k}: {v}" for k, v in details.items()) + ")"
        return self._http.redact(text)

    def _remove(self, change: MemberChange, match_by: str) -> MemberAck:
        """DELETE the client (AX-A3); found by its match key when the core has no id for it."""
        try:
            ids = [change.member_id] if change.member_id else self._ids_of(match_by, change)
            if len(ids) > 1:  # AX-A4 allows two clients on one phone: not ours to pick
                reason = f"{len(ids)} clients match this {match_by}; none deleted"
                return MemberAck(change.match_key, "refused", None, reason=reason)
            for client_id in ids:
                self._delete(client_id)
        except VendorError as exc:
            if _transient(exc):
                return MemberAck(change.match_key, "error", change.member_id, reason=exc.message)
            if exc.status in (401, 403):
                raise
            return MemberAck(change.match_key, "refused", change.member_id, reason=exc.message)
        return MemberAck(change.match_key, "removed", change.member_id)

    def _delete(self, client_id: str) -> None:
        """A 404 means the client is gone already, which is what was asked."""
        try:
            self._http.request(
                "DELETE",
                f"{self._base}/clients/{quote(client_id, safe='')}",
                endpoint="clients/delete",
                headers=self._headers,
            )
        except VendorError as exc:
            if exc.status != 404:
                raise

    def _ids_of(self, match_by: str, change: MemberChange) -> list[str]:
        value = change.values.get(match_by) or change.match_key
        body = self._get(
            "/clients",
            endpoint="clients",
            validate=_clients_page,
            params={match_by: value, "limit": PAGE_SIZE},
        )
        return [str(raw["id"]) for raw in body[0] if raw.get("id")]

    # --- reading -------------------------------------------------------------------------------

    def _clients_page(
        self, changed_since: datetime | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if changed_since is not None:
            params["updated_since"] = as_utc(changed_since).isoformat()
        return self._get("/clients", endpoint="clients", validate=_clients_page, params=params)

    def _get(self, path: str, *, endpoint: str, **kwargs: Any) -> Any:
        return self._http.get_json(
            f"{self._base}{path}", endpoint=endpoint, headers=self._headers, **kwargs
        )


# --- pure helpers --------------------------------------------------------------------------------


def _match_by(match_on: str) -> str:
    try:
        return MATCH_BY[match_on]
    except KeyError:
        raise ValueError(
            f"axle recognises clients by mobile or external_id, not {match_on!r}"
        ) from None


def _pending(change: MemberChange, match_by: str) -> _Pending:
    tags = sorted(change.groups) if change.groups is not None else None
    client, dropped = wire_client(change.values, tags)
    client.setdefault(match_by, change.match_key)  # the key always travels (AX-A3 requires it)
    return _Pending(change, client, dropped)


def _phone_taken(result: dict[str, Any], match_by: str, client: dict[str, Any]) -> bool:
    """A 409 on a client found by external_id: the phone it brings belongs to another client."""
    error = result.get("error")
    if not isinstance(error, dict) or error.get("code") != "conflict":
        return False
    details = error.get("details")
    about_phone = not isinstance(details, dict) or not details or "phone" in details
    return about_phone and match_by != "phone" and "phone" in client


def _without_phone(pending: _Pending, reason: str) -> _Pending:
    client = {k: v for k, v in pending.client.items() if k != "phone"}
    dropped = [*pending.dropped, ("phone", f"already used by another client: {reason}")]
    return _Pending(pending.change, client, dropped)


def _error_ack(pending: _Pending, reason: str) -> MemberAck:
    return MemberAck(pending.change.match_key, "error", pending.change.member_id, reason=reason)


def _transient(exc: VendorError) -> bool:
    return exc.status in _TRANSIENT or exc.status >= 500


def _ping_account(body: Any) -> str:
    """AX-A1 `{"ok": true, "account": {"id", "name"}}` -> the account id."""
    account = body.get("account") if isinstance(body, dict) else None
    if not isinstance(account, dict) or not account.get("id"):
        raise ValueError("ping answer without account.id")
    return str(account["id"])


def _batch_results(body: Any) -> dict[int, dict[str, Any]]:
    """AX-A3 `{"results": [{index, id, action} | {index, error}]}` by index; else unreadable."""
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list):
        raise ValueError("batch answer without a results array")
    by_index: dict[int, dict[str, Any]] = {}
    for item in results:
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError("batch result without an integer index")
        ok = item.get("action") in ("created", "updated") and item.get("id")
        if not ok and not isinstance(item.get("error"), dict):
            raise ValueError("batch result with neither id/action nor error")
        by_index[index] = item
    return by_index


def _clients_page(body: Any) -> tuple[list[dict[str, Any]], int]:
    """AX-A3 `{"clients": [...], "meta": {"size": total}}`; else unreadable (retried)."""
    clients = body.get("clients") if isinstance(body, dict) else None
    meta = body.get("meta") if isinstance(body, dict) else None
    size = meta.get("size") if isinstance(meta, dict) else None
    if not isinstance(clients, list) or not isinstance(size, int) or isinstance(size, bool):
        raise ValueError("clients answer without a clients array and meta.size")
    return [c for c in clients if isinstance(c, dict)], size


# --- integration file section and Dagster resource ---------------------------------------------


class AxleResource(dg.ConfigurableResource):
    """Axle settings with the key as `dg.EnvVar`, resolved only when a client is built."""

    account: str
    base_url: str
    api_key: str
    requests_per_second: float | None = REQUESTS_PER_SECOND

    def client(self) -> AxleClient:
        return AxleClient(
            base_url=self.base_url,
            account=self.account,
            api_key=resolve_secret(self.api_key, "axle api_key") or "",
            requests_per_second=self.requests_per_second,
        )


class AxleTarget(TargetSectionBase):
    """`target:` section with `kind: axle`; the key is an env var name (AX-A1)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["axle"]
    account: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")  # checked on ping
    base_url: HttpUrlStr
    api_key_env: EnvVarName
    # client-side pacing (AX-A4: 5 per second per key); 0 or null: off
    requests_per_second: float | None = Field(default=REQUESTS_PER_SECOND, ge=0)

    @property
    def destination(self) -> str:
        """Axle keeps one client base per account."""
        return CLIENT_BASE

    @property
    def list_id(self) -> str:
        """Where members land inside the account: Axle has one client base per account, so this
        is always "clients" (it completes the integration's list key beside kind and account)."""
        return CLIENT_BASE

    def env_vars(self) -> list[str]:
        return [self.api_key_env]

    def resource(self) -> AxleResource:
        return AxleResource(
            account=self.account,
            base_url=self.base_url,
            api_key=dg.EnvVar(self.api_key_env),
            requests_per_second=self.requests_per_second,
        )
