"""Make a bigger list's warehouse from a built one (after the model, before delivery): k copies
of every member and tracking event, the e-mail (the match key) tagged `a+k@b` and each event id
suffixed `#k`, so the copies are distinct members with their own events. Only for measuring
delivery at sizes whose staging would take an hour on a shared machine
(bench/deliver_memory.py --built); bench/replicate_landing.py does the same one step earlier.

    .venv/bin/python bench/replicate_warehouse.py <data dir> <new data dir> --copies 10
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import duckdb


def tagged(column: str) -> str:
    return f"replace({column}, '@', '+' || k || '@')"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args()
    (source,) = (args.source / "warehouse").glob("*.duckdb")
    out = args.target / "warehouse" / source.name
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, out)
    conn = duckdb.connect(str(out), config={"memory_limit": "512MB"})
    copies = f"range(1, {args.copies}) r(k)"
    conn.execute(
        f"""INSERT INTO members SELECT * EXCLUDE (k) REPLACE ({tagged("match_key")} AS match_key,
                                                  {tagged("email")} AS email)
            FROM members, {copies}"""
    )
    conn.execute(
        f"""INSERT INTO tracking_events SELECT * EXCLUDE (k) REPLACE (
                event_id || '#' || k AS event_id, {tagged("match_key")} AS match_key)
            FROM tracking_events, {copies}"""
    )
    for table in ("members", "tracking_events"):
        print(table, conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0], flush=True)
    conn.execute("CHECKPOINT")
    conn.close()


if __name__ == "__main__":
    main()
