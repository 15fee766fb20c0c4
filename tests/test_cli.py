"""The `memberflow` command: validate files, and a backfill from the CLI against the sandbox."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from click.testing import CliRunner

from app.cli import main
from memberflow.config import INTEGRATIONS_DIR


def test_validate_accepts_the_demo_files():
    result = CliRunner().invoke(main, ["validate", *map(str, INTEGRATIONS_DIR.glob("*.yaml"))])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output and "demo_flexpos" in result.output


def test_validate_names_the_file_and_key_of_a_broken_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    text = (INTEGRATIONS_DIR / "demo_flexpos.yaml").read_text()
    broken.write_text(text.replace("match_on: email", "match_on: phone"))
    result = CliRunner().invoke(main, ["validate", str(broken)])
    assert result.exit_code == 1
    assert str(broken) in result.output and "match_on" in result.output


def test_validate_check_env_fails_on_missing_credentials(monkeypatch):
    monkeypatch.delenv("FLEXPOS_CLIENT_SECRET", raising=False)
    files = [str(INTEGRATIONS_DIR / "demo_flexpos.yaml")]
    result = CliRunner().invoke(main, ["validate", "--check-env", *files])
    assert result.exit_code == 1
    assert "FLEXPOS_CLIENT_SECRET" in result.output


@pytest.mark.e2e
def test_sync_backfills_a_date_range_from_the_cli(harness, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEMBERFLOW_INTEGRATIONS", str(INTEGRATIONS_DIR / "demo_flexpos.yaml"))
    end = date.today()
    args = ["sync", "demo_flexpos", "--from", str(end - timedelta(days=30)), "--to", str(end)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "members_delivered" in result.output
    assert harness.sandbox.heyloyalty.members(4711)


@pytest.mark.e2e
def test_sync_prints_progress_and_a_step_table_in_plain_lines(harness, tmp_path, monkeypatch):
    """Not a terminal (CliRunner, like CI or a pipe): plain lines, no redraws, no DEBUG lines."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEMBERFLOW_INTEGRATIONS", str(INTEGRATIONS_DIR / "demo_flexpos.yaml"))
    monkeypatch.setenv("MEMBERFLOW_PROGRESS_SECONDS", "0")
    end = date.today()
    args = ["sync", "demo_flexpos", "--from", str(end - timedelta(days=30)), "--to", str(end)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = result.output
    print(out)
    assert "progress demo_flexpos/customers_raw: started" in out
    assert "progress demo_flexpos/customers_raw done:" in out
    assert "records landed" in out and "members sent" in out
    assert "\x1b[" not in out  # no colour codes, no cursor movement
    assert " - DEBUG - " not in out and "{'" not in out  # no Dagster event flood, no raw dicts
    header = next(line for line in out.splitlines() if line.lstrip().startswith("step"))
    for column in ("rows", "calls", "retried", "throttled", "quarantined", "seconds"):
        assert column in header
    assert "members: " in out and " created, " in out
