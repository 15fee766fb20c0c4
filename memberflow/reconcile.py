"""Reconciliation: notice a list that no longer holds members it acknowledged (emptied, restored
from an older backup, members deleted by hand) and send them again.

Only for a target that can count and list its members (capabilities.listing). Delivery sends
only what changed against what the list acknowledged (X2), so a list that lost
members would otherwise never get them back. Each run asks the list how many members it holds
(one call) and compares that with the members it acknowledged (`sync_state`, not removed). When
the list holds fewer, or the last full listing is older than `full_every_hours` (a list can lose
some members and gain as many others, which no count shows), the whole list is read and
every acknowledged member missing from it is forgotten, so delivery creates it again this run.
Its events' acknowledgements (`event_sync`) are forgotten too: a list that lost a member lost the
member's activity with it, so the events are sent again.

A member whose last word from the list was "unsubscribed" is forgotten but not sent again: it is
never this pipeline's place to re-subscribe someone because a list lost them.

The count is also compared with what the last full listing counted plus what was acknowledged
since: a list holding fewer lost members (unsubscribed ones vanish from some lists' listings) even
when others added there hide it from the first comparison. With `notice_additions` (a two-way
integration, which creates members added on the list at its source), a list holding more gained
members nobody sent, and is read whole too.
Those members (not acknowledged, not members of this run's model) come back as
`only_on_list` feedback.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pandas as pd

from memberflow.delivery import (
    calls_for,
    ensure_state,
    list_state,
    member_chunks,
    member_rows,
    remote_key,
    set_list_state,
)
from memberflow.member_events import table_exists
from resources.base import RemoteMember
from resources.feedback import Feedback
from resources.target import TargetClient

FULL_LISTING_HOURS = 24.0
LAST_FULL_LISTING = "last_full_listing"  # key in list_state; an ISO time on our clock
LISTING_BASE = "listing_base"  # key in list_state: "<listed>/<acknowledged>" at the last listing
LISTED = "listed_members"  # temp table: the whole listing of one reconciliation


@dataclass(frozen=True)
class Reconciliation:
    """What one comparison of the acknowledged state with the list found."""

    on_list: int | None  # the list's own count; None when the target cannot say
    acknowledged: int
    full_listing: str  # why the whole list was read ("" when it was not)
    missing: frozenset[str]  # match keys acknowledged but not on the list: created again
    events_to_resend: int
    only_on_list: tuple[Feedback, ...] = ()  # members nobody sent (with notice_additions)
    # acknowledged, not listed, and last heard of as unsubscribed: forgotten, never sent again
    left_unsubscribed: frozenset[str] = frozenset()

    def metadata(self) -> dict[str, Any]:
        return {
            "members_on_list_reported": self.on_list if self.on_list is not None else "unknown",
            "acknowledged_before_run": self.acknowledged,
            "full_listing": self.full_listing or "not needed",
            "missing_on_list": len(self.missing),
            "unsubscribed_not_listed": len(self.left_unsubscribed),
            "events_to_resend": self.events_to_resend,
            "only_on_list": len(self.only_on_list),
        }


def unlisted(conn: duckdb.DuckDBPyConnection) -> Reconciliation:
    """For a target that cannot count or list its members: nothing to compare, nothing lost."""
    ensure_state(conn)
    return Reconciliation(
        None, _acknowledged(conn), "the target cannot list its members", frozenset(), 0
    )


def _acknowledged(conn: duckdb.DuckDBPyConnection) -> int:
    """Members acknowledged and not removed; one written without the target's id (a bulk
    import answers none) counts by its key."""
    return int(
        conn.execute(
            """SELECT count(DISTINCT coalesce(member_id, 'key:' || match_key))
               FROM sync_state WHERE NOT removed"""
        ).fetchall()[0][0]
    )


def reconcile(
    conn: duckdb.DuckDBPyConnection,
    client: TargetClient,
    match_on: str,
    full_every_hours: float = FULL_LISTING_HOURS,
    now: datetime | None = None,
    notice_additions: bool = False,
) -> Reconciliation:
    """Compare the list with what it acknowledged; forget what it lost (see module docstring)."""
    ensure_state(conn)
    now = now or datetime.now(UTC)
    acknowledged = _acknowledged(conn)
    with calls_for(client, "count"):
        on_list = client.member_count()
    last = list_state(conn, LAST_FULL_LISTING)
    why = ""
    expected = _expected_count(conn, acknowledged)
    if on_list is not None and on_list < acknowledged:
        why = f"the list holds {on_list} members, {acknowledged} acknowledged"
    elif on_list is not None and expected is not None and on_list < expected:
        why = f"the list holds {on_list} members, {expected} expected: members left it"
    elif notice_additions and on_list is not None and expected is not None and on_list > expected:
        why = f"the list holds {on_list} members, {expected} expected: members were added there"
    elif last is None or now - datetime.fromisoformat(last) >= timedelta(hours=full_every_hours):
        why = f"periodic (every {full_every_hours:g} h)"
    if not why:
        return Reconciliation(on_list, acknowledged, "", frozenset(), 0)
    try:
        with calls_for(client, "full listing"):
            count, extra = _read_listing(conn, client, match_on, now, notice_additions)
        # distinct members: a page-number listing may show one member twice when another is
        # deleted meanwhile, which a row count would take for the member it skipped
        ((count,),) = conn.execute(f"SELECT count(DISTINCT member_id) FROM {LISTED}").fetchall()
        if on_list is not None and count < on_list:
            # Page-number listings skip members when others are deleted meanwhile, and a short
            # page ends the listing early: forgetting on a listing that doesn't add up to the
            # list's own count would resend members' events needlessly. Try again next run.
            why = f"{why}; not acted on: the listing gave {count} of {on_list} members"
            return Reconciliation(on_list, acknowledged, why, frozenset(), 0)
        conn.execute("BEGIN TRANSACTION")
        try:
            missing, unsubscribed, events = _forget_missing(conn)
            set_list_state(conn, LAST_FULL_LISTING, now.isoformat())
            # the list's own count beside ours: the next runs compare a count with a count (a
            # list may count its members otherwise than its listing lists them)
            base = on_list if on_list is not None else count
            set_list_state(conn, LISTING_BASE, f"{base}/{_acknowledged(conn)}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {LISTED}")
    return Reconciliation(on_list, acknowledged, why, missing, events, extra, unsubscribed)


def _expected_count(conn: duckdb.DuckDBPyConnection, acknowledged: int) -> int | None:
    """What the list should count now: the last listing's count plus the members acknowledged
    since (negative when removed); None before the first listing."""
    base = list_state(conn, LISTING_BASE)
    if base is None:
        return None
    listed, acknowledged_then = (int(part) for part in base.split("/"))
    return listed + acknowledged - acknowledged_then


def _read_listing(
    conn: duckdb.DuckDBPyConnection,
    client: TargetClient,
    match_on: str,
    now: datetime,
    notice_additions: bool,
) -> tuple[int, tuple[Feedback, ...]]:
    """The whole list into the temp table LISTED, one chunk of members at a time (a listing of
    a million members never sits in memory at once); returns how many were listed and, with
    `notice_additions`, the listed members nobody acknowledged (see _only_on_list)."""
    conn.execute(
        f"""CREATE OR REPLACE TEMP TABLE {LISTED} (
                member_id VARCHAR, match_key VARCHAR, status VARCHAR, email_status VARCHAR,
                unsubscribed_at TIMESTAMPTZ, updated_at TIMESTAMPTZ)"""
    )
    count = 0
    extra: list[Feedback] = []
    for chunk in member_chunks(client, None):
        rows = member_rows(chunk, match_on)
        frame = pd.DataFrame(rows, columns=_ROW_COLUMNS).astype(
            {"member_id": object, "match_key": object, "status": object, "email_status": object}
        )
        frame = frame.astype({"unsubscribed_at": object, "updated_at": object})
        conn.register("listed_chunk", frame)
        conn.execute(
            f"""INSERT INTO {LISTED} SELECT member_id, match_key, status, email_status,
                   unsubscribed_at::TIMESTAMPTZ, updated_at::TIMESTAMPTZ FROM listed_chunk"""
        )
        conn.unregister("listed_chunk")
        count += len(rows)
        if notice_additions:
            extra += _only_on_list(conn, chunk, match_on, now)
    return count, tuple(extra)


_ROW_COLUMNS = ["member_id", "match_key", "status", "email_status", "unsubscribed_at", "updated_at"]


def _only_on_list(
    conn: duckdb.DuckDBPyConnection, remote: list[RemoteMember], match_on: str, now: datetime
) -> list[Feedback]:
    """Listed members (of one chunk of the listing) whose key nobody acknowledged and no member
    of the model carries."""
    keys = [remote_key(member, match_on) for member in remote]
    asked = [key for key in keys if key]
    if not asked:
        return []
    conn.register("chunk_keys", pd.DataFrame({"match_key": asked}, dtype=object))
    known_in = "SELECT match_key FROM sync_state"
    if table_exists(conn, "members"):
        known_in += " UNION ALL SELECT match_key FROM members"
    known = {
        key
        for (key,) in conn.execute(
            f"SELECT DISTINCT match_key FROM chunk_keys WHERE match_key IN ({known_in})"
        ).fetchall()
    }
    conn.unregister("chunk_keys")
    return [
        Feedback("only_on_target", key, member.member_id, now, {}, member.fields)
        for member, key in zip(remote, keys, strict=True)
        if key and key not in known and member.status != "unsubscribed"
    ]


def _forget_missing(
    conn: duckdb.DuckDBPyConnection,
) -> tuple[frozenset[str], frozenset[str], int]:
    """Forget acknowledged members absent from the full listing (the table LISTED), and their
    events.

    Absent means neither its match key nor its member id is listed (a member whose email was
    edited on the list is still there, and must not be created twice). Returns the keys to
    create again, the keys last heard of as unsubscribed (some lists hide those from their
    listing; they are forgotten but never sent again), and how many events will be resent.
    """
    conn.execute(
        f"""CREATE OR REPLACE TEMP TABLE missing_on_list AS
           SELECT s.match_key, EXISTS (
                    SELECT 1 FROM remote_members r WHERE r.status = 'unsubscribed'
                      AND (r.match_key = s.match_key OR r.member_id = s.member_id)
                  ) AS unsubscribed
           FROM sync_state s
           WHERE NOT s.removed
             AND s.match_key NOT IN (SELECT match_key FROM {LISTED} WHERE match_key IS NOT NULL)
             AND (s.member_id IS NULL OR s.member_id NOT IN (
                  SELECT member_id FROM {LISTED} WHERE member_id IS NOT NULL))"""
    )
    # an acknowledgement without the target's id learns it from the listing, by key
    conn.execute(
        f"""UPDATE sync_state SET member_id = l.member_id FROM {LISTED} l
           WHERE sync_state.member_id IS NULL AND l.match_key = sync_state.match_key
             AND l.member_id IS NOT NULL"""
    )
    # The list's word on members it no longer holds is void, except an unsubscribe (see above).
    conn.execute(
        f"""DELETE FROM remote_members WHERE status IS DISTINCT FROM 'unsubscribed'
           AND member_id NOT IN (SELECT member_id FROM {LISTED} WHERE member_id IS NOT NULL)"""
    )
    # what the list reported replaces what it reported before (delivery.store_remote), except
    # the fields it showed empty (`blank`), kept from the pulls, which read every change
    conn.execute(
        f"""INSERT OR REPLACE INTO remote_members
              (member_id, match_key, status, email_status, unsubscribed_at, updated_at,
               pulled_at)
            SELECT member_id, match_key, status, email_status, unsubscribed_at, updated_at,
                   current_timestamp
            FROM {LISTED}"""
    )
    events = 0
    if table_exists(conn, "tracking_events"):
        events = conn.execute(
            """SELECT count(*) FROM event_sync WHERE event_id IN (
                   SELECT event_id FROM tracking_events WHERE match_key IN (
                       SELECT match_key FROM missing_on_list WHERE NOT unsubscribed))"""
        ).fetchall()[0][0]
        # only the events of members created again are sent again; an unsubscribed member's
        # stay acknowledged (if it ever comes back, its history is not sent twice)
        conn.execute(
            """DELETE FROM event_sync WHERE event_id IN (
                   SELECT event_id FROM tracking_events WHERE match_key IN (
                       SELECT match_key FROM missing_on_list WHERE NOT unsubscribed))"""
        )
    conn.execute(
        "DELETE FROM sync_state WHERE match_key IN (SELECT match_key FROM missing_on_list)"
    )
    rows = conn.execute("SELECT match_key, unsubscribed FROM missing_on_list").fetchall()
    conn.execute("DROP TABLE missing_on_list")
    missing = frozenset(key for key, gone in rows if not gone)
    unsubscribed = frozenset(key for key, gone in rows if gone)
    return missing, unsubscribed, int(events)
