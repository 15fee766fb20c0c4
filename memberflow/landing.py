"""The raw layer: immutable Parquet batches of whole JSON payloads, one folder per day.

`landing/<integration>/<entity>/<YYYY-MM-DD>/<batch>.parquet`. Event records go to the folder of
their business date, so a backfill of a day replaces exactly that folder; member records go to the
folder of the day they were fetched. Nothing here parses business fields: mapping changes replay
from these files (X3).

A record whose id, modification time or business date cannot be read (a null id, `Modified:
"yesterday"`, month 13) is landed beside them in `_unreadable/<batch>.parquet` with the reason,
and the run goes on: one poison record never stops every run, and nothing is lost (staging moves
it into the quarantine table).

A tombstone (a raw record with `_memberflow_deleted: true`) says the source deleted the record:
it is landed like any record, with its fetch time as its modified time so it is the newest
version, and staging withdraws the member. Tombstones come from a source's re-read of a deleted
record, a webhook's delete event, or a complete scan of a full-scan entity that no longer holds
an id landed before (`absent_ids`).
"""

from __future__ import annotations

import json
import operator
import os
import shutil
import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from memberflow import progress
from resources.source import DELETED_FLAG, RawPage, SourceClient

SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("modified", pa.timestamp("us", tz="UTC")),
        ("business_date", pa.date32()),
        ("payload", pa.string()),
        ("fetched_at", pa.timestamp("us", tz="UTC")),
        ("batch_id", pa.string()),
    ]
)

UNREADABLE = "_unreadable"
UNREADABLE_SCHEMA = pa.schema(
    [
        ("reason", pa.string()),
        ("payload", pa.string()),
        ("fetched_at", pa.timestamp("us", tz="UTC")),
        ("batch_id", pa.string()),
    ]
)
# What a record's metadata can fail with when the source sends something other than documented;
# anything else is a bug of ours and must fail the run, not be filed away as bad data.
UNREADABLE_ERRORS = (ValueError, KeyError, TypeError)


def data_dir() -> Path:
    """Where landing files and warehouses live: MEMBERFLOW_DATA_DIR, default `./data`."""
    return Path(os.environ.get("MEMBERFLOW_DATA_DIR", "data")).resolve()


def entity_dir(integration: str, entity: str) -> Path:
    return data_dir() / "landing" / integration / entity


@dataclass
class LandingStats:
    """What one extract wrote, for the materialization's metadata."""

    records: int = 0
    pages: int = 0
    files: list[str] = field(default_factory=list)
    days: set[date] = field(default_factory=set)
    high_water_mark: datetime | None = None
    records_by_day: dict[date, int] = field(default_factory=dict)
    unreadable: int = 0
    unreadable_reasons: dict[str, int] = field(default_factory=dict)
    tombstones: int = 0
    record_ids: set[str] = field(default_factory=set)  # only when landed with collect_ids


# Pages are buffered and written together: one Parquet file per day folder for up to this many
# records (and at the end), instead of one per page. Bounds what is held in memory (~0.5 KB per
# customer record) while keeping the files few and large for staging's scans.
ROWS_PER_FILE = 50_000


def land_pages(
    client: SourceClient,
    integration: str,
    entity: str,
    pages: Iterable[list[dict[str, Any]]],
    *,
    replace_days: Iterable[date] = (),
    collect_ids: bool = False,
) -> LandingStats:
    """Write the pages as Parquet, grouped by day folder; replace `replace_days` atomically.

    For a backfill the new files are written to a staging folder first and swapped in once the
    whole range is fetched, so a failed backfill leaves the old files in place. With
    `collect_ids`, the ids landed are kept in `stats.record_ids` (for a full scan's deletions).
    Records are held until `ROWS_PER_FILE` of them are waiting, then written, one file per day.
    """
    stats = LandingStats()
    base = entity_dir(integration, entity)
    replace = sorted(set(replace_days))
    target = base / f".incoming-{uuid.uuid4().hex[:8]}" if replace else base
    fetched_at = datetime.now(UTC)
    waiting = _Waiting(target, stats)
    for page in pages:
        stats.pages += 1
        progress.note(pages=1, records=len(page))
        landed, unreadable = _page_by_day(client, entity, page, fetched_at)
        for day, table in landed.tables.items():
            count = table.num_rows
            stats.days.add(day)
            stats.records += count
            stats.records_by_day[day] = stats.records_by_day.get(day, 0) + count
            if collect_ids:
                stats.record_ids.update(table.column("record_id").to_pylist())
            waiting.add(day, table)
        stats.tombstones += landed.tombstones
        # A tombstone's modified time is our fetch time, not the source's: never a cursor.
        mark = landed.high_water_mark
        if mark is not None and (stats.high_water_mark is None or mark > stats.high_water_mark):
            stats.high_water_mark = mark
        if unreadable["payload"]:
            # Straight into the live folder, also in a backfill: it belongs to no day to swap.
            _write_batch(base / UNREADABLE, unreadable, UNREADABLE_SCHEMA)
            stats.unreadable += len(unreadable["payload"])
            for reason in unreadable["reason"]:
                key = reason.split(":")[0]
                stats.unreadable_reasons[key] = stats.unreadable_reasons.get(key, 0) + 1
    waiting.write()
    if replace:
        _swap_in(base, target, replace)
        stats.files = [f.replace(str(target), str(base)) for f in stats.files]
        stats.days.update(replace)
    return stats


class _Waiting:
    """Pages' rows by day folder, each page's kept as an Arrow table (compact: the Python objects
    of a page are freed once it is converted), written once `ROWS_PER_FILE` rows are held (or at
    the end): one file per day folder and write, however many pages it holds."""

    def __init__(self, target: Path, stats: LandingStats) -> None:
        self.target = target
        self.stats = stats
        self.days: dict[date, list[pa.Table]] = defaultdict(list)
        self.rows = 0

    def add(self, day: date, table: pa.Table) -> None:
        self.days[day].append(table)
        self.rows += table.num_rows
        if self.rows >= ROWS_PER_FILE:
            self.write()

    def write(self) -> None:
        for day, tables in sorted(self.days.items()):
            path = _write_table(self.target / day.isoformat(), pa.concat_tables(tables))
            self.stats.files.append(str(path))
        self.days, self.rows = defaultdict(list), 0


def _payload(record: dict[str, Any]) -> bytes:
    """The record as compact JSON in UTF-8, keys in their order, text unescaped (orjson: ~10x
    faster than json.dumps on this hot path). Raises UnicodeEncodeError for a lone surrogate.

    orjson refuses integers beyond 64 bits; those records take json.dumps, which writes them
    exactly. A non-finite float (NaN, Infinity: not JSON, so only from a source that sends
    non-standard JSON) lands as null."""
    try:
        return orjson.dumps(record)
    except TypeError:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8")  # a lone surrogate ("\ud800") is JSON but not Unicode text


@dataclass
class _Landed:
    """A page's landed records: a table per day folder, its tombstones, and the newest
    modified time of its records that are not tombstones."""

    tables: dict[date, pa.Table]
    tombstones: int = 0
    high_water_mark: datetime | None = None


def _page_by_day(
    client: SourceClient, entity: str, page: list[dict[str, Any]], fetched_at: datetime
) -> tuple[_Landed, dict[str, list[Any]]]:
    """The page's records as a table per day folder, and the records whose metadata is
    unreadable: read column by column when the client's `page_meta` answers for the page,
    record by record otherwise (a tombstone, anything unusual: see `_by_day`)."""
    landed = _page_columns(client, entity, page, fetched_at)
    if landed is not None:
        return landed, {"payload": []}
    groups, unreadable = _by_day(client, entity, page, fetched_at)
    result = _Landed({day: _table(rows, SCHEMA) for day, rows in groups.items()})
    for rows in groups.values():
        result.tombstones += sum(bool(flag) for flag in rows["deleted"])
        live = [m for m, d in zip(rows["modified"], rows["deleted"], strict=True) if not d]
        mark = max(live, default=None)
        if mark is not None and (result.high_water_mark is None or mark > result.high_water_mark):
            result.high_water_mark = mark
    return result, unreadable


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DELETED = operator.methodcaller("get", DELETED_FLAG)


def _page_columns(
    client: SourceClient, entity: str, page: list[dict[str, Any]], fetched_at: datetime
) -> _Landed | None:
    """The page landed column by column, or None when the client's `page_meta` does not answer
    for it, the page holds a tombstone, or a record has no compact JSON orjson can write (then
    `_by_day` lands it record by record, with each record's own fallback or quarantine).

    Exactly what `_by_day` would land for such a page: the same columns, rows in page order
    within each day folder. A `RawPage` (records as the source sent them, with their metadata)
    is landed from its columns as they are, its records never parsed into objects."""
    if isinstance(page, RawPage):
        meta, payloads = page.meta, page.payloads
    else:
        page_meta = getattr(client, "page_meta", None)
        if page_meta is None or not page:
            return None
        try:  # a tombstone (or a flag that is merely truthy): record by record
            if any(map(_DELETED, page)):
                return None
        except AttributeError:  # not a JSON object: the record-by-record path says what it is
            return None
        meta = page_meta(entity, page)
        if meta is None:
            return None
        try:
            payloads = pa.array(map(orjson.dumps, page), pa.string(), size=len(page))
        except TypeError:  # beyond 64 bits, a lone surrogate: _payload's way, record by record
            return None
    count = len(page)
    if meta.business_date is None:
        business = pa.nulls(count, pa.date32())
    else:
        business = meta.business_date
    table = pa.Table.from_arrays(
        [
            meta.record_id,
            meta.modified,
            business,
            payloads,
            pa.repeat(pa.scalar(fetched_at, SCHEMA.field("fetched_at").type), count),
            pa.repeat(pa.scalar(uuid.uuid4().hex, pa.string()), count),
        ],
        schema=SCHEMA,
    )
    newest = pc.max(meta.modified).value
    mark = _EPOCH + timedelta(microseconds=newest)
    if meta.business_date is None:
        return _Landed({fetched_at.date(): table}, high_water_mark=mark)
    tables = {}
    for day in pc.unique(business).to_pylist():
        tables[day] = table.filter(pc.equal(business, pa.scalar(day, pa.date32())))
    return _Landed(tables, high_water_mark=mark)


def _by_day(
    client: SourceClient, entity: str, page: list[dict[str, Any]], fetched_at: datetime
) -> tuple[dict[date, dict[str, list[Any]]], dict[str, list[Any]]]:
    """The page's records grouped by day folder, and the records whose metadata is unreadable.

    Payloads are UTF-8 bytes (Arrow takes them as strings without re-encoding each one)."""
    groups: dict[date, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    unreadable: dict[str, list[Any]] = defaultdict(list)
    batch = uuid.uuid4().hex
    record_meta = client.record_meta
    for record in page:
        try:
            payload = _payload(record)
            deleted = record.get(DELETED_FLAG) is True  # is_tombstone, inlined: once per record
            if deleted:
                meta = client.tombstone_meta(entity, record, fetched_at)
            else:
                meta = record_meta(entity, record)
        except UnicodeEncodeError:
            reason = "unreadable record: text that is not valid Unicode (a lone surrogate)"
            # landed with its text escaped ("\\ud800"), so the file stays valid UTF-8
            ascii_only = json.dumps(record, separators=(",", ":")).encode("ascii")
            _add(unreadable, reason, ascii_only, fetched_at, batch)
            continue
        except UNREADABLE_ERRORS as exc:
            _add(unreadable, f"unreadable record: {_reason(exc)}", payload, fetched_at, batch)
            continue
        day = meta.business_date or fetched_at.date()
        rows = groups[day]
        rows["record_id"].append(meta.record_id)
        rows["modified"].append(meta.modified)
        rows["business_date"].append(meta.business_date)
        rows["payload"].append(payload)
        rows["fetched_at"].append(fetched_at)
        rows["batch_id"].append(batch)
        rows["deleted"].append(DELETED_FLAG if deleted else "")
    return groups, unreadable


def _add(
    rows: dict[str, list[Any]], reason: str, payload: bytes, fetched_at: datetime, batch: str
) -> None:
    rows["reason"].append(reason)
    rows["payload"].append(payload)
    rows["fetched_at"].append(fetched_at)
    rows["batch_id"].append(batch)


def _reason(exc: Exception) -> str:
    """The error as one short line (a KeyError's text is just the quoted key)."""
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}" if exc.args else "missing field"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _table(rows: dict[str, list[Any]], schema: pa.Schema) -> pa.Table:
    return pa.table({name: rows[name] for name in schema.names}, schema=schema)


def _write_batch(folder: Path, rows: dict[str, list[Any]], schema: pa.Schema = SCHEMA) -> Path:
    return _write_table(folder, _table(rows, schema))


def _write_table(folder: Path, table: pa.Table) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{datetime.now(UTC):%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.rename(path)
    return path


REPLACED = ".replaced"  # suffix of a day's old folder parked inside `.incoming-*` during a swap


def _swap_in(base: Path, incoming: Path, days: list[date]) -> None:
    """Replace each day folder of `days` with the freshly fetched one (empty if none came).

    Never delete before the new folder is in place: the old one is first parked inside
    `incoming` (a rename on the same disk), so a crash mid-swap leaves every day either in its
    place or in `incoming`, from where `undo_interrupted_swap` puts it back."""
    for day in days:
        old = base / day.isoformat()
        parked = incoming / f"{day.isoformat()}{REPLACED}"
        if old.exists():
            incoming.mkdir(parents=True, exist_ok=True)
            old.rename(parked)
        new = incoming / day.isoformat()
        if new.exists():
            new.rename(old)
    if incoming.exists():
        shutil.rmtree(incoming)


def undo_interrupted_swap(incoming: Path) -> list[str]:
    """Put back the day folders a crashed backfill had parked in `incoming` and not yet
    replaced (its run failed, so what is staged still matches the old files); returns them."""
    restored = []
    for parked in sorted(incoming.glob(f"*{REPLACED}")):
        day = incoming.parent / parked.name.removesuffix(REPLACED)
        if not day.exists():
            parked.rename(day)
            restored.append(str(day))
    return restored


def day_files(integration: str, entity: str, days: Iterable[date] | None = None) -> list[str]:
    """Landing files of an entity, of some days or of all."""
    base = entity_dir(integration, entity)
    if days is None:
        return sorted(str(p) for p in base.glob("[0-9]*/*.parquet"))
    return sorted(str(p) for d in days for p in (base / d.isoformat()).glob("*.parquet"))


def count_records(integration: str, entity: str, days: Iterable[date] | None = None) -> int:
    """Records in the landing files (every version landed), from the Parquet footers only."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in day_files(integration, entity, days))


def unreadable_files(integration: str, entity: str) -> list[str]:
    """Batches of records whose metadata could not be read (see the module docstring)."""
    return sorted(str(p) for p in (entity_dir(integration, entity) / UNREADABLE).glob("*.parquet"))


# --- the incremental cursor -------------------------------------------------------------------


def _cursor_path(integration: str, entity: str) -> Path:
    return data_dir() / "landing" / integration / "_cursors" / f"{entity}.json"


def read_source_cursor(integration: str, entity: str) -> str | None:
    """The source's opaque cursor committed by the last incremental extract of `entity`.

    Only the source client reads its meaning; files of older versions hold `high_water_mark`,
    which is the same text for a modified-since source."""
    path = _cursor_path(integration, entity)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return data.get("cursor") or data.get("high_water_mark")


def write_source_cursor(integration: str, entity: str, cursor: str) -> None:
    """Store the cursor; called only after every page it covers is on disk."""
    path = _cursor_path(integration, entity)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cursor": cursor}))
    tmp.replace(path)


def read_cursor(integration: str, entity: str) -> datetime | None:
    """The cursor as a datetime, for sources whose cursor is a modified time (else None)."""
    cursor = read_source_cursor(integration, entity)
    try:
        return None if cursor is None else datetime.fromisoformat(cursor)
    except ValueError:
        return None


def write_cursor(integration: str, entity: str, mark: datetime) -> None:
    """Store a modified-time cursor (see write_source_cursor)."""
    write_source_cursor(integration, entity, mark.isoformat())


# --- deletions seen by a complete scan --------------------------------------------------------


def live_ids(integration: str, entity: str) -> set[str]:
    """Ids whose newest landed version is a record, not a tombstone."""
    newest: dict[str, tuple[datetime, bool]] = {}
    marker = f'"{DELETED_FLAG}":true'
    for path in day_files(integration, entity):
        table = pq.read_table(path, columns=["record_id", "fetched_at", "payload"])
        ids, fetched, payloads = (table.column(n).to_pylist() for n in table.column_names)
        for rid, at, payload in zip(ids, fetched, payloads, strict=True):
            if rid not in newest or at >= newest[rid][0]:
                newest[rid] = (at, marker in payload)
    return {rid for rid, (_, deleted) in newest.items() if not deleted}


def absent_ids(integration: str, entity: str, scanned: Collection[str]) -> list[str]:
    """Ids landed before, not deleted yet, and missing from a complete scan: deleted since.

    Call it only for a scan that read the whole entity and returned records: a scan cut short or
    an empty answer (an outage that looks like success) must not delete everyone."""
    return sorted(live_ids(integration, entity) - set(scanned))
