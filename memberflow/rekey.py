"""Re-keying: what becomes of members acknowledged under an earlier `match_on`.

Switching `merge_by_phone` on or off changes what a member is recognised by (mobile or the
source record's external id), so the members of this run carry new match keys while `sync_state`
still holds the old ones. After the current members are delivered, each acknowledged old key
that no member carries any more is either
- forgotten (its row deleted, no call): the target member it names is acknowledged under a
  current key too, so it lives on under that key; or
- removed from the target: no current key names its target member, so it is a duplicate of a
  member that was merged into another (or split off under a new key).
Removal happens only when the old keys were external ids (one member per source record): such a
record either lives on inside a merged member or is gone from the source, so its own member is a
duplicate either way. An old email or mobile key that no current member carries (say, a member
without a mobile after switching to match on mobile) is forgotten but left on the target: a
list's members are never deleted because a setting changed.
`list_state` keeps the `match_on` of the last complete run.
"""

from __future__ import annotations

from typing import Any

import duckdb

MATCH_ON = "match_on"  # key in list_state


def stale_keys(
    conn: duckdb.DuckDBPyConnection, removable: bool = True
) -> tuple[int, list[dict[str, Any]]]:
    """Forget the old keys whose member lives on under a current key (and, unless `removable`,
    every other old key too); return how many, and the old keys (with member ids) to take off
    the target."""
    conn.execute(
        """CREATE OR REPLACE TEMP TABLE stale_keys AS
           SELECT s.match_key, s.member_id,
                  EXISTS (SELECT 1 FROM sync_state c JOIN members m USING (match_key)
                          WHERE c.member_id = s.member_id AND NOT c.removed) AS lives_on
           FROM sync_state s
           WHERE NOT s.removed
             AND s.match_key NOT IN (SELECT match_key FROM members WHERE match_key IS NOT NULL)"""
    )
    if not removable:
        conn.execute("UPDATE stale_keys SET lives_on = true")
    forgotten = conn.execute(
        """DELETE FROM sync_state WHERE match_key IN
               (SELECT match_key FROM stale_keys WHERE lives_on)"""
    ).fetchall()[0][0]
    removals = [
        {"match_key": key, "member_id": member_id}
        for key, member_id in conn.execute(
            "SELECT match_key, member_id FROM stale_keys WHERE NOT lives_on ORDER BY match_key"
        ).fetchall()
    ]
    conn.execute("DROP TABLE stale_keys")
    return int(forgotten), removals
