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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pandas as pd

from memberflow.delivery import (
    ensure_state,
    list_state,
    read_members,
    set_list_state,
    store_remote,
)
from resources.target import TargetClient

FULL_LISTING_HOURS = 24.0
LAST_FULL_LISTING = "last_full_listing"  # key in list_state; an ISO time on our clock


@dataclass(frozen=True)
class Reconciliation:
    """What one comparison of the acknowledged state with the list found."""

    on_list: int | None  # the list's own count; None when the target cannot say
    acknowledged: int
    full_listing: str  # why the whole list was read ("" when it was not)
    missing: frozenset[str]  # match keys acknowledged but not on the list
    events_to_resend: int

    def metadata(self) -> dict[str, Any]:
        return {
            "members_on_list_reported": self.on_list if self.on_list is not None else "unknown",
            "acknowledged_before_run": self.acknowledged,
            "full_listing": self.full_listing or "not needed",
            "missing_on_list": len(self.missing),
            "events_to_resend": self.events_to_resend,
        }


def unlisted(conn: duckdb.DuckDBPyConnection) -> Reconciliation:
    """For a target that cannot count or list its members: nothing to compare, nothing lost."""
    ensure_state(conn)
    return Reconciliation(
        None, _acknowledged(conn), "the target cannot list its members", frozenset(), 0
    )


def _acknowledged(conn: duckdb.DuckDBPyConnection) -> int:
    return int(
        conn.execute(
            "SELECT count(DISTINCT member_id) FROM sync_state WHERE NOT removed"
        ).fetchall()[0][0]
    )


def reconcile(
    conn: duckdb.DuckDBPyConnection,
    client: TargetClient,
    match_on: str,
    full_every_hours: float = FULL_LISTING_HOURS,
    now: datetime | None = None,
) -> Reconciliation:
    """Compare the list with what it acknowledged; forget what it lost (see module docstring)."""
    ensure_state(conn)
    now = now or datetime.now(UTC)
    acknowledged = _acknowledged(conn)
    on_list = client.member_count()
    last = list_state(conn, LAST_FULL_LISTING)
    why = ""
    if on_list is not None and on_list < acknowledged:
        why = f"the list holds {on_list} members, {acknowledged} acknowledged"
    elif last is None or now - datetime.fromisoformat(last) >= timedelta(hours=full_every_hours):
        why = f"periodic (every {full_every_hours:g} h)"
    if not why:
        return Reconciliation(on_list, acknowledged, "", frozenset(), 0)
    listed = read_members(client, match_on, None)
    if on_list is not None and len(listed) < on_list:
        # Page-number listings skip members when others are deleted meanwhile, and a short page
        # ends the listing early: forgetting on a listing that doesn't add up to the list's own
        # count would resend members' events needlessly. Try again next run.
        why = f"{why}; not acted on: the listing gave {len(listed)} of {on_list} members"
        return Reconciliation(on_list, acknowledged, why, frozenset(), 0)
    conn.execute("BEGIN TRANSACTION")
    try:
        missing, events = _forget_missing(conn, listed)
        set_list_state(conn, LAST_FULL_LISTING, now.isoformat())
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return Reconciliation(on_list, acknowledged, why, missing, events)


def _forget_missing(
    conn: duckdb.DuckDBPyConnection, listed: list[dict[str, Any]]
) -> tuple[frozenset[str], int]:
    """Forget acknowledged members absent from the full listing `listed`, and their events.

    Absent means neither its match key nor its member id is listed (a member whose email was
    edited on the list is still there, and must not be created twice).
    """
    frame = pd.DataFrame(listed, columns=["member_id", "match_key", "status"], dtype=object)
    conn.register("listed", frame)
    conn.execute(
        """CREATE OR REPLACE TEMP TABLE missing_on_list AS
           SELECT match_key FROM sync_state s
           WHERE NOT s.removed
             AND s.match_key NOT IN (SELECT match_key FROM listed WHERE match_key IS NOT NULL)
             AND s.member_id NOT IN (SELECT member_id FROM listed WHERE member_id IS NOT NULL)"""
    )
    # The list's word on members it no longer holds is void, except an unsubscribe (see above).
    conn.execute(
        """DELETE FROM remote_members WHERE status IS DISTINCT FROM 'unsubscribed'
           AND member_id NOT IN (SELECT member_id FROM listed WHERE member_id IS NOT NULL)"""
    )
    conn.unregister("listed")
    store_remote(conn, listed)
    events = 0
    if _has_table(conn, "tracking_events"):
        events = conn.execute(
            """DELETE FROM event_sync WHERE event_id IN (
                   SELECT event_id FROM tracking_events
                   WHERE match_key IN (SELECT match_key FROM missing_on_list))"""
        ).fetchall()[0][0]
    conn.execute(
        "DELETE FROM sync_state WHERE match_key IN (SELECT match_key FROM missing_on_list)"
    )
    missing = frozenset(
        k for (k,) in conn.execute("SELECT match_key FROM missing_on_list").fetchall()
    )
    conn.execute("DROP TABLE missing_on_list")
    return missing, int(events)


def _has_table(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
    ).fetchall()[0]
    return bool(row[0])
