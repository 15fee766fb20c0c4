"""The warehouse's DuckDB is capped (it spills beyond the cap) instead of DuckDB's default of
80% of the machine's memory; the cap is a size from MEMBERFLOW_WAREHOUSE_MEMORY, checked at load."""

from __future__ import annotations

import pytest
from dagster_duckdb import DuckDBResource

from pipelines.factory import DEFAULT_WAREHOUSE_MEMORY, WAREHOUSE_MEMORY_ENV, warehouse_config


def _limit(tmp_path, config: dict[str, str]) -> str:
    resource = DuckDBResource(database=str(tmp_path / "w.duckdb"), connection_config=config)
    with resource.get_connection() as conn:
        return conn.execute("SELECT current_setting('memory_limit')").fetchone()[0]


def test_default_cap_reaches_the_connection(tmp_path, monkeypatch):
    monkeypatch.delenv(WAREHOUSE_MEMORY_ENV, raising=False)
    assert warehouse_config() == {"memory_limit": DEFAULT_WAREHOUSE_MEMORY}
    assert _limit(tmp_path, warehouse_config()) == "488.2 MiB"  # 512 MB in DuckDB's units


def test_env_overrides_the_cap(tmp_path, monkeypatch):
    monkeypatch.setenv(WAREHOUSE_MEMORY_ENV, "2GB")
    assert _limit(tmp_path, warehouse_config()) == "1.8 GiB"


@pytest.mark.parametrize("bad", ["lots", "512", "-1GB", "1 PB"])
def test_a_bad_size_fails_naming_the_variable(monkeypatch, bad):
    monkeypatch.setenv(WAREHOUSE_MEMORY_ENV, bad)
    with pytest.raises(ValueError, match=WAREHOUSE_MEMORY_ENV):
        warehouse_config()
