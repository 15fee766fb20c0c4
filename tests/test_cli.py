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


def test_ui_finds_dagster_beside_this_python_without_the_venv_on_path(monkeypatch):
    """`.venv/bin/memberflow ui` from a shell where the venv is not activated."""
    import subprocess
    import sys
    from pathlib import Path

    from app.cli import dagster_dev_command

    monkeypatch.setenv("PATH", "")
    command = dagster_dev_command(3999)
    assert Path(command[0]).is_absolute()
    assert Path(command[0]).parent == Path(sys.executable).parent
    assert command[-5:] == ["dev", "-w", command[-3], "-p", "3999"]
    assert Path(command[-3]).name == "workspace.yaml" and Path(command[-3]).is_file()
    program = command[: command.index("dev")]
    found = subprocess.run([*program, "--version"], env={"PATH": ""}, capture_output=True)
    assert found.returncode == 0 and b"dagster" in found.stdout.lower()


def test_every_command_resolves_one_data_folder_and_instance(tmp_path, monkeypatch):
    """The UI's webserver and daemon inherit what `memberflow ui` set; the demo and `sync` set
    the same: the project's data/ and .dagster_home/, as absolute paths."""
    from app import runner
    from memberflow import landing
    from memberflow.config import REPO_ROOT

    monkeypatch.delenv("MEMBERFLOW_DATA_DIR", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # another shell folder changes nothing
    runner.ensure_dagster_home()
    assert landing.data_dir() == REPO_ROOT / "data"
    assert (tmp_path / "home" / "dagster.yaml").is_file()
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", "relative/data")
    runner.ensure_dagster_home()
    assert landing.data_dir() == tmp_path / "relative" / "data"
    assert runner.os.environ["MEMBERFLOW_DATA_DIR"] == str(tmp_path / "relative" / "data")
