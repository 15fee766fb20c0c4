"""Delivery: send the target only what changed (X2), remember every acknowledgement, pull
unsubscribes and bounces back.

State lives in the list's warehouse: `sync_state` (what the target last acknowledged per match
key), `remote_members` (what the target reported), `event_sync` (events sent or refused). Each
acknowledgement is written as it arrives, in small batches, so a crash resends nothing that was
acknowledged and loses nothing that was not. An update never undoes an unsubscribe made while the
run sends (see "sending members without undoing an unsubscribe" below).
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

from memberflow.staging import ensure_bookkeeping
from resources.base import ListField, RemoteMember, TargetClient, UpsertFlags, VendorError

ACK_BATCH = 500
# Creates sent between two changed-since reads of the list. Smaller: a member who appears on the
# list and unsubscribes during the run is caught sooner, for one more call per chunk.
CREATE_CHUNK = 200
# Overlap of two changed-since reads within a run. Their cursor is the newest `updated_at` the
# list reported (its own clock), so only same-second writes need the overlap.
REFRESH_OVERLAP = timedelta(seconds=5)


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
    unsubscribed_meanwhile: int = 0  # of skipped_unsubscribed: caught by the check before a send
    recreated: int = 0  # members the list had lost, acknowledged again
    checks_before_update: int = 0  # one GET each (find_member)
    refresh_calls: int = 0  # changed-since reads between chunks of creates
    refused: list[dict[str, str]] = field(default_factory=list)
    dropped_fields: list[dict[str, str]] = field(default_factory=list)
    transient_errors: list[str] = field(default_factory=list)

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
        """
    )


def list_state(conn: duckdb.DuckDBPyConnection, key: str) -> str | None:
    rows = conn.execute("SELECT value FROM list_state WHERE key = ?", [key]).fetchall()
    return rows[0][0] if rows else None


def set_list_state(conn: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
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
    last = list_state(conn, "last_pull")
    since = datetime.fromisoformat(last) if last else None
    started = datetime.now(UTC)
    rows = read_members(client, list_id, match_on, since)
    store_remote(conn, rows)
    # Overlap the next window by two minutes: the target's clock and ours may differ a little,
    # and re-reading a member is harmless (INSERT OR REPLACE).
    set_list_state(conn, "last_pull", (started - timedelta(minutes=2)).isoformat())
    return {
        "pulled": len(rows),
        "unsubscribed": sum(1 for r in rows if r["status"] == "unsubscribed"),
        "bounced": sum(1 for r in rows if r["email_status"] in ("hard_bounce", "complaint")),
    }


def refresh_feedback(
    conn: duckdb.DuckDBPyConnection,
    client: TargetClient,
    list_id: str,
    match_on: str,
    since: datetime | None,
) -> datetime | None:
    """Within a run: read the list's changes since `since` (the last pull when None) into
    `remote_members`, and return the cursor for the next read, on the target's clock."""
    if since is None:
        last = list_state(conn, "last_pull")
        since = datetime.fromisoformat(last) if last else None
    rows = read_members(client, list_id, match_on, since)
    store_remote(conn, rows)
    seen = [r["updated_at"] for r in rows if r["updated_at"] is not None]
    return max(seen) - REFRESH_OVERLAP if seen else since


def read_members(
    client: TargetClient, list_id: str, match_on: str, since: datetime | None
) -> list[dict[str, Any]]:
    return [
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


def store_remote(conn: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> None:
    """What the list reported of these members replaces what it reported before."""
    if not rows:
        return
    frame = pd.DataFrame(rows).astype({"unsubscribed_at": object, "updated_at": object})
    conn.register("pulled", frame)
    conn.execute(
        """INSERT OR REPLACE INTO remote_members
           SELECT member_id, match_key, status, email_status,
                  unsubscribed_at::TIMESTAMPTZ, updated_at::TIMESTAMPTZ, current_timestamp
           FROM pulled"""
    )
    conn.unregister("pulled")


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
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Values in the target's wire format, and the fields dropped as (field, reason).

    A value the list cannot take (a choice that maps to no option) costs only that field: the
    member is sent without it and the drop is reported in quarantine (issue 6, item 2).
    """
    out: dict[str, Any] = {}
    dropped: list[tuple[str, str]] = []
    for name in fields:
        value = row.get(name)
        if not _present(value) or value == "":
            continue
        spec = list_fields[name]
        if spec.format == "choice":
            try:
                value = choice_option_id(name, spec, value)
            except ValueError as exc:
                dropped.append((name, str(exc)))
                continue
        elif name == "mobile" and client.mobile_wire_format == "digits":
            value = str(value).lstrip("+")
        elif spec.format == "number":
            value = str(value).split(".")[0]
        out[name] = value
    return out, dropped


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


# --- sending members without undoing an unsubscribe --------------------------------------------
#
# HL-A6: an upsert on an unsubscribed member reactivates it, and the target has no conditional
# update. The unsubscribes pulled at the start of a run age while the run sends (at 100,000
# members, for an hour), so each send re-reads the list's state as late as the API allows:
# - an update (the member is on the list) is preceded by one GET of that member
#   (`find_member`); an unsubscribed member is skipped unless the reimport rule allows it with
#   the list's fresh `unsubscribed_at`. Cost: one extra call per update. Updates are the
#   members whose source record changed (X2), a small share of a tick, so this is cheap where it
#   matters; the window left is one round trip between the GET and the upsert.
# - a create (the member was not on the list) gets no GET of its own: at an initial import that
#   would double the calls. Creates go out in chunks of CREATE_CHUNK, each preceded by a
#   changed-since read of the list (HL-A5), about one call per chunk; a member that appeared on
#   the list meanwhile is then sent as a checked update instead. The window left for a member
#   who both appeared and unsubscribed is one chunk's sending time.


# Statuses that say "try later", not "this member is refused": after the client's retries are
# spent they are transient errors (the run fails and the member is sent again), never a refusal.
_NOT_REFUSALS = frozenset({408, 425, 429})


def is_refusal(exc: VendorError) -> bool:
    """A 4xx that judges the request (bad value, unknown field), not one asking us to wait."""
    return 400 <= exc.status < 500 and exc.status not in _NOT_REFUSALS


def deliver_members(
    conn: duckdb.DuckDBPyConnection,
    client: TargetClient,
    settings: DeliverySettings,
    fields: list[str],
    list_fields: dict[str, ListField],
    recreate: frozenset[str] = frozenset(),
) -> MemberReport:
    """Create, update and remove what changed; record each acknowledgement as it arrives.

    `recreate` holds match keys the list lost (see memberflow/reconcile.py), counted as
    `recreated` when they are acknowledged again.
    """
    report = MemberReport()
    plan_members(conn, settings)
    counts = dict(conn.execute("SELECT action, count(*) FROM member_plan GROUP BY 1").fetchall())
    report.unchanged = counts.get("unchanged", 0)
    report.skipped_unsubscribed = counts.get("unsubscribed", 0)
    report.skipped_by_import_type = counts.get("import_type", 0)
    outcomes = _Outcomes(conn, report, recreate)
    existing = _plan_rows(conn, "action IN ('update', 'remove')")
    creates = _plan_rows(conn, "action = 'create'")
    try:
        outcomes.take(_send_all(client, settings, existing, fields, list_fields))
        cursor: datetime | None = None
        for start in range(0, len(creates), CREATE_CHUNK):
            before = client.calls.total
            cursor = refresh_feedback(conn, client, settings.list_id, settings.match_on, cursor)
            report.refresh_calls += client.calls.total - before
            chunk = _route_appeared(conn, creates[start : start + CREATE_CHUNK])
            outcomes.take(_send_all(client, settings, chunk, fields, list_fields))
    finally:
        # Whatever stops delivery, what the list acknowledged is recorded (never resent).
        outcomes.flush()
    attempted = [row["match_key"] for row in existing + creates]
    _quarantine_outcomes(conn, settings, attempted, report)
    return report


def _plan_rows(conn: duckdb.DuckDBPyConnection, where: str) -> list[dict[str, Any]]:
    """Planned rows in match-key order (creates go out chunk by chunk in this order)."""
    sql = f"SELECT * FROM member_plan WHERE {where} ORDER BY match_key"
    return conn.execute(sql).df().to_dict("records")


def _route_appeared(
    conn: duckdb.DuckDBPyConnection, chunk: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Creates whose member appeared on the list since the plan become checked updates."""
    conn.register("chunk_keys", pd.DataFrame({"match_key": [r["match_key"] for r in chunk]}))
    appeared = {
        key
        for (key,) in conn.execute(
            "SELECT DISTINCT match_key FROM remote_members JOIN chunk_keys USING (match_key)"
        ).fetchall()
    }
    conn.unregister("chunk_keys")
    return [
        {**row, "action": "update", "planned": "create"} if row["match_key"] in appeared else row
        for row in chunk
    ]


def _send_all(
    client: TargetClient,
    settings: DeliverySettings,
    work: list[dict[str, Any]],
    fields: list[str],
    list_fields: dict[str, ListField],
) -> Iterator[dict[str, Any]]:
    if not work:
        return
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
    key = row["match_key"]
    if row["action"] == "remove":
        return _remove_one(client, settings, row)
    values, dropped = wire_fields(row, fields, list_fields, client)
    checked = row["action"] == "update"
    if checked:
        try:
            skip = _check_before_update(client, settings, row, values)
        except VendorError as exc:  # no verdict on the member: nothing was sent, try next run
            return {"action": "error", "error": f"{key}: {exc}", "checked": True}
        if skip is not None:
            return {**skip, "checked": True}
    try:
        result = client.upsert_member(settings.list_id, settings.match_on, values, settings.flags)
    except VendorError as exc:
        if is_refusal(exc):
            refusal = {"match_key": key, "reason": exc.message}
            return {"action": "refused", "refused": refusal, "checked": checked}
        return {"action": "error", "error": f"{key}: {exc}", "checked": checked}
    ack = {
        "match_key": key,
        "member_id": result.member_id,
        "fields_hash": row["fields_hash"],
        "action": result.action,  # the list's word: a planned create may come back 'update'
        "acked_at": datetime.now(UTC),
        "removed": False,
    }
    return {
        "action": result.action,
        "ack": ack,
        "checked": checked,
        "dropped": [{"match_key": key, "field": f, "reason": r} for f, r in dropped],
    }


def _remove_one(
    client: TargetClient, settings: DeliverySettings, row: dict[str, Any]
) -> dict[str, Any]:
    key = row["match_key"]
    member_id = row["remote_id"] if _present(row["remote_id"]) else row["known_id"]
    try:
        client.remove_member(settings.list_id, member_id)
    except VendorError as exc:
        if is_refusal(exc):
            return {"action": "refused", "refused": {"match_key": key, "reason": exc.message}}
        return {"action": "error", "error": f"{key}: {exc}"}
    ack = {
        "match_key": key,
        "member_id": member_id,
        "fields_hash": None,
        "action": "remove",
        "acked_at": datetime.now(UTC),
        "removed": True,
    }
    return {"action": "remove", "ack": ack}


def _check_before_update(
    client: TargetClient, settings: DeliverySettings, row: dict[str, Any], values: dict[str, Any]
) -> dict[str, Any] | None:
    """Read the member right before its update; an outcome that skips it, or None to send.

    Skipped: an unsubscribed member the reimport rule does not let back (HL-A6), a member gone
    from the list under update_only, and a member that appeared on the list under create_only.
    """
    key = values.get(settings.match_on) or row["match_key"]
    if settings.match_on == "mobile" and client.mobile_wire_format == "digits":
        key = str(key).lstrip("+")
    found = client.find_member(settings.list_id, settings.match_on, str(key))
    if found is None:
        return {"action": "import_type"} if settings.import_type == "update_only" else None
    if row.get("planned") == "create" and settings.import_type == "create_only":
        return {"action": "import_type"}
    if found.status == "unsubscribed" and not _may_reactivate(row, found, settings):
        remote = {
            "member_id": found.member_id,
            "match_key": row["match_key"],
            "status": found.status,
            "email_status": found.email_status,
            "unsubscribed_at": found.unsubscribed_at,
            "updated_at": found.updated_at,
        }
        return {"action": "unsubscribed", "remote": remote}
    return None


def _may_reactivate(row: dict[str, Any], found: RemoteMember, settings: DeliverySettings) -> bool:
    """The `reimport_unsubscribed` rule of the README, on the list's state of this moment: only
    a source record changed after the unsubscribe brings the member back."""
    if not settings.reimport_unsubscribed or settings.import_type == "create_only":
        return False
    modified = row.get("modified")
    if found.unsubscribed_at is None or not _present(modified):
        return False
    return pd.Timestamp(modified) > pd.Timestamp(found.unsubscribed_at)


class _Outcomes:
    """Tallies each send's outcome; writes acknowledgements and the list's answers in batches."""

    def __init__(
        self, conn: duckdb.DuckDBPyConnection, report: MemberReport, recreate: frozenset[str]
    ) -> None:
        self.conn, self.report, self.recreate = conn, report, recreate
        self.acks: list[dict[str, Any]] = []
        self.remote: list[dict[str, Any]] = []

    def take(self, outcomes: Iterator[dict[str, Any]]) -> None:
        for outcome in outcomes:
            _tally(self.report, outcome)
            if ack := outcome.get("ack"):
                self.acks.append(ack)
                self.report.recreated += ack["match_key"] in self.recreate and not ack["removed"]
            if remote := outcome.get("remote"):
                self.remote.append(remote)
            if len(self.acks) + len(self.remote) >= ACK_BATCH:
                self.flush()

    def flush(self) -> None:
        _record_acks(self.conn, self.acks)
        store_remote(self.conn, self.remote)
        self.acks, self.remote = [], []


def _tally(report: MemberReport, outcome: dict[str, Any]) -> None:
    action = outcome["action"]
    report.checks_before_update += bool(outcome.get("checked"))
    report.dropped_fields += outcome.get("dropped") or []
    if action == "create":
        report.created += 1
    elif action == "update":
        report.updated += 1
    elif action == "remove":
        report.removed += 1
    elif action == "unsubscribed":
        report.skipped_unsubscribed += 1
        report.unsubscribed_meanwhile += 1
    elif action == "import_type":
        report.skipped_by_import_type += 1
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


def _quarantine_outcomes(
    conn: duckdb.DuckDBPyConnection,
    settings: DeliverySettings,
    attempted: list[str],
    report: MemberReport,
) -> None:
    """This run's verdicts (refusals, dropped fields) replace earlier ones for the members it
    tried to send; each row carries this run's id. Members not sent keep their last verdict."""
    ensure_bookkeeping(conn)
    conn.register("attempted", pd.DataFrame({"match_key": attempted}, dtype=object))
    conn.execute(
        """DELETE FROM quarantine WHERE stage = 'deliver' AND entity = 'members'
           AND match_key IN (SELECT match_key FROM attempted)"""
    )
    conn.unregister("attempted")
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
