"""How a large batch of member changes reaches a Heyloyalty list: one CSV member import
(`POST /lists/{id}/import`, HL 2.4), confirmed by reading the list back.

Used when a batch holds at least `bulk_threshold` creates and updates and the integration's rules
fit an import: create_and_update (the import creates and updates alike), no opt-in mail and no
webhooks asked for (the import documents no switch for either). Everything else (removes, rows the
CSV cannot carry, small batches, other rules) goes the single way of heyloyalty_members.py.

The import must never change a member's subscription state, yet an update through it reactivates
an unsubscribed member, as an upsert does (HL-A6, assumed for the import in HL-A11). So right
before each import the client reads the list's changes since its last listing read (the core
always reads the list first, `iter_members`); a member of the batch found unsubscribed is acked
`unsubscribed` and kept out of the file, unless the reimport rule lets it back. The window left is
the time between that read and the import, one round trip.

The import's answer is Unknown in Heyloyalty's documentation; HL-A11 below (`parse_answer`) is the
one place that assumes it. Its counts are never trusted: after the import the client reads back
the members changed since just before it (5,000 per page) and matches them to the batch by the
match key: present with the values sent -> `created` (created at or after the import started) or
`updated`; named in `failed` -> `refused` with the list's words; neither -> looked up one by one
when few, else `error` (no verdict: sent again next run).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from resources.base import ListField, RemoteMember, VendorError
from resources.heyloyalty_members import _may_reactivate, wire_fields, write_batch
from resources.target import MemberAck, MemberChange, WritePolicy, is_refusal

if TYPE_CHECKING:
    from resources.heyloyalty import HeyloyaltyClient

log = logging.getLogger(__name__)

# A member as a listing showed it, with its `created_at` (HL-A3), which RemoteMember leaves out.
Listed = tuple[RemoteMember, datetime | None]

# Members per write_members call when the bulk path is on: one import, then a read-back of about
# as many members (two pages of 5,000) and, by the core before the next batch of creates, the same
# again; measured at 20,000 customers, 10,000 keeps the whole delivery under k/1000 + 2 calls.
BULK_BATCH = 10_000
MAX_IMPORT_ROWS = 50_000  # HL-A11: rows per file, as the BI import (HL-A10)
IMPORT_DATE_FORMAT = "Y-m-d"  # PHP notation of what wire_fields makes of a date (HL-A8)
MISSING_LOOKUPS = 20  # members missing from the read-back looked up one by one, at most


# --- HL-A11: the import's answer (assumed; Heyloyalty documents none) --------------------------
#
# Success: `{"status": "success", "message": "<n> rows imported", "imported": n, "created": c,
#            "updated": u, "skipped": s, "failed": [{"row": i, "error": "..."}]}`
#          with `row` the 1-based data row of the file (the header line not counted).
# Failure of the whole file: `{"status": "error", "message": "..."}` (HTTP 400), nothing imported;
# a parameter the list cannot honour: `400 {"error": "..."}` (HL 2.7).


@dataclass(frozen=True)
class ImportAnswer:
    """HL-A11, read: the counts as the list gave them (for figures only) and its row refusals."""

    message: str
    counts: dict[str, int]
    failed: dict[int, str]  # 1-based data row -> the list's reason
    unreadable_failures: int = 0  # `failed` entries naming no row: settled by the read-back


def parse_answer(body: Any) -> ImportAnswer | dict[str, Any]:
    """The HL-A11 answer; anything without `status` success or error is an unreadable answer
    (ValueError, retried: the import is idempotent with handle_existing=update). A `status: error`
    body is returned as it is, for the caller to raise."""
    if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
        raise ValueError("member import answer without status success/error")
    if body["status"] == "error":
        return body
    failed: dict[int, str] = {}
    unreadable = 0
    entries = body.get("failed") or []
    for item in entries if isinstance(entries, list) else []:
        row = item.get("row") if isinstance(item, dict) else None
        text = str(row).strip() if isinstance(row, int | str) and not isinstance(row, bool) else ""
        if not text.isdigit():
            unreadable += 1
            continue
        failed[int(text)] = str(item.get("error") or item.get("message") or "refused")
    counts = {
        name: int(body[name])
        for name in ("imported", "created", "updated", "skipped")
        if isinstance(body.get(name), int) and not isinstance(body.get(name), bool)
    }
    return ImportAnswer(str(body.get("message") or ""), counts, failed, unreadable)


# --- choosing the way --------------------------------------------------------------------------


def import_allowed(policy: WritePolicy) -> bool:
    """The integration's rules fit an import (see the module docstring)."""
    flags = policy.flags
    return (
        policy.import_type == "create_and_update"
        and not flags.send_optin
        and not flags.send_webhooks
    )


@dataclass(frozen=True)
class _Row:
    change: MemberChange
    values: dict[str, Any]  # wire format
    dropped: tuple[tuple[str, str], ...]
    key: str  # the match value as the list compares it


def write_members_bulk(
    client: HeyloyaltyClient,
    changes: Sequence[MemberChange],
    policy: WritePolicy,
    fields: Mapping[str, ListField],
) -> Iterator[MemberAck]:
    """One ack per change: the CSV import for the batch's creates and updates when there are
    `bulk_threshold` of them and the rules allow, single calls for the rest."""
    rows: list[_Row] = []
    single: list[MemberChange] = []
    usable = import_allowed(policy) and client.bulk_usable
    for change in changes:
        if not usable or change.action == "remove":
            single.append(change)
            continue
        values, dropped = wire_fields(change.values, fields)
        if not all(_csv_cell_ok(v) for v in values.values()):
            single.append(change)  # e.g. a multi-choice list: the CSV has no documented form
            continue
        if not values.get(policy.match_on):  # the key is the match value (C3)
            values[policy.match_on] = (
                _wire_key(change.match_key, "mobile")
                if (policy.match_on == "mobile")
                else change.match_key
            )
        key = _wire_key(values[policy.match_on], policy.match_on)
        rows.append(_Row(change, values, tuple(dropped), key))
    if len(rows) < max(1, client.bulk_threshold):
        single += [row.change for row in rows]
        rows = []
    yield from write_single(client, single, policy, fields)
    columns = _columns(changes, policy.match_on)
    for start in range(0, len(rows), MAX_IMPORT_ROWS):
        yield from _import_chunk(
            client, rows[start : start + MAX_IMPORT_ROWS], columns, policy, fields
        )


def write_single(
    client: HeyloyaltyClient,
    changes: Sequence[MemberChange],
    policy: WritePolicy,
    fields: Mapping[str, ListField],
) -> Iterator[MemberAck]:
    """The single way for a batch that may be larger than before bulk (BULK_BATCH): updates and
    removes as always (each update read right before its upsert); creates in chunks of
    `single_batch_size` (as before bulk), each after the first preceded by a read of the list's
    changes, where a member who appeared meanwhile becomes a checked update, as the core does
    between its batches."""
    others = [c for c in changes if c.action != "create"]
    creates = [c for c in changes if c.action == "create"]
    yield from write_batch(client, others, policy, fields, client.concurrency)
    size = max(1, client.single_batch_size)
    appeared: set[str] = set()  # every member a read showed, kept for the chunks after it
    for start in range(0, len(creates), size):
        chunk = creates[start : start + size]
        if start:
            fresh = client.changes_since_last_read()
            if fresh is not None:
                appeared |= set(_by_key(fresh, policy.match_on))
                chunk = [
                    replace(c, action="update", planned="create")
                    if _wire_key(_change_key(c, policy.match_on), policy.match_on) in appeared
                    else c
                    for c in chunk
                ]
        yield from write_batch(client, chunk, policy, fields, client.concurrency)


# --- one import --------------------------------------------------------------------------------


def _import_chunk(
    client: HeyloyaltyClient,
    rows: list[_Row],
    columns: list[str],
    policy: WritePolicy,
    fields: Mapping[str, ListField],
) -> Iterator[MemberAck]:
    try:
        fresh = client.changes_since_last_read()
    except VendorError as exc:  # no guard read, nothing sent: no verdict, sent again next run
        for row in rows:
            yield MemberAck(row.change.match_key, "error", reason=str(exc))
        return
    if fresh is None:  # no listing read of this client to start from: no guard, no import
        yield from write_single(client, [row.change for row in rows], policy, fields)
        return
    now = _by_key(fresh, policy.match_on)
    sending: list[_Row] = []
    for row in rows:
        found = next((m for m, _ in now.get(row.key, ()) if m.status == "unsubscribed"), None)
        if found is not None and not _may_reactivate(row.change, found, policy):
            client.bulk_figures["bulk_unsubscribed_kept_out"] += 1
            yield MemberAck(
                row.change.match_key, "unsubscribed", member_id=found.member_id, remote=found
            )
            continue
        sending.append(row)
    if not sending:
        return
    since = client.listing_cursor
    started = client.now().replace(microsecond=0)
    answer: ImportAnswer | None = None
    try:
        answer = client.import_members(policy, columns, members_csv(columns, sending))
    except VendorError as exc:
        if is_refusal(exc):
            # The list refused the file (nothing imported, HL-A11): the single way gives every
            # member its own verdict; this client stops trying imports for the run.
            client.bulk_refused(exc.message)
            yield from write_single(client, [row.change for row in sending], policy, fields)
            return
        # No usable answer after the retries: the read-back settles what the list holds.
        log.warning("heyloyalty: member import without answer (%s); reading back", exc.message)
    client.bulk_figures["bulk_imports"] += 1
    client.bulk_figures["bulk_rows_sent"] += len(sending)
    yield from _settle(client, sending, answer, since, started, policy)


def _settle(
    client: HeyloyaltyClient,
    rows: list[_Row],
    answer: ImportAnswer | None,
    since: datetime | None,
    started: datetime,
    policy: WritePolicy,
) -> Iterator[MemberAck]:
    """Acks from what the list holds now (read back), never from the import's counts alone."""
    try:
        back = _by_key(client.read_changes(since), policy.match_on)
    except VendorError as exc:
        for row in rows:
            yield MemberAck(row.change.match_key, "error", reason=f"read-back failed: {exc}")
        return
    failed = answer.failed if answer is not None else {}
    missing: list[_Row] = []
    for number, row in enumerate(rows, start=1):
        if number in failed:
            yield MemberAck(row.change.match_key, "refused", reason=client.redact(failed[number]))
            continue
        held = next((m for m in back.get(row.key, ()) if _holds(m[0], row.values)), None)
        if held is None:
            missing.append(row)
            continue
        client.bulk_figures["bulk_rows_confirmed"] += 1
        yield _stored(row, held, started)
    claimed = answer.counts.get("imported") if answer is not None else None
    if claimed is not None and claimed != len(rows) - len(failed) - len(missing):
        log.warning(
            "heyloyalty: the member import answered %s rows imported; the list shows %s",
            claimed,
            len(rows) - len(failed) - len(missing),
        )
    looked = missing[:MISSING_LOOKUPS] if len(missing) <= MISSING_LOOKUPS else []
    for row in missing:
        held = None
        if row in looked:
            client.bulk_figures["bulk_lookups"] += 1
            try:
                found = client.find_member(policy.match_on, row.key)
            except VendorError as exc:
                yield MemberAck(row.change.match_key, "error", reason=str(exc))
                continue
            held = (found, None) if found is not None and _holds(found, row.values) else None
        if held is not None:
            yield _stored(row, held, started)
            continue
        yield MemberAck(
            row.change.match_key,
            "error",
            reason="the member import did not store this row (the list does not show the values "
            "sent); it is sent again next run",
        )


def _stored(row: _Row, held: Listed, started: datetime) -> MemberAck:
    """The list's word: created when it created the member at or after the import started, as
    its `created_at` says (whole seconds, HL-A3; its clock and ours are taken to agree, a wrong
    word only mislabels a count). A member the core believed on the list must be created after
    the import's first second: within it, a member created a moment before reads the same. A
    member found by a lookup alone (no created_at read) counts as updated."""
    member, created_at = held
    if row.change.action == "update":
        started += timedelta(seconds=1)
    created = created_at is not None and created_at >= started
    return MemberAck(
        row.change.match_key,
        "created" if created else "updated",
        member_id=member.member_id,
        dropped=row.dropped,
    )


# --- the file ----------------------------------------------------------------------------------


def _columns(changes: Sequence[MemberChange], match_on: str) -> list[str]:
    """The match field first, then every mapped field (an empty cell empties the field, HL-A11,
    as a field empty at the source does)."""
    names = [match_on]
    for change in changes:
        for name in change.values:
            if name not in names:
                names.append(name)
    return names


def members_csv(columns: Sequence[str], rows: Sequence[_Row]) -> bytes:
    """A header line of `columns`, then one line per member, csv-module quoting."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.values.get(name)) for name in columns])
    return buffer.getvalue().encode("utf-8")


def _csv_cell_ok(value: Any) -> bool:
    return not isinstance(value, list | tuple | set | dict)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


# --- matching what the list holds to the batch -------------------------------------------------


def _wire_key(value: Any, match_on: str) -> str:
    text = "" if value is None else str(value).strip()
    return text.lstrip("+") if match_on == "mobile" else text.lower()


def _member_key(member: RemoteMember, match_on: str) -> str | None:
    return member.mobile if match_on == "mobile" else member.email


def _change_key(change: MemberChange, match_on: str) -> Any:
    return change.values.get(match_on) or change.match_key


def _by_key(listed: Sequence[Listed], match_on: str) -> dict[str, list[Listed]]:
    found: dict[str, list[Listed]] = {}
    for member, created_at in listed:
        key = _wire_key(_member_key(member, match_on), match_on)
        if key:
            found.setdefault(key, []).append((member, created_at))
    return found


def _holds(member: RemoteMember, values: Mapping[str, Any]) -> bool:
    """The list shows every non-empty value sent (compared as text, case-insensitively)."""
    return all(
        _same(member.fields.get(name), value)
        for name, value in values.items()
        if value is not None and value != ""
    )


def _same(held: Any, sent: Any) -> bool:
    return _compared(held) == _compared(sent)


def _compared(value: Any) -> str:
    """A value as the list may echo it: trimmed, any case; a boolean as 1/0 (HL 2.3)."""
    text = _cell(value).strip().casefold()
    return {"true": "1", "false": "0"}.get(text, text)
