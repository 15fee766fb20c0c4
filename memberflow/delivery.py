"""Delivery: send the target only what changed (X2), remember every acknowledgement, pull
unsubscribes and bounces back.

State lives in the list's warehouse: `sync_state` (what the target last acknowledged per match
key), `remote_members` (what the target reported), `event_sync` (events sent or refused). Each
acknowledgement is written as it arrives, in small batches, so a crash resends nothing that was
acknowledged and loses nothing that was not.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pandas as pd
import phonenumbers

from resources.base import ListField, TargetClient, UpsertFlags, VendorError

ACK_BATCH = 500


class MappingCheckError(RuntimeError):
    """A mapped field does not exist on the target list (C7); nothing was sent."""


@dataclass(frozen=True)
class DeliverySettings:
    list_id: str
    match_on: str
    import_type: str  # create_only | create_and_update | update_only
    reimport_unsubscribed: bool
    flags: UpsertFlags
    tracking_id: str | None = None
    concurrency: int = 8
    run_id: str = ""


@dataclass
class MemberReport:
    created: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped_unsubscribed: int = 0
    skipped_by_import_type: int = 0
    refused: list[dict[str, str]] = field(default_factory=list)
    transient_errors: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "created": self.created,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "skipped_unsubscribed": self.skipped_unsubscribed,
            "skipped_by_import_type": self.skipped_by_import_type,
            "refused": len(self.refused),
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
        """
    )


def _state(conn: duckdb.DuckDBPyConnection, key: str) -> str | None:
    rows = conn.execute("SELECT value FROM list_state WHERE key = ?", [key]).fetchall()
    return rows[0][0] if rows else None


def _set_state(conn: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO list_state VALUES (?, ?)", [key, value])


# --- C7: mapped fields must exist on the list -------------------------------------------------


def check_mapping(client: TargetClient, list_id: str, fields: list[str]) -> dict[str, ListField]:
    """Fetch the list's fields and fail before any send if a mapped one is missing."""
    known = client.list_fields(list_id)
    missing = [name for name in fields if name not in known]
    if missing:
        raise MappingCheckError(
            f"list {list_id} has no field(s) {', '.join(missing)}; create them on the list "
            "(custom fields with exactly these names) or remove them from the mapping. "
            "Nothing was sent."
        )
    return known


# --- pull-back: unsubscribes and bounces ------------------------------------------------------


def pull_feedback(
    conn: duckdb.DuckDBPyConnection, client: TargetClient, list_id: str, match_on: str
) -> dict[str, int]:
    """Read members changed on the list since the last pull (all of them the first time)."""
    ensure_state(conn)
    last = _state(conn, "last_pull")
    since = datetime.fromisoformat(last) if last else None
    started = datetime.now(UTC)
    rows = [
        {
            "member_id": m.member_id,
            "match_key": _remote_key(m.email if match_on == "email" else m.mobile, match_on),
            "status": m.status,
            "email_status": m.email_status,
            "unsubscribed_at": m.unsubscribed_at,
            "updated_at": m.updated_at,
        }
        for m in client.iter_members(list_id, since)
    ]
    if rows:
        frame = pd.DataFrame(rows).astype({"unsubscribed_at": object, "updated_at": object})
        conn.register("pulled", frame)
        conn.execute(
            """INSERT OR REPLACE INTO remote_members
               SELECT member_id, match_key, status, email_status,
                      unsubscribed_at::TIMESTAMPTZ, updated_at::TIMESTAMPTZ, current_timestamp
               FROM pulled"""
        )
        conn.unregister("pulled")
    # Overlap the next window by two minutes: the target's clock and ours may differ a little,
    # and re-reading a member is harmless (INSERT OR REPLACE).
    _set_state(conn, "last_pull", (started - timedelta(minutes=2)).isoformat())
    return {
        "pulled": len(rows),
        "unsubscribed": sum(1 for r in rows if r["status"] == "unsubscribed"),
        "bounced": sum(1 for r in rows if r["email_status"] in ("hard_bounce", "complaint")),
    }


def _remote_key(value: str | None, match_on: str) -> str | None:
    if not value:
        return None
    if match_on == "email":
        return value.strip().lower()
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
                  AND sent_hash IS DISTINCT FROM fields_hash
             THEN 'update' ELSE 'unsubscribed' END
      WHEN on_list THEN
        CASE WHEN sent_hash = fields_hash AND NOT removed_before THEN 'unchanged'
             WHEN $import_type = 'create_only' THEN 'import_type'
             ELSE 'update' END
      WHEN $import_type = 'update_only' THEN 'import_type'
      ELSE 'create'
    END"""


def plan_members(conn: duckdb.DuckDBPyConnection, settings: DeliverySettings) -> None:
    """Create the temp table `member_plan`: every member with its action (see _ACTION_SQL).

    Unsubscribed on the list: sent again only when `reimport_unsubscribed` is on and the source
    record changed after the unsubscribe. Withdrawn: removed if it is on the list.
    """
    ensure_state(conn)
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE member_plan AS
        WITH joined AS (
            SELECT m.*, s.member_id AS known_id, s.fields_hash AS sent_hash,
                   coalesce(s.removed, false) AS removed_before,
                   r.member_id AS remote_id, r.status AS remote_status,
                   r.unsubscribed_at AS remote_unsubscribed_at
            FROM members m
            LEFT JOIN sync_state s USING (match_key)
            LEFT JOIN (SELECT * FROM remote_members QUALIFY
                       row_number() OVER (PARTITION BY match_key ORDER BY updated_at DESC) = 1) r
                   ON r.match_key = m.match_key),
        flagged AS (
            SELECT *, remote_id IS NOT NULL OR (known_id IS NOT NULL AND NOT removed_before)
                      AS on_list
            FROM joined)
        SELECT *, {_ACTION_SQL} AS action FROM flagged
        """,
        {"reimport": settings.reimport_unsubscribed, "import_type": settings.import_type},
    )


def _present(value: Any) -> bool:
    return value is not None and value == value and value is not pd.NaT


def wire_fields(
    row: dict[str, Any], fields: list[str], list_fields: dict[str, ListField], client: TargetClient
) -> dict[str, Any]:
    """Values in the target's wire format; raises ValueError naming a field that cannot be sent."""
    out: dict[str, Any] = {}
    for name in fields:
        value = row.get(name)
        if not _present(value) or value == "":
            continue
        spec = list_fields[name]
        if spec.format == "choice":
            value = choice_option_id(name, spec, value)
        elif name == "mobile" and client.mobile_wire_format == "digits":
            value = str(value).lstrip("+")
        elif spec.format == "number":
            value = str(value).split(".")[0]
        out[name] = value
    return out


def choice_option_id(name: str, spec: ListField, value: Any) -> str:
    """The option id to send for a choice field.

    A mapped value that is an option id is sent as it is: that is what the target documents (for
    Heyloyalty's `sex`, 1 = male and 2 = female, HL 2.2), while labels differ per list and
    language. A value that is not an id is looked up among the labels, case-insensitively, for
    custom choice fields whose ids the user does not know.
    """
    text = str(value).strip()
    if text in spec.options:
        return text
    ids = [k for k, label in spec.options.items() if label.strip().lower() == text.lower()]
    if not ids:
        known = ", ".join(f"{k}={v}" for k, v in spec.options.items())
        raise ValueError(f"{name}: {text!r} is neither an option id nor a label ({known})")
    return ids[0]


def deliver_members(
    conn: duckdb.DuckDBPyConnection,
    client: TargetClient,
    settings: DeliverySettings,
    fields: list[str],
    list_fields: dict[str, ListField],
) -> MemberReport:
    """Create, update and remove what changed; record each acknowledgement as it arrives."""
    report = MemberReport()
    plan_members(conn, settings)
    counts = dict(conn.execute("SELECT action, count(*) FROM member_plan GROUP BY 1").fetchall())
    report.unchanged = counts.get("unchanged", 0)
    report.skipped_unsubscribed = counts.get("unsubscribed", 0)
    report.skipped_by_import_type = counts.get("import_type", 0)
    work = (
        conn.execute("SELECT * FROM member_plan WHERE action IN ('create', 'update', 'remove')")
        .df()
        .to_dict("records")
    )
    acks: list[dict[str, Any]] = []
    for outcome in _send_all(client, settings, work, fields, list_fields):
        _tally(report, outcome)
        if outcome.get("ack"):
            acks.append(outcome["ack"])
        if len(acks) >= ACK_BATCH:
            _record_acks(conn, acks)
            acks = []
    _record_acks(conn, acks)
    _quarantine_refused(conn, settings, report.refused)
    return report


def _send_all(
    client: TargetClient,
    settings: DeliverySettings,
    work: list[dict[str, Any]],
    fields: list[str],
    list_fields: dict[str, ListField],
) -> Iterator[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
        futures = [
            pool.submit(_send_one, client, settings, row, fields, list_fields) for row in work
        ]
        for future in as_completed(futures):
            yield future.result()


def _send_one(
    client: TargetClient,
    settings: DeliverySettings,
    row: dict[str, Any],
    fields: list[str],
    list_fields: dict[str, ListField],
) -> dict[str, Any]:
    now = datetime.now(UTC)
    key = row["match_key"]
    try:
        if row["action"] == "remove":
            member_id = row["remote_id"] if _present(row["remote_id"]) else row["known_id"]
            client.remove_member(settings.list_id, member_id)
            ack = {
                "match_key": key,
                "member_id": member_id,
                "fields_hash": None,
                "action": "remove",
                "acked_at": now,
                "removed": True,
            }
            return {"action": "remove", "ack": ack}
        values = wire_fields(row, fields, list_fields, client)
        result = client.upsert_member(settings.list_id, settings.match_on, values, settings.flags)
    except ValueError as exc:
        return {"action": "refused", "refused": {"match_key": key, "reason": str(exc)}}
    except VendorError as exc:
        if 400 <= exc.status < 500:
            return {"action": "refused", "refused": {"match_key": key, "reason": exc.message}}
        return {"action": "error", "error": f"{key}: {exc}"}
    ack = {
        "match_key": key,
        "member_id": result.member_id,
        "fields_hash": row["fields_hash"],
        "action": result.action,
        "acked_at": now,
        "removed": False,
    }
    return {"action": result.action, "ack": ack}


def _tally(report: MemberReport, outcome: dict[str, Any]) -> None:
    action = outcome["action"]
    if action == "create":
        report.created += 1
    elif action == "update":
        report.updated += 1
    elif action == "remove":
        report.removed += 1
    elif action == "refused":
        report.refused.append(outcome["refused"])
    else:
        report.transient_errors.append(outcome["error"])


def _record_acks(conn: duckdb.DuckDBPyConnection, acks: list[dict[str, Any]]) -> None:
    if not acks:
        return
    frame = pd.DataFrame(acks).astype({"fields_hash": object})
    conn.register("acks", frame)
    conn.execute(
        """INSERT OR REPLACE INTO sync_state
           SELECT match_key, member_id, fields_hash, action, acked_at::TIMESTAMPTZ, removed
           FROM acks"""
    )
    # A member we took off the list is no longer there: forget the list's last word on it, so
    # a consent given again creates it anew (also under create_only).
    conn.execute(
        "DELETE FROM remote_members WHERE member_id IN (SELECT member_id FROM acks WHERE removed)"
    )
    conn.unregister("acks")


def _quarantine_refused(
    conn: duckdb.DuckDBPyConnection, settings: DeliverySettings, refused: list[dict[str, str]]
) -> None:
    conn.execute("DELETE FROM quarantine WHERE stage = 'deliver' AND entity = 'members'")
    if not refused:
        return
    conn.register("refused", pd.DataFrame(refused))
    conn.execute(
        """INSERT INTO quarantine (integration, entity, stage, record_id, match_key, reason,
                                   payload, run_id)
           SELECT 'list', 'members', 'deliver', NULL, match_key, reason, NULL, ? FROM refused""",
        [settings.run_id],
    )
    conn.unregister("refused")
