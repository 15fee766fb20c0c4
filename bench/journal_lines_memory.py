"""Journal staging memory against lines per journal (issue 6, item 9).

Lands a few journals of N lines each (every line a realistic FlexPOS sales line) and stages them
with `staging.stage_events`, each N in a fresh child process, and prints the child's peak RSS
(`ru_maxrss`) and staged lines/s. Memory must stay flat in lines per record: before the fix the
exploded lines carried the whole payload each, so a journal of n lines cost n copies of an O(n)
payload (500 lines: 0.7 GB; 2,000: > 5.5 GB).

    .venv/bin/python bench/journal_lines_memory.py                  # 500, 2000, 5000 lines
    .venv/bin/python bench/journal_lines_memory.py --lines 2000 5000 --journals 4

To measure another checkout (e.g. the code before the fix), put its tree first on PYTHONPATH:
`git archive <commit> | tar -x -C /tmp/old && PYTHONPATH=/tmp/old .venv/bin/python bench/...`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _journal(jid: int, lines: int) -> dict[str, Any]:
    return {
        "JournalId": jid,
        "JournalNo": f"J1-{jid}",
        "CustomerId": 1000 + jid,
        "Date": "2025-03-01T12:30:00",
        "StoreId": 1,
        "StoreName": "Butik København",
        "Currency": "DKK",
        "Modified": "2025-03-01T12:31:00",
        "Lines": [
            {
                "LineNo": n,
                "ProductId": f"P{n:05d}",
                "ProductName": f"Vare nummer {n} med et almindeligt langt navn",
                "Quantity": 1,
                "Amount": round(9.95 + n % 100, 2),
                "Discount": 0.0,
                "VatRate": 25,
            }
            for n in range(1, lines + 1)
        ],
    }


def _child(lines: int, journals: int) -> None:
    """Land and stage in this process; print one JSON line of figures."""
    from datetime import UTC, date, datetime

    import duckdb

    from memberflow import landing, staging
    from memberflow.mapping import load_mapping
    from resources.base import RecordMeta

    class Source:
        def record_meta(self, entity: str, record: dict[str, Any]) -> RecordMeta:
            modified = datetime.fromisoformat(record["Modified"]).replace(tzinfo=UTC)
            return RecordMeta(str(record["JournalId"]), modified, date(2025, 3, 1))

    page = [_journal(j, lines) for j in range(1, journals + 1)]
    landing.land_pages(Source(), "bench", "journals", [page])
    del page
    settings = staging.StageSettings("bench", ",", "%Y-%m-%dT%H:%M:%S", "DK", "email")
    conn = duckdb.connect(str(Path(os.environ["MEMBERFLOW_DATA_DIR"]) / "w.duckdb"))
    start = time.perf_counter()
    result = staging.stage_events(conn, load_mapping("flexpos", "journals"), settings)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figures = {"lines": lines, "journals": journals, "staged": result.staged, "seconds": seconds}
    print(json.dumps(figures | {"peak_rss_mb": round(peak_kb / 1024, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[500, 2000, 5000])
    parser.add_argument("--journals", type=int, default=4, help="journals of that many lines")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.lines[0], args.journals)
        return
    print(f"{'lines/journal':>13} {'journals':>8} {'staged':>8} {'peak RSS':>10} {'lines/s':>9}")
    for lines in args.lines:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "MEMBERFLOW_DATA_DIR": tmp}
            cmd = [sys.executable, __file__, "--child", "--lines", str(lines)]
            cmd += ["--journals", str(args.journals)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            error = (done.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{lines:>13} {args.journals:>8} failed: {error[:120]}")
            continue
        f = json.loads(done.stdout.strip().splitlines()[-1])
        rate = f["staged"] / f["seconds"] if f["seconds"] else 0
        print(
            f"{lines:>13} {f['journals']:>8} {f['staged']:>8} "
            f"{f['peak_rss_mb']:>8.0f}MB {rate:>9.0f}"
        )


if __name__ == "__main__":
    main()
