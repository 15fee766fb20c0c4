"""PLACEHOLDER until H7's segments module is merged (H7's version wins at merge).

Only the two names the model and the integration file use: `SegmentSettings` and
`build_segments`, which here computes no memberships.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import duckdb
from pydantic import BaseModel, ConfigDict, Field


class SegmentSettings(BaseModel):
    """One segment of an integration file's `segments:` list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    rule: dict[str, Any]
    requires: list[str] = Field(default_factory=list)


def build_segments(
    conn: duckdb.DuckDBPyConnection,
    segments: list[SegmentSettings],
    today: date,
    tz: str = "UTC",
) -> dict[str, int]:
    """Replace `segment_groups` and `segment_members`; this placeholder puts nobody in them."""
    conn.execute(
        """CREATE OR REPLACE TABLE segment_members (match_key VARCHAR, group_name VARCHAR);
           CREATE OR REPLACE TABLE segment_groups (
               group_name VARCHAR PRIMARY KEY, rule VARCHAR, requires VARCHAR[],
               members BIGINT)"""
    )
    return {s.name: 0 for s in segments}
