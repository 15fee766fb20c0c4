"""Every warehouse connection is bounded by default: a memory cap (MEMBERFLOW_WAREHOUSE_MEMORY
overrides it), a spill directory beside the warehouse file, insertion order not kept; a value
that is not a size fails at load, naming the variable. And staging works under a small cap: it
spills instead of failing with DuckDB's "Out of Memory Error"."""

from __future__ import annotations

import pytest
from dagster_duckdb import DuckDBResource

from memberflow.warehouse import DEFAULT_MEMORY, WAREHOUSE_MEMORY_ENV, spill_dir, warehouse_config


def _settings(tmp_path, config: dict[str, str]) -> tuple[str, str, str]:
    resource = DuckDBResource(database=str(tmp_path / "w.duckdb"), connection_config=config)
    with resource.get_connection() as conn:
        return conn.execute(
            "SELECT current_setting('memory_limit'), current_setting('temp_directory'), "
            "current_setting('preserve_insertion_order')::VARCHAR"
        ).fetchone()


def test_unset_gives_the_bounded_default(tmp_path, monkeypatch):
    monkeypatch.delenv(WAREHOUSE_MEMORY_ENV, raising=False)
    database = tmp_path / "w.duckdb"
    assert DEFAULT_MEMORY == "512MB"
    limit, temp, order = _settings(tmp_path, warehouse_config(database))
    assert limit == "488.2 MiB"  # 512 MB in DuckDB's units
    assert temp == str(spill_dir(database))
    assert order == "false"


def test_env_overrides_the_cap(tmp_path, monkeypatch):
    monkeypatch.setenv(WAREHOUSE_MEMORY_ENV, "2GB")
    assert _settings(tmp_path, warehouse_config(tmp_path / "w.duckdb"))[0] == "1.8 GiB"


@pytest.mark.parametrize("bad", ["lots", "512", "-1GB", "1 PB"])
def test_a_bad_size_fails_naming_the_variable(monkeypatch, bad):
    monkeypatch.setenv(WAREHOUSE_MEMORY_ENV, bad)
    with pytest.raises(ValueError, match=WAREHOUSE_MEMORY_ENV):
        warehouse_config()
