"""How a large batch of member changes reaches a Heyloyalty list: CSV member imports
(`POST /lists/{id}/import`, HL 2.4), confirmed by reading the list back.

Used when a batch holds at least `bulk_threshold` creates and updates and the integration's rules
fit an import: create_and_update (the import creates and updates alike), no opt-in mail and no
webhooks asked for (the import documents no switch for either). Everything else (removes, rows the
CSV cannot carry, small batches, other rules) goes the single way of heyloyalty_members.py.

The import must never change a member's subscription state, yet an update through it reactivates
an unsubscribed member, as an upsert does (HL-A6, HL-A11 below). So the client keeps, per match
key, that a listing read of the run showed the member (the core's pull and refresh, the guard
reads, every read-back, every lookup) and its latest state while that is not active, and every
row is checked against it right before the import: a member found unsubscribed is acked
`unsubscribed` and kept out of the file, unless the reimport rule lets it back. (An active member
is kept as a hash of its key only, so the reads of a million members do not stay in memory for
the run.) Every file goes out within `fresh_read_seconds` (1 s) of the start of a complete
changed-since read of the list: the core's pull or refresh made moments before, or a read before
an earlier file; else a read is made right before it (a guard read), which is also the read-back
of the files sent since the last read. So the window left for an unsubscribe to be undone is the
age of that read (at most 1 s; one round trip when a read is made) plus the import's own time,
where it was one round trip plus the import's time with a read before every file. The
changed-since reads follow on from one another from the run's pull, so no change goes unread,
and what they show goes to the core (TargetClient.keep_reads), which stores it in the warehouse
and starts its own next read where they reached instead of reading those members again.

Fields are treated as by the single upsert: a value absent at the source (or a field dropped) is
never sent as an empty cell where the list holds a value for that member, since an empty cell
empties the field. Where the list shows the field empty for that member (as the run's reads
showed it, else as the core's last read did; a member the core knows the list does not hold
shows every field empty) an empty cell changes nothing, so rows carrying different sets of
fields share one file with the columns of them all (`file_groups`); only a row whose list holds
a value in a column it lacks (or whose list state is unknown) goes in a file of exactly its own
fields. Right before its file a row is checked again against the latest read: one whose empty
cells the list no longer shows empty goes the single way, and so does a row the list refused in
a file while it carried an empty cell (a list may refuse one in a number or date column). The
files go first; a file of one member alone (MIN_IMPORT_GROUP) goes the single way after them.
Rows sharing a match key: the first goes in a file, the others the single way after the files.
So k changed members whose list shows empty what they lack cost one import per BULK_BATCH
(10,000) the core hands over, whatever fields each carries (plus one per set of fields among
members whose list holds a value they lack), and the reads of them back (5,000 a page), plus
one read per second the files take to send (and a read before the first when the core's read
is older than that). A changed-since read's cursor is never past the read's start on the list's
clock (its `Date`, the least over the read's pages), so a member who changes on a page already
read while later pages are read is in the next read.

The read-back reads the members changed since just before the first file it settles:
a row whose match key the list shows changed at or after the import started (or holding the values
sent) is `created` (the core planned a create and no read showed the member before) or `updated`;
else the row refused by the answer is `refused` with the list's words; else it is looked up one by
one when few, or `error` (no verdict: sent again next run).

HL-A11, every assumption about the member import in one place (Heyloyalty documents the call's
parameters, not its behaviour):
- The import is synchronous: when the call answers, the rows are on the list (or refused).
- The answer: `{"status": "success", "message": "...", "imported": n, "created": c, "updated": u,
  "skipped": s, "failed": [{"row": i, "error": "..."}]}`, `row` the 1-based data row (header not
  counted); refusal of the whole file: `{"status": "error", "message": "..."}`. Any other 2xx
  answer (other JSON, none) is "answer unknown", settled by the read-back alone, never resent;
  the row numbers are a hint only, the read-back overrides them.
- The list's `updated_at` moves for every member the import writes, on a clock that agrees with
  ours to a second (confirmation by match key + updated_at, values compared only as a fallback).
- An update through the import reactivates an unsubscribed member (as HL-A6 for upserts).
- An empty cell empties the field (so one is sent only where the list shows the field empty).
- The member listing shows every field of the list for each member, an empty one as empty (null,
  "" or an empty date): a field it leaves out is taken as unknown, never as empty.
- Choice cells as option ids, as the upsert; dates in `date_format`; at most 50,000 rows a file;
  `fields_selected[]` names the columns and `skip_header_line=1` skips our header line;
  `duplicate_field=mobile` matches on the mobile as the upsert's `unique_field` does.
- Whether the import created or updated a member is not read from it: by the plan and by whether
  a read of the run had shown the member (no clock comparison).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from resources.base import ListField, RemoteMember, VendorError
from resources.heyloyalty_members import _may_reactivate, wire_fields, write_batch
from resources.http import as_utc
from resources.target import MemberAck, MemberChange, WritePolicy, is_refusal

if TYPE_CHECKING:
    from resources.heyloyalty import HeyloyaltyClient

log = logging.getLogger(__name__)

# A member as a listing showed it, with its `created_at` (HL-A3), which RemoteMember leaves out.
Listed = tuple[RemoteMember, datetime | None]

# Members per write_members call when the bulk path is on: one import (a few when some members
# must keep list values their rows lack), followed by a read-back of about as many members (three
# pages of 5,000 for 10,000: the last one empty), which the core stores (keep_reads), so its read
# before the next batch of creates starts where the read-back began.
BULK_BATCH = 10_000
MAX_IMPORT_ROWS = 50_000  # HL-A11: rows per file, as the BI import (HL-A10)
# ours: a set of fields carried by one member alone goes the single way (an import costs two calls,
# the file and its read-back; a single update about 1 1/8, its upsert and a share of a read)
MIN_IMPORT_GROUP = 2
IMPORT_DATE_FORMAT = "Y-m-d"  # PHP notation of what wire_fields makes of a date (HL-A8)
MISSING_LOOKUPS = 20  # members missing from the read-back looked up one by one, at most


# --- the import's answer (HL-A11) ------------------------------------------------------------


@dataclass(frozen=True)
class ImportAnswer:
    """HL-A11, read: the counts as the list gave them (for figures only) and its row refusals."""

    message: str
    counts: dict[str, int]
    failed: dict[int, str]  # 1-based data row -> the list's reason
    unreadable_failures: int = 0  # `failed` entries naming no row: settled by the read-back


def parse_answer(body: Any) -> ImportAnswer | dict[str, Any] | None:
    """The HL-A11 answer; a `status: error` body is returned as it is, for the caller to raise;
    anything else that is not our assumed success shape is None: answer unknown."""
    if isinstance(body, dict) and body.get("status") == "error":
        return body
    if not isinstance(body, dict) or body.get("status") != "success":
        return None
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
    """One ack per change: CSV imports for the batch's creates and updates when there are
    `bulk_threshold` of them and the rules allow (see `file_groups`), single calls for the
    rest."""
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
        for name, value in values.items():  # the file's date_format (Y-m-d), not a timestamp
            spec = fields.get(name)
            if spec is not None and spec.format == "date" and isinstance(value, str):
                raw = change.values.get(name)
                if isinstance(raw, datetime):
                    values[name] = as_utc(raw).date().isoformat()
                elif len(value) > 10 and value[:10].count("-") == 2:
                    values[name] = value[:10]
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
    seen: set[str] = set()
    later: list[MemberChange] = []  # a key's second and further rows: single, after the file
    firsts: list[_Row] = []
    for row in rows:
        if row.key in seen:
            later.append(row.change)
            continue
        seen.add(row.key)
        firsts.append(row)
    groups = file_groups(firsts, lambda row: list_blank(client, row, policy), policy.match_on)
    least = min(MIN_IMPORT_GROUP, max(1, client.bulk_threshold))
    for group in [g for g in groups.values() if len(g) < least]:
        single += [row.change for row in group]
    # The files first, while the core's pull (or refresh) may still be fresh enough to stand for
    # the read right before the first of them; the single way after them reads its own members
    # right before their upserts.
    files = [
        (list(columns), group[start : start + MAX_IMPORT_ROWS])
        for columns, group in groups.items()
        if len(group) >= least
        for start in range(0, len(group), MAX_IMPORT_ROWS)
    ]
    yield from _import_files(client, files, policy, fields)
    yield from write_single(client, single, policy, fields)
    yield from write_single(client, later, policy, fields)


def write_single(
    client: HeyloyaltyClient,
    changes: Sequence[MemberChange],
    policy: WritePolicy,
    fields: Mapping[str, ListField],
) -> Iterator[MemberAck]:
    """The single way for a batch that may be larger than before bulk (BULK_BATCH): updates and
    removes as always (each update read right before its upsert); creates in chunks of
    `single_batch_size` (as before bulk), each after the first preceded by a read of the list's
    changes; a member any read of the run showed becomes a checked update, as the core does
    between its batches. A failed read: `error` for the creates not yet sent."""
    others = [c for c in changes if c.action != "create"]
    creates = [c for c in changes if c.action == "create"]
    yield from write_batch(client, others, policy, fields, client.concurrency)
    size = max(1, client.single_batch_size)
    for start in range(0, len(creates), size):
        chunk = creates[start : start + size]
        if start:
            try:
                with client.calls.purpose("refresh (single creates)"):
                    client.changes_since_last_read()
            except VendorError as exc:  # nothing of the rest sent: no verdict, again next run
                for change in creates[start:]:
                    yield MemberAck(change.match_key, "error", reason=str(exc))
                return
        chunk = [
            replace(c, action="update", planned="create") if _seen(client, c, policy) else c
            for c in chunk
        ]
        yield from write_batch(client, chunk, policy, fields, client.concurrency)


def _seen(client: HeyloyaltyClient, change: MemberChange, policy: WritePolicy) -> bool:
    key = _wire_key(_change_key(change, policy.match_on), policy.match_on)
    return client.seen(policy.match_on, key)


# --- the files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sent:
    """A file the list took (or answered unreadably): settled by the next read of its changes."""

    rows: list[_Row]
    columns: tuple[str, ...]
    answer: ImportAnswer | None
    started: datetime  # our clock, whole seconds, just before the import was sent
    known: frozenset[str]  # keys some read showed before the import: not created by it


def _import_files(
    client: HeyloyaltyClient,
    files: list[tuple[list[str], list[_Row]]],
    policy: WritePolicy,
    fields: Mapping[str, ListField],
) -> Iterator[MemberAck]:
    """The files in turn, each sent within `fresh_read_seconds` of the start of a complete
    changed-since read of the list (else such a read is made right before it). A read made
    while files await their read-back is that read-back too: they are settled from it. After
    the last file, one read settles the files still waiting."""
    pending: list[_Sent] = []
    since: datetime | None = None  # where the pending files' read-back starts
    # the single way after the files: files that cannot go as files, rows a read right before
    # their file showed holding a field they would empty, rows refused with an empty cell
    rest: list[MemberChange] = []
    for index, (columns, rows) in enumerate(files):
        if not client.bulk_usable or client.read_age() is None:
            # the list refused a file this run, or no read of this client to start from
            rest += [row.change for row in rows]
            continue
        fresh = _fresh(client)
        if fresh:
            client.bulk_figures["bulk_guard_reads_saved"] += 1
        else:
            try:
                with client.calls.purpose("read-back" if pending else "guard read (import)"):
                    # from before the first pending file (no later than this client's latest
                    # read, so it is the guard read too); it feeds the listed states
                    back = _read_back(client, pending, since)
            except VendorError as exc:  # nothing of the rest sent: no verdict, next run
                yield from _unsettled(pending, f"read-back failed: {exc}")
                for _, unsent in files[index:]:
                    for row in unsent:
                        yield MemberAck(row.change.match_key, "error", reason=str(exc))
                yield from write_single(client, rest, policy, fields)
                return
            yield from _settle(client, pending, back, policy, rest)
            pending = []
        cursor = client.listing_cursor
        sent = yield from _send_file(client, rows, columns, policy, fields, fresh, rest)
        if sent is not None:
            since = since if pending else cursor
            pending.append(sent)
    if pending:
        try:
            with client.calls.purpose("read-back"):
                back = _read_back(client, pending, since)
        except VendorError as exc:
            yield from _unsettled(pending, f"read-back failed: {exc}")
        else:
            yield from _settle(client, pending, back, policy, rest)
    yield from write_single(client, rest, policy, fields)


def _read_back(
    client: HeyloyaltyClient, pending: list[_Sent], since: datetime | None
) -> list[Listed]:
    """The list's changes since before the first pending file (since this client's latest
    read when none is pending)."""
    if pending:
        return client.read_changes(since)
    return client.changes_since_last_read() or []


def _fresh(client: HeyloyaltyClient) -> bool:
    """Whether this client's latest complete listing read (the core's pull or refresh, a read
    of this step before an earlier file) began at most `fresh_read_seconds` ago, so it stands
    for the read right before the next file."""
    age = client.read_age()
    return age is not None and age <= client.fresh_read_seconds


def _send_file(
    client: HeyloyaltyClient,
    rows: list[_Row],
    columns: list[str],
    policy: WritePolicy,
    fields: Mapping[str, ListField],
    fresh: bool,
    diverted: list[MemberChange],
) -> Generator[MemberAck, None, _Sent | None]:
    """One import of the rows no read of the run showed unsubscribed (those are acked
    `unsubscribed`, unless the reimport rule lets them back). Returns what awaits its read-back;
    None when nothing was sent as a file (all kept out, or the file refused: single way).
    `fresh`: no read was made for this file; the age of the read it relies on, as the file goes
    out, is kept in the figures (the oldest: the widest window an unsubscribe had).
    A row whose empty cells the latest read no longer shows empty on the list (a value typed in
    there since the file was planned) is left out of the file and added to `diverted` (the
    single way, after the files)."""
    sending: list[_Row] = []
    known: set[str] = set()
    for row in rows:
        if not _blank_cells_still_blank(client, row, columns, policy):
            client.bulk_figures["bulk_rows_diverted"] += 1
            diverted.append(row.change)
            continue
        found = client.listed(policy.match_on, row.key)  # None unless not active
        if client.seen(policy.match_on, row.key):
            known.add(row.key)
        if (
            found is not None
            and found.status == "unsubscribed"
            and not _may_reactivate(row.change, found, policy)
        ):
            client.bulk_figures["bulk_unsubscribed_kept_out"] += 1
            yield MemberAck(
                row.change.match_key, "unsubscribed", member_id=found.member_id, remote=found
            )
            continue
        sending.append(row)
    if not sending:
        return None
    started = client.now().replace(microsecond=0)
    data = members_csv(columns, sending)
    age = client.read_age()
    if fresh and age is not None:
        figures = client.bulk_figures
        figures["bulk_guard_age_ms_max"] = max(figures["bulk_guard_age_ms_max"], round(age * 1000))
    answer: ImportAnswer | None = None
    try:
        answer = client.import_members(policy, columns, data)
    except VendorError as exc:
        if is_refusal(exc):
            # The list refused the file (nothing imported, HL-A11): the single way gives every
            # member its own verdict; this client stops trying imports for the run.
            client.bulk_refused(exc.message)
            yield from write_single(client, [row.change for row in sending], policy, fields)
            return None
        # No usable answer after the retries: the read-back settles what the list holds.
        log.warning("heyloyalty: member import without answer (%s); reading back", exc.message)
    if answer is None:
        log.warning("heyloyalty: member import answer of unknown shape; the read-back decides")
    client.bulk_figures["bulk_imports"] += 1
    client.bulk_figures["bulk_rows_sent"] += len(sending)
    return _Sent(sending, tuple(columns), answer, started, frozenset(known))


def _blank_cells_still_blank(
    client: HeyloyaltyClient, row: _Row, columns: Sequence[str], policy: WritePolicy
) -> bool:
    """The columns the row carries no value for are still shown empty by the latest read of
    the run to show the member (none showed it: as the plan had it)."""
    lacking = set(columns) - row.values.keys()
    if not lacking:
        return True
    blank = client.blank(policy.match_on, row.key)
    return blank is None or lacking <= blank


def _unsettled(pending: list[_Sent], reason: str) -> Iterator[MemberAck]:
    for sent in pending:
        for row in sent.rows:
            yield MemberAck(row.change.match_key, "error", reason=reason)


def _settle(
    client: HeyloyaltyClient,
    pending: list[_Sent],
    listed: Sequence[Listed],
    policy: WritePolicy,
    retry: list[MemberChange],
) -> Iterator[MemberAck]:
    """Acks from what the list holds now (`listed`: its changes since before the first pending
    file), never from an import's answer alone: a row the list holds is stored whatever the
    answer says of its row number."""
    back = _by_key(listed, policy.match_on)
    for sent in pending:
        yield from _settle_file(client, sent, back, policy, retry)


def _settle_file(
    client: HeyloyaltyClient,
    sent: _Sent,
    back: Mapping[str, list[Listed]],
    policy: WritePolicy,
    retry: list[MemberChange],
) -> Iterator[MemberAck]:
    """Acks for one file's rows from the read-back. A row the list refused while it carried an
    empty cell (a column of the file it has no value for) goes the single way instead (into
    `retry`): a list may refuse an empty cell in a number, date or choice column, and the
    member's own upsert carries no such cell."""
    rows, answer, started, known = sent.rows, sent.answer, sent.started, sent.known
    failed = answer.failed if answer is not None else {}
    missing: list[_Row] = []
    disagree = 0
    for number, row in enumerate(rows, start=1):
        held = next((m for m, _ in back.get(row.key, ()) if _written(m, row, started)), None)
        if held is not None:
            disagree += number in failed
            client.bulk_figures["bulk_rows_confirmed"] += 1
            yield _stored(row, held, known)
            continue
        if number in failed:
            if set(sent.columns) - row.values.keys():
                client.bulk_figures["bulk_refused_with_empty_cells"] += 1
                retry.append(row.change)
                continue
            yield MemberAck(row.change.match_key, "refused", reason=client.redact(failed[number]))
            continue
        missing.append(row)
    if disagree:
        log.warning(
            "heyloyalty: the member import named %s rows failed that the list holds; the list's "
            "word is taken (its row numbering may differ from ours)",
            disagree,
        )
    stored = len(rows) - len(missing) - (len(failed) - disagree)  # retried rows are in `failed`
    claimed = answer.counts.get("imported") if answer is not None else None
    if claimed is not None and claimed != stored:
        log.warning(
            "heyloyalty: the member import answered %s rows imported; the list shows %s",
            claimed,
            stored,
        )
    looked = missing[:MISSING_LOOKUPS] if len(missing) <= MISSING_LOOKUPS else []
    for row in missing:
        held = None
        if row in looked:
            client.bulk_figures["bulk_lookups"] += 1
            try:
                with client.calls.purpose("lookup (read-back)"):
                    found = client.find_member(policy.match_on, row.key)
            except VendorError as exc:
                yield MemberAck(row.change.match_key, "error", reason=str(exc))
                continue
            held = found if found is not None and _written(found, row, started) else None
        if held is not None:
            yield _stored(row, held, known)
            continue
        yield MemberAck(
            row.change.match_key,
            "error",
            reason="the member import did not store this row (the list does not show it "
            "changed by the import); it is sent again next run",
        )


def _written(member: RemoteMember, row: _Row, started: datetime) -> bool:
    """The list shows the member changed at or after the import started (HL-A11: whole seconds,
    clocks agree), or holding every value sent (robust to a clock that lags)."""
    updated = member.updated_at
    if updated is not None and as_utc(updated) >= started:
        return True
    return _holds(member, row.values)


def _stored(row: _Row, member: RemoteMember, known: frozenset[str]) -> MemberAck:
    """Created when the core planned a create and no read of the run showed the member before
    the import (by plan and presence, not by clocks); else updated."""
    created = row.change.action == "create" and row.key not in known
    return MemberAck(
        row.change.match_key,
        "created" if created else "updated",
        member_id=member.member_id,
        dropped=row.dropped,
    )


# --- which rows share a file --------------------------------------------------------------------


def file_groups(
    rows: Sequence[_Row],
    list_blank: Callable[[_Row], frozenset[str] | None],
    match_on: str,
) -> dict[tuple[str, ...], list[_Row]]:
    """The rows by the columns of the file each goes in.

    An empty cell empties the field (HL-A11), so a row may go in a file with columns it does not
    carry only where the list shows that member's field empty (`list_blank`: the fields a read
    showed empty, or every field for a member the list does not hold; None when unknown). So:
    the columns of every row still to place, and the rows that fit them go in one file; again
    with the rest, while that places any; a row that never fits (its list holds a value in a
    column others carry and it does not, or unknown) is grouped by exactly its own columns, as
    before. k changed members whose list shows empty what they lack then cost one file per
    BULK_BATCH the core hands over, not one per set of fields."""
    groups: dict[tuple[str, ...], list[_Row]] = {}
    known = {id(row): blank for row in rows if (blank := list_blank(row)) is not None}
    rest = [row for row in rows if id(row) in known]
    while rest:
        union = set().union(*(row.values for row in rest))
        fits = [row for row in rest if (union - row.values.keys()) <= known[id(row)]]
        if not fits:
            break
        groups.setdefault(_columns(union, match_on), []).extend(fits)
        placed = {id(row) for row in fits}
        rest = [row for row in rest if id(row) not in placed]
    in_files = {id(row) for group in groups.values() for row in group}
    for row in rows:
        if id(row) not in in_files:
            groups.setdefault(_columns(row.values, match_on), []).append(row)
    return groups


def list_blank(client: HeyloyaltyClient, row: _Row, policy: WritePolicy) -> frozenset[str] | None:
    """The fields the list shows empty for the row's member: as the latest read of this run to
    show it did (the newest), else as the core knows it (its last read, or every field for a
    create whose member the list does not hold). None when unknown."""
    blank = client.blank(policy.match_on, row.key)
    return blank if blank is not None else row.change.remote_blank


# --- the file ----------------------------------------------------------------------------------


def _columns(names: Iterable[str], match_on: str) -> tuple[str, ...]:
    """The match field first, then the other fields (sorted)."""
    return (match_on, *sorted(name for name in names if name != match_on))


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


def listed_key(value: Any, match_on: str) -> str:
    """The match key a listed member is known by (email lower-case, mobile digits)."""
    return _wire_key(value, match_on)


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
