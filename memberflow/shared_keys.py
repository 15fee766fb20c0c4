"""Match keys shared by several records of one integration, withheld instead of merged (AF1).

A shared mailbox (a family, an office) makes several source records carry one email. An
integration with `shared_match_keys: withhold` syncs only keys that one of its records carries:
a key carried by more than one of its records that consent now (live, consent not false)
contributes no member from that integration (another integration on the list may still supply
it), and those records are reported so the office can clean them up at the source.

Only consent now counts: the usual clean-up is to untick the newsletter box of the duplicates
(or deactivate them), and that must release the key for the one record left, not keep it
withheld forever. A key none of whose records consents now is withheld from nobody: it comes
through as a withdrawn member, so a contact already on the target is taken off it.

The model writes the warehouse table `shared_match_keys` every run; the members asset turns it
into an asset check and a CSV report. The CSV holds the full keys on purpose: it is the office's
clean-up list (the "export to Excel and colour the duplicates" tip, done for them). Everything a
person reads in the UI or a log shows them masked.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from memberflow import landing

TABLE = "shared_match_keys"
REPORT_NAME = "shared_match_keys.csv"
CSV_COLUMNS = ("integration", "shared key", "record ids", "names")
# A candidate record that counts as carrying its key for a withholding integration (and is the
# one record that speaks for the key when it is the only one).
CONSENTS_NOW = "(live AND coalesce(consent, true))"
JOIN = "; "  # between the record ids (and names) of one key in a CSV cell
# Canonical fields a record is named by: "first last", else the first of the fallbacks. A
# company is usually named by its last name field (its legal name), so the pair covers it too.
PERSON_NAME = ("first_name", "last_name")
NAME_FALLBACKS = ("company_name", "commercial_name")


@dataclass(frozen=True)
class SharedKey:
    """One withheld key of one integration and the records that share it (same order)."""

    integration: str
    match_key: str
    record_ids: tuple[str, ...]
    names: tuple[str, ...]


def build_table(
    conn: duckdb.DuckDBPyConnection, candidates: str, withholding: Iterable[str]
) -> int:
    """Rebuild `shared_match_keys` from the temp table `candidates` (every record that would
    contribute to a member: columns integration, record_id, match_key, live, consent, rank and
    the canonical fields): per withholding integration, the keys more than one record that
    consents now carries, with those records only (the unticked ones are already cleaned up).
    Returns how many (integration, key) pairs are withheld."""
    names = ", ".join(_lit(n) for n in withholding) or "NULL"
    conn.execute(
        f"""
        CREATE OR REPLACE TABLE {TABLE} AS
        SELECT integration, match_key,
               list(record_id ORDER BY rank)::VARCHAR[] AS record_ids,
               list({_name_sql(_columns(conn, candidates))} ORDER BY rank)::VARCHAR[] AS names,
               count(*)::INT AS records
        FROM {candidates}
        WHERE {CONSENTS_NOW} AND integration IN ({names})
        GROUP BY integration, match_key
        HAVING count(*) > 1
        ORDER BY integration, match_key
        """
    )
    return int(conn.execute(f"SELECT count(*) FROM {TABLE}").fetchall()[0][0])


def _columns(conn: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {row[0] for row in conn.execute(f"DESCRIBE {table}").fetchall()}


def _name_sql(columns: set[str]) -> str:
    """How a record is named in the report: '' when the mappings give it no name at all."""
    person = [f"nullif(trim({_q(c)}), '')" for c in PERSON_NAME if c in columns]
    options = []
    if person:
        options.append(f"nullif(concat_ws(' ', {', '.join(person)}), '')")
    options += [f"nullif(trim({_q(c)}), '')" for c in NAME_FALLBACKS if c in columns]
    return "coalesce(" + ", ".join([*options, "''"]) + ")"


def rows(conn: duckdb.DuckDBPyConnection, limit: int | None = None) -> list[SharedKey]:
    """The withheld keys of the last model run, by integration and key (for the asset check and
    the run's summary mail); [] before the first run."""
    if not _exists(conn):
        return []
    sql = f"SELECT integration, match_key, record_ids, names FROM {TABLE} ORDER BY ALL"
    found = conn.execute(sql + (f" LIMIT {int(limit)}" if limit is not None else "")).fetchall()
    return [SharedKey(i, k, tuple(ids), tuple(names)) for i, k, ids, names in found]


def count(conn: duckdb.DuckDBPyConnection) -> int:
    if not _exists(conn):
        return 0
    return int(conn.execute(f"SELECT count(*) FROM {TABLE}").fetchall()[0][0])


def _exists(conn: duckdb.DuckDBPyConnection) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [TABLE]
    ).fetchall()[0]
    return bool(row[0])


def report_path(list_key: str) -> Path:
    """`<data dir>/reports/<list key>/shared_match_keys.csv`."""
    return landing.data_dir() / "reports" / list_key / REPORT_NAME


def write_report(list_key: str, keys: Sequence[SharedKey]) -> Path:
    """Replace the list's CSV report with `keys` (a header only when none), atomically: a
    reader (or Excel) never sees half a file. UTF-8 with a BOM, so Excel shows accented names."""
    path = report_path(list_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{REPORT_NAME}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8-sig", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(CSV_COLUMNS)
            for key in keys:
                names = JOIN.join(_cell(n) for n in key.names)
                writer.writerow([key.integration, key.match_key, JOIN.join(key.record_ids), names])
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def read_report(list_key: str) -> list[SharedKey]:
    """The rows of the list's last CSV report (for the summary mail, without the warehouse);
    [] when there is none. Names come back as written (see _cell)."""
    path = report_path(list_key)
    if not path.exists():
        return []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return [
            SharedKey(
                row["integration"],
                row["shared key"],
                tuple(row["record ids"].split(JOIN)),
                tuple(row["names"].split(JOIN)),
            )
            for row in csv.DictReader(handle)
        ]


def _cell(name: str) -> str:
    """A name as a safe CSV cell: no `;` (it separates the names of one key), and text Excel
    would take for a formula (a name typed as `=...` at the source) kept as text."""
    name = name.replace(";", ",")
    return "'" + name if name[:1] in ("=", "+", "-", "@") else name


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
