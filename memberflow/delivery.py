"""Delivery: send the target only what changed (X2), remember every acknowledgement, pull
unsubscribes and bounces back when the target reports them by being read.

State lives in the list's warehouse: `sync_state` (what the target last acknowledged per match
key), `remote_members` (what the target reported), `event_sync` (events sent or refused). The core
plans who changed and hands the target batches of member changes with canonical values; the
target's client answers one acknowledgement per member, and each is written as it arrives, in
small batches, so a crash resends nothing that was acknowledged and loses nothing that was not.
Nothing here knows a vendor: what the target can do comes from its capabilities.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pandas as pd
import phonenumbers

from memberflow import progress, rekey
from memberflow.staging import ensure_bookkeeping
from resources.base import RemoteMember, UpsertFlags, VendorError
from resources.target import MemberAck, MemberChange, TargetClient, WritePolicy

ACK_BATCH = 500
# Overlap of two changed-since reads of the core within a run: the next starts this long before
# the newest `updated_at` the list reported (its own clock), for same-second writes.
REFRESH_OVERLAP = timedelta(seconds=5)
# A changed-since read never starts later than the previous read began. That moment is put on
# the target's clock (TargetClient.clock_ahead, e.g. from its HTTP `Date`) less this margin for
# whole-second stamps; a target that cannot tell its clock gets PULL_OVERLAP on ours instead.
# Where a client's own reads reached later than that (TargetClient.keep_reads, with their own
# margin, e.g. 1 s), the next read starts there (store_kept_reads).
TARGET_CLOCK_MARGIN = timedelta(seconds=5)
PULL_OVERLAP = timedelta(minutes=2)
GROUPS = "groups"  # the `members` column of sorted group names, when segments are configured


class MappingCheckError(RuntimeError):
    """A mapped field does not exist on the target (C7); nothing was sent."""


class TargetCannotError(RuntimeError):
    """The integration needs something the target cannot do (a match key, groups); nothing sent."""


@dataclass(frozen=True)
class DeliverySettings:
    match_on: str
    import_type: str  # create_only | create_and_update | update_only
    reimport_unsubscribed: bool
    flags: UpsertFlags
    track_events: bool = False  # the integration tracks events (sent when the target has a feed)
    run_id: str = ""

    def policy(self) -> WritePolicy:
        return WritePolicy(
            match_on=self.match_on,
            import_type=self.import_type,
            reimport_unsubscribed=self.reimport_unsubscribed,
            flags=self.flags,
        )


@dataclass
class MemberReport:
    created: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped_unsubscribed: int = 0
    skipped_by_import_type: int = 0
    unsubscribed_meanwhile: int = 0  # of skipped_unsubscribed: caught by the check before a send
    recreated: int = 0  # members the list had lost, acknowledged again
    checks_before_update: int = 0  # one read of the member each, right before its update
    refresh_calls: int = 0  # changed-since reads between batches of creates
    rekeyed_forgotten: int = 0  # old keys of members acknowledged under a new key (no call)
    rekeyed_removed: int = 0  # old keys of members merged into another: taken off the target
    refused: list[dict[str, str]] = field(default_factory=list)
    dropped_fields: list[dict[str, str]] = field(default_factory=list)
    transient_errors: list[str] = field(default_factory=list)
    # per integration feeding the list: members of this run by outcome (created, updated,
    # removed, unchanged); a member merged from two integrations counts under both
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)

    def source_counts(self, integration: str) -> dict[str, int]:
        """This run's members of one integration by outcome, every outcome named (0 if none)."""
        figures = self.by_source.get(integration, {})
        return {
            f"members_{outcome}_this_run": figures.get(outcome, 0)
            for outcome in ("created", "updated", "removed", "unchanged")
        }

    def counts(self) -> dict[str, int]:
        return {
            "created": self.created,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "skipped_unsubscribed": self.skipped_unsubscribed,
            "skipped_by_import_type": self.skipped_by_import_type,
            "unsubscribed_meanwhile": self.unsubscribed_meanwhile,
            "refused": len(self.refused),
            "fields_dropped": len(self.dropped_fields),
            "recreated": self.recreated,
            "rekeyed_forgotten": self.rekeyed_forgotten,
            "rekeyed_removed": self.rekeyed_removed,
        }

    def guard_calls(self) -> dict[str, int]:
        """Calls spent so that no send undoes an unsubscribe (see deliver_members)."""
        return {
            "checks_before_update": self.checks_before_update,
            "refresh_calls": self.refresh_calls,
        }


def ensure_state(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS sync_state (
            match_key VARCHAR PRIMARY KEY, member_id VARCHAR, fields_hash VARCHAR,
            action VARCHAR, acked_at TIMESTAMPTZ, removed BOOLEAN DEFAULT false);
        CREATE TABLE IF NOT EXISTS remote_members (
            member_id VARCHAR PRIMARY KEY, match_key VARCHAR, status VARCHAR,
            email_status VARCHAR, unsubscribed_at TIMESTAMPTZ, updated_at TIMESTAMPTZ,
            pulled_at TIMESTAMPTZ);
        CREATE TABLE IF NOT EXISTS event_sync (
            event_id VARCHAR PRIMARY KEY, status VARCHAR, reason VARCHAR, sent_at TIMESTAMPTZ,
            event_hash VARCHAR);
        CREATE TABLE IF NOT EXISTS list_state (key VARCHAR PRIMARY KEY, value VARCHAR);
        ALTER TABLE sync_state ADD COLUMN IF NOT EXISTS sent_values VARCHAR;
        ALTER TABLE remote_members ADD COLUMN IF NOT EXISTS blank VARCHAR[];
        """
    )


def list_state(conn: duckdb.DuckDBPyConnection, key: str) -> str | None:
    rows = conn.execute("SELECT value FROM list_state WHERE key = ?", [key]).fetchall()
    return rows[0][0] if rows else None


def set_list_state(conn: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO list_state VALUES (?, ?)", [key, value])


# --- C7: mapped fields must exist on the target -----------------------------------------------


def check_mapping(
    client: TargetClient, fields: list[str], types: Mapping[str, str | None] | None = None
) -> list[str]:
    """Fail before any send if a mapped field is missing on the target (C7). A target that can
    add custom fields (capabilities.creates_fields) creates the missing ones first, typed by
    `types` (text by default), and fails only with those it has no room for. Returns the names
    created."""
    known = client.target_fields()
    missing = [name for name in fields if name not in known]
    if not missing:
        return []
    if client.capabilities.creates_fields:
        wanted = {name: (types or {}).get(name) or "text" for name in missing}
        try:
            return client.create_fields(wanted)
        except VendorError as exc:
            raise MappingCheckError(
                f"{client.label} could not take every mapped field ({exc.message}); missing: "
                f"{', '.join(missing)}. Free custom fields on the target (or a plan with more), "
                "or remove these from the mapping. Nothing was sent."
            ) from None
    raise MappingCheckError(
        f"{client.label} has no field(s) {', '.join(missing)}; create them on the target "
        "(custom fields with exactly these names) or remove them from the mapping. "
        "Nothing was sent."
    )


# --- pull-back: unsubscribes and bounces (capabilities.feedback == "polled") ------------------


def pull_feedback(
    conn: duckdb.DuckDBPyConnection, client: TargetClient, match_on: str
) -> dict[str, int]:
    """Read members changed on the target since the last pull (all of them the first time, and
    the first time after `match_on` changed: `remote_members` is then keyed by the current
    `match_on` for every member on the target, REPLICA_KEY)."""
    ensure_state(conn)
    last = list_state(conn, "last_pull")
    since = datetime.fromisoformat(last) if last else None
    if list_state(conn, REPLICA_KEY) != match_on:
        since = None
        # not keyed by any match_on until this full read is complete: a read that fails
        # halfway has re-keyed some members only, and must not vouch for either key
        set_list_state(conn, REPLICA_KEY, "")
    started = datetime.now(UTC)
    figures = {"pulled": 0, "unsubscribed": 0, "bounced": 0}
    with calls_for(client, "pull"):
        for rows in read_members(client, match_on, since):
            store_remote(conn, rows)
            figures["pulled"] += len(rows)
            figures["unsubscribed"] += sum(1 for r in rows if r["status"] == "unsubscribed")
            figures["bounced"] += sum(
                1 for r in rows if r["email_status"] in ("hard_bounce", "complaint")
            )
    # The next window starts where this read began, on the target's clock (read_start); never
    # later: the listing is paged, so a member on a page already read may change while later
    # pages are read, and the newest change the read saw can be past that member's.
    cursor = read_start(client, started)
    set_list_state(conn, "last_pull", cursor.isoformat())
    set_list_state(conn, REPLICA_KEY, match_on)
    return figures


# list_state key: the `match_on` that `remote_members` holds every target member under, set by a
# complete pull (a full read when it differs). Only then does a key absent from remote_members
# mean the target holds no such member (see `vouched_absent`).
REPLICA_KEY = "replica_match_on"


def vouched_absent(conn: duckdb.DuckDBPyConnection, match_on: str) -> bool:
    """Whether a planned create's member is known to be absent from the target: remote_members
    holds every member the target had at this step's pull under the current match_on."""
    ensure_state(conn)
    return list_state(conn, REPLICA_KEY) == match_on


def refresh_feedback(
    conn: duckdb.DuckDBPyConnection,
    client: TargetClient,
    match_on: str,
    since: datetime | None,
) -> datetime | None:
    """Within a run: read the target's changes since `since` (the last pull when None) into
    `remote_members`, and return the cursor for the next read, on the target's clock."""
    if since is None:
        last = list_state(conn, "last_pull")
        since = datetime.fromisoformat(last) if last else None
    started = datetime.now(UTC)
    newest: datetime | None = None
    with calls_for(client, "refresh"):
        for rows in read_members(client, match_on, since):
            store_remote(conn, rows)
            for row in rows:
                if row["updated_at"] is not None:
                    moment = _utc(row["updated_at"])
                    newest = moment if newest is None else max(newest, moment)
    begun = read_start(client, started)
    if newest is None:  # nothing changed on the list from `since` until this read began
        return begun if since is None else max(_utc(since), begun)
    # The newest change seen, but never past this read's start (on the target's clock): a
    # member on a page already read may change while our own writes move later pages on.
    return min(newest - REFRESH_OVERLAP, begun)


def start_keeping_reads(
    conn: duckdb.DuckDBPyConnection, client: TargetClient, cursor: datetime | None
) -> bool:
    """Ask the client to keep what its own reads show while it writes members, chained from
    `cursor` (the last pull's when None); see `store_kept_reads`."""
    if cursor is None:
        last = list_state(conn, "last_pull")
        cursor = datetime.fromisoformat(last) if last else None
    return cursor is not None and client.keep_reads(_utc(cursor))


def store_kept_reads(
    conn: duckdb.DuckDBPyConnection,
    client: TargetClient,
    match_on: str,
    cursor: datetime | None,
) -> datetime | None:
    """Store what the client's own reads showed since the last call (a read before a bulk
    write, a read-back) into `remote_members`, as a refresh would, and return the cursor for the
    next read: where those reads reach, when they followed on from ours and that is later. So a
    member the client read back is not read again by the refresh before the next batch, nor
    by the next run's pull; an unsubscribe they saw is in the warehouse as if we had read it."""
    kept = client.take_reads()
    if kept is None:
        return cursor
    latest = list({m.member_id: m for m in kept.members}.values())  # a member read twice: its last
    for start in range(0, len(latest), READ_ROWS):
        store_remote(conn, member_rows(latest[start : start + READ_ROWS], match_on), newer=True)
    if kept.through is None:
        return cursor
    return kept.through if cursor is None else max(_utc(cursor), _utc(kept.through))


def calls_for(client: Any, purpose: str) -> AbstractContextManager[Any]:
    """The target's calls inside the block count under `purpose` (CallCounter.purpose), for a
    client that counts its calls."""
    calls = getattr(client, "calls", None)
    return calls.purpose(purpose) if hasattr(calls, "purpose") else nullcontext()


def read_start(client: TargetClient, started: datetime) -> datetime:
    """The moment a read that began at `started` (our clock) began on the target's clock, less
    TARGET_CLOCK_MARGIN: a safe start for the next changed-since read. Every change the target
    makes after `started` is stamped at or after it, however far its clock is from ours. When
    the target cannot tell its clock, `started` less PULL_OVERLAP (a skew up to two minutes)."""
    ahead = client.clock_ahead()
    if ahead is None:
        return started - PULL_OVERLAP
    return started + ahead - TARGET_CLOCK_MARGIN


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def keep_cursor(conn: duckdb.DuckDBPyConnection, cursor: datetime | None) -> None:
    """After a run's changed-since reads: the next pull starts at the last read's cursor when
    that is later than the one stored (it covered everything the list reported until then)."""
    if cursor is None:
        return
    last = list_state(conn, "last_pull")
    if last is None or _utc(datetime.fromisoformat(last)) < _utc(cursor):
        set_list_state(conn, "last_pull", _utc(cursor).isoformat())


READ_ROWS = 5_000  # members of a listing read held in memory at a time (stored, then dropped)


def member_chunks(client: TargetClient, since: datetime | None) -> Iterator[list[RemoteMember]]:
    """The members changed since then (all when None), READ_ROWS at a time as the target lists
    them: a read of a whole list of a million members never sits in memory at once."""
    chunk: list[RemoteMember] = []
    for member in client.iter_members(since):
        chunk.append(member)
        if len(chunk) >= READ_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_members(
    client: TargetClient, match_on: str, since: datetime | None
) -> Iterator[list[dict[str, Any]]]:
    """member_chunks as `remote_members` rows."""
    for chunk in member_chunks(client, since):
        yield member_rows(chunk, match_on)


def member_rows(members: list[RemoteMember], match_on: str) -> list[dict[str, Any]]:
    """What `remote_members` keeps of members the target reported."""
    return [
        {
            "member_id": m.member_id,
            "match_key": remote_key(m, match_on),
            "status": m.status,
            "email_status": m.email_status,
            "unsubscribed_at": m.unsubscribed_at,
            "updated_at": m.updated_at,
            "blank": blank_fields(m),
        }
        for m in members
    ]


def blank_fields(member: RemoteMember) -> list[str]:
    """The fields the target showed empty for the member (sorted): a field it did not show at
    all is not among them (unknown, not empty)."""
    return sorted(
        name
        for name, value in member.fields.items()
        if not _present(value) or (isinstance(value, str) and not value.strip())
    )


def remote_key(member: RemoteMember, match_on: str) -> str | None:
    """The match key of a member as the target reported it, normalised like ours."""
    return _remote_key(_key_value(member, match_on), match_on)


def _key_value(member: Any, match_on: str) -> str | None:
    if match_on == "email":
        return member.email
    if match_on == "mobile":
        return member.mobile
    value = member.fields.get(match_on)
    return None if value is None else str(value)


def store_remote(
    conn: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]], newer: bool = False
) -> None:
    """What the target reported of these members replaces what it reported before; with
    `newer`, only where it is not older (by `updated_at`): rows stored out of the order they
    were read in (a client's kept reads, a state an acknowledgement carried) never put an
    older state over a newer one. `rows` hold each member once."""
    if not rows:
        return
    frame = pd.DataFrame(rows).astype({"unsubscribed_at": object, "updated_at": object})
    if "blank" not in frame:
        frame["blank"] = None
    frame["blank"] = frame["blank"].astype(object)
    on_conflict = (
        """ON CONFLICT (member_id) DO UPDATE SET
             match_key = excluded.match_key, status = excluded.status,
             email_status = excluded.email_status, unsubscribed_at = excluded.unsubscribed_at,
             updated_at = excluded.updated_at, pulled_at = excluded.pulled_at,
             blank = excluded.blank
           WHERE excluded.updated_at IS NULL OR remote_members.updated_at IS NULL
              OR excluded.updated_at >= remote_members.updated_at"""
        if newer
        else ""
    )
    conn.register("pulled", frame)
    conn.execute(
        f"""INSERT {"" if newer else "OR REPLACE "}INTO remote_members
             (member_id, match_key, status, email_status, unsubscribed_at, updated_at,
              pulled_at, blank)
           SELECT member_id, match_key, status, email_status,
                  unsubscribed_at::TIMESTAMPTZ, updated_at::TIMESTAMPTZ, current_timestamp,
                  blank::VARCHAR[]
           FROM pulled {on_conflict}"""
    )
    conn.unregister("pulled")


def _remote_key(value: str | None, match_on: str) -> str | None:
    if not value:
        return None
    if match_on == "email":
        return value.strip().lower()
    if match_on != "mobile":
        return value.strip()
    text = value.strip()
    try:
        number = phonenumbers.parse(text if text.startswith("+") else "+" + text, None)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# --- members ----------------------------------------------------------------------------------


# What to do about each member, decided in one SQL pass (cheap at 100,000 members):
# create | update | remove | unchanged | unsubscribed | import_type.
_ACTION_SQL = """
    CASE
      WHEN withdrawn THEN
        CASE WHEN on_list AND NOT removed_before THEN 'remove' ELSE 'unchanged' END
      WHEN remote_status = 'unsubscribed' THEN
        CASE WHEN $import_type = 'create_only' THEN 'import_type'
             WHEN $reimport AND remote_unsubscribed_at IS NOT NULL
                  AND modified > remote_unsubscribed_at
                  AND (sent_hash IS DISTINCT FROM fields_hash OR {groups_differ})
             THEN 'update' ELSE 'unsubscribed' END
      WHEN on_list THEN
        CASE WHEN sent_hash = fields_hash AND NOT {groups_differ} AND NOT removed_before
             THEN 'unchanged'
             WHEN $import_type = 'create_only' THEN 'import_type'
             ELSE 'update' END
      WHEN $import_type = 'update_only' THEN 'import_type'
      ELSE 'create'
    END"""


def has_groups(conn: duckdb.DuckDBPyConnection) -> bool:
    """Members carry group memberships (segments are configured): a `groups` column."""
    row = conn.execute(
        """SELECT count(*) FROM information_schema.columns
           WHERE table_name = 'members' AND column_name = ?""",
        [GROUPS],
    ).fetchall()[0]
    return bool(row[0])


def ensure_group_state(conn: duckdb.DuckDBPyConnection) -> None:
    """The groups the target acknowledged per member, beside its fields' hash."""
    conn.execute(f"ALTER TABLE sync_state ADD COLUMN IF NOT EXISTS {GROUPS} VARCHAR[]")


def plan_members(
    conn: duckdb.DuckDBPyConnection, settings: DeliverySettings, groups: bool = False
) -> None:
    """Create the temp table `member_plan`: the members that may need a call, with their action
    (see _ACTION_SQL); every member not in it is unchanged (plan_counts).

    Unsubscribed on the target: sent again only when `reimport_unsubscribed` is on and the source
    record changed after the unsubscribe. Withdrawn: removed if it is on the target. With groups,
    a member whose groups differ from the acknowledged ones is an update like a changed field.

    Only candidates are planned, so a run costs one narrow join over the list plus work for what
    changed: a member whose values and groups the list acknowledged (with its id, not removed
    since), not withdrawn and not unsubscribed there, is unchanged under every branch of
    _ACTION_SQL.
    """
    ensure_state(conn)
    sent_groups = f"s.{GROUPS}" if groups else "NULL::VARCHAR[]"
    differ = f"(m_groups IS DISTINCT FROM sent_{GROUPS})" if groups else "false"
    own_groups = f", m.{GROUPS} AS m_groups" if groups else ""
    groups_moved = f" OR m.{GROUPS} IS DISTINCT FROM s.{GROUPS}" if groups else ""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE plan_keys AS
            SELECT m.match_key FROM members m LEFT JOIN sync_state s USING (match_key)
            WHERE s.match_key IS NULL OR s.member_id IS NULL OR coalesce(s.removed, false)
               OR s.fields_hash IS DISTINCT FROM m.fields_hash OR m.withdrawn{groups_moved}
            UNION
            SELECT match_key FROM remote_members
            WHERE status = 'unsubscribed' AND match_key IS NOT NULL"""
    )
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE member_plan AS
        WITH joined AS (
            SELECT m.*, s.member_id AS known_id, s.fields_hash AS sent_hash,
                   s.sent_values AS sent_values,
                   {sent_groups} AS sent_{GROUPS}{own_groups},
                   coalesce(s.removed, false) AS removed_before,
                   r.member_id AS remote_id, r.status AS remote_status,
                   r.unsubscribed_at AS remote_unsubscribed_at, r.blank AS remote_blank
            FROM members m
            LEFT JOIN sync_state s USING (match_key)
            LEFT JOIN (SELECT * FROM remote_members
                       WHERE match_key IN (SELECT match_key FROM plan_keys) QUALIFY
                       row_number() OVER (PARTITION BY match_key ORDER BY updated_at DESC) = 1) r
                   ON r.match_key = m.match_key
            WHERE m.match_key IN (SELECT match_key FROM plan_keys)),
        flagged AS (
            SELECT *, remote_id IS NOT NULL OR (known_id IS NOT NULL AND NOT removed_before)
                      AS on_list
            FROM joined)
        SELECT *, {_ACTION_SQL.format(groups_differ=differ)} AS action FROM flagged
        """,
        {"reimport": settings.reimport_unsubscribed, "import_type": settings.import_type},
    )
    conn.execute("DROP TABLE plan_keys")


def plan_counts(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Members per action of the last plan; those not planned are unchanged."""
    counts = {
        action: int(n)
        for action, n in conn.execute(
            "SELECT action, count(*) FROM member_plan GROUP BY 1"
        ).fetchall()
    }
    (members,) = conn.execute("SELECT count(*) FROM members").fetchone()
    counts["unchanged"] = int(members) - sum(n for a, n in counts.items() if a != "unchanged")
    return counts


def _unchanged_by_source(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """plan_counts' `unchanged` per integration in the members' `sources` (none without it)."""
    (has_sources,) = conn.execute(
        """SELECT count(*) FROM information_schema.columns
           WHERE table_name = 'members' AND column_name = 'sources'"""
    ).fetchone()
    if not has_sources:
        return {}
    rows = conn.execute(
        """SELECT source, count(*) FROM (
               SELECT unnest(sources) AS source FROM members
               WHERE match_key NOT IN (
                   SELECT match_key FROM member_plan WHERE action <> 'unchanged'))
           GROUP BY source"""
    ).fetchall()
    return {str(source): int(n) for source, n in rows}


def planned_actions(conn: duckdb.DuckDBPyConnection, settings: DeliverySettings) -> dict[str, int]:
    """How many members this run would create, update and remove (for a call budget check)."""
    ensure_state(conn)
    groups = has_groups(conn)
    if groups:
        ensure_group_state(conn)
    plan_members(conn, settings, groups)
    rows = conn.execute(
        """SELECT action, count(*) FROM member_plan
           WHERE action IN ('create', 'update', 'remove') GROUP BY 1"""
    ).fetchall()
    actions = {action: int(n) for action, n in rows}
    actions["group_changes"] = 0  # each group joined or left is a call of its own on some targets
    if groups:
        (changes,) = conn.execute(
            """SELECT coalesce(sum(
                   len(list_filter(coalesce(m_groups, []), lambda g: NOT list_contains(
                       coalesce(sent_groups, []), g)))
                 + len(list_filter(coalesce(sent_groups, []), lambda g: NOT list_contains(
                       coalesce(m_groups, []), g)))), 0)
               FROM member_plan WHERE action IN ('create', 'update')"""
        ).fetchone()
        actions["group_changes"] = int(changes)
    return actions


def _present(value: Any) -> bool:
    return value is not None and value == value and value is not pd.NaT


# --- sending members without undoing an unsubscribe --------------------------------------------
#
# A target whose unsubscribes come back by being read (capabilities.feedback == "polled") may
# reactivate an unsubscribed member on a write. The unsubscribes pulled at the start of a run age
# while the run sends (at 100,000 members, for an hour), so:
# - updates (the member is on the list) go first; the client reads each member right before its
#   update and skips one the reimport rule does not let back (MemberAck `checked`).
# - creates go out in batches of `client.batch_size`, each preceded by a changed-since read of
#   the target (about one call per batch); a member that appeared on the target meanwhile is then
#   handed over as an update (`planned='create'`), checked like any update. The window left for
#   a member who both appeared and unsubscribed is one batch's sending time.


def deliver_members(
    conn: duckdb.DuckDBPyConnection,
    client: TargetClient,
    settings: DeliverySettings,
    fields: list[str],
    recreate: frozenset[str] = frozenset(),
) -> MemberReport:
    """Create, update and remove what changed; record each acknowledgement as it arrives.

    `recreate` holds match keys the target lost (see memberflow/reconcile.py), counted as
    `recreated` when they are acknowledged again. When `match_on` changed since the last run,
    the old keys are re-keyed afterwards (memberflow/rekey.py).
    """
    groups = has_groups(conn)
    _check_capabilities(client, settings, groups)
    ensure_state(conn)
    if groups:
        ensure_group_state(conn)
    fields = [name for name in fields if name != GROUPS]
    report = MemberReport()
    plan_members(conn, settings, groups)
    counts = plan_counts(conn)
    report.unchanged = counts.get("unchanged", 0)
    report.skipped_unsubscribed = counts.get("unsubscribed", 0)
    report.skipped_by_import_type = counts.get("import_type", 0)
    for source, n in _unchanged_by_source(conn).items():
        report.by_source.setdefault(source, {})["unchanged"] = n
    outcomes = _Outcomes(conn, report, recreate, groups, fields)
    existing, total = _stage_sends(conn)
    policy = settings.policy()
    size = max(1, int(client.batch_size))
    polled = client.capabilities.feedback == "polled"
    cursor: datetime | None = None
    # a planned create's member is absent from the target: every field is empty there (only
    # when the target's changed-since listing shows every change, so its copy is complete)
    complete = client.capabilities.lists_changes and vouched_absent(conn, settings.match_on)
    absent = frozenset(fields) if complete else None

    def changes(rows: list[dict[str, Any]]) -> list[MemberChange]:
        return [_change(row, fields, groups, absent) for row in rows]

    kept = polled and start_keeping_reads(conn, client, cursor)

    def store_kept() -> None:
        nonlocal cursor
        cursor = store_kept_reads(conn, client, settings.match_on, cursor)

    if kept:
        # the client's reads go in before the acknowledgements that came after them, so a
        # member removed after a read showed them stays removed in the warehouse
        outcomes.before_flush = store_kept

    def send(batch: list[dict[str, Any]]) -> None:
        outcomes.take(batch, client.write_members(changes(batch), policy))
        if kept:
            outcomes.flush()  # and the cursor moves on before the next batch's refresh

    try:
        for batch in _send_batches(conn, 0, existing, size):
            send(batch)
        for batch in _send_batches(conn, existing, total, size):
            if polled:
                before = client.calls.total
                cursor = refresh_feedback(conn, client, settings.match_on, cursor)
                report.refresh_calls += client.calls.total - before
                batch = _route_appeared(conn, batch)
            send(batch)
        outcomes.flush()
        _rekey(conn, client, settings, outcomes)
    finally:
        # Whatever stops delivery, what the target acknowledged is recorded (never resent).
        outcomes.flush()
        if kept:
            client.keep_reads(None)
    keep_cursor(conn, cursor)
    _quarantine_outcomes(conn, settings, SENDS, report)
    conn.execute(f"DROP TABLE {SENDS}")
    return report


def _check_capabilities(client: TargetClient, settings: DeliverySettings, groups: bool) -> None:
    """Fail before any send when the integration asks what the target cannot do."""
    caps = client.capabilities
    if settings.match_on not in caps.match_keys:
        raise TargetCannotError(
            f"{client.label} recognises members by {', '.join(sorted(caps.match_keys))}, not by "
            f"{settings.match_on}; change match_on (or merge_by_phone). Nothing was sent."
        )
    if groups and not caps.groups:
        raise TargetCannotError(
            f"{client.label} keeps no groups, but the members carry group memberships "
            "(segments are configured); remove the segments or choose a target with groups. "
            "Nothing was sent."
        )


def _rekey(
    conn: duckdb.DuckDBPyConnection,
    client: TargetClient,
    settings: DeliverySettings,
    outcomes: _Outcomes,
) -> None:
    """After the current members are delivered: settle the keys of an earlier `match_on`."""
    previous = list_state(conn, rekey.MATCH_ON)
    if previous is not None and previous != settings.match_on:
        if outcomes.report.transient_errors or outcomes.report.refused:
            # some current members have no acknowledged key: an old key of theirs would look
            # like a duplicate and be removed, so re-key only on a run where every one landed
            return
        forgotten, removals = rekey.stale_keys(conn, removable=previous == "external_id")
        outcomes.report.rekeyed_forgotten += forgotten
        for batch in _batches(removals, max(1, int(client.batch_size))):
            changes = [
                MemberChange(r["match_key"], "remove", member_id=r["member_id"]) for r in batch
            ]
            outcomes.take(batch, client.write_members(changes, settings.policy()), rekeyed=True)
        outcomes.flush()
        if outcomes.report.transient_errors:
            return  # the old keys left are settled on the next run
    set_list_state(conn, rekey.MATCH_ON, settings.match_on)


def _batches(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


SENDS = "member_sends"  # temp table: the plan's writes, numbered in the order they go out


def _stage_sends(conn: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """Number the planned writes into `member_sends`: updates and removals first, then creates,
    each in match-key order (creates go out batch by batch in this order). Returns (updates and
    removals, all). Batches are read from it one at a time: memory stays flat in the list's
    size."""
    conn.execute(
        f"""CREATE OR REPLACE TEMP TABLE {SENDS} AS
            SELECT row_number() OVER (ORDER BY action = 'create', match_key) AS n, *
            FROM member_plan WHERE action IN ('update', 'remove', 'create')
            ORDER BY n"""
    )
    (existing, total) = conn.execute(
        f"SELECT count(*) FILTER (WHERE action <> 'create'), count(*) FROM {SENDS}"
    ).fetchone()
    return int(existing), int(total)


def _send_batches(
    conn: duckdb.DuckDBPyConnection, start: int, end: int, size: int
) -> Iterator[list[dict[str, Any]]]:
    """Rows start+1 .. end of `member_sends`, `size` at a time, read as they are needed."""
    for first in range(start, end, size):
        frame = conn.execute(
            f"SELECT * EXCLUDE (n) FROM {SENDS} WHERE n > ? AND n <= ? ORDER BY n",
            [first, min(first + size, end)],
        ).df()
        yield frame.to_dict("records")


def _route_appeared(
    conn: duckdb.DuckDBPyConnection, batch: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Creates whose member appeared on the target since the plan become checked updates."""
    conn.register("batch_keys", pd.DataFrame({"match_key": [r["match_key"] for r in batch]}))
    appeared = {
        key
        for (key,) in conn.execute(
            "SELECT DISTINCT match_key FROM remote_members JOIN batch_keys USING (match_key)"
        ).fetchall()
    }
    conn.unregister("batch_keys")
    return [
        {**row, "action": "update", "planned": "create"} if row["match_key"] in appeared else row
        for row in batch
    ]


def _change(
    row: dict[str, Any],
    fields: list[str],
    groups: bool,
    absent: frozenset[str] | None = None,
) -> MemberChange:
    """One planned row as a MemberChange: canonical values of the mapped target fields.
    `absent`: what a planned create's member holds empty on the target when the core knows it
    holds no such member (every field), else None."""
    action = row["action"]
    member_id = row["remote_id"] if _present(row.get("remote_id")) else row.get("known_id")
    now = _group_tuple(row.get("m_groups")) if groups else None
    sent = _group_tuple(row.get(f"sent_{GROUPS}")) if groups else None
    values = {} if action == "remove" else {n: _canonical(row.get(n)) for n in fields}
    values = {k: (v if _present(v) else None) for k, v in values.items()}
    return MemberChange(
        match_key=row["match_key"],
        action=action,
        # a mapped field empty at the source goes as None: a target that can clear it does
        values=values,
        member_id=member_id if _present(member_id) else None,
        modified=_moment(row.get("modified")),
        planned=row.get("planned") if _present(row.get("planned")) else None,
        groups=now,
        groups_added=tuple(sorted(set(now or ()) - set(sent or ()))),
        groups_removed=tuple(sorted(set(sent or ()) - set(now or ()))),
        changed=_changed(values, row.get("sent_values"), action),
        remote_blank=absent if action == "create" else _names(row.get("remote_blank")),
    )


def _names(value: Any) -> frozenset[str] | None:
    """The fields the target showed empty at its last read of the member (None: no read)."""
    if value is None or isinstance(value, str) or not isinstance(value, Iterable):
        return None
    return frozenset(str(name) for name in value)


def values_json(values: dict[str, Any]) -> str:
    """The values as acknowledged, for the next run's comparison (sync_state.sent_values)."""
    return json.dumps(values, default=str, sort_keys=True, ensure_ascii=False)


def _changed(values: dict[str, Any], sent: Any, action: str) -> frozenset[str] | None:
    """Fields whose value differs from the last acknowledged one; a create: every field. None
    when the target's last values are unknown (acknowledged before they were kept)."""
    if action == "create":
        return frozenset(values)
    if not isinstance(sent, str) or action == "remove":
        return None
    before = json.loads(sent)
    now = json.loads(values_json(values))
    return frozenset(k for k in now if k not in before or before[k] != now[k])


def _group_tuple(value: Any) -> tuple[str, ...] | None:
    if value is None or (not isinstance(value, Iterable) or isinstance(value, str)):
        return None
    return tuple(sorted(str(v) for v in value))


def _canonical(value: Any) -> Any:
    """A plain Python value: pandas/numpy scalars as datetime, int, float, bool."""
    if isinstance(value, pd.Timestamp):
        return None if value is pd.NaT else value.to_pydatetime()
    if type(value).__module__ == "numpy":
        # a list column (collected values, groups) arrives as an array, a scalar as a 0-d value
        return value.tolist()
    return value


def _moment(value: Any) -> datetime | None:
    if not _present(value):
        return None
    moment = pd.Timestamp(value)
    return (moment if moment.tzinfo else moment.tz_localize(UTC)).to_pydatetime()


class _Outcomes:
    """Tallies each acknowledgement; writes them and the target's answers in batches."""

    def __init__(
        self,
        conn: duckdb.DuckDBPyConnection,
        report: MemberReport,
        recreate: frozenset[str],
        groups: bool,
        fields: list[str] | None = None,
    ) -> None:
        self.conn, self.report, self.recreate, self.groups = conn, report, recreate, groups
        self.fields = fields
        self.acks: list[dict[str, Any]] = []
        self.remote: list[dict[str, Any]] = []
        self.before_flush: Callable[[], None] | None = None  # run first by every flush

    def take(
        self, batch: list[dict[str, Any]], acks: Iterable[MemberAck], rekeyed: bool = False
    ) -> None:
        rows = {row["match_key"]: row for row in batch}
        for ack in acks:
            row = rows[ack.match_key]
            _tally(self.report, ack, rekeyed)
            if not rekeyed:
                _tally_sources(self.report, ack, row)
            if state := self._state(ack, row):
                self.acks.append(state)
                self.report.recreated += ack.match_key in self.recreate and not state["removed"]
            if ack.outcome == "unsubscribed" and ack.remote is not None:
                self.remote.append(_remote_row(ack))
            if len(self.acks) + len(self.remote) >= ACK_BATCH:
                self.flush()
            if ack.outcome in ("created", "updated", "removed"):
                progress.note(members=1)  # sent and answered, as answers arrive

    def _state(self, ack: MemberAck, row: dict[str, Any]) -> dict[str, Any] | None:
        """The sync_state row an acknowledgement writes, or None (nothing acknowledged)."""
        if ack.outcome not in ("created", "updated", "removed"):
            return None
        removed = ack.outcome == "removed"
        member_id = ack.member_id
        if member_id is None:
            member_id = row.get("member_id") or row.get("remote_id") or row.get("known_id")
        state = {
            "match_key": ack.match_key,
            "member_id": member_id,
            "fields_hash": None if removed else row.get("fields_hash"),
            "action": {"created": "create", "updated": "update"}.get(ack.outcome, "remove"),
            "acked_at": datetime.now(UTC),
            "removed": removed,
            "sent_values": None
            if removed or self.fields is None
            else _sent_values(row, self.fields, {name for name, _ in ack.dropped}),
        }
        if self.groups:
            now = None if removed else _group_tuple(row.get("m_groups"))
            state[GROUPS] = None if now is None else list(now)
        return state

    def flush(self) -> None:
        """The acknowledgements and the states they carried; first what `before_flush` stores
        (a client's kept reads), which were read before them. A failure there still records
        the acknowledgements (never resent) and is raised after."""
        keeping = self.before_flush is not None
        try:
            if self.before_flush is not None:
                self.before_flush()
        finally:
            _record_acks(self.conn, self.acks, self.groups)
            latest = list({row["member_id"]: row for row in self.remote}.values())
            # where kept reads went in just before, an ack's state (from an earlier read, or
            # the same second: then the ack's) never hides a newer one; without kept reads an
            # ack's state replaces the row, whose stamp may come from another feed
            store_remote(self.conn, latest, newer=keeping)
            self.acks, self.remote = [], []


def _sent_values(row: dict[str, Any], fields: list[str], dropped: set[str]) -> str:
    """The values the target took: a field it dropped is left out, so it counts as changed
    (and is sent again) next time."""
    values = {n: _canonical(row.get(n)) for n in fields if n not in dropped}
    return values_json({k: (v if _present(v) else None) for k, v in values.items()})


def _remote_row(ack: MemberAck) -> dict[str, Any]:
    remote = ack.remote
    assert remote is not None
    return {
        "member_id": remote.member_id,
        "match_key": ack.match_key,
        "status": remote.status,
        "email_status": remote.email_status,
        "unsubscribed_at": remote.unsubscribed_at,
        "updated_at": remote.updated_at,
        "blank": blank_fields(remote),
    }


def _tally(report: MemberReport, ack: MemberAck, rekeyed: bool) -> None:
    outcome = ack.outcome
    report.checks_before_update += ack.checked
    report.dropped_fields += [
        {"match_key": ack.match_key, "field": f, "reason": r} for f, r in ack.dropped
    ]
    if outcome == "created":
        report.created += 1
    elif outcome == "updated":
        report.updated += 1
    elif outcome == "removed" and rekeyed:
        report.rekeyed_removed += 1
    elif outcome == "removed":
        report.removed += 1
    elif outcome == "unsubscribed":
        report.skipped_unsubscribed += 1
        report.unsubscribed_meanwhile += 1
    elif outcome == "import_type":
        report.skipped_by_import_type += 1
    elif outcome == "refused":
        report.refused.append({"match_key": ack.match_key, "reason": ack.reason or ""})
    else:
        report.transient_errors.append(f"{ack.match_key}: {ack.reason}")


def _tally_sources(report: MemberReport, ack: MemberAck, row: dict[str, Any]) -> None:
    """An acknowledged write, counted under each integration the member's record came from."""
    if ack.outcome not in ("created", "updated", "removed"):
        return
    sources = row.get("sources")
    if sources is None or isinstance(sources, str) or not isinstance(sources, Iterable):
        return
    for source in sources:
        figures = report.by_source.setdefault(str(source), {})
        figures[ack.outcome] = figures.get(ack.outcome, 0) + 1


def _record_acks(conn: duckdb.DuckDBPyConnection, acks: list[dict[str, Any]], groups: bool) -> None:
    if not acks:
        return
    frame = pd.DataFrame(acks).astype({"fields_hash": object, "member_id": object})
    if "sent_values" not in frame:
        frame["sent_values"] = None
    frame = frame.astype({"sent_values": object})
    conn.register("acks", frame)
    columns = "match_key, member_id, fields_hash, action, acked_at, removed, sent_values"
    values = (
        "match_key, member_id, fields_hash, action, acked_at::TIMESTAMPTZ, removed, "
        "sent_values::VARCHAR"
    )
    if groups:
        columns += f", {GROUPS}"
        values += f", {GROUPS}::VARCHAR[]"
    conn.execute(f"INSERT OR REPLACE INTO sync_state ({columns}) SELECT {values} FROM acks")
    # A member we took off the target is no longer there: forget the target's last word on it,
    # so a consent given again creates it anew (also under create_only).
    conn.execute(
        "DELETE FROM remote_members WHERE member_id IN (SELECT member_id FROM acks WHERE removed)"
    )
    conn.unregister("acks")


def _quarantine_outcomes(
    conn: duckdb.DuckDBPyConnection,
    settings: DeliverySettings,
    attempted: str,
    report: MemberReport,
) -> None:
    """This run's verdicts (refusals, dropped fields) replace earlier ones for the members it
    tried to send (the table `attempted`); each row carries this run's id. Members not sent keep
    their last verdict."""
    ensure_bookkeeping(conn)
    conn.execute(
        f"""DELETE FROM quarantine WHERE stage = 'deliver' AND entity = 'members'
           AND match_key IN (SELECT match_key FROM {attempted})"""
    )
    rows = [{**r, "field": None, "action": "row withheld"} for r in report.refused] + [
        {**r, "action": "field dropped"} for r in report.dropped_fields
    ]
    if not rows:
        return
    present = {
        name
        for (name,) in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'quarantine'"
        ).fetchall()
    }
    extra = [c for c in ("field", "action") if c in present]  # columns added by issue 6, item 2
    frame = pd.DataFrame(rows, columns=["match_key", "reason", "field", "action"], dtype=object)
    conn.register("verdicts", frame)
    conn.execute(
        f"""INSERT INTO quarantine (integration, entity, stage, record_id, match_key, reason,
                                    payload, run_id{"".join(", " + c for c in extra)})
            SELECT 'list', 'members', 'deliver', NULL, match_key, reason, NULL,
                   ?{"".join(", " + c for c in extra)} FROM verdicts""",
        [settings.run_id],
    )
    conn.unregister("verdicts")
