"""Make a bigger FlexPOS landing set from a landed one, without a sandbox: k copies of every
landing file with every id shifted by k * 10,000,000 (customer, journal and ticket ids, and the
customer each sale or ticket points at) and the e-mail address tagged (`a+k@b`), so the copies
are distinct customers with their own sales. Only for measuring staging and the model at sizes
whose extract would take an hour on a shared machine (bench/stage_memory.py).

    .venv/bin/python bench/replicate_landing.py <data dir of a 100k run> <new data dir> --copies 10
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import duckdb

SHIFT = 10_000_000
IDS = {"customers": "CustomerId", "journals": "JournalId", "tickets": "TicketId"}


def shifted(entity: str, k: int) -> str:
    """The SELECT list of copy k of a landing file of `entity`."""
    own = IDS[entity]
    patch = [f"'{own}', json_extract(payload, '$.{own}')::BIGINT + {k * SHIFT}"]
    if entity == "customers":
        email = "json_extract_string(payload, '$.Email')"
        patch.append(f"'Email', replace({email}, '@', '+{k}@')")
    else:
        patch.append(f"'CustomerId', json_extract(payload, '$.CustomerId')::BIGINT + {k * SHIFT}")
    # json_merge_patch drops a key patched with null: patch only the keys that have a value
    obj = ", ".join(patch)
    return f"""(record_id::BIGINT + {k * SHIFT})::VARCHAR AS record_id, modified, business_date,
               json_merge_patch(payload, json_object({obj}))::VARCHAR AS payload,
               fetched_at, batch_id"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--integration", default="demo_flexpos")
    args = parser.parse_args()
    src = args.source / "landing" / args.integration
    dst = args.target / "landing" / args.integration
    conn = duckdb.connect()
    for entity in IDS:
        for path in sorted((src / entity).glob("[0-9]*/*.parquet")):
            day = dst / entity / path.parent.name
            day.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, day / path.name)
            for k in range(1, args.copies):
                out = day / f"{path.stem}-r{k}.parquet"
                conn.execute(
                    f"COPY (SELECT {shifted(entity, k)} FROM read_parquet('{path}')) TO '{out}'"
                )
        print(entity, "done", flush=True)


if __name__ == "__main__":
    main()
