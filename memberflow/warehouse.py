"""The DuckDB settings of every warehouse connection: bounded memory that spills, by default.

A list's warehouse is one DuckDB file. Left to itself DuckDB may take 80% of the machine's memory
and, at a million customers, staging's first statement did (2.4 GB). So every connection gets:

- `memory_limit` (default 512MB, `MEMBERFLOW_WAREHOUSE_MEMORY` overrides): what DuckDB's buffer
  manager may hold before it spills;
- `temp_directory` next to the warehouse file (`<file>.spill/`), so a sort, join or window
  over more than the limit goes to disk instead of failing with "Out of Memory Error";
- `preserve_insertion_order = false`: no warehouse statement relies on the order rows come back
  in without an ORDER BY (every read that needs one says so), and keeping insertion order forces
  DuckDB to buffer whole results of CREATE TABLE AS / INSERT ... SELECT in memory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

WAREHOUSE_MEMORY_ENV = "MEMBERFLOW_WAREHOUSE_MEMORY"
DEFAULT_MEMORY = "512MB"
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)$", re.IGNORECASE)


def spill_dir(database: Path) -> Path:
    """Where a warehouse's DuckDB spills: beside its file, on the data dir's disk."""
    return database.with_name(database.name + ".spill")


def warehouse_config(database: Path | None = None) -> dict[str, str]:
    """DuckDB settings of a warehouse connection (`database`: its file, for the spill
    directory); a bad size fails at load, naming the environment variable."""
    memory = os.environ.get(WAREHOUSE_MEMORY_ENV, "").strip() or DEFAULT_MEMORY
    if not _MEMORY.match(memory):
        raise ValueError(f"{WAREHOUSE_MEMORY_ENV}={memory!r} is not a size such as 512MB or 2GB")
    config = {"memory_limit": memory, "preserve_insertion_order": "false"}
    if database is not None:
        config["temp_directory"] = str(spill_dir(database))
    return config
