"""Heyloyalty emulator: the CSV member import `POST /lists/{id}/import` (HL 2.4, HL-A11).

The parameters are the documented ones (`duplicate_field`, `handle_existing`, `date_format`,
`fields_selected[]`, `skip_header_line`, `delimiter`, `trigger_autoresponder`, `sendErrorsTo`);
the answer is memberflow's assumption HL-A11, since Heyloyalty documents none. The emulator is as
strict as the documentation allows, so a client that passes here does not lean on leniency:

- a parameter it cannot honour (an unknown field in `fields_selected[]`, a `duplicate_field` that
  is not email or mobile or not among the columns, an unknown `handle_existing`) refuses the whole
  file: `400 {"error": ...}` as for any validation error (HL 2.7);
- a broken file (a row with another number of columns, not UTF-8, more than 50,000 rows) refuses
  the whole file: `400 {"status": "error", "message": ...}` (HL-A11), nothing imported;
- a bad value in one row fails that row (`failed[]`), the others go in; so does a row whose
  `duplicate_field` is empty or matches more than one member;
- an empty cell empties the field (the import carries the whole row);
- an existing member that is updated is REACTIVATED when it was unsubscribed, as an upsert is
  (HL-A6: "updating unsubscribed members will reactivate these"): keeping unsubscribed members
  out of the file is the client's job;
- every member created gets `created_at`, every member changed gets a fresh `updated_at`, so the
  changed-since listing (HL-A5) finds what the import did.

Tests can make the next import silently lose given rows (`lose_rows`): answered as imported,
never stored, to prove a client reads back rather than trusting the answer.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.heyloyalty import HeyloyaltyState, _List

MAX_IMPORT_ROWS = 50_000  # HL-A11: as the BI import (HL-A10)
DUPLICATE_FIELDS = ("email", "mobile")
HANDLE_EXISTING = ("update", "skip")
_PHP_DATE = {"Y": "%Y", "m": "%m", "d": "%d", "y": "%y", "j": "%d", "n": "%m"}


class ImportRefused(Exception):
    """The whole file is refused: HTTP status and JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


def _param_error(message: str) -> ImportRefused:
    return ImportRefused(400, {"error": message})


def _file_error(message: str) -> ImportRefused:
    return ImportRefused(400, {"status": "error", "message": message})


class RowLoss:
    """Match values (email lower-case, or mobile digits) the next import loses silently."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()

    def arm(self, values: set[str]) -> None:
        with self._lock:
            self._values |= {v.strip().lower() for v in values}

    def take(self) -> set[str]:
        with self._lock:
            taken, self._values = self._values, set()
            return taken


def import_members(
    state: HeyloyaltyState,
    target: _List,
    params: dict[str, Any],
    columns: list[str],
    rows: list[list[str]],
) -> dict[str, Any]:
    """Apply one import to `target` (the caller holds the state's lock); the HL-A11 answer."""
    unique = _choice(params, "duplicate_field", DUPLICATE_FIELDS)
    existing = _choice(params, "handle_existing", HANDLE_EXISTING)
    date_format = str(params["date_format"])  # required (checked by the route)
    _check_columns(target, columns, unique)
    if len(rows) > MAX_IMPORT_ROWS:
        raise _file_error(f"Too many rows: {len(rows)} (max {MAX_IMPORT_ROWS} per file)")
    lost = state.import_row_loss.take()
    dates = {name for name in columns if target.fields[name]["format"] == "date"}
    created = updated = skipped = 0
    failed: list[dict[str, Any]] = []
    for number, row in enumerate(rows, start=1):  # 1-based data row, header not counted
        try:
            if not row:  # a blank line: a row of its own, never skipped
                raise _RowError("Empty row")
            values = _row_values(state, target, columns, row, dates, date_format)
            key = values.get(unique)
            if not key:
                raise _RowError(f"{unique} is required (duplicate_field)")
            if str(key).lower() in lost:
                created += 1  # answered as imported, never stored
                continue
            found = state._find(target, unique, key)
            if len(found) > 1:
                raise _RowError("Multiple members match")
        except _RowError as error:
            failed.append(
                {"row": number - 1 + state.member_import_first_row, "error": error.message}
            )
            continue
        if found and existing == "skip":
            skipped += 1
        elif found:
            state._update(target, found[0], values)  # reactivates an unsubscribed member
            updated += 1
        else:
            state._create(target, values)
            created += 1
    imported = created + updated
    state.member_imports.append(
        {
            "list_id": target.id,
            "rows": len(rows),
            "columns": list(columns),
            "duplicate_field": unique,
            "handle_existing": existing,
            "date_format": date_format,
            "trigger_autoresponder": params.get("trigger_autoresponder"),
            "sendErrorsTo": params.get("sendErrorsTo"),
            "created": created,
            "updated": updated,
            "skipped": skipped,
            "failed": failed,
        }
    )
    return {
        "status": "success",
        "message": f"{imported} rows imported",
        "imported": imported,
        "created": created,
        "updated": updated,
        "skipped": skipped,
        "failed": failed,
    }


class _RowError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _choice(params: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = params.get(name)
    if value not in allowed:
        raise _param_error(f"{name} must be one of {', '.join(allowed)}")
    return str(value)


def _check_columns(target: _List, columns: list[str], unique: str) -> None:
    if not columns:
        raise _param_error("fields_selected[] is required: the file's columns, in order")
    for name in columns:
        if name not in target.fields:
            raise _param_error(f"Unknown field: {name}")
    if len(set(columns)) != len(columns):
        raise _param_error("fields_selected[] names a field twice")
    if unique not in columns:
        raise _param_error(f"duplicate_field {unique} is not among fields_selected[]")


def _row_values(
    state: HeyloyaltyState,
    target: _List,
    columns: list[str],
    row: list[str],
    dates: set[str],
    date_format: str,
) -> dict[str, Any]:
    """One row's values, validated like an upsert's (HL-A8/HL-A9); a date cell is read with
    `date_format` and stored as `YYYY-MM-DD`; an empty cell empties the field."""
    raw = dict(zip(columns, row, strict=True))
    for name in sorted(state.import_refused_empty & raw.keys()):
        if not raw[name].strip():
            raise _RowError(f"Empty value not allowed for field {name}")
    for name in dates:
        text = raw[name].strip()
        if text:
            parsed = _parse_date(text, date_format)
            if parsed is None:
                raise _RowError(
                    f"Invalid date for field {name}: {text} (date_format {date_format})"
                )
            raw[name] = parsed
    from sandbox.heyloyalty import HeyloyaltyError

    try:
        return state._validate(target, raw)
    except HeyloyaltyError as error:
        raise _RowError(str(error.body.get("error"))) from None


def _parse_date(text: str, php_format: str) -> str | None:
    try:
        if php_format.lower() in ("iso8601", "iso", "c"):
            return datetime.fromisoformat(text).date().isoformat()
        pattern = "".join(_PHP_DATE.get(ch, ch) for ch in php_format)
        return datetime.strptime(text, pattern).date().isoformat()
    except ValueError:
        return None
