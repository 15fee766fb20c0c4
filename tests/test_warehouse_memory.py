"""MEMBERFLOW_WAREHOUSE_MEMORY caps the warehouse's DuckDB (it spills beyond the cap); unset,
DuckDB's own default applies; a value that is not a size fails at load, naming the variable."""

from __future__ import annotations

import pytest
from dagster_duckdb import DuckDBResource

from pipelines.factory import WAREHOUSE_MEMORY_ENV, warehouse_config


def _limit(tmp_path, config: dict[str, str]) -> str:
    resource = DuckDBResource(database=str(tmp_path / "w.duckdb"), connection_config=config)
    with resource.get_connection() as conn:
        return conn.execute("SELECT current_setting('memory_limit')").fetchone()[0]


def test_unset_leaves_duckdbs_default(monkeypatch):
    monkeypatch.delenv(WAREHOUSE_MEMORY_ENV, raising=False)
    assert warehouse_config() == {}


def test_the_cap_reaches_the_connection(tmp_path, monkeypatch):
    monkeypatch.setenv(WAREHOUSE_MEMORY_ENV, "512MB")
    assert _limit(tmp_path, warehouse_config()) == "488.2 MiB"  # 512 MB in DuckDB's units


def test_env_overrides_the_cap(tmp_path, monkeypatch):
    monkeypatch.setenv(WAREHOUSE_MEMORY_ENV, "2GB")
    assert _limit(tmp_path, warehouse_config()) == "1.8 GiB"


@pytest.mark.parametrize("bad", ["lots", "512", "-1GB", "1 PB"])
def test_a_bad_size_fails_naming_the_variable(monkeypatch, bad):
    monkeypatch.setenv(WAREHOUSE_MEMORY_ENV, bad)
    with pytest.raises(ValueError, match=WAREHOUSE_MEMORY_ENV):
        warehouse_config()
