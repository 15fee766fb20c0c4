"""`memberflow scaffold`: a file for every source and target kind registered, that validates
and builds, without a template per vendor pair."""

from __future__ import annotations

import itertools

import pytest
import yaml
from click.testing import CliRunner

from app.cli import main
from memberflow.config import load_integration
from pipelines.factory import build_definitions
from resources.registry import source_sections, target_sections

PAIRS = list(itertools.product(source_sections(), target_sections()))


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_every_pair_scaffolds_a_file_validate_accepts_and_dagster_loads(source, target, tmp_path):
    out = tmp_path / "new.yaml"
    result = CliRunner().invoke(
        main, ["scaffold", "--source", source, "--target", target, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output

    checked = CliRunner().invoke(main, ["validate", str(out)])
    assert checked.exit_code == 0, checked.output
    integration = load_integration(out)
    assert (integration.name, integration.source.kind) == (f"{source}_{target}", source)
    build_definitions([integration])  # a file that validates also loads in Dagster

    text = out.read_text()
    assert "# required" in text  # the keys a user must set are marked
    assert "# schedule:" in text and "interval_minutes: 5" in text  # optional keys, commented


def test_optional_keys_uncommented_are_still_a_valid_file(tmp_path):
    out = tmp_path / "new.yaml"
    CliRunner().invoke(
        main, ["scaffold", "--source", "flexpos", "--target", "heyloyalty", "--out", str(out)]
    )
    lines = out.read_text().splitlines()
    keep = ("# schedule:", "#   interval_minutes", "#   history_start", "#   enabled")
    opened = [line[2:] if line.startswith(keep) else line for line in lines]  # drop "# "
    out.write_text("\n".join(opened) + "\n")
    assert yaml.safe_load(out.read_text())["schedule"]["interval_minutes"] == 5
    assert load_integration(out).schedule.interval_minutes == 5


def test_unknown_kinds_are_refused_with_the_known_ones():
    result = CliRunner().invoke(main, ["scaffold", "--source", "nope", "--target", "heyloyalty"])
    assert result.exit_code == 2
    assert "unknown source kind 'nope'" in result.output
    assert all(kind in result.output for kind in source_sections())
    result = CliRunner().invoke(main, ["scaffold", "--source", "flexpos", "--target", "nope"])
    assert result.exit_code == 2 and all(kind in result.output for kind in target_sections())


def test_an_existing_file_is_never_overwritten(tmp_path):
    out = tmp_path / "mine.yaml"
    out.write_text("# my settings\n")
    args = ["scaffold", "--source", "flexpos", "--target", "heyloyalty", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "never overwrites" in result.output
    assert out.read_text() == "# my settings\n"


def test_a_name_dagster_cannot_key_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "x.yaml"
    args = ["scaffold", "--source", "flexpos", "--target", "axle", "--name", "My-Sync"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 2 and "--name 'My-Sync'" in result.output
    assert not out.exists()


def test_validate_names_the_placeholders_a_scaffolded_file_still_holds(tmp_path):
    out = tmp_path / "new.yaml"
    args = ["scaffold", "--source", "teyca", "--target", "axle", "--out", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    result = CliRunner().invoke(main, ["validate", str(out)])
    assert result.exit_code == 0  # a valid file, but not a ready one: said, not refused
    assert "target.account still holds the scaffold's placeholder" in result.output
    strict = CliRunner().invoke(main, ["validate", "--check-env", str(out)])
    assert strict.exit_code == 1 and "error " in strict.output


def test_check_takes_a_file_and_names_its_broken_key(tmp_path):
    out = tmp_path / "new.yaml"
    args = ["scaffold", "--source", "flexpos", "--target", "heyloyalty", "--out", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    out.write_text(out.read_text() + "unknown_key: 1\n")
    result = CliRunner().invoke(main, ["check", str(out)])
    assert result.exit_code == 1
    assert str(out) in result.output and "unknown_key" in result.output
