"""`memberflow check`: one PASS/FAIL line per check, exit 1 on any failure, no secret shown."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from app import check
from app.cli import main
from memberflow.config import INTEGRATIONS_DIR, load_all
from resources.base import ListField, VendorError
from resources.target import RateBudget

FLEXPOS_FILE = str(INTEGRATIONS_DIR / "demo_flexpos.yaml")
SECRET = "pos-secret-value-123"


class FakeSource:
    def __init__(self, fail: str | None = None, budget: RateBudget | None = None) -> None:
        self.fail, self.budget, self.closed = fail, budget, False

    def check_connection(self) -> None:
        if self.fail:
            raise VendorError("flexpos", 401, self.fail)

    def rate_budget(self) -> RateBudget | None:
        return self.budget

    def close(self) -> None:
        self.closed = True


class FakeTarget:
    """The new target interface: label, check_connection, target_fields, rate_budget."""

    label = "fake list 4711"

    def __init__(self, fields: list[str], exists: bool = True, left: int | None = None) -> None:
        self.fields, self.exists, self.left = fields, exists, left

    def check_connection(self) -> None:
        if not self.exists:
            raise VendorError("fake", 404, "list 4711 not found")

    def target_fields(self) -> dict[str, ListField]:
        return {name: ListField(name=name, format="text") for name in self.fields}

    def rate_budget(self) -> RateBudget | None:
        return None if self.left is None else RateBudget("hour", 1000, 1000 - self.left)

    def close(self) -> None:
        pass


def _integration():
    (integration,) = load_all([INTEGRATIONS_DIR / "demo_flexpos.yaml"])
    return integration


def _clients(source: Any, target: Any):
    return lambda section: source if section.kind == "flexpos" else target


def _lines(source: Any, target: Any) -> list[str]:
    return [r.line() for r in check.run_checks([_integration()], _clients(source, target))]


def test_every_check_passes_with_one_line_each():
    fields = check.mapped_target_fields(_integration())
    assert "email" in fields
    budget = RateBudget("day", 5000, 17)
    lines = _lines(FakeSource(budget=budget), FakeTarget(fields))
    assert lines == [
        "PASS demo_flexpos source: flexpos connection",
        "PASS demo_flexpos target: fake list 4711 exists",
        f"PASS demo_flexpos fields: all {len(fields)} mapped fields exist on fake list 4711",
        "PASS demo_flexpos source budget: 5000/day, 4983 left",
    ]


def test_each_failure_has_its_line_and_the_others_still_run(monkeypatch):
    monkeypatch.setenv("FLEXPOS_CLIENT_SECRET", SECRET)
    fields = check.mapped_target_fields(_integration())
    source = FakeSource(fail=f"bad secret {SECRET} for jens.hansen@example.dk")
    lines = _lines(source, FakeTarget(fields[1:], left=0))
    assert lines[0].startswith("FAIL demo_flexpos source: VendorError: flexpos answered 401")
    assert SECRET not in lines[0] and "***" in lines[0] and "jens.hansen" not in lines[0]
    assert lines[1] == "PASS demo_flexpos target: fake list 4711 exists"
    assert lines[2] == f"FAIL demo_flexpos fields: missing on fake list 4711: {fields[0]}"
    assert lines[3] == "FAIL demo_flexpos target budget: 1000/hour, 0 left"
    assert source.closed


def test_a_missing_list_fails_target_and_fields():
    fields = check.mapped_target_fields(_integration())
    lines = _lines(FakeSource(), FakeTarget(fields, exists=False))
    assert (
        lines[1] == "FAIL demo_flexpos target: VendorError: fake answered 404: list 4711 not found"
    )
    assert lines[2].startswith("FAIL demo_flexpos fields:")


def test_the_command_exits_0_on_pass_and_1_on_any_failure(monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_INTEGRATIONS", FLEXPOS_FILE)
    fields = check.mapped_target_fields(_integration())
    monkeypatch.setattr(check, "section_client", _clients(FakeSource(), FakeTarget(fields)))
    passed = CliRunner().invoke(main, ["check", "demo_flexpos"])
    assert passed.exit_code == 0, passed.output
    assert passed.output.count("PASS") == 3 and "FAIL" not in passed.output
    monkeypatch.setattr(check, "section_client", _clients(FakeSource(), FakeTarget(fields[2:])))
    failed = CliRunner().invoke(main, ["check"])
    assert failed.exit_code == 1 and "FAIL demo_flexpos fields" in failed.output
    unknown = CliRunner().invoke(main, ["check", "nobody"])
    assert unknown.exit_code == 2 and "nobody" in unknown.output


def test_missing_credentials_fail_without_a_traceback(monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_INTEGRATIONS", FLEXPOS_FILE)
    for name in ("FLEXPOS_CLIENT_ID", "FLEXPOS_CLIENT_SECRET", "HEYLOYALTY_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 1, result.output
    assert "FAIL demo_flexpos source: flexpos:" in result.output
    assert "FAIL demo_flexpos target: heyloyalty:" in result.output


@pytest.mark.e2e
def test_the_real_source_client_passes_against_the_sandbox(harness):
    """The FlexPOS client's own check_connection over a real socket; a fake target."""
    integration = _integration()
    fields = check.mapped_target_fields(integration)
    target = FakeTarget(fields)

    def client_of(section: Any) -> Any:
        return check.section_client(section) if section.kind == "flexpos" else target

    lines = [r.line() for r in check.run_checks([integration], client_of)]
    assert lines[0] == "PASS demo_flexpos source: flexpos connection", lines
    assert all(line.startswith("PASS") for line in lines), lines
