"""The raw layer: immutable Parquet batches of whole JSON payloads, one folder per day.

`landing/<integration>/<entity>/<YYYY-MM-DD>/<batch>.parquet`. Event records go to the folder of
their business date, so a backfill of a day replaces exactly that folder; member records go to the
folder of the day they were fetched. Nothing here parses business fields: mapping changes replay
from these files (X3).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from resources.base import SourceClient

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


def land_pages(
    client: SourceClient,
    integration: str,
    entity: str,
    pages: Iterable[list[dict[str, Any]]],
    *,
    replace_days: Iterable[date] = (),
) -> LandingStats:
    """Write each page as Parquet, grouped by day folder; replace `replace_days` atomically.

    For a backfill the new files are written to a staging folder first and swapped in once the
    whole range is fetched, so a failed backfill leaves the old files in place.
    """
    stats = LandingStats()
    base = entity_dir(integration, entity)
    replace = sorted(set(replace_days))
    target = base / f".incoming-{uuid.uuid4().hex[:8]}" if replace else base
    fetched_at = datetime.now(UTC)
    for page in pages:
        stats.pages += 1
        for day, rows in _by_day(client, entity, page, fetched_at).items():
            stats.files.append(str(_write_batch(target / day.isoformat(), rows)))
            stats.days.add(day)
            stats.records += len(rows["record_id"])
            mark = max(rows["modified"])
            if stats.high_water_mark is None or mark > stats.high_water_mark:
                stats.high_water_mark = mark
    if replace:
        _swap_in(base, target, replace)
        stats.files = [f.replace(str(target), str(base)) for f in stats.files]
        stats.days.update(replace)
    return stats


def _by_day(
    client: SourceClient, entity: str, page: list[dict[str, Any]], fetched_at: datetime
) -> dict[date, dict[str, list[Any]]]:
    groups: dict[date, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    batch = uuid.uuid4().hex
    for record in page:
        meta = client.record_meta(entity, record)
        day = meta.business_date or fetched_at.date()
        rows = groups[day]
        rows["record_id"].append(meta.record_id)
        rows["modified"].append(meta.modified)
        rows["business_date"].append(meta.business_date)
        rows["payload"].append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
        rows["fetched_at"].append(fetched_at)
        rows["batch_id"].append(batch)
    return groups


def _write_batch(folder: Path, rows: dict[str, list[Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{datetime.now(UTC):%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.table(rows, schema=SCHEMA), tmp, compression="zstd")
    tmp.rename(path)
    return path


def _swap_in(base: Path, incoming: Path, days: list[date]) -> None:
    """Replace each day folder of `days` with the freshly fetched one (empty if none came)."""
    for day in days:
        old = base / day.isoformat()
        if old.exists():
            shutil.rmtree(old)
        new = incoming / day.isoformat()
        if new.exists():
            new.rename(old)
    if incoming.exists():
        shutil.rmtree(incoming)


def day_files(integration: str, entity: str, days: Iterable[date] | None = None) -> list[str]:
    """Landing files of an entity, of some days or of all."""
    base = entity_dir(integration, entity)
    if days is None:
        return sorted(str(p) for p in base.glob("[0-9]*/*.parquet"))
    return sorted(str(p) for d in days for p in (base / d.isoformat()).glob("*.parquet"))


# --- the incremental cursor -------------------------------------------------------------------


def _cursor_path(integration: str, entity: str) -> Path:
    return data_dir() / "landing" / integration / "_cursors" / f"{entity}.json"


def read_cursor(integration: str, entity: str) -> datetime | None:
    """The source's high-water mark committed by the last incremental extract of `entity`."""
    path = _cursor_path(integration, entity)
    if not path.exists():
        return None
    return datetime.fromisoformat(json.loads(path.read_text())["high_water_mark"])


def write_cursor(integration: str, entity: str, mark: datetime) -> None:
    """Advance the cursor; called only after every page up to `mark` is on disk."""
    path = _cursor_path(integration, entity)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"high_water_mark": mark.isoformat()}))
    tmp.replace(path)
